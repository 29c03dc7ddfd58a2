"""The training loss (nanodiffusion.core.losses) against its formula, weight(sigma) * ||D - x0||^2.

Every check is in float64 against numbers worked out by hand or a formula written out here; the
loss itself takes the network's output in float32 (mixed precision's outputs), hence rel 1e-6.
"""

import math

import pytest
import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.losses import LossConfig, diffusion_loss, loss_weight, sample_sigmas
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError

SIGMA = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)


class Net(torch.nn.Module):
    """A fixed network whose output depends on its input and its noise level."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x_in, c_noise, cond=None):
        return self.conv(x_in) * (1 + c_noise[:, None, None, None] / 1000)


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64),
    )


# --- weights, by hand ------------------------------------------------------------------------------
# sigma = 0.1, 0.5, 1, 2 is SNR = 1 / sigma^2 = 100, 4, 1, 0.25.


def test_uniform_weight_is_one():
    assert loss_weight(SIGMA, LossConfig(), "eps", 0.5).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_min_snr_gamma_weights_by_hand():
    cfg = LossConfig(weighting="min-snr", min_snr_gamma=5.0)
    # x0 target: min(SNR, 5) = 5, 4, 1, 0.25
    assert loss_weight(SIGMA, cfg, "x0", 0.5).tolist() == pytest.approx([5.0, 4.0, 1.0, 0.25], rel=1e-12)
    # eps target: min(SNR, 5) / SNR = 0.05, 1, 1, 1
    assert loss_weight(SIGMA, cfg, "eps", 0.5).tolist() == pytest.approx([0.05, 1.0, 1.0, 1.0], rel=1e-12)
    # v target: min(SNR, 5) / (SNR + 1) = 5/101, 4/5, 1/2, 0.25/1.25
    assert loss_weight(SIGMA, cfg, "v", 0.5).tolist() == pytest.approx([5 / 101, 0.8, 0.5, 0.2], rel=1e-12)
    # another gamma moves the clamp: gamma 1 on the x0 target gives 1, 1, 1, 0.25
    cfg = LossConfig(weighting="min-snr", min_snr_gamma=1.0)
    assert loss_weight(SIGMA, cfg, "x0", 0.5).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.25], rel=1e-12)


def test_edm_weights_by_hand():
    """Karras et al. 2022, eq. 8: lambda = (sigma^2 + sd^2) / (sigma sd)^2 on ||D - x0||^2."""
    cfg = LossConfig(weighting="edm")
    # on EDM's own target lambda * c_out^2 = 1: every level weighs the same
    assert loss_weight(SIGMA, cfg, "edm", 0.5).tolist() == pytest.approx([1.0] * 4, rel=1e-12)
    # on the x0 target lambda itself, sd = 0.5: (s^2 + 0.25) / (0.25 s^2) = 104, 8, 5, 4.25
    assert loss_weight(SIGMA, cfg, "x0", 0.5).tolist() == pytest.approx([104.0, 8.0, 5.0, 4.25], rel=1e-12)
    # on the eps target lambda * sigma^2 = 1 + s^2 / sd^2 = 1.04, 2, 5, 17
    assert loss_weight(SIGMA, cfg, "eps", 0.5).tolist() == pytest.approx([1.04, 2.0, 5.0, 17.0], rel=1e-12)
    # sigma_data 1: 1 + s^2 = 1.01, 1.25, 2, 5
    assert loss_weight(SIGMA, cfg, "eps", 1.0).tolist() == pytest.approx([1.01, 1.25, 2.0, 5.0], rel=1e-12)


# --- the loss is the formula ------------------------------------------------------------------------


def test_eps_mse_is_x0_mse_weighted_by_one_over_sigma_squared():
    """The course's loss ||eps - eps_theta||^2 is, in x0 space, ||D - x0||^2 / sigma^2 (= SNR)."""
    schedule, x0, eps = Schedule(), *batch()
    D = Denoiser(Net(), schedule, "eps")
    sigma = schedule.sigmas()[torch.tensor([0, 10, 500, 999])]
    loss = diffusion_loss(D, x0, sigma, eps, LossConfig())
    x = x0 + sigma[:, None, None, None] * eps
    x0_form = (((D(x, sigma) - x0) / sigma[:, None, None, None]) ** 2).mean()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(x0_form.item(), rel=1e-6)
    # and the eps form: the network's output is eps_hat (D = x - sigma F), so F - eps is the error
    F, _, _ = D.raw(x, sigma)
    assert loss.item() == pytest.approx(((F.float() - eps) ** 2).mean().item(), rel=1e-12)


@pytest.mark.parametrize("weighting", ["uniform", "min-snr", "edm"])
@pytest.mark.parametrize("parameterization", ["eps", "v", "x0", "edm"])
def test_loss_is_lambda_x0_times_the_x0_error(parameterization, weighting):
    """mean over the batch of lambda_x0(sigma) * mean over pixels of (D(x0 + sigma eps) - x0)^2,
    with lambda_x0 written out: uniform on the raw target 1 / c_out^2, min-SNR min(1 / sigma^2,
    gamma), EDM (sigma^2 + sd^2) / (sigma sd)^2."""
    schedule = Schedule(kind="edm") if parameterization == "edm" else Schedule()
    sd = 0.5 if parameterization == "edm" else 1.0  # v and eps are sigma_data-1 forms
    x0, eps = batch(seed=1)
    D = Denoiser(Net(), schedule, parameterization, sigma_data=sd)
    sigma = SIGMA.clone()
    cfg = LossConfig(weighting=weighting, min_snr_gamma=3.0)
    c_out2 = {
        "eps": sigma**2,
        "v": sigma**2 / (1 + sigma**2),
        "x0": torch.ones_like(sigma),
        "edm": (sigma * sd) ** 2 / (sigma**2 + sd**2),
    }[parameterization]
    lam = {
        "uniform": 1 / c_out2,
        "min-snr": (1 / sigma**2).clamp(max=3.0),
        "edm": (sigma**2 + sd**2) / (sigma * sd) ** 2,
    }[weighting]
    x = x0 + sigma[:, None, None, None] * eps
    expected = (lam * ((D(x, sigma) - x0) ** 2).mean(dim=(1, 2, 3))).mean()
    assert diffusion_loss(D, x0, sigma, eps, cfg).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_perfect_denoiser_has_zero_loss():
    x0, eps = batch(seed=2)
    x0 = x0.float().double()  # the loss takes the network's output in float32: make it exact there

    class Oracle(torch.nn.Module):  # x0 target: return the clean image itself
        def forward(self, x_in, c_noise, cond=None):
            return x0

    D = Denoiser(Oracle(), Schedule(), "x0")
    for weighting in ("uniform", "min-snr", "edm"):
        assert diffusion_loss(D, x0, SIGMA, eps, LossConfig(weighting=weighting)).item() == 0.0


# --- noise levels ----------------------------------------------------------------------------------


def test_uniform_t_draws_the_trained_levels_uniformly():
    schedule = Schedule()
    got = sample_sigmas(schedule, 1000, LossConfig(), torch.Generator().manual_seed(3))
    t = torch.randint(0, schedule.T, (1000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, schedule.sigmas()[t].float())
    assert got.dtype == torch.float32 and got.shape == (1000,)


def test_uniform_t_on_a_continuous_schedule_is_uniform_in_karras_time():
    schedule = Schedule(kind="edm")
    got = sample_sigmas(schedule, 1000, LossConfig(), torch.Generator().manual_seed(4))
    u = torch.rand(1000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rho, lo, hi = 7.0, 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    assert torch.allclose(got.double(), (lo + u * (hi - lo)) ** rho, rtol=1e-6)
    assert got.min() >= 0.002 * (1 - 1e-6) and got.max() <= 80.0 * (1 + 1e-6)


def test_lognormal_sigmas_are_exp_of_a_normal_and_have_its_statistics():
    """EDM (Karras et al. 2022, Table 1): ln(sigma) ~ N(P_mean, P_std^2)."""
    cfg, n = LossConfig(sigma_sampling="lognormal", p_mean=-1.2, p_std=1.2), 200_000
    got = sample_sigmas(Schedule(kind="edm"), n, cfg, torch.Generator().manual_seed(5))
    z = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(got, (-1.2 + 1.2 * z).exp().float())
    log = got.double().log()
    se = 1.2 / math.sqrt(n)  # standard error of the mean of ln(sigma)
    assert abs(log.mean().item() - (-1.2)) < 5 * se
    assert abs(log.std().item() - 1.2) < 5 * 1.2 / math.sqrt(2 * n)
    assert abs(got.double().median().item() - math.exp(-1.2)) < 0.01  # the median is e^P_mean
    # the share below e^(P_mean - P_std) is Phi(-1) = 0.158655
    assert abs((log < -2.4).double().mean().item() - 0.158655) < 0.005
    # and the levels are the same whatever the schedule: lognormal ignores it
    again = sample_sigmas(Schedule(), n, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(again, got)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "sigma_sampling",
            "gaussian",
            "unknown sigma sampling 'gaussian'; choose one of uniform-t, lognormal, mode",
        ),
        ("weighting", "snr", "unknown weighting 'snr'; choose one of uniform, min-snr, edm"),
    ],
)
def test_unknown_choices_are_one_line(field, value, message):
    with pytest.raises(NanodiffError) as error:
        LossConfig(**{field: value})
    assert str(error.value) == message

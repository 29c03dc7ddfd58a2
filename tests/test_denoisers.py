import pytest
import torch

from nanodiffusion.core.denoisers import PARAMETERIZATIONS, Denoiser, coefficients, convert
from nanodiffusion.core.losses import LossConfig, diffusion_loss, loss_weight
from nanodiffusion.core.schedules import Schedule


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 10.0, 150.0], dtype=torch.float64)
    return x0, eps, sigma, x0 + sigma[:, None, None, None] * eps


def _true_target(name, x0, eps, sigma):
    s = sigma[:, None, None, None]
    a, b = (1 + s**2).rsqrt(), s * (1 + s**2).rsqrt()  # sqrt(alpha_bar), sqrt(1 - alpha_bar)
    return {"eps": eps, "x0": x0, "v": a * eps - b * x0, "flow": eps - x0}[name]  # flow: the velocity


@pytest.mark.parametrize("source", ["eps", "v", "x0", "flow"])
@pytest.mark.parametrize("target", ["eps", "v", "x0", "flow"])
def test_target_conversions_are_exact(source, target):
    x0, eps, sigma, x = _case()
    got = convert(_true_target(source, x0, eps, sigma), x, sigma, source, target)
    assert torch.allclose(got, _true_target(target, x0, eps, sigma), atol=1e-10)


class _Oracle(torch.nn.Module):
    """A 'network' that outputs the exact target for known x0 and eps."""

    def __init__(self, name, x0, eps, sigma):
        super().__init__()
        self.out = _true_target(name, x0, eps, sigma) if name != "edm" else None
        self.name, self.x0, self.eps, self.sigma = name, x0, eps, sigma

    def forward(self, x_in, c_noise, cond=None):
        if self.name != "edm":
            return self.out
        c_skip, c_out, _ = coefficients("edm", self.sigma[:, None, None, None])
        return (self.x0 - c_skip * (self.x0 + self.sigma[:, None, None, None] * self.eps)) / c_out


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_every_parameterisation_recovers_x0_from_its_exact_target(name):
    x0, eps, sigma, x = _case()
    D = Denoiser(_Oracle(name, x0, eps, sigma), Schedule(kind="edm"), name).double()
    assert torch.allclose(D(x, sigma), x0, atol=1e-9)
    # and the score view agrees: score = (D - x) / sigma^2 = -eps / sigma
    assert torch.allclose(D.score(x, sigma), -eps / sigma[:, None, None, None], atol=1e-9)


@pytest.mark.parametrize("name", ["eps", "v", "x0"])
def test_network_sees_the_course_vp_input(name):
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x_in, c_noise, cond=None):
            seen["x_in"], seen["c_noise"] = x_in, c_noise
            return torch.zeros_like(x_in)

    s = Schedule()
    t = torch.tensor([3, 400, 999])
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    sigma = s.sigmas()[t].float()
    Denoiser(Spy(), s, name)(x0 + sigma[:, None, None, None] * eps, sigma)
    assert torch.allclose(seen["x_in"], s.q_sample(x0, t, eps), atol=1e-4)
    assert torch.allclose(seen["c_noise"], t.float(), atol=1e-3)


def test_default_loss_is_the_course_eps_mse():
    s = Schedule()
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    class Net(torch.nn.Module):
        def forward(self, x_in, c_noise, cond=None):
            return net(x_in) * (1 + c_noise[:, None, None, None] / 1000)

    D = Denoiser(Net(), s)
    x0, eps, t = torch.randn(8, 1, 5, 5), torch.randn(8, 1, 5, 5), torch.randint(0, 1000, (8,))
    ours = diffusion_loss(D, x0, s.sigmas()[t].float(), eps, LossConfig())
    course = ((eps - Net()(s.q_sample(x0, t, eps), t.float())) ** 2).mean()
    assert ours.item() == pytest.approx(course.item(), rel=1e-4)


def test_min_snr_and_edm_weights():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    snr = 1 / sigma**2
    w = loss_weight(sigma, LossConfig(weighting="min-snr", min_snr_gamma=5.0), "eps", 0.5)
    assert torch.allclose(w, snr.clamp(max=5) / snr)  # Hang et al. 2023, eps form
    w = loss_weight(sigma, LossConfig(weighting="min-snr", min_snr_gamma=5.0), "v", 0.5)
    assert torch.allclose(w, snr.clamp(max=5) / (snr + 1))  # v form
    assert torch.allclose(loss_weight(sigma, LossConfig(weighting="edm"), "edm", 0.5), torch.ones(3))

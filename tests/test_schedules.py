import math

import pytest
import torch

from nanodiffusion.core.schedules import KINDS, SPACINGS, TIME_SPACINGS, Schedule, karras_sigmas
from nanodiffusion.errors import NanodiffError


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_discrete_tables_are_monotone_with_sane_endpoints(kind):
    s = Schedule(kind=kind)
    ab, sig = s.alpha_bar(), s.sigmas()
    assert ab.shape == (1000,) and sig.shape == (1000,)
    assert (ab[1:] < ab[:-1]).all() and (sig[1:] > sig[:-1]).all()
    assert 0.97 < ab[0] < 1 and ab[-1] < 1e-3  # almost clean at t=0, almost pure noise at T-1
    assert torch.allclose(sig, ((1 - ab) / ab).sqrt())


def test_linear_matches_ddpm_and_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    assert torch.allclose(Schedule().alpha_bar().float(), ref.alphas_cumprod, atol=1e-6)
    assert Schedule().betas()[0] == pytest.approx(1e-4) and Schedule().betas()[-1] == pytest.approx(0.02)


def test_cosine_matches_diffusers_squaredcos():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(Schedule(kind="cosine").alpha_bar().float(), ref.alphas_cumprod, atol=1e-6)


def test_forward_process_mean_and_variance():
    s = Schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7)
    for t in [0, 250, 999]:
        xt = s.q_sample(x0, torch.full((len(x0),), t), torch.randn(len(x0), generator=g))
        ab = float(s.alpha_bar()[t])
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.01 + 0.01 * (1 - ab))


def test_vp_and_sigma_forms_are_one_scale_apart():
    s = Schedule()
    x0, eps, t = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 10, 100, 500, 999])
    sig, ab = s.sigmas()[t].float()[:, None], s.alpha_bar()[t].float()[:, None]
    assert torch.allclose(s.q_sample(x0, t, eps), (x0 + sig * eps) * ab.sqrt(), atol=1e-5)


def test_sigma_to_t_inverts_the_table():
    s = Schedule()
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.allclose(s.sigma_to_t(s.sigmas()[t]), t.double(), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
def test_sampling_sigmas_decrease_end_at_zero_and_never_repeat(kind, spacing, steps):
    s = Schedule(kind=kind)
    if not s.discrete and spacing in TIME_SPACINGS:
        with pytest.raises(NanodiffError, match="continuous"):
            s.sampling_sigmas(steps, spacing)
        return
    sig = s.sampling_sigmas(steps, spacing)
    assert len(sig) == steps + 1 and sig[-1] == 0
    assert (sig[1:] < sig[:-1]).all()
    top = s.sigmas()[-1] if s.discrete else s.sigma_max
    assert sig[0] <= top * (1 + 1e-12)
    if spacing in ("karras", "exponential", "trailing", "flow"):  # these always start at the top
        assert sig[0] == pytest.approx(float(top), rel=1e-9)


def test_karras_and_exponential_sequences_follow_their_formulas():
    s = Schedule(kind="cosine")
    lo, hi = float(s.sigmas()[0]), float(s.sigmas()[-1])
    ex = s.sampling_sigmas(9, "exponential")[:-1].log()
    assert torch.allclose(ex.diff(), torch.full((8,), (math.log(lo) - math.log(hi)) / 8, dtype=ex.dtype))
    k = Schedule(kind="edm").sampling_sigmas(9, "karras")[:-1] ** (1 / 7)
    assert torch.allclose(k.diff(), k.diff()[:1].expand(8))  # uniform in sigma^(1/rho)
    assert Schedule().default_spacing() == "trailing" and Schedule(kind="edm").default_spacing() == "karras"


def test_scaled_linear_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    ours = Schedule(kind="scaled_linear", beta_start=0.00085, beta_end=0.012).alpha_bar()
    assert torch.allclose(ours.float(), ref.alphas_cumprod, atol=1e-6)


def test_timesteps_match_diffusers_spacings():
    from diffusers import DDIMScheduler

    for spacing in ["leading", "trailing", "linspace"]:
        for steps in [10, 50, 999]:
            ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
            ref.set_timesteps(steps)
            assert Schedule().timesteps(steps, spacing).tolist() == ref.timesteps.tolist(), spacing


def test_trained_steps_are_used_exactly():
    s = Schedule()
    full = s.sampling_sigmas(1000)
    assert torch.equal(full[:-1], s.sigmas().flip(0))


def test_karras_sigmas_endpoints():
    sig = karras_sigmas(18, 0.002, 80.0)
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002) and sig[-1] == 0


def test_bad_schedule_input():
    with pytest.raises(NanodiffError, match="unknown schedule"):
        Schedule(kind="quadratic")
    with pytest.raises(NanodiffError, match="steps must be positive"):
        Schedule().sampling_sigmas(0)
    with pytest.raises(NanodiffError, match="cannot exceed"):
        Schedule(T=100).sampling_sigmas(200)

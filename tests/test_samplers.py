"""Samplers against exact answers: Gaussian data (ideal denoiser in closed form) and diffusers."""

import inspect

import pytest
import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.samplers import (
    SAMPLERS,
    CountingDenoiser,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_pf_ode,
    sample_unipc,
)
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError


class GaussianDenoiser:
    """For x0 ~ N(mu, Sigma): E[x0 | x0 + sigma eps = x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)."""

    def __init__(self, mu, cov):
        self.mu, self.cov = mu, cov

    def __call__(self, x, sigma, cond=None):
        s2 = float(sigma[0]) ** 2
        gain = self.cov @ torch.linalg.inv(self.cov + s2 * torch.eye(len(self.mu), dtype=x.dtype))
        return self.mu + (x - self.mu) @ gain.T


def _gaussian(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.linspace(0.05, 1.0, d, dtype=torch.float64)) @ q.T
    return torch.randn(d, generator=g, dtype=torch.float64), cov


def _sample_gaussian(fn, steps, n=10_000, spacing="trailing"):
    mu, cov = _gaussian()
    s = Schedule()
    sigmas = s.sampling_sigmas(steps, spacing)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * s.prior_std(float(sigmas[0]))
    out = fn(GaussianDenoiser(mu, cov), x, sigmas, generator=g)
    return (out.mean(0) - mu).abs().max().item(), (torch.cov(out.T) - cov).abs().max().item()


@pytest.mark.parametrize(
    "sampler,steps,spacing",
    [pytest.param("ddpm", 1000, "leading", marks=pytest.mark.slow), ("ddim", 200, "trailing")],
)
def test_samples_match_gaussian_mean_and_covariance(sampler, steps, spacing):
    mean_err, cov_err = _sample_gaussian(
        sample_ddpm if sampler == "ddpm" else sample_ddim, steps, spacing=spacing
    )
    assert mean_err < 0.04 and cov_err < 0.05  # sampling noise at N = 10k is about 0.015


@pytest.mark.slow  # 1-8 s per sampler; tests/test_gmm.py checks every sampler's error fast
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_the_gaussian(name):
    mean_err, cov_err = _sample_gaussian(SAMPLERS[name].fn, 200)
    assert mean_err < 0.04 and cov_err < 0.05, (mean_err, cov_err)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_nfe_is_what_the_registry_says_and_seeds_repeat(name, steps):
    info, D = SAMPLERS[name], GaussianDenoiser(*_gaussian())
    sigmas = Schedule(kind="edm").sampling_sigmas(steps)
    x = torch.randn(8, 4, dtype=torch.float64) * 80
    counted = CountingDenoiser(D)
    a = info.fn(counted, x, sigmas, generator=torch.Generator().manual_seed(0))
    b = info.fn(D, x, sigmas, generator=torch.Generator().manual_seed(0))
    c = info.fn(D, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert counted.calls == info.nfe(steps) and info.steps_for_nfe(info.nfe(steps)) == steps
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert torch.equal(a, c) != (info.stochastic and steps > 1)  # the last step adds no noise


def test_euler_ancestral_is_ddpm_and_pf_ode_is_euler():
    """Two identities in sigma form: ancestral sampling's sigma_up at eta = 1 is the DDPM
    posterior's, and Euler on dx/dsigma = -sigma score is Euler on (x - D) / sigma."""
    D = GaussianDenoiser(*_gaussian())
    sigmas = Schedule().sampling_sigmas(30)
    x = torch.randn(64, 4, dtype=torch.float64) * 160
    run = [
        f(D, x, sigmas, generator=torch.Generator().manual_seed(3))
        for f in (sample_euler_ancestral, sample_ddpm, sample_pf_ode, sample_euler)
    ]
    assert torch.allclose(run[0], run[1], atol=1e-10) and torch.allclose(run[2], run[3], atol=1e-10)


def test_sampler_options_are_checked():
    D = GaussianDenoiser(*_gaussian())
    x, sigmas = torch.zeros(2, 4, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    for fn, kw, msg in [
        (sample_unipc, {"order": 4}, "order"),
        (sample_unipc, {"variant": "bh3"}, "variant"),
        (sample_heun, {"s_churn": -1}, "non-negative"),
        (sample_heun, {"order": 3}, "order"),
    ]:
        with pytest.raises(NanodiffError, match=msg):
            fn(D, x, sigmas, **kw)
    with pytest.raises(NanodiffError, match="unknown sampler 'nope'"):
        get_sampler("nope")


def test_ddim_covariance_error_shrinks_with_steps():
    errors = [_sample_gaussian(sample_ddim, steps)[1] for steps in (5, 20, 200)]
    assert errors[0] > errors[1] > errors[2]


def test_deterministic_ddim_is_euler_on_the_probability_flow_ode():
    mu, cov = _gaussian()
    D = GaussianDenoiser(mu, cov)
    sigmas = Schedule().sampling_sigmas(20)
    x = torch.randn(16, 4, dtype=torch.float64) * 150
    ddim, euler = sample_ddim(D, x, sigmas), x.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (euler - D(euler, sigma.expand(16))) / sigma  # dx/dsigma
        euler = euler + (sigma_next - sigma) * d
    assert torch.allclose(ddim, euler, atol=1e-10)


class _EpsFn(torch.nn.Module):
    """A stable 'eps network' of (x_t, t) shared by both implementations: the ideal eps for
    data ~ N(0, 0.25 I), eps = sqrt(1 - ab) x_t / (0.25 ab + 1 - ab), plus a small nonlinearity."""

    alpha_bar = Schedule().alpha_bar()

    def forward(self, x_in, t, cond=None):
        t = torch.as_tensor(t).reshape(-1).round().long()
        ab = self.alpha_bar[t].to(x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))
        return (1 - ab).sqrt() * x_in / (0.25 * ab + 1 - ab) + 0.05 * torch.tanh(3 * x_in)


def _diffusers_loop(scheduler, steps, x, eta=None, seed=0):
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    net, trajectory = _EpsFn(), []
    for t in scheduler.timesteps:
        eps = net(x, t.float())
        if eta is None:  # DDPM draws its own noise from the generator
            x = scheduler.step(eps, t, x, generator=g).prev_sample
        else:
            z = torch.randn(x.shape, generator=g) if eta > 0 else None
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        trajectory.append(x)
    return trajectory


def _our_loop(fn, steps, x, spacing="leading", seed=0, **kw):
    s = Schedule()
    sigmas = s.sampling_sigmas(steps, spacing)
    D = Denoiser(_EpsFn(), s, "eps")
    xs = []  # x at the start of each step, in sigma form
    fn(
        D,
        x * s.prior_std(float(sigmas[0])),
        sigmas,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda d: xs.append(d["x"]),
        **kw,
    )
    return [x / (1 + float(sig) ** 2) ** 0.5 for x, sig in zip(xs, sigmas[:-1], strict=True)]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trajectory_equals_diffusers_ddim_scheduler(spacing, eta):
    from diffusers import DDIMScheduler

    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    ref = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    )
    theirs = _diffusers_loop(ref, 25, x.clone(), eta=eta)
    ours = _our_loop(sample_ddim, 25, x.clone(), spacing, eta=eta)
    # ours[i] is x at the start of step i; theirs[i] is x after step i
    for i in range(1, 25):
        assert torch.allclose(ours[i], theirs[i - 1], rtol=1e-5, atol=1e-5), f"step {i}"


def test_ddpm_trajectory_equals_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, variance_type="fixed_small"
    )
    theirs = _diffusers_loop(ref, 1000, x.clone())
    ours = _our_loop(sample_ddpm, 1000, x.clone())
    assert torch.allclose(ours[1], theirs[0], atol=1e-6)  # one step
    for i in [10, 500, 999]:  # float32 rounding accumulates to ~2e-5 over 1000 steps
        assert torch.allclose(ours[i], theirs[i - 1], atol=1e-4), f"step {i}"


def test_bad_sigma_sequences_are_refused():
    D = GaussianDenoiser(*_gaussian())
    x = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(NanodiffError, match="end at 0 or above"):
        sample_ddim(D, x, torch.tensor([10.0, -1.0]))
    with pytest.raises(NanodiffError, match="finite"):
        sample_ddim(D, x, torch.tensor([float("inf"), 1.0, 0.0]))
    with pytest.raises(NanodiffError, match="strictly decrease"):
        sample_ddim(D, x, torch.tensor([10.0, 1.0, 1.0, 0.0]))
    with pytest.raises(NanodiffError, match="eta"):
        sample_ddim(D, x, torch.tensor([1.0, 0.0]), eta=2.0)


# --- every sampler against diffusers' scheduler of the same name -------------------------------
def _diffusers_run(scheduler, steps, x_ve, sigma0, seed=0):
    """Run a diffusers scheduler on the shared eps net from x (sigma form); returns the x it
    holds after each call, in sigma form. Euler-family schedulers work in sigma form already
    (they divide the model input by sqrt(1 + sigma^2)); the multistep ones in the VP form."""
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    net, out = _EpsFn(), []
    ve = hasattr(scheduler, "scale_model_input") and scheduler.init_noise_sigma != 1.0
    x = x_ve if ve else x_ve / (1 + sigma0**2) ** 0.5
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        kw = {"generator": g} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(net(inp, t.float()), t, x, **kw).prev_sample
        out.append(x)
    return out, ve


def _ours_final_and_starts(fn, sigmas, x, seed=0, **kw):
    D = Denoiser(_EpsFn(), Schedule(), "eps")
    starts = []
    final = fn(
        D,
        x.clone(),
        sigmas,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda d: starts.append(d["x"]),
        **kw,
    )
    return final, starts


@pytest.mark.parametrize(
    "name,scheduler_cls,options",
    [
        ("euler", "EulerDiscreteScheduler", {}),
        ("heun", "HeunDiscreteScheduler", {}),
        ("euler-a", "EulerAncestralDiscreteScheduler", {}),
        ("dpm++2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        (
            "dpm++2m-sde",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ),
        ("unipc", "UniPCMultistepScheduler", {"solver_order": 2}),
        ("unipc-3", "UniPCMultistepScheduler", {"solver_order": 3}),
        ("ddim", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    ],
)
@pytest.mark.parametrize("steps", [4, 12, 25])
def test_trajectory_equals_diffusers_scheduler(name, scheduler_cls, options, steps):
    import diffusers

    if name == "ddim" and 1000 % steps:
        pytest.skip(
            "diffusers' DDIM steps to t - 1000 // steps, off the trailing grid; "
            "test_diffusers_ddim_previous_step_quirk covers it"
        )
    ref = getattr(diffusers, scheduler_cls)(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,  # Heun's defaults differ
        timestep_spacing="trailing",
        **options,
    )
    sigmas = Schedule().sampling_sigmas(steps, "trailing")
    sigma0 = float(sigmas[0])
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5)) * sigma0
    theirs, ve = _diffusers_run(ref, steps, x.clone(), sigma0)
    kw = {"order": 3} if name == "unipc-3" else {}
    ours, starts = _ours_final_and_starts(get_sampler(name.removesuffix("-3")).fn, sigmas, x, **kw)
    assert torch.allclose(ours, theirs[-1], atol=1e-4), (ours - theirs[-1]).abs().max()
    per_step = theirs[1::2] if name == "heun" else theirs  # Heun: two scheduler calls per step
    for i, start in enumerate(starts[1:], 1):  # x at the start of step i vs after step i - 1
        got = per_step[i - 1] if ve else per_step[i - 1] * (1 + float(sigmas[i]) ** 2) ** 0.5
        assert torch.allclose(start, got, rtol=1e-4, atol=1e-4), f"step {i}"


def test_diffusers_ddim_previous_step_quirk():
    """diffusers' DDIMScheduler.step takes the previous step as t - T // N rather than the next
    entry of its own timesteps. With trailing spacing and N not dividing T, x lands one trained
    step off the level the next call assumes (12 steps: 916 -> 833, but the next t is 832)."""
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(12)
    ts = ref.timesteps.tolist()
    assert ts[1] - 1000 // 12 == 833 and ts[2] == 832
    sigmas = Schedule().sampling_sigmas(12, "trailing")
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    theirs, _ = _diffusers_run(ref, 12, x.clone(), float(sigmas[0]))
    ours, _ = _ours_final_and_starts(sample_ddim, sigmas, x)
    assert 1e-3 < (ours - theirs[-1]).abs().max() < 0.05  # a small but real difference


def test_latent_samples_are_not_clamped_to_the_pixel_range():
    """Pixels are clamped to [-1, 1]; an autoencoder's latents (std ~1, unbounded) must not be."""
    from torch import nn

    from nanodiffusion.inference.pipelines import TextToImage, sample_images
    from nanodiffusion.io.config import preset

    class Three(nn.Module):  # D(x, sigma) = 3 everywhere: every sampler's last step returns 3
        def __init__(self):
            super().__init__()
            self.w, self.schedule = nn.Parameter(torch.zeros(1)), Schedule(kind="edm")

        def forward(self, x, sigma, cond=None):
            return torch.full_like(x, 3.0)

    assert sample_images(Three(), 2, (4, 2, 2), "dpm++2m", 3).max() == 1  # pixels: clamped
    assert torch.all(sample_images(Three(), 2, (4, 2, 2), "dpm++2m", 3, clamp=False) == 3)

    class Identity:  # an "autoencoder" that shows the latents it is given
        def decode_images(self, z):
            return z

    cfg = preset("text")
    cfg.model.image_size = 2
    pipe = TextToImage(cfg, Three(), lambda prompts: torch.zeros(len(prompts), 3, 5), Identity())
    assert torch.all(pipe("a red circle", steps=3, output="tensor") == 3)

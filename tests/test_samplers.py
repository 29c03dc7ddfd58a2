"""Samplers against exact answers: Gaussian data (ideal denoiser in closed form) and diffusers."""

import pytest
import torch

from nanodiffusion.denoisers import Denoiser
from nanodiffusion.errors import NanodiffError
from nanodiffusion.samplers import sample_ddim, sample_ddpm
from nanodiffusion.schedules import Schedule


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


@pytest.mark.parametrize("sampler,steps,spacing", [("ddpm", 1000, "leading"),
                                                   ("ddim", 200, "trailing")])
def test_samples_match_gaussian_mean_and_covariance(sampler, steps, spacing):
    mean_err, cov_err = _sample_gaussian(sample_ddpm if sampler == "ddpm" else sample_ddim, steps,
                                         spacing=spacing)
    assert mean_err < 0.04 and cov_err < 0.05  # sampling noise at N = 10k is about 0.015


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
    fn(D, x * s.prior_std(float(sigmas[0])), sigmas, generator=torch.Generator().manual_seed(seed),
       callback=lambda d: xs.append(d["x"]), **kw)
    return [x / (1 + float(sig) ** 2) ** 0.5 for x, sig in zip(xs, sigmas[:-1], strict=True)]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trajectory_equals_diffusers_ddim_scheduler(spacing, eta):
    from diffusers import DDIMScheduler

    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing=spacing)
    theirs = _diffusers_loop(ref, 25, x.clone(), eta=eta)
    ours = _our_loop(sample_ddim, 25, x.clone(), spacing, eta=eta)
    # ours[i] is x at the start of step i; theirs[i] is x after step i
    for i in range(1, 25):
        assert torch.allclose(ours[i], theirs[i - 1], rtol=1e-5, atol=1e-5), f"step {i}"


def test_ddpm_trajectory_equals_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        variance_type="fixed_small")
    theirs = _diffusers_loop(ref, 1000, x.clone())
    ours = _our_loop(sample_ddpm, 1000, x.clone())
    assert torch.allclose(ours[1], theirs[0], atol=1e-6)  # one step
    for i in [10, 500, 999]:  # float32 rounding accumulates to ~2e-5 over 1000 steps
        assert torch.allclose(ours[i], theirs[i - 1], atol=1e-4), f"step {i}"


def test_bad_sigma_sequences_are_refused():
    D = GaussianDenoiser(*_gaussian())
    x = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(NanodiffError, match="end at 0"):
        sample_ddim(D, x, torch.tensor([10.0, 1.0]))
    with pytest.raises(NanodiffError, match="strictly decrease"):
        sample_ddim(D, x, torch.tensor([10.0, 1.0, 1.0, 0.0]))
    with pytest.raises(NanodiffError, match="eta"):
        sample_ddim(D, x, torch.tensor([1.0, 0.0]), eta=2.0)

"""Rectified flow as one more parameterisation (Lipman et al. 2023; Liu et al. 2023; Esser et al.
2024): x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0, and in the sigma form
sigma = t / (1 - t), x = x_t / (1 - t). Every sampler runs on it through D(x, sigma, cond); the
flow Euler step is the sigma-space Euler (and deterministic DDIM) step; diffusers' flow Euler
scheduler takes the same trajectory."""

import math

import pytest
import torch

from nanodiffusion.core.denoisers import Denoiser, coefficients
from nanodiffusion.core.losses import LossConfig, diffusion_loss, sample_sigmas
from nanodiffusion.core.samplers import get_sampler
from nanodiffusion.core.schedules import Schedule, flow_sigma, flow_t


class Velocity(torch.nn.Module):
    """A fixed smooth 'network' of (x_t, timestep): a random 3x3 convolution modulated by the time."""

    def __init__(self, channels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.seen: list[float] = []

    def forward(self, x_t, timestep, cond=None):
        self.seen.append(float(timestep.reshape(-1)[0]))
        scale = (1 + timestep / 1000).reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        return self.conv(x_t) * scale - 0.3 * x_t


def test_the_network_sees_x_t_and_predicts_the_velocity():
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma = flow_sigma(t)
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = coefficients("flow", s)
    x = x0 + s * eps
    x_t = (1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * eps
    assert torch.allclose(c_in * x, x_t, atol=1e-12)  # the network's input is x_t
    assert torch.allclose(c_skip * x + c_out * (eps - x0), x0, atol=1e-12)  # v = eps - x0 gives x0 back
    # the training target of diffusion_loss is that velocity: a network that outputs it has zero loss
    oracle = Denoiser(lambda x_in, c_noise, cond=None: eps - x0, Schedule(kind="flow"), "flow")
    assert diffusion_loss(oracle, x0, sigma, eps, LossConfig()).item() < 1e-12  # float64 rounding
    # and its timestep is SD3's: 1000 t
    assert torch.allclose(oracle.c_noise(sigma), 1000 * t)


def test_the_resolution_shift_is_a_multiplication_of_sigma():
    t = torch.linspace(0, 0.99, 50, dtype=torch.float64)
    shift = 3.0
    shifted_t = shift * t / (1 + (shift - 1) * t)  # SD3 / diffusers, in t
    assert torch.allclose(flow_sigma(shifted_t), shift * flow_sigma(t), rtol=1e-12)
    assert torch.allclose(flow_t(flow_sigma(t)), t, atol=1e-15)


def test_logit_normal_timesteps_are_lognormal_sigmas():
    """SD3's logit-normal t (m, s) is EDM's lognormal sigma with p_mean = m, p_std = s: logit t = ln sigma."""
    z = torch.randn(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m, s = 0.0, 1.0
    t = torch.sigmoid(m + s * z)
    sigma = sample_sigmas(
        Schedule(kind="flow"),
        1000,
        LossConfig(sigma_sampling="lognormal", p_mean=m, p_std=s),
        torch.Generator().manual_seed(1),
    )
    assert torch.allclose(sigma.double(), flow_sigma(t), rtol=1e-6)


def test_uniform_training_times_follow_the_schedule():
    sched = Schedule(kind="flow", sigma_max=999.0, shift=3.0)
    sigma = sample_sigmas(sched, 20000, LossConfig(), torch.Generator().manual_seed(0)).double()
    assert sigma.min() > 0 and sigma.max() <= 999.0 * (1 + 1e-6)
    # unshifted t = flow_t(sigma / shift) is uniform on [0, flow_t(999 / 3)]
    t = flow_t(sigma / 3.0) / flow_t(torch.tensor(999.0 / 3.0, dtype=torch.float64))
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.005


def _flow_euler(net, noise, sigmas):
    """The flow Euler method written in t: x_t' = x_t + (t' - t) v(x_t, 1000 t)."""
    x_t, out = noise.clone(), []
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        t, t_next = flow_t(s), flow_t(s_next)
        x_t = x_t + (t_next - t) * net(x_t, torch.full((len(x_t),), 1000 * t, dtype=x_t.dtype))
        out.append(x_t)
    return out


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_flow_euler_step_is_euler_and_ddim_in_sigma_space(sampler, shift):
    sched = Schedule(kind="flow", sigma_max=999.0, shift=shift)
    sigmas = sched.sampling_sigmas(12)
    noise = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = _flow_euler(Velocity().double(), noise, sigmas.tolist())
    denoiser = Denoiser(Velocity().double(), sched, "flow")
    steps = []
    x = noise * sched.prior_std(float(sigmas[0]))  # x_t = noise at the first level
    get_sampler(sampler).fn(denoiser, x, sigmas, callback=steps.append)
    # each callback reports the state before its step: compare the one after, as x_t
    got = [d["x"] / (1 + d["sigma"]) for d in steps[1:]]
    final = get_sampler(sampler).fn(denoiser, x, sigmas)
    for a, b in zip([*got, final], expected, strict=True):  # the last level is 0: x_t = x
        assert (a - b).abs().max().item() < 1e-6


def test_diffusers_flow_euler_scheduler_takes_the_same_trajectory():
    """The same velocity network and starting noise through diffusers' FlowMatchEulerDiscreteScheduler
    (shift 3, dynamic shifting off) and through nanodiffusion's Euler over the same shifted sigmas."""
    diffusers = pytest.importorskip("diffusers")
    steps, shift = 10, 3.0
    sched = Schedule(kind="flow", sigma_max=999.0, shift=shift)
    sigmas = sched.sampling_sigmas(steps)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=False)
    unshifted_t = flow_t(sigmas[:-1] / shift)  # diffusers shifts the t it is given
    scheduler.set_timesteps(sigmas=unshifted_t.tolist())
    assert torch.allclose(scheduler.sigmas.double(), flow_t(sigmas), atol=1e-6)  # the same shifted levels

    noise = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    net = Velocity()
    sample, theirs = noise.clone(), []
    for timestep in scheduler.timesteps:
        v = net(sample, timestep.expand(len(sample)))
        sample = scheduler.step(v, timestep, sample).prev_sample
        theirs.append(sample)

    ours = []
    denoiser = Denoiser(Velocity(), sched, "flow")
    x = noise.double() * sched.prior_std(float(sigmas[0]))
    final = get_sampler("euler").fn(denoiser.double(), x, sigmas, callback=ours.append)
    ours = [d["x"] / (1 + d["sigma"]) for d in ours[1:]] + [final]
    assert len(ours) == len(theirs) == steps
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert (a.float() - b).abs().max().item() < 1e-5, i


def test_every_sampler_runs_on_a_flow_model():
    from nanodiffusion.core.samplers import SAMPLERS

    sched = Schedule(kind="flow", sigma_max=999.0, shift=3.0)
    denoiser = Denoiser(Velocity(), sched, "flow")
    sigmas = sched.sampling_sigmas(8)
    noise = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    for name in SAMPLERS:
        out = get_sampler(name).fn(
            denoiser,
            noise * sched.prior_std(float(sigmas[0])),
            sigmas,
            generator=torch.Generator().manual_seed(0),
        )
        assert out.shape == noise.shape and torch.isfinite(out).all(), name
        assert math.isfinite(out.abs().max().item())


def test_mode_sampling_has_sd3s_density():
    """SD3's mode sampling (eq. 20): t = f_mode(u), u uniform. Its density is 1 / f_mode'(f^-1(t));
    with s = 0 it is uniform t, and the median of t is f_mode(1/2) = 1/2 for any s (symmetric)."""
    flow = Schedule(kind="flow", sigma_max=1e9)  # t_max = 1 - 1e-9: the ramp is all of [0, 1]
    gen = torch.Generator().manual_seed(0)
    t0 = flow_t(sample_sigmas(flow, 40000, LossConfig(sigma_sampling="mode", mode_scale=0.0), gen).double())
    assert abs(t0.mean().item() - 0.5) < 0.01 and abs(t0.var().item() - 1 / 12) < 0.004
    s = 1.29
    t = flow_t(sample_sigmas(flow, 40000, LossConfig(sigma_sampling="mode", mode_scale=s), gen).double())
    # P(t <= f_mode(u)) = 1 - u, f_mode decreasing: compare the empirical CDF at f_mode(u) to 1 - u
    u = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    f = 1 - u - s * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
    cdf = (t[None, :] <= f[:, None]).double().mean(1)
    assert torch.allclose(cdf, 1 - u, atol=0.01)
    assert (t.sub(0.5).abs() < 0.1).double().mean() > 1.5 * 0.2  # mid t favoured over uniform


def test_mode_sampling_needs_a_flow_schedule():
    from nanodiffusion.errors import NanodiffError
    from nanodiffusion.io.config import apply_overrides, preset

    with pytest.raises(NanodiffError, match="sigma_sampling = 'mode'.*schedule.kind = 'flow'"):
        apply_overrides(preset("digits"), ["loss.sigma_sampling=mode"])
    with pytest.raises(NanodiffError, match="loss.mode_scale must be a number in"):
        apply_overrides(
            preset("digits"), ["schedule.kind=flow", "loss.sigma_sampling=mode", "loss.mode_scale=3"]
        )


def test_the_flow_presets_are_what_bench_backbones_measured():
    """fashion-mnist-flow is the fashion-mnist preset with bench/backbones.py's flow overrides,
    the recipe its table measured, and nothing else."""
    from backbones import FLOW
    from nanodiffusion.io.config import apply_overrides, preset

    assert preset("fashion-mnist-flow") == apply_overrides(preset("fashion-mnist"), FLOW)
    mnist = preset("mnist-flow")
    assert mnist.data.name == "mnist" and mnist.schedule == preset("fashion-mnist-flow").schedule

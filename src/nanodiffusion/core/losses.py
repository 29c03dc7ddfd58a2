"""The training loss: weight(sigma) * ||F(c_in x, c_noise) - F_target||^2 with x = x0 + sigma eps.

With the defaults (eps target, uniform step t, uniform weight) this is exactly the course's
loss, ``|| eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2``
(Ho et al. 2020, Algorithm 1). In x0 space it is ||D - x0||^2 weighted by 1 / c_out^2
= 1 / sigma^2 = SNR. The other weightings are stated in x0 space and converted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nanodiffusion.core.denoisers import Denoiser, coefficients, expand_sigma
from nanodiffusion.core.schedules import Schedule, flow_sigma, flow_t
from nanodiffusion.errors import NanodiffError

SIGMA_SAMPLINGS = ("uniform-t", "lognormal", "mode")
MODE_SCALE_MAX = 2 / (math.pi - 2)  # f_mode is monotone for -1 <= s <= 2 / (pi - 2) (Esser et al. 2024)
WEIGHTINGS = ("uniform", "min-snr", "edm")


@dataclass
class LossConfig:
    # uniform over the T trained steps, EDM's lognormal (for flow: SD3's logit-normal, ln sigma = logit t),
    # or SD3's mode sampling of t (flow schedules)
    sigma_sampling: str = "uniform-t"
    weighting: str = "uniform"  # plain MSE on the network's target
    min_snr_gamma: float = 5.0  # Hang et al. 2023
    p_mean: float = -1.2  # EDM lognormal: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    mode_scale: float = 1.29  # "mode" (flow schedules): SD3's s; 0 is uniform t, > 0 favours mid t

    def __post_init__(self):
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise NanodiffError(
                f"unknown sigma sampling {self.sigma_sampling!r}; choose one of {', '.join(SIGMA_SAMPLINGS)}"
            )
        if self.weighting not in WEIGHTINGS:
            raise NanodiffError(
                f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}"
            )


def sample_sigmas(
    schedule: Schedule, n: int, cfg: LossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n training noise levels [n] (float32, CPU: the trainer moves them)."""
    if cfg.sigma_sampling == "lognormal":
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (cfg.p_mean + cfg.p_std * z).exp().float()
    if cfg.sigma_sampling == "mode":  # Esser et al. 2024, eq. 20: t = 1 - u - s (cos^2(pi u / 2) - 1 + u)
        if schedule.kind != "flow":
            raise NanodiffError("loss.sigma_sampling = 'mode' needs schedule.kind = 'flow'")
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t = 1 - u - cfg.mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
        t = (t * flow_t(schedule.sigma_max / schedule.shift)).clamp(min=1e-6)  # up to the noisiest level
        return (schedule.shift * flow_sigma(t)).float()
    if schedule.discrete:
        t = torch.randint(0, schedule.T, (n,), generator=generator)
        return schedule.sigmas()[t].float()
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(min=1e-6)  # sigma > 0: c_out > 0
    return (1 / schedule.alpha_bar_at(u) - 1).sqrt().float()


def loss_weight(sigma: torch.Tensor, cfg: LossConfig, parameterization: str, sigma_data: float):
    """Weight on the raw-target MSE: lambda_x0(sigma) * c_out(sigma)^2."""
    if cfg.weighting == "uniform":
        return torch.ones_like(sigma)
    _, c_out, _ = coefficients(parameterization, sigma, sigma_data)
    if cfg.weighting == "min-snr":
        lambda_x0 = (1 / sigma**2).clamp(max=cfg.min_snr_gamma)
    else:  # edm, Karras et al. 2022 eq. 8: lambda = (sigma^2 + sd^2) / (sigma sd)^2
        lambda_x0 = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return lambda_x0 * c_out**2


def diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    eps: torch.Tensor,
    cfg: LossConfig,
    cond: Any = None,
) -> torch.Tensor:
    """Mean weighted MSE over the batch for given noise levels sigma [B] and noise eps."""
    s = expand_sigma(sigma, x0)
    x = x0 + s * eps
    F, c_skip, c_out = denoiser.raw(x, sigma, cond)
    # (x0 - c_skip x) / c_out with x expanded, so that eps comes back exactly at small sigma
    target = ((1 - c_skip) * x0 - c_skip * s * eps) / c_out
    w = expand_sigma(loss_weight(sigma, cfg, denoiser.parameterization, denoiser.sigma_data), x0)
    return (w * (F.float() - target) ** 2).mean()

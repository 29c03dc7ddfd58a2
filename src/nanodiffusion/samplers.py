"""Samplers: pure functions over a denoiser D(x, sigma, cond) -> x0_hat and a noise-level sequence.

Each takes x at sigmas[0] in sigma form (x = x0 + sigma eps), walks a decreasing sequence
of noise levels that ends exactly at 0, and returns the sample. No integer timesteps,
no hidden state: ``sigmas`` is a tensor you can print.

A callback, if given, is called once per step with a dict: i, x, sigma, sigma_next, x0_hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import NanodiffError

Callback = Callable[[dict], None]


def check_sigmas(sigmas: torch.Tensor) -> list[float]:
    """Validate a sampling sequence: strictly decreasing, ending exactly at 0."""
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise NanodiffError("a sampling sequence needs at least two noise levels")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise NanodiffError(f"sampling sigmas must strictly decrease, got {values[:4]}...")
    if values[-1] != 0:
        raise NanodiffError(f"sampling sigmas must end at 0, got {values[-1]}")
    return values


@torch.no_grad()
def sample_ddim(
    denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, cond: Any = None, eta: float = 0.0,
    generator: torch.Generator | None = None, callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma form.

    With eps_hat = (x - x0_hat) / sigma, the step to sigma_next is
        x <- x0_hat + sqrt(sigma_next^2 - sigma_up^2) eps_hat + sigma_up z,
        sigma_up = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2),
    the paper's sigma_t(eta) divided by sqrt(alpha_bar_next). eta = 0 is deterministic and
    is exactly Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma;
    eta = 1 is the DDPM posterior (ancestral sampling).
    """
    if not 0 <= eta <= 1:
        raise NanodiffError(f"eta must be in [0, 1], got {eta}")
    levels = check_sigmas(sigmas)
    ones = x.new_ones(x.shape[0])
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        sigma, sigma_next = levels[i], levels[i + 1]
        x0_hat = denoiser(x, sigma * ones, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})
        if sigma_next == 0:
            x = x0_hat
            continue
        eps_hat = (x - x0_hat) / sigma
        sigma_up = eta * sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x0_hat + sigma_down * eps_hat
        if sigma_up > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + sigma_up * z
    return x


def sample_ddpm(
    denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, cond: Any = None,
    generator: torch.Generator | None = None, callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance.

    Over the model's own T steps this is the paper's sampler; over a subsequence it is the
    respaced sampler of Nichol & Dhariwal (2021): the posterior q(x_s | x_t, x0_hat) between
    consecutive levels, which is DDIM with eta = 1.
    """
    return sample_ddim(denoiser, x, sigmas, cond, eta=1.0, generator=generator,
                       callback=callback, progress=progress)


SAMPLERS: dict[str, Callable] = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise NanodiffError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]

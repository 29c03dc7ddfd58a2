"""Guidance: denoisers that wrap a denoiser.

Classifier-free guidance (Ho & Salimans 2022) trains one network both with its condition c
and with a reserved "no condition" input (the condition is dropped with probability p),
then extrapolates from the unconditional towards the conditional prediction:

    D_w(x, sigma, c) = D(x, sigma, none) + w (D(x, sigma, c) - D(x, sigma, none))

w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 trades diversity
for fidelity. (Ho & Salimans write (1 + w') eps_c - w' eps_u; their w' is our w - 1.)
Guiding D is the same as guiding eps, v or the score: each is an affine function of D at
fixed x and sigma, e.g. eps = (x - D) / sigma. Both predictions come from one forward pass
over the batch [x, x] with conditions [c, none].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanodiffusion.errors import NanodiffError


class ClassifierFreeGuidance(nn.Module):
    """D_w(x, sigma, cond) from a denoiser trained with condition dropout.

    ``uncond`` is the "no condition" input, one row (e.g. the reserved class index as a
    0-d tensor, or a null text embedding [L, E]); it is repeated to the batch.
    """

    def __init__(self, denoiser: nn.Module, scale: float, uncond: torch.Tensor):
        super().__init__()
        if not isinstance(scale, (int, float)) or scale != scale:
            raise NanodiffError(f"guidance scale must be a number, got {scale!r}")
        self.denoiser, self.scale = denoiser, float(scale)
        self.register_buffer("uncond", torch.as_tensor(uncond), persistent=False)

    @property
    def schedule(self):
        return self.denoiser.schedule

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is None:
            raise NanodiffError("classifier-free guidance needs a condition to guide towards")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        if self.scale == 1:
            return self.denoiser(x, sigma, cond)
        uncond = self.uncond.to(cond.device, cond.dtype).expand(cond.shape[0], *self.uncond.shape)
        if self.scale == 0:
            return self.denoiser(x, sigma, uncond)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]))
        d_cond, d_uncond = both.chunk(2)
        return d_uncond + self.scale * (d_cond - d_uncond)


def class_guidance(denoiser: nn.Module, scale: float, num_classes: int) -> ClassifierFreeGuidance:
    """Guidance for nanodiffusion's class-conditional UNet, whose "no class" index is num_classes."""
    if num_classes < 1:
        raise NanodiffError(
            "guidance needs a class-conditional model (trained with data.class_conditional = true)"
        )
    return ClassifierFreeGuidance(denoiser, scale, torch.tensor(num_classes))

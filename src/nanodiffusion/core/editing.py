"""Editing with any run and any sampler: img2img (SDEdit) and training-free inpainting.

Each is a hook around the one denoiser contract D(x, sigma, cond) -> x0_hat in sigma form
(x = x0 + sigma z), so it runs with every sampler in ``nanodiffusion.core.samplers``, with guidance,
in pixel or latent space, and on tensors of any shape:

* SDEdit (Meng et al. 2021): noise the input x0 to the level that a strength s in (0, 1] names
  and sample from there: the last round(s * steps) steps of the ``steps``-step sequence, from
  x = x0 + sigma_k z. s = 1 is sampling from pure noise (the input is ignored), so its images
  equal ``sample_images``' with the same seed; a small s stays close to the input.
* replace, the simple method (Song et al. 2021, Sec. 5 "imputation"; Lugmayr et al. 2022,
  Sec. 4.1): before every network evaluation the known region of x is set to the original
  noised to the current level, x0 + sigma z with fresh z, and the denoiser's x0_hat there is
  the original itself. The result equals the original exactly where the mask keeps it.
* RePaint (Lugmayr et al. 2022, Algorithm 1 with the resampling schedule of Sec. 4.2): replace,
  plus going back in time. The sequence is walked in jumps of j steps; each jump from sigma_a to
  sigma_b is sampled r times, and between times x is noised back up by the forward process,
        x <- x + sqrt(sigma_a^2 - sigma_b^2) z,
  so the generated region is harmonised with the known one. It costs r times the NFE.
  Multistep samplers restart their history at each jump (each jump is a separate run).

Masks here: ``known`` is 1 where the input is kept and 0 where it is generated, broadcastable
against x ([B or 1, 1 or C, *spatial]); values between 0 and 1 blend. Image files use the
opposite, Stable Diffusion's convention: white is the region to repaint (``mask_from_image``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from nanodiffusion.core.samplers import check_sigmas, noise_like
from nanodiffusion.errors import NanodiffError

METHODS = ("replace", "repaint", "model")  # model: a mask-conditioned run (data.task = "inpaint")


def check_strength(strength: Any) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise NanodiffError(f"strength must be in (0, 1], got {strength}")
    return float(strength)


def sdedit_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The last round(strength * steps) levels of a `steps`-step sequence (SDEdit's start)."""
    steps = len(sigmas) - 1
    k = round(check_strength(strength) * steps)
    if k < 1:
        raise NanodiffError(f"strength {strength} x {steps} steps rounds to no step; raise either")
    return sigmas[steps - k :]


class KnownRegion:
    """The replace hook as a denoiser: D'(x, sigma) = m x0 + (1 - m) D(m (x0 + sigma z) + (1 - m) x, sigma)
    with m the known mask. A sampler that steps x <- x0_hat + sigma_next (x - x0_hat) / sigma keeps
    the known region on the forward process, and its last step (to sigma = 0) returns x0 there."""

    def __init__(
        self,
        denoiser: Callable,
        x0: torch.Tensor,
        known: torch.Tensor,
        generator: torch.Generator | None = None,
    ):
        self.denoiser, self.x0, self.known, self.generator = denoiser, x0, known.to(x0.dtype), generator

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        noised = self.x0 + s * noise_like(x, self.generator)
        x = torch.lerp(x, noised, self.known)
        return torch.lerp(self.denoiser(x, sigma, cond), self.x0, self.known)


def repaint(
    sample_fn: Callable,
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    jump: int = 5,
    resample: int = 5,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """RePaint's resampling around any sampler: `denoiser` should be a KnownRegion."""
    if jump < 1 or resample < 1:
        raise NanodiffError(f"RePaint's jump and resample must be >= 1, got {jump} and {resample}")
    levels = check_sigmas(sigmas)
    n = len(levels) - 1
    starts = range(0, n, jump)
    bar = tqdm(total=len(starts) * resample, disable=not progress, desc="repaint", leave=False)
    for a in starts:
        b = min(a + jump, n)
        for u in range(resample):
            x = sample_fn(denoiser, x, sigmas[a : b + 1], cond, generator=generator, **options)
            if u < resample - 1:  # back up from sigma_b to sigma_a by the forward process
                x = x + math.sqrt(levels[a] ** 2 - levels[b] ** 2) * noise_like(x, generator)
            bar.update(1)
    bar.close()
    return x


def edit(
    sample_fn: Callable,
    denoiser: Callable,
    noise: torch.Tensor,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    prior_std: float,
    strength: float = 1.0,
    known: torch.Tensor | None = None,
    method: str = "replace",
    jump: int = 5,
    resample: int = 5,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """One batch of img2img and/or inpainting from `noise` (standard normal, shaped like x0).

    strength < 1 starts from x0 noised to the strength's level (SDEdit); strength 1 from the
    prior, prior_std * noise, as plain sampling does. With `known`, the known region is held to
    x0 by `method` (replace or repaint) and pasted exactly at the end.
    """
    if method not in METHODS:
        raise NanodiffError(f"inpainting method must be one of {', '.join(METHODS)}, got {method!r}")
    x0 = x0.expand_as(noise)
    if check_strength(strength) < 1:
        sigmas = sdedit_sigmas(sigmas, strength)
        x = x0 + float(sigmas[0]) * noise
    else:
        x = prior_std * noise
    if known is None:
        return sample_fn(denoiser, x, sigmas, cond, generator=generator, progress=progress, **options)
    if known.ndim != x0.ndim:
        raise NanodiffError(f"the mask has {known.ndim} dimensions and the images {x0.ndim}")
    try:
        torch.broadcast_shapes(known.shape, x0.shape)
    except RuntimeError:
        raise NanodiffError(
            f"the mask is {list(known.shape)}, which does not fit images {list(x0.shape)}"
        ) from None
    known = known.to(x0.device, x0.dtype)
    if method == "model":  # the network was shown the masked image and the mask: sample, then paste
        x = sample_fn(denoiser, x, sigmas, cond, generator=generator, progress=progress, **options)
        return torch.lerp(x, x0, known)
    hooked = KnownRegion(denoiser, x0, known, generator)
    if method == "replace":
        x = sample_fn(hooked, x, sigmas, cond, generator=generator, progress=progress, **options)
    else:
        x = repaint(
            sample_fn,
            hooked,
            x,
            sigmas,
            cond,
            jump=jump,
            resample=resample,
            generator=generator,
            progress=progress,
            **options,
        )
    return torch.lerp(x, x0, known)


def masked_input(x0: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The image condition of a mask-conditioned network (the method "model", data.task "inpaint"):
    the known part of the image and the mask, [B, C + 1, *spatial] ([B, C, ...] x0 and a
    one-channel `known`, 1 = keep). Training and sampling both build it here, so they agree."""
    return torch.cat([x0 * known, known], 1)


# --- masks ---------------------------------------------------------------------------------------
def mask_from_image(image: torch.Tensor) -> torch.Tensor:
    """A mask picture ([1 or 3, H, W] in [-1, 1], white = repaint) as `known` [1, 1, H, W]:
    1 where the picture is dark (kept), 0 where it is light (generated)."""
    grey = image.float().mean(0, keepdim=True)[None]
    return (grey < 0).float()


def demo_masks(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """`known` masks [n, 1, size, size] of three families, in turn: a centre square (a quarter of
    the area), the right half, and a random box of 30-50% of each side."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.ones(n, 1, size, size)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = size // 4, size - size // 4
            masks[i, :, a:b, a:b] = 0
        elif kind == 1:
            masks[i, :, :, size // 2 :] = 0
        else:
            h, w = (int(size * f) for f in 0.3 + 0.2 * torch.rand(2, generator=g))
            top = int(torch.randint(0, size - h + 1, (1,), generator=g))
            left = int(torch.randint(0, size - w + 1, (1,), generator=g))
            masks[i, :, top : top + h, left : left + w] = 0
    return masks


def random_masks(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training masks for a mask-conditioned model: `known` [n, 1, size, size], each drawn from
    one of five families: a random box hidden (30% of draws), one half hidden (20%), a few
    scattered small boxes hidden (20%), a jittered centre square hidden (20%), or nothing known
    (10%: the model still learns to generate from scratch)."""
    masks = torch.ones(n, 1, size, size)

    def draw(lo: float, hi: float) -> int:
        return max(1, int(size * (lo + (hi - lo) * float(torch.rand((), generator=generator)))))

    def at(extent: int) -> int:
        return int(torch.randint(0, size - extent + 1, (), generator=generator))

    for i, family in enumerate(torch.randint(0, 10, (n,), generator=generator).tolist()):
        if family < 3:
            h, w = draw(0.25, 0.6), draw(0.25, 0.6)
            top, left = at(h), at(w)
            masks[i, :, top : top + h, left : left + w] = 0
        elif family < 5:
            side = int(torch.randint(0, 4, (), generator=generator))
            half = size // 2
            region = [
                (slice(None), slice(None, half)),
                (slice(None), slice(half, None)),
                (slice(None, half), slice(None)),
                (slice(half, None), slice(None)),
            ][side]
            masks[i, :, region[0], region[1]] = 0
        elif family < 7:
            for _ in range(int(torch.randint(2, 5, (), generator=generator))):
                h, w = draw(0.1, 0.3), draw(0.1, 0.3)
                top, left = at(h), at(w)
                masks[i, :, top : top + h, left : left + w] = 0
        elif family < 9:
            side = draw(0.4, 0.6)
            top, left = ((size - side) // 2 + int(j) for j in torch.randint(-2, 3, (2,), generator=generator))
            top, left = (max(0, min(size - side, v)) for v in (top, left))
            masks[i, :, top : top + side, left : left + side] = 0
        else:
            masks[i] = 0
    return masks

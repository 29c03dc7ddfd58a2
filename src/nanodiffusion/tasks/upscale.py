"""Super-resolution by diffusion (SR3, Saharia et al. 2021) and the measures it is judged by.

An upscaling run (``nanodiff train --task upscale``) is a UNet that sees, beside its noisy
input, the low-resolution image upsampled to its size (bicubic), concatenated on the channel
axis, as in SR3. The low-resolution input is first corrupted by Gaussian noise of a random
level s in training, and s is given to the network (noise-conditioning augmentation, Ho et al.
2021, "Cascaded diffusion models"; Imagen): a cascade's second stage then learns not to trust
its input's finest detail, which a base model's samples get wrong in ways real low-resolution
images do not. Here s enters as one more input channel filled with s (Imagen adds it to the
time embedding instead; the first convolution carries it just as well), so the condition is

    [upsample(low + s z), s]   with z ~ N(0, I),  C + 1 channels.

In training s is 0 half the time and uniform in [0, data.noise_aug] otherwise; sampling picks
it (0 for real low-resolution images; a little above 0 can help a cascade).

What is diffused (data.residual, the default) is not the image but the detail bicubic
upsampling misses, (x - bicubic(low)) scaled to sigma_data (SRDiff, Li et al. 2022): the
low frequencies come from the input exactly instead of being re-generated. Results are then
projected onto the images whose area-downsampling is the input (`project`).

PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03)
measure against the true high-resolution images on a 0-1 scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanodiffusion.errors import NanodiffError


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] by area averaging (box filter: no aliasing from a factor 2)."""
    return F.interpolate(images.float(), size=(size, size), mode="area")


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, size, size], bicubic (a = -0.75, as PIL and OpenCV), clamped to [-1, 1]."""
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def condition(low: torch.Tensor, size: int, aug: torch.Tensor | float = 0.0,
              generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The network's extra input [B, C + 1, size, size]: the low-resolution images ([B, C, h, w]
    in [-1, 1]) noised by `aug` (one level, or one per image) times `noise` (default: drawn from
    `generator`), upsampled, and the level as a channel."""
    aug = torch.as_tensor(aug, dtype=torch.float32).reshape(-1).expand(len(low)).to(low.device)
    if (aug < 0).any():
        raise NanodiffError(f"the augmentation level must be >= 0, got {aug.min().item()}")
    noisy = low.float()
    if noise is not None or (aug > 0).any():
        z = torch.randn(low.shape, generator=generator) if noise is None else noise
        noisy = noisy + aug[:, None, None, None] * z.to(low.device)
    up = upsample(noisy, size)
    return torch.cat([up, aug[:, None, None, None].expand(len(low), 1, size, size)], 1)


def random_levels(n: int, max_level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training's augmentation levels [n]: 0 half the time, else uniform in [0, max_level]."""
    levels = torch.rand(n, generator=generator) * max_level
    return torch.where(torch.rand(n, generator=generator) < 0.5, torch.zeros(n), levels)


def random_crops(tensors: list[torch.Tensor], crop: int, step: int, generator: torch.Generator | None = None,
                 draws: int | None = None, rows: slice = slice(None)) -> list[torch.Tensor]:
    """The same random crop [B, *, crop, crop] of every image of each tensor ([B, *, H, W] alike);
    offsets are multiples of `step` so a crop starts on the low-resolution grid. A process that
    holds `rows` of a batch of `draws` images draws the whole batch's offsets and keeps its rows,
    so every number of processes crops alike."""
    H = tensors[0].shape[-1]
    if crop > H:
        raise NanodiffError(f"crop {crop} is larger than the images ({H})")
    n = draws or len(tensors[0])
    top = (torch.randint(0, (H - crop) // step + 1, (n,), generator=generator) * step)[rows]
    left = (torch.randint(0, (H - crop) // step + 1, (n,), generator=generator) * step)[rows]
    corners = list(zip(top.tolist(), left.tolist(), strict=True))
    return [torch.stack([t[i, ..., a:a + crop, b:b + crop] for i, (a, b) in enumerate(corners)])
            for t in tensors]


def residual_scale(images: torch.Tensor, low: int, sigma_data: float) -> float:
    """sigma_data / the std of (x - bicubic(area(x))): the residual's scale in training."""
    r = images.float() - upsample(downsample(images, low), images.shape[-1])
    return sigma_data / r.std().clamp(min=1e-6).item()


def to_target(images: torch.Tensor, low: torch.Tensor, cfg) -> torch.Tensor:
    """What an upscaling run diffuses: the images, or (data.residual) the detail bicubic
    upsampling misses, (x - bicubic(low)) x data.residual_scale (SRDiff, Li et al. 2022)."""
    if not cfg.data.residual:
        return images
    return (images - upsample(low, images.shape[-1])) * cfg.data.residual_scale


def from_samples(samples: torch.Tensor, low: torch.Tensor, cfg, consistent: bool = True) -> torch.Tensor:
    """Images in [-1, 1] from an upscaling run's samples (to_target undone); `consistent`
    then projects them onto the images whose area-downsampling is `low` exactly (the
    correction low - area(x), spread over each block). When `low` is an area-downsampled
    truth, that set and [-1, 1] hold the truth, so neither projection moves an image away from it."""
    x = samples
    if cfg.data.residual:
        x = upsample(low, samples.shape[-1]).to(samples) + samples / cfg.data.residual_scale
    if consistent:
        x = project(x, low.to(x))
    return x.clamp(-1, 1)


def project(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The closest images to `images` whose area-downsampling to low's size equals `low`."""
    f = images.shape[-1] // low.shape[-1]
    if f * low.shape[-1] != images.shape[-1]:
        raise NanodiffError(f"a {low.shape[-1]}-pixel image does not divide a {images.shape[-1]}-pixel one")
    return images + F.interpolate(low - downsample(images, low.shape[-1]), scale_factor=f, mode="nearest")


def check_upscale_input(low: torch.Tensor, low_size: int, channels: int) -> None:
    """One line for a low-resolution input that the run cannot take."""
    if low.ndim != 4 or low.shape[1] != channels or tuple(low.shape[-2:]) != (low_size, low_size):
        raise NanodiffError(f"this run upscales [{channels}, {low_size}, {low_size}] images, got "
                            f"{list(low.shape[1:])}")


def low_size(cfg) -> int:
    """The low-resolution side of an upscaling run's config (data.low_res, default half the size)."""
    size = cfg.model.image_size
    return cfg.data.low_res or size // 2


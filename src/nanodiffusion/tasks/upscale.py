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

from nanodiffusion.core.losses import LossConfig
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config, DataConfig, DiffusionConfig, OptimConfig, RunConfig
from nanodiffusion.nets.unet import UNetConfig
from nanodiffusion.tasks.base import Sampling
from nanodiffusion.tasks.generate import check_crop, random_crops


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] by area averaging (box filter: no aliasing from a factor 2)."""
    return F.interpolate(images.float(), size=(size, size), mode="area")


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, size, size], bicubic (a = -0.75, as PIL and OpenCV), clamped to [-1, 1]."""
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def condition(
    low: torch.Tensor,
    size: int,
    aug: torch.Tensor | float = 0.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
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
        raise NanodiffError(
            f"this run upscales [{channels}, {low_size}, {low_size}] images, got {list(low.shape[1:])}"
        )


def low_size(cfg) -> int:
    """The low-resolution side of an upscaling run's config (data.low_res, default half the size)."""
    size = cfg.model.image_size
    return cfg.data.low_res or size // 2


def preset() -> Config:
    """The shapes world, 32x32 -> 64x64 super-resolution (SR3), about 10 min on 2 cores.

    A convolutional UNet (no attention) sees the bicubic-upsampled low-res scene beside its noisy
    input and trains on 32x32 crops of the 64x64 scenes, a quarter of the cost per image; having
    no attention, it samples whole 64x64 images (or any size) all the same."""
    return Config(
        data=DataConfig(name="shapes", image_size=64, task="upscale", crop=32),
        model=UNetConfig(
            in_channels=3,
            channels=16,
            channel_mults=[1, 2, 4],
            attn_resolutions=[],
            mid_attention=False,
            dropout=0.0,
            image_size=64,
        ),
        schedule=Schedule(kind="edm"),
        diffusion=DiffusionConfig(parameterization="edm"),
        loss=LossConfig(sigma_sampling="lognormal", weighting="edm"),
        optim=OptimConfig(lr=2e-3, batch_size=64, warmup_steps=50),
        run=RunConfig(
            steps=1000,
            sample_every=500,
            checkpoint_every=500,
            sampler="dpm++2m",
            sample_steps=20,
            sample_n=16,
        ),
    )


class Upscale:
    """Super-resolution (SR3): the network sees [upsample(low + s z), s] beside x (``condition``)
    and learns the residual that bicubic upsampling misses (``to_target``); a draw takes one
    ``low_res`` image per sample ([n, C, h, w] in [-1, 1]), noised to the level ``aug`` first, and
    ``consistent`` projects each result onto the images whose area-downsampling is its input."""

    name = "upscale"
    inputs = ("low_res", "aug", "consistent")

    def prepare(self, cfg, data) -> None:
        c, size = data.images.shape[1], data.images.shape[-1]
        cfg.model.cond_channels = c + 1  # the upsampled low-resolution image and its noise level
        d = cfg.data
        if d.autoencoder:
            raise NanodiffError("an upscaling run diffuses pixels: leave data.autoencoder empty")
        if not 0 <= d.low_res < size:
            raise NanodiffError(f"data.low_res must be smaller than the images ({size}), got {d.low_res}")
        if d.noise_aug < 0:
            raise NanodiffError(f"data.noise_aug must be >= 0, got {d.noise_aug}")
        if d.residual and not d.residual_scale:  # scaled to the data's sigma_data, like latents
            d.residual_scale = residual_scale(data.images[:2000], low_size(cfg), cfg.diffusion.sigma_data)
        check_crop(cfg, size)

    def batch(self, cfg, denoiser, x0, eps, generator, draws, rows):
        """The low-resolution image, noise-augmented and upsampled, and its level; crops (data.crop)
        start on the low-resolution grid."""
        size, low = x0.shape[-1], downsample(x0, low_size(cfg))
        levels = random_levels(draws, cfg.data.noise_aug, generator)[rows]
        z = torch.randn(draws, *low.shape[1:], generator=generator)[rows]
        image = condition(low, size, levels, noise=z)
        x0 = to_target(x0, low, cfg)
        if cfg.data.crop:
            x0, eps, image = random_crops(
                [x0, eps, image], cfg.data.crop, size // low.shape[-1], generator, draws, rows
            )
        return denoiser.conditioned_on(image), x0, eps

    def low_shape(self, cfg) -> tuple[int, int, int]:
        """[C, h, w] of the low-resolution images the run takes."""
        return cfg.model.in_channels, low_size(cfg), low_size(cfg)

    def grid(self, cfg, images: torch.Tensor) -> dict:
        """The training images' low-resolution versions, upscaled."""
        return {"low_res": downsample(images, low_size(cfg))}

    def sampling(
        self,
        cfg,
        n: int,
        seed: int,
        low_res: torch.Tensor | None = None,
        aug: float = 0.0,
        consistent: bool = True,
    ) -> Sampling:
        if low_res is None:
            raise NanodiffError("an upscaling run draws from low-resolution images: give low_res")
        check_upscale_input(low_res, low_size(cfg), cfg.model.in_channels)
        if len(low_res) != n:
            raise NanodiffError(f"give one low-resolution image per sample ({n}), got {len(low_res)}")
        image = condition(low_res, cfg.model.image_size, aug, torch.Generator().manual_seed(seed))
        return Sampling(
            image,
            clamp=not cfg.data.residual,
            finish=lambda samples: from_samples(samples, low_res.float(), cfg, consistent),
        )

    presets = {"upscale": preset}  # nanodiff train --preset upscale

"""Generation from noise: the plain task (data.task ""), and random crops for convolutional UNets.

With ``data.crop`` > 0 a run trains on random crops of its images: a UNet without attention is
a stack of convolutions, so what it learns on 32x32 crops it applies to whole 64x64 images at
a quarter of the cost per training image (attention would see other sizes when sampling).
"""

from __future__ import annotations

import torch

from nanodiffusion.errors import NanodiffError
from nanodiffusion.tasks.base import Sampling


def check_crop(cfg, size: int) -> None:
    """One line for a data.crop that the network cannot train on (0: no crops)."""
    crop, m = cfg.data.crop, cfg.model
    if crop and m.kind != "unet":  # a DiT's position code and token count are fixed by its size
        raise NanodiffError(f"data.crop trains a convolutional UNet; model.kind = {m.kind!r} cannot")
    if not crop:
        return
    stride = 2 ** (len(m.channel_mults) - 1)
    if crop and not (0 < crop <= size and crop % stride == 0):
        raise NanodiffError(f"data.crop must be a multiple of {stride} up to {size}, got {crop}")
    if crop and (m.attn_resolutions or m.mid_attention or cfg.data.autoencoder):
        raise NanodiffError(
            "data.crop trains a convolutional UNet on pixels: set model.attn_resolutions=[], "
            "model.mid_attention=false and no autoencoder (attention would see other sizes "
            "when sampling)"
        )


def random_crops(
    tensors: list[torch.Tensor],
    crop: int,
    step: int,
    generator: torch.Generator | None = None,
    draws: int | None = None,
    rows: slice = slice(None),
) -> list[torch.Tensor]:
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
    return [
        torch.stack([t[i, ..., a : a + crop, b : b + crop] for i, (a, b) in enumerate(corners)])
        for t in tensors
    ]


class Generate:
    """Images from noise, guided by a class or a prompt if the run has one: the network sees x
    alone and is trained on the data itself (or on random crops of it, data.crop)."""

    name = ""
    inputs: tuple[str, ...] = ()

    def prepare(self, cfg, data) -> None:
        cfg.model.cond_channels = 0
        check_crop(cfg, data.images.shape[-1])

    def batch(self, cfg, denoiser, x0, eps, generator, draws, rows):
        if cfg.data.crop:
            x0, eps = random_crops([x0, eps], cfg.data.crop, 1, generator, draws, rows)
        return denoiser, x0, eps

    def grid(self, cfg, images: torch.Tensor) -> dict:
        return {}

    def sampling(self, cfg, n: int, seed: int) -> Sampling:
        return Sampling()

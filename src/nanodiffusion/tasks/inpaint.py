"""Inpainting by a mask-conditioned model (data.task "inpaint"), as Stable Diffusion's inpainting
UNet: the network sees, beside its noisy input, the image with the region to fill blanked out and
the mask (``nanodiffusion.core.editing.masked_input``), C + 1 extra channels. It trains on the
data with random masks of five families (``random_masks``: boxes, halves, scattered boxes, a
centre square, and 10% with nothing known, so it still generates from scratch), and draws with
the editing method "model": sample, then paste the known pixels exactly.

Any run can inpaint without training for it (the methods "replace" and "repaint" in
``nanodiffusion.core.editing``); a mask-conditioned model sees the whole image at every step
instead of having its known region overwritten, and so fits the seam better.
"""

from __future__ import annotations

import torch

from nanodiffusion.core.editing import demo_masks, masked_input, random_masks
from nanodiffusion.errors import NanodiffError
from nanodiffusion.tasks.base import Sampling


class Inpaint:
    """A mask-conditioned model: draws take ``init_image`` and ``known`` (1 = keep) and the
    editing method ``inpaint="model"``."""

    name = "inpaint"
    inputs: tuple[str, ...] = ()  # init_image and known are every run's editing inputs

    def prepare(self, cfg, data) -> None:
        cfg.model.cond_channels = data.images.shape[1] + 1  # the masked image and the mask
        if cfg.data.crop:
            raise NanodiffError(
                "data.crop is for generating and upscaling runs; an inpainting run "
                "trains on whole images (set data.crop=0)"
            )

    def batch(self, cfg, denoiser, x0, eps, generator, draws, rows):
        known = random_masks(draws, x0.shape[-1], generator)[rows].to(x0.device)
        return denoiser.conditioned_on(masked_input(x0, known)), x0, eps

    def grid(self, cfg, images: torch.Tensor) -> dict:
        """The demo masks' holes in the first training images, filled."""
        return {"init_image": images, "known": demo_masks(len(images), images.shape[-1]), "inpaint": "model"}

    def sampling(self, cfg, n: int, seed: int) -> Sampling:
        return Sampling()  # the method "model" binds the masked image (inference.sampling.Edit)

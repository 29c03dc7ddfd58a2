"""The editing demos behind `nanodiff inpaint --demo` and `nanodiff upscale --demo`: hide part
of a run's test images, or shrink them, and measure how well each method brings them back.

    demo = inpaint_demo(cfg, denoiser, n=6, steps=50)
    demo.errors   # {"replace": (seam RMSE, hole RMSE), "repaint": (...)}

Both return every image they drew, so a caller can plot them, and the numbers it prints.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from nanodiffusion.core.editing import demo_masks
from nanodiffusion.data.datasets import load_data
from nanodiffusion.inference.pipelines import conditioning, draw, image_shape
from nanodiffusion.io.config import Config
from nanodiffusion.metrics.image import fill_errors, psnr, ssim
from nanodiffusion.tasks.upscale import downsample, low_size, upsample

SSIM_WINDOW = 11  # pixels: smaller images get PSNR only


def inpaint_methods(cfg: Config) -> list[str]:
    """The fill methods that suit a run, the default last: a mask-conditioned run's own
    ("model"), else "replace" and RePaint ("repaint")."""
    return ["model"] if cfg.data.task == "inpaint" else ["replace", "repaint"]


def fill(
    cfg: Config,
    denoiser,
    images: torch.Tensor,
    known: torch.Tensor,
    method: str,
    n: int,
    *,
    sampler: str = "dpm++2m",
    steps: int = 20,
    jump: int = 5,
    resample: int = 5,
    progress: bool = False,
    **draw_options,
) -> torch.Tensor:
    """n fillings [n, C, H, W] of the holes (known = 0) of images [1 or n, C, H, W] by one method
    ("replace", "repaint" with RePaint's jump and resample, or "model"); the rest of `draw`'s
    options (cond, guidance, seed, ...) pass through. With progress, a line on stderr says what
    is drawn."""
    if progress:
        how = f", jumps of {jump} resampled {resample}x" if method == "repaint" else ""
        tqdm.write(f"{method}: {n} images, {sampler} {steps} steps{how}", file=sys.stderr)
    return draw(
        cfg,
        denoiser,
        n,
        init_image=images,
        known=known,
        inpaint=method,
        sampler=sampler,
        steps=steps,
        jump=jump,
        resample=resample,
        progress=progress,
        **draw_options,
    )


@dataclass
class InpaintDemo:
    images: torch.Tensor  # [n, C, H, W] the test images, in [-1, 1]
    known: torch.Tensor  # [n, 1, H, W]: 1 kept, 0 hidden and filled
    filled: dict[str, torch.Tensor]  # method -> [n, C, H, W]
    errors: dict[str, tuple[float, float]]  # method -> RMSE (0-1 scale) in the seam's band, in the hole


def inpaint_demo(
    cfg: Config,
    denoiser,
    n: int = 6,
    *,
    autoencoder=None,
    encoder=None,
    prompt: str | None = None,
    negative: str = "",
    class_label: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    **fill_options,
) -> InpaintDemo:
    """Hide part of a run's first n test images (demo_masks' three families, drawn with `seed`)
    and fill them with every method that suits the run (`fill`'s options pass through). A text
    run is prompted with the images' own captions where the data has them, else with `prompt`;
    a class run with `class_label` (none: its "no class" input)."""
    data = load_data(cfg.data.name, "test", cfg.data.image_size, cfg.data.channels)
    images, known = data.images[:n], demo_masks(n, image_shape(cfg, autoencoder)[-1], seed)
    if data.captions and encoder is not None:
        prompt = data.captions[:n]
    cond, w, uncond = conditioning(cfg, encoder, n, prompt, negative, class_label, guidance)
    filled = {
        method: fill(
            cfg,
            denoiser,
            images,
            known,
            method,
            n,
            autoencoder=autoencoder,
            cond=cond,
            guidance=w,
            uncond=uncond,
            seed=seed,
            **fill_options,
        )
        for method in inpaint_methods(cfg)
    }
    errors = {method: fill_errors(result, images, known) for method, result in filled.items()}
    return InpaintDemo(images, known, filled, errors)


def upscale(
    cfg: Config,
    denoiser,
    low: torch.Tensor,
    *,
    aug: float = 0.0,
    sampler: str = "dpm++2m",
    steps: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """An upscaling run's images [n, C, H, W] of low-resolution images [n, C, h, w], the input
    noised to the augmentation level `aug` first; with progress, a line on stderr says what is
    drawn."""
    n, size, small = len(low), cfg.model.image_size, low_size(cfg)
    if progress:
        tqdm.write(
            f"{n} images {small}x{small} -> {size}x{size}, {sampler} {steps} steps, augmentation {aug:g}",
            file=sys.stderr,
        )
    return draw(
        cfg, denoiser, n, low_res=low, aug=aug, sampler=sampler, steps=steps, seed=seed, progress=progress
    )


@dataclass
class UpscaleDemo:
    truth: torch.Tensor  # [n, C, H, W] the test images
    low: torch.Tensor  # [n, C, h, w] their area-downsampled versions, the input
    bicubic: torch.Tensor  # [n, C, H, W] the baseline
    upscaled: torch.Tensor  # [n, C, H, W] the run's
    scores: dict[str, dict[str, float]]  # "bicubic" / "diffusion" -> mean "psnr" (dB) and "ssim" (H >= 11)


def upscale_demo(cfg: Config, denoiser, n: int = 8, **upscale_options) -> UpscaleDemo:
    """Shrink an upscaling run's first n test images to its low resolution, upscale them with the
    run (`upscale`'s options pass through) and with bicubic interpolation, and score both
    against the originals."""
    size = cfg.model.image_size
    truth = load_data(cfg.data.name, "test", size, cfg.data.channels).images[:n]
    low = downsample(truth, low_size(cfg))
    upscaled = upscale(cfg, denoiser, low, **upscale_options)
    bicubic = upsample(low, size)
    return UpscaleDemo(
        truth,
        low,
        bicubic,
        upscaled,
        {"bicubic": image_scores(bicubic, truth), "diffusion": image_scores(upscaled, truth)},
    )


def image_scores(images: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and, where the images hold SSIM's 11-pixel window, mean SSIM against the truth."""
    scores = {"psnr": psnr(images, truth).mean().item()}
    if min(images.shape[-2:]) >= SSIM_WINDOW:
        scores["ssim"] = ssim(images, truth).mean().item()
    return scores

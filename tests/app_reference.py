"""What the web app's tests compare against: the library's own images for a set of settings, and
a tiny run with a ControlNet (tests/test_app.py, test_app_browser.py, test_app_models.py)."""

import functools
from pathlib import Path

import numpy as np

from nanodiffusion.inference.pipelines import conditioning, draw, load_parts
from nanodiffusion.io.viz import to_uint8
from tiny_runs import train_tiny


@functools.cache
def parts(folder: str):
    return load_parts(folder, device="cpu")


def library_images(
    folder, *, n: int, steps: int, seed: int, sampler: str = "dpm++2m", prompt=None, class_label=None,
    guidance=None, **edit,
) -> np.ndarray:  # fmt: skip
    """The library's own images for these settings (pipelines.conditioning and draw, then
    viz.to_uint8), as the app's PNGs hold them: [n, H, W] grey or [n, H, W, 3]."""
    cfg, denoiser, autoencoder, encoder = parts(str(folder))
    cond, scale, uncond = conditioning(cfg, encoder, n, prompt, "", class_label, guidance)
    images = draw(
        cfg, denoiser, n, autoencoder=autoencoder, cond=cond, guidance=scale, uncond=uncond,
        sampler=sampler, steps=steps, seed=seed, **edit,
    )  # fmt: skip
    pixels = to_uint8(images)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def controlled_run(tmp: Path) -> tuple[Path, Path]:
    """A tiny class-conditional digits run and a 3-step ControlNet on it, in seconds."""
    from nanodiffusion.training.controlnet import train_controlnet

    run = train_tiny(tmp / "run", "data.class_conditional=true")
    train_controlnet(run, tmp / "cn", steps=3, batch_size=8, progress=False)
    return run, tmp / "cn"

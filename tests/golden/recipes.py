"""Tiny runs whose sampled images were saved before the package moved into its layers (at
commit e4797ad): a digits class run, a text run in an autoencoder's latent space, an inpainting
run and an upscaling run. tests/test_golden.py trains them again with today's code and asserts
the same images; `python tests/golden/recipes.py` rewrites outputs.safetensors (only do that
when a change of images is intended, and say so in the commit)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from nanodiffusion.core.editing import demo_masks
from nanodiffusion.data import datasets as data
from nanodiffusion.inference.pipelines import TextToImage, draw, load_run, sample_images
from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.tasks.upscale import downsample
from nanodiffusion.training.diffusion import train

OUTPUTS = Path(__file__).with_name("outputs.safetensors")
TINY = [
    "model.channels=8",
    "model.blocks_per_level=1",
    "model.attn_resolutions=[]",
    "optim.batch_size=16",
    "optim.warmup_steps=2",
    "run.steps=6",
    "run.sample_every=0",
    "run.checkpoint_every=0",
    "run.sample_n=4",
    "run.sample_steps=3",
]


def digits(tmp: Path) -> torch.Tensor:
    cfg = apply_overrides(preset("digits"), TINY + ["data.class_conditional=true"])
    train(cfg, tmp / "digits", progress=False)
    _, denoiser = load_run(tmp / "digits", device="cpu")
    labels = torch.arange(4) % 10
    plain = sample_images(denoiser, 4, (1, 8, 8), "ddim", 5, seed=3, class_labels=labels)
    guided = sample_images(denoiser, 4, (1, 8, 8), "dpm++2m", 5, seed=3, class_labels=labels, guidance=3.0)
    return torch.cat([plain, guided])


def text(tmp: Path) -> torch.Tensor:
    saved = dict(data.SHAPES_SCENES)
    data.SHAPES_SCENES.update(train=40, test=8)  # a few scenes, rendered in a second
    try:
        return _text(tmp)
    finally:
        data.SHAPES_SCENES.update(saved)


def _text(tmp: Path) -> torch.Tensor:
    cfg = apply_overrides(
        preset("text"),
        [
            "data.image_size=16",
            "data.autoencoder_steps=3",
            "data.autoencoder_channels=8",
            "data.autoencoder_batch_size=8",
            "data.max_tokens=12",
            "model.channels=32",
            "model.attn_resolutions=[2]",
            "optim.batch_size=8",
            "optim.warmup_steps=1",
            "run.steps=3",
            "run.sample_every=0",
            "run.checkpoint_every=0",
            "run.sample_steps=2",
            "run.sample_n=4",
        ],
    )
    train(cfg, tmp / "text", progress=False)
    pipe = TextToImage.from_pretrained(tmp / "text", device="cpu")
    return pipe(["a red circle", "two blue squares"], n=2, steps=4, seed=5, guidance=3.0, output="tensor")


def inpaint(tmp: Path) -> torch.Tensor:
    cfg = apply_overrides(preset("digits"), TINY + ["data.task=inpaint"])
    train(cfg, tmp / "inpaint", progress=False)
    cfg, denoiser = load_run(tmp / "inpaint", device="cpu")
    images = data.load_data("digits", "test").images[:4]
    return draw(
        cfg,
        denoiser,
        4,
        init_image=images,
        known=demo_masks(4, 8),
        inpaint="model",
        sampler="euler",
        steps=4,
        seed=1,
    )


def upscale(tmp: Path) -> torch.Tensor:
    cfg = apply_overrides(
        preset("digits"), TINY + ["data.task=upscale", "data.image_size=16", "model.mid_attention=false"]
    )
    train(cfg, tmp / "upscale", progress=False)
    cfg, denoiser = load_run(tmp / "upscale", device="cpu")
    low = downsample(data.load_data("digits", "test", image_size=16).images[:4], 8)
    return draw(cfg, denoiser, 4, low_res=low, aug=0.1, sampler="heun", steps=3, seed=2)


RECIPES = {"digits": digits, "text": text, "inpaint": inpaint, "upscale": upscale}


def run_all(tmp: Path) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)  # the same reductions on every machine
    return {name: recipe(tmp).contiguous() for name, recipe in RECIPES.items()}


if __name__ == "__main__":
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        outputs = run_all(Path(tmp))
    save_file(outputs, str(OUTPUTS))
    print({k: list(v.shape) for k, v in outputs.items()}, file=sys.stderr)

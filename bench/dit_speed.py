"""Training speed: nanodiffusion's DiT against diffusers' DiTTransformer2DModel at equal forward FLOPs.

Two class-conditional configurations: DiT as it runs on latents (32x32x4, patch 2, 256 tokens,
192 wide, heads of 64, 6 blocks) and a small pixel-space one (28x28x1, patch 4, 49 tokens, 128
wide, heads of 32, 8 blocks). One training step is what each library's users run, as in
bench/train_speed.py: the eps-prediction MSE at a uniform step of the DDPM schedule with the label
dropped 10% of the time, backward, gradient norm clipped to 1.0 and an AdamW step. The four
models alternate step by step, in a rotating order, so that the noise of a shared machine falls
on all of them. Peak memory comes from a fresh process per model.

    python bench/dit_speed.py          # 11 minutes on 2 busy cores; rewrites its part of docs/benchmarks.md
    python bench/dit_speed.py --quick  # a smoke test; writes a file only when given --out
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import DOC, forward_flops, machine, write_section
from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.losses import diffusion_loss, sample_sigmas
from nanodiffusion.io.config import Config, DataConfig, OptimConfig
from nanodiffusion.nets.dit import DiT, DiTConfig
from train_speed import Trainer, _adamw, _memory_mb, _spread, _update

NUM_CLASSES = 10
LIBRARIES = ("nanodiffusion", "diffusers")


@dataclass(frozen=True)
class Shape:
    """One benchmarked DiT: its input [channels, size, size], patch, width, head width, depth and batch."""

    name: str
    channels: int
    size: int
    patch: int
    width: int
    head_dim: int
    depth: int
    batch: int

    @property
    def image(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def tokens(self) -> int:
        return (self.size // self.patch) ** 2

    def describe(self) -> str:
        return (
            f"{self.size}x{self.size}x{self.channels}, patch {self.patch} ({self.tokens} tokens), "
            f"{self.width} wide, {self.width // self.head_dim} heads of {self.head_dim}, "
            f"{self.depth} blocks, batch {self.batch}"
        )


SHAPES = {
    shape.name: shape
    for shape in (
        Shape("latents", channels=4, size=32, patch=2, width=192, head_dim=64, depth=6, batch=16),
        Shape("pixels", channels=1, size=28, patch=4, width=128, head_dim=32, depth=8, batch=64),
    )
}
# "latents/nanodiffusion", ...: every model the benchmark times
CONTENDERS = [f"{shape}/{library}" for shape in SHAPES for library in LIBRARIES]


def speed_config(shape: Shape) -> Config:
    """nanodiffusion's DiT in `shape`, class-conditional, trained with eps targets on the linear
    DDPM schedule (as bench/train_speed.py trains the UNet)."""
    return Config(
        data=DataConfig(class_conditional=True),
        model=DiTConfig(
            in_channels=shape.channels,
            image_size=shape.size,
            patch_size=shape.patch,
            width=shape.width,
            head_dim=shape.head_dim,
            depth=shape.depth,
            num_classes=NUM_CLASSES,
        ),
        optim=OptimConfig(lr=1e-3, batch_size=shape.batch),
    )


def _batch(shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs in [-1, 1] [batch, C, size, size] and random labels [batch]."""
    x0 = torch.rand(shape.batch, *shape.image) * 2 - 1
    return x0, torch.randint(0, NUM_CLASSES, (shape.batch,))


def nanodiffusion_trainer(shape: Shape) -> Trainer:
    """nanodiffusion's DiT through its Denoiser and diffusion_loss, with the label dropped as its
    trainer drops it (to the "no class" index, with probability data.p_uncond)."""
    cfg = speed_config(shape)
    denoiser = Denoiser(DiT(cfg.model), cfg.schedule, cfg.diffusion.parameterization)
    opt = _adamw(denoiser, cfg.optim)

    def step() -> None:
        x0, labels = _batch(shape)
        labels[torch.rand(shape.batch) < cfg.data.p_uncond] = NUM_CLASSES
        sigma = sample_sigmas(cfg.schedule, shape.batch, cfg.loss)
        loss = diffusion_loss(denoiser, x0, sigma, torch.randn_like(x0), cfg.loss, labels)
        _update(loss, denoiser, opt, cfg.optim.grad_clip)

    def forward_one() -> torch.Tensor:
        return denoiser.net(torch.zeros(1, *shape.image), torch.zeros(1), torch.zeros(1, dtype=torch.long))

    return Trainer(denoiser.net, forward_one, step)


def diffusers_dit(shape: Shape):
    """DiTTransformer2DModel shaped like speed_config(shape)'s DiT: the same width (heads x head
    width), depth, patch and channels, adaLN-Zero, NUM_CLASSES classes, no learned sigma."""
    # imported here so that nanodiffusion's memory run does not pay for loading diffusers
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=shape.width // shape.head_dim,
        attention_head_dim=shape.head_dim,
        in_channels=shape.channels,
        out_channels=shape.channels,
        num_layers=shape.depth,
        sample_size=shape.size,
        patch_size=shape.patch,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_type="ada_norm_zero",
    )


def diffusers_trainer(shape: Shape) -> Trainer:
    """diffusers' DiT trained as its class-conditional DiT recipes do: DDPMScheduler.add_noise and
    MSE on eps; the model's own LabelEmbedding drops 10% of the labels in training mode."""
    from diffusers import DDPMScheduler

    dit = diffusers_dit(shape)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optim = speed_config(shape).optim  # the same optimiser settings for both
    opt = _adamw(dit, optim)

    def step() -> None:
        x0, labels = _batch(shape)
        eps = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (shape.batch,))
        loss = F.mse_loss(dit(scheduler.add_noise(x0, eps, t), t, labels).sample, eps)
        _update(loss, dit, opt, optim.grad_clip)

    def forward_one() -> torch.Tensor:
        label = torch.zeros(1, dtype=torch.long)
        return dit(torch.zeros(1, *shape.image), label, label).sample

    return Trainer(dit, forward_one, step)


def build(name: str) -> Trainer:
    """A contender by name, "latents/diffusers" say."""
    shape, library = name.split("/")
    trainer = nanodiffusion_trainer if library == "nanodiffusion" else diffusers_trainer
    return trainer(SHAPES[shape])


def images_per_second(name: str, trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.step()
    return SHAPES[name.split("/")[0]].batch / (time.perf_counter() - start)


def peak_rss_child(name: str, steps: int) -> None:
    """Run in a fresh process: print the RSS once the model is built and the peak RSS of `steps`
    training steps (as bench/train_speed.py measures the UNet's)."""
    trainer = build(name)
    built_mb = _memory_mb("VmRSS")
    for _ in range(steps):
        trainer.step()
    print(json.dumps({"built_mb": built_mb, "peak_mb": _memory_mb("VmHWM")}))


def peak_rss(name: str, steps: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--peak-rss", name, "--steps", str(steps)]
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def benchmark(rounds: int, warmup: int, memory_steps: int) -> str:
    """Run everything and return the docs section in Markdown."""
    load = [os.getloadavg()[0]]  # other jobs on the machine, for the record
    trainers = {name: build(name) for name in CONTENDERS}
    flops = {name: forward_flops(t.forward_one) for name, t in trainers.items()}
    params = {name: sum(p.numel() for p in t.net.parameters()) for name, t in trainers.items()}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()

    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in range(rounds):
        for name in CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]:
            rates[name].append(images_per_second(name, trainers[name]))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in CONTENDERS))
    load.append(os.getloadavg()[0])
    memory = {name: peak_rss(name, memory_steps) for name in CONTENDERS}

    def ratios(shape: str) -> list[float]:
        """Ours over theirs, paired round by round (the two ran seconds apart)."""
        ours, theirs = rates[f"{shape}/nanodiffusion"], rates[f"{shape}/diffusers"]
        return [a / b for a, b in zip(ours, theirs, strict=True)]

    rows = [
        "| configuration | model | params | forward GFLOPs / image | images/s, median (range) "
        "| nanodiffusion / diffusers, images/s | peak RSS MB (growth in training) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in CONTENDERS:
        shape, library = name.split("/")
        model = "nanodiffusion `DiT`" if library == "nanodiffusion" else "diffusers `DiTTransformer2DModel`"
        vs = _spread(ratios(shape), 2) if library == "nanodiffusion" else ""
        mem = memory[name]
        rows.append(
            f"| {shape} | {model} | {params[name] / 1e6:.2f}M | {flops[name] / 1e9:.3f} "
            f"| {_spread(rates[name], 1)} | {vs} "
            f"| {mem['peak_mb']:.0f} ({mem['peak_mb'] - mem['built_mb']:+.0f}) |"
        )

    def gap(shape: str) -> str:
        return f"{100 * (flops[f'{shape}/diffusers'] / flops[f'{shape}/nanodiffusion'] - 1):+.2f}%"

    from diffusers import DiTTransformer2DModel

    default_head = inspect.signature(DiTTransformer2DModel).parameters["attention_head_dim"].default
    summary = (
        "At equal forward FLOPs nanodiffusion's DiT trains "
        + " and ".join(f"{statistics.median(ratios(s)):.2f}x ({s})" for s in SHAPES)
        + " as many images/s as diffusers' `DiTTransformer2DModel` (medians of paired rounds)."
    )
    shapes = "\n".join(f"- {shape.name}: {shape.describe()}." for shape in SHAPES.values())
    return f"""
## Training speed: nanodiffusion's DiT against diffusers' `DiTTransformer2DModel`

{summary}

{shapes}

Both are class-conditional ({NUM_CLASSES} classes and a "no class" index), adaLN-Zero, with the
tanh GELU and an MLP 4x as wide; diffusers' model has `norm_type="ada_norm_zero"`,
`num_embeds_ada_norm={NUM_CLASSES}` and `out_channels = in_channels` (no learned sigma), and the
same head width as nanodiffusion's (`attention_head_dim`; its default is {default_head}, DiT-XL/2's).
One training step on random inputs in [-1, 1]: eps-prediction MSE at a uniform step of the DDPM
schedule, the label dropped 10% of the time, backward, gradient norm clipped to 1.0, AdamW
(lr 1e-3). nanodiffusion trains through its `Denoiser` and `diffusion_loss`; diffusers through
`DDPMScheduler.add_noise` and `dit(x_t, t, labels).sample`, its `LabelEmbedding` dropping the
labels. Forward FLOPs per image differ by {gap("latents")} (latents) and {gap("pixels")} (pixels):
every diffusers block computes the noise level's and the label's embedding again (each
`AdaLayerNormZero` owns its own), which is also why it has more parameters.

- Machine: {machine()}; diffusers {version("diffusers")}.
  Other jobs share it: absolute numbers move with their load, side-by-side ratios much less.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one image, with CPU flash attention
  counted as 4 B heads L^2 head_dim (torch counts it as 0).
- Timing: {warmup} warm-up steps per model, then {rounds} rounds; each round times one step of
  every model, in an order that rotates from round to round. Ratios are taken within a round,
  where the two models of a configuration ran seconds apart, then their median and range.
  Load average (1 minute) at the start and the end: {load[0]:.1f}, {load[1]:.1f}.
- Memory: peak resident set (`VmHWM`) of {memory_steps} training steps in a fresh process; in
  brackets, its growth over the resident set once the libraries are imported and the model built.

{chr(10).join(rows)}

Reproduce with `python bench/dit_speed.py` (11 minutes on 2 cores busy with other jobs, less on quiet ones).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only, for smoke tests")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"Markdown file to update (default {DOC}; --quick writes only when this is given)",
    )
    parser.add_argument("--peak-rss", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss:
        peak_rss_child(args.peak_rss, args.steps)
        return

    if args.quick:
        section = benchmark(rounds=2, warmup=1, memory_steps=1)
    else:
        section = benchmark(rounds=24, warmup=2, memory_steps=3)
    print(section)
    out = args.out or (None if args.quick else DOC)
    if out is not None:
        write_section("dit_speed", section, out)
        print(f"wrote the dit_speed section of {out}")


if __name__ == "__main__":
    main()

"""Training speed: nanodiffusion's UNet against diffusers' UNet2DModel at equal forward FLOPs.

One training step is what each library's users run: a batch of 64 random 28x28x1 images in
[-1, 1], the eps-prediction MSE at a uniform step t of the DDPM schedule, backward, gradient
norm clipped to 1.0 and an AdamW step. The models alternate window by window, in a rotating
order, so that the noise of a shared machine falls on all of them; the fp32 matmul ceiling is
measured in every round too. Peak memory comes from a fresh process per model.

    python bench/train_speed.py            # about 6 minutes; rewrites its section of docs/benchmarks.md
    python bench/train_speed.py --quick    # a smoke test in under a minute; writes only with --out
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import DOC, forward_flops, machine, matmul_gflops, write_section
from torch import nn

from nanodiffusion.config import OptimConfig, preset
from nanodiffusion.denoisers import Denoiser
from nanodiffusion.losses import diffusion_loss, sample_sigmas
from nanodiffusion.nets.unet import UNet

BATCH = 64
IMAGE = (1, 28, 28)


@dataclass
class Trainer:
    """A network, its forward pass on one image (for counting FLOPs) and one training step."""

    net: nn.Module
    forward_one: Callable[[], torch.Tensor]
    step: Callable[[], None]


def _random_images() -> torch.Tensor:
    return torch.rand(BATCH, *IMAGE) * 2 - 1


def _update(loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()


def _adamw(net: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(net.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2),
                             weight_decay=optim.weight_decay)


def nanodiffusion_trainer() -> Trainer:
    """The `mnist` preset as it trains: eps target, uniform t, uniform weight."""
    cfg = preset("mnist")
    denoiser = Denoiser(UNet(cfg.model), cfg.schedule, cfg.diffusion.parameterization)
    opt = _adamw(denoiser, cfg.optim)

    def step() -> None:
        x0 = _random_images()
        sigma = sample_sigmas(cfg.schedule, BATCH, cfg.loss)
        loss = diffusion_loss(denoiser, x0, sigma, torch.randn_like(x0), cfg.loss)
        _update(loss, denoiser, opt, cfg.optim.grad_clip)

    return Trainer(denoiser.net, lambda: denoiser.net(torch.zeros(1, *IMAGE), torch.zeros(1)), step)


def diffusers_trainer(head_dim: int) -> Trainer:
    """UNet2DModel shaped like the mnist preset (widths 32, 64, 64; attention at 7x7), trained
    as diffusers' unconditional example trains it (DDPMScheduler.add_noise, MSE on eps)."""
    # imported here so that nanodiffusion's memory run does not pay for loading diffusers
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=IMAGE[1], in_channels=IMAGE[0], out_channels=IMAGE[0],
        block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=head_dim,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optim = preset("mnist").optim  # the same optimiser settings for every contender
    opt = _adamw(unet, optim)

    def step() -> None:
        x0 = _random_images()
        eps = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, eps, t), t).sample, eps)
        _update(loss, unet, opt, optim.grad_clip)

    return Trainer(unet, lambda: unet(torch.zeros(1, *IMAGE), torch.zeros(1, dtype=torch.long)), step)


CONTENDERS: dict[str, tuple[str, Callable[[], Trainer]]] = {
    "nanodiffusion": ("nanodiffusion `UNet`, `mnist` preset (head width 32)", nanodiffusion_trainer),
    "diffusers": ("diffusers `UNet2DModel`, default head width 8", lambda: diffusers_trainer(8)),
    "diffusers-hd32": ("diffusers `UNet2DModel`, head width 32", lambda: diffusers_trainer(32)),
}


def images_per_second(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def peak_rss_child(name: str, steps: int) -> None:
    """Run in a fresh process: print the RSS once the model is built and the peak RSS of `steps`
    training steps. The model is built first so that the lazy import of diffusers is in both."""
    trainer = CONTENDERS[name][1]()
    built_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    for _ in range(steps):
        trainer.step()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"built_mb": built_kb / 1024, "peak_mb": peak_kb / 1024}))


def peak_rss(name: str, steps: int) -> dict[str, float]:
    child = subprocess.run(
        [sys.executable, __file__, "--peak-rss", name, "--steps", str(steps)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def _spread(values: list[float], digits: int) -> str:
    """Median with the range in brackets."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def benchmark(rounds: int, steps_per_window: int, warmup: int, memory_steps: int) -> str:
    """Run everything and return the docs section in Markdown."""
    trainers = {name: build() for name, (_, build) in CONTENDERS.items()}
    flops = {name: forward_flops(t.forward_one) for name, t in trainers.items()}
    params = {name: sum(p.numel() for p in t.net.parameters()) for name, t in trainers.items()}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()

    names = list(trainers)
    rates: dict[str, list[float]] = {name: [] for name in names}
    ceilings = []
    for r in range(rounds):
        ceilings.append(matmul_gflops())
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(images_per_second(trainers[name].step, steps_per_window))
        print(f"round {r + 1}/{rounds}: ceiling {ceilings[-1]:.0f} GFLOP/s, "
              + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in names), flush=True)
    ceiling = statistics.median(ceilings)
    memory = {name: peak_rss(name, memory_steps) for name in names}

    def ratios(other: str) -> list[float]:
        """nanodiffusion / other, paired round by round (the windows run back to back)."""
        return [ours / theirs for ours, theirs in zip(rates["nanodiffusion"], rates[other], strict=True)]

    def per_flop(other: str) -> float:
        """The images/s ratio corrected for the (small) difference in FLOPs per image."""
        return statistics.median(ratios(other)) * flops["nanodiffusion"] / flops[other]

    rows = [
        "| model | params | forward GFLOPs / image | images/s, median (range) | nanodiffusion / this, "
        "images/s | training FLOP/s, % of matmul ceiling | peak RSS MB (growth in training) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        rate = statistics.median(rates[name])
        vs = "1" if name == "nanodiffusion" else _spread(ratios(name), 2)
        mem = memory[name]
        rows.append(
            f"| {CONTENDERS[name][0]} | {params[name] / 1e6:.2f}M | {flops[name] / 1e9:.3f} "
            f"| {_spread(rates[name], 1)} | {vs} | {100 * 3 * flops[name] * rate / (ceiling * 1e9):.0f}% "
            f"| {mem['peak_mb']:.0f} ({mem['peak_mb'] - mem['built_mb']:+.0f}) |"
        )
    gap = 100 * (flops["diffusers"] / flops["nanodiffusion"] - 1)
    return f"""
## Training speed: nanodiffusion's UNet against diffusers' `UNet2DModel`

Images per second of one full training step at batch {BATCH} on random {IMAGE[1]}x{IMAGE[2]}x{IMAGE[0]}
images in [-1, 1]: eps-prediction MSE at a uniform step of the DDPM schedule, backward, gradient norm
clipped to 1.0, AdamW with the `mnist` preset's settings. nanodiffusion trains through its `Denoiser`
and `diffusion_loss`; diffusers as its unconditional training example does (`DDPMScheduler.add_noise`,
`unet(x_t, t).sample`). diffusers' model is shaped like the preset: widths 32, 64, 64, two ResNet
blocks per level, self-attention at 7x7 in two down blocks, the middle block and three up blocks.
Its forward pass costs {gap:+.1f}% the FLOPs of ours, so the comparison is at equal FLOPs within
that margin; corrected for it, nanodiffusion does {per_flop("diffusers"):.2f}x diffusers' training FLOP/s.

The headline row is diffusers with its default `attention_head_dim=8`, as its users run it;
nanodiffusion's heads are 32 wide, because width-8 attention is slow on CPU. The third row gives
diffusers the same head width, which isolates everything but that choice.

- Machine: {machine()}; diffusers {version('diffusers')}.
- Matmul ceiling: fp32 2048x2048 `torch.mm`, median of {rounds} rounds: {ceiling:.0f} GFLOP/s
  (range {min(ceilings):.0f}-{max(ceilings):.0f}). Training FLOP/s counts 3x the forward FLOPs.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one image, with CPU flash attention counted
  as 4 B heads L^2 head_dim (torch counts it as 0).
- Timing: {warmup} warm-up steps each, then {rounds} rounds of {steps_per_window} steps per model, the
  models in a rotating order; ratios are paired within a round.
- Memory: peak RSS (`ru_maxrss`) of {memory_steps} training steps in a fresh process; in brackets,
  the growth over the RSS once the libraries are imported and the model is built.

{chr(10).join(rows)}

Reproduce with `python bench/train_speed.py` (about 6 minutes on 2 cores).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only, for smoke tests")
    parser.add_argument("--out", type=Path, help=f"Markdown file to update (default {DOC}; "
                                                 "--quick writes only when this is given)")
    parser.add_argument("--peak-rss", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss:
        peak_rss_child(args.peak_rss, args.steps)
        return

    if args.quick:
        section = benchmark(rounds=2, steps_per_window=1, warmup=1, memory_steps=2)
    else:
        section = benchmark(rounds=9, steps_per_window=3, warmup=3, memory_steps=10)
    print(section)
    out = args.out or (None if args.quick else DOC)
    if out is not None:
        write_section("train_speed", section, out)
        print(f"wrote the train_speed section of {out}")


if __name__ == "__main__":
    main()

"""Training speed: nanodiffusion's UNet against diffusers' UNet2DModel at equal forward FLOPs.

One training step is what each library's users run: a batch of 64 random 28x28x1 images in
[-1, 1], the eps-prediction MSE at a uniform step t of the DDPM schedule, backward, gradient
norm clipped to 1.0 and an AdamW step. The models alternate window by window, in a rotating
order, so that the noise of a shared machine falls on all of them; the fp32 matmul ceiling is
measured in every round too. Peak memory comes from a fresh process per model.

    python bench/train_speed.py          # about 6 minutes; rewrites its part of docs/benchmarks.md
    python bench/train_speed.py --quick  # a smoke test; writes a file only when given --out
"""

from __future__ import annotations

import argparse
import json
import os
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
from torch import nn

from _common import DOC, forward_flops, machine, matmul_gflops, write_section
from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.losses import diffusion_loss, sample_sigmas
from nanodiffusion.io.config import Config, OptimConfig
from nanodiffusion.nets.unet import UNet, UNetConfig

BATCH = 64
DROPOUT = UNetConfig().dropout  # the UNet's default, which the second row trains with
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
    return torch.optim.AdamW(
        net.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


def speed_config() -> Config:
    """The model measured here: a 32-wide UNet, [1, 2, 2], attention at 7x7, no dropout (the
    `mnist` preset before it was narrowed for the 10-minute budget), trained as the course does:
    eps target, linear schedule, uniform t, uniform weight."""
    cfg = Config(
        model=UNetConfig(
            channels=32,
            channel_mults=[1, 2, 2],
            attn_resolutions=[7],
            dropout=0.0,
            image_size=IMAGE[1],
            in_channels=IMAGE[0],
        ),
        optim=OptimConfig(lr=1e-3, batch_size=BATCH, warmup_steps=100),
    )
    return cfg


def nanodiffusion_trainer(dropout: float | None = None) -> Trainer:
    """speed_config() as it trains. `dropout` replaces its 0 (None keeps it)."""
    cfg = speed_config()
    if dropout is not None:
        cfg.model.dropout = dropout
    denoiser = Denoiser(UNet(cfg.model), cfg.schedule, cfg.diffusion.parameterization)
    opt = _adamw(denoiser, cfg.optim)

    def step() -> None:
        x0 = _random_images()
        sigma = sample_sigmas(cfg.schedule, BATCH, cfg.loss)
        loss = diffusion_loss(denoiser, x0, sigma, torch.randn_like(x0), cfg.loss)
        _update(loss, denoiser, opt, cfg.optim.grad_clip)

    def forward_one() -> torch.Tensor:
        return denoiser.net(torch.zeros(1, *IMAGE), torch.zeros(1))

    return Trainer(denoiser.net, forward_one, step)


def diffusers_trainer(head_dim: int) -> Trainer:
    """UNet2DModel shaped like speed_config's UNet (widths 32, 64, 64; attention at 7x7), trained
    as diffusers' unconditional example trains it (DDPMScheduler.add_noise, MSE on eps)."""
    # imported here so that nanodiffusion's memory run does not pay for loading diffusers
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=IMAGE[1],
        in_channels=IMAGE[0],
        out_channels=IMAGE[0],
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_head_dim=head_dim,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optim = speed_config().optim  # the same optimiser settings for every contender
    opt = _adamw(unet, optim)

    def step() -> None:
        x0 = _random_images()
        eps = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, eps, t), t).sample, eps)
        _update(loss, unet, opt, optim.grad_clip)

    def forward_one() -> torch.Tensor:
        return unet(torch.zeros(1, *IMAGE), torch.zeros(1, dtype=torch.long)).sample

    return Trainer(unet, forward_one, step)


CONTENDERS: dict[str, tuple[str, Callable[[], Trainer]]] = {
    "nanodiffusion": ("nanodiffusion `UNet`, 32 wide, head width 32", nanodiffusion_trainer),
    "nanodiffusion-dropout": (
        f"nanodiffusion `UNet`, 32 wide, dropout {DROPOUT}",
        lambda: nanodiffusion_trainer(dropout=DROPOUT),
    ),
    "diffusers": ("diffusers `UNet2DModel`, default head width 8", lambda: diffusers_trainer(8)),
    "diffusers-hd32": ("diffusers `UNet2DModel`, head width 32", lambda: diffusers_trainer(32)),
}


def images_per_second(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def _memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc/self/status, in MB. Not ru_maxrss:
    a child's ru_maxrss starts at its parent's peak, since fork and exec carry it over."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # the file says kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_child(name: str, steps: int) -> None:
    """Run in a fresh process: print the RSS once the model is built and the peak RSS of `steps`
    training steps. The model is built first so that the lazy import of diffusers is in both."""
    trainer = CONTENDERS[name][1]()
    built_mb = _memory_mb("VmRSS")
    for _ in range(steps):
        trainer.step()
    print(json.dumps({"built_mb": built_mb, "peak_mb": _memory_mb("VmHWM")}))


def peak_rss(name: str, steps: int) -> dict[str, float]:
    child = subprocess.run(
        [sys.executable, __file__, "--peak-rss", name, "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def _spread(values: list[float], digits: int) -> str:
    """Median with the range in brackets."""
    median, low, high = (f"{v:.{digits}f}" for v in (statistics.median(values), min(values), max(values)))
    return f"{median} ({low}-{high})"


def benchmark(rounds: int, steps_per_window: int, warmup: int, memory_steps: int) -> str:
    """Run everything and return the docs section in Markdown."""
    load = [os.getloadavg()[0]]  # other jobs on the machine, for the record
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
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(images_per_second(trainers[name].step, steps_per_window))
        print(
            f"round {r + 1}/{rounds}: ceiling {ceilings[-1]:.0f} GFLOP/s, "
            + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in names),
            flush=True,
        )
    ceiling = statistics.median(ceilings)
    load.append(os.getloadavg()[0])
    memory = {name: peak_rss(name, memory_steps) for name in names}

    def ratio(ours: str, theirs: str) -> list[float]:
        """Images/s of `ours` over `theirs`, paired round by round (their windows are adjacent)."""
        return [a / b for a, b in zip(rates[ours], rates[theirs], strict=True)]

    rows = [
        "| model | params | forward GFLOPs / image | images/s, median (range) "
        "| nanodiffusion / this, images/s | training FLOP/s, % of matmul ceiling "
        "| peak RSS MB (growth in training) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        ceiling_share = 3 * flops[name] * statistics.median(rates[name]) / (ceiling * 1e9)
        vs = "1" if name == "nanodiffusion" else _spread(ratio("nanodiffusion", name), 2)
        mem = memory[name]
        rows.append(
            f"| {CONTENDERS[name][0]} | {params[name] / 1e6:.2f}M | {flops[name] / 1e9:.3f} "
            f"| {_spread(rates[name], 1)} | {vs} | {100 * ceiling_share:.0f}% "
            f"| {mem['peak_mb']:.0f} ({mem['peak_mb'] - mem['built_mb']:+.0f}) |"
        )
    gap = 100 * (flops["diffusers"] / flops["nanodiffusion"] - 1)
    ours_mb = memory["nanodiffusion"]["peak_mb"]
    preset_dropout = speed_config().model.dropout

    def median_ratio(ours: str, theirs: str) -> str:
        return f"{statistics.median(ratio(ours, theirs)):.2f}x"

    summary = (
        f"At equal forward FLOPs nanodiffusion's 32-wide UNet trains "
        f"{median_ratio('nanodiffusion', 'diffusers')} as many images/s as diffusers at its "
        f"default head width and {median_ratio('nanodiffusion', 'diffusers-hd32')} as many at "
        f"head width 32 (medians of rounds). With dropout {DROPOUT}, the `UNetConfig` default, "
        f"it trains {median_ratio('nanodiffusion-dropout', 'diffusers')} and "
        f"{median_ratio('nanodiffusion-dropout', 'diffusers-hd32')} as many. That model at batch "
        f"{BATCH} peaks at {ours_mb:.0f} MB of resident memory ({ours_mb / 1024:.2f} GiB; the "
        f"budget is 1.5 GB)."
    )
    return f"""
## Training speed: nanodiffusion's UNet against diffusers' `UNet2DModel`

{summary}

One training step at batch {BATCH} on random {IMAGE[1]}x{IMAGE[2]}x{IMAGE[0]} images in [-1, 1]:
eps-prediction MSE at a uniform step of the DDPM schedule, backward, gradient norm clipped to 1.0,
AdamW (lr 1e-3). nanodiffusion's UNet is 32 wide, `[1, 2, 2]`, attention at 7x7 (the `mnist`
preset before that was narrowed for a 10-minute budget); it trains through its `Denoiser` and
`diffusion_loss`, with dropout {preset_dropout}; diffusers as its unconditional
training example does (`DDPMScheduler.add_noise`, `unet(x_t, t).sample`, dropout 0). The
`UNet2DModel` is shaped like it: widths 32, 64, 64, two ResNet blocks per level, and
self-attention at 7x7 in the last down block, the middle block and the first up block. Forward
FLOPs per image differ by {gap:+.2f}%.

The headline comparison is this UNet against diffusers with its default `attention_head_dim=8`,
each as its users run it. nanodiffusion's heads are 32 wide because width-8 attention is slow on
CPU, and that choice is part of what is measured. Two more rows change one thing each: the
UNet with dropout {DROPOUT} (the `UNetConfig` default, which draws a random mask per activation
in every residual block), and diffusers with heads of width 32. The ratio column is the 32-wide UNet's
images/s over the row's.

- Machine: {machine()}; diffusers {version("diffusers")}.
  Other jobs share it: absolute numbers move with their load, side-by-side ratios much less.
- Matmul ceiling: fp32 2048x2048 `torch.mm`, median of {rounds} rounds: {ceiling:.0f} GFLOP/s
  (range {min(ceilings):.0f}-{max(ceilings):.0f}). Training FLOP/s counts 3x the forward FLOPs.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one image, with CPU flash attention
  counted as 4 B heads L^2 head_dim (torch counts it as 0).
- Timing: {warmup} warm-up steps per model, then {rounds} rounds; each round measures the ceiling
  and times {steps_per_window} step(s) of every model, in an order that rotates from round to
  round. Ratios are taken within a round, where the models ran seconds apart, then their median.
  Load average (1 minute) at the start and the end: {load[0]:.1f}, {load[1]:.1f}.
- Memory: peak resident set (`VmHWM`) of {memory_steps} training steps in a fresh process; in
  brackets, its growth over the resident set once the libraries are imported and the model built.
  (Not `ru_maxrss`: in a child process it starts at the parent's peak.)

{chr(10).join(rows)}

Reproduce with `python bench/train_speed.py` (about 6 minutes on 2 quiet cores).
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
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss:
        peak_rss_child(args.peak_rss, args.steps)
        return

    if args.quick:
        section = benchmark(rounds=3, steps_per_window=1, warmup=1, memory_steps=2)
    else:
        section = benchmark(rounds=40, steps_per_window=1, warmup=3, memory_steps=10)
    print(section)
    out = args.out or (None if args.quick else DOC)
    if out is not None:
        write_section("train_speed", section, out)
        print(f"wrote the train_speed section of {out}")


if __name__ == "__main__":
    main()

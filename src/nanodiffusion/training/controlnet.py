"""Training a ControlNet (nets.controlnet) for a trained run, through the one loop.

The base run's UNet (its EMA weights) stays frozen; AdamW moves only the ControlNet: the copy
of the encoder, the hint encoder and the zero convolutions, with a 50-step linear warm-up, a
constant rate after it and gradients clipped to norm 1. The controls are the Sobel edge maps
of the run's own training images; the prompt (or label) is dropped with probability p_uncond
(0.5, as in Zhang et al. 2023), so the control alone must carry the layout. The loop adds an
EMA of the ControlNet, checkpoints in OUT/checkpoint, exact resume, Ctrl-C and torchrun.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from nanodiffusion.core.losses import diffusion_loss, sample_sigmas
from nanodiffusion.data.datasets import load_data
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import load_parts
from nanodiffusion.io.config import EMAConfig, OptimConfig
from nanodiffusion.metrics.image import EDGE_THRESHOLD, sobel_edges
from nanodiffusion.nets.controlnet import (
    CONTROL_JSON,
    ControlNet,
    check_base,
    control_factor,
    controlled,
    save_controlnet,
)
from nanodiffusion.training.distributed import Dist
from nanodiffusion.training.loop import Loop, check_fresh, dist_and_device

CONTROL_CHECKPOINT = "checkpoint"  # the loop's folder inside a ControlNet folder


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def train_controlnet(
    run: str | Path,
    out: str | Path,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 5e-4,
    p_uncond: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    budget_s: float | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    export_ema: bool = False,
    checkpoint_every: int = 500,
    ema: EMAConfig | None = None,
    stop_after: int | None = None,
    dist: Dist | None = None,
) -> dict:
    """Train a ControlNet for a text- or class-conditional (or unconditional) run on its own
    training images with their Sobel edge maps as controls, to `steps` or until `budget_s`
    seconds of steps are spent; write `out` (controlnet.safetensors: the raw weights, or the
    EMA with export_ema) and return a report.

    Checkpoints go to OUT/checkpoint every `checkpoint_every` steps and when stopped;
    resume=True continues them (pass the same arguments); a finished ControlNet in `out` is
    only replaced with overwrite=True. report["finished"] is False when Ctrl-C or stop_after
    stopped the run (nothing is exported then). dist: the process group (default: torchrun's).
    """
    start = time.perf_counter()
    dist, dev = dist_and_device(dist, device)
    out = Path(out)
    if (out / CONTROL_JSON).is_file() and not (resume or overwrite):
        raise NanodiffError(f"{out} already holds a ControlNet; pass overwrite=True to replace it")
    check_fresh(out / CONTROL_CHECKPOINT, resume, overwrite, "a ControlNet's training", dist.main)
    if batch_size % dist.world:
        raise NanodiffError(f"batch_size {batch_size} must divide by the number of processes ({dist.world})")
    cfg, denoiser, autoencoder, encoder = load_parts(run, "ema", str(dev))
    base = denoiser.net.requires_grad_(False).eval()
    check_base(base)  # before the data is loaded
    data = load_data(cfg.data.name, "train", cfg.data.image_size, cfg.data.channels)
    controls = sobel_edges(data.images)
    show = progress and dist.main
    x0_all = data.images if autoencoder is None else autoencoder.encode_images(data.images, progress=show)
    prompts = index = None
    if encoder is not None:
        from nanodiffusion.data.text import encode_unique

        prompts, index, _ = encode_unique(encoder, data.captions)
    torch.manual_seed(seed)
    controlnet = ControlNet(base, 1, control_factor(cfg, data.images.shape[-1])).to(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    mine = dist.rows(batch_size)

    def step_fn(step: int, micro: int) -> torch.Tensor:  # the global batch drawn on every rank
        idx = torch.randint(0, len(x0_all), (batch_size,), generator=gen)
        sigma = sample_sigmas(cfg.schedule, batch_size, cfg.loss, gen)
        eps = torch.randn(batch_size, *x0_all.shape[1:], generator=gen)
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        cond = None
        if prompts is not None:  # the prompt, or "" (row 0)
            cond = prompts[torch.where(drop, torch.zeros_like(idx), index[idx])[mine]].to(dev)
        elif cfg.model.num_classes:  # the label, or the reserved "no class"
            k = cfg.model.num_classes
            cond = torch.where(drop, torch.full_like(idx, k), data.labels[idx])[mine].to(dev)
        model = controlled(denoiser, loop.net, controls[idx][mine].to(dev))
        return diffusion_loss(
            model, x0_all[idx][mine].to(dev), sigma[mine].to(dev), eps[mine].to(dev), cfg.loss, cond
        )

    optim = OptimConfig(
        lr=lr, weight_decay=0.01, warmup_steps=50, decay="constant", grad_clip=1.0, batch_size=batch_size
    )  # 0.01: AdamW's default weight decay
    loop = Loop(
        controlnet,
        step_fn,
        optim,
        steps,
        folder=out / CONTROL_CHECKPOINT,
        ema=ema or EMAConfig(),
        generators={"batch": gen},
        dist=dist,
        device=dev,
        log_every=1,
        checkpoint_every=checkpoint_every,
        progress=show,
        desc="controlnet",
    )
    if resume:
        loop.load()

    def describe() -> dict:
        losses = [r["loss"] for r in loop.records]
        return {
            "finished": True,
            "base": str(Path(run)),
            "control": "sobel",
            "threshold": EDGE_THRESHOLD,
            "steps": loop.step,
            "batch_size": batch_size,
            "lr": lr,
            "p_uncond": p_uncond,
            "train_s": loop.train_s,
            "seconds": time.perf_counter() - start,
            "loss_first_50": _mean(losses[:50]),
            "loss_last_50": _mean(losses[-50:]),
            "weights": "ema" if export_ema else "raw",
        }

    report: dict = {}

    def finish() -> None:  # on the main process, unless Ctrl-C stopped the run
        if loop.complete:  # not at stop_after
            report.update(describe())
            save_controlnet((loop.ema.model if export_ema else controlnet).eval(), out, report)

    done = loop.fit(stop_after, finish=finish, budget_s=budget_s)
    if not (done and loop.complete):
        return {"finished": False, "steps": loop.step}
    return report or describe()  # the other processes describe the run too

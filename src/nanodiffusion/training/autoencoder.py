"""Training the KL autoencoder of latent diffusion (nets.autoencoder) through the one loop.

AdamW without weight decay on the reconstruction + KL loss of random batches (drawn with
replacement by a seeded generator, which then draws the posterior noise), the learning rate
decaying on a cosine to a tenth at the last step, no clipping; afterwards `scale_factor` is
measured on the data. The loop adds an EMA of the weights (kept in the checkpoint; the
exported autoencoder is the raw weights unless export_ema), checkpoints in FOLDER/checkpoint,
exact resume, Ctrl-C and torchrun.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from nanodiffusion.data.files import write_atomically
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import save_autoencoder
from nanodiffusion.io.config import EMAConfig, OptimConfig
from nanodiffusion.metrics.image import psnr
from nanodiffusion.nets.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    measure_scale_factor,
)
from nanodiffusion.training.distributed import Dist
from nanodiffusion.training.loop import Loop, check_fresh, dist_and_device

AE_CHECKPOINT = "checkpoint"  # the loop's folder inside an autoencoder folder
__all__ = ["AE_CHECKPOINT", "train_autoencoder", "train_autoencoder_folder"]


class _Objective(nn.Module):
    """The autoencoder's loss as a forward, so that DDP's hooks see it."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.ae.loss(x, noise=noise)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def train_autoencoder(
    images: torch.Tensor,
    cfg: AutoencoderConfig,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    held_out: torch.Tensor | None = None,
    progress: bool = True,
    *,
    folder: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ema: EMAConfig | None = None,
    export_ema: bool = False,
    stop_after: int | None = None,
    dist: Dist | None = None,
) -> tuple[Autoencoder, dict]:
    """Train on random batches of `images` [N, C, H, W] in [-1, 1], then measure scale_factor on
    up to 2000 of them. Returns the autoencoder (eval mode; its EMA if export_ema) and a report:
    the losses along the run and the PSNR on `held_out` (default: images).

    folder: checkpoints go to FOLDER/checkpoint (resume=True continues one; overwrite=True
    replaces one); ema: the EMA's decay (default EMAConfig()); stop_after: stop at that step;
    dist: the process group (default: torchrun's, from the environment). A run stopped by Ctrl-C
    or stop_after reports finished False and measures nothing.
    """
    dist, device = dist_and_device(dist, device)
    if batch_size % dist.world:
        raise NanodiffError(f"batch_size {batch_size} must divide by the number of processes ({dist.world})")
    checkpoint = None if folder is None else Path(folder) / AE_CHECKPOINT
    if checkpoint is not None:
        check_fresh(checkpoint, resume, overwrite, "an autoencoder's training", dist.main)
    torch.manual_seed(seed)
    ae = Autoencoder(cfg).to(device)
    g = torch.Generator().manual_seed(seed)
    f, (h, w), mine = cfg.factor, images.shape[-2:], dist.rows(batch_size)

    def step_fn(step: int, micro: int):  # the global batch and its noise drawn on every rank
        idx = torch.randint(len(images), (batch_size,), generator=g)
        noise = torch.randn(batch_size, cfg.z_channels, h // f, w // f, generator=g)
        loss, parts = loop.net(images[idx][mine].to(device), noise[mine])
        return loss, {"mse": parts["mse"]}

    optim = OptimConfig(
        lr=lr, weight_decay=0.0, warmup_steps=0, min_lr_ratio=0.1, grad_clip=0.0, batch_size=batch_size
    )
    loop = Loop(
        ae,
        step_fn,
        optim,
        steps,
        folder=checkpoint,
        ema=ema or EMAConfig(),
        generators={"batch": g},
        dist=dist,
        device=device,
        forward=_Objective(ae),
        decay_steps=steps - 1,
        log_every=1,
        progress=progress,
        desc="autoencoder",
    )
    if resume:
        loop.load()
    done = loop.fit(stop_after)
    report = {"finished": done and loop.complete, "steps": loop.step}
    if not report["finished"]:
        return ae.eval(), report
    ae = (loop.ema.model if export_ema else ae).eval()
    ae.cfg.scale_factor = measure_scale_factor(ae, images[:2000])
    held_out = images[:500] if held_out is None else held_out
    latents = ae.encode_images(held_out)
    recon = ae.decode_images(latents)
    history = [r["mse"] for r in loop.records]
    return ae, {
        **report,
        "weights": "ema" if export_ema else "raw",
        "mse_first_50": _mean(history[:50]),
        "mse_last_50": _mean(history[-50:]),
        "psnr": psnr(recon.clamp(-1, 1), held_out.clamp(-1, 1), pooled=True).item(),
        "scale_factor": ae.cfg.scale_factor,
        "latent_shape": list(latents.shape[1:]),
    }


def train_autoencoder_folder(
    images: torch.Tensor,
    held_out: torch.Tensor,
    cfg: AutoencoderConfig,
    folder,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    about: dict | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    export_ema: bool = False,
    stop_after: int | None = None,
    dist: Dist | None = None,
) -> dict:
    """train_autoencoder with checkpoints in FOLDER/checkpoint, then write the folder latent
    diffusion reads: the weights and config, report.json (the report, the training seconds and
    `about`) and reconstructions.png (16 held-out images above their reconstructions). Returns
    the report; report["finished"] is False when Ctrl-C or stop_after stopped the run (continue
    it with resume=True and the same arguments)."""
    from nanodiffusion.io.viz import plot_rows

    start = time.perf_counter()
    dist, device = dist_and_device(dist, device)
    ae, report = train_autoencoder(
        images,
        cfg,
        steps,
        batch_size,
        lr,
        seed,
        device,
        held_out,
        progress,
        folder=folder,
        resume=resume,
        overwrite=overwrite,
        export_ema=export_ema,
        stop_after=stop_after,
        dist=dist,
    )
    if not report["finished"] or not dist.main:
        return report
    report = {**report, "seconds": time.perf_counter() - start, **(about or {})}
    folder = Path(folder)
    save_autoencoder(ae, folder, report["steps"])
    recon = ae.decode_images(ae.encode_images(held_out[:16]))
    plot_rows([held_out[:16], recon], ["held-out images", "reconstructions"], folder / "reconstructions.png")
    write_atomically(folder / "report.json", lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    return report

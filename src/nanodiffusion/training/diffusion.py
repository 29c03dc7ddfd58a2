"""The training loop: AdamW, warm-up and cosine decay, clipping, accumulation, EMA, checkpoints, DDP.

One code path for one process and for `torchrun` on many: the data order and the noise are
drawn from seeded generators for the whole global batch on every rank, and each rank takes
its slice. So the global batch, the data order and the result do not depend on the number of
processes, and a resumed run continues bit for bit (all of it follows from the step number
plus the saved optimizer, EMA and RNG states).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from nanodiffusion.core.losses import diffusion_loss, sample_sigmas
from nanodiffusion.data.datasets import ImageData, load_data
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import build_denoiser, draw, pick_device
from nanodiffusion.io.checkpoint import (
    EMA,
    MODEL,
    STATE,
    load_config,
    load_state,
    load_weights,
    save_config,
    save_state,
    save_weights,
    weights_step,
)
from nanodiffusion.io.config import Config
from nanodiffusion.tasks import get_task


class EMAModel:
    """Exponential moving average of weights with a power-function warm-up of the decay."""

    def __init__(self, model: nn.Module, power: float, max_decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay = power, max_decay

    def decay(self, step: int) -> float:
        return min(self.max_decay, 1 - (1 + step) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio (or constant)."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.decay == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.run.steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def prepare_config(cfg: Config, data: ImageData, text_dim: int = 0) -> Config:
    """Fill in what the data decides: channels, size, number of classes, the text width."""
    _, c, h, w = data.images.shape
    if h != w:
        raise NanodiffError(f"images must be square, got {h}x{w}")
    cfg.model.in_channels = cfg.model.out_channels = c
    cfg.model.image_size = h
    cfg.model.num_classes = 0
    if cfg.data.class_conditional:
        if data.labels is None:
            raise NanodiffError(f"class_conditional needs labels, and {data.name} has none")
        cfg.model.num_classes = data.num_classes
    cfg.model.context_dim = text_dim
    get_task(cfg.data.task).prepare(cfg, data)  # its checks, its image condition's channels, crops
    if cfg.optim.batch_size < 1 or cfg.run.steps < 1 or cfg.optim.grad_accum < 1:
        raise NanodiffError("batch_size, steps and grad_accum must be positive")
    return cfg


def grid_prompts(cfg: Config, captions: list[str]) -> list[str]:
    """The prompts of a text run's sample grids: run.sample_prompts ("|"-separated), else the
    shapes world's fixed list (shapes.GRID_PROMPTS), else the data's first captions."""
    if cfg.run.sample_prompts.strip():
        return [p.strip() for p in cfg.run.sample_prompts.split("|")]
    if cfg.data.name == "shapes":
        from nanodiffusion.data.shapes import GRID_PROMPTS

        return list(GRID_PROMPTS)
    return captions[:cfg.run.sample_n]


def _batch_indices(step: int, micro: int, n_micro: int, micro_batch: int, n_data: int, seed: int):
    """Indices of one global micro-batch in a stream of seeded per-epoch permutations."""
    k = (step * n_micro + micro) * micro_batch  # position in the stream
    chunks, taken = [], 0
    while taken < micro_batch:
        epoch, pos = divmod(k + taken, n_data)
        perm = torch.randperm(n_data, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        chunks.append(perm[pos:pos + micro_batch - taken])
        taken += len(chunks[-1])
    return torch.cat(chunks)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.dist, self.device = setup_distributed(cfg.run.device)
        self.progress = progress and self.dist.main
        self.data = load_data(cfg.data.name, "train", cfg.data.image_size, cfg.data.channels)
        self.prompts = None  # text: every distinct caption encoded once (row 0 is "")
        if cfg.data.text_encoder:
            from nanodiffusion.data.text import encode_unique, load_text_encoder

            if cfg.data.class_conditional:
                raise NanodiffError("train on labels (class_conditional) or on captions (text_encoder), "
                                    "not both")
            if self.data.captions is None:
                raise NanodiffError(f"text_encoder needs captions, and {self.data.name} has none")
            encoder = load_text_encoder(cfg.data.text_encoder, cfg.data.max_tokens)
            self.prompts, self.prompt_index, _ = encode_unique(encoder, self.data.captions)
            self.grid_prompts = encoder(grid_prompts(cfg, self.data.captions))
        if cfg.data.autoencoder == "train":  # "autoencoder included": its folder then stands in the config
            cfg.data.autoencoder = self._train_autoencoder(cfg)
        self.autoencoder = None  # latent diffusion: kept to decode the sample grids
        self.grid_images = self.data.images[:cfg.run.sample_n]  # an editing task's grids start from these
        if cfg.data.autoencoder:  # train on the scaled posterior means, encoded once
            self.data.images = self._encode(cfg.data.autoencoder, self.data.images)
        text_dim = 0 if self.prompts is None else self.prompts.shape[-1] - 1
        self.cfg = cfg if resume else prepare_config(cfg, self.data, text_dim)
        o = self.cfg.optim
        if o.batch_size % (o.grad_accum * self.dist.world):
            raise NanodiffError(f"batch_size {o.batch_size} must divide by grad_accum x processes "
                                f"({o.grad_accum} x {self.dist.world})")
        torch.manual_seed(self.cfg.run.seed)  # same initial weights on every rank
        self.denoiser = build_denoiser(self.cfg).to(self.device)
        self.ema = EMAModel(self.denoiser.net, self.cfg.ema.power, self.cfg.ema.max_decay)
        self.opt = torch.optim.AdamW(self.denoiser.net.parameters(), lr=o.lr,
                                     betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.noise_gen = torch.Generator().manual_seed(self.cfg.run.seed + 1)
        self.step = 0
        if resume:
            self._load()
        self.model, self.train_denoiser = self.denoiser.net, self.denoiser
        if self.dist.world > 1:  # the same weights, with gradients averaged across processes
            self.model = nn.parallel.DistributedDataParallel(
                self.denoiser.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.train_denoiser = build_denoiser(self.cfg, self.model)
        self._stop_requested = False

    def _train_autoencoder(self, cfg: Config) -> str:
        """Train the run's autoencoder into RUN/autoencoder (kept if a stopped run left one), with
        its held-out PSNR and reconstructions (held out: the test split's first 500 images, or
        the last 500 training images for a folder or .npz, which then still train the UNet)."""
        from nanodiffusion.nets.autoencoder import AE_CONFIG, AutoencoderConfig, train_autoencoder_folder

        folder = self.run_dir / "autoencoder"
        d = cfg.data
        if self.dist.main and not (folder / AE_CONFIG).is_file():
            try:
                held_out = load_data(d.name, "test", d.image_size, d.channels).images[:500]
            except NanodiffError:
                held_out = self.data.images[-500:]
            ae_cfg = AutoencoderConfig(in_channels=self.data.images.shape[1], channels=d.autoencoder_channels)
            if self.progress:
                tqdm.write(f"training the autoencoder ({d.autoencoder_steps} steps) into {folder}")
            report = train_autoencoder_folder(
                self.data.images, held_out, ae_cfg, folder, d.autoencoder_steps, d.autoencoder_batch_size,
                seed=cfg.run.seed, device=self.device, progress=self.progress, about={"data": d.name})
            if self.progress:
                tqdm.write(f"autoencoder: held-out PSNR {report['psnr']:.2f} dB in {report['seconds']:.0f} s")
        if self.dist.world > 1:
            dist.barrier()  # the other processes read what rank 0 wrote
        return str(folder)

    def _encode(self, folder: str, images: torch.Tensor) -> torch.Tensor:
        from nanodiffusion.nets.autoencoder import load_autoencoder

        ae = self.autoencoder = load_autoencoder(folder, self.device)
        if ae.cfg.in_channels != images.shape[1]:
            raise NanodiffError(f"the autoencoder in {folder} takes {ae.cfg.in_channels}-channel images, "
                                f"the data has {images.shape[1]}")
        return ae.encode_images(images, progress=self.progress)

    # --- checkpoints ------------------------------------------------------------------
    def _load(self) -> None:
        d = self.run_dir
        load_weights(self.denoiser.net, d / MODEL)
        load_weights(self.ema.model, d / EMA)
        state = load_state(d / STATE)
        steps = {weights_step(d / MODEL), weights_step(d / EMA), state["step"]}
        if len(steps) != 1:
            raise NanodiffError(f"checkpoint files in {d} are from different steps {sorted(steps)}")
        self.opt.load_state_dict(state["optimizer"])
        self.noise_gen.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step = state["step"]

    def save(self) -> None:
        if not self.dist.main:
            return
        d = self.run_dir
        save_weights(self.denoiser.net, d / MODEL, self.step)
        save_weights(self.ema.model, d / EMA, self.step)
        state = {"step": self.step, "optimizer": self.opt.state_dict(),
                 "noise_rng": self.noise_gen.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_state(state, d / STATE)

    # --- one optimisation step --------------------------------------------------------
    def train_step(self) -> float:
        cfg, o = self.cfg, self.cfg.optim
        micro_batch = o.batch_size // o.grad_accum
        per_rank = micro_batch // self.dist.world
        mine = slice(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)
        for g in self.opt.param_groups:
            g["lr"] = o.lr * lr_factor(self.step, cfg)
        total = 0.0
        for micro in range(o.grad_accum):
            idx = _batch_indices(self.step, micro, o.grad_accum, micro_batch,
                                 len(self.data.images), cfg.run.seed)
            # noise for the whole global micro-batch, so every world size draws the same
            sigma = sample_sigmas(cfg.schedule, micro_batch, cfg.loss, self.noise_gen)
            eps = torch.randn(micro_batch, *self.data.images.shape[1:], generator=self.noise_gen)
            labels = None
            if cfg.model.num_classes:
                labels = self.data.labels[idx].clone()
                drop = torch.rand(micro_batch, generator=self.noise_gen) < cfg.data.p_uncond
                labels[drop] = cfg.model.num_classes
                labels = labels[mine].to(self.device)
            elif self.prompts is not None:  # the prompt, or "" (row 0) with probability p_uncond
                rows = self.prompt_index[idx].clone()
                rows[torch.rand(micro_batch, generator=self.noise_gen) < cfg.data.p_uncond] = 0
                labels = self.prompts[rows[mine]].to(self.device)
            x0 = self.data.images[idx][mine].to(self.device)
            # the task's condition and target (drawn for the whole micro-batch, this rank's rows kept)
            denoiser, x0, eps = get_task(cfg.data.task).batch(
                cfg, self.train_denoiser, x0, eps[mine].to(self.device), self.noise_gen, micro_batch, mine)
            sync = micro == o.grad_accum - 1 or self.dist.world == 1
            ctx = nullcontext() if sync else self.model.no_sync()
            with ctx, torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = diffusion_loss(denoiser, x0, sigma[mine].to(self.device), eps, cfg.loss, labels)
                (loss / o.grad_accum).backward()
            total += loss.item() / o.grad_accum
        if not math.isfinite(total):
            raise NanodiffError(f"loss became {total} at step {self.step}; lower the learning rate")
        nn.utils.clip_grad_norm_(self.denoiser.net.parameters(), o.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.denoiser.net, self.step)
        return total

    # --- the loop ---------------------------------------------------------------------
    def sample_grid(self, path: Path) -> None:
        from nanodiffusion.io.viz import save_grid

        ema = build_denoiser(self.cfg, self.ema.model).to(self.device)
        labels, uncond, guidance = None, None, 1.0
        if self.cfg.model.num_classes:
            labels = torch.arange(self.cfg.run.sample_n) % self.cfg.model.num_classes
            guidance = self.cfg.run.sample_guidance
        elif self.prompts is not None:  # the grid prompts, in turn, guided away from ""
            labels = self.grid_prompts[torch.arange(self.cfg.run.sample_n) % len(self.grid_prompts)]
            uncond, guidance = self.prompts[0].to(self.device), self.cfg.run.sample_guidance
        n, shown = self.cfg.run.sample_n, self.grid_images[:self.cfg.run.sample_n]
        editing = get_task(self.cfg.data.task).grid(self.cfg, shown)  # a task's grid may edit training images
        if editing:
            n = len(shown)
        # a latent run's grid is decoded by the autoencoder loaded to encode the data
        images = draw(self.cfg, ema, n, autoencoder=self.autoencoder, cond=labels,
                      sampler=self.cfg.run.sampler, steps=self.cfg.run.sample_steps, seed=0,
                      guidance=guidance, uncond=uncond, **editing)
        save_grid(images, path, nrow=int(math.sqrt(self.cfg.run.sample_n)))

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.progress:
            tqdm.write("interrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def _stop_everywhere(self) -> bool:
        flag = torch.tensor([float(self._stop_requested)])
        if self.dist.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def fit(self, stop_after: int | None = None) -> bool:
        """Train to cfg.run.steps (or stop_after). Returns False if interrupted by Ctrl-C."""
        cfg, main = self.cfg, self.dist.main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            save_config(cfg, self.run_dir)
        last = cfg.run.steps if stop_after is None else min(stop_after, cfg.run.steps)
        in_main_thread = threading.current_thread() is threading.main_thread()
        old_handler = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
        bar = tqdm(total=cfg.run.steps, initial=self.step, disable=not self.progress,
                   desc="training", unit="step", dynamic_ncols=True)
        metrics = (self.run_dir / "metrics.jsonl").open("a") if main else None
        window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        interrupted = False
        try:
            self.model.train()
            while self.step < last:
                loss = self.train_step()
                window_loss, window_n = window_loss + loss, window_n + 1
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == last:
                    elapsed = time.perf_counter() - t_window
                    ips = window_n * cfg.optim.batch_size / elapsed
                    record = {"step": self.step, "loss": window_loss / window_n,
                              "lr": self.opt.param_groups[0]["lr"], "images_per_s": ips}
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
                if main and cfg.run.sample_every and self.step % cfg.run.sample_every == 0:
                    self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
                if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                    self.save()
                if self._stop_everywhere():
                    interrupted = True
                    break
            self.save()
        finally:
            bar.close()
            if metrics:
                metrics.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        if main and not interrupted:
            from nanodiffusion.io.viz import plot_loss

            plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
            self.sample_grid(self.run_dir / "samples.png")
        if self.dist.world > 1:  # leave together: a rank that exits while rank 0 still draws the
            dist.barrier()       # final grid can make gloo abort the others
            dist.destroy_process_group()
        return not interrupted


def train(cfg: Config, run_dir: str | Path, progress: bool = True,
          stop_after: int | None = None) -> bool:
    """Train a new run into run_dir. Returns False if interrupted (a checkpoint was saved)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL).exists():
        raise NanodiffError(f"{run_dir} already holds a run; resume it with resume() or choose "
                            "another folder")
    return Trainer(cfg, run_dir, progress=progress).fit(stop_after)


def resume(run_dir: str | Path, steps: int | None = None, device: str | None = None,
           progress: bool = True, stop_after: int | None = None) -> bool:
    """Continue a run exactly where it stopped (optionally to a new total of steps, or elsewhere)."""
    cfg = load_config(run_dir)
    if steps is not None:
        cfg.run.steps = steps
    if device is not None:
        cfg.run.device = device
    return Trainer(cfg, Path(run_dir), resume=True, progress=progress).fit(stop_after)

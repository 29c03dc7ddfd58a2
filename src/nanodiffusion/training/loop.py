"""One training loop for every trainer (diffusion, autoencoder, ControlNet, the FID classifier).

A trainer hands the loop its model and a *step function*: the loss of one micro-batch, given
the step number and the micro-batch's index (under torchrun, the loss of this rank's rows of
the global micro-batch). The loop owns everything else: AdamW, the learning-rate schedule,
gradient accumulation (DDP's `no_sync` on all but the last micro-batch), clipping, the EMA,
checkpoints and exact resume, Ctrl-C, torchrun, metrics.jsonl, the progress bar and periodic
callbacks (sample grids).

Exact resume: a step function draws only from the generators the trainer registers with the
loop (saved by name) and from torch's global RNG (dropout; saved too), and from the step
number. So the weights, EMA, optimizer, step and those RNG states are the whole state: a run
stopped at step k and resumed continues bit for bit.

Checkpoints are FOLDER/checkpoints/step-NNNNNNNN/{model.safetensors, ema.safetensors,
state.pt}, each written whole or not at all (io/checkpoint.write_checkpoint), the newest `keep`
kept; resuming takes the newest and removes what an interrupted save left. FOLDER/metrics.jsonl
is the log; resuming cuts it back to the checkpoint's step.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nanodiffusion.data.files import write_atomically
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import (
    EMA,
    MODEL,
    STATE,
    clean_checkpoints,
    latest_checkpoint,
    load_state,
    load_weights,
    weights_step,
    write_checkpoint,
    write_weights,
)
from nanodiffusion.io.config import EMAConfig, OptimConfig
from nanodiffusion.io.device import pick_device
from nanodiffusion.training.distributed import Dist, any_rank, leave_together, setup_distributed

METRICS = "metrics.jsonl"

# (step, micro) -> the micro-batch's mean loss, or (loss, {name: float}) to log beside it
StepFn = Callable[[int, int], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


class EMAModel:
    """Exponential moving average of weights with a power-function warm-up of the decay,
    decay_k = min(max_decay, 1 - (1 + k) ** -power) (ema_pytorch's warm-up with inv_gamma = 1), so
    the average of a short run is not stuck at the initial weights."""

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


def lr_multiplier(step: int, optim: OptimConfig, horizon: int) -> float:
    """Linear warm-up over optim.warmup_steps, then a cosine decay (Loshchilov & Hutter 2017) that
    reaches optim.min_lr_ratio at step `horizon`; or constant after the warm-up."""
    o = optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.decay == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, horizon - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def dist_and_device(dist: Dist | None, device: str | torch.device) -> tuple[Dist, torch.device]:
    """The process group a trainer runs in (None: torchrun's, joined from the environment) and its device."""
    if dist is None:
        return setup_distributed(str(device))
    return dist, pick_device(str(device))


def check_fresh(folder: Path, resume: bool, overwrite: bool, what: str, main: bool = True) -> None:
    """Before a new run into checkpoint folder `folder`: refuse to mix with an earlier run's files,
    unless `overwrite` (then they go). A resumed run needs them."""
    if resume or not folder.exists():
        return
    if not overwrite:
        raise NanodiffError(
            f"{folder.parent} already holds {what}; pass resume=True to continue it "
            "or overwrite=True to start again"
        )
    if main:
        shutil.rmtree(folder)


def _loss_and_parts(out) -> tuple[torch.Tensor, dict[str, float]]:
    return out if isinstance(out, tuple) else (out, {})


class Loop:
    """AdamW on `model` driven by `step_fn` for `steps` steps.

    folder: the checkpoint folder (None: no checkpoints or metrics file); ema: the EMA's decay
    settings (None: no EMA); generators: every generator the step function draws from, saved by
    name; forward: the module the step function calls if not `model` itself (it must hold
    model's parameters; under torchrun it is the one wrapped in DDP, as `loop.net`);
    decay_steps: where the cosine reaches its floor (default `steps`); grad_clip <= 0: no clipping;
    keep: how many of the newest checkpoints to keep (0: all).
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        optim: OptimConfig,
        steps: int,
        *,
        folder: str | Path | None = None,
        ema: EMAConfig | None = None,
        generators: dict[str, torch.Generator] | None = None,
        dist: Dist | None = None,
        device: str | torch.device = "cpu",
        forward: nn.Module | None = None,
        decay_steps: int | None = None,
        log_every: int = 10,
        checkpoint_every: int = 0,
        keep: int = 2,
        progress: bool = True,
        desc: str = "training",
    ):
        self.model, self.step_fn, self.optim, self.steps = model, step_fn, optim, steps
        self.folder = None if folder is None else Path(folder)
        self.dist, self.device = dist or Dist(), torch.device(device)
        self.ema = None if ema is None else EMAModel(model, ema.power, ema.max_decay)
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
        )
        self.generators = dict(generators or {})
        self.decay_steps, self.log_every, self.checkpoint_every = decay_steps, log_every, checkpoint_every
        self.keep = keep
        self.progress, self.desc = progress and self.dist.main, desc
        self.step, self.train_s, self.records = 0, 0.0, []
        self.out_of_time = False
        module = model if forward is None else forward
        self.net = module
        if self.dist.world > 1:  # the same weights, with gradients averaged across processes
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self._parts: dict[str, float] = {}
        self._stop_requested = False

    @property
    def complete(self) -> bool:
        """Trained to `steps`, or to the end of a time budget."""
        return self.step >= self.steps or self.out_of_time

    # --- checkpoints ------------------------------------------------------------------
    def save(self) -> None:
        """Write this step's checkpoint (the main process; a no-op without a folder)."""
        if not self.dist.main or self.folder is None:
            return
        state = {
            "step": self.step,
            "optimizer": self.opt.state_dict(),
            **{f"{name}_rng": g.get_state() for name, g in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
            "train_s": self.train_s,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        files = {MODEL: lambda p: write_weights(self.model, p, self.step)}
        if self.ema is not None:
            files[EMA] = lambda p: write_weights(self.ema.model, p, self.step)
        files[STATE] = lambda p: torch.save(state, p)
        write_checkpoint(self.folder, self.step, files, self.keep)

    def load(self, from_start_if_none: bool = False) -> None:
        """Continue from the newest checkpoint in the folder: weights, EMA, optimizer, step, RNG
        states, and the metrics logged up to that step (later lines, from after the checkpoint,
        go). What an interrupted save left behind is removed. A folder without a checkpoint (a
        run stopped before its first) is an error, or with from_start_if_none a run from step 0."""
        d = self.folder
        where = None if d is None else latest_checkpoint(d)
        removed = clean_checkpoints(d) if self.dist.main and d is not None else []
        if where is None and from_start_if_none and d is not None:
            self._keep_metrics()
            if self.progress:
                tqdm.write(f"{d} holds no checkpoint yet: starting from step 0")
            return
        if where is None or not (where / STATE).is_file():
            raise NanodiffError(f"nothing to resume in {d}: it holds no checkpoint")
        load_weights(self.model, where / MODEL)
        steps = {weights_step(where / MODEL)}
        if self.ema is not None:
            load_weights(self.ema.model, where / EMA)
            steps.add(weights_step(where / EMA))
        state = self._checked_state(where / STATE)
        steps.add(state["step"])
        if len(steps) != 1:
            raise NanodiffError(f"checkpoint files in {where} are from different steps {sorted(steps)}")
        try:
            self.opt.load_state_dict(state["optimizer"])
            for name, g in self.generators.items():
                g.set_state(state[f"{name}_rng"])
            torch.set_rng_state(state["torch_rng"])
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
            detail = " ".join(str(e).split())[:80]
            raise NanodiffError(f"corrupt training state {where / STATE}: {detail}") from None
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step, self.train_s = state["step"], float(state.get("train_s", 0.0))
        self._keep_metrics()
        if self.progress:
            left = f"; removed the unfinished {', '.join(removed)}" if removed else ""
            tqdm.write(f"resuming from step {self.step} ({where}){left}")

    def _keep_metrics(self) -> None:
        """The metrics logged up to this step; later lines (after the checkpoint) leave the file."""
        metrics = self.folder / METRICS
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        try:
            self.records = [r for r in map(json.loads, lines) if r["step"] <= self.step]
        except (ValueError, KeyError, TypeError):
            raise NanodiffError(f"{metrics} is damaged: delete it to resume without its log") from None
        if self.dist.main and len(self.records) < len(lines):
            kept = "".join(json.dumps(r) + "\n" for r in self.records)
            write_atomically(metrics, lambda p: p.write_text(kept))

    def _checked_state(self, path: Path) -> dict:
        """The training state at path, with every entry load() needs of the right kind."""
        state = load_state(path)
        needed = {"step": int, "optimizer": dict, "torch_rng": torch.Tensor}
        needed.update({f"{name}_rng": torch.Tensor for name in self.generators})
        for key, kind in needed.items():
            value = state.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                got = "nothing" if value is None else type(value).__name__
                raise NanodiffError(f"corrupt training state {path}: {key} is {got}, not {kind.__name__}")
        if state["step"] < 0:
            raise NanodiffError(f"corrupt training state {path}: step {state['step']}")
        return state

    # --- one optimisation step --------------------------------------------------------
    def step_once(self) -> float:
        """One optimiser step over optim.grad_accum micro-batches; returns their mean loss."""
        o, start = self.optim, time.perf_counter()
        horizon = self.steps if self.decay_steps is None else self.decay_steps
        for g in self.opt.param_groups:
            g["lr"] = o.lr * lr_multiplier(self.step, o, horizon)
        total, self._parts = 0.0, {}
        for micro in range(o.grad_accum):
            sync = micro == o.grad_accum - 1 or self.dist.world == 1
            with nullcontext() if sync else self.net.no_sync():
                loss, parts = _loss_and_parts(self.step_fn(self.step, micro))
                (loss / o.grad_accum).backward()
            total += loss.item() / o.grad_accum
            for k, v in parts.items():
                self._parts[k] = self._parts.get(k, 0.0) + v / o.grad_accum
        if not math.isfinite(total):
            raise NanodiffError(f"loss became {total} at step {self.step}; lower the learning rate")
        if o.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.train_s += time.perf_counter() - start
        return total

    # --- the loop ---------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.progress:
            saving = " and saving a checkpoint" if self.folder is not None else ""
            tqdm.write(f"interrupted: finishing this step{saving} (Ctrl-C again to abort)")

    def fit(
        self,
        stop_after: int | None = None,
        every: Sequence[tuple[int, Callable[[int], None]]] = (),
        finish: Callable[[], None] | None = None,
        budget_s: float | None = None,
    ) -> bool:
        """Train to `steps` (or to step stop_after, or until budget_s seconds of steps are spent).

        Each (n, fn) of `every` runs fn(step) on the main process every n steps (n = 0: never);
        `finish` runs there once unless Ctrl-C stopped the run, before the ranks leave together.
        Returns False if interrupted by Ctrl-C (a checkpoint was saved).
        """
        main = self.dist.main
        metrics = None
        if main and self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            metrics = (self.folder / METRICS).open("a")
        last = self.steps if stop_after is None else min(stop_after, self.steps)
        self._stop_requested = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        old_handler = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            disable=not self.progress,
            desc=self.desc,
            unit="step",
            dynamic_ncols=True,
        )
        window_loss, window_n, window_parts, t_window = 0.0, 0, {}, time.perf_counter()
        interrupted = False
        try:
            self.net.train()
            while self.step < last:
                loss = self.step_once()
                window_loss, window_n = window_loss + loss, window_n + 1
                for k, v in self._parts.items():
                    window_parts[k] = window_parts.get(k, 0.0) + v
                bar.update(1)
                if self.step % self.log_every == 0 or self.step == last:
                    ips = window_n * self.optim.batch_size / (time.perf_counter() - t_window)
                    record = {
                        "step": self.step,
                        "loss": window_loss / window_n,
                        "lr": self.opt.param_groups[0]["lr"],
                        "images_per_s": ips,
                        **{k: v / window_n for k, v in window_parts.items()},
                    }
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
                    self.records.append(record)
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    window_loss, window_n, window_parts, t_window = 0.0, 0, {}, time.perf_counter()
                for period, fn in every:
                    if main and period and self.step % period == 0:
                        fn(self.step)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save()
                spent = budget_s is not None and self.train_s >= budget_s
                flags = any_rank([self._stop_requested, spent], self.dist, self.device)
                interrupted, self.out_of_time = flags
                if interrupted or self.out_of_time:
                    break
            self.save()
        finally:
            bar.close()
            if metrics:
                metrics.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        if main and not interrupted and finish is not None:
            finish()
        leave_together(self.dist)
        return not interrupted

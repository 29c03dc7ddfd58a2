"""Run folders: config.json, model.safetensors, ema.safetensors, state.pt; autoencoder folders.

Every file is written to a temporary name and renamed into place, so an interruption never
leaves a half-written file. Weights are safetensors; the training state (optimizer, RNG) is
loaded with ``torch.load(weights_only=True)``, which cannot run code from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config
from nanodiffusion.nets.autoencoder import AE_CONFIG, AE_WEIGHTS, Autoencoder, AutoencoderConfig

MODEL, EMA, STATE, CONFIG = "model.safetensors", "ema.safetensors", "state.pt", "config.json"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via `write(tmp)` then rename over `path` (atomic on POSIX and Windows)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_config(cfg: Config, run_dir: Path) -> None:
    atomic_write(Path(run_dir) / CONFIG, cfg.save)


def save_weights(module: nn.Module, path: Path, step: int) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"step": str(step)}))


def save_state(state: dict, path: Path) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_config(run_dir: Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NanodiffError(f"run folder not found: {run_dir}")
    if not (run_dir / CONFIG).is_file():
        raise NanodiffError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    return Config.load(run_dir / CONFIG)


def weights_step(path: Path) -> int:
    """The training step stored in a weights file's metadata."""
    with safe_open(str(path), "pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load safetensors weights into `module`, with one-line errors for every way this fails."""
    path = Path(path)
    if not path.is_file():
        raise NanodiffError(f"missing checkpoint file: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise NanodiffError(f"corrupt checkpoint file {path}: {e}") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape of {shapes[0]} is {tuple(tensors[shapes[0]].shape)} in the file, "
            f"{tuple(own[shapes[0]].shape)} in the config"
        )
        raise NanodiffError(f"config.json does not match the weights in {path}: {detail}")
    module.load_state_dict(tensors)


def load_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NanodiffError(f"missing training state: {path} (was this run saved by train()?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise NanodiffError(f"corrupt training state {path}: {type(e).__name__}") from None


# --- an autoencoder's folder: its config and weights -------------------------------------------
def save_autoencoder(ae: Autoencoder, folder, step: int = 0) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(ae, folder / AE_WEIGHTS, step)
    atomic_write(folder / AE_CONFIG, lambda p: p.write_text(json.dumps(ae.cfg.to_dict(), indent=2) + "\n"))


def load_autoencoder(folder, device: str | torch.device = "cpu") -> Autoencoder:
    folder = Path(folder)
    if not (folder / AE_CONFIG).is_file():
        raise NanodiffError(
            f"no autoencoder in {folder} (no {AE_CONFIG}); data.autoencoder "
            "must name a trained autoencoder's folder"
        )
    ae = Autoencoder(AutoencoderConfig(**json.loads((folder / AE_CONFIG).read_text())))
    load_weights(ae, folder / AE_WEIGHTS)
    return ae.to(device).eval()

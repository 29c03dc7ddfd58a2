"""Run folders, checkpoints and autoencoder folders.

A run folder holds config.json, metrics.jsonl, samples/ and checkpoints/step-NNNNNNNN/, each
checkpoint a folder of model.safetensors, ema.safetensors and state.pt. A checkpoint is
complete or absent: its files are written into a hidden `.step-NNNNNNNN.tmp` folder, flushed
to disk (fsync), and the folder is renamed to its name in one step; older checkpoints beyond
the last `keep` are first renamed away (`.step-NNNNNNNN.old`) and then deleted, so a name
`step-*` always means a whole checkpoint. A kill at any moment therefore costs at most the
steps since the newest complete checkpoint, and a full disk leaves the previous ones intact.

Older run folders, and exported pipelines, keep the weights at the top of the folder
(model.safetensors, ema.safetensors, state.pt): every reader takes those when the folder has
no checkpoints/. Every other file is written to a temporary name and renamed into place.
Weights are safetensors; the training state (optimizer, RNG) is loaded with
``torch.load(weights_only=True)``, which cannot run code from the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nanodiffusion.data.files import one_line, write_atomically
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config, validate
from nanodiffusion.nets.autoencoder import AE_CONFIG, AE_WEIGHTS, Autoencoder, AutoencoderConfig

MODEL, EMA, STATE, CONFIG = "model.safetensors", "ema.safetensors", "state.pt", "config.json"
CHECKPOINTS = "checkpoints"  # FOLDER/checkpoints/step-NNNNNNNN/
_COMPLETE = re.compile(r"step-(\d{8,})")  # a whole checkpoint; hidden .step-*.tmp / .old ones are not


atomic_write = write_atomically  # its name in 0.1


def _fsync(path: Path) -> None:
    """Flush a file to the disk, or a folder's list of names (where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # Windows cannot open folders; their names are flushed with them
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_config(cfg: Config, run_dir: Path) -> None:
    write_atomically(Path(run_dir) / CONFIG, cfg.save)


def write_weights(module: nn.Module, path: Path, step: int) -> None:
    """module's weights as safetensors, with the training step in the metadata (not atomic:
    save_weights is, and so is a file of write_checkpoint)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"step": str(step)})


def save_weights(module: nn.Module, path: Path, step: int) -> None:
    write_atomically(path, lambda p: write_weights(module, p, step))


def save_state(state: dict, path: Path) -> None:
    write_atomically(path, lambda p: torch.save(state, p))


# --- checkpoints: folders that appear whole ------------------------------------------------------
def checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in folder/checkpoints as (step, path), oldest first."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(m, p) for p in root.iterdir() if (m := _COMPLETE.fullmatch(p.name)) and p.is_dir()]
    return sorted((int(m.group(1)), p) for m, p in found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Where folder's newest weights are: its newest complete checkpoint; for a folder without
    checkpoints/ (a run saved before 0.2, an exported pipeline), the folder itself if it holds
    weights; None if neither."""
    found = checkpoints(folder)
    if found:
        return found[-1][1]
    folder = Path(folder)
    return folder if any((folder / name).is_file() for name in (MODEL, EMA, STATE)) else None


def checkpoint_file(folder: str | Path, name: str) -> Path:
    """The path of `name` (MODEL, EMA or STATE) in folder's newest checkpoint."""
    where = latest_checkpoint(folder)
    if where is None:
        raise NanodiffError(f"{folder} holds no checkpoint (no {CHECKPOINTS}/step-* folder and no {name})")
    return where / name


def clean_checkpoints(folder: str | Path) -> list[str]:
    """Delete what an interrupted save or deletion left in folder/checkpoints (hidden
    .step-*.tmp and .step-*.old folders); returns their names."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    left = sorted(p for p in root.iterdir() if p.name.startswith(".step-"))
    for p in left:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return [p.name for p in left]


def write_checkpoint(
    folder: str | Path, step: int, files: dict[str, Callable[[Path], None]], keep: int = 2
) -> Path:
    """Write checkpoint `step` into folder/checkpoints/step-NNNNNNNN as one unit: files maps each
    file name to a function that writes it to a given path. Then delete all but the newest `keep`
    checkpoints (0: keep all). A failed write (a full disk) removes its temporary folder and
    raises a NanodiffError that says the earlier checkpoints are intact. Returns the folder."""
    root = Path(folder) / CHECKPOINTS
    final = root / f"step-{step:08d}"
    if final.is_dir():  # this step is saved already (the end of a run that just checkpointed)
        _keep_newest(folder, keep)
        return final
    tmp = root / f".{final.name}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_checkpoints(folder)
        tmp.mkdir()
        for name, write in files.items():
            write(tmp / name)
            _fsync(tmp / name)
        _fsync(tmp)
        os.rename(tmp, final)  # the checkpoint appears whole, or not at all
        _fsync(root)
    except (OSError, SafetensorError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        found = checkpoints(folder)
        kept = f"the checkpoint of step {found[-1][0]} is intact" if found else "no earlier checkpoint"
        try:  # torch.save words a full disk as an "unexpected pos": say how much room there is
            free = f"; {shutil.disk_usage(root).free / 2**20:.1f} MB free there"
        except OSError:
            free = ""
        raise NanodiffError(
            f"could not write the checkpoint of step {step} in {root} ({one_line(e)}{free}); {kept}"
        ) from None
    _keep_newest(folder, keep)
    return final


def _keep_newest(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (0: none), each renamed away first, so that a
    folder cut short in its deletion is never taken for a checkpoint."""
    for _, old in checkpoints(folder)[:-keep] if keep > 0 else []:
        trash = old.with_name(f".{old.name}.old")
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


# --- readers ---------------------------------------------------------------------------------------
def load_config(run_dir: Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NanodiffError(f"run folder not found: {run_dir}")
    if not (run_dir / CONFIG).is_file():
        raise NanodiffError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    cfg = Config.load(run_dir / CONFIG)
    try:  # a run's config is complete (training filled in the data's size, channels and classes)
        return validate(cfg)
    except NanodiffError as e:
        raise NanodiffError(f"{run_dir / CONFIG}: {e}") from None


def weights_step(path: Path) -> int:
    """The training step stored in a weights file's metadata (-1 if it has none)."""
    path = Path(path)
    if not path.is_file():
        raise NanodiffError(f"missing checkpoint file: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            step = (f.metadata() or {}).get("step", "-1")
    except (SafetensorError, OSError, ValueError) as e:
        raise NanodiffError(f"corrupt checkpoint file {path}: {one_line(e)}") from None
    try:
        return int(step)
    except ValueError:
        raise NanodiffError(f"corrupt checkpoint file {path}: step {step[:40]!r} is not a number") from None


def load_weights(module: nn.Module, path: Path) -> None:
    """Load safetensors weights into `module`, with one-line errors for every way this fails."""
    path = Path(path)
    if not path.is_file():
        raise NanodiffError(f"missing checkpoint file: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise NanodiffError(f"corrupt checkpoint file {path}: {one_line(e)}") from None
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
    dtypes = [k for k in own if own[k].is_floating_point() != tensors[k].is_floating_point()]
    if dtypes:
        raise NanodiffError(f"corrupt checkpoint file {path}: {dtypes[0]} is {tensors[dtypes[0]].dtype}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NanodiffError(f"corrupt checkpoint file {path}: {bad[0]} holds NaN or infinite values")
    module.load_state_dict(tensors)


def load_state(path: Path) -> dict:
    """A training state (a dict, as the loop and save_state write it); never unpickles code (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise NanodiffError(f"missing training state: {path} (was this run saved by train()?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses anything but tensors and plain containers
        raise NanodiffError(f"refused {path}: loading it would run code from the file") from None
    except Exception as e:  # torch raises many types for a damaged file
        raise NanodiffError(f"corrupt training state {path}: {type(e).__name__}") from None
    if not isinstance(state, dict):
        raise NanodiffError(f"corrupt training state {path}: it holds a {type(state).__name__}, not a dict")
    return state


# --- an autoencoder's folder: its config and weights -------------------------------------------
def save_autoencoder(ae: Autoencoder, folder, step: int = 0) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(ae, folder / AE_WEIGHTS, step)
    write_atomically(
        folder / AE_CONFIG, lambda p: p.write_text(json.dumps(ae.cfg.to_dict(), indent=2) + "\n")
    )


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

"""Ship training runs inside the package: each run's config and EMA weights become the minimal run
folder src/nanodiffusion/weights/NAME (float16 safetensors unless --fp32; a latent run's
autoencoder in NAME/autoencoder), and its training facts (the command, steps, times, parameters,
bytes) go into weights/cards.json, where bench/pretrained_quality.py adds the measured quality.

    python bench/ship_pretrained.py runs/pretrained         # every shipped name from RUNS/NAME
    python bench/ship_pretrained.py runs/pretrained digits  # some of them

The runs were trained with the commands in TRAINED_BY (with --quiet), from the repository root.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import EMA, STATE, checkpoint_file, load_config, load_state, save_config
from nanodiffusion.io.pretrained import CARDS, SHIPPED, WEIGHTS_ROOT, folder_size, parameters
from nanodiffusion.nets.autoencoder import AE_CONFIG, AE_WEIGHTS

TRAINED_BY = {
    "digits": "nanodiff train --preset digits --class-conditional --out runs/pretrained/digits",
    "fashion-mnist": "nanodiff train --preset fashion-mnist-flow --class-conditional "
    "--out runs/pretrained/fashion-mnist",
    "shapes": "nanodiff train --preset text --out runs/pretrained/shapes",
    "upscale": "nanodiff train --preset upscale --out runs/pretrained/upscale",
}


def write_weights(source: Path, target: Path, dtype: torch.dtype) -> None:
    """A safetensors file with its floating tensors cast to dtype, its metadata (the step) kept."""
    from safetensors import safe_open

    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    save_file(tensors, str(target), metadata=metadata)


def training_facts(run: Path) -> dict:
    """How long the run trained: the loop's seconds in training steps (its state.pt), and the wall
    clock from config.json (written when the steps start) to samples.png (written at the end);
    with the autoencoder's steps and seconds (its report.json) for a latent run."""
    cfg = load_config(run)
    facts = {
        "steps": cfg.run.steps,
        "train_seconds": round(float(load_state(checkpoint_file(run, STATE))["train_s"]), 1),
        "wall_seconds": round(
            (run / "samples.png").stat().st_mtime - (run / "config.json").stat().st_mtime, 1
        ),
    }
    report = run / "autoencoder" / "report.json"
    if report.is_file():
        ae = json.loads(report.read_text())
        facts["autoencoder"] = {
            "steps": ae["steps"],
            "seconds": round(ae["seconds"], 1),
            "psnr": round(ae["psnr"], 2),
        }
    return facts


def ship(run: Path, name: str, dtype: torch.dtype) -> dict:
    """Write weights/NAME from a finished run (replacing what was there) and return its card's facts."""
    cfg = load_config(run)
    weights = checkpoint_file(run, EMA)
    state = load_state(checkpoint_file(run, STATE))
    if state["step"] != cfg.run.steps:
        raise NanodiffError(f"{run} is not finished: step {state['step']} of {cfg.run.steps}")
    target = WEIGHTS_ROOT / name
    building = WEIGHTS_ROOT / f".{name}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    if cfg.data.autoencoder:  # its own, beside the config (inference.runs.load_run finds it there)
        cfg.data.autoencoder = "autoencoder"
        (building / "autoencoder").mkdir()
        shutil.copyfile(run / "autoencoder" / AE_CONFIG, building / "autoencoder" / AE_CONFIG)
        write_weights(run / "autoencoder" / AE_WEIGHTS, building / "autoencoder" / AE_WEIGHTS, dtype)
    save_config(cfg, building)
    write_weights(weights, building / EMA, dtype)
    for path in building.rglob("*"):  # safetensors writes its files private; a package's are not
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return {
        "command": TRAINED_BY[name],
        **training_facts(run),
        "parameters": parameters(target),
        "bytes": folder_size(target),
        "dtype": str(dtype).removeprefix("torch."),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, help="the folder holding one training run per shipped name")
    p.add_argument("names", nargs="*", help=f"some of {', '.join(SHIPPED)} (default: all)")
    p.add_argument("--fp32", action="store_true", help="keep the weights in float32 (default float16)")
    args = p.parse_args()
    unknown = sorted(set(args.names) - set(SHIPPED))
    if unknown:
        p.error(f"not a shipped name: {', '.join(unknown)}; choose among {', '.join(SHIPPED)}")
    cards = json.loads(CARDS.read_text()) if CARDS.is_file() else {}
    for name in args.names or SHIPPED:
        facts = ship(args.runs / name, name, torch.float32 if args.fp32 else torch.float16)
        cards[name] = facts  # new weights: their quality is measured again (bench/pretrained_quality.py)
        print(f"{name:14s} {facts['parameters'] / 1e6:5.2f}M parameters  {facts['bytes'] / 2**20:6.2f} MB")
    CARDS.write_text(json.dumps(cards, indent=2) + "\n")
    total = sum(folder_size(WEIGHTS_ROOT / name) for name in SHIPPED if (WEIGHTS_ROOT / name).is_dir())
    print(f"{'total':14s} {'':17s}  {total / 2**20:6.2f} MB in {WEIGHTS_ROOT}")


if __name__ == "__main__":
    main()

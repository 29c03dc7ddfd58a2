"""Models shipped inside the package: small runs of the presets on the built-in data, loadable by
name wherever a run folder is taken (``load_run("digits")``, ``TextToImage.from_pretrained("shapes")``).

Each lives in ``nanodiffusion/weights/<name>/`` as a minimal run folder: config.json and the EMA
weights (float16 safetensors, ema.safetensors; a latent run's autoencoder in autoencoder/), no
optimizer state and no samples. bench/ship_pretrained.py makes one from a training run, and
bench/pretrained_quality.py measures it into weights/cards.json, which docs/pretrained.md quotes.
A folder that exists always wins over a shipped name, and nothing is ever written into these
folders: the commands write their outputs elsewhere (see ``shipped_name``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nanodiffusion.errors import NanodiffError

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
CARDS = WEIGHTS_ROOT / "cards.json"  # per model: how it was trained and what it was measured to do

# name -> what it draws and what it is conditioned on
SHIPPED = {
    "digits": "8x8 handwritten digits (scikit-learn's), class-conditional: class k draws the digit k",
    "fashion-mnist": "28x28 Fashion-MNIST clothing, class-conditional: 0 T-shirt/top, 1 trouser, "
    "2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot",
    "shapes": "32x32 shapes-world scenes from a text prompt (latent diffusion with its autoencoder "
    'and MiniLM), e.g. "a red circle left of a blue square"',
    "upscale": "super-resolution of shapes-world scenes, 32x32 to 64x64 (an image in, an image out)",
}


def shipped_folder(name: str) -> Path:
    """The folder of the shipped model `name` (a minimal run folder)."""
    if name not in SHIPPED:
        raise NanodiffError(f"no shipped model {name!r}; the shipped models are {', '.join(SHIPPED)}")
    return WEIGHTS_ROOT / name


def shipped_name(run: str | Path) -> str | None:
    """The shipped model that `run` stands for: its name when `run` is a shipped name and no folder
    of that name exists, or when `run` is a shipped model's own folder; else None."""
    path = Path(run)
    if path.is_dir():
        where = path.resolve()
        return where.name if where.parent == WEIGHTS_ROOT and where.name in SHIPPED else None
    return str(run) if str(run) in SHIPPED else None


def resolve_run(run: str | Path) -> Path:
    """The folder `run` names: an existing path as it is, a shipped model's name as its folder.
    Neither: one line that lists the shipped names."""
    name = shipped_name(run)
    if name is not None:
        return shipped_folder(name)
    path = Path(run)
    if not path.exists():
        raise NanodiffError(f"run folder not found: {run} (nor is it a shipped model: {', '.join(SHIPPED)})")
    return path


def folder_size(folder: Path) -> int:
    """Bytes of every file under folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def parameters(folder: Path) -> int:
    """The number of weights in a folder's safetensors files, read from their headers."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def list_pretrained() -> dict[str, str]:
    """Every shipped model: name -> what it draws, its conditioning, its parameters and size on disk."""
    return {
        name: f"{about}; {parameters(shipped_folder(name)) / 1e6:.2f}M parameters, "
        f"{folder_size(shipped_folder(name)) / 2**20:.2f} MB"
        for name, about in SHIPPED.items()
    }


def pretrained_card(name: str) -> dict:
    """What weights/cards.json says of a shipped model: the command that trained it, its training
    time, parameters, size and measured quality (bench/pretrained_quality.py writes it)."""
    shipped_folder(name)  # a known name
    cards = json.loads(CARDS.read_text()) if CARDS.is_file() else {}
    return cards.get(name, {})

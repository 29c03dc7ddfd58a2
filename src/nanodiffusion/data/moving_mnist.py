"""Moving MNIST: MNIST digits bouncing in a square frame, rendered from a seed.

The dataset of Srivastava, Mansimov and Salakhutdinov, "Unsupervised Learning of Video
Representations using LSTMs" (ICML 2015), made by the same recipe as their generator: each of
`num_digits` 28x28 digits gets a random start position (its box's top-left corner, uniform in
[0, size - 28] on each axis), a direction (angle uniform in [0, 2 pi)) and a speed of
0.1 * (size - 28) pixels per frame (3.6 at 64x64). It moves in a straight line; when its box
would leave the frame the position is clipped to the border and that velocity component changes
sign. A frame is the pixelwise max of the digits pasted at their positions rounded to the pixel
(np.rint). Videos are deterministic given the seed and the digit set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nanodiffusion.data.datasets import cache_root, load_data, register_video_data
from nanodiffusion.data.files import read_array, write_atomically
from nanodiffusion.errors import NanodiffError

DIGIT = 28  # side of an MNIST digit
SPEED = 0.1  # pixels per frame, as a fraction of the free range size - DIGIT (the original's step_length)
SEEDS = {"train": 0, "test": 1}
DEFAULT_N = {"train": 10000, "test": 1000}
_KEYS = ("videos", "labels", "tracks")


@dataclass
class MovingMNIST:
    videos: np.ndarray  # uint8 [n, F, H, W]
    labels: np.ndarray  # int64 [n, num_digits] digit classes
    tracks: np.ndarray  # float32 [n, num_digits, F, 2] each digit's box top-left (x, y) in pixels per frame


def _paths(rng: np.random.Generator, k: int, frames: int, size: int) -> np.ndarray:
    """k bouncing paths [k, frames, 2] of a box's top-left (x, y) in [0, size - DIGIT]."""
    top = size - DIGIT
    pos = rng.uniform(0, top, size=(k, 2))
    theta = rng.uniform(0, 2 * np.pi, size=k)
    vel = SPEED * top * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    out = np.empty((k, frames, 2))
    for t in range(frames):
        out[:, t] = pos
        pos = pos + vel
        low, high = pos < 0, pos > top
        pos = np.clip(pos, 0, top)
        vel = np.where(low | high, -vel, vel)
    return out


def render_moving_mnist(
    digits: np.ndarray,
    labels: np.ndarray,
    n: int,
    frames: int = 20,
    size: int = 64,
    seed: int = 0,
    num_digits: int = 2,
    progress: bool = False,
) -> MovingMNIST:
    """n videos [n, frames, size, size] of `num_digits` digits picked at random from digits
    (uint8 [M, 28, 28]) with their classes labels [M]; deterministic given the seed."""
    digits, labels = np.asarray(digits), np.asarray(labels)
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    if frames < 1:
        raise NanodiffError(f"frames must be at least 1, got {frames}")
    if size < DIGIT:
        raise NanodiffError(f"size must be at least {DIGIT} (a digit's side), got {size}")
    if num_digits < 1:
        raise NanodiffError(f"num_digits must be at least 1, got {num_digits}")
    if digits.ndim != 3 or digits.shape[1:] != (DIGIT, DIGIT) or len(digits) == 0:
        raise NanodiffError(f"digits must be a non-empty array [M, 28, 28], got shape {list(digits.shape)}")
    if labels.shape != (len(digits),):
        raise NanodiffError(f"labels must be one class per digit [{len(digits)}], got {list(labels.shape)}")
    digits = digits.astype(np.uint8, copy=False)
    rng = np.random.default_rng(seed)
    videos = np.zeros((n, frames, size, size), np.uint8)
    picks = np.empty((n, num_digits), np.int64)
    tracks = np.empty((n, num_digits, frames, 2), np.float32)
    for i in tqdm(range(n), disable=not progress, desc="moving mnist", leave=False):
        picks[i] = rng.integers(len(digits), size=num_digits)
        path = _paths(rng, num_digits, frames, size)
        tracks[i] = path
        corners = np.rint(path).astype(np.int64)
        for d in range(num_digits):
            glyph = digits[picks[i, d]]
            for t in range(frames):
                x, y = corners[d, t]
                box = videos[i, t, y : y + DIGIT, x : x + DIGIT]
                np.maximum(box, glyph, out=box)
    return MovingMNIST(videos, labels[picks].astype(np.int64), tracks)


def mnist_digits(split: str, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's digits of a split as uint8 [N, 28, 28] and their classes [N]."""
    data = load_data("mnist", split, cache_dir=cache_dir)
    digits = ((data.images[:, 0] + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    return digits, data.labels.numpy()


def load_moving_mnist(
    split: str = "train",
    n: int | None = None,
    frames: int = 20,
    size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> MovingMNIST:
    """Moving MNIST videos of a split: "train" (10000 by default, from MNIST's train digits,
    seed 0) or "test" (1000, from MNIST's test digits, seed 1). Rendered once and cached as
    <cache root>/moving-mnist/moving-mnist-{split}-{n}-{frames}-{size}.npz."""
    if split not in SEEDS:
        raise NanodiffError(f"unknown split {split!r}: use train or test")
    n = DEFAULT_N[split] if n is None else n
    path = cache_root(cache_dir) / "moving-mnist" / f"moving-mnist-{split}-{n}-{frames}-{size}.npz"
    if path.is_file():
        arrays = read_array(path)
        missing = [k for k in _KEYS if k not in arrays]
        if missing:
            raise NanodiffError(f"the cached {path} lacks {', '.join(missing)}; delete it to render it again")
        return MovingMNIST(*(arrays[k] for k in _KEYS))
    digits, labels = mnist_digits(split, cache_dir)
    data = render_moving_mnist(digits, labels, n, frames, size, SEEDS[split], progress=progress)
    write_atomically(
        path,
        lambda tmp: np.savez_compressed(tmp, videos=data.videos, labels=data.labels, tracks=data.tracks),
    )
    return data


def _videos(split: str, frames: int | None, size: int | None, cache_dir) -> tuple[np.ndarray, None]:
    """The `moving-mnist` data name (load_data): a split's videos [N, F, H, W, 1], no captions."""
    return load_moving_mnist(split, frames=frames or 20, size=size or 64, cache_dir=cache_dir).videos[
        ..., None
    ], None


register_video_data("moving-mnist", _videos)

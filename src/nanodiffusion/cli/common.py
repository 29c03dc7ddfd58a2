"""What every `nanodiff` command shares: the one-line error parser, argument types, the flag
groups declared once (device, seed, sampler and steps, weights, output, ...), and the few
helpers that turn flags into library arguments."""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nanodiffusion.core.samplers import get_sampler
from nanodiffusion.data.files import one_line
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz

DEVICES = ("auto", "cpu", "cuda")
WEIGHTS = ("ema", "model")
MAX_SEED = 2**63 - 1
MAX_SAMPLES = 100_000  # --n: every sample is held in memory at the end (FID's usual count is 50 000)
MAX_STEPS = 10_000  # sampling steps; far past where any sampler stops improving
MAX_GUIDANCE = 100.0
CONDITION_FLAGS = {"class_label": "--class", "guidance": "--guidance"}  # pipelines.conditioning's names


class Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line error as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"nanodiff: error: {message} (see {self.prog} --help)\n")


# --- argument types ------------------------------------------------------------------------------
def sampler_name(name: str) -> str:
    """A sampler name or one of its diffusers / k-diffusion spellings, as nanodiffusion's name."""
    try:
        return get_sampler(name).name
    except NanodiffError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text: str) -> int:
    """An integer >= 1 with no upper bound (training steps)."""
    return integer(text, 1)


def integer(text: str, low: int, high: int | None = None) -> int:
    """text as an integer in low..high (no upper bound when high is None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        lower = "positive" if low == 1 else f"at least {low}"
        upper = f" and at most {high}" if high is not None else ""
        raise argparse.ArgumentTypeError(f"must be {lower}{upper}, got {value}")
    return value


def up_to(high: int, low: int = 1) -> Callable[[str], int]:
    """An argument type: an integer in low..high (default 1..high)."""
    return lambda text: integer(text, low, high)


def seed(text: str) -> int:
    """A random seed: an integer from 0 to 2**63 - 1 (torch's generators take at most 64 bits, and
    some commands use seed + 1, seed + 2, ...)."""
    return integer(text, 0, MAX_SEED)


def number(low: float = -math.inf, high: float = math.inf, above: bool = False) -> Callable[[str], float]:
    """An argument type: a finite float in [low, high], or in (low, high] when `above`."""

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < low or value > high or (above and value == low):
            bounds = [f"{'>' if above else '>='} {low:g}"] * (low > -math.inf) + [f"<= {high:g}"] * (
                high < math.inf
            )
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text}")
        return value

    return check


finite = number()
non_negative = number(0)
positive_number = number(0, above=True)
guidance = number(0, MAX_GUIDANCE)  # a classifier-free guidance scale, the same for every command


# --- flag groups -----------------------------------------------------------------------------------
def add_run(p: argparse.ArgumentParser) -> None:
    """The run a command reads: a run folder, or the name of a model shipped with the package."""
    from nanodiffusion.io.pretrained import SHIPPED

    p.add_argument(
        "run",
        help=f"a run folder, or a shipped model: {', '.join(SHIPPED)} (docs/pretrained.md), whose "
        "outputs go to ./samples/NAME, ./generated/NAME, ... instead of into the package",
    )


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", choices=DEVICES, default=default)


def add_seed(p: argparse.ArgumentParser, default: int | None = 0) -> None:
    p.add_argument("--seed", type=seed, default=default, help="0 to 2**63 - 1")


def add_steps(
    p: argparse.ArgumentParser, default: int | None, help: str | None = None, high: int | None = None
) -> None:
    """--steps: sampling steps (high MAX_STEPS) or, with high None, training steps."""
    p.add_argument("--steps", type=positive if high is None else up_to(high), default=default, help=help)


def add_n(p: argparse.ArgumentParser, default: int | None, help: str | None = None) -> None:
    p.add_argument("--n", type=up_to(MAX_SAMPLES), default=default, help=help)


def add_sampler(p: argparse.ArgumentParser, steps: int = 20) -> None:
    """--sampler (any name or spelling of docs/samplers.md) and --steps (the sampler's steps)."""
    p.add_argument(
        "--sampler",
        default="dpm++2m",
        type=sampler_name,
        help="see docs/samplers.md (default dpm++2m; diffusers' spellings such as dpmpp_2m work too)",
    )
    add_steps(p, steps, high=MAX_STEPS)


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=WEIGHTS, default="ema")


def add_out(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    p.add_argument("--out", default=default, help=help)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_negative(p: argparse.ArgumentParser, help: str = "negative prompt") -> None:
    p.add_argument("--negative", default="", help=help)


def add_img2img(p: argparse.ArgumentParser) -> None:
    """--init and --strength: img2img (SDEdit) from an image file."""
    p.add_argument("--init", metavar="IMAGE", help="img2img (SDEdit): start from this image, noised")
    p.add_argument(
        "--strength",
        type=finite,
        help="with --init: how much to change, in (0, 1] (default 0.6; 1 ignores the image)",
    )


def add_drawing(p: argparse.ArgumentParser, steps: int, out: str) -> None:
    """What every command that draws from a run takes: sampler and steps, seed, weights, device
    and output folder."""
    add_sampler(p, steps)
    add_seed(p)
    add_weights(p)
    add_device(p)
    add_out(p, f"output folder (default {out})")


# --- flags to library arguments --------------------------------------------------------------------
def strength(args) -> float:
    """--strength, checked: it needs --init and lies in (0, 1] (default 0.6)."""
    if args.init is None and args.strength is not None:
        raise NanodiffError("--strength needs --init IMAGE (img2img)")
    value = 0.6 if args.strength is None else args.strength
    if not 0 < value <= 1:
        raise NanodiffError(f"--strength must be in (0, 1], got {value}")
    return value if args.init is not None else 1.0


def open_run(args, videos: bool = False):
    """(config, denoiser, autoencoder or None, text encoder or None) of the run args.run, with
    --weights on --device; an upscaling run is refused here, where the command that draws it
    can be named, and so is a video run unless the command takes `videos`."""
    from nanodiffusion.inference.pipelines import load_parts

    cfg, denoiser, autoencoder, encoder = load_parts(args.run, args.weights, args.device)
    if cfg.data.task == "upscale":
        raise NanodiffError("an upscaling run draws from low-resolution images (nanodiff upscale)")
    if not videos:
        refuse_video(cfg, args.run)
    return cfg, denoiser, autoencoder, encoder


def judged_out(args, kind: str) -> Path:
    """Where an eval-* command writes its JSON: --out, else RUN/kind/<sampler>-<steps>-n<n>-seed<s>.json;
    checked before the judging starts."""
    tag = f"{args.sampler}-{args.steps}-n{args.n}-seed{args.seed}"
    out = Path(args.out) if args.out else run_output(args.run, kind, f"{tag}.json")
    check_out(out, file=True)
    return out


def write_judged(out: Path, result: dict) -> torch.Tensor:
    """Write an eval-* result (less its "samples", which are returned) as JSON, whole or not at all."""
    import json

    from nanodiffusion.data.files import write_atomically

    samples = result.pop("samples")
    write_atomically(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return samples


def run_config(run: str):
    """The config of a run folder or a shipped model, without its weights."""
    from nanodiffusion.io.checkpoint import load_config
    from nanodiffusion.io.pretrained import resolve_run

    return load_config(resolve_run(run))


def refuse_video(cfg, run: str) -> None:
    """One line for a video, sound or music run given to a command that takes images."""
    from nanodiffusion.inference.audio import draws_sound, run_modality
    from nanodiffusion.inference.video import run_frames
    from nanodiffusion.nets import sample_shape

    modality = run_modality(cfg)
    if modality == "molecule":
        raise NanodiffError(
            f"{run} makes molecules, not images: use nanodiff sample / generate (they write SDF and XYZ "
            "files) or nanodiff eval-molecules"
        )
    if draws_sound(cfg):
        what = "piano rolls (music)" if modality == "roll" else "sound"
        raise NanodiffError(
            f"{run} makes {what}, not images: use nanodiff sample / generate (they write WAV"
            f"{' and MIDI' if modality == 'roll' else ''} files) or nanodiff eval-audio"
        )

    if run_frames(cfg) is not None:
        _, f, h, w = sample_shape(cfg.model)
        raise NanodiffError(
            f"{run} makes videos ({f} frames of {h}x{w}), not images: "
            "use nanodiff sample / generate (they write videos) or nanodiff eval-video"
        )


def run_output(run: str, kind: str, *parts: str) -> Path:
    """Where a command writes by default: RUN/kind/... in a run folder; for a shipped model, whose
    folder is never written into, kind/NAME/... in the current folder."""
    from nanodiffusion.io.pretrained import shipped_name

    name = shipped_name(run)
    return Path(kind, name, *parts) if name else Path(run, kind, *parts)


def read_image(
    path: str, shape: tuple[int, int, int], exact: bool = False
) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file as [1, C, H, W] in [-1, 1], resized to the run's size if it differs (`exact`:
    refused instead, for a frame that must be kept as it is), and the file's own (width, height)."""
    c, h, w = shape
    picture = viz.open_image(path, "RGB" if c == 3 else "L")
    if picture.size != (w, h) and exact:
        raise NanodiffError(
            f"{path} is {picture.size[0]}x{picture.size[1]}; this run's frames are {w}x{h} (a given "
            "frame is kept exactly, so it is not resized)"
        )
    if picture.size != (w, h):
        print(f"{path} is {picture.size[0]}x{picture.size[1]}; resized to the run's {w}x{h}", file=sys.stderr)
    return viz.load_image(picture, (w, h), channels=c), picture.size


def check_out(path: str | Path, file: bool = False) -> Path:
    """Where a command's results go (a folder, or with `file` a file), checked before the long
    work starts and without making anything: a file where a folder is wanted (or the reverse), a
    path under a file, or a place that cannot be written (the nearest existing folder must take a
    new file) is refused. The writers make the folders when they write."""
    path = Path(path)
    folder = path.parent if file else path
    if file and path.is_dir():
        raise NanodiffError(f"--out {path} is a folder; give the name of a file")
    under = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if under == path:
        raise NanodiffError(f"--out {path} is a file, not a folder")
    if under is not None:
        raise NanodiffError(f"--out {path} lies under {under}, which is a file")
    nearest = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as e:
        raise NanodiffError(f"--out {path}: cannot write in {nearest}: {e.strerror or one_line(e)}") from None
    return path


def fresh_dir(path: Path) -> Path:
    """path itself if unused, else path-2, path-3, ...: never write into an existing run."""
    candidate, k = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = path.with_name(f"{path.name}-{k}")
    return candidate


def slug(text: str) -> str:
    """A prompt as a file name: lower case, runs of other characters as '-', at most 60 long."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60] or "empty"


@contextmanager
def flag_names(names: dict[str, str]) -> Iterator[None]:
    """Library errors name parameters and config keys; on the command line, say the flag (or the
    command) that sets them instead: names maps each library spelling to the command line's."""
    try:
        yield
    except NanodiffError as e:
        message = str(e)
        for library, command_line in names.items():
            message = re.sub(rf"(?<![\w.-]){re.escape(library)}(?![\w-])", command_line, message)
        raise NanodiffError(message) from None

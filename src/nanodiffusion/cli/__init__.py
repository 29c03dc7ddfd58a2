"""`nanodiff`: a thin command line over the library, one module per command group.

    train.py   train, train-autoencoder, train-controlnet, demo
    sample.py  sample, eval, generate, eval-prompts, eval-video
    audio.py   eval-audio; generate's and sample's sound and music
    molecules.py  eval-molecules; generate's and sample's molecules
    edit.py    inpaint, upscale
    info.py    info, schedules, forward, bench-samplers
    sd.py      sd
    app.py     app (the web app, nanodiffusion.app)
    common.py  the one-line error parser, argument types, the flag groups every command shares

Each module's ``add_commands(sub)`` adds its commands' parsers, each beside its command; a
command returns the exit status: 0 done, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from nanodiffusion.cli import app, audio, common, edit, info, molecules, sample, sd, train
from nanodiffusion.errors import NanodiffError

GROUPS = (train, sample, audio, molecules, edit, info, sd, app)


def build_parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="nanodiff", description="Diffusion models, clear and fast.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    for group in GROUPS:
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage mistake (its one line is printed) returns 2; --help exits 0
        if not e.code:
            raise
        return e.code
    try:
        return args.func(args)
    except NanodiffError as e:
        print(f"nanodiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanodiff: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nanodiff: error: out of memory; try a smaller --batch-size, --n or model", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that fills or a place that cannot be written, in the system's words
        where = f": {e.filename}" if e.filename else ""
        print(f"nanodiff: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

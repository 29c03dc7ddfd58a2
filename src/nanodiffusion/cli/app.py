"""`nanodiff app`: the local web app (nanodiffusion.app) over given runs and the shipped models."""

from __future__ import annotations

import sys
from pathlib import Path

from nanodiffusion.cli import common
from nanodiffusion.errors import NanodiffError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTALL = "pip install 'nanodiffusion[app]'  (starlette and uvicorn)"


def add_app(sub) -> None:
    ap = sub.add_parser(
        "app",
        help="open the web app: generate with live step previews, edit (inpaint, img2img, "
        "ControlNet, upscale), watch the forward process and compare samplers",
    )
    ap.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run folders or Stable Diffusion folders to offer, beside the shipped models",
    )
    ap.add_argument("--port", type=common.up_to(65535), default=7860)
    ap.add_argument(
        "--host", default="127.0.0.1", help="the interface (default 127.0.0.1: this machine only)"
    )
    ap.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --host be an interface other machines reach (anyone who reaches it can use the app)",
    )
    ap.add_argument("--controlnet", help="a nanodiff train-controlnet folder for the first RUN")
    ap.add_argument("--no-shipped", action="store_true", help="offer only the given runs")
    ap.add_argument("--running", type=common.up_to(16), default=1, help="jobs at once (default 1)")
    ap.add_argument("--waiting", type=common.up_to(64, 0), default=4, help="jobs in line (default 4)")
    ap.set_defaults(func=cmd_app)


def offered_models(runs: list[str], controlnet: str | None, shipped: bool) -> dict:
    """name -> engine.Model: the given folders (named by their folder), then the shipped models."""
    from nanodiffusion.app.engine import Model

    models: dict = {}
    for i, run in enumerate(runs):
        path = Path(run)
        name = path.name or str(path)
        while name in models:
            name += "'"
        models[name] = Model.open(name, run, controlnet if i == 0 else None)
    if controlnet and not runs:
        raise NanodiffError("--controlnet belongs to the first RUN; give the run it was trained on")
    if shipped:
        from nanodiffusion.io.pretrained import list_pretrained, shipped_folder

        for name, description in list_pretrained().items():
            folder = shipped_folder(name)  # by its folder: a local folder of the same name is not it
            if name not in models and (folder / "config.json").is_file():
                models[name] = Model.open(name, str(folder), description=description)
    if not models:
        raise NanodiffError("no models to offer: give a RUN folder, or leave out --no-shipped")
    return models


def cmd_app(args) -> int:
    try:
        import uvicorn

        from nanodiffusion.app.server import create_app
    except ImportError as e:
        raise NanodiffError(f"the web app needs {e.name}: {INSTALL}") from None
    if args.host not in LOOPBACK and not args.allow_remote:
        raise NanodiffError(
            f"--host {args.host} would let other machines use the app; add --allow-remote if you mean it"
        )
    models = offered_models(args.runs, args.controlnet, not args.no_shipped)
    app = create_app(models, args.running, args.waiting)
    if args.host not in LOOPBACK:
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine's port {args.port} "
            "can run jobs on it",
            file=sys.stderr,
        )
    print(
        f"nanodiffusion app: http://{args.host}:{args.port}  ({', '.join(models)}; Ctrl-C stops)",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_commands(sub) -> None:
    add_app(sub)

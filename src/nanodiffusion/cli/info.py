"""Looking at runs and at the diffusion process: `nanodiff info`, `schedules`, `forward` and
`bench-samplers`."""

from __future__ import annotations

import math
from pathlib import Path

from nanodiffusion.cli import common
from nanodiffusion.core.schedules import KINDS, Schedule
from nanodiffusion.io import viz
from nanodiffusion.io.checkpoint import (
    EMA,
    MODEL,
    STATE,
    checkpoints,
    latest_checkpoint,
    load_config,
    weights_step,
)
from nanodiffusion.io.pretrained import resolve_run
from nanodiffusion.metrics import sampler_error


# --- info ----------------------------------------------------------------------------------------
def add_info(sub) -> None:
    i = sub.add_parser("info", help="describe a run folder")
    common.add_run(i)
    i.set_defaults(func=cmd_info)


def describe_model(m, params: int) -> str:
    """One line: the network's kind, size and shape."""
    if m.kind == "dit":
        return (
            f"DiT {params / 1e6:.2f}M params, width {m.width}, depth {m.depth}, patch {m.patch_size}, "
            f"{m.width // m.head_dim} heads, {math.prod(m.grid)} tokens, {m.pos} positions"
        )
    return (
        f"UNet {params / 1e6:.2f}M params, channels {m.channels} x {m.channel_mults},"
        f" attention at {m.attn_resolutions or 'no'} resolutions"
        + (" and in the middle" if m.mid_attention else "")
    )


def cmd_info(args) -> int:
    from nanodiffusion.inference.pipelines import build_denoiser

    run = resolve_run(args.run)
    cfg = load_config(run)
    params = sum(p.numel() for p in build_denoiser(cfg).net.parameters())
    where = latest_checkpoint(run)
    saved = [where / f for f in (MODEL, EMA) if where is not None and (where / f).is_file()]
    step = weights_step(saved[0]) if saved else 0  # a shipped model keeps its EMA weights only
    m, s = cfg.model, cfg.schedule
    sides = "x".join(map(str, [m.image_size] * 2 if isinstance(m.image_size, int) else m.image_size))
    print(f"run          {run}")
    print(
        f"data         {cfg.data.name}  {m.in_channels}x{sides}"
        + (f"  {m.num_classes} classes" if m.num_classes else "")
    )
    print(f"model        {describe_model(m, params)}")
    print(
        f"diffusion    {cfg.diffusion.parameterization} prediction, {s.kind} schedule"
        + (f", T={s.T}" if s.discrete else "")
    )
    print(f"training     step {step} of {cfg.run.steps}, batch {cfg.optim.batch_size}, lr {cfg.optim.lr}")
    if where is None:
        print("checkpoint   none")
    else:
        files = ", ".join(f for f in (MODEL, EMA, STATE) if (where / f).is_file())
        kept = [s for s, _ in checkpoints(run)]
        older = f"; older: steps {', '.join(map(str, kept[:-1]))}" if len(kept) > 1 else ""
        print(f"checkpoint   {where.relative_to(run) if where != run else '.'}: {files}{older}")
    return 0


# --- pictures of the forward process -------------------------------------------------------------
def add_schedules(sub) -> None:
    sc = sub.add_parser("schedules", help="plot alpha_bar and log-SNR of every schedule")
    common.add_out(sc, "the picture (default schedules.png)", "schedules.png")
    sc.set_defaults(func=cmd_schedules)


def cmd_schedules(args) -> int:
    path = viz.plot_schedules({k: Schedule(kind=k) for k in KINDS}, Path(args.out))
    print(f"schedules plot: {path}")
    return 0


def add_forward(sub) -> None:
    f = sub.add_parser("forward", help="draw the forward (noising) process of some images")
    f.add_argument("--data", default="digits")
    f.add_argument("--schedule", default="linear", choices=KINDS)
    common.add_n(f, 4)
    common.add_out(f, "the picture (default forward_process.png)", "forward_process.png")
    f.set_defaults(func=cmd_forward)


def cmd_forward(args) -> int:
    from nanodiffusion.data.datasets import load_data

    data = load_data(args.data, "train")
    path = viz.save_forward_strip(data.images[: args.n], Schedule(kind=args.schedule), Path(args.out))
    print(f"forward-process strip: {path}")
    return 0


# --- bench-samplers (its flags and command live with the benchmark) ------------------------------
def add_bench_samplers(sub) -> None:
    b = sub.add_parser(
        "bench-samplers",
        help="every sampler's error per NFE against exact answers on "
        "Gaussian mixtures, printed (python bench/samplers.py writes docs/samplers.md)",
    )
    sampler_error.add_arguments(b)
    b.set_defaults(func=sampler_error.run_from_args)


def add_commands(sub) -> None:
    for add in (add_info, add_schedules, add_forward, add_bench_samplers):
        add(sub)

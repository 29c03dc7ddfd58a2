"""Training commands: `nanodiff train`, `train-autoencoder`, `train-controlnet` and `demo`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from nanodiffusion.cli import common
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz
from nanodiffusion.io.config import PRESETS, Config, apply_overrides, preset

MAX_BATCH = 65_536  # images per training step; each step draws and holds them all


# --- train ---------------------------------------------------------------------------------------
def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model (a preset or a TOML config, flags override)")
    t.add_argument("--preset", default="digits", choices=PRESETS)
    t.add_argument("--config", help="a TOML (or JSON) config file instead of a preset")
    t.add_argument(
        "--data",
        help="digits, mnist, fashion-mnist, cifar10, shapes, video-shapes, moving-mnist, an image folder "
        "or a .npz file (images or videos)",
    )
    t.add_argument(
        "--task",
        choices=["inpaint", "upscale"],
        help="inpaint: a mask-conditioned model (the "
        "masked image and the mask as extra inputs, random masks of five families; nanodiff "
        "inpaint --method model); upscale: super-resolution from data.low_res (default half "
        "the size; nanodiff upscale; the upscale preset is one)",
    )
    t.add_argument(
        "--model",
        choices=["unet", "dit", "egnn"],
        help="the network (model.kind): the preset's UNet, or a DiT (a transformer on patches, "
        "Peebles & Xie 2023) with the DiT defaults; tune it with --set model.width=... model.depth=...",
    )
    common.add_steps(t, None)
    t.add_argument("--batch-size", type=common.up_to(MAX_BATCH))
    t.add_argument("--lr", type=common.positive_number)
    common.add_seed(t, None)
    common.add_device(t, None)
    t.add_argument("--class-conditional", action="store_true", help="train with class labels")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set model.channels=64",
    )
    common.add_out(t, "run folder (default runs/<preset>)")
    t.add_argument("--resume", metavar="RUN", help="continue a run exactly where it stopped")
    common.add_quiet(t)
    t.set_defaults(func=cmd_train)


def train_config(args) -> Config:
    """The preset or config file with the flags that were given applied over it."""
    cfg = Config.load(Path(args.config)) if args.config else preset(args.preset)
    overrides = list(args.set or [])
    for flag, key in [
        ("model", "model.kind"),
        ("data", "data.name"),
        ("steps", "run.steps"),
        ("batch_size", "optim.batch_size"),
        ("lr", "optim.lr"),
        ("device", "run.device"),
        ("seed", "run.seed"),
    ]:
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.class_conditional:
        overrides.append("data.class_conditional=true")
    if args.task is not None:
        overrides.append(f"data.task={json.dumps(args.task)}")
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> int:
    from nanodiffusion.training.diffusion import resume, train

    if args.resume:
        ignored = [
            flag
            for flag, value in [
                ("--config", args.config),
                ("--data", args.data),
                ("--batch-size", args.batch_size),
                ("--lr", args.lr),
                ("--seed", args.seed),
                ("--set", args.set),
                ("--out", args.out),
                ("--class-conditional", args.class_conditional),
                ("--task", args.task),
                ("--model", args.model),
            ]
            if value
        ]
        if ignored:
            raise NanodiffError(
                f"--resume continues the run as configured; only --steps and --device "
                f"may change, not {', '.join(ignored)}"
            )
        with common.flag_names({"train()": "nanodiff train"}):
            done = resume(args.resume, steps=args.steps, device=args.device, progress=not args.quiet)
        run_dir = Path(args.resume)
    else:
        cfg = train_config(args)
        name = args.preset if not args.config else Path(args.config).stem
        run_dir = common.check_out(Path(args.out) if args.out else common.fresh_dir(Path("runs") / name))
        with common.flag_names({"resume()": "--resume"}):
            done = train(cfg, run_dir, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 0 if done else 130
    if not done:
        print(f"stopped; checkpoint saved. Continue with: nanodiff train --resume {run_dir}")
        return 130
    print(f"run saved in {run_dir}  (samples: {run_dir / 'samples.png'}, loss: {run_dir / 'loss.png'})")
    return 0


# --- train-autoencoder ---------------------------------------------------------------------------
def add_train_autoencoder(sub) -> None:
    a = sub.add_parser("train-autoencoder", help="train the KL autoencoder that latent diffusion runs in")
    a.add_argument("--data", default="shapes", help="shapes (default), a built-in name, a folder or .npz")
    a.add_argument("--size", type=common.up_to(1024), default=None, help="image size (shapes: default 32)")
    common.add_steps(a, 2000)
    a.add_argument("--batch-size", type=common.up_to(MAX_BATCH), default=64)
    a.add_argument("--lr", type=common.positive_number, default=1e-3)
    a.add_argument("--channels", type=common.up_to(1024), default=32)
    a.add_argument("--z-channels", type=common.up_to(64), default=4)
    a.add_argument("--kl-weight", type=common.non_negative, default=1e-6)
    common.add_seed(a)
    common.add_device(a)
    common.add_out(a, "output folder (default runs/autoencoder-<data>)")
    add_resume_flags(a, "the autoencoder in --out")
    common.add_quiet(a)
    a.set_defaults(func=cmd_train_autoencoder)


def add_resume_flags(p, what: str) -> None:
    """--resume and --overwrite of the trainers that write one folder (autoencoder, ControlNet)."""
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue {what} from its last checkpoint (the same flags as the run that stopped)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a finished folder instead of refusing")


def stopped(report: dict, out: Path) -> bool:
    """Print how to continue a trainer that Ctrl-C stopped (its checkpoint is saved)."""
    if report["finished"]:
        return False
    print(
        f"stopped after {report['steps']} steps; checkpoint saved in {out / 'checkpoint'}. Continue "
        f"with the same command plus --resume --out {out}"
    )
    return True


def cmd_train_autoencoder(args) -> int:
    from nanodiffusion.data.datasets import as_frames, held_out_images, load_data
    from nanodiffusion.io.device import pick_device
    from nanodiffusion.nets.autoencoder import AutoencoderConfig
    from nanodiffusion.training.autoencoder import train_autoencoder_folder

    if args.resume and not args.out:
        raise NanodiffError("--resume needs --out, the autoencoder's folder")
    if args.out:
        common.check_out(args.out)
    images = as_frames(load_data(args.data, "train", args.size).images)  # videos: their frames
    held_out = held_out_images(args.data, images, args.size)
    cfg = AutoencoderConfig(
        in_channels=images.shape[1],
        channels=args.channels,
        z_channels=args.z_channels,
        kl_weight=args.kl_weight,
    )
    out = Path(args.out or common.fresh_dir(Path("runs") / f"autoencoder-{Path(args.data).name}"))
    device = pick_device(args.device)
    _, _, h, w = images.shape
    print(
        f"nanodiff train-autoencoder: {len(images)} {args.data} images "
        f"{tuple(images.shape[1:])} -> latents {cfg.z_channels}x{h // cfg.factor}"
        f"x{w // cfg.factor}, {args.steps} steps -> {out}"
    )
    report = train_autoencoder_folder(
        images,
        held_out,
        cfg,
        out,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        device,
        progress=not args.quiet,
        about={"data": args.data},
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if stopped(report, out):
        return 130
    print(
        f"held-out PSNR {report['psnr']:.2f} dB; latent scale factor {report['scale_factor']:.4f} "
        f"(1 / std of the latents); wrote {out / 'reconstructions.png'}"
    )
    return 0


# --- train-controlnet ----------------------------------------------------------------------------
def add_train_controlnet(sub) -> None:
    tc = sub.add_parser(
        "train-controlnet",
        help="train a ControlNet on a run's own images and their Sobel edge maps (the run stays frozen)",
    )
    common.add_run(tc)
    common.add_steps(tc, 1500)
    tc.add_argument("--batch-size", type=common.up_to(MAX_BATCH), default=64)
    tc.add_argument("--lr", type=common.positive_number, default=5e-4)
    common.add_seed(tc)
    common.add_device(tc)
    common.add_out(tc, "output folder (default RUN/controlnet)")
    add_resume_flags(tc, "the ControlNet in --out (default RUN/controlnet)")
    common.add_quiet(tc)
    tc.set_defaults(func=cmd_train_controlnet)


def cmd_train_controlnet(args) -> int:
    from nanodiffusion.training.controlnet import train_controlnet

    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "controlnet"))
    report = train_controlnet(
        args.run,
        out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if stopped(report, out):
        return 130
    print(
        f"ControlNet trained {report['steps']} steps in {report['train_s']:.0f} s (loss "
        f"{report['loss_first_50']:.4f} -> {report['loss_last_50']:.4f}): {out}; use it with "
        f"nanodiff generate {args.run} PROMPT --control EDGES.png"
    )
    return 0


# --- demo ----------------------------------------------------------------------------------------
def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="train a class-conditional digits model (~3 min) and draw it")
    common.add_out(d, "run folder (default runs/demo)")
    common.add_steps(d, None, "training steps (default: the digits preset's)")
    common.add_quiet(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import load_run, sample_images
    from nanodiffusion.training.diffusion import train

    cfg = apply_overrides(preset("digits"), ["data.class_conditional=true"])
    if args.steps is not None:
        cfg.run.steps = args.steps
    out = common.check_out(Path(args.out) if args.out else common.fresh_dir(Path("runs") / "demo"))
    print(
        f"nanodiff demo: training a {cfg.model.channels}-channel class-conditional UNet on the 8x8 "
        f"digits for {cfg.run.steps} steps -> {out}"
    )
    t0 = time.perf_counter()
    if not train(cfg, out, progress=not args.quiet):
        return 130
    minutes = (time.perf_counter() - t0) / 60
    _, denoiser = load_run(out)
    labels = torch.arange(80) % 10  # column j draws digit j
    frames: list[torch.Tensor] = []
    images = sample_images(
        denoiser,
        80,
        (1, 8, 8),
        "ddpm",
        steps=100,
        seed=0,
        class_labels=labels,
        callback=lambda d: frames.append(d["x"].clamp(-1, 1).cpu()),
    )
    frames.append(images)
    scales = [0.0, 1.0, 2.0, 4.0]
    rows = [
        sample_images(
            denoiser, 20, (1, 8, 8), "dpm++2m", steps=20, seed=1, class_labels=labels[:20], guidance=w
        )
        for w in scales
    ]
    written = {
        "samples": viz.save_grid(images, out / "demo_samples.png", nrow=10),
        "denoising animation": viz.save_gif(frames, out / "denoising.gif", nrow=10),
        "guidance": viz.plot_rows(rows, [f"w = {w:g}" for w in scales], out / "guidance.png"),
        "forward process": viz.save_forward_strip(
            load_data("digits").images[:4], cfg.schedule, out / "forward_process.png"
        ),
        "loss": out / "loss.png",
    }
    print(f"trained in {minutes:.1f} min. Wrote (each column one digit, 0 to 9):")
    for what, path in written.items():
        print(f"  {what:<20} {path}")
    return 0


def add_commands(sub) -> None:
    for add in (add_demo, add_train, add_train_autoencoder, add_train_controlnet):
        add(sub)

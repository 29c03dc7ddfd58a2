"""`nanodiff`: a thin command line over the library."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from nanodiffusion import bench_samplers
from nanodiffusion.core.editing import METHODS
from nanodiffusion.core.samplers import SAMPLERS, get_sampler
from nanodiffusion.core.schedules import KINDS, SPACINGS, Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz
from nanodiffusion.io.checkpoint import EMA, MODEL, STATE, load_config, weights_step
from nanodiffusion.io.config import PRESETS, Config, apply_overrides, preset


def _sampler(name: str) -> str:
    """A sampler name or one of its diffusers / k-diffusion spellings, as nanodiffusion's name."""
    try:
        return get_sampler(name).name
    except NanodiffError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _fresh_dir(path: Path) -> Path:
    """path itself if unused, else path-2, path-3, ...: never write into an existing run."""
    candidate, k = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = path.with_name(f"{path.name}-{k}")
    return candidate


# --- train -------------------------------------------------------------------------------
def _train_config(args) -> Config:
    cfg = Config.load(Path(args.config)) if args.config else preset(args.preset)
    overrides = list(args.set or [])
    for flag, key in [("data", "data.name"), ("steps", "run.steps"), ("batch_size", "optim.batch_size"),
                      ("lr", "optim.lr"), ("device", "run.device"), ("seed", "run.seed")]:
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
        ignored = [flag for flag, value in [("--config", args.config), ("--data", args.data),
                   ("--batch-size", args.batch_size), ("--lr", args.lr), ("--seed", args.seed),
                   ("--set", args.set), ("--out", args.out),
                   ("--class-conditional", args.class_conditional), ("--task", args.task)] if value]
        if ignored:
            raise NanodiffError(f"--resume continues the run as configured; only --steps and --device "
                                f"may change, not {', '.join(ignored)}")
        done = resume(args.resume, steps=args.steps, device=args.device, progress=not args.quiet)
        run_dir = Path(args.resume)
    else:
        cfg = _train_config(args)
        name = args.preset if not args.config else Path(args.config).stem
        run_dir = Path(args.out) if args.out else _fresh_dir(Path("runs") / name)
        done = train(cfg, run_dir, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 0 if done else 130
    if not done:
        print(f"stopped; checkpoint saved. Continue with: nanodiff train --resume {run_dir}")
        return 130
    print(f"run saved in {run_dir}  (samples: {run_dir / 'samples.png'}, loss: {run_dir / 'loss.png'})")
    return 0


# --- sample ------------------------------------------------------------------------------
def _scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(not math.isfinite(w) or w < 0 for w in scales):
        raise argparse.ArgumentTypeError(f"guidance scales must be finite and >= 0, got {text!r}")
    return scales


def _sampler_options(args) -> dict:
    """The sampler flags that were given, checked against what the chosen sampler takes."""
    fn = SAMPLERS[args.sampler].fn
    given = {k: v for k, v in [("eta", args.eta), ("order", args.order), ("s_churn", args.churn)]
             if v is not None}
    accepted = inspect.signature(fn).parameters
    for key in given:
        if key not in accepted:
            flag = {"s_churn": "--churn"}.get(key, f"--{key}")
            raise NanodiffError(f"sampler {args.sampler} has no option {flag}")
    return given


def _open_run(args):
    """(config, denoiser, autoencoder or None, text encoder or None) of args.run."""
    from nanodiffusion.inference.pipelines import load_parts

    return load_parts(args.run, args.weights, args.device)


def _read_image(path: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file as [1, C, H, W] in [-1, 1], resized to the run's size if it differs, and
    the file's own (width, height)."""
    c, h, w = shape
    picture = viz.open_image(path, "RGB" if c == 3 else "L")
    if picture.size != (w, h):
        print(f"{path} is {picture.size[0]}x{picture.size[1]}; resized to the run's {w}x{h}", file=sys.stderr)
    return viz.load_image(picture, (w, h), channels=c), picture.size


def cmd_sample(args) -> int:
    from nanodiffusion.inference.pipelines import draw, image_shape

    options = _sampler_options(args)
    strength = _strength(args)
    cfg, denoiser, autoencoder, _ = _open_run(args)
    init = None if args.init is None else _read_image(args.init, image_shape(cfg, autoencoder))[0]
    k = cfg.model.num_classes
    scales = args.guidance or [1.0]
    labels = None
    if args.class_label is not None:
        if not k:
            raise NanodiffError("this model is unconditional; --class needs a class-conditional run")
        if not 0 <= args.class_label < k:
            raise NanodiffError(f"--class must be in 0..{k - 1}")
        labels = torch.full((args.n,), args.class_label)
    elif scales != [1.0]:
        if not k:
            raise NanodiffError("this model is unconditional; --guidance needs a class-conditional run")
        labels = torch.arange(args.n) % k  # column j draws class j mod K
    tag = f"{args.sampler}-{args.steps}-seed{args.seed}" + (
        f"-w{','.join(f'{w:g}' for w in scales)}" if scales != [1.0] else "")
    if init is not None:
        tag = f"img2img-{Path(args.init).stem}-s{strength:g}-{tag}"
    out = Path(args.out) if args.out else Path(args.run) / "samples" / tag
    rows, stats = [], {}
    for w in scales:
        rows.append(draw(cfg, denoiser, args.n, autoencoder=autoencoder, cond=labels, sampler=args.sampler,
                         steps=args.steps, seed=args.seed, guidance=w, spacing=args.spacing, progress=True,
                         stats=stats, init_image=init, strength=strength,
                         **options))
    out.mkdir(parents=True, exist_ok=True)
    what = f"{args.sampler}, {args.steps} steps = {stats['nfe']} NFE, seed {args.seed}"
    if init is not None:
        what = f"img2img from {args.init} at strength {strength:g}, " + what
    if len(scales) == 1:
        picture = viz.save_grid(rows[0], out / "grid.png")
        viz.save_images(rows[0], out)
        guided = f", guidance {scales[0]:g}" if scales[0] != 1 else ""
        print(f"{args.n} samples ({what}{guided}): {picture}")
    else:
        picture = viz.plot_rows(rows, [f"w = {w:g}" for w in scales], out / "guidance.png")
        print(f"{args.n} samples per guidance scale, same seeds, one row each ({what}): {picture}")
    return 0


# --- eval ------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from nanodiffusion.inference.pipelines import draw
    from nanodiffusion.io.checkpoint import atomic_write
    from nanodiffusion.metrics.fid import format_table
    from nanodiffusion.training.classifier import evaluate_images

    options = _sampler_options(args)
    cfg, denoiser, autoencoder, _ = _open_run(args)
    k = cfg.model.num_classes
    if args.guidance != 1 and not k:
        raise NanodiffError("this model is unconditional; --guidance needs a class-conditional run")
    labels = torch.arange(args.n) % k if k else None  # every class equally often
    stats: dict = {}
    images = draw(cfg, denoiser, args.n, autoencoder=autoencoder, cond=labels, sampler=args.sampler,
                  steps=args.steps, seed=args.seed, guidance=args.guidance, spacing=args.spacing,
                  progress=True, stats=stats, batch_size=args.batch_size, **options)
    result = evaluate_images(images, cfg.data.name, args.features, n_ref=args.n_ref, device=args.device)
    result.update(run=str(args.run), weights=args.weights, sampler=args.sampler, steps=args.steps,
                  nfe=stats["nfe"], seed=args.seed, guidance=args.guidance)
    tag = f"{args.sampler}-{args.steps}-n{args.n}-{args.features}-seed{args.seed}" + (
        f"-w{args.guidance:g}" if args.guidance != 1 else "")
    out = Path(args.out) if args.out else Path(args.run) / "eval" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"{args.sampler}, {args.steps} steps = {stats['nfe']} NFE, seed {args.seed}"
          + (f", guidance {args.guidance:g}" if args.guidance != 1 else ""))
    print(format_table(result))
    print(f"written: {out}")
    return 0


# --- info --------------------------------------------------------------------------------
def cmd_info(args) -> int:
    run = Path(args.run)
    cfg = load_config(run)
    from nanodiffusion.inference.pipelines import build_denoiser

    params = sum(p.numel() for p in build_denoiser(cfg).net.parameters())
    step = weights_step(run / MODEL) if (run / MODEL).exists() else 0
    m, s = cfg.model, cfg.schedule
    print(f"run          {run}")
    print(f"data         {cfg.data.name}  {m.in_channels}x{m.image_size}x{m.image_size}"
          + (f"  {m.num_classes} classes" if m.num_classes else ""))
    print(f"model        UNet {params / 1e6:.2f}M params, channels {m.channels} x {m.channel_mults},"
          f" attention at {m.attn_resolutions or 'no'} resolutions and in the middle")
    print(f"diffusion    {cfg.diffusion.parameterization} prediction, {s.kind} schedule"
          + (f", T={s.T}" if s.discrete else ""))
    print(f"training     step {step} of {cfg.run.steps}, batch {cfg.optim.batch_size}, lr {cfg.optim.lr}")
    print("files        " + ", ".join(f for f in (MODEL, EMA, STATE) if (run / f).exists()))
    return 0


# --- pictures of the forward process -----------------------------------------------------
def cmd_schedules(args) -> int:
    path = viz.plot_schedules({k: Schedule(kind=k) for k in KINDS}, Path(args.out))
    print(f"schedules plot: {path}")
    return 0


def cmd_forward(args) -> int:
    from nanodiffusion.data.datasets import load_data

    data = load_data(args.data, "train")
    path = viz.save_forward_strip(data.images[: args.n], Schedule(kind=args.schedule), Path(args.out))
    print(f"forward-process strip: {path}")
    return 0


def _strength(args) -> float:
    """--strength, checked: it needs --init and lies in (0, 1] (default 0.6)."""
    if args.init is None and args.strength is not None:
        raise NanodiffError("--strength needs --init IMAGE (img2img)")
    strength = 0.6 if args.strength is None else args.strength
    if not 0 < strength <= 1:
        raise NanodiffError(f"--strength must be in (0, 1], got {strength}")
    return strength if args.init is not None else 1.0


def _control_image(args, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """--control (an edge map: white edges on black) or --control-from (a picture whose Sobel
    edges are taken) as [1, 1, H, W] of 0/1 at the run's size."""
    from PIL import Image

    from nanodiffusion.metrics.image import sobel_edges

    if args.control and args.control_from:
        raise NanodiffError("give --control EDGES or --control-from IMAGE, not both")
    if args.control_scale is not None and not (args.control or args.control_from):
        raise NanodiffError("--control-scale needs --control or --control-from")
    _, h, w = shape
    if args.control_from:
        return sobel_edges(_read_image(args.control_from, (3, h, w))[0])
    if not args.control:
        return None
    edges = viz.open_image(args.control, "L")
    if edges.size != (w, h):
        print(f"{args.control} is {edges.size[0]}x{edges.size[1]}; resized to the run's {w}x{h}",
              file=sys.stderr)
        edges = edges.resize((w, h), Image.Resampling.NEAREST)
    return (viz.load_image(edges, channels=1) > 0).float()


def cmd_generate(args) -> int:
    from nanodiffusion.inference.pipelines import Cascade, TextToImage, image_shape

    if not 0 <= args.guidance <= 100:
        raise NanodiffError(f"--guidance must be between 0 and 100, got {args.guidance}")
    strength = _strength(args)
    if args.upscale:
        if args.init or args.control or args.control_from:
            raise NanodiffError("--upscale draws a cascade from noise: not with --init or a control")
        aug = 0.1 if args.aug is None else args.aug
        if aug < 0:
            raise NanodiffError(f"--aug must be >= 0, got {aug}")
        pipe = Cascade.from_pretrained(args.run, args.upscale, args.weights, args.device)
        images = pipe(args.n, prompt=args.prompt, negative_prompt=args.negative, guidance=args.guidance,
                      steps=args.steps, sr_steps=args.steps, sampler=args.sampler, aug=aug,
                      seed=args.seed, progress=True)
        return _save_generated(args, images, f", upscaled by {args.upscale} (augmentation {aug:g})")
    if args.aug is not None:
        raise NanodiffError("--aug needs --upscale")
    controlnet = args.controlnet or (Path(args.run) / "controlnet")
    wants_control = bool(args.control or args.control_from)
    pipe = TextToImage.from_pretrained(args.run, args.weights, args.device,
                                       controlnet=controlnet if wants_control else None)
    shape = image_shape(pipe.cfg, pipe.autoencoder)
    init = None if args.init is None else _read_image(args.init, shape)[0]
    control = _control_image(args, shape)
    scale = 1.0 if args.control_scale is None else args.control_scale
    images = pipe(args.prompt, n=args.n, steps=args.steps, guidance=args.guidance,
                  negative_prompt=args.negative, sampler=args.sampler, seed=args.seed, output="tensor",
                  progress=True, init_image=init, strength=strength, control=control, control_scale=scale)
    if control is not None:
        picture = viz.plot_rows([control.expand(1, shape[0], *shape[1:]) * 2 - 1, images],
                                ["control", f"scale {scale:g}"], _out_dir(args) / "control.png")
        print(f"control and images: {picture}")
    return _save_generated(args, images, f", controlled by {controlnet} at scale {scale:g}" if wants_control
                           else "")


def _out_dir(args) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in args.prompt.lower()).strip("-")[:60] or "empty"
    out = Path(args.out) if args.out else Path(args.run) / "generated" / f"{slug}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_generated(args, images: torch.Tensor, how: str) -> int:
    out = _out_dir(args)
    picture = viz.save_grid(images, out / "grid.png")
    viz.save_images(images, out)
    print(f"{args.n} images of {args.prompt!r} ({args.sampler}, {args.steps} steps, "
          f"guidance {args.guidance:g}, seed {args.seed}{how}): {picture}")
    return 0


def _edit_condition(args, cfg, encoder, n: int, captions: list[str] | None = None):
    """(cond, guidance, uncond) for the editing commands: a text run's prompt (or the demo's
    captions), a class run's --class (else its "no class" input), or nothing."""
    from nanodiffusion.inference.pipelines import conditioning

    prompt = captions if captions is not None and encoder is not None else args.prompt
    return conditioning(cfg, encoder, n, prompt, args.negative, args.class_label, args.guidance)


def _inpaint_inputs(args, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """--image and --mask as [1, C, H, W] and known [1, 1, H, W] at the run's size."""
    from PIL import Image

    from nanodiffusion.core.editing import mask_from_image

    image, size = _read_image(args.image, shape)
    mask = viz.open_image(args.mask, "L")
    if mask.size != size:
        raise NanodiffError(f"the mask is {mask.size[0]}x{mask.size[1]} and the image "
                            f"{size[0]}x{size[1]}; they must be the same size")
    _, h, w = shape
    if mask.size != (w, h):  # with the image, to the run's size
        mask = mask.resize((w, h), Image.Resampling.NEAREST)
    known = mask_from_image(viz.load_image(mask, channels=1)[0])
    if known.all():
        raise NanodiffError(f"the mask {args.mask} has no white pixels: nothing to repaint")
    return image, known


def cmd_inpaint(args) -> int:
    from nanodiffusion.core.editing import demo_masks
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import draw, image_shape
    from nanodiffusion.metrics.image import fill_errors

    if args.demo == bool(args.image or args.mask):
        raise NanodiffError("give --image and --mask, or --demo")
    if not args.demo and not (args.image and args.mask):
        raise NanodiffError("--image needs --mask (white where to repaint), and --mask needs --image")
    cfg, denoiser, autoencoder, encoder = _open_run(args)
    shape = image_shape(cfg, autoencoder)
    out = Path(args.out) if args.out else Path(args.run) / "inpaint"
    if args.demo:
        n = args.n or 6
        data = load_data(cfg.data.name, "test", cfg.data.image_size, cfg.data.channels)
        images, known = data.images[:n], demo_masks(n, shape[-1], args.seed)
        cond, w, uncond = _edit_condition(args, cfg, encoder, n, data.captions[:n] if data.captions else None)
        methods = ["model"] if cfg.data.task == "inpaint" else ["replace", "repaint"]
    else:
        n = args.n or 4
        images, known = _inpaint_inputs(args, shape)
        cond, w, uncond = _edit_condition(args, cfg, encoder, n)
        methods = [args.method or ("model" if cfg.data.task == "inpaint" else "repaint")]
    filled = {}
    for method in methods:
        print(f"{method}: {n} images, {args.sampler} {args.steps} steps"
              + (f", jumps of {args.jump} resampled {args.resample}x" if method == "repaint" else ""),
              file=sys.stderr)
        filled[method] = draw(cfg, denoiser, n, autoencoder=autoencoder, cond=cond, guidance=w, uncond=uncond,
                              sampler=args.sampler, steps=args.steps, seed=args.seed, init_image=images,
                              known=known, inpaint=method, jump=args.jump, resample=args.resample,
                              progress=True)
    out.mkdir(parents=True, exist_ok=True)
    shown = (images * known).expand(n, *shape)  # the hole in grey
    if not args.demo:
        method, result = methods[0], filled[methods[0]]
        stem = f"{Path(args.image).stem}-{method}-seed{args.seed}"
        viz.save_images(result, out, prefix=stem)
        picture = viz.plot_rows([shown[:1], result], ["input", method], out / f"{stem}.png")
        print(f"{n} fillings of {args.image} ({method}): {picture}")
        return 0
    rows, labels = [images, shown], ["original", "masked"]
    for method, result in filled.items():
        seam, hole = fill_errors(result, images, known)
        print(f"{method:8s} RMSE in the 2-pixel band at the seam {seam:.4f}, in the whole hole {hole:.4f}")
        rows.append(result)
        labels.append(method)
    picture = viz.plot_rows(rows, labels, out / "demo.png")
    print(f"{n} test images, part hidden and filled: {picture}")
    return 0


def cmd_upscale(args) -> int:
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import draw, load_run
    from nanodiffusion.metrics.image import psnr, ssim
    from nanodiffusion.tasks.upscale import downsample, low_size, upsample

    if args.demo == bool(args.image):
        raise NanodiffError("give --image, or --demo")
    if args.aug < 0:
        raise NanodiffError(f"--aug must be >= 0, got {args.aug}")
    cfg, denoiser = load_run(args.run, args.weights, args.device)
    if cfg.data.task != "upscale":
        raise NanodiffError(f"{args.run} is not an upscaling run (nanodiff train --preset upscale, "
                            "or --task upscale)")
    c, size, low = cfg.model.in_channels, cfg.model.image_size, low_size(cfg)
    out = Path(args.out) if args.out else Path(args.run) / "upscaled"
    if args.demo:
        n = args.n or 8
        truth = load_data(cfg.data.name, "test", size, cfg.data.channels).images[:n]
        small = downsample(truth, low)
    else:
        n = args.n or 1
        picture = viz.open_image(args.image, "RGB" if c == 3 else "L")
        if picture.size != (low, low):
            raise NanodiffError(f"this run upscales {low}x{low} images; {args.image} is "
                                f"{picture.size[0]}x{picture.size[1]}")
        small = viz.load_image(picture, channels=c).expand(n, c, low, low)
    print(f"{n} images {low}x{low} -> {size}x{size}, {args.sampler} {args.steps} steps, augmentation "
          f"{args.aug:g}", file=sys.stderr)
    images = draw(cfg, denoiser, n, low_res=small, aug=args.aug, sampler=args.sampler, steps=args.steps,
                  seed=args.seed, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    bicubic = upsample(small, size)
    if not args.demo:
        stem = f"{Path(args.image).stem}-x{size // low}-seed{args.seed}"
        viz.save_images(images, out, prefix=stem)
        shown = viz.plot_rows([bicubic[:1], images], ["bicubic", "upscaled"], out / f"{stem}.png")
        print(f"{n} upscalings of {args.image}: {shown}")
        return 0
    for name, x in [("bicubic", bicubic), ("diffusion", images)]:
        structure = f", SSIM {ssim(x, truth).mean():.4f}" if size >= 11 else ""  # SSIM's window is 11 pixels
        print(f"{name:9s} PSNR {psnr(x, truth).mean():.2f} dB{structure}")
    shown = viz.plot_rows([bicubic, images, truth], ["bicubic", "upscaled", "original"], out / "demo.png")
    print(f"{n} test images, {low}x{low} -> {size}x{size}: {shown}")
    return 0


def cmd_train_controlnet(args) -> int:
    from nanodiffusion.training.controlnet import train_controlnet

    out = Path(args.out) if args.out else Path(args.run) / "controlnet"
    report = train_controlnet(args.run, out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"ControlNet trained {report['steps']} steps in {report['train_s']:.0f} s (loss "
          f"{report['loss_first_50']:.4f} -> {report['loss_last_50']:.4f}): {out}; use it with "
          f"nanodiff generate {args.run} PROMPT --control EDGES.png")
    return 0


def cmd_sd(args) -> int:
    from nanodiffusion.inference.stable_diffusion import StableDiffusion

    sampler = get_sampler(args.sampler).name  # a bad name fails before the slow load
    strength = _strength(args)
    init = viz.open_image(args.init) if args.init else None  # read once, before the slow load; the
    pipe = StableDiffusion.from_pretrained(args.model, args.device, args.dtype)  # pipeline resizes it
    size = args.size or pipe.default_size
    pipe.check_size(size, size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in args.prompt.lower()).strip("-")[:60] or "empty"
    for i in range(args.n):  # one image at a time: a progress bar each, seeds seed, seed + 1, ...
        seed = args.seed + i
        print(f"image {i + 1}/{args.n} (seed {seed})", file=sys.stderr)
        image = pipe(args.prompt, negative_prompt=args.negative, steps=args.steps, guidance=args.guidance,
                     sampler=sampler, seed=seed, size=size, init_image=init,
                     strength=strength, progress=True)[0]
        path = out / f"{slug}-seed{seed}.png"
        image.save(path)
        print(path)
    return 0


def cmd_eval_prompts(args) -> int:
    from nanodiffusion.data.shapes import evaluate_prompts, format_adherence
    from nanodiffusion.inference.pipelines import TextToImage
    from nanodiffusion.io.checkpoint import atomic_write

    if not 0 <= args.guidance <= 100:
        raise NanodiffError(f"--guidance must be between 0 and 100, got {args.guidance}")
    pipe = TextToImage.from_pretrained(args.run, args.weights, args.device)
    drawn = []

    def generate(captions: list[str]):
        images = pipe(captions, n=1, steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                      seed=args.seed, output="tensor", progress=True)
        drawn.append(images)
        return viz.to_uint8(images)

    result = evaluate_prompts(generate, n=args.n, n_held_out=args.held_out)
    result.update(run=str(args.run), sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                  seed=args.seed, weights=args.weights)
    tag = f"{args.sampler}-{args.steps}-w{args.guidance:g}-n{args.n}-seed{args.seed}"
    out = Path(args.out) if args.out else Path(args.run) / "eval-prompts" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    picture = viz.save_grid(drawn[0][:32], out.with_suffix(".png"), nrow=8)
    print(f"prompt adherence ({args.sampler}, {args.steps} steps, guidance {args.guidance:g}, "
          f"seed {args.seed}); 'renders' is the referee's score on the prompts' own renders")
    print(format_adherence(result))
    print(f"written: {out}, {picture} (the first 32 prompts' images)")
    return 0


def cmd_train_autoencoder(args) -> int:
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import pick_device
    from nanodiffusion.nets.autoencoder import AutoencoderConfig
    from nanodiffusion.training.autoencoder import train_autoencoder_folder

    train_data = load_data(args.data, "train", args.size)
    try:
        held_out = load_data(args.data, "test", args.size).images[:500]
    except NanodiffError:  # a folder or .npz has no test split: hold out its last 500 images
        train_data.images, held_out = train_data.images[:-500], train_data.images[-500:]
    cfg = AutoencoderConfig(in_channels=train_data.images.shape[1], channels=args.channels,
                            z_channels=args.z_channels, kl_weight=args.kl_weight)
    out = Path(args.out) if args.out else _fresh_dir(Path("runs") / f"autoencoder-{Path(args.data).name}")
    device = pick_device(args.device)
    _, _, h, w = train_data.images.shape
    print(f"nanodiff train-autoencoder: {len(train_data.images)} {args.data} images "
          f"{tuple(train_data.images.shape[1:])} -> latents {cfg.z_channels}x{h // cfg.factor}"
          f"x{w // cfg.factor}, {args.steps} steps -> {out}")
    report = train_autoencoder_folder(train_data.images, held_out, cfg, out, args.steps, args.batch_size,
                                      args.lr, args.seed, device, progress=not args.quiet,
                                      about={"data": args.data})
    print(f"held-out PSNR {report['psnr']:.2f} dB; latent scale factor {report['scale_factor']:.4f} "
          f"(1 / std of the latents); wrote {out / 'reconstructions.png'}")
    return 0


# --- demo --------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import load_run, sample_images
    from nanodiffusion.training.diffusion import train

    cfg = apply_overrides(preset("digits"), ["data.class_conditional=true"])
    if args.steps is not None:
        cfg.run.steps = args.steps
    out = Path(args.out) if args.out else _fresh_dir(Path("runs") / "demo")
    print(f"nanodiff demo: training a {cfg.model.channels}-channel class-conditional UNet on the 8x8 "
          f"digits for {cfg.run.steps} steps -> {out}")
    t0 = time.perf_counter()
    if not train(cfg, out, progress=not args.quiet):
        return 130
    minutes = (time.perf_counter() - t0) / 60
    _, denoiser = load_run(out)
    labels = torch.arange(80) % 10  # column j draws digit j
    frames: list[torch.Tensor] = []
    images = sample_images(denoiser, 80, (1, 8, 8), "ddpm", steps=100, seed=0, class_labels=labels,
                           callback=lambda d: frames.append(d["x"].clamp(-1, 1).cpu()))
    frames.append(images)
    scales = [0.0, 1.0, 2.0, 4.0]
    rows = [sample_images(denoiser, 20, (1, 8, 8), "dpm++2m", steps=20, seed=1, class_labels=labels[:20],
                          guidance=w) for w in scales]
    written = {
        "samples": viz.save_grid(images, out / "demo_samples.png", nrow=10),
        "denoising animation": viz.save_gif(frames, out / "denoising.gif", nrow=10),
        "guidance": viz.plot_rows(rows, [f"w = {w:g}" for w in scales], out / "guidance.png"),
        "forward process": viz.save_forward_strip(load_data("digits").images[:4], cfg.schedule,
                                                  out / "forward_process.png"),
        "loss": out / "loss.png",
    }
    print(f"trained in {minutes:.1f} min. Wrote (each column one digit, 0 to 9):")
    for what, path in written.items():
        print(f"  {what:<20} {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line error as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"nanodiff: error: {message} (see {self.prog} --help)\n")


def _drawing_flags(p: argparse.ArgumentParser, steps: int, out: str) -> None:
    """The sampler, steps, seed, weights, device and output flags of the editing commands."""
    p.add_argument("--sampler", default="dpm++2m", type=_sampler)
    p.add_argument("--steps", type=_positive, default=steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help=f"output folder (default {out})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nanodiff", description="Diffusion models, clear and fast.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="train a class-conditional digits model (~3 min) and draw it")
    d.add_argument("--out", help="run folder (default runs/demo)")
    d.add_argument("--steps", type=_positive, help="training steps (default: the digits preset's)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model (a preset or a TOML config, flags override)")
    t.add_argument("--preset", default="digits", choices=PRESETS)
    t.add_argument("--config", help="a TOML (or JSON) config file instead of a preset")
    t.add_argument("--data", help="digits, mnist, fashion-mnist, shapes, an image folder or a .npz file")
    t.add_argument("--task", choices=["inpaint", "upscale"], help="inpaint: a mask-conditioned model (the "
                   "masked image and the mask as extra inputs, random masks of five families; nanodiff "
                   "inpaint --method model); upscale: super-resolution from data.low_res (default half "
                   "the size; nanodiff upscale; the upscale preset is one)")
    t.add_argument("--steps", type=_positive)
    t.add_argument("--batch-size", type=_positive)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--class-conditional", action="store_true", help="train with class labels")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set model.channels=64")
    t.add_argument("--out", help="run folder (default runs/<preset>)")
    t.add_argument("--resume", metavar="RUN", help="continue a run exactly where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw images from a trained run")
    s.add_argument("run")
    s.add_argument("--n", type=_positive, default=64)
    s.add_argument("--sampler", default="dpm++2m", type=_sampler,
                   help="see docs/samplers.md (default dpm++2m)")
    s.add_argument("--steps", type=_positive, default=20)
    s.add_argument("--spacing", choices=SPACINGS,
                   help="noise-level sequence (default: trailing for discrete schedules, karras for edm)")
    s.add_argument("--eta", type=float, help="stochasticity of ddim (0 to 1) and euler-a")
    s.add_argument("--order", type=int, help="unipc's order, 1 to 3 (default 2)")
    s.add_argument("--churn", type=float, help="S_churn of heun and edm (EDM Algorithm 2)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="class_label", type=int, help="class index to draw")
    s.add_argument("--guidance", type=_scales, metavar="W[,W...]",
                   help="classifier-free guidance scale (1: none); several give one row each")
    s.add_argument("--weights", default="ema", choices=["ema", "model"])
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--init", metavar="IMAGE", help="img2img (SDEdit): start from this image, noised")
    s.add_argument("--strength", type=float, help="with --init: how much to change, in (0, 1] (default 0.6; "
                   "1 ignores the image)")
    s.add_argument("--out", help="output folder (default RUN/samples/<sampler>-<steps>-seed<seed>)")
    s.set_defaults(func=cmd_sample)

    b = sub.add_parser("bench-samplers", help="every sampler's error per NFE against exact answers on "
                       "Gaussian mixtures; writes docs/samplers.md")
    bench_samplers.add_arguments(b)
    b.set_defaults(func=bench_samplers.run_from_args)

    e = sub.add_parser("eval", help="FID, KID, precision/recall of a run's samples against the test split")
    e.add_argument("run")
    e.add_argument("--n", type=_positive, default=1000, help="generated images (default 1000)")
    e.add_argument("--n-ref", type=_positive, help="real test images (default: --n)")
    e.add_argument("--features", default="inception", choices=["inception", "classifier"],
                   help="inception: comparable FID (slow on CPU); classifier: fast, nanodiff's own")
    e.add_argument("--sampler", default="dpm++2m", type=_sampler)
    e.add_argument("--steps", type=_positive, default=20)
    e.add_argument("--spacing", choices=SPACINGS)
    e.add_argument("--eta", type=float)
    e.add_argument("--order", type=int)
    e.add_argument("--churn", type=float)
    e.add_argument("--guidance", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=_positive, default=256)
    e.add_argument("--weights", default="ema", choices=["ema", "model"])
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--out", help="JSON file (default RUN/eval/<sampler>-<steps>-n<n>-<features>-...json)")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="describe a run folder")
    i.add_argument("run")
    i.set_defaults(func=cmd_info)

    sc = sub.add_parser("schedules", help="plot alpha_bar and log-SNR of every schedule")
    sc.add_argument("--out", default="schedules.png")
    sc.set_defaults(func=cmd_schedules)

    g = sub.add_parser("generate", help="draw images of a prompt from a text-conditional run")
    g.add_argument("run")
    g.add_argument("prompt")
    g.add_argument("--n", type=_positive, default=8)
    g.add_argument("--steps", type=_positive, default=20)
    g.add_argument("--guidance", type=float, default=4.0)
    g.add_argument("--negative", default="", help="negative prompt (default: the empty prompt)")
    g.add_argument("--sampler", default="dpm++2m", type=_sampler)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--weights", choices=("ema", "model"), default="ema")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--init", metavar="IMAGE", help="img2img (SDEdit): start from this image, noised")
    g.add_argument("--strength", type=float, help="with --init: how much to change, in (0, 1] (default 0.6)")
    g.add_argument("--control", metavar="EDGES", help="an edge map (white edges on black) that a ControlNet "
                   "steers the images by (nanodiff train-controlnet RUN)")
    g.add_argument("--control-from", metavar="IMAGE",
                   help="like --control, with the Sobel edges of this picture")
    g.add_argument("--control-scale", type=float, help="the ControlNet's residuals times this (default 1)")
    g.add_argument("--controlnet", help="a ControlNet folder (default RUN/controlnet)")
    g.add_argument("--upscale", metavar="SR_RUN",
                   help="a cascade: upscale the images with this upscaling run")
    g.add_argument("--aug", type=float, help="with --upscale: the noise level added to the "
                   "base images before upscaling (noise-conditioning augmentation; default 0.1)")
    g.add_argument("--out", help="output folder (default RUN/generated/<prompt>-seed<seed>)")
    g.set_defaults(func=cmd_generate)

    ip = sub.add_parser("inpaint", help="fill the masked part of an image (white in the mask) with any run "
                        "and any sampler; --demo hides part of test images and fills it")
    ip.add_argument("run")
    ip.add_argument("--image", help="the image to edit (resized to the run's size if it differs)")
    ip.add_argument("--mask", help="white where the image is to be repainted, black where it is kept; "
                    "the image's size")
    ip.add_argument("--demo", action="store_true", help="hide part of --n test images (three mask "
                    "families) and fill them with each method: RUN/inpaint/demo.png")
    ip.add_argument("--method", choices=METHODS,
                    help="replace: the known region noised to each level (simple, one pass); repaint: "
                    "plus RePaint's resampling, --resample times the NFE (default); model: a run trained "
                    "with --task inpaint (its default)")
    ip.add_argument("--jump", type=_positive, default=5, help="RePaint: steps per jump (default 5)")
    ip.add_argument("--resample", type=_positive, default=5, help="RePaint: passes per jump (default 5)")
    ip.add_argument("--prompt", help="text runs: what to draw (default: the empty prompt, unguided)")
    ip.add_argument("--negative", default="", help="text runs: negative prompt")
    ip.add_argument("--class", dest="class_label", type=int, help="class runs: the class to draw")
    ip.add_argument("--guidance", type=float, help="classifier-free guidance (default 4 with a prompt or "
                    "class, else 1)")
    ip.add_argument("--n", type=_positive, help="images (default 4; --demo: 6)")
    _drawing_flags(ip, steps=50, out="RUN/inpaint")
    ip.set_defaults(func=cmd_inpaint)

    up = sub.add_parser("upscale", help="super-resolution with an upscaling run (nanodiff train --preset "
                        "upscale): an image of the run's low resolution to its size")
    up.add_argument("run")
    up.add_argument("--image", help="the low-resolution image (the run's low size, e.g. 32x32)")
    up.add_argument("--demo", action="store_true", help="upscale --n test images' low-resolution versions "
                    "and print PSNR and SSIM against bicubic upsampling")
    up.add_argument("--aug", type=float, default=0.0, help="noise level added to the input first (default 0)")
    up.add_argument("--n", type=_positive, help="samples (default 1; --demo: 8)")
    _drawing_flags(up, steps=20, out="RUN/upscaled")
    up.set_defaults(func=cmd_upscale)

    tc = sub.add_parser("train-controlnet", help="train a ControlNet on a run's own images and their Sobel "
                        "edge maps (the run stays frozen)")
    tc.add_argument("run")
    tc.add_argument("--steps", type=_positive, default=1500)
    tc.add_argument("--batch-size", type=_positive, default=64)
    tc.add_argument("--lr", type=float, default=5e-4)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tc.add_argument("--out", help="output folder (default RUN/controlnet)")
    tc.add_argument("--quiet", action="store_true", help="no progress bar")
    tc.set_defaults(func=cmd_train_controlnet)

    sd = sub.add_parser("sd", help="draw with a Stable Diffusion 1.x/2.x checkpoint (diffusers folder) "
                        "and nanodiffusion's samplers")
    sd.add_argument("prompt")
    sd.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder, or a hub id "
                    "(downloaded where the network allows)")
    sd.add_argument("--sampler", default="dpm++2m", help="any of nanodiff sample's (default dpm++2m; "
                    "dpmpp-2m and euler_a are accepted too)")
    sd.add_argument("--steps", type=_positive, default=20)
    sd.add_argument("--guidance", type=float, default=7.5)
    sd.add_argument("--negative", default="", help="negative prompt")
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--n", type=_positive, default=1, help="images, with seeds seed, seed + 1, ...")
    sd.add_argument("--size", type=_positive, help="image side in pixels (default: the checkpoint's)")
    sd.add_argument("--init", help="img2img: start from this image")
    sd.add_argument("--strength", type=float, help="img2img: how much of the image is replaced, (0, 1] "
                    "(default 0.6)")
    sd.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sd.add_argument("--dtype", choices=("fp16", "bf16", "fp32"),
                    help="default fp16 on a GPU, fp32 on the CPU")
    sd.add_argument("--out", default="sd-images", help="output folder (default sd-images)")
    sd.set_defaults(func=cmd_sd)

    ep = sub.add_parser("eval-prompts", help="prompt adherence of a shapes text-to-image run, judged exactly")
    ep.add_argument("run")
    ep.add_argument("--n", type=_positive, default=200, help="evaluation prompts (default 200)")
    ep.add_argument("--held-out", type=int, default=100,
                    help="prompts naming held-out colour-shape pairs (default 100; 0: none)")
    ep.add_argument("--steps", type=_positive, default=20)
    ep.add_argument("--guidance", type=float, default=4.0)
    ep.add_argument("--sampler", default="dpm++2m", type=_sampler)
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--weights", choices=("ema", "model"), default="ema")
    ep.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ep.add_argument("--out", help="JSON file (default RUN/eval-prompts/<sampler>-<steps>-w<g>-n<n>-"
                    "seed<s>.json)")
    ep.set_defaults(func=cmd_eval_prompts)

    a = sub.add_parser("train-autoencoder", help="train the KL autoencoder that latent diffusion runs in")
    a.add_argument("--data", default="shapes", help="shapes (default), a built-in name, a folder or .npz")
    a.add_argument("--size", type=_positive, default=None, help="image size (shapes: default 32)")
    a.add_argument("--steps", type=_positive, default=2000)
    a.add_argument("--batch-size", type=_positive, default=64)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--channels", type=_positive, default=32)
    a.add_argument("--z-channels", type=_positive, default=4)
    a.add_argument("--kl-weight", type=float, default=1e-6)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a.add_argument("--out", help="output folder (default runs/autoencoder-<data>)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_train_autoencoder)

    f = sub.add_parser("forward", help="draw the forward (noising) process of some images")
    f.add_argument("--data", default="digits")
    f.add_argument("--schedule", default="linear", choices=KINDS)
    f.add_argument("--n", type=_positive, default=4)
    f.add_argument("--out", default="forward_process.png")
    f.set_defaults(func=cmd_forward)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NanodiffError as e:
        print(f"nanodiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanodiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

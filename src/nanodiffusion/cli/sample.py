"""Drawing and scoring commands: `nanodiff sample`, `eval`, `generate` and `eval-prompts`."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from nanodiffusion.cli import common
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.core.schedules import SPACINGS
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz

CONTROLNET_FLAGS = {"train_controlnet writes one": "nanodiff train-controlnet RUN makes RUN/controlnet"}


def add_solver_options(p: argparse.ArgumentParser) -> None:
    """--spacing and the options only some samplers take (--eta, --order, --churn)."""
    p.add_argument(
        "--spacing",
        choices=SPACINGS,
        help="noise-level sequence (default: trailing for discrete schedules, karras for edm)",
    )
    p.add_argument("--eta", type=common.non_negative, help="stochasticity of ddim (0 to 1) and euler-a")
    p.add_argument("--order", type=int, help="unipc's order, 1 to 3 (default 2)")
    p.add_argument("--churn", type=common.non_negative, help="S_churn of heun and edm (EDM Algorithm 2)")


def sampler_options(args) -> dict:
    """The sampler flags that were given, checked against what the chosen sampler takes."""
    fn = SAMPLERS[args.sampler].fn
    given = {
        k: v for k, v in [("eta", args.eta), ("order", args.order), ("s_churn", args.churn)] if v is not None
    }
    accepted = inspect.signature(fn).parameters
    for key in given:
        if key not in accepted:
            flag = {"s_churn": "--churn"}.get(key, f"--{key}")
            raise NanodiffError(f"sampler {args.sampler} has no option {flag}")
    return given


def class_labels(cfg, n: int, class_label: int | None, guided: float | None) -> torch.Tensor | None:
    """The classes n images are drawn with: --class, or with guidance (scale `guided`) every
    class in turn (image j draws class j mod K), else none. The library's conditioning checks
    them against the run."""
    from nanodiffusion.inference.pipelines import conditioning

    with common.flag_names(common.CONDITION_FLAGS):
        cond, _, _ = conditioning(cfg, None, n, class_label=class_label, guidance=guided)
    if class_label is not None:
        return cond
    return torch.arange(n) % cfg.model.num_classes if guided is not None and cfg.model.num_classes else None


# --- sample --------------------------------------------------------------------------------------
def scales(text: str) -> list[float]:
    """Guidance scales separated by commas, each checked as every command's --guidance."""
    if "," not in text:
        return [common.guidance(text)]
    try:
        return [common.guidance(w) for w in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}: {e}") from None


def add_sample(sub) -> None:
    s = sub.add_parser("sample", help="draw images from a trained run")
    common.add_run(s)
    common.add_n(s, 64)
    common.add_drawing(s, steps=20, out="RUN/samples/<sampler>-<steps>-seed<seed>")
    add_solver_options(s)
    s.add_argument("--class", dest="class_label", type=int, help="class index to draw")
    s.add_argument(
        "--guidance",
        type=scales,
        metavar="W[,W...]",
        help="classifier-free guidance scale (1: none); several give one row each",
    )
    common.add_img2img(s)
    s.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from nanodiffusion.inference.pipelines import draw, image_shape

    options = sampler_options(args)
    strength = common.strength(args)
    cfg, denoiser, autoencoder, _ = common.open_run(args)
    init = None if args.init is None else common.read_image(args.init, image_shape(cfg, autoencoder))[0]
    ws = args.guidance or [1.0]
    guided = next((w for w in ws if w != 1), ws[0]) if ws != [1.0] else None  # a scale to check the run by
    labels = class_labels(cfg, args.n, args.class_label, guided)
    tag = f"{args.sampler}-{args.steps}-seed{args.seed}" + (
        f"-w{','.join(f'{w:g}' for w in ws)}" if ws != [1.0] else ""
    )
    if init is not None:
        tag = f"img2img-{Path(args.init).stem}-s{strength:g}-{tag}"
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "samples", tag))
    rows, stats = [], {}
    for w in ws:
        rows.append(
            draw(
                cfg,
                denoiser,
                args.n,
                autoencoder=autoencoder,
                cond=labels,
                sampler=args.sampler,
                steps=args.steps,
                seed=args.seed,
                guidance=w,
                spacing=args.spacing,
                progress=True,
                stats=stats,
                init_image=init,
                strength=strength,
                **options,
            )
        )
    what = f"{args.sampler}, {args.steps} steps = {stats['nfe']} NFE, seed {args.seed}"
    if init is not None:
        what = f"img2img from {args.init} at strength {strength:g}, " + what
    if len(ws) == 1:
        picture = viz.save_grid(rows[0], out / "grid.png")
        viz.save_images(rows[0], out)
        guidance = f", guidance {ws[0]:g}" if ws[0] != 1 else ""
        print(f"{args.n} samples ({what}{guidance}): {picture}")
    else:
        picture = viz.plot_rows(rows, [f"w = {w:g}" for w in ws], out / "guidance.png")
        print(f"{args.n} samples per guidance scale, same seeds, one row each ({what}): {picture}")
    return 0


# --- eval ----------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="FID, KID, precision/recall of a run's samples against the test split")
    common.add_run(e)
    common.add_n(e, 1000, "generated images (default 1000)")
    e.add_argument("--n-ref", type=common.up_to(common.MAX_SAMPLES), help="real test images (default: --n)")
    e.add_argument(
        "--features",
        default="inception",
        choices=["inception", "classifier"],
        help="inception: comparable FID (slow on CPU); classifier: fast, nanodiff's own",
    )
    common.add_drawing(e, steps=20, out="RUN/eval/<sampler>-<steps>-n<n>-<features>-...json")
    add_solver_options(e)
    e.add_argument("--guidance", type=common.guidance, default=1.0)
    e.add_argument("--batch-size", type=common.positive, default=256)
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from nanodiffusion.data.files import write_atomically
    from nanodiffusion.inference.pipelines import conditioning, draw
    from nanodiffusion.metrics.fid import format_table
    from nanodiffusion.training.classifier import evaluate_images

    options = sampler_options(args)
    cfg, denoiser, autoencoder, _ = common.open_run(args)
    with common.flag_names(common.CONDITION_FLAGS):
        conditioning(cfg, None, args.n, guidance=args.guidance)  # guidance needs a class run
    tag = f"{args.sampler}-{args.steps}-n{args.n}-{args.features}-seed{args.seed}" + (
        f"-w{args.guidance:g}" if args.guidance != 1 else ""
    )
    default = common.run_output(args.run, "eval", f"{tag}.json")
    out = common.check_out(Path(args.out) if args.out else default, file=True)
    k = cfg.model.num_classes
    labels = torch.arange(args.n) % k if k else None  # every class equally often
    stats: dict = {}
    images = draw(
        cfg,
        denoiser,
        args.n,
        autoencoder=autoencoder,
        cond=labels,
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        spacing=args.spacing,
        progress=True,
        stats=stats,
        batch_size=args.batch_size,
        **options,
    )
    with common.flag_names({"features='classifier'": "--features classifier"}):
        result = evaluate_images(images, cfg.data.name, args.features, n_ref=args.n_ref, device=args.device)
    result.update(
        run=str(args.run),
        weights=args.weights,
        sampler=args.sampler,
        steps=args.steps,
        nfe=stats["nfe"],
        seed=args.seed,
        guidance=args.guidance,
    )
    write_atomically(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(
        f"{args.sampler}, {args.steps} steps = {stats['nfe']} NFE, seed {args.seed}"
        + (f", guidance {args.guidance:g}" if args.guidance != 1 else "")
    )
    print(format_table(result))
    print(f"written: {out}")
    return 0


# --- generate ------------------------------------------------------------------------------------
def add_generate(sub) -> None:
    g = sub.add_parser("generate", help="draw images of a prompt from a text-conditional run")
    common.add_run(g)
    g.add_argument("prompt")
    common.add_n(g, 8)
    g.add_argument("--guidance", type=common.guidance, default=4.0)
    common.add_negative(g, "negative prompt (default: the empty prompt)")
    common.add_drawing(g, steps=20, out="RUN/generated/<prompt>-seed<seed>")
    common.add_img2img(g)
    g.add_argument(
        "--control",
        metavar="EDGES",
        help="an edge map (white edges on black) that a ControlNet "
        "steers the images by (nanodiff train-controlnet RUN)",
    )
    g.add_argument(
        "--control-from", metavar="IMAGE", help="like --control, with the Sobel edges of this picture"
    )
    g.add_argument(
        "--control-scale", type=common.finite, help="the ControlNet's residuals times this (default 1)"
    )
    g.add_argument("--controlnet", help="a ControlNet folder (default RUN/controlnet)")
    g.add_argument(
        "--upscale",
        metavar="SR_RUN",
        help="a cascade: upscale the images with this upscaling run (or the shipped 'upscale')",
    )
    g.add_argument(
        "--aug",
        type=common.non_negative,
        help="with --upscale: the noise level added to the "
        "base images before upscaling (noise-conditioning augmentation; default 0.1)",
    )
    g.set_defaults(func=cmd_generate)


def control_image(args, shape: tuple[int, int, int]) -> torch.Tensor | None:
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
        return sobel_edges(common.read_image(args.control_from, (3, h, w))[0])
    if not args.control:
        return None
    edges = viz.open_image(args.control, "L")
    if edges.size != (w, h):
        print(
            f"{args.control} is {edges.size[0]}x{edges.size[1]}; resized to the run's {w}x{h}",
            file=sys.stderr,
        )
        edges = edges.resize((w, h), Image.Resampling.NEAREST)
    return (viz.load_image(edges, channels=1) > 0).float()


def cmd_generate(args) -> int:
    from nanodiffusion.inference.pipelines import TextToImage, image_shape

    strength = common.strength(args)
    if args.upscale:
        return generate_cascade(args)
    if args.aug is not None:
        raise NanodiffError("--aug needs --upscale")
    controlnet = args.controlnet or common.run_output(args.run, "controlnet")
    wants_control = bool(args.control or args.control_from)
    with common.flag_names(CONTROLNET_FLAGS):
        pipe = TextToImage.from_pretrained(
            args.run, args.weights, args.device, controlnet=controlnet if wants_control else None
        )
    generated_dir(args)  # checked before drawing
    shape = image_shape(pipe.cfg, pipe.autoencoder)
    init = None if args.init is None else common.read_image(args.init, shape)[0]
    control = control_image(args, shape)
    scale = 1.0 if args.control_scale is None else args.control_scale
    images = pipe(
        args.prompt,
        n=args.n,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative,
        sampler=args.sampler,
        seed=args.seed,
        output="tensor",
        progress=True,
        init_image=init,
        strength=strength,
        control=control,
        control_scale=scale,
    )
    if control is not None:
        picture = viz.plot_rows(
            [control.expand(1, shape[0], *shape[1:]) * 2 - 1, images],
            ["control", f"scale {scale:g}"],
            generated_dir(args) / "control.png",
        )
        print(f"control and images: {picture}")
    return save_generated(
        args, images, f", controlled by {controlnet} at scale {scale:g}" if wants_control else ""
    )


def generate_cascade(args) -> int:
    """generate --upscale: a text run's images taken to an upscaling run's size (a cascade)."""
    from nanodiffusion.inference.pipelines import Cascade

    if args.init or args.control or args.control_from:
        raise NanodiffError("--upscale draws a cascade from noise: not with --init or a control")
    aug = 0.1 if args.aug is None else args.aug
    with common.flag_names({"data.task = 'upscale'": "nanodiff train --task upscale"}):
        pipe = Cascade.from_pretrained(args.run, args.upscale, args.weights, args.device)
    generated_dir(args)  # checked before drawing
    images = pipe(
        args.n,
        prompt=args.prompt,
        negative_prompt=args.negative,
        guidance=args.guidance,
        steps=args.steps,
        sr_steps=args.steps,
        sampler=args.sampler,
        aug=aug,
        seed=args.seed,
        progress=True,
    )
    return save_generated(args, images, f", upscaled by {args.upscale} (augmentation {aug:g})")


def generated_dir(args) -> Path:
    default = common.run_output(args.run, "generated", f"{common.slug(args.prompt)}-seed{args.seed}")
    return common.check_out(Path(args.out) if args.out else default)


def save_generated(args, images: torch.Tensor, how: str) -> int:
    out = generated_dir(args)
    picture = viz.save_grid(images, out / "grid.png")
    viz.save_images(images, out)
    print(
        f"{args.n} images of {args.prompt!r} ({args.sampler}, {args.steps} steps, "
        f"guidance {args.guidance:g}, seed {args.seed}{how}): {picture}"
    )
    return 0


# --- eval-prompts --------------------------------------------------------------------------------
def add_eval_prompts(sub) -> None:
    ep = sub.add_parser("eval-prompts", help="prompt adherence of a shapes text-to-image run, judged exactly")
    common.add_run(ep)
    common.add_n(ep, 200, "evaluation prompts (default 200)")
    ep.add_argument(
        "--held-out",
        type=common.up_to(common.MAX_SAMPLES, 0),
        default=100,
        help="prompts naming held-out colour-shape pairs (default 100; 0: none)",
    )
    ep.add_argument("--guidance", type=common.guidance, default=4.0)
    common.add_drawing(ep, steps=20, out="RUN/eval-prompts/<sampler>-<steps>-w<g>-n<n>-seed<s>.json")
    ep.set_defaults(func=cmd_eval_prompts)


def cmd_eval_prompts(args) -> int:
    from nanodiffusion.data.files import write_atomically
    from nanodiffusion.data.shapes import evaluate_prompts, format_adherence
    from nanodiffusion.inference.pipelines import TextToImage

    pipe = TextToImage.from_pretrained(args.run, args.weights, args.device)
    tag = f"{args.sampler}-{args.steps}-w{args.guidance:g}-n{args.n}-seed{args.seed}"
    out = Path(args.out) if args.out else common.run_output(args.run, "eval-prompts", f"{tag}.json")
    common.check_out(out, file=True)
    drawn = []

    def generate(captions: list[str]):
        images = pipe(
            captions,
            n=1,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            seed=args.seed,
            output="tensor",
            progress=True,
        )
        drawn.append(images)
        return viz.to_uint8(images)

    result = evaluate_prompts(generate, n=args.n, n_held_out=args.held_out)
    result.update(
        run=str(args.run),
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        weights=args.weights,
    )
    write_atomically(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    picture = viz.save_grid(drawn[0][:32], out.with_suffix(".png"), nrow=8)
    print(
        f"prompt adherence ({args.sampler}, {args.steps} steps, guidance {args.guidance:g}, "
        f"seed {args.seed}); 'renders' is the referee's score on the prompts' own renders"
    )
    print(format_adherence(result))
    print(f"written: {out}, {picture} (the first 32 prompts' images)")
    return 0


def add_commands(sub) -> None:
    for add in (add_sample, add_eval, add_generate, add_eval_prompts):
        add(sub)

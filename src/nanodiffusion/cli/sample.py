"""Drawing and scoring commands: `nanodiff sample`, `eval`, `generate` and `eval-prompts`."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from nanodiffusion.cli import audio, common, molecules
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
    from nanodiffusion.inference.audio import draws_sound
    from nanodiffusion.inference.pipelines import draw, image_shape
    from nanodiffusion.inference.video import run_frames, video_files

    options = sampler_options(args)
    strength = common.strength(args)
    if common.run_config(args.run).data.modality == "molecule":
        return molecules.sample_molecules(args)
    cfg, denoiser, autoencoder, _ = common.open_run(args, videos=True)
    if draws_sound(cfg):
        return sample_sound(args, cfg, denoiser)
    if run_frames(cfg) is not None and (args.init is not None or len(args.guidance or [1.0]) > 1):
        raise NanodiffError("a video run's samples take neither --init nor several --guidance scales")
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
    if run_frames(cfg) is not None:
        files = video_files(rows[0], out)
        print(
            f"{args.n} videos ({what}): {files['gif']}, {files['strip']}"
            + (f", {files['mp4']}" if "mp4" in files else "")
        )
    elif len(ws) == 1:
        picture = viz.save_grid(rows[0], out / "grid.png")
        viz.save_images(rows[0], out)
        guidance = f", guidance {ws[0]:g}" if ws[0] != 1 else ""
        print(f"{args.n} samples ({what}{guidance}): {picture}")
    else:
        picture = viz.plot_rows(rows, [f"w = {w:g}" for w in ws], out / "guidance.png")
        print(f"{args.n} samples per guidance scale, same seeds, one row each ({what}): {picture}")
    return 0


def sample_sound(args, cfg, denoiser) -> int:
    """sample on a sound or roll run: clips (chorales) of --class-label, of every word in turn with
    --guidance, or of no class."""
    from nanodiffusion.inference.audio import draw_sound, sound_files

    if args.init is not None or len(args.guidance or [1.0]) > 1:
        raise NanodiffError("a sound run's samples take neither --init nor several --guidance scales")
    w = (args.guidance or [1.0])[0]
    labels = class_labels(cfg, args.n, args.class_label, w if w != 1 else None)
    tag = f"{args.sampler}-{args.steps}-seed{args.seed}" + (f"-w{w:g}" if w != 1 else "")
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "samples", tag))
    sound = draw_sound(
        cfg, denoiser, args.n, cond=labels, guidance=w, sampler=args.sampler, steps=args.steps,
        seed=args.seed, progress=True, spacing=args.spacing, **sampler_options(args),
    )  # fmt: skip
    files = sound_files(cfg, sound, out)
    print(
        f"{args.n} samples ({args.sampler}, {args.steps} steps, seed {args.seed}): "
        f"{files['first'].parent}/ ({files['first'].name}, ...), {files['picture']}"
    )
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
    g.add_argument(
        "prompt", nargs="?", help="the prompt (a word run: the word; a molecule run: a property bin, or none)"
    )
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
        "--frames",
        type=common.up_to(256),
        help="videos of this many frames: a video run's own count (the default), or an image run "
        "sampled frame by frame with independent noise (the baseline a video model beats)",
    )
    g.add_argument(
        "--first-frame",
        metavar="IMAGE",
        help="image-to-video: this picture is frame 0, kept exactly; the rest follows the prompt",
    )
    g.add_argument(
        "--fps",
        type=common.number(0, 120, above=True),
        default=8,
        help="frames per second of the GIF and MP4",
    )
    audio.add_sound_options(g)
    molecules.add_molecule_options(g)
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
    from nanodiffusion.inference.audio import draws_sound
    from nanodiffusion.inference.pipelines import TextToImage, image_shape
    from nanodiffusion.inference.video import run_frames

    strength = common.strength(args)
    if args.upscale:
        return generate_cascade(args)
    if args.aug is not None:
        raise NanodiffError("--aug needs --upscale")
    cfg = common.run_config(args.run)
    if cfg.data.modality == "molecule":
        return molecules.cmd_generate_molecules(args, args.prompt)
    if args.atoms is not None or args.scaffold:
        raise NanodiffError("--atoms and --scaffold are a molecule run's; this run draws images")
    if args.prompt is None:
        raise NanodiffError('generate needs a prompt (the empty prompt "" draws without one)')
    if draws_sound(cfg):
        return audio.cmd_generate_sound(args)
    if args.given or args.gap:
        raise NanodiffError("--given and --gap edit a sound run's clips; this run draws images")
    controlnet = args.controlnet or common.run_output(args.run, "controlnet")
    wants_control = bool(args.control or args.control_from)
    with common.flag_names(CONTROLNET_FLAGS):
        pipe = TextToImage.from_pretrained(
            args.run, args.weights, args.device, controlnet=controlnet if wants_control else None
        )
    generated_dir(args)  # checked before drawing
    if args.frames is not None or args.first_frame is not None or run_frames(pipe.cfg) is not None:
        return generate_video(args, pipe)
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


def generate_video(args, pipe) -> int:
    """generate on a video run (or --frames on an image run: frame by frame): an animated GIF, an
    MP4 where imageio-ffmpeg is installed, a frame strip and each video's GIF."""
    from nanodiffusion.inference.pipelines import conditioning, image_shape
    from nanodiffusion.inference.video import draw_video, run_frames, video_files

    if args.init or args.control or args.control_from or args.controlnet or args.aug is not None:
        raise NanodiffError("videos take --first-frame, not --init, --strength, a control or --aug")
    shape = image_shape(pipe.cfg, pipe.autoencoder)
    frames = args.frames or run_frames(pipe.cfg)
    if frames is None:
        raise NanodiffError(f"{args.run} is an image run: give --frames N to sample it frame by frame")
    first = None
    if args.first_frame is not None:
        first = common.read_image(args.first_frame, (shape[0], shape[-2], shape[-1]), exact=True)[0]
    cond, guidance, uncond = conditioning(
        pipe.cfg, pipe.encoder, args.n, args.prompt, args.negative, guidance=args.guidance
    )
    videos = draw_video(
        pipe.cfg,
        pipe.denoiser,
        args.n,
        frames=frames,
        autoencoder=pipe.autoencoder,
        cond=cond,
        guidance=guidance,
        uncond=uncond,
        first=first,
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        progress=True,
    )
    files = video_files(videos, generated_dir(args), args.fps)
    how = "frame by frame, " if run_frames(pipe.cfg) is None else ""
    how += f"from {args.first_frame}, " if first is not None else ""
    print(
        f"{args.n} videos of {args.prompt!r} ({frames} frames, {how}{args.sampler}, {args.steps} steps, "
        f"guidance {args.guidance:g}, seed {args.seed}): {files['gif']}, {files['strip']}"
        + (f", {files['mp4']}" if "mp4" in files else " (no MP4: pip install imageio-ffmpeg)")
    )
    return 0


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
    common.refuse_video(pipe.cfg, args.run)
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


# --- eval-video ----------------------------------------------------------------------------------
def add_eval_video(sub) -> None:
    ev = sub.add_parser(
        "eval-video", help="a video run's samples judged exactly: identity, motion, smoothness"
    )
    common.add_run(ev)
    common.add_n(ev, 100, "videos per judged set (default 100)")
    ev.add_argument(
        "--held-out",
        type=common.up_to(common.MAX_SAMPLES, 0),
        help="held-out colour-shape-motion prompts (default: --n; 0: none)",
    )
    ev.add_argument("--guidance", type=common.guidance, help="default: the run's grid guidance, else 4")
    ev.add_argument(
        "--baseline", metavar="IMAGE_RUN", help="also judge this image run sampled frame by frame"
    )
    common.add_drawing(ev, steps=20, out="RUN/eval-video/<sampler>-<steps>-n<n>-seed<s>.json")
    ev.set_defaults(func=cmd_eval_video)


def cmd_eval_video(args) -> int:
    from nanodiffusion.training.video_eval import evaluate_video, format_video_table

    out = common.judged_out(args, "eval-video")
    result = evaluate_video(
        args.run,
        n=args.n,
        n_held_out=args.held_out,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        seed=args.seed,
        baseline=args.baseline,
        weights=args.weights,
        device=args.device,
    )
    samples = common.write_judged(out, result)
    picture = viz.save_strip(samples, out.with_suffix(".png"))
    print(format_video_table(result))
    print(f"written: {out}, {picture} (the first {len(samples)} videos)")
    return 0


def add_commands(sub) -> None:
    for add in (add_sample, add_eval, add_generate, add_eval_prompts, add_eval_video):
        add(sub)

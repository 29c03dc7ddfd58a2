"""Editing commands: `nanodiff inpaint` and `nanodiff upscale` (each with a --demo on test
images, computed by nanodiffusion.inference.demos)."""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.cli import common
from nanodiffusion.core.editing import METHODS
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz

# the library's names for what a command-line user sets with these flags and commands
INPAINT_FLAGS = {**common.CONDITION_FLAGS, "data.task = 'inpaint'": "nanodiff train --task inpaint"}


# --- inpaint -------------------------------------------------------------------------------------
def add_inpaint(sub) -> None:
    ip = sub.add_parser(
        "inpaint",
        help="fill the masked part of an image (white in the mask) with any run "
        "and any sampler; --demo hides part of test images and fills it",
    )
    common.add_run(ip)
    ip.add_argument("--image", help="the image to edit (resized to the run's size if it differs)")
    ip.add_argument(
        "--mask", help="white where the image is to be repainted, black where it is kept; the image's size"
    )
    ip.add_argument(
        "--demo",
        action="store_true",
        help="hide part of --n test images (three mask "
        "families) and fill them with each method: RUN/inpaint/demo.png",
    )
    ip.add_argument(
        "--method",
        choices=METHODS,
        help="replace: the known region noised to each level (simple, one pass); repaint: "
        "plus RePaint's resampling, --resample times the NFE (default); model: a run trained "
        "with --task inpaint (its default)",
    )
    ip.add_argument("--jump", type=common.up_to(1000), default=5, help="RePaint: steps per jump (default 5)")
    ip.add_argument(
        "--resample", type=common.up_to(1000), default=5, help="RePaint: passes per jump (default 5)"
    )
    ip.add_argument("--prompt", help="text runs: what to draw (default: the empty prompt, unguided)")
    common.add_negative(ip, "text runs: negative prompt")
    ip.add_argument("--class", dest="class_label", type=int, help="class runs: the class to draw")
    ip.add_argument(
        "--guidance",
        type=common.guidance,
        help="classifier-free guidance (default 4 with a prompt or class, else 1)",
    )
    common.add_n(ip, None, "images (default 4; --demo: 6)")
    common.add_drawing(ip, steps=50, out="RUN/inpaint")
    ip.set_defaults(func=cmd_inpaint)


def inpaint_inputs(args, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """--image and --mask as [1, C, H, W] and known [1, 1, H, W] at the run's size."""
    from PIL import Image

    from nanodiffusion.core.editing import mask_from_image
    from nanodiffusion.data.files import read_mask

    image, size = common.read_image(args.image, shape)
    mask = read_mask(args.mask)
    if mask.size != size:
        raise NanodiffError(
            f"the mask is {mask.size[0]}x{mask.size[1]} and the image "
            f"{size[0]}x{size[1]}; they must be the same size"
        )
    _, h, w = shape
    if mask.size != (w, h):  # with the image, to the run's size
        mask = mask.resize((w, h), Image.Resampling.NEAREST)
    known = mask_from_image(viz.load_image(mask, channels=1)[0])
    if known.all():
        raise NanodiffError(f"the mask {args.mask} has no white pixels left at the run's size {w}x{h}")
    return image, known


def cmd_inpaint(args) -> int:
    from nanodiffusion.inference.pipelines import image_shape

    if args.demo == bool(args.image or args.mask):
        raise NanodiffError("give --image and --mask, or --demo")
    if not args.demo and not (args.image and args.mask):
        raise NanodiffError("--image needs --mask (white where to repaint), and --mask needs --image")
    cfg, denoiser, autoencoder, encoder = common.open_run(args)
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "inpaint"))
    with common.flag_names(INPAINT_FLAGS):
        if args.demo:
            return inpaint_demo(args, cfg, denoiser, autoencoder, encoder, out)
        images, known = inpaint_inputs(args, image_shape(cfg, autoencoder))
        return inpaint_file(args, cfg, denoiser, autoencoder, encoder, images, known, out)


def inpaint_file(args, cfg, denoiser, autoencoder, encoder, images, known, out: Path) -> int:
    """inpaint --image --mask: --n fillings of the file by one method."""
    from nanodiffusion.inference.demos import fill, inpaint_methods
    from nanodiffusion.inference.pipelines import conditioning

    n = args.n or 4
    cond, w, uncond = conditioning(
        cfg, encoder, n, args.prompt, args.negative, args.class_label, args.guidance
    )
    method = args.method or inpaint_methods(cfg)[-1]
    result = fill(
        cfg,
        denoiser,
        images,
        known,
        method,
        n,
        sampler=args.sampler,
        steps=args.steps,
        jump=args.jump,
        resample=args.resample,
        progress=True,
        autoencoder=autoencoder,
        cond=cond,
        guidance=w,
        uncond=uncond,
        seed=args.seed,
    )
    stem = f"{Path(args.image).stem}-{method}-seed{args.seed}"
    viz.save_images(result, out, prefix=stem)
    picture = viz.plot_rows([masked(images, known, n)[:1], result], ["input", method], out / f"{stem}.png")
    print(f"{n} fillings of {args.image} ({method}): {picture}")
    return 0


def inpaint_demo(args, cfg, denoiser, autoencoder, encoder, out: Path) -> int:
    """inpaint --demo: --n test images, part hidden, filled by every method; the seam errors."""
    from nanodiffusion.inference import demos

    demo = demos.inpaint_demo(
        cfg,
        denoiser,
        args.n or 6,
        autoencoder=autoencoder,
        encoder=encoder,
        prompt=args.prompt,
        negative=args.negative,
        class_label=args.class_label,
        guidance=args.guidance,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        jump=args.jump,
        resample=args.resample,
        progress=True,
    )
    for method, (seam, hole) in demo.errors.items():
        print(f"{method:8s} RMSE in the 2-pixel band at the seam {seam:.4f}, in the whole hole {hole:.4f}")
    n = len(demo.images)
    picture = viz.plot_rows(
        [demo.images, masked(demo.images, demo.known, n), *demo.filled.values()],
        ["original", "masked", *demo.filled],
        out / "demo.png",
    )
    print(f"{n} test images, part hidden and filled: {picture}")
    return 0


def masked(images: torch.Tensor, known: torch.Tensor, n: int) -> torch.Tensor:
    """The images with their holes grey, n of them (a single image repeated)."""
    return (images * known).expand(n, *images.shape[1:])


# --- upscale -------------------------------------------------------------------------------------
def add_upscale(sub) -> None:
    up = sub.add_parser(
        "upscale",
        help="super-resolution with an upscaling run (nanodiff train --preset "
        "upscale): an image of the run's low resolution to its size",
    )
    common.add_run(up)
    up.add_argument("--image", help="the low-resolution image (the run's low size, e.g. 32x32)")
    up.add_argument(
        "--demo",
        action="store_true",
        help="upscale --n test images' low-resolution versions "
        "and print PSNR and SSIM against bicubic upsampling",
    )
    up.add_argument(
        "--aug",
        type=common.non_negative,
        default=0.0,
        help="noise level added to the input first (default 0)",
    )
    common.add_n(up, None, "samples (default 1; --demo: 8)")
    common.add_drawing(up, steps=20, out="RUN/upscaled")
    up.set_defaults(func=cmd_upscale)


def cmd_upscale(args) -> int:
    from nanodiffusion.inference.pipelines import load_run

    if args.demo == bool(args.image):
        raise NanodiffError("give --image, or --demo")
    cfg, denoiser = load_run(args.run, args.weights, args.device)
    if cfg.data.task != "upscale":
        raise NanodiffError(
            f"{args.run} is not an upscaling run (nanodiff train --preset upscale, or --task upscale)"
        )
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "upscaled"))
    options = dict(aug=args.aug, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True)
    return (upscale_demo if args.demo else upscale_file)(args, cfg, denoiser, out, options)


def upscale_file(args, cfg, denoiser, out: Path, options: dict) -> int:
    """upscale --image: --n upscalings of a file of the run's low resolution."""
    from nanodiffusion.inference.demos import upscale
    from nanodiffusion.tasks.upscale import low_size, upsample

    c, size, low = cfg.model.in_channels, cfg.model.image_size, low_size(cfg)
    n = args.n or 1
    picture = viz.open_image(args.image, "RGB" if c == 3 else "L")
    if picture.size != (low, low):
        raise NanodiffError(
            f"this run upscales {low}x{low} images; {args.image} is {picture.size[0]}x{picture.size[1]}"
        )
    small = viz.load_image(picture, channels=c).expand(n, c, low, low)
    images = upscale(cfg, denoiser, small, **options)
    stem = f"{Path(args.image).stem}-x{size // low}-seed{args.seed}"
    viz.save_images(images, out, prefix=stem)
    shown = viz.plot_rows([upsample(small, size)[:1], images], ["bicubic", "upscaled"], out / f"{stem}.png")
    print(f"{n} upscalings of {args.image}: {shown}")
    return 0


def upscale_demo(args, cfg, denoiser, out: Path, options: dict) -> int:
    """upscale --demo: --n test images shrunk and upscaled; PSNR and SSIM against bicubic's."""
    from nanodiffusion.inference import demos

    demo = demos.upscale_demo(cfg, denoiser, args.n or 8, **options)
    for name, scores in demo.scores.items():
        structure = f", SSIM {scores['ssim']:.4f}" if "ssim" in scores else ""
        print(f"{name:9s} PSNR {scores['psnr']:.2f} dB{structure}")
    shown = viz.plot_rows(
        [demo.bicubic, demo.upscaled, demo.truth], ["bicubic", "upscaled", "original"], out / "demo.png"
    )
    low, size = demo.low.shape[-1], demo.truth.shape[-1]
    print(f"{len(demo.truth)} test images, {low}x{low} -> {size}x{size}: {shown}")
    return 0


def add_commands(sub) -> None:
    for add in (add_inpaint, add_upscale):
        add(sub)

"""`nanodiff sd`: a Stable Diffusion 1.x/2.x or SD3-class checkpoint (a diffusers folder) drawn
with nanodiffusion's samplers."""

from __future__ import annotations

import sys

from nanodiffusion.cli import common
from nanodiffusion.io import viz


def add_sd(sub) -> None:
    sd = sub.add_parser(
        "sd",
        help="draw with a Stable Diffusion 1.x/2.x or SD3-class checkpoint (diffusers folder) "
        "and nanodiffusion's samplers",
    )
    sd.add_argument("prompt")
    sd.add_argument(
        "--model",
        required=True,
        help="a diffusers Stable Diffusion 1.x/2.x or SD3 folder, or a hub id (downloaded where "
        "the network allows)",
    )
    common.add_sampler(sd, steps=20)
    sd.add_argument("--guidance", type=common.guidance, default=7.5)
    common.add_negative(sd)
    common.add_seed(sd)
    common.add_n(sd, 1, "images, with seeds seed, seed + 1, ...")
    sd.add_argument(
        "--size", type=common.up_to(4096), help="image side in pixels (default: the checkpoint's)"
    )
    common.add_img2img(sd)
    common.add_device(sd)
    sd.add_argument(
        "--dtype", choices=("fp16", "bf16", "fp32"), help="default fp16 on a GPU, fp32 on the CPU"
    )
    common.add_out(sd, "output folder (default sd-images)", "sd-images")
    sd.set_defaults(func=cmd_sd)


def cmd_sd(args) -> int:
    from nanodiffusion.data.files import write_atomically
    from nanodiffusion.inference.stable_diffusion import StableDiffusion

    strength = common.strength(args)
    out = common.check_out(args.out)  # checked before the slow load
    init = viz.open_image(args.init) if args.init else None  # read once, before the slow load; the
    pipe = StableDiffusion.from_pretrained(args.model, args.device, args.dtype)  # pipeline resizes it
    size = args.size or pipe.default_size
    pipe.check_size(size, size)
    for i in range(args.n):  # one image at a time: a progress bar each, seeds seed, seed + 1, ...
        seed = args.seed + i
        print(f"image {i + 1}/{args.n} (seed {seed})", file=sys.stderr)
        image = pipe(
            args.prompt,
            negative_prompt=args.negative,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            seed=seed,
            size=size,
            init_image=init,
            strength=strength,
            progress=True,
        )[0]
        path = out / f"{common.slug(args.prompt)}-seed{seed}.png"
        write_atomically(path, image.save)
        print(path)
    return 0


def add_commands(sub) -> None:
    add_sd(sub)

"""Stable Diffusion at true scale: nanodiffusion's pipeline against diffusers' on the same networks.

One random-weight pipeline with Stable Diffusion 1.5's real dimensions (CLIP ViT-L/14's text
model, 77 tokens, the ~860M-parameter UNet on 64x64x4 latents, the 512x512 autoencoder) is
built once; diffusers' ``StableDiffusionPipeline`` and nanodiffusion's ``StableDiffusion`` share
its modules, so the networks are identical and only the pipelines differ. Each round draws one
512x512 image per library (alternating which goes first) with DPM-Solver++(2M), trailing
spacing, classifier-free guidance 7.5 (two UNet evaluations per step, batched), from the same
initial latents; it records the time of every denoising step (median of the steps after the
first) and of the whole image (prompt to decoded pixels), and the two images' largest
difference. On a GPU the networks run in float16 and peak memory is measured per library.

    python bench/sd_speed.py                 # CPU: 4 steps x 3 rounds, about 10 minutes on 2 cores
    python bench/sd_speed.py --device cuda   # fp16, 20 steps x 5 rounds
    python bench/sd_speed.py --quick         # tiny dimensions, a smoke test (writes no doc)
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch

from _common import machine, write_section
from _sd_fixture import random_pipeline
from nanodiffusion.inference.stable_diffusion import StableDiffusion

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "stable-diffusion.md"
PROMPT = "a red cat on a blue mat"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_diffusers(pipe, latents, steps, guidance, device):
    stamps = []

    def on_step(_pipe, i, t, kwargs):
        _sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    _sync(device)
    start = time.perf_counter()
    image = pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents.clone(),
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=on_step,
    ).images
    _sync(device)
    return image.float().cpu() * 2 - 1, time.perf_counter() - start, stamps


def run_ours(pipe, latents, steps, guidance, device):
    stamps = []

    def on_step(_info):
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    start = time.perf_counter()
    image = pipe(
        PROMPT,
        steps=steps,
        guidance=guidance,
        sampler="dpm++2m",
        spacing="trailing",
        seed=0,
        latents=latents,
        output="tensor",
        callback=on_step,
    )
    _sync(device)
    return image, time.perf_counter() - start, stamps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, help="denoising steps per image (default 4 on CPU, 20 on a GPU)")
    p.add_argument("--rounds", type=int, help="images per library (default 3 on CPU, 5 on a GPU)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--quick", action="store_true", help="tiny dimensions: a smoke test")
    p.add_argument("--out", type=Path, help=f"Markdown file (default {DOC.relative_to(ROOT)})")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 4)
    rounds = args.rounds or (5 if gpu else 3)
    dtype = torch.float16 if gpu else torch.float32

    import diffusers

    t = time.perf_counter()
    reference = random_pipeline("tiny" if args.quick else "sd15")
    theirs = reference.to(device, dtype) if gpu else reference
    theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        theirs.scheduler.config,
        timestep_spacing="trailing",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        steps_offset=0,
    )
    ours = StableDiffusion.from_diffusers(theirs, device=str(device), dtype=dtype)
    params = sum(q.numel() for q in theirs.unet.parameters())
    size = ours.default_size
    print(
        f"built in {time.perf_counter() - t:.0f} s: UNet {params / 1e6:.0f}M parameters, {size}x{size} "
        f"images, {steps} steps, guidance {args.guidance:g}, {rounds} rounds on {device} ({dtype})",
        flush=True,
    )
    side = size // ours.vae_factor
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    latents = latents.to(device, dtype)
    runners = {
        "diffusers": lambda: run_diffusers(theirs, latents, steps, args.guidance, device),
        "nanodiffusion": lambda: run_ours(ours, latents.float(), steps, args.guidance, device),
    }
    results = {name: {"step": [], "image": [], "peak": []} for name in runners}
    images = {}
    for name in runners:  # warm-up (kernels, allocator), not timed
        runners[name]()
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for name in order:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            image, seconds, stamps = runners[name]()
            steps_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            results[name]["step"].append(statistics.median(steps_s) if steps_s else seconds / steps)
            results[name]["image"].append(seconds)
            if gpu:
                results[name]["peak"].append(torch.cuda.max_memory_allocated() / 2**30)
            images[name] = image
            print(
                f"round {r + 1} {name}: {seconds:.2f} s per image, "
                f"{results[name]['step'][-1]:.3f} s per step",
                flush=True,
            )
    diff = float((images["nanodiffusion"] - images["diffusers"]).abs().max())
    print(f"largest pixel difference between the libraries' images: {diff:.2e}")
    med = {
        name: {k: statistics.median(v) if v else None for k, v in r.items()} for name, r in results.items()
    }
    ratio_step = med["diffusers"]["step"] / med["nanodiffusion"]["step"]
    ratio_image = med["diffusers"]["image"] / med["nanodiffusion"]["image"]
    rows = []
    for name in ("nanodiffusion", "diffusers"):
        m = med[name]
        peak = f"{m['peak']:.2f} GiB" if m["peak"] is not None else "-"
        rows.append(f"| {name} | {m['step']:.3f} | {1 / m['step']:.2f} | {m['image']:.2f} | {peak} |")
    weights = "tiny (--quick)" if args.quick else "Stable Diffusion 1.5's"
    body = "\n".join(
        [
            f"Measured by `python bench/sd_speed.py{' --device cuda' if gpu else ''}` on {machine()}"
            + (f", {torch.cuda.get_device_name()}" if gpu else "")
            + f"; diffusers {version('diffusers')}.",
            "",
            f"Random weights with {weights} "
            f"dimensions (UNet {params / 1e6:.0f}M parameters), "
            f"{size}x{size}, batch 1, {steps} steps of DPM-Solver++(2M) with guidance {args.guidance:g} "
            f"(a batch of 2 per UNet call), {'float16' if gpu else 'float32'}; medians of {rounds} rounds, "
            "the libraries alternating.",
            "",
            "| pipeline | seconds per step | steps/s (it/s) | seconds per image (prompt to pixels) "
            "| peak memory |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"nanodiffusion is {ratio_step:.2f}x diffusers' speed per step and {ratio_image:.2f}x per image "
            f"(above 1: faster). Aim: never slower; on a GPU within 5% of its it/s or faster. The two "
            f"images differ by at most {diff:.1e} (pixels in [-1, 1]).",
        ]
    )
    print(body)
    if args.quick and args.out is None:
        return
    write_section("sd_speed" + ("_gpu" if gpu else ""), body, args.out or DOC)
    print(f"wrote {args.out or DOC}")


if __name__ == "__main__":
    main()

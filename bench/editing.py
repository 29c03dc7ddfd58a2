"""Editing and control, measured: inpainting (replace, RePaint, a mask-conditioned model) on
Fashion-MNIST and the shapes world, img2img (SDEdit), super-resolution with the cascade, and
ControlNet on the shapes world; writes docs/editing.md.

Inpainting: test images (taken after the first --n-ref, so the FID reference set is disjoint
from them) get one of three mask families in turn (a centre square, the right half, a random
box; `nanodiffusion.core.editing.demo_masks`) and each method fills the hole with the same sampler,
steps and seed. Measured: FID/KID/precision/recall of the whole filled images against the
first --n-ref test images (Inception features, the real-vs-real floor beside them, and the
masked inputs themselves as the baseline a fill should beat); the RMSE against the hidden
original in the 2-pixel band inside the hole's edge (the seam, where a fill that ignores its
context shows) and in the whole hole; network evaluations and seconds.

img2img: shapes scenes re-drawn towards another scene's caption at strengths 0.1 ... 1: the
judge's adherence to the new caption against the RMSE to the input.

Super-resolution: the `upscale` preset's run takes 500 held-out 64x64 scenes, area-downsampled
to 32x32, back up; PSNR and SSIM against bicubic. The cascade (a 32x32 `text` run, then the
upscaler) draws the first 500 test captions at augmentation levels 0, 0.1, 0.2; its FID is set
beside bench/text_to_image.py's direct 64x64 models (--t2i, same captions, seed and reference),
with the training seconds of each.

ControlNet: a ControlNet for the shapes run (RUN/controlnet, trained for 10 minutes if missing)
draws 200 fresh scenes' captions with each scene's Sobel edge map as the control, at scales 0
(no control), 0.5, 1, 1.5: edge F1 between control and the image's edges, and adherence.

    python bench/editing.py --fashion-run RUN --shapes-run RUN   # fashion-mnist and text preset runs
    python bench/editing.py            # trains both presets first (about 10 + 20 min on 2 CPU cores)
    python bench/editing.py --reuse    # continue an interrupted run (runs/bench-editing/)
    python bench/editing.py --quick    # a smoke test of every code path (writes no doc)
    python bench/editing.py --reuse --only superres,controlnet --upscale-run runs/upscale ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from _common import machine, write_page
from nanodiffusion.core.editing import demo_masks
from nanodiffusion.data.datasets import load_data
from nanodiffusion.data.shapes import adherence, prompt_set, render_scene
from nanodiffusion.inference.pipelines import conditioning, draw, load_parts
from nanodiffusion.io.checkpoint import latest_checkpoint
from nanodiffusion.io.viz import plot_rows, to_uint8
from nanodiffusion.metrics.fid import evaluate_images
from nanodiffusion.metrics.image import fill_errors

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "editing.md"
OUT_DEFAULT = Path("runs/bench-editing")
DATASETS = {"fashion-mnist": "fashion-mnist", "shapes": "text"}  # dataset -> the preset trained for it
METHODS = ("replace", "repaint")
STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass
class Settings:
    out: Path
    runs: dict
    inpaint_runs: dict
    n: int
    n_ref: int
    sampler: str
    steps: int
    jump: int
    resample: int
    guidance: float
    n_img2img: int
    seed: int
    device: str
    quick: bool
    upscale_run: str | None = None
    cascade_base: str | None = None
    sr_seconds: tuple = ()
    t2i: Path = Path("runs/bench-t2i")
    n_sr: int = 500
    n_fid_cascade: int = 500
    augs: tuple = (0.0, 0.1, 0.2)
    controlnet: str | None = None
    n_control: int = 200
    control_scales: tuple = (0.0, 0.5, 1.0, 1.5)
    parts: tuple = ("inpainting", "img2img", "superres", "controlnet")


# --- the runs ------------------------------------------------------------------------------------
def ensure_run(s: Settings, dataset: str) -> Path:
    """The given run, or the dataset's preset trained into the output folder."""
    if s.runs.get(dataset):
        return Path(s.runs[dataset])
    run = s.out / f"{DATASETS[dataset]}-run"
    if latest_checkpoint(run) is None:
        extra = ["--steps", "4", "--set", "data.autoencoder_steps=4"] if s.quick else []
        print(f"training the {DATASETS[dataset]} preset into {run}", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nanodiffusion.cli",
                "train",
                "--preset",
                DATASETS[dataset],
                "--out",
                str(run),
                "--quiet",
                *extra,
            ],
            check=True,
        )
    return run


class Model:
    """A run with what editing needs: its config, denoiser, autoencoder and text encoder."""

    def __init__(self, run: Path, device: str):
        self.cfg, self.denoiser, self.autoencoder, self.encoder = load_parts(run, device=device)

    def condition(self, captions: list[str] | None, n: int, guidance: float):
        """Text runs: the captions, guided; class runs: the "no class" input; else nothing."""
        text = self.encoder is not None
        return conditioning(
            self.cfg, self.encoder, n, captions if text else None, guidance=guidance if text else None
        )

    def draw(self, n: int, captions, guidance: float, s: Settings, **editing):
        """(images, network evaluations per image, seconds) of one editing call."""
        cond, w, uncond = self.condition(captions, n, guidance)
        stats: dict = {}
        start = time.perf_counter()
        images = draw(
            self.cfg,
            self.denoiser,
            n,
            autoencoder=self.autoencoder,
            cond=cond,
            guidance=w,
            uncond=uncond,
            sampler=s.sampler,
            steps=s.steps,
            seed=s.seed,
            batch_size=n,
            stats=stats,
            **editing,
        )
        return images, stats["nfe"], time.perf_counter() - start


# --- inpainting ----------------------------------------------------------------------------------
def inpainting(s: Settings, dataset: str, results: dict) -> None:
    done = results.setdefault("inpainting", {}).setdefault(dataset, {})
    model = Model(ensure_run(s, dataset), s.device)
    cfg = model.cfg
    test = load_data(cfg.data.name, "test", cfg.data.image_size, cfg.data.channels)
    pick = slice(s.n_ref, s.n_ref + s.n)
    images = test.images[pick]
    captions = test.captions[pick] if test.captions else None
    known = demo_masks(len(images), images.shape[-1], s.seed)
    done["run"] = str(ensure_run(s, dataset))
    torch.save([images[:6], (images * known)[:6]], s.out / f"{dataset}-inputs.pt")
    masked_run = s.inpaint_runs.get(dataset)
    for method in ("masked", *METHODS, *(["model"] if masked_run else [])):
        if method in done:
            continue
        if method == "masked":  # the score of filling nothing
            filled, nfe, seconds = images * known, 0, 0.0
        else:
            print(f"  {dataset}: {method} on {len(images)} images", flush=True)
            if method == "model":  # a run trained with --task inpaint
                model = Model(Path(masked_run), s.device)
                done["model_run"] = masked_run
            filled, nfe, seconds = model.draw(
                len(images),
                captions,
                s.guidance,
                s,
                init_image=images,
                known=known,
                inpaint=method,
                jump=s.jump,
                resample=s.resample,
            )
            torch.save(filled[:6], s.out / f"{dataset}-{method}.pt")
        seam, hole = fill_errors(filled, images, known)
        r = {"nfe": nfe, "seconds": seconds, "seam_rmse": seam, "hole_rmse": hole}
        r["fid"] = (
            _no_fid(len(filled))
            if s.quick
            else evaluate_images(filled, cfg.data.name, "inception", n_ref=s.n_ref, device=s.device)
        )
        done[method] = r
        print(
            f"  {dataset} {method}: seam {r['seam_rmse']:.4f}, hole {r['hole_rmse']:.4f}, "
            f"FID {r['fid']['fid']:.2f}",
            flush=True,
        )
        _save(s, results)


def _no_fid(n: int) -> dict:
    nan = float("nan")
    return {
        "fid": nan,
        "kid_mean": nan,
        "kid_std": nan,
        "precision": nan,
        "recall": nan,
        "floor_fid": nan,
        "n": n,
        "n_ref": 0,
        "features": "none (--quick)",
        "resize": "none",
    }


# --- img2img -------------------------------------------------------------------------------------
def img2img(s: Settings, results: dict) -> None:
    """Shapes scenes re-drawn towards the next scene's caption: adherence against closeness."""
    done = results.setdefault("img2img", {})
    model = Model(ensure_run(s, "shapes"), s.device)
    size = model.cfg.data.image_size
    scenes = prompt_set(s.n_img2img + 1, seed=3 * 10**7)
    inputs = torch.stack(
        [torch.from_numpy(render_scene(3 * 10**7 + i, size).image) for i in range(len(scenes))]
    )
    inputs = inputs.permute(0, 3, 1, 2).float() / 127.5 - 1
    init, target = inputs[:-1], scenes[1:]  # scene i's picture, scene i + 1's caption
    captions, specs = [t.caption for t in target], [t.spec for t in target]
    strip = []
    for strength in STRENGTHS:
        key = f"{strength:g}"
        images, calls, seconds = model.draw(
            len(init), captions, s.guidance, s, init_image=init, strength=strength
        )
        strip.append(images[:6])
        if key not in done:
            a = adherence(to_uint8(images), specs)
            done[key] = {
                "adherence": a["overall"]["all"],
                "rmse_to_input": ((images - init) / 2).square().mean().sqrt().item(),
                "nfe": calls,
                "seconds": seconds,
            }
            print(
                f"  img2img strength {key}: adherence {done[key]['adherence']:.3f}, "
                f"RMSE to the input {done[key]['rmse_to_input']:.4f}",
                flush=True,
            )
    torch.save({"init": init[:6], "strip": strip, "captions": captions[:6]}, s.out / "img2img-strip.pt")
    _save(s, results)


# --- super-resolution and the cascade ------------------------------------------------------------
def ensure_sr_runs(s: Settings) -> tuple[Path, Path, dict]:
    """(upscaling run, cascade base run, their training seconds): the given ones, or trained here
    (the `upscale` preset, and the `text` preset shortened to about the same 10 minutes)."""
    seconds = dict(s.sr_seconds)
    runs = {"upscale": s.upscale_run, "base": s.cascade_base}
    recipes = {
        "upscale": ["--preset", "upscale"],
        "base": ["--preset", "text", "--steps", "1500", "--set", "data.autoencoder_steps=800"],
    }
    for key in runs:
        if runs[key]:
            continue
        runs[key] = s.out / f"{key}-run"
        if latest_checkpoint(runs[key]) is None:
            quick = ["--steps", "4", "--set", "data.autoencoder_steps=4"] if s.quick else []
            if s.quick and key == "upscale":
                quick = quick[:2]
            print(f"training the cascade's {key} run into {runs[key]}", flush=True)
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nanodiffusion.cli",
                    "train",
                    *recipes[key],
                    "--out",
                    str(runs[key]),
                    "--quiet",
                    *quick,
                ],
                check=True,
            )
            seconds[key] = time.perf_counter() - start
            (runs[key] / "train_seconds.txt").write_text(f"{seconds[key]:.1f}\n")
        elif (runs[key] / "train_seconds.txt").is_file():
            seconds[key] = float((runs[key] / "train_seconds.txt").read_text())
    return Path(runs["upscale"]), Path(runs["base"]), seconds


def superres(s: Settings, results: dict) -> None:
    """PSNR/SSIM against bicubic on held-out scenes; FID of the cascade against direct 64x64 models."""
    from nanodiffusion.data.shapes import evaluate_prompts
    from nanodiffusion.inference.pipelines import Cascade, load_run
    from nanodiffusion.metrics.image import psnr, ssim
    from nanodiffusion.tasks.upscale import downsample, low_size, project, upsample

    done = results.setdefault("superres", {})
    up_run, base_run, seconds = ensure_sr_runs(s)
    done.update(upscale_run=str(up_run), base_run=str(base_run), train_seconds=seconds)
    cfg, sr = load_run(up_run, device=s.device)
    size, low = cfg.model.image_size, low_size(cfg)
    truth = load_data("shapes", "test", size).images[: s.n_sr]
    small = downsample(truth, low)
    bicubic = upsample(small, size)
    table = done.setdefault("psnr", {})
    if "bicubic" not in table:
        for key, x in [("bicubic", bicubic), ("bicubic, projected", project(bicubic, small).clamp(-1, 1))]:
            table[key] = {"psnr": psnr(x, truth).mean().item(), "ssim": ssim(x, truth).mean().item()}
    shown = {"bicubic": bicubic[:8]}
    for aug, consistent in [(0.0, False), (0.0, True), (0.1, True)]:
        key = f"diffusion, augmentation {aug:g}" + ("" if consistent else ", not projected")
        start = time.perf_counter()
        images = draw(
            cfg,
            sr,
            len(small),
            low_res=small,
            aug=aug,
            sampler=s.sampler,
            steps=20,
            seed=s.seed,
            batch_size=100,
            consistent=consistent,
        )
        if key not in table:
            table[key] = {
                "psnr": psnr(images, truth).mean().item(),
                "ssim": ssim(images, truth).mean().item(),
                "seconds": time.perf_counter() - start,
            }
        shown[key] = images[:8]
        print(
            f"  upscaling {key}: PSNR {table[key]['psnr']:.2f} dB, SSIM {table[key]['ssim']:.4f} "
            f"(bicubic {table['bicubic']['psnr']:.2f} dB, {table['bicubic']['ssim']:.4f})",
            flush=True,
        )
    torch.save({**shown, "original": truth[:8], "low": small[:8]}, s.out / "sr-strip.pt")
    _save(s, results)

    pipe = Cascade.from_pretrained(base_run, up_run, device=s.device)
    test = load_data("shapes", "test", size)
    captions = test.captions[: s.n_fid_cascade]
    cascade = done.setdefault("cascade", {})
    for aug in s.augs:
        key = f"{aug:g}"
        if key in cascade:
            continue
        start = time.perf_counter()
        high, base = _cascade(pipe, captions, aug, s)
        r = {"seconds": time.perf_counter() - start}
        r["fid"] = (
            _no_fid(len(high))
            if s.quick
            else evaluate_images(high, "shapes", "inception", n_ref=len(high), device=s.device)
        )
        if "base_bicubic" not in cascade:  # the first stage alone, upsampled: what the second adds
            cascade["base_bicubic"] = {
                "fid": _no_fid(len(base))
                if s.quick
                else evaluate_images(
                    upsample(base, size), "shapes", "inception", n_ref=len(base), device=s.device
                )
            }
            torch.save(
                {"base": base[:8], "cascade": high[:8], "captions": captions[:8]}, s.out / "cascade.pt"
            )
        cascade[key] = r
        print(f"  cascade, augmentation {key}: FID {r['fid']['fid']:.2f}", flush=True)
        _save(s, results)
    if "adherence" not in done and not s.quick:
        best = min(s.augs, key=lambda a: cascade[f"{a:g}"]["fid"]["fid"])
        done["adherence_aug"] = best

        def generate(prompts):
            return to_uint8(_cascade(pipe, prompts, best, s)[0])

        done["adherence"] = evaluate_prompts(generate, 200, 100, size=size)
        _save(s, results)


def _cascade(pipe, captions: list[str], aug: float, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(64x64 images, the base's 32x32 ones) for captions, one image each, guided like the direct models."""
    parts = [
        pipe(
            len(part),
            prompt=part,
            guidance=s.guidance,
            steps=20,
            sr_steps=20,
            sampler=s.sampler,
            aug=aug,
            seed=s.seed + i,
            return_low=True,
        )
        for i in range(0, len(captions), 100)
        for part in [captions[i : i + 100]]
    ]
    return torch.cat([high for high, _ in parts]), torch.cat([low for _, low in parts])


# --- ControlNet ----------------------------------------------------------------------------------
def controlnet(s: Settings, results: dict) -> None:
    """Edge F1 between each control and the generated image's edges, with and without the control."""
    from nanodiffusion.inference.pipelines import TextToImage
    from nanodiffusion.metrics.image import edge_f1, sobel_edges
    from nanodiffusion.nets.controlnet import load_controlnet
    from nanodiffusion.training.controlnet import train_controlnet

    done = results.setdefault("controlnet", {})
    run = ensure_run(s, "shapes")
    folder = Path(s.controlnet) if s.controlnet else run / "controlnet"
    if not (folder / "controlnet.json").is_file():
        print(f"training a ControlNet for {run} into {folder}", flush=True)
        train_controlnet(
            run, folder, steps=4 if s.quick else 100000, budget_s=None if s.quick else 600, progress=False
        )
    pipe = TextToImage.from_pretrained(run, device=s.device, controlnet=folder)
    done.update(run=str(run), controlnet=str(folder), training=load_controlnet(folder, pipe.denoiser.net)[1])
    size = pipe.cfg.data.image_size
    scenes = prompt_set(s.n_control, seed=4 * 10**7)
    truth = torch.stack(
        [torch.from_numpy(render_scene(4 * 10**7 + i, size).image) for i in range(len(scenes))]
    )
    truth = truth.permute(0, 3, 1, 2).float() / 127.5 - 1
    control, captions, specs = sobel_edges(truth), [t.caption for t in scenes], [t.spec for t in scenes]
    rows = {}
    for scale in s.control_scales:
        key = f"{scale:g}"
        images = pipe(
            captions,
            steps=20,
            guidance=s.guidance,
            sampler=s.sampler,
            seed=s.seed,
            output="tensor",
            control=control if scale else None,
            control_scale=scale,
        )
        rows[key] = images[:8]
        if key not in done.setdefault("scales", {}):
            done["scales"][key] = {
                "f1": edge_f1(sobel_edges(images), control).mean().item(),
                "adherence": adherence(to_uint8(images), specs)["overall"]["all"],
            }
            print(
                f"  ControlNet scale {key}: edge F1 {done['scales'][key]['f1']:.3f}, adherence "
                f"{done['scales'][key]['adherence']:.3f}",
                flush=True,
            )
    reference = {"chance (another scene's edges)": edge_f1(sobel_edges(truth.roll(1, 0)), control)}
    if pipe.autoencoder is not None:  # the best a latent model can draw: the autoencoder's reconstruction
        recon = pipe.autoencoder.decode_images(pipe.autoencoder.encode_images(truth))
        reference["autoencoder reconstruction (ceiling)"] = edge_f1(sobel_edges(recon), control)
    done["reference"] = {k: v.mean().item() for k, v in reference.items()}
    torch.save(
        {"control": control[:8], "rows": rows, "truth": truth[:8], "captions": captions[:8]},
        s.out / "control-strip.pt",
    )
    _save(s, results)


# --- the report ----------------------------------------------------------------------------------
def _save(s: Settings, results: dict) -> None:
    (s.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def plot_img2img(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(results["img2img"], key=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(
        [float(k) for k in keys],
        [results["img2img"][k]["adherence"] for k in keys],
        "o-",
        label="adherence to the new caption",
    )
    ax.plot(
        [float(k) for k in keys],
        [results["img2img"][k]["rmse_to_input"] for k in keys],
        "s--",
        label="RMSE to the input image",
    )
    ax.set_xlabel("strength")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("img2img (SDEdit) on the shapes world")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report(s: Settings, results: dict, figures: Path) -> str:
    lines = [
        "# Editing and control: inpainting, img2img, super-resolution, ControlNet",
        "",
        "Written by `python bench/editing.py` (see its docstring); numbers from one run on",
        f"{results['machine']}.",
        f"Every method uses the same sampler ({s.sampler}, {s.steps} steps) and seed; RePaint walks the",
        f"sequence in jumps of {s.jump} steps and samples each jump {s.resample} times. Text runs are guided",
        f"(w = {s.guidance:g}) towards each test scene's own caption; class runs draw unconditionally.",
        "",
        "## Inpainting",
        "",
        f"{s.n} test images per dataset (after the first {s.n_ref}), a third each with a centre square, the",
        "right half, or a random box hidden. FID/KID/precision/recall compare the whole filled images",
        f'with the first {s.n_ref} test images (Inception features); "masked" is the input with its hole',
        "grey, the score of filling nothing. Seam RMSE is measured against the hidden original in the",
        "2-pixel band inside the hole's edge, hole RMSE over the whole hole (pixels on a 0-1 scale).",
        "",
    ]
    for dataset in DATASETS:
        r = results.get("inpainting", {}).get(dataset)
        if not r:
            continue
        f0 = r["replace"]["fid"]
        lines += [
            f"### {dataset} (run `{r['run']}`)",
            "",
            "| method | NFE per image | seconds | FID | KID x 1000 | precision / recall | seam RMSE "
            "| hole RMSE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        methods = [m for m in ("masked", *METHODS, "model") if m in r]
        for method in methods:
            m = r[method]
            f = m["fid"]
            lines.append(
                f"| {method} | {m['nfe']} | {m['seconds']:.0f} | {f['fid']:.2f} | "
                f"{1000 * f['kid_mean']:.1f} ± {1000 * f['kid_std']:.1f} | "
                f"{f['precision']:.2f} / {f['recall']:.2f} | {m['seam_rmse']:.4f} | "
                f"{m['hole_rmse']:.4f} |"
            )
        ratio = r["repaint"]["seam_rmse"] / r["replace"]["seam_rmse"]
        lines += [
            "",
            f"Real-vs-real floor at N = {f0['n']}: FID {f0['floor_fid']:.2f} ({f0['features']}). "
            f"RePaint's seam error is {ratio:.2f}x the simple method's (aim: at most 0.5x: "
            f"**{'reached' if ratio <= 0.5 else 'missed'}**).",
            "",
        ]
        rows = [
            *torch.load(s.out / f"{dataset}-inputs.pt"),
            *[torch.load(s.out / f"{dataset}-{m}.pt") for m in methods[1:]],
        ]
        plot_rows(rows, ["original", *methods], figures / f"inpaint_{dataset}.png")
        if "model" in r:
            lines += [
                f"The model row is a separate run trained with `--task inpaint` (`{r['model_run']}`): "
                "the same preset and number of steps, shown the masked image and the mask.",
                "",
            ]
        lines += [f"![{dataset} inpainting](images/inpaint_{dataset}.png)", ""]
    if results.get("img2img"):
        lines += [
            "## img2img (SDEdit)",
            "",
            f"{s.n_img2img} shapes scenes, each re-drawn towards the next scene's caption. Strength s",
            "keeps the last round(s x steps) steps, started from the input noised to that level; s = 1",
            "is plain text-to-image from the same noise. Adherence is the judge's (the checks of",
            "`nanodiff eval-prompts`).",
            "",
            "| strength | adherence to the new caption | RMSE to the input | NFE per image |",
            "| --- | --- | --- | --- |",
        ]
        for k in sorted(results["img2img"], key=float):
            r = results["img2img"][k]
            lines.append(f"| {k} | {100 * r['adherence']:.0f}% | {r['rmse_to_input']:.4f} | {r['nfe']} |")
        plot_img2img(results, figures / "img2img_strength.png")
        strip = torch.load(s.out / "img2img-strip.pt")
        plot_rows(
            [strip["init"], *strip["strip"]],
            ["input", *[f"s = {k:g}" for k in STRENGTHS]],
            figures / "img2img_strip.png",
        )
        lines += [
            "",
            "![adherence and closeness against strength](images/img2img_strength.png)",
            "",
            "Inputs (top) and their re-drawings at each strength; the captions asked for:",
            "",
            *[f"{i + 1}. {c}" for i, c in enumerate(strip["captions"])],
            "",
            "![img2img strip](images/img2img_strip.png)",
            "",
        ]
    if results.get("superres"):
        lines += report_superres(s, results, figures)
    if results.get("controlnet"):
        lines += report_controlnet(s, results, figures)
    return "\n".join(lines)


def _nearest(images: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(images, size=(size, size), mode="nearest")


def report_superres(s: Settings, results: dict, figures: Path) -> list[str]:
    r = results["superres"]
    t, sec = r["psnr"], r["train_seconds"]
    strip = torch.load(s.out / "sr-strip.pt")
    size = strip["original"].shape[-1]
    low = strip["low"].shape[-1]
    lines = [
        "## Super-resolution (SR3) and the cascade",
        "",
        f"The upscaling run `{r['upscale_run']}` (`nanodiff train --preset upscale`: a convolutional UNet",
        "of widths 16, 32, 64 that sees the bicubic-upsampled low-resolution scene beside its noisy input,",
        f"trained on 32x32 crops of the {size}x{size} scenes with noise-conditioning augmentation up to 0.3,",
        "diffusing the residual over bicubic scaled to unit sigma_data (SRDiff's target);",
        f"{sec.get('upscale', float('nan')):.0f} s of training) takes held-out test scenes, area-downsampled "
        f"to {low}x{low},",
        f"back to {size}x{size} ({s.sampler}, 20 steps, one sample each). "
        f"{s.n_sr} scenes; PSNR and SSIM on a 0-1 scale",
        "against the originals. The results are projected onto the images whose area-downsampling is",
        "the input (`superres.project`; a projection onto a set that holds the truth, so it never adds",
        "error); the unprojected and the projected bicubic rows show what that step is worth.",
        "",
        "| upscaling | PSNR (dB) | SSIM |",
        "| --- | --- | --- |",
    ]
    for k, v in t.items():
        lines.append(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} |")
    gain = t["diffusion, augmentation 0"]["psnr"] - t["bicubic"]["psnr"]
    raw = t["diffusion, augmentation 0, not projected"]["psnr"] - t["bicubic"]["psnr"]
    lines += [
        "",
        f"Gain over bicubic: {gain:+.2f} dB, {raw:+.2f} dB without the projection (aim: at least +2 dB: "
        f"**{'reached' if gain >= 2 else 'missed'}**).",
        "",
    ]
    plot_rows(
        [
            _nearest(strip["low"], size),
            strip["bicubic"],
            strip["diffusion, augmentation 0"],
            strip["original"],
        ],
        [f"{low}x{low}", "bicubic", "diffusion", "original"],
        figures / "upscale.png",
    )
    lines += ["![upscaling](images/upscale.png)", ""]
    c = r.get("cascade", {})
    if c:
        t2i = json.loads((s.t2i / "results.json").read_text()) if (s.t2i / "results.json").is_file() else None
        total = sec.get("upscale", float("nan")) + sec.get("base", float("nan"))
        lines += [
            "### The cascade against direct 64x64 models",
            "",
            f"Base: `{r['base_run']}`, the `text` preset (8x8x4 latents of 32x32 scenes) shortened to "
            f"{sec.get('base', float('nan')):.0f} s",
            f"of training, autoencoder included; then the "
            f"upscaler above: {total:.0f} s for the pair. Both stages {s.sampler}, 20 steps;",
            f"the base guided at w = {s.guidance:g} towards each of the first {s.n_fid_cascade} test "
            "captions, as `bench/text_to_image.py`",
            "measures its direct 64x64 models (same captions, "
            "seed, N and Inception reference), whose rows come from its results.",
            "",
            "| model | training s | FID | KID x 1000 | precision / recall |",
            "| --- | --- | --- | --- | --- |",
        ]

        def row(name, secs, f):
            lines.append(
                f"| {name} | {secs} | {f['fid']:.2f} | {1000 * f['kid_mean']:.1f} | "
                f"{f['precision']:.2f} / {f['recall']:.2f} |"
            )

        for key in sorted(k for k in c if k != "base_bicubic"):
            row(f"cascade, augmentation {key}", f"{total:.0f}", c[key]["fid"])
        row("base alone, bicubic to 64", f"{sec.get('base', float('nan')):.0f}", c["base_bicubic"]["fid"])
        if t2i:
            for side in ("pixel", "latent"):
                row(
                    f"direct 64x64, {side}",
                    f"{t2i['trainings'][side]['seconds']:.0f}",
                    t2i["measured"][side]["fid"],
                )
        f0 = next(v["fid"] for k, v in c.items() if k != "base_bicubic")
        best = min(float(v["fid"]["fid"]) for k, v in c.items() if k != "base_bicubic")
        lines += ["", f"Real-vs-real floor at N = {f0['n']}: FID {f0['floor_fid']:.2f}.", ""]
        if t2i:
            direct = {side: t2i["measured"][side]["fid"]["fid"] for side in ("pixel", "latent")}
            spent = total / max(t2i["trainings"][side]["seconds"] for side in ("pixel", "latent"))
            lines += [
                f"The pair trained for {spent:.2f}x the direct models' budget. The cascade's best FID, "
                f"{best:.2f}, is {'below' if best < direct['pixel'] else 'above'} the direct pixel model's "
                f"({direct['pixel']:.2f}) and {'below' if best < direct['latent'] else 'above'} the direct "
                f"latent model's ({direct['latent']:.2f}). The upscaler is faithful to its input (the table",
                "above): what the cascade's FID measures is mostly its 32x32 base, whose samples are blurry",
                "after 10 minutes, and the base alone upsampled by bicubic is only a few FID points behind.",
                "Noise-conditioning augmentation changes the FID by less than one point here: the base's",
                "errors are in the shapes and colours, not in fine detail that the upscaler would copy.",
                "",
            ]
        if r.get("adherence"):
            a = r["adherence"]["prompts"]["generated"]
            h = r["adherence"]["held-out"]["generated"]["overall"]["all"]
            lines += [
                f"Prompt adherence of the cascade (augmentation {r['adherence_aug']:g}, the judge of "
                f"`nanodiff eval-prompts` at {size}x{size}, 200 + 100 prompts): single objects "
                f"{100 * a['single']['all']:.0f}%, relations {100 * a['relation']['all']:.0f}%, counts "
                f"{100 * a['count']['all']:.0f}%, all {100 * a['overall']['all']:.0f}%, held-out "
                f"{100 * h:.0f}%."
            ]
            if t2i:
                lines += [
                    "The direct models: "
                    + "; ".join(
                        f"{side} all {100 * _overall(t2i['measured'][side]['adherence']):.0f}%"
                        for side in ("pixel", "latent")
                    )
                    + "."
                ]
            lines.append("")
        cas = torch.load(s.out / "cascade.pt")
        plot_rows(
            [_nearest(cas["base"], size), cas["cascade"]],
            ["base 32x32", "cascade 64x64"],
            figures / "cascade.png",
        )
        lines += [
            "Base samples (top, shown enlarged) and their upscalings; the captions:",
            "",
            *[f"{i + 1}. {cap}" for i, cap in enumerate(cas["captions"])],
            "",
            "![cascade](images/cascade.png)",
            "",
        ]
    return lines


def _overall(adherence: dict) -> float:
    return adherence["prompts"]["generated"]["overall"]["all"]


def report_controlnet(s: Settings, results: dict, figures: Path) -> list[str]:
    r = results["controlnet"]
    tr = r["training"]
    lines = [
        "## ControlNet",
        "",
        f"A ControlNet for `{r['run']}` (the `text` preset), trained by `nanodiff train-controlnet` "
        f"for {tr['train_s']:.0f} s",
        f"({tr['steps']} steps of batch {tr['batch_size']}, the prompt "
        f"dropped half the time; loss {tr['loss_first_50']:.3f} -> {tr['loss_last_50']:.3f}) on the run's",
        "own training scenes and their Sobel edge maps. Measured on "
        f"{s.n_control} fresh scenes: each scene's edge map is the control and its",
        "caption the prompt "
        f"(w = {s.guidance:g}, {s.sampler}, 20 steps); edge F1 compares the generated image's Sobel edges "
        "with the",
        "control's, with a pixel of tolerance; adherence is the judge's verdict on the caption.",
        "",
        "| control scale | edge F1 | adherence to the caption |",
        "| --- | --- | --- |",
    ]
    for k in sorted(r["scales"], key=float):
        v = r["scales"][k]
        lines.append(
            f"| {k}{' (no control)' if float(k) == 0 else ''} | {v['f1']:.3f} | {100 * v['adherence']:.0f}% |"
        )
    lines += ["", "References: " + "; ".join(f"{k}: {v:.3f}" for k, v in r["reference"].items()) + ".", ""]
    with_control, without = r["scales"].get("1", {}).get("f1", float("nan")), r["scales"]["0"]["f1"]
    ok = with_control >= 0.8
    lines += [
        f"Aim: edge F1 at least 0.8 with the control (**{'reached' if ok else 'missed'}**, "
        f"{with_control:.3f}) and near chance without it ({without:.3f} against chance "
        f"{next(iter(r['reference'].values())):.3f}).",
        "",
        "Without the control the F1 is above chance because the prompt is the scene's own caption: it",
        "names the shapes, their number and often where they are, and a model that follows it draws",
        "outlines that overlap the scene's. The control then pins down what the caption leaves open",
        "(exact position, size, the background's extent). Adherence to the caption stays within a few",
        "points with and without the control: steering the layout does not cost the prompt.",
        "",
    ]
    strip = torch.load(s.out / "control-strip.pt")
    keys = sorted(strip["rows"], key=float)
    plot_rows(
        [strip["control"].expand(-1, 3, -1, -1) * 2 - 1, *[strip["rows"][k] for k in keys], strip["truth"]],
        ["control", *[f"scale {k}" for k in keys], "scene"],
        figures / "controlnet.png",
    )
    lines += [
        "Controls (top), images at each scale, and the scenes the controls came from; the captions:",
        "",
        *[f"{i + 1}. {c}" for i, c in enumerate(strip["captions"])],
        "",
        "![ControlNet](images/controlnet.png)",
        "",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sets, for smoke tests (writes no doc)")
    p.add_argument("--reuse", action="store_true", help="keep what the output folder already holds")
    p.add_argument("--fashion-run", help="a trained fashion-mnist run (default: train the preset)")
    p.add_argument("--shapes-run", help="a trained text-preset run (default: train the preset)")
    p.add_argument(
        "--fashion-inpaint-run",
        help="a fashion-mnist run trained with --task inpaint: adds the mask-conditioned model's row",
    )
    p.add_argument("--shapes-inpaint-run", help="a text-preset run trained with --task inpaint")
    p.add_argument("--upscale-run", help="a trained upscaling run (default: train the upscale preset)")
    p.add_argument(
        "--cascade-base",
        help="a 32x32 text run as the cascade's base (default: train the text preset for 1500 steps)",
    )
    p.add_argument("--upscale-seconds", type=float, help="the given upscaling run's training seconds")
    p.add_argument("--base-seconds", type=float, help="the given cascade base's training seconds")
    p.add_argument(
        "--t2i",
        type=Path,
        default=Path("runs/bench-t2i"),
        help="bench/text_to_image.py's output folder: the direct 64x64 models the cascade is compared with",
    )
    p.add_argument(
        "--controlnet",
        help="a ControlNet folder for --shapes-run (default RUN/controlnet, "
        "trained for 10 minutes if missing)",
    )
    p.add_argument(
        "--only",
        help="comma-separated parts to run: inpainting, img2img, superres, controlnet "
        "(default all; with --reuse the others keep their results)",
    )
    p.add_argument("--n", type=int, help="inpainted images per dataset (default 500)")
    p.add_argument("--n-ref", type=int, default=500, help="real test images for FID (default 500)")
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--jump", type=int, default=5)
    p.add_argument("--resample", type=int, default=5)
    p.add_argument("--out", type=Path, help=f"Markdown file (default {DOC.relative_to(ROOT)})")
    p.add_argument("--out-dir", type=Path, help=f"results (default {OUT_DEFAULT})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    q = a.quick
    s = Settings(
        out=a.out_dir or Path(f"{OUT_DEFAULT}-quick" if q else OUT_DEFAULT),
        runs={"fashion-mnist": a.fashion_run, "shapes": a.shapes_run},
        inpaint_runs={"fashion-mnist": a.fashion_inpaint_run, "shapes": a.shapes_inpaint_run},
        n=a.n or (8 if q else 500),
        n_ref=8 if q else a.n_ref,
        sampler=a.sampler,
        steps=10 if q else a.steps,
        jump=2 if q else a.jump,
        resample=2 if q else a.resample,
        guidance=4.0,
        n_img2img=6 if q else 100,
        seed=a.seed,
        device=a.device,
        quick=q,
        upscale_run=a.upscale_run,
        cascade_base=a.cascade_base,
        sr_seconds=tuple(
            (k, v) for k, v in [("upscale", a.upscale_seconds), ("base", a.base_seconds)] if v is not None
        ),
        t2i=a.t2i,
        n_sr=8 if q else 500,
        n_fid_cascade=8 if q else 500,
        augs=(0.0, 0.1) if q else (0.0, 0.1, 0.2),
        controlnet=a.controlnet,
        n_control=8 if q else 200,
        parts=tuple(a.only.split(",")) if a.only else Settings.parts,
    )
    s.out.mkdir(parents=True, exist_ok=True)
    path = s.out / "results.json"
    results = json.loads(path.read_text()) if a.reuse and path.is_file() else {}
    results["machine"] = machine()
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in s.__dict__.items()}
    if "inpainting" in s.parts:
        for dataset in DATASETS:
            inpainting(s, dataset, results)
    if "img2img" in s.parts:
        img2img(s, results)
    if "superres" in s.parts:
        superres(s, results)
    if "controlnet" in s.parts:
        controlnet(s, results)
    _save(s, results)
    write_page(a.out or (None if q else DOC), s.out, lambda figures: report(s, results, figures))


if __name__ == "__main__":
    main()

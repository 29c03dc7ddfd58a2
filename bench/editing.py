"""Editing, measured: training-free inpainting (replace, RePaint) on Fashion-MNIST and the shapes
world, and img2img (SDEdit) on the shapes world; writes docs/editing.md.

Inpainting: test images (taken after the first --n-ref, so the FID reference set is disjoint
from them) get one of three mask families in turn (a centre square, the right half, a random
box; `nanodiffusion.editing.demo_masks`) and each method fills the hole with the same sampler,
steps and seed. Measured: FID/KID/precision/recall of the whole filled images against the
first --n-ref test images (Inception features, the real-vs-real floor beside them, and the
masked inputs themselves as the baseline a fill should beat); the RMSE against the hidden
original in the 2-pixel band inside the hole's edge (the seam, where a fill that ignores its
context shows) and in the whole hole; network evaluations and seconds.

img2img: shapes scenes re-drawn towards another scene's caption at strengths 0.1 ... 1: the
judge's adherence to the new caption against the RMSE to the input.

    python bench/editing.py --fashion-run RUN --shapes-run RUN   # fashion-mnist and text preset runs
    python bench/editing.py            # trains both presets first (about 10 + 20 min on 2 CPU cores)
    python bench/editing.py --reuse    # continue an interrupted run (runs/bench-editing/)
    python bench/editing.py --quick    # a smoke test of every code path (writes no doc)
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
from nanodiffusion.data import load_data
from nanodiffusion.editing import demo_masks, fill_errors
from nanodiffusion.evaluate import evaluate_images
from nanodiffusion.pipelines import draw, load_parts
from nanodiffusion.shapes import adherence, prompt_set, render_scene
from nanodiffusion.viz import plot_rows, to_uint8

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


# --- the runs ------------------------------------------------------------------------------------
def ensure_run(s: Settings, dataset: str) -> Path:
    """The given run, or the dataset's preset trained into the output folder."""
    if s.runs.get(dataset):
        return Path(s.runs[dataset])
    run = s.out / f"{DATASETS[dataset]}-run"
    if not (run / "ema.safetensors").is_file():
        extra = ["--steps", "4", "--set", "data.autoencoder_steps=4"] if s.quick else []
        print(f"training the {DATASETS[dataset]} preset into {run}", flush=True)
        subprocess.run([sys.executable, "-m", "nanodiffusion.cli", "train", "--preset", DATASETS[dataset],
                        "--out", str(run), "--quiet", *extra], check=True)
    return run


class Model:
    """A run with what editing needs: its config, denoiser, autoencoder and text encoder."""

    def __init__(self, run: Path, device: str):
        self.cfg, self.denoiser, self.autoencoder, self.encoder = load_parts(run, device=device)

    def condition(self, captions: list[str] | None, n: int, guidance: float):
        """Text runs: the captions, guided; class runs: the "no class" input; else nothing."""
        if self.encoder is not None:
            return self.encoder(captions), guidance, self.encoder([""])[0]
        k = self.cfg.model.num_classes
        return (torch.full((n,), k) if k else None), 1.0, None

    def draw(self, n: int, captions, guidance: float, s: Settings, **editing):
        """(images, network evaluations per image, seconds) of one editing call."""
        cond, w, uncond = self.condition(captions, n, guidance)
        stats: dict = {}
        start = time.perf_counter()
        images = draw(self.cfg, self.denoiser, n, autoencoder=self.autoencoder, cond=cond, guidance=w,
                      uncond=uncond, sampler=s.sampler, steps=s.steps, seed=s.seed, batch_size=n, stats=stats,
                      **editing)
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
            filled, nfe, seconds = model.draw(len(images), captions, s.guidance, s, init_image=images,
                                              known=known, inpaint=method, jump=s.jump, resample=s.resample)
            torch.save(filled[:6], s.out / f"{dataset}-{method}.pt")
        seam, hole = fill_errors(filled, images, known)
        r = {"nfe": nfe, "seconds": seconds, "seam_rmse": seam, "hole_rmse": hole}
        r["fid"] = (_no_fid(len(filled)) if s.quick else
                    evaluate_images(filled, cfg.data.name, "inception", n_ref=s.n_ref, device=s.device))
        done[method] = r
        print(f"  {dataset} {method}: seam {r['seam_rmse']:.4f}, hole {r['hole_rmse']:.4f}, "
              f"FID {r['fid']['fid']:.2f}", flush=True)
        _save(s, results)


def _no_fid(n: int) -> dict:
    nan = float("nan")
    return {"fid": nan, "kid_mean": nan, "kid_std": nan, "precision": nan, "recall": nan, "floor_fid": nan,
            "n": n, "n_ref": 0, "features": "none (--quick)", "resize": "none"}


# --- img2img -------------------------------------------------------------------------------------
def img2img(s: Settings, results: dict) -> None:
    """Shapes scenes re-drawn towards the next scene's caption: adherence against closeness."""
    done = results.setdefault("img2img", {})
    model = Model(ensure_run(s, "shapes"), s.device)
    size = model.cfg.data.image_size
    scenes = prompt_set(s.n_img2img + 1, seed=3 * 10**7)
    inputs = torch.stack([torch.from_numpy(render_scene(3 * 10**7 + i, size).image)
                          for i in range(len(scenes))])
    inputs = inputs.permute(0, 3, 1, 2).float() / 127.5 - 1
    init, target = inputs[:-1], scenes[1:]  # scene i's picture, scene i + 1's caption
    captions, specs = [t.caption for t in target], [t.spec for t in target]
    strip = []
    for strength in STRENGTHS:
        key = f"{strength:g}"
        images, calls, seconds = model.draw(len(init), captions, s.guidance, s, init_image=init,
                                            strength=strength)
        strip.append(images[:6])
        if key not in done:
            a = adherence(to_uint8(images), specs)
            done[key] = {"adherence": a["overall"]["all"],
                         "rmse_to_input": ((images - init) / 2).square().mean().sqrt().item(),
                         "nfe": calls, "seconds": seconds}
            print(f"  img2img strength {key}: adherence {done[key]['adherence']:.3f}, "
                  f"RMSE to the input {done[key]['rmse_to_input']:.4f}", flush=True)
    torch.save({"init": init[:6], "strip": strip, "captions": captions[:6]}, s.out / "img2img-strip.pt")
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
    ax.plot([float(k) for k in keys], [results["img2img"][k]["adherence"] for k in keys], "o-",
            label="adherence to the new caption")
    ax.plot([float(k) for k in keys], [results["img2img"][k]["rmse_to_input"] for k in keys], "s--",
            label="RMSE to the input image")
    ax.set_xlabel("strength")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("img2img (SDEdit) on the shapes world")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report(s: Settings, results: dict, figures: Path) -> str:
    lines = [
        "# Editing: inpainting and img2img",
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
        f"with the first {s.n_ref} test images (Inception features); \"masked\" is the input with its hole",
        "grey, the score of filling nothing. Seam RMSE is measured against the hidden original in the",
        "2-pixel band inside the hole's edge, hole RMSE over the whole hole (pixels on a 0-1 scale).",
        "",
    ]
    for dataset in DATASETS:
        r = results["inpainting"].get(dataset)
        if not r:
            continue
        f0 = r["replace"]["fid"]
        lines += [f"### {dataset} (run `{r['run']}`)", "",
                  "| method | NFE per image | seconds | FID | KID x 1000 | precision / recall | seam RMSE "
                  "| hole RMSE |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        methods = [m for m in ("masked", *METHODS, "model") if m in r]
        for method in methods:
            m = r[method]
            f = m["fid"]
            lines.append(f"| {method} | {m['nfe']} | {m['seconds']:.0f} | {f['fid']:.2f} | "
                         f"{1000 * f['kid_mean']:.1f} ± {1000 * f['kid_std']:.1f} | "
                         f"{f['precision']:.2f} / {f['recall']:.2f} | {m['seam_rmse']:.4f} | "
                         f"{m['hole_rmse']:.4f} |")
        ratio = r["repaint"]["seam_rmse"] / r["replace"]["seam_rmse"]
        lines += ["", f"Real-vs-real floor at N = {f0['n']}: FID {f0['floor_fid']:.2f} ({f0['features']}). "
                  f"RePaint's seam error is {ratio:.2f}x the simple method's (aim: at most 0.5x: "
                  f"**{'reached' if ratio <= 0.5 else 'missed'}**).", ""]
        rows = [*torch.load(s.out / f"{dataset}-inputs.pt"),
                *[torch.load(s.out / f"{dataset}-{m}.pt") for m in methods[1:]]]
        plot_rows(rows, ["original", *methods], figures / f"inpaint_{dataset}.png")
        if "model" in r:
            lines += [f"The model row is a separate run trained with `--task inpaint` (`{r['model_run']}`): "
                      "the same preset and number of steps, shown the masked image and the mask.", ""]
        lines += [f"![{dataset} inpainting](images/inpaint_{dataset}.png)", ""]
    if results.get("img2img"):
        lines += ["## img2img (SDEdit)", "",
                  f"{s.n_img2img} shapes scenes, each re-drawn towards the next scene's caption. Strength s",
                  "keeps the last round(s x steps) steps, started from the input noised to that level; s = 1",
                  "is plain text-to-image from the same noise. Adherence is the judge's (the checks of",
                  "`nanodiff eval-prompts`).",
                  "", "| strength | adherence to the new caption | RMSE to the input | NFE per image |",
                  "| --- | --- | --- | --- |"]
        for k in sorted(results["img2img"], key=float):
            r = results["img2img"][k]
            lines.append(f"| {k} | {100 * r['adherence']:.0f}% | {r['rmse_to_input']:.4f} | "
                         f"{r['nfe']} |")
        plot_img2img(results, figures / "img2img_strength.png")
        strip = torch.load(s.out / "img2img-strip.pt")
        plot_rows([strip["init"], *strip["strip"]], ["input", *[f"s = {k:g}" for k in STRENGTHS]],
                  figures / "img2img_strip.png")
        lines += ["", "![adherence and closeness against strength](images/img2img_strength.png)", "",
                  "Inputs (top) and their re-drawings at each strength; the captions asked for:", "",
                  *[f"{i + 1}. {c}" for i, c in enumerate(strip["captions"])], "",
                  "![img2img strip](images/img2img_strip.png)", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sets, for smoke tests (writes no doc)")
    p.add_argument("--reuse", action="store_true", help="keep what the output folder already holds")
    p.add_argument("--fashion-run", help="a trained fashion-mnist run (default: train the preset)")
    p.add_argument("--shapes-run", help="a trained text-preset run (default: train the preset)")
    p.add_argument("--fashion-inpaint-run", help="a fashion-mnist run trained with --task inpaint: adds "
                   "the mask-conditioned model's row")
    p.add_argument("--shapes-inpaint-run", help="a text-preset run trained with --task inpaint")
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
    s = Settings(out=a.out_dir or Path(f"{OUT_DEFAULT}-quick" if q else OUT_DEFAULT),
                 runs={"fashion-mnist": a.fashion_run, "shapes": a.shapes_run},
                 inpaint_runs={"fashion-mnist": a.fashion_inpaint_run, "shapes": a.shapes_inpaint_run},
                 n=a.n or (8 if q else 500),
                 n_ref=8 if q else a.n_ref, sampler=a.sampler, steps=10 if q else a.steps,
                 jump=2 if q else a.jump, resample=2 if q else a.resample, guidance=4.0,
                 n_img2img=6 if q else 100, seed=a.seed, device=a.device, quick=q)
    s.out.mkdir(parents=True, exist_ok=True)
    path = s.out / "results.json"
    results = json.loads(path.read_text()) if a.reuse and path.is_file() else {}
    results["machine"] = machine()
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in s.__dict__.items()}
    for dataset in DATASETS:
        inpainting(s, dataset, results)
    img2img(s, results)
    _save(s, results)
    write_page(a.out or (None if q else DOC), s.out, lambda figures: report(s, results, figures))


if __name__ == "__main__":
    main()

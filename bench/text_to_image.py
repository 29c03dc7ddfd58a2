"""Text to image on the shapes world: latent against pixel diffusion at an equal budget, a
guidance sweep, and grids of a fixed prompt list; writes docs/text-to-image.md.

Two models of 64x64 scenes train one after the other for the same wall-clock budget:

- pixel: a UNet in pixel space, widths 16, 16, 32, 64 at 64, 32, 16 and 8 pixels, transformer
  blocks (self-attention, cross-attention to MiniLM's tokens, feed-forward) at 16 and 8;
- latent: an autoencoder (64x64x3 to 16x16x4, the `text` preset's) trained first, inside the
  same budget, then the same UNet's inner levels (widths 32, 64 at 16 and 8, transformer blocks
  at both, the `text` preset's UNet) on its latents, which is Stable Diffusion's recipe: the
  autoencoder does the two outer levels' work.

Each is then measured the same way: sampling images/s (DPM-Solver++(2M), 20 steps, guidance 4,
decoding included), prompt adherence judged by the shapes world's detector (nanodiffusion.data.shapes:
single objects, relations, counts, and held-out colour-shape pairs), and FID/KID/precision/recall
with Inception features against fresh renders of the test scenes whose captions were the prompts.
The latent model is swept over guidance scales (adherence and diversity against w).

    python bench/text_to_image.py            # 2 x 20 min of training, then about 20 min of sampling
                                             # and scoring on 2 CPU cores
    python bench/text_to_image.py --reuse    # continue an interrupted run (runs/bench-t2i/)
    python bench/text_to_image.py --quick    # a smoke test of every code path (writes no doc)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from _common import BudgetClock, forward_flops, machine, write_page
from nanodiffusion.data.datasets import load_data
from nanodiffusion.data.shapes import GRID_PROMPTS, evaluate_prompts, format_adherence
from nanodiffusion.inference.pipelines import TextToImage, pick_device
from nanodiffusion.io.checkpoint import save_config
from nanodiffusion.io.config import Config, preset
from nanodiffusion.io.viz import plot_rows, to_uint8
from nanodiffusion.metrics.fid import evaluate_images
from nanodiffusion.nets.autoencoder import AutoencoderConfig
from nanodiffusion.training.autoencoder import train_autoencoder_folder
from nanodiffusion.training.diffusion import Trainer

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "text-to-image.md"
OUT_DEFAULT = Path("runs/bench-t2i")
SIDES = ("pixel", "latent")


@dataclass
class Settings:
    out: Path
    size: int
    budget_s: float
    ae_steps: int
    ae_batch: int
    n_prompts: int
    n_held_out: int
    n_fid: int
    steps: int
    guidance: float
    sweep: tuple[float, ...]
    sweep_prompts: int
    seed: int
    device: str
    quick: bool
    preset_eval: Path | None = None


def side_config(s: Settings, side: str) -> Config:
    """The `text` preset at s.size, in pixel space or on a benchmark-trained autoencoder's latents."""
    cfg = preset("text")
    cfg.data.image_size, cfg.data.autoencoder = s.size, ""
    cfg.run.device, cfg.run.seed = s.device, s.seed
    f = s.size // 4  # the latent side's resolution: the autoencoder is 4x smaller per side
    if side == "pixel":  # pixels in [-1, 1]: EDM's own sigma_data and sigma density
        cfg.model.channels, cfg.model.channel_mults = 16, [1, 1, 2, 4]
        cfg.diffusion.sigma_data, cfg.loss.p_mean = 0.5, -1.2
    else:  # unit-variance latents: the preset's sigma_data 1 and UNet
        cfg.model.channels, cfg.model.channel_mults = 32, [1, 2]
    cfg.model.attn_resolutions = [f, f // 2]
    if s.quick:
        cfg.model.channels //= 2
    return cfg


# --- training ------------------------------------------------------------------------------------
def train_side(s: Settings, side: str) -> dict:
    """Train one side for the budget. The latent side's autoencoder, and both sides' one-off
    encoding (captions; the latent side's images), are spent from the same budget."""
    run_dir = s.out / side
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = side_config(s, side)
    spent, info = 0.0, {}
    if side == "latent":
        data = load_data("shapes", "train", s.size)
        held_out = load_data("shapes", "test", s.size).images[:500]
        ae_cfg = AutoencoderConfig(channels=cfg.data.autoencoder_channels)
        print(f"  autoencoder: {s.ae_steps} steps of batch {s.ae_batch}", flush=True)
        report = train_autoencoder_folder(
            data.images,
            held_out,
            ae_cfg,
            run_dir / "autoencoder",
            s.ae_steps,
            s.ae_batch,
            seed=s.seed,
            device=pick_device(s.device),
            progress=False,
            about={"data": "shapes", "size": s.size},
        )
        print(f"  autoencoder: PSNR {report['psnr']:.2f} dB, {report['seconds']:.0f} s", flush=True)
        spent += report["seconds"]
        cfg.data.autoencoder = str(run_dir / "autoencoder")
        info["autoencoder"] = report
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir, progress=False)
    info["setup_s"] = time.perf_counter() - start
    spent += info["setup_s"]
    net = trainer.denoiser.net
    m = trainer.cfg.model
    context = trainer.grid_prompts[:1].cpu()
    twin = type(net)(m).eval()
    info.update(
        params=sum(p.numel() for p in net.parameters()),
        flops=forward_flops(
            lambda: twin(torch.zeros(1, m.in_channels, m.image_size, m.image_size), torch.zeros(1), context)
        ),
    )
    clock = BudgetClock(s.budget_s - spent)
    trainer.model.train()
    losses = []
    while not clock.done or trainer.step < 2:  # --quick: the setup alone may spend the budget
        trainer.cfg.run.steps = clock.planned_steps(trainer.step)
        t = time.perf_counter()
        losses.append(trainer.train_step())
        clock.used += time.perf_counter() - t
        if trainer.step % 100 == 0:
            print(
                f"  {side}: step {trainer.step}, {clock.used + spent:.0f}/{s.budget_s:.0f} s, "
                f"loss {sum(losses[-100:]) / len(losses[-100:]):.4f}",
                flush=True,
            )
    trainer.cfg.run.steps = trainer.step
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer.save()
    save_config(trainer.cfg, run_dir)
    batch = trainer.cfg.optim.batch_size
    return {
        **info,
        "steps": trainer.step,
        "unet_s": clock.used,
        "seconds": clock.used + spent,
        "unet_images_per_s": trainer.step * batch / clock.used,
        "images_per_s": trainer.step * batch / (clock.used + spent),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "model": trainer.cfg.model.__dict__,
    }


# --- measuring -----------------------------------------------------------------------------------
def generator(pipe: TextToImage, s: Settings, guidance: float, drawn: list | None = None):
    def generate(captions: list[str]):
        images = pipe(captions, n=1, steps=s.steps, guidance=guidance, seed=s.seed, output="tensor")
        if drawn is not None:
            drawn.append(images)
        return to_uint8(images)

    return generate


def sampling_rate(pipe: TextToImage, s: Settings, n: int) -> float:
    """Images per second, prompt to decoded image (the best of two timings)."""
    best = math.inf
    for _ in range(2):
        t = time.perf_counter()
        pipe(list(GRID_PROMPTS)[:n], n=1, steps=s.steps, guidance=s.guidance, seed=s.seed, output="tensor")
        best = min(best, time.perf_counter() - t)
    return n / best


def diversity(pipe: TextToImage, s: Settings, guidance: float, prompts: int = 8, seeds: int = 8) -> float:
    """Mean RMS distance (pixels in [-1, 1]) between images of one prompt from different seeds."""
    out = []
    for prompt in list(GRID_PROMPTS)[:prompts]:
        x = pipe(prompt, n=seeds, steps=s.steps, guidance=guidance, seed=s.seed, output="tensor").flatten(1)
        d = torch.cdist(x, x) / math.sqrt(x.shape[1])
        out.append(d.sum().item() / (seeds * (seeds - 1)))
    return sum(out) / len(out)


def measure_side(s: Settings, side: str, results: dict) -> None:
    pipe = TextToImage.from_pretrained(s.out / side, device=s.device)
    r = results.setdefault("measured", {}).setdefault(side, {})
    if "sampling_images_per_s" not in r:
        r["sampling_images_per_s"] = sampling_rate(pipe, s, 4 if s.quick else 16)
    if "adherence" not in r:
        print(f"  {side}: prompt adherence on {s.n_prompts} + {s.n_held_out} prompts", flush=True)
        drawn: list = []
        r["adherence"] = evaluate_prompts(
            generator(pipe, s, s.guidance, drawn), s.n_prompts, s.n_held_out, size=s.size
        )
        print(format_adherence(r["adherence"]), flush=True)
    if "fid" not in r:
        print(f"  {side}: FID on {s.n_fid} test captions", flush=True)
        test = load_data("shapes", "test", s.size)
        images = pipe(
            test.captions[: s.n_fid], n=1, steps=s.steps, guidance=s.guidance, seed=s.seed, output="tensor"
        )
        r["fid"] = (
            _quick_fid(images)
            if s.quick
            else evaluate_images(images, "shapes", "inception", n_ref=s.n_fid, device=s.device)
        )
    if "grid" not in r:
        rows = [
            pipe(p, n=4, steps=s.steps, guidance=s.guidance, seed=s.seed, output="tensor")
            for p in GRID_PROMPTS
        ]
        torch.save(torch.stack(rows), s.out / f"grid-{side}.pt")
        r["grid"] = str(s.out / f"grid-{side}.pt")


def _quick_fid(images: torch.Tensor) -> dict:
    """--quick: no feature network (shapes has no labels for nanodiffusion's classifier)."""
    return {
        "fid": float("nan"),
        "kid_mean": float("nan"),
        "kid_std": float("nan"),
        "precision": float("nan"),
        "recall": float("nan"),
        "floor_fid": float("nan"),
        "n": len(images),
        "features": "none (--quick)",
        "resize": "none",
    }


def sweep(s: Settings, results: dict) -> None:
    pipe = TextToImage.from_pretrained(s.out / "latent", device=s.device)
    done = results.setdefault("sweep", {})
    for w in s.sweep:
        if f"{w:g}" in done:
            continue
        a = evaluate_prompts(generator(pipe, s, w), s.sweep_prompts, s.sweep_prompts // 2, size=s.size)
        done[f"{w:g}"] = {
            "overall": a["prompts"]["generated"]["overall"]["all"],
            "held_out": a["held-out"]["generated"]["overall"]["all"],
            "diversity": diversity(pipe, s, w, 2 if s.quick else 8, 2 if s.quick else 8),
        }
        print(
            f"  guidance {w:g}: adherence {done[f'{w:g}']['overall']:.3f}, held-out "
            f"{done[f'{w:g}']['held_out']:.3f}, diversity {done[f'{w:g}']['diversity']:.3f}",
            flush=True,
        )


# --- the report ----------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a"


def _adh(r: dict, part: str, kind: str, check: str = "all") -> float:
    return r["adherence"][part]["generated"].get(kind, {}).get(check, float("nan"))


def plot_sweep(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = sorted(float(w) for w in results["sweep"])
    rows = [results["sweep"][f"{w:g}"] for w in ws]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(ws, [r["overall"] for r in rows], "o-", label="adherence (all prompts)")
    ax.plot(ws, [r["held_out"] for r in rows], "s--", label="adherence (held-out pairs)")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("fraction of images right")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.plot(ws, [r["diversity"] for r in rows], "^:", color="tab:red", label="diversity")
    twin.set_ylabel("diversity (RMS distance between seeds)", color="tab:red")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    ax.set_title("latent model: guidance against adherence and diversity")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report(s: Settings, results: dict, figures: Path) -> str:
    t, m = results["trainings"], results["measured"]
    lines = [
        "# Text to image on the shapes world",
        "",
        "Written by `python bench/text_to_image.py` (see its docstring); the numbers are from one run on",
        f"{results['machine']}. Scenes are {s.size}x{s.size}; both models train for the same wall-clock",
        f"budget of {s.budget_s / 60:.0f} minutes, one after the other, the latent one's autoencoder inside",
        "its budget. Prompts go through frozen all-MiniLM-L6-v2; sampling is DPM-Solver++(2M) with",
        f"{s.steps} steps and classifier-free guidance w = {s.guidance:g} away from the empty prompt.",
        "",
        "## (a) Latent against pixel diffusion",
        "",
        "| | pixel | latent |",
        "| --- | --- | --- |",
    ]

    def row(label: str, f) -> None:
        lines.append(f"| {label} | " + " | ".join(f(side) for side in SIDES) + " |")

    row("UNet parameters", lambda k: f"{t[k]['params'] / 1e6:.2f}M")
    row("UNet forward GFLOPs per image", lambda k: f"{t[k]['flops'] / 1e9:.3f}")

    def autoencoder(k: str) -> str:
        if k == "pixel":
            return "none"
        ae = t[k]["autoencoder"]
        return (
            f"{ae['steps']} steps of batch {s.ae_batch}, {ae['seconds']:.0f} s, "
            f"held-out PSNR {ae['psnr']:.1f} dB, "
            f"latents {'x'.join(map(str, ae['latent_shape']))}"
        )

    row("autoencoder", autoencoder)
    row("UNet training steps (batch 64)", lambda k: str(t[k]["steps"]))
    row("training images/s, UNet steps", lambda k: f"{t[k]['unet_images_per_s']:.1f}")
    row("training images/s, whole budget", lambda k: f"{t[k]['images_per_s']:.1f}")
    row("sampling images/s (decoding included)", lambda k: f"{m[k]['sampling_images_per_s']:.2f}")
    for label, part, kind in [
        ("adherence: single objects", "prompts", "single"),
        ("adherence: two objects with a relation", "prompts", "relation"),
        ("adherence: counts", "prompts", "count"),
        ("adherence: all prompts", "prompts", "overall"),
        ("adherence: held-out colour-shape pairs", "held-out", "overall"),
    ]:
        row(label, lambda k, part=part, kind=kind: _pct(_adh(m[k], part, kind)))
    f0 = m["latent"]["fid"]
    row(f"FID ({f0['features']}, N = {f0['n']})", lambda k: f"{m[k]['fid']['fid']:.1f}")
    row("KID x 1000", lambda k: f"{1000 * m[k]['fid']['kid_mean']:.1f} ± {1000 * m[k]['fid']['kid_std']:.1f}")
    row("precision / recall", lambda k: f"{m[k]['fid']['precision']:.2f} / {m[k]['fid']['recall']:.2f}")
    lines += [
        "",
        f"FID is against the first {f0['n']} test scenes, each generated image drawn from its scene's",
        f"caption; the real-vs-real floor (training against test scenes, same N) is {f0['floor_fid']:.1f}.",
        f"Adherence is over {s.n_prompts} evaluation prompts and {s.n_held_out} held-out ones",
        "(`nanodiff eval-prompts`); the detector scores the prompts' own renders at "
        + _pct(m["latent"]["adherence"]["prompts"]["renders"]["overall"]["all"])
        + ".",
        "",
        "Per check (latent model):",
        "",
        "```",
        format_adherence(m["latent"]["adherence"]),
        "```",
        "",
        "## Aims",
        "",
    ]
    lat, pix = m["latent"], m["pixel"]
    aims = []
    if s.preset_eval is not None:  # the adherence aims are the text preset's, at 32x32
        pre = json.loads(s.preset_eval.read_text())
        lines += [
            "The adherence aims are the `text` preset's (32x32 scenes, its own budget of about 20",
            f"minutes), from `nanodiff eval-prompts` on a run of it (`{s.preset_eval}`, "
            f"{pre['n']} + {pre['n_held_out']} prompts); this benchmark's 64x64 latent model is",
            "beside them for scale.",
            "",
        ]
        preset_r = {"adherence": pre}
        aims += [
            (
                f"text preset: {label} >= {100 * aim:.0f}%",
                _adh(preset_r, part, kind) >= aim,
                f"{_pct(_adh(preset_r, part, kind))}; 64x64 latent here: {_pct(_adh(lat, part, kind))}",
            )
            for label, part, kind, aim in [
                ("single-object prompts", "prompts", "single", 0.9),
                ("two objects with a relation", "prompts", "relation", 0.7),
                ("held-out combinations", "held-out", "overall", 0.6),
            ]
        ]
    speed = t["latent"]["images_per_s"] / t["pixel"]["images_per_s"]
    unet_speed = t["latent"]["unet_images_per_s"] / t["pixel"]["unet_images_per_s"]
    gap = 100 * (_adh(lat, "prompts", "overall") - _adh(pix, "prompts", "overall"))
    aims += [
        (
            "latent >= 3x faster to train per image than pixel",
            speed >= 3,
            f"{speed:.1f}x over the whole budgets, the autoencoder's training included; "
            f"{unet_speed:.1f}x per UNet step",
        ),
        ("latent adherence within 5 points of pixel", gap >= -5, f"{gap:+.0f} points"),
    ]
    for aim, ok, got in aims:
        lines.append(f"- {aim}: **{'reached' if ok else 'missed'}** ({got})")
    ae_s = t["latent"]["autoencoder"]["seconds"]
    lines += [
        "",
        f"Reading them: in {s.budget_s / 60:.0f} minutes both 64x64 models are early in training "
        f"({t['pixel']['steps']} and {t['latent']['steps']} UNet steps;",
        "the text preset takes 3000 at 32x32), so their adherence is far below the preset's. The",
        f"latent model spends {ae_s:.0f} s of its {s.budget_s:.0f} s on its autoencoder, which is why its "
        f"whole-budget speed-up ({speed:.1f}x)",
        f"is below its per-step one ({unet_speed:.1f}x); per step its UNet does "
        f"{t['pixel']['flops'] / t['latent']['flops']:.1f}x fewer FLOPs than the pixel",
        "UNet, and the rest of the per-step gain is the memory traffic of 64x64 activations. Two",
        "objects in a stated order are not learned in these budgets: the two objects come out with",
        f"the right colours in {_pct(_adh(lat, 'prompts', 'relation', 'binding'))} of the latent model's "
        "images and in the stated order in",
        f"{_pct(_adh(lat, 'prompts', 'relation', 'spatial'))}.",
    ]
    lines += [
        "",
        "## (b) Guidance",
        "",
        "| w | adherence | held-out | diversity |",
        "| --- | --- | --- | --- |",
    ]
    for w in sorted(float(w) for w in results["sweep"]):
        r = results["sweep"][f"{w:g}"]
        lines.append(f"| {w:g} | {_pct(r['overall'])} | {_pct(r['held_out'])} | {r['diversity']:.3f} |")
    plot_sweep(results, figures / "t2i_guidance.png")
    lines += [
        "",
        "![adherence and diversity against guidance](images/t2i_guidance.png)",
        "",
        "Diversity is the mean RMS pixel distance between 8 seeds' images of one prompt, over 8",
        "prompts.",
        "",
        "## (c) Grids",
        "",
        "Four seeds for each of the 16 fixed prompts (the last four name held-out pairs).",
        "",
    ]
    for side in SIDES:
        grid = torch.load(m[side]["grid"])
        plot_rows(list(grid), list(GRID_PROMPTS), figures / f"t2i_grid_{side}.png")
        lines += [f"{side}:", "", f"![{side} model grid](images/t2i_grid_{side}.png)", ""]
    return "\n".join(lines)


def run(s: Settings, reuse: bool, doc: Path | None) -> None:
    if not reuse:
        shutil.rmtree(s.out, ignore_errors=True)
    s.out.mkdir(parents=True, exist_ok=True)
    path = s.out / "results.json"
    results = json.loads(path.read_text()) if reuse and path.is_file() else {}
    results["machine"] = machine()
    save = lambda: path.write_text(json.dumps(results, indent=2) + "\n")  # noqa: E731
    trainings = results.setdefault("trainings", {})
    for side in SIDES:
        if side in trainings and (s.out / side).is_dir():
            print(f"{side}: trained already ({trainings[side]['steps']} steps)")
            continue
        print(f"training {side} for {s.budget_s:.0f} s", flush=True)
        trainings[side] = train_side(s, side)
        results.get("measured", {}).pop(side, None)
        save()
    for side in SIDES:
        measure_side(s, side, results)
        save()
    sweep(s, results)
    save()
    write_page(doc, s.out, lambda figures: report(s, results, figures))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets and sets, for smoke tests")
    p.add_argument("--reuse", action="store_true", help="keep what the output folder already holds")
    p.add_argument("--out", type=Path, help=f"Markdown file to write (default {DOC.relative_to(ROOT)})")
    p.add_argument("--out-dir", type=Path, help=f"runs and results (default {OUT_DEFAULT})")
    p.add_argument("--budget-min", type=float, help="training minutes per side (default 20)")
    p.add_argument("--ae-steps", type=int, help="autoencoder steps (default 1000)")
    p.add_argument(
        "--ae-batch",
        type=int,
        default=16,
        help="autoencoder batch (default 16: at 64x64 a batch of 64 costs ~4x, and the "
        "autoencoder is paid from the latent side's budget)",
    )
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preset-eval",
        type=Path,
        help="the JSON `nanodiff eval-prompts` wrote for a text "
        "preset run: its adherence is set against the issue's aims in the report",
    )
    a = p.parse_args()
    q = a.quick
    s = Settings(
        out=a.out_dir or Path(f"{OUT_DEFAULT}-quick" if q else OUT_DEFAULT),
        size=32 if q else a.size,
        budget_s=60 * (a.budget_min or (0.3 if q else 20)),
        ae_steps=a.ae_steps or (5 if q else 1000),
        ae_batch=a.ae_batch,
        n_prompts=8 if q else 200,
        n_held_out=4 if q else 100,
        n_fid=8 if q else 500,
        steps=3 if q else 20,
        guidance=4.0,
        sweep=(1.0, 4.0) if q else (1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
        sweep_prompts=8 if q else 100,
        seed=a.seed,
        device=a.device,
        quick=q,
        preset_eval=a.preset_eval,
    )
    run(s, a.reuse, a.out or (None if q else DOC))


if __name__ == "__main__":
    main()

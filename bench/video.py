"""Text-to-video on moving shapes and Moving MNIST after a laptop's CPU budget, judged exactly.

Four trainings through nanodiffusion's Trainer, each a process of one torch thread that stops
when its process time reaches the budget (the cosine decay planned to end with it):

- factorised: the `video-shapes` preset (space-time DiT, attention within a frame, then across
  frames);
- joint: the same DiT with joint attention over all 512 space-time tokens (equal budget);
- per-frame: the frame-by-frame baseline, an image DiT of the same width and depth on single
  frames, each with its video's caption (`data.per_frame`), sampled frame by frame with the
  same prompt and independent noise;
- moving-mnist: the `moving-mnist` preset.

Then each video-shapes model draws one video for each of N test prompts (the captions of test
videos never seen in training) and of N held-out colour-shape-motion prompts, and
image-to-video continues N test videos from their first frame; the judge (metrics.video)
scores identity, motion, smoothness and per-frame adherence. The Moving MNIST model draws N
videos, read by the frame classifier (metrics.moving_mnist): identity across frames and
per-frame FID against the test videos, with the real-vs-real floor. Sampling speed in frames/s.

Everything is kept under the output folder (runs, results/*.json), so `--reuse` continues; the
section of docs/video.md between its markers is rewritten after every job.

    python bench/video.py                 # 4 trainings of 30 CPU-minutes, two at a time, then the judges
    python bench/video.py --reuse         # continue
    python bench/video.py --quick         # a smoke test of every path (docs only with --out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _common import Settings, Store, budgeted_main, train_on_budget
from nanodiffusion.inference.video import run_frames
from nanodiffusion.io.checkpoint import load_config
from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.io.viz import save_strip, save_video_gif

DOC = Path(__file__).resolve().parent.parent / "docs" / "video.md"
SECTION = "video"
IMAGES = DOC.parent / "images"


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    overrides: tuple[str, ...] = ()


VARIANTS = (
    Variant("factorised", "video-shapes"),
    Variant("joint", "video-shapes", ("model.attention=joint",)),
    Variant(
        "per-frame",
        "video-shapes",
        (
            "data.per_frame=true",
            "model.patch_size=4",
            "model.attention=joint",
            "optim.batch_size=64",
            "run.sample_n=16",
        ),
    ),
    Variant("moving-mnist", "moving-mnist"),
)


def config(v: Variant, s: Settings):
    cfg = apply_overrides(preset(v.preset), list(v.overrides))
    cfg.run.device = "cpu"
    if s.quick:
        cfg.run.sample_steps = 2
    return cfg


def train(v: Variant, s: Settings, results: Store) -> None:
    if results.get(f"train-{v.name}") is None:
        results.put(f"train-{v.name}", train_on_budget(config(v, s), s.out / v.name, s.budget_cpu_s, v.name))


def jobs(s: Settings) -> list[str]:
    return [f"train:{v.name}" for v in VARIANTS] + [f"judge:{v.name}" for v in VARIANTS]


def run_job(job: str, s: Settings, results: Store) -> None:
    kind, name = job.split(":")
    v = next(v for v in VARIANTS if v.name == name)
    if kind == "train":
        train(v, s, results)
    else:
        judge(v, s, results)


def judge(v: Variant, s: Settings, results: Store) -> None:
    """The judges of one trained model (see the module's docstring)."""
    from nanodiffusion.training.video_eval import evaluate_video

    if results.get(f"judge-{v.name}") is not None or v.name == "per-frame":
        return  # the baseline is judged through the run it is the baseline of
    run_dir = s.out / v.name
    baseline = s.out / "per-frame" if v.name == "factorised" else None  # judged once, beside the preset
    report = evaluate_video(run_dir, n=s.n, steps=s.steps, baseline=baseline, progress=False)
    samples = report.pop("samples")
    if not s.quick:  # the docs' pictures: the first prompts' videos as a strip (and the preset's as a GIF)
        save_strip(samples, IMAGES / f"video-{v.name}.png")
        if v.name == "factorised":
            save_video_gif(samples, IMAGES / f"video-{v.name}.gif", nrow=4)
    results.put(f"judge-{v.name}", report)


def _f(x, d: int = 3) -> str:
    return "" if x is None else f"{x:.{d}f}"


def report(s: Settings, results: Store) -> str:
    lines = [
        "## Benchmark: text-to-video and Moving MNIST after a CPU budget",
        "",
        f"`python bench/video.py` ({s.budget_cpu_s / 60:g} CPU-minutes per training, one torch thread "
        f"each, two at a time; {s.n} prompts per judged set, {s.steps} sampling steps).",
        "",
        "| training | params | steps x batch | CPU s | samples / CPU s | frames / CPU s "
        "| loss first 20 -> last 50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in VARIANTS:
        t = results.get(f"train-{v.name}")
        if t is None:
            lines.append(f"| {v.name} | not measured yet | | | | | |")
            continue
        frames = run_frames(load_config(s.out / v.name)) or 1  # the per-frame baseline's samples are frames
        lines.append(
            f"| {v.name} | {t['params'] / 1e6:.2f}M | {t['steps']} x {t['batch']} | {t['cpu_s']:.0f} | "
            f"{t['samples_per_cpu_s']:.1f} | {t['samples_per_cpu_s'] * frames:.0f} | "
            f"{t['first_loss']:.3f} -> {t['final_loss']:.3f} |"
        )
    judged = {v.name: results.get(f"judge-{v.name}") for v in VARIANTS}
    rows = []
    for name in ("factorised", "joint"):
        r = judged.get(name)
        if r is None:
            continue
        for label, key in (
            ("test prompts", "text"),
            ("held-out prompts", "held_out"),
            ("image-to-video", "i2v"),
        ):
            m = r.get(key)
            if m:
                rows.append(
                    f"| {name} | {label} | {_f(m['identity'])} | {_f(m['motion'])} | "
                    f"{_f(m.get('motion_single'))} | {_f(m['smooth'])} | {_f(m['per_frame'])} |"
                )
        b = r.get("baseline")
        if b and name == "factorised":
            rows.append(
                f"| per-frame baseline | test prompts | {_f(b['identity'])} | {_f(b['motion'])} | "
                f"{_f(b['motion_single'])} | {_f(b['smooth'])} | {_f(b['per_frame'])} |"
            )
        real = r.get("real")
        if real and name == "factorised":
            rows.append(
                f"| real test videos | | {_f(real['identity'])} | {_f(real['motion'])} | "
                f"{_f(real['motion_single'])} | {_f(real['smooth'])} | {_f(real['per_frame'])} |"
            )
    if rows:
        lines += [
            "",
            "| model | prompts | identity | motion | motion (single objects) | smooth | per-frame |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    mm = judged.get("moving-mnist")
    if mm:
        lines += [
            "",
            "| Moving MNIST | identity kept | per-frame FID (classifier features) |",
            "| --- | ---: | ---: |",
            f"| samples | {_f(mm['identity'])} | {_f(mm['frame_fid'], 2)} |",
            f"| real test videos (floor) | {_f(mm['real_identity'])} | {_f(mm['floor_fid'], 2)} |",
        ]
    f = judged.get("factorised")
    if f and mm:
        aims = [
            (
                "moving shapes: every object's identity in every frame, >= 90% of videos",
                f["text"]["identity"],
                0.9,
            ),
            (
                "motion direction right in >= 80% of single-object prompts",
                f["text"].get("motion_single"),
                0.8,
            ),
            ("held-out combinations (all verdicts) >= 50%", f["held_out"]["all"], 0.5),
            ("Moving MNIST: digit identity kept in >= 90% of videos", mm["identity"], 0.9),
            ("image-to-video follows the prompt's motion in >= 70%", f["i2v"]["motion"], 0.7),
        ]
        lines += ["", "Aims (the `video-shapes` preset, factorised, and `moving-mnist`):", ""]
        lines += [
            f"- {what}: {_f(got)}, **{'reached' if got is not None and got >= aim else 'missed'}**"
            for what, got, aim in aims
        ]
        lines.append(
            "- image-to-video keeps frame 0 exactly: largest difference "
            f"{f['i2v']['first_frame_max_error']:.1e}"
        )
    speeds = [(n, r["frames_per_s"]) for n, r in judged.items() if r and "frames_per_s" in r]
    if speeds:
        lines += ["", "Sampling: " + ", ".join(f"{n} {fps:.1f} frames/s" for n, fps in speeds) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    help = {
        "description": __doc__.splitlines()[0],
        "n": "prompts per judged set (default 100)",
        "budget": "CPU-minutes per training (default 30)",
    }
    budgeted_main(__file__, DOC, SECTION, "video", 100, 4, help, jobs, run_job, report)


if __name__ == "__main__":
    main()

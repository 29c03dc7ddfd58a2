"""Spoken words and Bach chorales after a laptop's CPU budget, judged by listening and by music theory.

Three trainings through nanodiffusion's Trainer, each a process of one torch thread that stops
when its process time reaches its budget (the cosine decay planned to end with it):

- spectrogram: the `speech` preset (log-mel images, a DiT over 4 x 4 patches, class-conditional
  on the word; back to sound by Griffin-Lim);
- waveform: the `speech-wave` preset (raw 16 kHz samples, a 1-D DiT over patches of 250 samples),
  the same budget;
- chorales: the `chorales` preset (4-voice piano rolls), half the budget.

Then each speech model draws one clip for each word, N/30 times (guidance 3, DPM-Solver++(2M), 20
steps), heard by the spoken-word judge (metrics.speech): the fraction recognised as the requested
word and the Frechet distance of the judge's features to the test voices' clips, with the
real-vs-real floor (test voices against train voices); training and sampling CPU seconds per
second of audio; a guidance sweep on the better one. The chorales model draws N rolls, compared
by the music statistics (metrics.music) with held-out chorales and their pitch-shuffled baseline.

Everything is kept under the output folder (runs, results/*.json), so `--reuse` continues; the
section of docs/audio.md between its markers is rewritten after every job.

    python bench/audio.py                 # 3 trainings (30, 30, 15 CPU-minutes) at once, then the judges
    python bench/audio.py --reuse         # continue
    python bench/audio.py --quick         # a smoke test of every path (docs only with --out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _common import Settings, Store, budgeted_main, train_on_budget
from nanodiffusion.io.config import apply_overrides, preset

DOC = Path(__file__).resolve().parent.parent / "docs" / "audio.md"
SECTION = "audio"
IMAGES = DOC.parent / "images"
SOUNDS = DOC.parent / "sounds"  # WAV (and MIDI) files the docs link to


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    budget: float = 1.0  # share of the budget


VARIANTS = (
    Variant("spectrogram", "speech"),
    Variant("waveform", "speech-wave"),
    Variant("chorales", "chorales", 0.5),
)


def train(v: Variant, s: Settings, results: Store) -> None:
    if results.get(f"train-{v.name}") is not None:
        return
    cfg = apply_overrides(preset(v.preset), ["run.device=cpu"])
    if s.quick:
        cfg.run.sample_steps, cfg.run.sample_n = 2, 4
    results.put(f"train-{v.name}", train_on_budget(cfg, s.out / v.name, s.budget_cpu_s * v.budget, v.name))


def judge(v: Variant, s: Settings, results: Store) -> None:
    from nanodiffusion.training.audio_eval import evaluate_audio

    if results.get(f"judge-{v.name}") is not None:
        return
    guidance = (3.0, 1.0, 5.0) if v.name == "spectrogram" and not s.quick else (3.0,)
    report = evaluate_audio(s.out / v.name, n=s.n, steps=s.steps, guidance=guidance, progress=False)
    samples = report.pop("samples")
    if not s.quick:  # the docs' pictures and a few files to listen to (the first words, or chorales)
        from nanodiffusion.inference.audio import sound_files
        from nanodiffusion.io.checkpoint import load_config
        from nanodiffusion.io.viz import save_grid

        modality = "roll" if v.name == "chorales" else "audio"
        save_grid(samples[:16], IMAGES / f"audio-{v.name}.png", 4, modality=modality)
        keep = samples[:2] if v.name == "chorales" else samples[:4]  # a chorale's WAV is 11 s (340 kB)
        sound_files(load_config(s.out / v.name), keep, SOUNDS, stem=v.name, picture=False)
    results.put(f"judge-{v.name}", report)


def jobs(s: Settings) -> list[str]:
    return [f"train:{v.name}" for v in VARIANTS] + [f"judge:{v.name}" for v in VARIANTS]


def run_job(job: str, s: Settings, results: Store) -> None:
    kind, name = job.split(":")
    v = next(v for v in VARIANTS if v.name == name)
    (train if kind == "train" else judge)(v, s, results)


def _f(x, d: int = 3) -> str:
    return "" if x is None else f"{x:.{d}f}"


def report(s: Settings, results: Store) -> str:
    from nanodiffusion.training.audio_eval import format_audio_report

    trained = {v.name: results.get(f"train-{v.name}") for v in VARIANTS}
    judged = {v.name: results.get(f"judge-{v.name}") for v in VARIANTS}
    lines = [
        f"Budget: {s.budget_cpu_s / 60:.0f} CPU-minutes a speech training, half for the chorales; one torch "
        "thread each, the three trainings at once on the 2-core machine. `python bench/audio.py`.",
        "",
        "| training | params | steps x batch | clips/CPU s | CPU s per audio s | loss, first 20 -> last 50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in trained.items():
        if t:
            per_second = 1 / t["samples_per_cpu_s"] if name != "chorales" else None
            lines.append(
                f"| {name} | {t['params'] / 1e6:.2f}M | {t['steps']} x {t['batch']} "
                f"| {t['samples_per_cpu_s']:.1f} "
                f"| {_f(per_second, 3)} | {t['first_loss']:.3f} -> {t['final_loss']:.3f} |"
            )
    lines += ["", format_audio_report(judged)]
    return "\n".join(lines)


def main() -> None:
    help = {
        "description": __doc__.splitlines()[0],
        "n": "clips per judged set (default 300: 10 per word)",
        "budget": "CPU-minutes per speech training (default 30)",
    }
    budgeted_main(__file__, DOC, SECTION, "audio", 300, 30, help, jobs, run_job, report)


if __name__ == "__main__":
    main()

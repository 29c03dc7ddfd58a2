"""`nanodiff eval-audio`: a sound or music run's samples judged by listening and by music theory.

Spoken words (a class-conditional run on `speech`, waveform or spectrogram): the run draws n
clips, word k % 30 for clip k, at each guidance scale; the spoken-word judge (metrics.speech,
trained once on the train voices and cached: the one reason this lives in the training layer)
hears each: the fraction recognised as the requested word, the fraction heard as no word, and the
Frechet distance of the judge's features to the test voices' clips. Beside them: the judge on
the test voices themselves (its ceiling) and the real-vs-real floor of the distance (train voices
against test voices), and sampling CPU seconds per second of audio.

Chorales (a run on `chorales`): n rolls drawn, thresholded, and compared by the music statistics
(metrics.music) with the held-out chorales; the held-out chorales' pitch-shuffled baseline and
the training chorales beside them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.audio import draw_sound, run_makes, run_modality
from nanodiffusion.inference.pipelines import load_parts

BATCH = 30  # clips drawn at once


def evaluate_audio(
    run: str | Path,
    n: int = 300,
    steps: int = 20,
    sampler: str = "dpm++2m",
    guidance: tuple[float, ...] = (3.0,),
    seed: int = 0,
    weights: str = "ema",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """The judges of a sound or music run (see the module's docstring) as one dict; "samples" holds
    the first guidance scale's clips (or rolls)."""
    parts = load_parts(run, weights, device)
    cfg = parts[0]
    modality = run_modality(cfg)
    if modality == "roll":
        return _evaluate_chorales(parts, n, steps, sampler, seed, progress)
    if modality not in ("audio", "spectrogram"):
        raise NanodiffError(f"{run} makes {run_makes(cfg)}: eval-audio judges a speech or chorales run")
    if cfg.data.name != "speech" or not cfg.model.num_classes:
        raise NanodiffError(
            f"{run} is not a word-conditional speech run: the judge knows the 30 words of speech"
        )
    if n < 2:
        raise NanodiffError(f"n must be at least 2 (the Frechet distance needs a spread), got {n}")
    from nanodiffusion.data.speech import load_speech
    from nanodiffusion.metrics.fid import fid
    from nanodiffusion.metrics.speech import judge_words
    from nanodiffusion.training.audio_judge import word_classifier

    judge = word_classifier(progress=progress)
    test_waves, test_labels, _ = load_speech("test", progress=progress)
    train_waves, _, _ = load_speech("train", progress=progress)
    heard, test_features = judge.hear(torch.from_numpy(test_waves))
    _, train_features = judge.hear(torch.from_numpy(train_waves))
    report = {
        "run": str(run),
        "modality": modality,
        "n": n,
        "steps": steps,
        "sampler": sampler,
        "real": {
            "recognised": (heard == torch.from_numpy(test_labels)).float().mean().item(),
            "no_word": (heard == -1).float().mean().item(),
            "fad": fid(train_features, test_features),  # the floor: train voices against test voices
        },
        "guidance": {},
    }
    labels = torch.arange(n) % cfg.model.num_classes
    bar = tqdm(total=len(guidance) * n, desc="clips", disable=not progress)
    for w in guidance:
        clips, t0 = [], time.process_time()
        for b, start in enumerate(range(0, n, BATCH)):
            rows = labels[start : start + BATCH]
            clips.append(
                draw_sound(
                    cfg,
                    parts[1],
                    len(rows),
                    cond=rows,
                    guidance=w,
                    sampler=sampler,
                    steps=steps,
                    seed=seed + b,
                )  # fmt: skip
            )
            bar.update(len(rows))
        cpu = time.process_time() - t0
        clips = torch.cat(clips)
        result = judge_words(judge, clips, labels, test_features)
        result["cpu_s_per_audio_s"] = cpu / (n * clips.shape[-1] / cfg.data.sample_rate)
        report["guidance"][f"{w:g}"] = result
        report.setdefault("samples", clips)
    bar.close()
    return report


def _evaluate_chorales(parts, n: int, steps: int, sampler: str, seed: int, progress: bool) -> dict:
    from nanodiffusion.data.chorales import binarize, load_chorales
    from nanodiffusion.metrics.music import compare, shuffled_baseline

    cfg, denoiser = parts[0], parts[1]
    rolls, t0 = [], time.process_time()
    for b, start in enumerate(tqdm(range(0, n, BATCH), desc="chorales", disable=not progress)):
        k = min(BATCH, n - start)
        rolls.append(draw_sound(cfg, denoiser, k, sampler=sampler, steps=steps, seed=seed + b))
    cpu = time.process_time() - t0
    drawn = torch.cat(rolls)
    test, _ = load_chorales("test", progress=progress)
    train, _ = load_chorales("train", progress=progress)
    generated = compare(binarize(drawn), test)
    return _plain(
        {
            "modality": "roll",
            "n": n,
            "steps": steps,
            "sampler": sampler,
            "cpu_s_per_roll": cpu / n,
            "generated": generated,
            "shuffled": compare(shuffled_baseline(test, seed), test),
            "train": compare(train, test),
        }
    ) | {"samples": drawn}


def _plain(x):
    """x with numpy arrays and numbers as lists and floats (for JSON)."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x.item() if isinstance(x, np.generic) else x


def format_audio_report(reports: dict[str, dict | None]) -> str:
    """Markdown tables of eval-audio reports by name: the speech judges, then the music statistics."""
    speech = ["| model | guidance | recognised | heard as no word | FAD-style | CPU s per audio s |"]
    speech.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    real = None
    music = {}
    for name, r in reports.items():
        if not r:
            continue
        if r.get("modality") == "roll":
            music = {f"{name}: generated": r["generated"], "pitch-shuffled held-out": r["shuffled"]}
            music |= {"training chorales": r["train"], "held-out chorales": r["generated"]["reference"]}
            continue
        real = r["real"]
        for w, g in r["guidance"].items():
            speech.append(
                f"| {name} | {w} | {g['recognised']:.3f} | {g['no_word']:.3f} | {g['fad']:.2f} "
                f"| {g['cpu_s_per_audio_s']:.3f} |"
            )
    out = []
    if real:
        speech.append(
            f"| test voices (real) | | {real['recognised']:.3f} | {real['no_word']:.3f} "
            f"| {real['fad']:.2f} (floor) | |"
        )
        out.append("\n".join(speech))
    if music:
        from nanodiffusion.metrics.music import format_music_table

        out.append(format_music_table(music))
    return "\n\n".join(out)

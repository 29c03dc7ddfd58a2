"""The music judges: statistics of piano rolls (data.chorales) and how far two sets of rolls differ.

Every statistic counts notes as roll_to_notes reads them: a note is a run of ones in one voice's
pitch row, counted once at its onset whatever its length. The chorales are transposed to C major
or A minor, so one pitch-class set serves both: IN_KEY = the C major scale (= A natural minor)
plus G#, A minor's raised leading tone; a chromatic cluster is 8/12 in key. The statistics follow
the symbolic-music evaluation practice of Yang and Lerch ("On the evaluation of generative models
in music", Neural Computing and Applications 2020): pitch-class histograms compared by a distance,
polyphony, note density and pitch ranges. The shuffled baseline (each roll's pitch rows permuted)
keeps rhythm and polyphony but not key or ranges: a model should beat it by far on in_key and
pitch_class_distance.
"""

from __future__ import annotations

import numpy as np
import torch

from nanodiffusion.data.chorales import LOW, VOICES
from nanodiffusion.errors import NanodiffError

IN_KEY = (0, 2, 4, 5, 7, 8, 9, 11)  # C D E F G G# A B
STEPS_PER_BAR = 16


def _check_rolls(rolls) -> np.ndarray:
    if isinstance(rolls, torch.Tensor):
        rolls = rolls.detach().cpu().numpy()
    rolls = np.asarray(rolls)
    if rolls.ndim != 4 or rolls.shape[0] < 1 or rolls.shape[1] != len(VOICES):
        raise NanodiffError(f"expected rolls [n, 4, pitches, steps], got shape {list(rolls.shape)}")
    return rolls != 0


def _onsets(on: np.ndarray) -> np.ndarray:
    """bool [n, V, P, S]: True at each note's first step."""
    before = np.zeros_like(on)
    before[..., 1:] = on[..., :-1]
    return on & ~before


def _mean_pitch(on: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Each voice's mean sounding row per step, float [n, V, S] (nan where it is silent); in chunks
    of rolls so that no float copy of a whole data set is made."""
    rows = np.arange(on.shape[2], dtype=np.float32)
    out = np.empty((on.shape[0], on.shape[1], on.shape[3]), np.float32)
    for s in range(0, len(on), chunk):
        part = on[s : s + chunk].astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.einsum("nvps,p->nvs", part, rows) / part.sum(axis=2)
    return out


def music_stats(rolls) -> dict:
    """Statistics of uint8 rolls [n, 4, P, S] (row p is MIDI LOW + p, a step a sixteenth):
    in_key: fraction of notes (onsets) whose pitch class is in IN_KEY; pitch_class_hist: the 12
    pitch classes' shares of the notes (C first); polyphony: mean number of voices sounding per
    step; notes_per_bar: notes of all voices per 16 steps; range: per voice (mean, 5th
    percentile, 95th percentile) MIDI pitch of its notes (nan without notes); empty: fraction of
    steps where no voice sounds; voice_crossing: of the steps where at least two voices sound,
    the fraction where some voice's mean sounding pitch lies below that of a voice listed after
    it (soprano, alto, tenor, bass); n: the number of rolls. (With no notes at all, in_key and
    the histogram are nan.)"""
    on = _check_rolls(rolls)
    n, voices, _, steps = on.shape
    _, voice, row, _ = np.nonzero(_onsets(on))
    pitch = row + LOW
    counts = np.bincount(pitch % 12, minlength=12)
    total = counts.sum()
    hist = counts / total if total else np.full(12, np.nan)
    sounding = on.any(axis=2)  # [n, V, S]
    mean_pitch = _mean_pitch(on)
    crossed = np.zeros((n, steps), bool)
    for upper in range(voices):
        for lower in range(upper + 1, voices):
            crossed |= mean_pitch[:, upper] < mean_pitch[:, lower]  # nan compares False
    several = sounding.sum(axis=1) >= 2
    ranges = {}
    for v, name in enumerate(VOICES):
        p = pitch[voice == v]
        ranges[name] = (
            (float(p.mean()), float(np.percentile(p, 5)), float(np.percentile(p, 95)))
            if len(p)
            else (np.nan,) * 3
        )
    return {
        "in_key": float(counts[list(IN_KEY)].sum() / total) if total else float("nan"),
        "pitch_class_hist": hist,
        "polyphony": float(sounding.sum(axis=1).mean()),
        "notes_per_bar": float(total / (n * steps / STEPS_PER_BAR)),
        "range": ranges,
        "empty": float((~sounding.any(axis=1)).mean()),
        "voice_crossing": float(crossed[several].mean()) if several.any() else 0.0,
        "n": n,
    }


def compare(generated_rolls, reference_rolls) -> dict:
    """Both sets' music_stats ("generated", "reference") and how they differ:
    pitch_class_distance, the total variation 1/2 sum |h_gen - h_ref| between the pitch-class
    histograms (0 = same, 1 = disjoint); in_key_gap, |in_key_gen - in_key_ref| in percentage points."""
    generated, reference = music_stats(generated_rolls), music_stats(reference_rolls)
    return {
        "generated": generated,
        "reference": reference,
        "pitch_class_distance": float(
            np.abs(generated["pitch_class_hist"] - reference["pitch_class_hist"]).sum() / 2
        ),
        "in_key_gap": abs(generated["in_key"] - reference["in_key"]) * 100,
    }


def shuffled_baseline(rolls, seed: int) -> np.ndarray:
    """rolls [n, V, P, S] with each roll's pitch rows permuted at random (one permutation per roll,
    the same for its voices): the rhythm, polyphony and number of cells stay, key and ranges go.
    Deterministic given the seed."""
    rolls = np.asarray(rolls)
    _check_rolls(rolls)
    rng = np.random.default_rng(seed)
    out = np.empty_like(rolls)
    for i, roll in enumerate(rolls):
        out[i] = roll[:, rng.permutation(roll.shape[1])]
    return out


def format_music_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per named set. Each value is a music_stats dict or a compare
    dict (whose "generated" stats are shown, with its pitch-class distance; "-" otherwise)."""
    head = ["set", "in key %", "pitch-class distance", "polyphony", "empty %"] + [f"{v} mean" for v in VOICES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        stats = row.get("generated", row)
        distance = f"{row['pitch_class_distance']:.3f}" if "pitch_class_distance" in row else "-"
        cells = [
            name,
            f"{100 * stats['in_key']:.1f}",
            distance,
            f"{stats['polyphony']:.2f}",
            f"{100 * stats['empty']:.1f}",
        ] + [f"{stats['range'][v][0]:.1f}" for v in VOICES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

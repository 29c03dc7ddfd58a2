"""Bach's four-part chorales as piano rolls: four voices, 64 pitches, 64 sixteenths (4 bars of 4/4).

The scores are the chorales in music21's corpus (Cuthbert and Ariza, "music21: A Toolkit for
Computer-Aided Musicology and Symbolic Music Data", ISMIR 2010), the same harmonisations that
Boulanger-Lewandowski, Bengio and Vincent ("Modeling Temporal Dependencies in High-Dimensional
Sequences", ICML 2012) and Hadjeres, Pachet and Nielsen ("DeepBach", ICML 2017) model. A score is
kept when it has exactly four parts (soprano, alto, tenor, bass, top to bottom) and every time
signature in it is 4/4. Its key is music21's Krumhansl-Schmuckler estimate (`analyze("key")`),
and it is transposed by at most a tritone so that a major key lands on C major and a minor key
on A minor.

A roll is uint8 [4, PITCHES, STEPS]: roll[v, p, t] = 1 where voice v sounds MIDI pitch LOW + p
during sixteenth t. Onsets and ends are rounded to the sixteenth grid (a note shorter than a
sixteenth keeps one cell). A held note is a run of ones, and so are two repeated notes of the
same pitch: the roll does not tell them apart (roll_to_notes reads every run as one note).
Windows are 4 bars long with a hop of 2 bars, at offsets 0, 8, 16, ... quarter lengths from the
start of the score (a pickup bar is not treated specially, and repeats are not expanded); a
window that runs past the end of the score, or that holds a pitch outside MIDI LOW..LOW+63,
is dropped. The split is by chorale: of the kept chorales in sorted file order, every tenth,
starting with the first, is test; a window of a test chorale never appears in train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodiffusion.data.files import read_array, write_atomically
from nanodiffusion.errors import NanodiffError

VOICES = ("soprano", "alto", "tenor", "bass")
LOW = 30  # MIDI pitch of roll row 0
PITCHES = 64  # rows: MIDI 30..93
STEPS = 64  # 4 bars of 4/4 on a sixteenth-note grid
STEPS_PER_QUARTER = 4
WINDOW_QUARTERS = STEPS // STEPS_PER_QUARTER  # 16: four bars
HOP_QUARTERS = 8  # two bars
TEST_EVERY = 10  # every tenth chorale file (sorted) is test
SPLITS = ("train", "test", "all")
_SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")  # scores; the .rntxt files are analyses

Note = tuple[int, int, int, int]  # (voice, MIDI pitch, start step, length in steps)


def _music21():
    try:
        import music21
    except ImportError:
        raise NanodiffError("the chorales need music21: pip install music21") from None
    return music21


def chorale_files(limit: int | None = None) -> list[Path]:
    """The Bach scores of music21's corpus in sorted file order (the first `limit` of them)."""
    music21 = _music21()
    paths = sorted(
        (Path(p) for p in music21.corpus.getComposer("bach") if Path(p).suffix in _SCORE_SUFFIXES),
        key=lambda p: p.name,
    )
    return paths[:limit] if limit is not None else paths


def _key_name(key) -> str:
    return f"{key.tonic.name.replace('-', 'b').lower()} {key.mode}"


def _score_notes(score) -> tuple[list[Note], float, str] | None:
    """A 4/4 four-part score's notes transposed to C major / A minor (on a sixteenth grid, steps
    from the start of the score), its length in quarters and its key caption; None if not kept."""
    if len(score.parts) != 4:
        return None
    signatures = list(score.recurse().getElementsByClass("TimeSignature"))
    if not signatures or any(ts.ratioString != "4/4" for ts in signatures):
        return None
    key = score.analyze("key")
    if key.mode not in ("major", "minor"):
        return None
    target = 0 if key.mode == "major" else 9  # C, A
    shift = (target - key.tonic.pitchClass) % 12
    shift = shift - 12 if shift > 6 else shift  # the nearer way: at most a tritone
    caption_key = _key_name(key)
    if shift:
        caption_key += f" transposed to {'c major' if key.mode == 'major' else 'a minor'}"
    notes = []
    for voice, part in enumerate(score.parts):
        for element in part.flatten().notes:
            length = float(element.quarterLength)
            if length <= 0:  # a grace note takes no time
                continue
            start = round(float(element.offset) * STEPS_PER_QUARTER)
            end = max(round((float(element.offset) + length) * STEPS_PER_QUARTER), start + 1)
            for pitch in element.pitches:
                notes.append((voice, pitch.midi + shift, start, end - start))
    return notes, float(score.highestTime), caption_key


def _windows(notes: list[Note], quarters: float) -> list[tuple[int, np.ndarray]]:
    """(first bar, roll) of each 4-bar window, hop 2 bars, that ends within the score and whose
    pitches all fit the roll."""
    out = []
    for start_q in range(0, int(quarters) - WINDOW_QUARTERS + 1, HOP_QUARTERS):
        first, last = start_q * STEPS_PER_QUARTER, (start_q + WINDOW_QUARTERS) * STEPS_PER_QUARTER
        inside = [
            (v, p, max(s, first) - first, min(s + n, last) - max(s, first))
            for v, p, s, n in notes
            if s < last and s + n > first
        ]
        if all(LOW <= p < LOW + PITCHES for _, p, _, _ in inside):
            out.append((start_q // 4, notes_to_roll(inside)))
    return out


def parse_chorales(paths: list[Path], progress: bool = True) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The windows of the chorale files `paths` (sorted corpus order: the i-th kept chorale is test
    when i % TEST_EVERY == 0), as {"train": (rolls, captions), "test": (rolls, captions)}."""
    music21 = _music21()
    found = {"train": ([], []), "test": ([], [])}
    kept = 0
    for path in tqdm(paths, disable=not progress, desc="chorales", leave=False):
        try:
            score = music21.converter.parse(path)
        except Exception as e:  # music21 raises many types on a score it cannot read
            raise NanodiffError(f"cannot parse the chorale {path}: {' '.join(str(e).split())}") from None
        if not hasattr(score, "parts"):  # an Opus of several pieces: not one chorale
            continue
        parsed = _score_notes(score)
        if parsed is None:
            continue
        notes, quarters, key = parsed
        rolls, captions = found["test" if kept % TEST_EVERY == 0 else "train"]
        kept += 1
        for bar, roll in _windows(notes, quarters):
            rolls.append(roll)
            captions.append(f"chorale {path.stem} bars {bar + 1}-{bar + 4}, {key}")
    return {
        split: (np.stack(rolls) if rolls else np.zeros((0, 4, PITCHES, STEPS), np.uint8), captions)
        for split, (rolls, captions) in found.items()
    }


def load_chorales(
    split: str, cache_dir: str | Path | None = None, limit: int | None = None, progress: bool = True
) -> tuple[np.ndarray, list[str]]:
    """A split's ("train", "test" or "all") chorale windows as uint8 rolls [N, 4, PITCHES, STEPS]
    and one caption each ("chorale bwv66.6 bars 1-4, f# minor transposed to a minor").

    `limit` reads only the first `limit` corpus files. Both splits are parsed together once (80 s on one
    core the first time, 38 s once music21 has pickled the parsed scores into its temporary
    folder, for the corpus's 433 Bach files, 327 chorales give windows: 1584 train windows from
    294 chorales, 189 test windows from 33) and cached as <cache root>/chorales/chorales-{split}.npz
    (chorales-{split}-first{limit}.npz with a limit)."""
    if split not in SPLITS:
        raise NanodiffError(f"unknown split {split!r}: use train, test or all")
    if limit is not None and limit < 1:
        raise NanodiffError(f"limit must be at least 1, got {limit}")
    if split == "all":
        a, b = (load_chorales(s, cache_dir, limit, progress) for s in ("train", "test"))
        return np.concatenate([a[0], b[0]]), a[1] + b[1]
    from nanodiffusion.data.files import cache_root

    folder = cache_root(cache_dir) / "chorales"
    suffix = "" if limit is None else f"-first{limit}"
    path = folder / f"chorales-{split}{suffix}.npz"
    if not path.is_file():
        parsed = parse_chorales(chorale_files(limit), progress)
        for name, (rolls, captions) in parsed.items():
            write_atomically(
                folder / f"chorales-{name}{suffix}.npz",
                lambda tmp, r=rolls, c=captions: np.savez_compressed(tmp, rolls=r, captions=np.array(c)),
            )
    arrays = read_array(path)
    if {"rolls", "captions"} - set(arrays):
        raise NanodiffError(f"{path} is not a chorales cache (it lacks rolls or captions): delete it")
    return arrays["rolls"], [str(c) for c in arrays["captions"]]


def roll_to_notes(roll: np.ndarray) -> list[Note]:
    """The notes of a roll [V, P, S]: each run of ones in one voice's pitch row is one note
    (voice, MIDI pitch, start step, length in steps), sorted by voice, start, pitch."""
    roll = np.asarray(roll)
    if roll.ndim != 3:
        raise NanodiffError(f"expected a roll [voices, pitches, steps], got shape {list(roll.shape)}")
    on = np.pad(roll != 0, ((0, 0), (0, 0), (1, 1))).astype(np.int8)
    change = np.diff(on, axis=2)  # +1 at a run's first step, -1 just after its last
    starts, ends = np.argwhere(change == 1), np.argwhere(change == -1)  # both in (v, p, t) order
    notes = [
        (int(v), int(p) + LOW, int(t), int(e - t)) for (v, p, t), (_, _, e) in zip(starts, ends, strict=True)
    ]
    return sorted(notes, key=lambda n: (n[0], n[2], n[1], n[3]))


def notes_to_roll(notes, steps: int = STEPS, voices: int = 4) -> np.ndarray:
    """A uint8 roll [voices, PITCHES, steps] with ones over each note (voice, MIDI pitch, start
    step, length) clipped to the steps; a pitch outside LOW..LOW+PITCHES-1 is refused."""
    roll = np.zeros((voices, PITCHES, steps), np.uint8)
    for voice, pitch, start, length in notes:
        if not LOW <= pitch < LOW + PITCHES:
            raise NanodiffError(f"pitch {pitch} is outside the roll's MIDI {LOW}..{LOW + PITCHES - 1}")
        if not 0 <= voice < voices:
            raise NanodiffError(f"voice {voice} is outside 0..{voices - 1}")
        roll[voice, pitch - LOW, max(start, 0) : max(start + length, 0)] = 1
    return roll


def binarize(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A generated roll (or batch) in [-1, 1] -> uint8: 1 where x > 0."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return (np.asarray(x) > 0).astype(np.uint8)

"""Bach chorales as piano rolls (data.chorales), MIDI files and sound (io.midi), the music judges
(metrics.music)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanodiffusion.data.chorales import (
    LOW,
    PITCHES,
    STEPS,
    _windows,
    binarize,
    load_chorales,
    notes_to_roll,
    roll_to_notes,
)
from nanodiffusion.io.midi import TICKS_PER_QUARTER, _vlq, read_midi, render_wav, write_midi
from nanodiffusion.metrics.music import compare, format_music_table, music_stats, shuffled_baseline
from one_line import error_of

pytest.importorskip("music21")


def _random_roll(seed: int, steps: int = STEPS, density: float = 0.3) -> np.ndarray:
    """Random cells [4, PITCHES, steps]: runs of many lengths, some touching the edges."""
    rng = np.random.default_rng(seed)
    return (rng.random((4, PITCHES, steps)) < density).astype(np.uint8)


def _chord(pitches, steps=STEPS) -> np.ndarray:
    """One roll [1, 4, P, S]: voice v holds pitches[v] for all steps."""
    return notes_to_roll([(v, p, 0, steps) for v, p in enumerate(pitches)], steps)[None]


def test_roll_notes_round_trip():
    roll = _random_roll(0)
    notes = roll_to_notes(roll)
    assert np.array_equal(notes_to_roll(notes), roll)
    assert sum(n[3] for n in notes) == roll.sum()
    hand = [(0, 72, 0, 4), (0, 72, 6, 2), (3, 40, 60, 4), (1, 93, 0, 64), (2, LOW, 10, 1)]
    assert roll_to_notes(notes_to_roll(hand)) == sorted(hand, key=lambda n: (n[0], n[2], n[1], n[3]))
    # a repeated note is a held note: two touching runs read as one
    assert roll_to_notes(notes_to_roll([(0, 60, 0, 2), (0, 60, 2, 2)])) == [(0, 60, 0, 4)]
    error_of(notes_to_roll, [(0, LOW - 1, 0, 1)])


def test_binarize():
    x = torch.tensor([[-1.0, -0.01, 0.0, 0.01, 1.0]])
    assert binarize(x).tolist() == [[0, 0, 0, 1, 1]] and binarize(x).dtype == np.uint8
    assert np.array_equal(binarize(x.numpy()), binarize(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_midi_round_trip_random_rolls(tmp_path, seed):
    roll = _random_roll(seed)
    path = write_midi(roll, tmp_path / "roll.mid")
    assert path.read_bytes()[:4] == b"MThd"
    assert read_midi(path) == roll_to_notes(roll)


def test_midi_round_trip_empty_voice_and_tempo(tmp_path):
    roll = _random_roll(3)
    roll[1] = 0  # a silent alto keeps its track: the tenor stays voice 2
    write_midi(roll, tmp_path / "a.mid", bpm=60)
    assert read_midi(tmp_path / "a.mid") == roll_to_notes(roll)
    data = (tmp_path / "a.mid").read_bytes()
    assert data[8:14] == bytes([0, 1, 0, 5]) + TICKS_PER_QUARTER.to_bytes(2, "big")  # format 1, 5 tracks
    assert b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big") in data  # 60 bpm: a second per quarter


def test_midi_reads_running_status_and_velocity_zero(tmp_path):
    """A hand-made format-0 file as other programs write them: running status, note-on of velocity
    0 as note-off, a text meta event, ticks per quarter 96 (a sixteenth is 24 ticks)."""
    events = (
        b"\x00\xff\x01\x02hi"  # text
        + b"\x00\x90\x3c\x40"  # C4 on
        + b"\x00\xff\x01\x01x"  # a meta event between: running status survives it
        + b"\x00\x40\x40"  # running status: E4 on
        + _vlq(48)
        + b"\x3c\x00"  # C4 off (velocity 0) after two sixteenths
        + _vlq(48)
        + b"\x40\x00"  # E4 off after four
        + b"\x00\xc0\x05"  # program change (one data byte)
        + b"\x00\x91\x43\x40"  # G4 on, channel 1
        + _vlq(24)
        + b"\x81\x43\x00"  # note-off
        + b"\x00\xff\x2f\x00"
    )
    data = (
        b"MThd" + bytes([0, 0, 0, 6, 0, 0, 0, 1, 0, 96]) + b"MTrk" + len(events).to_bytes(4, "big") + events
    )
    (tmp_path / "other.mid").write_bytes(data)
    assert read_midi(tmp_path / "other.mid") == [(0, 60, 0, 2), (0, 64, 0, 4), (0, 67, 4, 1)]


def test_malformed_midi_is_one_line(tmp_path):
    good = write_midi(_random_roll(4), tmp_path / "good.mid").read_bytes()
    cases = {
        "garbage.mid": (b"RIFF" + bytes(range(60)), "not a MIDI file"),
        "empty.mid": (b"", "empty"),
        "header.mid": (good[:10], "truncated"),
        "cut.mid": (good[: len(good) // 2], "truncated"),
        "notracks.mid": (b"MThd" + bytes([0, 0, 0, 6, 0, 1, 0, 0, 1, 0xE0]), "no tracks"),
        "midevent.mid": (
            b"MThd" + bytes([0, 0, 0, 6, 0, 0, 0, 1, 0, 96]) + b"MTrk\x00\x00\x00\x02\x00\x90",
            "truncated",
        ),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        message = error_of(read_midi, tmp_path / name)
        assert name in message and words in message, message
    assert "missing.mid" in error_of(read_midi, tmp_path / "missing.mid")


def test_render_wav_length_peak_and_pitch():
    # length: steps * (15 / bpm s a sixteenth) * rate = 64 * 1/6 * 16000
    roll = _random_roll(5, density=0.02)
    assert render_wav(roll).shape == (round(64 * 15 / 90 * 16000),)
    assert render_wav(roll[:, :, :7], 8000, 120).shape == (round(7 * 15 / 120 * 8000),)
    wave = render_wav(roll)
    assert wave.dtype == np.float32 and np.abs(wave).max() == pytest.approx(0.9, abs=1e-6)
    assert not render_wav(np.zeros((4, PITCHES, 8), np.uint8)).any()
    for pitch in (57, 69, 81):
        roll = notes_to_roll([(2, pitch, 0, STEPS)])
        wave = render_wav(roll, sample_rate=16000)
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / 16000)[spectrum.argmax()]
        assert peak == pytest.approx(440 * 2 ** ((pitch - 69) / 12), abs=2)


def test_music_stats_exact_numbers():
    triad = music_stats(_chord([79, 72, 64, 48]))  # G5 C5 E4 C3: C major, no crossing
    assert triad["in_key"] == 1.0 and triad["polyphony"] == 4.0 and triad["empty"] == 0.0
    assert triad["voice_crossing"] == 0.0 and triad["notes_per_bar"] == 1.0  # 4 notes over 4 bars
    assert np.allclose(triad["pitch_class_hist"][[0, 4, 7]], [0.5, 0.25, 0.25])
    assert triad["range"]["soprano"] == (79.0, 79.0, 79.0)
    cluster = notes_to_roll([(v, 60 + 3 * v + k, 0, 8) for v in range(4) for k in range(3)])[None]
    stats = music_stats(cluster)  # 12 notes, one per pitch class: 8 of them in key (C D E F G G# A B)
    assert stats["in_key"] == pytest.approx(8 / 12) and np.allclose(stats["pitch_class_hist"], 1 / 12)
    assert stats["empty"] == pytest.approx(56 / 64) and stats["polyphony"] == pytest.approx(4 * 8 / 64)
    crossed = music_stats(_chord([60, 67, 55, 48]))  # the alto above the soprano at every step
    assert crossed["voice_crossing"] == 1.0
    half = notes_to_roll([(0, 60, 0, 32), (1, 55, 0, 64)])[None]  # soprano silent from step 32
    assert music_stats(half)["polyphony"] == pytest.approx(1.5) and music_stats(half)["voice_crossing"] == 0.0


def test_compare_and_table():
    c_major, f_sharp = _chord([79, 72, 64, 48]), _chord([78, 73, 69, 54])  # F# C# A F#: 1 of 4 in key
    result = compare(f_sharp, c_major)
    assert result["pitch_class_distance"] == pytest.approx(1.0)  # no pitch class in common
    assert result["in_key_gap"] == pytest.approx(100 * (1 - 1 / 4))
    assert compare(c_major, c_major)["pitch_class_distance"] == 0.0
    table = format_music_table({"real": music_stats(c_major), "f sharp": result})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| real | 100.0 | - | 4.00 | 0.0 | 79.0")
    assert lines[3].startswith("| f sharp | 25.0 | 1.000 |")


def test_shuffled_baseline():
    rolls = np.stack([_random_roll(s) for s in range(3)])
    a, b, c = shuffled_baseline(rolls, 0), shuffled_baseline(rolls, 0), shuffled_baseline(rolls, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.sum((1, 2, 3)).tolist() == rolls.sum((1, 2, 3)).tolist()
    assert np.array_equal(a.any(2), rolls.any(2))  # each voice sounds at the same steps


def test_windows_drop_the_end_and_out_of_range_pitches():
    notes = [(0, 72, 0, 4 * 20), (3, 48, 0, 4 * 20)]  # 20 quarters: one whole window (0-16), 8-24 runs past
    assert [bar for bar, _ in _windows(notes, 20.0)] == [0]
    low = notes + [(3, LOW - 1, 4 * 12, 4)]  # too low in quarters 12-13: both windows would hold it
    assert _windows(low, 24.0) == []
    assert [bar for bar, _ in _windows(notes + [(3, LOW - 1, 4 * 4, 4)], 24.0)] == [
        2
    ]  # only window 0 holds it
    (_, roll), _ = _windows(notes, 24.0)
    assert np.array_equal(roll, notes_to_roll([(0, 72, 0, 64), (3, 48, 0, 64)]))


def test_load_a_few_chorales(tmp_path):
    train, train_captions = load_chorales("train", tmp_path, limit=4, progress=False)
    test, test_captions = load_chorales("test", tmp_path, limit=4, progress=False)
    assert train.shape[1:] == test.shape[1:] == (4, PITCHES, STEPS) and train.dtype == np.uint8
    assert len(train) == len(train_captions) > 0 and len(test) == len(test_captions) > 0
    assert {c.split()[1] for c in train_captions}.isdisjoint({c.split()[1] for c in test_captions})
    assert test_captions[0] == "chorale bwv10.7 bars 1-4, g minor transposed to a minor"
    assert (tmp_path / "chorales" / "chorales-train-first4.npz").is_file()
    cached = load_chorales("train", tmp_path, limit=4, progress=False)
    assert np.array_equal(cached[0], train) and cached[1] == train_captions
    write_midi(test[0], tmp_path / "window.mid")  # a real window survives MIDI exactly
    assert read_midi(tmp_path / "window.mid") == roll_to_notes(test[0])
    error_of(load_chorales, "valid", tmp_path)


@pytest.mark.slow
def test_load_chorales_splits(tmp_path):
    train, train_captions = load_chorales("train", tmp_path, limit=12, progress=False)
    test, test_captions = load_chorales("test", tmp_path, limit=12, progress=False)
    assert train.shape[1:] == test.shape[1:] == (4, PITCHES, STEPS) and train.dtype == np.uint8
    assert len(train) == len(train_captions) > 20 and len(test) == len(test_captions) > 0
    chorale = {
        split: {c.split()[1] for c in captions}
        for split, captions in [("train", train_captions), ("test", test_captions)]
    }
    assert chorale["train"].isdisjoint(chorale["test"])
    assert all(" bars " in c and ("c major" in c or "a minor" in c) for c in train_captions)
    cached = load_chorales("train", tmp_path, limit=12, progress=False)
    assert np.array_equal(cached[0], train) and cached[1] == train_captions
    everything = load_chorales("all", tmp_path, limit=12, progress=False)
    assert len(everything[0]) == len(train) + len(test)
    real = music_stats(train)
    shuffled = music_stats(shuffled_baseline(train, 0))
    assert real["in_key"] >= 0.9 and shuffled["in_key"] < real["in_key"] - 0.15
    assert shuffled["polyphony"] == real["polyphony"]
    assert compare(shuffled_baseline(train, 0), train)["pitch_class_distance"] > 0.2
    assert 3.5 < real["polyphony"] <= 4 and real["voice_crossing"] < 0.05
    means = [real["range"][v][0] for v in ("soprano", "alto", "tenor", "bass")]
    assert means == sorted(means, reverse=True)

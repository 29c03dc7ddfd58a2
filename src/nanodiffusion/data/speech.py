"""Spoken words synthesised offline with espeak-ng: a Speech Commands-style set (Warden 2018).

No recorded speech corpus installs offline, so the words are spoken by espeak-ng (its library and
voice data ship in the PyPI package ``espeakng-loader``), driven through ctypes. Thirty words (the
ten digits and twenty of Speech Commands' command and filler words), each clip one second at
16 kHz: the word at a seeded place, a seeded speaking rate, pitch and pitch range, peak-normalised
and with a little white noise (40 to 30 dB below the peak).

A *voice* is an espeak-ng accent (``en``, ``en-us``, ``en-gb-scotland``, ...) with a voice
variant (``m3``, ``f2``, ``klatt``, ...). The split is by variant: the test voices' variants are
never heard in training, whatever their accent.

espeak-ng keeps state between calls (its glottal source's phase): the same word twice in one
process differs by a few samples. So every synthesis runs in a fresh process over its whole list
of clips in order; the same list then gives the same waveforms, bit for bit. The variants that
differ even so between processes (breathy and whispering ones: f2, f3, f5, Alicia, Demonic, sandro,
victor, whisper, whisperf; found by synthesising every variant twice) are not used.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanodiffusion.errors import NanodiffError

SAMPLE_RATE = 16000
CLIP = SAMPLE_RATE  # samples a clip: one second
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "learn", "follow",
)  # fmt: skip
WORDS = DIGITS + COMMANDS
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029")
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "f1", "f4", "Andrea", "aunty", "klatt", "klatt2", "klatt3",
    "Alex", "Andy", "Annie", "adam", "anika", "antonio", "belinda", "benjamin", "boris", "david",
    "ed", "edward", "grandma", "grandpa", "john", "linda", "max", "michel", "norbert", "quincy",
    "robert", "steph", "travis", "Denis", "Lee",
)  # fmt: skip
TEST_VARIANTS = ("m7", "shelby", "klatt4", "iven", "rob", "Mike")
VARIANTS = {"train": TRAIN_VARIANTS, "test": TEST_VARIANTS}
ESPEAK_RATE = 22050  # espeak-ng's output sample rate


@dataclass(frozen=True)
class Clip:
    """What one clip is: the word (its index in WORDS), the voice, and the seed of its rate, pitch,
    place and noise."""

    word: int
    accent: str
    variant: str
    seed: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def clips(split: str, renditions: int = 1) -> list[Clip]:
    """Every clip of a split: each word by each voice (accent x variant of the split), `renditions`
    times, in variant order; seeds differ between the splits."""
    if split not in VARIANTS:
        raise NanodiffError(f"unknown speech split {split!r}: use train or test")
    first = 0 if split == "train" else 10**6
    out = []
    for v in VARIANTS[split]:
        for a in ACCENTS:
            for w in range(len(WORDS)):
                for _ in range(renditions):
                    out.append(Clip(w, a, v, first + len(out)))
    return out


def synthesise(specs: list[Clip], progress: bool = False, workers: int | None = None) -> np.ndarray:
    """The clips' waveforms, float32 [N, CLIP] in [-1, 1]. The list is cut into runs of one voice
    variant (at most 150 clips), each made in a fresh process (see the module's docstring), so the
    same list gives the same waveforms whatever the number of worker processes (default: the
    cores, at most 4)."""
    if not specs:
        return np.zeros((0, CLIP), np.float32)
    _check_espeak()
    chunks, start = [], 0
    for i in range(1, len(specs) + 1):
        if i == len(specs) or specs[i].variant != specs[start].variant or i - start == 150:
            chunks.append(specs[start:i])
            start = i
    workers = workers or min(4, os.cpu_count() or 1, len(chunks))
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    with (
        context.Pool(workers, maxtasksperchild=1) as pool,
        tqdm(total=len(specs), desc="speaking", leave=False, disable=not progress) as bar,
    ):
        parts = []
        for part in pool.imap(_synthesise_here, chunks):
            parts.append(part)
            bar.update(len(part))
    return np.concatenate(parts)


def _check_espeak() -> None:
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        raise NanodiffError(
            "the spoken words are synthesised by espeak-ng: pip install espeakng-loader "
            "(or the audio extra: pip install -e '.[audio]')"
        ) from None


class _Espeak:
    """espeak-ng's C API (speak_lib.h) through ctypes, in retrieval mode: samples come back through
    a callback instead of going to a sound card."""

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )

        def on_samples(wav, n, events):
            if n > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback(on_samples)  # kept: the library holds a pointer to it
        rate = self.lib.espeak_Initialize(1, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise NanodiffError(f"espeak-ng did not start (it answered {rate}, not {ESPEAK_RATE} Hz)")
        self.lib.espeak_SetSynthCallback(self._callback)

    def say(self, text: str, voice: str, wpm: int, pitch: int, pitch_range: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise NanodiffError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((1, wpm), (3, pitch), (4, pitch_range)):  # espeakRATE, PITCH, RANGE
            self.lib.espeak_SetParameter(parameter, value, 0)
        self.chunks.clear()
        data = text.encode()
        self.lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, 0, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if not self.chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self.chunks).astype(np.float32) / 32768


def _synthesise_here(specs: list[Clip]) -> np.ndarray:
    from scipy.signal import resample_poly

    speaker = _Espeak()
    out = np.zeros((len(specs), CLIP), np.float32)
    for i, c in enumerate(specs):
        rng = np.random.default_rng(c.seed)
        wpm, pitch, spread = int(rng.integers(130, 221)), int(rng.integers(25, 76)), int(rng.integers(20, 81))
        wave = speaker.say(WORDS[c.word], c.voice, wpm, pitch, spread)
        wave = resample_poly(wave, SAMPLE_RATE // 50, ESPEAK_RATE // 50)  # 22,050 Hz to 16,000 Hz
        wave = _trim(wave)[:CLIP]
        if not len(wave):
            raise NanodiffError(f"espeak-ng said nothing for {WORDS[c.word]!r} in voice {c.voice}")
        start = int(rng.integers(0, CLIP - len(wave) + 1))
        out[i, start : start + len(wave)] = wave / max(np.abs(wave).max(), 1e-6) * rng.uniform(0.5, 0.9)
        out[i] += rng.normal(0, 1, CLIP).astype(np.float32) * 10 ** (-rng.uniform(30, 40) / 20)
    return np.clip(out, -1, 1)


def _trim(wave: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """The waveform without its leading and trailing silence (below `floor` of the peak)."""
    loud = np.flatnonzero(np.abs(wave) > floor * max(np.abs(wave).max(), 1e-9))
    return wave[loud[0] : loud[-1] + 1] if len(loud) else wave[:0]


def load_speech(split: str, cache_dir: str | Path | None = None, progress: bool = True):
    """A split's waveforms (float32 [N, CLIP]), word labels [N] and captions (the words),
    synthesised once (train: 5,700 clips, 130 s on one core) and cached as .npz (int16)."""
    from nanodiffusion.data.files import cache_root, read_array, write_atomically

    if split == "all":
        parts = [load_speech(s, cache_dir, progress) for s in ("train", "test")]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            sum((p[2] for p in parts), []),
        )
    specs = clips(split)
    path = cache_root(cache_dir) / "speech" / f"speech-{split}-{len(specs)}.npz"
    if path.is_file():
        arrays = read_array(path)
        if {"waves", "labels"} - set(arrays):
            raise NanodiffError(f"{path} is not a speech cache (it lacks waves or labels): delete it")
        waves, labels = arrays["waves"].astype(np.float32) / 32767, arrays["labels"].astype(np.int64)
    else:
        waves = synthesise(specs, progress)
        labels = np.array([c.word for c in specs], np.int64)
        pcm = np.round(waves * 32767).astype(np.int16)
        voices = np.array([c.voice for c in specs])
        write_atomically(path, lambda tmp: np.savez(tmp, waves=pcm, labels=labels, voices=voices))
        waves = pcm.astype(np.float32) / 32767  # what the cache gives back, so both paths agree
    return waves, labels, [WORDS[i] for i in labels]

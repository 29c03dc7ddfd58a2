"""Training of the spoken-word judge (metrics.speech.WordClassifier), cached once.

Trained on the train voices of data.speech, augmented (see train_word_classifier), plus a quarter
more clips that hold no word (white noise of a random level, and real clips whose spectrogram
frames are shuffled): NO_WORD. Measured accuracy on the
held-out voices: see ``word_classifier`` (tests/test_audio.py checks >= 95%).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nanodiffusion.data.audio import DB_HIGH, DB_LOW
from nanodiffusion.data.datasets import cache_root
from nanodiffusion.data.speech import SAMPLE_RATE, WORDS, load_speech
from nanodiffusion.metrics.speech import WordClassifier
from nanodiffusion.training.classifier import cached_net, fit_classifier


def train_word_classifier(
    waves: torch.Tensor, labels: torch.Tensor, steps: int = 800, batch_size: int = 64, seed: int = 0,
    progress: bool = True,
) -> WordClassifier:  # fmt: skip
    """A WordClassifier trained by cross-entropy on waves [N, T] (AdamW, 10% warm-up, cosine decay);
    KeyboardInterrupt on Ctrl-C, so a half-trained net is never cached.

    The spectrograms are computed once; the augmentations act on them: a circular shift in time
    (up to 12 frames, 0.19 s), a gain (-12 to +3 dB), a shift of up to 3 mel bands (other voices'
    pitch and formants), and SpecAugment's masks (Park et al. 2019: up to 8 bands and 8 frames set to
    silence)."""
    with torch.random.fork_rng():  # seeded initial weights; the caller's RNG does not move
        torch.manual_seed(seed)
        net = WordClassifier(len(WORDS), SAMPLE_RATE)
    g = torch.Generator().manual_seed(seed)
    specs = torch.cat([net.spectrogram(chunk) for chunk in waves.split(512)])  # [N, 1, M, F]
    n, (M, Fr), T = len(specs), specs.shape[-2:], waves.shape[-1]
    k = batch_size // 4
    scale = 2 / (DB_HIGH - DB_LOW)  # decibels in spectrogram units

    def step_fn(step: int, micro: int) -> torch.Tensor:
        idx = torch.randint(n, (batch_size,), generator=g)
        shifts = torch.randint(-12, 13, (batch_size, 2), generator=g)
        shifts[:, 1] = torch.randint(-3, 4, (batch_size,), generator=g)
        x = torch.stack(
            [s.roll((int(b), int(t)), (-2, -1)) for s, (t, b) in zip(specs[idx], shifts, strict=True)]
        )
        x = x + torch.empty(batch_size, 1, 1, 1).uniform_(-12, 3, generator=g) * scale
        band = torch.arange(M)[None, :, None]
        frame = torch.arange(Fr)[None, None, :]
        b0, bw = (
            torch.randint(0, M, (batch_size, 1, 1), generator=g),
            torch.randint(0, 9, (batch_size, 1, 1), generator=g),
        )
        f0, fw = (
            torch.randint(0, Fr, (batch_size, 1, 1), generator=g),
            torch.randint(0, 9, (batch_size, 1, 1), generator=g),
        )
        masked = ((band >= b0) & (band < b0 + bw)) | ((frame >= f0) & (frame < f0 + fw))
        x = torch.where(masked[:, None], torch.tensor(-1.0), x).clamp(-1, 1)
        noise = torch.randn(k // 2, T, generator=g) * 10 ** torch.empty(k // 2, 1).uniform_(
            -3, -0.5, generator=g
        )
        real = x[: k - k // 2]
        order = torch.rand(len(real), Fr, generator=g).argsort(1)
        shuffled = torch.stack([r[..., o] for r, o in zip(real, order, strict=True)])
        inputs = torch.cat([x, net.spectrogram(noise), shuffled])
        y = torch.cat([labels[idx], torch.full((k,), len(WORDS))])
        return F.cross_entropy(net(inputs), y)

    return fit_classifier(net, step_fn, steps, batch_size, 3e-3, 0.1, g, progress, "word classifier")


def classifier_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "eval" / "speech-classifier-v1.pt"


def word_classifier(cache_dir: str | Path | None = None, progress: bool = True) -> WordClassifier:
    """The spoken-word judge: from the cache, else trained on the train voices and cached."""

    def train() -> WordClassifier:
        waves, labels, _ = load_speech("train", cache_dir, progress)
        return train_word_classifier(torch.from_numpy(waves), torch.from_numpy(labels), progress=progress)

    return cached_net(classifier_path(cache_dir), WordClassifier(len(WORDS), SAMPLE_RATE), train)

"""Training of the spoken-word judge (metrics.speech.WordClassifier), cached once.

Trained on the train voices of data.speech with a random circular shift of up to 0.2 s and a
random gain (-12 to +3 dB), plus a quarter more clips that hold no word (white noise of a random
level, and real clips whose spectrogram frames are shuffled): NO_WORD. Measured accuracy on the
held-out voices: see ``word_classifier`` (tests/test_audio.py checks >= 95%).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nanodiffusion.data.datasets import cache_root
from nanodiffusion.data.files import one_line, write_atomically
from nanodiffusion.data.speech import SAMPLE_RATE, WORDS, load_speech
from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.speech import WordClassifier
from nanodiffusion.training.classifier import fit_classifier


def train_word_classifier(
    waves: torch.Tensor, labels: torch.Tensor, steps: int = 1200, batch_size: int = 64, seed: int = 0,
    progress: bool = True,
) -> WordClassifier:  # fmt: skip
    """A WordClassifier trained by cross-entropy on waves [N, T] (AdamW, 10% warm-up, cosine decay);
    KeyboardInterrupt on Ctrl-C, so a half-trained net is never cached."""
    with torch.random.fork_rng():  # seeded initial weights; the caller's RNG does not move
        torch.manual_seed(seed)
        net = WordClassifier(len(WORDS), SAMPLE_RATE)
    g = torch.Generator().manual_seed(seed)
    n, T = waves.shape
    k = batch_size // 4

    def step_fn(step: int, micro: int) -> torch.Tensor:
        idx = torch.randint(n, (batch_size,), generator=g)
        shift = torch.randint(-SAMPLE_RATE // 5, SAMPLE_RATE // 5 + 1, (batch_size,), generator=g)
        x = torch.stack([w.roll(int(s)) for w, s in zip(waves[idx], shift, strict=True)])
        x = x * 10 ** (torch.empty(batch_size, 1).uniform_(-12, 3, generator=g) / 20)
        noise = torch.randn(k // 2, T, generator=g) * 10 ** torch.empty(k // 2, 1).uniform_(
            -3, -0.5, generator=g
        )
        spec = net.spectrogram(torch.cat([x.clamp(-1, 1), noise]))
        real = spec[: k - k // 2]
        frames = torch.rand(len(real), real.shape[-1], generator=g).argsort(1)
        shuffled = torch.stack([r[..., f] for r, f in zip(real, frames, strict=True)])
        y = torch.cat([labels[idx], torch.full((k,), len(WORDS))])
        return F.cross_entropy(net(torch.cat([spec, shuffled])), y)

    net = fit_classifier(net, step_fn, steps, batch_size, 3e-3, 0.1, g, progress, "word classifier")
    return net


def classifier_path(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "eval" / "speech-classifier-v1.pt"


def word_classifier(cache_dir: str | Path | None = None, progress: bool = True) -> WordClassifier:
    """The spoken-word judge: from the cache, else trained on the train voices and cached."""
    path = classifier_path(cache_dir)
    net = WordClassifier(len(WORDS), SAMPLE_RATE)
    if path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a truncated zip, a pickle error, wrong keys or shapes
            raise NanodiffError(
                f"cannot read the cached classifier {path}: {one_line(e)}; delete it"
            ) from None
        return net.eval()
    waves, labels, _ = load_speech("train", cache_dir, progress)
    net = train_word_classifier(torch.from_numpy(waves), torch.from_numpy(labels), progress=progress)
    write_atomically(path, lambda tmp: torch.save(net.state_dict(), tmp))
    return net.eval()

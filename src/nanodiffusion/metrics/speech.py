"""The spoken-word judge: a classifier that listens to a clip and names the word.

It hears waveforms, whatever the model generated (spectrograms are first made sound by
Griffin-Lim, so both representations are judged on what a listener would hear): the clip's
log-mel spectrogram (data.audio) goes through a small CNN (WordNet) with one
output per word and one more, NO_WORD, trained on noise and on clips whose frames are shuffled,
so that a clip of noise is not heard as a word. Its 128-d pooled activations are the features of
the Frechet distance (FAD-style: Kilgour et al. 2019, "Frechet Audio Distance", here on the
judge's features rather than VGGish's).

The spectrogram image is normalised to its loudest cell, so loudness does not decide the word.
"""

from __future__ import annotations

import torch
from torch import nn

from nanodiffusion.data.audio import mel_spectrogram
from nanodiffusion.metrics.fid import fid

FEATURES = 128


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )  # fmt: skip


class WordNet(nn.Module):
    """Four conv blocks (16, 32, 64, 128 channels), each but the last followed by 2 x 2 average
    pooling, and a linear head; the 128-d pooled activations are the features."""

    def __init__(self, outputs: int):
        super().__init__()
        pool = nn.AvgPool2d(2)
        self.body = nn.Sequential(
            _block(1, 16), pool, _block(16, 32), pool, _block(32, 64), pool, _block(64, FEATURES)
        )
        self.head = nn.Linear(FEATURES, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WordClassifier(nn.Module):
    def __init__(self, words: int, sample_rate: int = 16000):
        super().__init__()
        self.words, self.sample_rate = words, sample_rate
        self.net = WordNet(words + 1)  # the last output: no word

    def spectrogram(self, waves: torch.Tensor) -> torch.Tensor:
        """The judge's input: the clip's spectrogram image with its loudest cell at 1 (so the
        clip's loudness does not matter)."""
        x = mel_spectrogram(waves.reshape(len(waves), -1), self.sample_rate)[:, None]
        return x - x.amax((-2, -1), keepdim=True) + 1

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.net(spectrograms)

    @torch.no_grad()
    def hear(self, waves: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(the word heard in each clip of waves [N, T] or [N, 1, T], -1 for none; the features
        [N, 64])."""
        heard, features = [], []
        for chunk in waves.split(batch):
            f = self.net.features(self.spectrogram(chunk))
            k = self.net.head(f).argmax(1)
            heard.append(torch.where(k == self.words, -1, k))
            features.append(f)
        if not heard:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, FEATURES)
        return torch.cat(heard), torch.cat(features)


def judge_words(
    judge: WordClassifier, waves: torch.Tensor, labels: torch.Tensor, real_features: torch.Tensor
) -> dict:
    """How a set of generated clips of requested words `labels` is heard: the fraction heard as
    the requested word, the fraction heard as no word, and the Frechet distance of the judge's
    features to `real_features`."""
    heard, features = judge.hear(waves)
    return {
        "recognised": (heard == labels).float().mean().item(),
        "no_word": (heard == -1).float().mean().item(),
        "fad": fid(real_features, features),
        "n": len(waves),
    }

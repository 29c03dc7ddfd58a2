"""The spoken-word judge: a classifier that listens to a clip and names the word.

It hears waveforms, whatever the model generated (spectrograms are first made sound by
Griffin-Lim, so both representations are judged on what a listener would hear): the clip's
log-mel spectrogram (data.audio) goes through a small CNN (metrics.fid.SmallClassifier) with one
output per word and one more, NO_WORD, trained on noise and on clips whose frames are shuffled,
so that a clip of noise is not heard as a word. Its 64-d pooled activations are the features of
the Frechet distance (FAD-style: Kilgour et al. 2019, "Frechet Audio Distance", here on the
judge's features rather than VGGish's).
"""

from __future__ import annotations

import torch
from torch import nn

from nanodiffusion.data.audio import mel_spectrogram
from nanodiffusion.metrics.fid import SmallClassifier, fid


class WordClassifier(nn.Module):
    def __init__(self, words: int, sample_rate: int = 16000):
        super().__init__()
        self.words, self.sample_rate = words, sample_rate
        self.net = SmallClassifier(1, words + 1)  # the last output: no word

    def spectrogram(self, waves: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram(waves.reshape(len(waves), -1), self.sample_rate)[:, None]

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
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, 64)
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

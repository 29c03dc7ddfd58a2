"""The Moving MNIST judge: which digits each frame shows, whether they stay the same, a per-frame FID.

A FrameClassifier (training.video_judge trains and caches it) reads one 64x64 frame and says
which digit classes appear in it (multi-label, a sigmoid per class). A frame's reading is its two
most likely classes, sorted; when the second one's probability is below SECOND_DIGIT (0.2, chosen
on test videos: only a tenth of the videos show one class twice) the frame is read as one class
shown twice ([c, c]). A video keeps its identity when its most common pair is read in at least
KEEP (80%) of its frames: where the two digits overlap (about a tenth of real frames) even a good
reader errs, so asking every frame to agree (`identity_all_frames`) fails half the real videos.
`consistency`, the mean fraction of a video's frames that read its most common pair, is given
beside it as a smoother score.
frame_fid is the Frechet distance between the classifier's 64-d features of all frames of two
sets of videos (metrics.fid's formula).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.fid import fid

SECOND_DIGIT = 0.2  # below this sigmoid probability the second class is not read: one class twice
SURE = 0.5  # below this sigmoid probability of the most likely class a frame reads no digit
KEEP = 0.8  # a video keeps its digits' identity when its most common pair is read in this share of frames


class FrameClassifier(nn.Module):
    """A strided stem and three conv blocks on [B, 1, 64, 64] in [-1, 1] -> 10 multi-label logits;
    the 64-d activations max-pooled over the frame (is a digit anywhere?) are the features."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.SiLU(),
            )

        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1),  # 64 -> 32
            nn.BatchNorm2d(16),
            nn.SiLU(),
            block(16, 16),
            nn.AvgPool2d(2),  # 16
            block(16, 32),
            nn.AvgPool2d(2),  # 8
            block(32, 64),
        )
        self.head = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).amax((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def frames_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames [..., H, W] -> float [N, 1, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    return (x.reshape(-1, 1, *x.shape[-2:]).float() / 127.5 - 1).contiguous()


def multi_hot(labels: np.ndarray | torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Classes [N, k] -> multi-hot float [N, num_classes]."""
    y = torch.zeros(len(labels), num_classes)
    return y.scatter_(1, torch.as_tensor(np.asarray(labels), dtype=torch.int64), 1.0)


def _check_videos(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 4 or videos.shape[0] < 1 or videos.dtype != np.uint8:
        raise NanodiffError(f"expected uint8 videos [n, F, H, W], got {videos.dtype} {list(videos.shape)}")
    return videos


@torch.no_grad()
def _per_frame(classifier: nn.Module, videos: np.ndarray, fn, batch_size: int = 256) -> torch.Tensor:
    classifier = classifier.eval()
    frames = videos.reshape(-1, *videos.shape[2:])
    out = [
        fn(classifier, frames_input(frames[s : s + batch_size])) for s in range(0, len(frames), batch_size)
    ]
    return torch.cat(out)


def read_digits(classifier: nn.Module, videos: np.ndarray) -> np.ndarray:
    """The two digit classes read in each frame, int64 [n, F, 2], sorted; [c, c] when the second
    most likely class has a probability below SECOND_DIGIT; [-1, -1] (nothing read) when even the
    most likely one is below SURE: a frame of noise or scribbles shows no digit."""
    videos = _check_videos(videos)
    probs = _per_frame(classifier, videos, lambda net, x: net(x).sigmoid())
    top = probs.topk(2, dim=1)
    first, second = top.indices[:, 0], top.indices[:, 1]
    second = torch.where(top.values[:, 1] < SECOND_DIGIT, first, second)
    pairs = torch.stack([first, second], 1).sort(1).values
    pairs[top.values[:, 0] < SURE] = -1  # no digit shown clearly: nothing read
    return pairs.numpy().astype(np.int64).reshape(*videos.shape[:2], 2)


def judge_moving_mnist(classifier: nn.Module, videos: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Identity and digit accuracy of videos uint8 [n, F, H, W]. Returns
    identity: the fraction of videos whose most common pair of digits is read in at least KEEP
    (80%) of their frames (frames where the two digits overlap are often misread, so on the 1000
    real test videos every frame agrees in only 0.497 of them, while 0.908 reach KEEP and
    frame-shuffled videos none); identity_all_frames: the fraction whose frames all agree;
    per_frame_accuracy (with labels [n, 2]): the fraction of frames whose pair equals the labels';
    consistency: the mean over videos of the fraction of frames that read the video's most common
    pair; n; read: the pairs read [n, F, 2]; kept: bool [n], each video's identity kept;
    agreement: float [n], each video's fraction of frames reading its most common pair;
    correct (with labels): bool [n, F], each frame read right."""
    videos = _check_videos(videos)
    read = read_digits(classifier, videos)
    codes = np.where(read[..., 0] < 0, 100, read[..., 0] * 10 + read[..., 1])  # a pair 0..99, 100: nothing
    agreement = np.array([np.bincount(c, minlength=101)[:100].max() for c in codes]) / read.shape[1]
    kept = agreement >= KEEP
    result = {
        "identity": float(kept.mean()),
        "identity_all_frames": float((read == read[:, :1]).all(axis=(1, 2)).mean()),
        "consistency": float(agreement.mean()),
        "n": len(videos),
        "read": read,
        "kept": kept,
        "agreement": agreement,
    }
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(videos), 2):
            raise NanodiffError(f"labels must be [{len(videos)}, 2], got {list(labels.shape)}")
        correct = (read == np.sort(labels, axis=1)[:, None, :]).all(axis=2)
        result["per_frame_accuracy"] = float(correct.mean())
        result["correct"] = correct
    return result


def frame_features(classifier: nn.Module, videos: np.ndarray) -> torch.Tensor:
    """The classifier's features of every frame of every video, float64 [n * F, 64]."""
    return _per_frame(classifier, _check_videos(videos), lambda net, x: net.features(x)).double()


def frame_fid(classifier: nn.Module, videos: np.ndarray, reference_videos: np.ndarray) -> float:
    """FID between the per-frame classifier features of videos and of reference_videos."""
    return fid(frame_features(classifier, reference_videos), frame_features(classifier, videos))

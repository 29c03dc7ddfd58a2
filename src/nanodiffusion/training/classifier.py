"""The FID classifier features' training, through the one loop, and the evaluation that needs it.

metrics.fid defines the classifier and computes the metrics from a trained one; training a
network belongs to this layer, above metrics. So the classifier is trained (and cached where
metrics.fid looks for it) here, and `evaluate_images` here is metrics.fid.evaluate_images with
the classifier trained first when it is asked for and not cached yet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.data.datasets import ImageData
from nanodiffusion.data.files import one_line, write_atomically
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import OptimConfig
from nanodiffusion.metrics import fid
from nanodiffusion.metrics.fid import ClassifierFeatures, SmallClassifier, classifier_input
from nanodiffusion.training.loop import Loop


def train_classifier(
    train: ImageData,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> SmallClassifier:
    """A SmallClassifier trained by cross-entropy on random batches of the labelled `train` split:
    AdamW (weight decay 1e-4), a linear warm-up over the first 30% of the steps, then a cosine
    decay to zero (the shape of the one-cycle schedule). Raises KeyboardInterrupt on Ctrl-C, so a
    half-trained net is never cached."""
    with torch.random.fork_rng():  # seeded initial weights; the caller's RNG does not move
        torch.manual_seed(seed)
        net = SmallClassifier(train.images.shape[1], train.num_classes)
    g = torch.Generator().manual_seed(seed)

    def step_fn(step: int, micro: int) -> torch.Tensor:
        idx = torch.randint(len(train.images), (batch_size,), generator=g)
        return F.cross_entropy(net(classifier_input(train.images[idx])), train.labels[idx])

    return fit_classifier(net, step_fn, steps, batch_size, lr, 0.3, g, progress, "feature classifier")


def cached_net(path: Path, net: nn.Module, train: Callable[[], nn.Module]) -> nn.Module:
    """A judge's network: its state read from `path` into `net`, else `train()`ed and cached there
    (whole or not at all); in eval mode. A damaged cache is one line that says to delete it."""
    if path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a truncated zip, a pickle error, wrong keys or shapes
            raise NanodiffError(
                f"cannot read the cached classifier {path}: {one_line(e)}; delete it"
            ) from None
        return net.eval()
    net = train()
    write_atomically(path, lambda tmp: torch.save(net.state_dict(), tmp))
    return net.eval()


def fit_classifier(
    net, step_fn, steps: int, batch_size: int, lr: float, warmup: float, g, progress: bool, desc: str
):
    """Train `net` by `step_fn(step, micro) -> loss` through the one loop: AdamW (weight decay
    1e-4), a linear warm-up over the first `warmup` share of the steps, then a cosine decay to
    zero, no clipping; the batch generator `g` saved with it. Returns the net in eval mode;
    KeyboardInterrupt on Ctrl-C, so a half-trained net is never cached."""
    optim = OptimConfig(
        lr=lr,
        weight_decay=1e-4,
        warmup_steps=round(warmup * steps),
        min_lr_ratio=0.0,
        grad_clip=0.0,
        batch_size=batch_size,
    )
    loop = Loop(
        net,
        step_fn,
        optim,
        steps,
        generators={"batch": g},
        log_every=max(1, steps // 20),
        progress=progress,
        desc=desc,
    )
    if not loop.fit():
        raise KeyboardInterrupt
    return net.eval()


def classifier_features(
    dataset: str,
    image_size: int | None = None,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    steps: int = 400,
    progress: bool = True,
) -> ClassifierFeatures:
    """The classifier features of `dataset`: from the cache, else trained now and cached."""
    from safetensors.torch import save_file

    train = fid.labelled_train_split(dataset, image_size, channels)
    path = fid.classifier_path(dataset, train, steps, cache_dir)
    if not path.is_file():
        net = train_classifier(train, steps, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda p: save_file(net.state_dict(), str(p)))
    return fid.cached_classifier_features(dataset, image_size, channels, cache_dir, steps)


def evaluate_images(
    images: torch.Tensor,
    dataset: str = "fashion-mnist",
    features: str | nn.Module = "inception",
    n_ref: int | None = None,
    device: str = "auto",
    progress: bool = True,
    cache_dir: str | Path | None = None,
    k: int = 3,
) -> dict:
    """metrics.fid.evaluate_images, with features="classifier" trained and cached first if needed."""
    if features == "classifier":
        size, channels = images.shape[2], images.shape[1]
        features = classifier_features(dataset, size, channels, cache_dir, progress=progress)
    return fid.evaluate_images(images, dataset, features, n_ref, device, progress, cache_dir, k)

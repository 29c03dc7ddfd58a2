"""`nanodiff demo` end to end: it runs, writes its pictures, and its samples are digits."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from nanodiffusion.cli import main
from nanodiffusion.data.datasets import load_data
from nanodiffusion.inference.pipelines import load_run, sample_images


def digit_judge():
    """A classifier trained on the real digits; returns (predicted class, confidence) per image."""
    train = load_data("digits", "train")
    clf = LogisticRegression(C=0.5, max_iter=5000).fit(train.images.flatten(1).numpy(), train.labels.numpy())

    def judge(images: torch.Tensor):
        proba = clf.predict_proba(images.flatten(1).numpy())
        return proba.argmax(1), proba.max(1)

    return judge


def confident_digits(judge, images, threshold=0.8):
    label, confidence = judge(images)
    sure = confidence > threshold
    return sure.mean(), set(label[sure].tolist())


def test_the_judge_tells_digits_from_noise():
    judge = digit_judge()
    real = load_data("digits", "test").images
    frac_real, classes_real = confident_digits(judge, real)
    noise = torch.randn(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    blobs = torch.nn.functional.avg_pool2d(noise, 3, 1, 1) * 2  # smooth static
    assert frac_real > 0.8 and len(classes_real) == 10
    assert confident_digits(judge, noise)[0] < 0.3 and confident_digits(judge, blobs)[0] < 0.3


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_demo_draws_digits(demo_run, capsys):
    main(["info", str(demo_run)])  # (the demo's own printout went to the fixture)
    for name in ["demo_samples.png", "denoising.gif", "guidance.png", "forward_process.png", "loss.png"]:
        assert (demo_run / name).is_file(), name
    _, denoiser = load_run(demo_run)
    samples = sample_images(denoiser, 200, (1, 8, 8), "ddim", 50, seed=1, class_labels=torch.arange(200) % 10)
    frac, classes = confident_digits(digit_judge(), samples)
    print(f"confident: {frac:.2f}, classes: {sorted(classes)}")
    assert frac > 0.6, f"only {frac:.0%} of samples are confidently digits"
    assert classes == set(range(10)), f"classes found: {sorted(classes)}"
    assert np.isfinite(samples.numpy()).all()


@pytest.mark.slow
def test_guided_samples_are_the_requested_digit(demo_run):
    """The judge (trained on real digits) finds the requested class far above chance, and more
    often with guidance w = 3 than without (w = 1); w = 0 is the unconditional model: chance."""
    _, denoiser = load_run(demo_run)
    judge, labels = digit_judge(), torch.arange(500) % 10
    hits = {}
    for w in (0.0, 1.0, 3.0):
        images = sample_images(
            denoiser, 500, (1, 8, 8), "dpm++2m", 10, seed=2, class_labels=labels, guidance=w
        )
        hits[w] = (torch.as_tensor(judge(images)[0]) == labels).double().mean().item()
    print("fraction recognised as the requested digit:", hits)
    assert hits[0.0] < 0.25
    assert hits[3.0] > 0.9 and hits[3.0] > hits[1.0] > 0.5

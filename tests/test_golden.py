"""The same seed gives the same images as before the package moved into its layers: tiny digits,
text (latent), inpainting and upscaling runs are trained again and sampled, and every pixel must
equal what the code at e4797ad produced (tests/golden/outputs.safetensors)."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).with_name("golden")))
import recipes  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_same_seed_same_images_as_before_the_move(name, tmp_path, monkeypatch):
    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = recipes.RECIPES[name](tmp_path).contiguous()
    finally:
        torch.set_num_threads(threads)
    expected = load_file(str(recipes.OUTPUTS))[name]
    assert images.shape == expected.shape
    assert torch.equal(images, expected), f"max difference {(images - expected).abs().max().item():.3g}"

"""The KL autoencoder of latent diffusion: shapes, a short training that learns, the measured scale."""

import pytest
import torch

from nanodiffusion.data.shapes import render_dataset
from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.image import psnr
from nanodiffusion.nets.autoencoder import Autoencoder, AutoencoderConfig, load_autoencoder, save_autoencoder
from nanodiffusion.training.autoencoder import train_autoencoder


@pytest.fixture(scope="module")
def shapes16():
    images = torch.from_numpy(render_dataset(400, size=16)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images


def test_latent_shapes_and_bad_input():
    ae = Autoencoder(AutoencoderConfig(channels=8, channel_mults=[1, 2, 2])).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (2, 4, 8, 8)  # 32x32x3 -> 8x8x4
        assert ae.decode(z).shape == x.shape
        assert torch.allclose(ae.encode_images(x, batch_size=1), z, atol=1e-5)  # batching changes nothing
        assert torch.allclose(ae.decode_images(z, batch_size=1), ae.decode(z).clamp(-1, 1), atol=1e-5)
    with pytest.raises(NanodiffError, match="multiples of 4"):
        ae.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(NanodiffError, match=r"\[B, 3, H, W\]"):
        ae.encode(torch.zeros(1, 1, 32, 32))


@pytest.fixture
def one_thread():
    """Small convolutions run faster on one thread here; the setting is restored after the test
    (other tests compare runs across processes bit for bit, which needs the default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_short_training_lowers_the_error_and_measures_the_scale(shapes16, tmp_path, one_thread):
    cfg = AutoencoderConfig(channels=16, channel_mults=[1, 2], z_channels=4)
    ae, report = train_autoencoder(shapes16[:300], cfg, steps=150, batch_size=32, lr=2e-3,
                                   held_out=shapes16[300:], progress=False)
    assert report["mse_last_50"] < 0.5 * report["mse_first_50"], report
    assert report["latent_shape"] == [4, 8, 8]
    with torch.no_grad():
        z = ae.encode(shapes16[:300])
    mean_image = shapes16[:300].mean(0, keepdim=True).expand(100, -1, -1, -1)
    assert abs(z.std().item() - 1) < 0.05  # scale_factor makes the latents unit-variance
    assert report["psnr"] > psnr(mean_image, shapes16[300:], pooled=True) + 2.5  # +3.9 dB at 150 steps
    save_autoencoder(ae, tmp_path / "ae", step=150)
    again = load_autoencoder(tmp_path / "ae")
    assert again.cfg.scale_factor == ae.cfg.scale_factor
    with torch.no_grad():
        assert torch.equal(again.encode(shapes16[:4]), ae.encode(shapes16[:4]))
    with pytest.raises(NanodiffError, match="train-autoencoder"):
        load_autoencoder(tmp_path / "nothing")

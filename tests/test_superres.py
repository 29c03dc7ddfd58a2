"""Super-resolution (SR3 with noise-conditioning augmentation), its measures and the cascade."""

import numpy as np
import pytest
import torch

from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics import image as image_metrics
from nanodiffusion.tasks import upscale as superres
from tiny_runs import train_tiny


def _images(n=3, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_and_ssim_equal_scikit_image():
    metrics = pytest.importorskip(
        "skimage.metrics", reason="scikit-image is the reference (pip install 'nanodiffusion[test]')"
    )
    a = _images(2, size=24)
    b = (a + 0.3 * _images(2, size=24, seed=1)).clamp(-1, 1)
    mine_ssim, mine_psnr = image_metrics.ssim(a, b), image_metrics.psnr(a, b)
    for i in range(2):
        x, y = ((a[i] + 1) / 2).double().numpy(), ((b[i] + 1) / 2).double().numpy()
        ref = metrics.structural_similarity(
            x,
            y,
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert mine_ssim[i].item() == pytest.approx(ref, abs=1e-5)
        assert mine_psnr[i].item() == pytest.approx(
            metrics.peak_signal_noise_ratio(y, x, data_range=1.0), abs=1e-4
        )
    assert image_metrics.ssim(a, a).allclose(torch.ones(2))
    with pytest.raises(NanodiffError, match="window"):
        image_metrics.ssim(a[..., :8, :8], b[..., :8, :8])


def test_the_condition_is_the_bicubic_upsample_and_the_level():
    low = _images(2, size=8)
    cond = superres.condition(low, 16)
    assert cond.shape == (2, 4, 16, 16)
    assert torch.equal(cond[:, :3], superres.upsample(low, 16)) and (cond[:, 3] == 0).all()
    flat = torch.zeros(4, 3, 32, 32)  # same size: bicubic is the identity, so the noise shows as it is
    levels = torch.tensor([0.0, 0.05, 0.1, 0.2])
    noised = superres.condition(flat, 32, levels, torch.Generator().manual_seed(0))
    stds = noised[:, :3].flatten(1).std(1)
    assert stds[0] == 0 and torch.allclose(stds[1:], torch.tensor([0.05, 0.1, 0.2]), rtol=0.1)
    assert torch.equal(noised[:, 3, 0, 0], torch.tensor([0.0, 0.05, 0.1, 0.2]))
    with pytest.raises(NanodiffError, match=">= 0"):
        superres.condition(low, 16, -0.1)


def test_training_levels_and_aligned_crops():
    levels = superres.random_levels(4000, 0.3, torch.Generator().manual_seed(0))
    assert 0.45 < (levels == 0).float().mean() < 0.55 and levels.max() <= 0.3
    assert levels[levels > 0].mean().item() == pytest.approx(0.15, abs=0.01)
    x = torch.arange(2 * 16 * 16.0).reshape(2, 1, 16, 16)
    a, b = superres.random_crops([x, x * 2], 8, 2, torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 8, 8) and torch.equal(b, 2 * a)  # one crop for every tensor
    assert all(int(a[i, 0, 0, 0]) % 2 == 0 for i in range(2))  # offsets on the low-resolution grid
    four = torch.arange(4 * 16 * 16.0).reshape(4, 1, 16, 16)
    whole = superres.random_crops([four], 8, 2, torch.Generator().manual_seed(3))[0]
    halves = [
        superres.random_crops([four[r]], 8, 2, torch.Generator().manual_seed(3), 4, r)[0]
        for r in (slice(0, 2), slice(2, 4))
    ]
    assert torch.equal(torch.cat(halves), whole)  # two processes crop as one does


def test_bicubic_error_is_what_the_benchmark_beats():
    """The baseline: downsampling then bicubic upsampling loses detail (PSNR finite, SSIM < 1),
    and more when the factor is larger."""
    from nanodiffusion.data.datasets import load_data

    hi = load_data("digits", "test").images[:50]
    x2 = superres.upsample(superres.downsample(hi, 4), 8)
    x4 = superres.upsample(superres.downsample(hi, 2), 8)
    assert image_metrics.psnr(x2, hi).mean() > image_metrics.psnr(x4, hi).mean() > 5


@pytest.fixture(scope="module")
def upscale_run(tmp_path_factory):
    """A digits 4x4 -> 8x8 upscaling run, a few steps."""
    return train_tiny(
        tmp_path_factory.mktemp("sr") / "run", 'data.task="upscale"', "run.steps=4", "run.sample_every=2"
    )


@pytest.mark.slow
def test_an_upscaling_run_trains_samples_and_refuses_plain_sampling(upscale_run):
    from nanodiffusion.inference.pipelines import draw, load_run, sample_images

    cfg, d = load_run(upscale_run, device="cpu")
    assert cfg.model.cond_channels == 2 and superres.low_size(cfg) == 4
    assert (upscale_run / "samples" / "step_0000002.png").is_file()  # grids upscale training images
    low = _images(3, c=1, size=4)
    out = draw(cfg, d, 3, low_res=low, sampler="heun", steps=3, seed=1)
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out, draw(cfg, d, 3, low_res=low, sampler="heun", steps=3, seed=1))
    other = draw(cfg, d, 3, low_res=-low, sampler="heun", steps=3, seed=1)
    assert not torch.equal(out, other)  # the low-resolution input reaches the network
    assert cfg.data.residual and cfg.data.residual_scale > 1  # measured: the detail is small
    mid, detail = low / 2, torch.randn(3, 1, 8, 8) * cfg.data.residual_scale * 0.1
    x = superres.from_samples(detail, mid, cfg)  # away from the clamp: area(x) is the input exactly
    assert torch.allclose(superres.downsample(x, 4), mid, atol=1e-5)
    loose = superres.from_samples(detail, mid, cfg, consistent=False)
    assert torch.allclose(loose, superres.upsample(mid, 8) + detail / cfg.data.residual_scale, atol=1e-6)
    assert not torch.allclose(superres.downsample(loose, 4), mid, atol=1e-3)
    plain = draw(cfg, d, 3, low_res=mid, steps=3)
    assert not torch.equal(draw(cfg, d, 3, low_res=mid, steps=3, aug=0.3), plain)
    with pytest.raises(NanodiffError, match="low-resolution images"):
        draw(cfg, d, 3)
    with pytest.raises(NanodiffError, match=r"upscales \[1, 4, 4\]"):
        draw(cfg, d, 3, low_res=_images(3, c=1, size=8))
    with pytest.raises(NanodiffError, match="mask-conditioned|image condition"):
        sample_images(d, 2, (1, 8, 8))


@pytest.mark.slow
def test_upscale_command(upscale_run, tmp_path, capsys):
    from PIL import Image

    from nanodiffusion.cli import main

    assert main(["upscale", str(upscale_run), "--demo", "--n", "3", "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "bicubic   PSNR" in printed and "diffusion PSNR" in printed
    assert (upscale_run / "upscaled" / "demo.png").is_file()
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "low.png")
    assert (
        main(
            [
                "upscale",
                str(upscale_run),
                "--image",
                str(tmp_path / "low.png"),
                "--n",
                "2",
                "--steps",
                "2",
                "--sampler",
                "dpmpp_2m",
                "--out",
                str(tmp_path / "up"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "up").glob("low-x2-seed0_*.png"))) == 2
    assert Image.open(tmp_path / "up" / "low-x2-seed0_0000.png").size == (8, 8)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "six.png")
    assert main(["upscale", str(upscale_run), "--image", str(tmp_path / "six.png")]) == 2
    assert "upscales 4x4 images" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not a picture")
    assert main(["upscale", str(upscale_run), "--image", str(tmp_path / "bad.png")]) == 2
    assert main(["upscale", str(upscale_run), "--demo", "--aug", "-1"]) == 2


@pytest.mark.slow
def test_a_cascade_feeds_the_base_images_to_the_upscaler(upscale_run, tiny_config, tmp_path):
    from nanodiffusion.inference.pipelines import Cascade, build_denoiser, load_run
    from nanodiffusion.io.config import apply_overrides

    base_cfg = apply_overrides(tiny_config, ["data.class_conditional=true"])
    base_cfg.model.in_channels = base_cfg.model.out_channels = 1
    base_cfg.model.image_size, base_cfg.model.num_classes = 4, 10
    torch.manual_seed(0)
    base = (base_cfg, build_denoiser(base_cfg).eval(), None, None)
    pipe = Cascade(base, load_run(upscale_run, device="cpu"))
    high, low = pipe(n=3, class_label=2, steps=3, sr_steps=3, aug=0.1, seed=0, return_low=True)
    assert high.shape == (3, 1, 8, 8) and low.shape == (3, 1, 4, 4)
    assert torch.equal(high, pipe(n=3, class_label=2, steps=3, sr_steps=3, aug=0.1, seed=0))
    with pytest.raises(NanodiffError, match="must be in 0..9"):
        pipe(n=1, class_label=10)
    base_cfg.model.image_size = 8
    with pytest.raises(NanodiffError, match="the upscaler takes 1x4x4"):
        Cascade((base_cfg, base[1], None, None), load_run(upscale_run, device="cpu"))


def test_crops_train_a_convolutional_unet_and_are_refused_with_attention(tiny_config, tmp_path):
    from nanodiffusion.io.config import apply_overrides
    from nanodiffusion.training.diffusion import Trainer

    cfg = apply_overrides(tiny_config, ["data.crop=4", "model.mid_attention=false"])
    trainer = Trainer(cfg, tmp_path / "a", progress=False)
    assert trainer.train_step() > 0  # 4x4 crops of the 8x8 digits through a UNet built for 8x8
    with pytest.raises(NanodiffError, match="mid_attention=false"):
        Trainer(apply_overrides(tiny_config, ["data.crop=4"]), tmp_path / "b", progress=False)
    with pytest.raises(NanodiffError, match="data.crop must be a multiple of 2"):
        Trainer(apply_overrides(cfg, ["data.crop=3"]), tmp_path / "c", progress=False)
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.training.diffusion import prepare_config

    digits, upscale = load_data("digits"), apply_overrides(tiny_config, ['data.task="upscale"'])
    with pytest.raises(NanodiffError, match="diffuses pixels"):
        prepare_config(apply_overrides(upscale, ['data.autoencoder="x"']), digits)
    with pytest.raises(NanodiffError, match="low_res must be smaller"):
        prepare_config(apply_overrides(upscale, ["data.low_res=8"]), digits)


def test_the_consistency_projection_never_moves_an_image_away_from_the_truth():
    truth = _images(8, size=16)
    low = superres.downsample(truth, 8)
    for scale in (0.05, 0.5, 2.0):
        guess = truth + scale * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))
        fixed = superres.project(guess, low)
        assert torch.allclose(superres.downsample(fixed, 8), low, atol=1e-6)
        before, after = (guess - truth).flatten(1).norm(dim=1), (fixed - truth).flatten(1).norm(dim=1)
        assert (after <= before + 1e-6).all() and (after < before).any()
    with pytest.raises(NanodiffError, match="does not divide"):
        superres.project(truth, superres.downsample(truth, 6))


@pytest.mark.slow
def test_generate_draws_a_cascade_from_the_command_line(tmp_path, monkeypatch, capsys):
    """A tiny 16x16 text run, a tiny 16 -> 32 upscaler on the same small shapes world, one command."""
    from PIL import Image

    from nanodiffusion.cli import main
    from nanodiffusion.io.config import apply_overrides
    from nanodiffusion.training.diffusion import train
    from test_train import _text_config

    base_cfg = _text_config(tmp_path, monkeypatch)
    assert train(base_cfg, tmp_path / "base", progress=False)
    sr_cfg = apply_overrides(
        base_cfg,
        ['data.text_encoder=""', "data.image_size=32", 'data.task="upscale"', "model.attn_resolutions=[]"],
    )
    assert train(sr_cfg, tmp_path / "sr", progress=False)
    out = tmp_path / "cascade"
    assert (
        main(
            [
                "generate",
                str(tmp_path / "base"),
                "a red circle",
                "--upscale",
                str(tmp_path / "sr"),
                "--n",
                "2",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "upscaled by" in capsys.readouterr().out
    assert Image.open(out / "sample_0000.png").size == (32, 32)
    assert main(["generate", str(tmp_path / "base"), "x", "--aug", "0.2"]) == 2
    assert "--aug needs --upscale" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "base"), "x", "--upscale", str(tmp_path / "base")]) == 2
    assert "must be an upscaling run" in capsys.readouterr().err

"""img2img (SDEdit) and training-free inpainting (replace, RePaint) with every sampler."""

import pytest
import torch

from nanodiffusion.core.editing import demo_masks, edit, mask_from_image, sdedit_sigmas
from nanodiffusion.core.samplers import SAMPLERS, CountingDenoiser, get_sampler, sample_ddim
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import build_denoiser, sample_images
from nanodiffusion.metrics.image import boundary_band
from test_samplers import GaussianDenoiser


@pytest.fixture(scope="module")
def denoiser():
    """An untrained digits UNet: editing's guarantees hold for any denoiser."""
    from nanodiffusion.io.config import apply_overrides, preset

    cfg = apply_overrides(
        preset("digits"),
        ["model.channels=8", "model.blocks_per_level=1", "model.attn_resolutions=[]", "model.dropout=0"],
    )
    cfg.model.in_channels = cfg.model.out_channels = 1
    cfg.model.image_size = 8
    torch.manual_seed(0)
    return build_denoiser(cfg).eval()


def _images(n=3, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_sequence_that_stops_above_zero_is_the_first_part_of_the_whole_run():
    D = GaussianDenoiser(*_gaussian_4d())
    sigmas = Schedule().sampling_sigmas(10)
    x = torch.randn(5, 4, dtype=torch.float64) * 10
    seen = []
    sample_ddim(D, x, sigmas, callback=lambda info: seen.append(info["x"]))
    assert torch.allclose(sample_ddim(D, x, sigmas[:5]), seen[4], atol=1e-12)
    with pytest.raises(NanodiffError, match="0 or above"):
        sample_ddim(D, x, torch.tensor([1.0, -1.0]))


def _gaussian_4d():
    from test_samplers import _gaussian

    return _gaussian()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("method", ["replace", "repaint"])
@pytest.mark.slow
def test_inpainting_keeps_the_known_region_exactly_with_every_sampler(denoiser, sampler, method):
    init, known = _images(), demo_masks(3, 8)
    out = sample_images(
        denoiser, 3, (1, 8, 8), sampler, 4, seed=0, init=init, known=known, inpaint=method, jump=2, resample=2
    )
    assert torch.equal(out[known.expand_as(out) == 1], init[known.expand_as(init) == 1])
    hole = known.expand_as(out) == 0
    assert (out[hole] - init[hole]).abs().mean() > 0.05  # and generated where it is not


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "euler-a", "unipc", "heun"])
def test_strength_one_is_sampling_from_the_same_noise(denoiser, sampler):
    plain = sample_images(denoiser, 3, (1, 8, 8), sampler, 5, seed=4)
    edited = sample_images(denoiser, 3, (1, 8, 8), sampler, 5, seed=4, init=_images(), strength=1.0)
    assert torch.equal(plain, edited)


@pytest.mark.slow
def test_small_strength_stays_close_to_the_input(denoiser):
    init = _images()
    dist = {}
    for s in (0.05, 0.5, 1.0):
        edited = sample_images(denoiser, 3, (1, 8, 8), "ddim", 20, init=init, strength=s)
        dist[s] = (edited - init).square().mean()
    # an untrained network: strength 0.05 is one step from sigma 0.17 (measured 0.026 against 1.79)
    assert dist[0.05] < 0.05 * dist[1.0] and dist[0.05] < dist[0.5] < dist[1.0]
    stats = {}
    sample_images(denoiser, 3, (1, 8, 8), "ddim", 20, init=init, strength=0.25, stats=stats)
    assert stats["nfe"] == 5  # the last round(0.25 x 20) steps only


def test_repaint_costs_resample_times_the_steps_and_with_one_pass_is_replace(denoiser):
    init, known = _images(), demo_masks(3, 8)
    stats = {}
    sample_images(
        denoiser,
        3,
        (1, 8, 8),
        "ddim",
        6,
        init=init,
        known=known,
        inpaint="repaint",
        jump=2,
        resample=3,
        stats=stats,
    )
    assert stats["nfe"] == 18
    once = sample_images(
        denoiser, 3, (1, 8, 8), "ddim", 6, init=init, known=known, inpaint="repaint", jump=2, resample=1
    )
    replace = sample_images(denoiser, 3, (1, 8, 8), "ddim", 6, init=init, known=known, inpaint="replace")
    assert torch.allclose(once, replace, atol=1e-6)  # DDIM has no history: jumps change nothing


@pytest.mark.slow
def test_repaint_is_closer_than_replace_to_the_exact_gaussian_conditional():
    """x0 ~ N(mu, Sigma) in 4-d with two coordinates known: the exact conditional mean of the
    other two is mu_u + S_uk S_kk^-1 (x_k - mu_k). The simple method is biased towards the
    unconditional; RePaint's resampling pulls it towards the conditional (Lugmayr et al. 2022)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.02, 0.05, 0.5, 2.0], dtype=torch.float64)) @ q.T
    mu = torch.randn(4, generator=g, dtype=torch.float64)
    x = mu + torch.linalg.cholesky(cov) @ torch.randn(4, generator=g, dtype=torch.float64)
    k, u = [0, 1], [2, 3]
    exact = mu[u] + cov[u][:, k] @ torch.linalg.solve(cov[k][:, k], x[k] - mu[k])
    known = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    schedule = Schedule()
    sigmas = schedule.sampling_sigmas(50)
    errors = {}
    for method in ("replace", "repaint"):
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(4000, 4, generator=gen, dtype=torch.float64)
        out = edit(
            sample_ddim,
            GaussianDenoiser(mu, cov),
            noise,
            x[None],
            sigmas,
            prior_std=schedule.prior_std(float(sigmas[0])),
            known=known,
            method=method,
            jump=5,
            resample=10,
            generator=gen,
        )
        assert torch.equal(out[:, k], x[k].expand(4000, 2))
        errors[method] = (out[:, u].mean(0) - exact).abs().max().item()
    # measured: replace 0.187, repaint 0.123 (the conditional std is 0.57 and 0.68; N = 4000
    # puts the sampling error of a mean near 0.01)
    assert errors["repaint"] < 0.8 * errors["replace"]


def test_bad_editing_input_is_one_clear_error(denoiser):
    init = _images()
    for strength in (0, 1.5, -0.2, True):
        with pytest.raises(NanodiffError, match=r"strength must be in \(0, 1\]"):
            sample_images(denoiser, 3, (1, 8, 8), init=init, strength=strength)
    with pytest.raises(NanodiffError, match="rounds to no step"):
        sample_images(denoiser, 3, (1, 8, 8), steps=10, init=init, strength=0.01)
    with pytest.raises(NanodiffError, match="need init images"):
        sample_images(denoiser, 3, (1, 8, 8), strength=0.5)
    with pytest.raises(NanodiffError, match="init images must be"):
        sample_images(denoiser, 3, (1, 8, 8), init=torch.zeros(3, 1, 16, 16), strength=0.5)
    with pytest.raises(NanodiffError, match="does not fit"):
        sample_images(denoiser, 3, (1, 8, 8), init=init, known=torch.ones(1, 1, 4, 4))
    with pytest.raises(NanodiffError, match="one mask or one per image"):
        sample_images(denoiser, 3, (1, 8, 8), init=init, known=torch.ones(2, 1, 8, 8))
    with pytest.raises(NanodiffError, match="inpainting method"):
        sample_images(denoiser, 3, (1, 8, 8), init=init, known=torch.ones(1, 1, 8, 8), inpaint="paint")
    with pytest.raises(NanodiffError, match="unknown sampler"):
        sample_images(denoiser, 3, (1, 8, 8), "dpm3", init=init, strength=0.5)


def test_sdedit_keeps_the_tail_of_the_sequence():
    sigmas = Schedule().sampling_sigmas(10)
    assert torch.equal(sdedit_sigmas(sigmas, 0.3), sigmas[7:])
    assert torch.equal(sdedit_sigmas(sigmas, 1.0), sigmas)


def test_masks_and_the_boundary_band():
    picture = -torch.ones(3, 8, 8)
    picture[:, 2:5, 2:5] = 1  # white: repaint
    known = mask_from_image(picture)
    assert known.shape == (1, 1, 8, 8) and known.sum() == 64 - 9 and known[0, 0, 3, 3] == 0
    band = boundary_band(known, width=1)
    assert band.sum() == 8 and not band[0, 0, 3, 3]  # the ring inside the hole, not its centre
    masks = demo_masks(6, 16)
    assert masks.shape == (6, 1, 16, 16) and ((masks == 0) | (masks == 1)).all()
    assert masks[0].sum() == 256 - 64 and masks[1, 0, :, 8:].sum() == 0
    assert 0 < (masks[2] == 0).sum() < 256 and torch.equal(masks, demo_masks(6, 16))


@pytest.mark.slow
def test_every_sampler_name_and_alias_reaches_the_editing_path(denoiser):
    init = _images(1)
    for name in [*SAMPLERS, "dpmpp_2m", "euler_a"]:
        counted = CountingDenoiser(denoiser)
        edit(
            get_sampler(name).fn,
            counted,
            torch.randn(1, 1, 8, 8),
            init,
            Schedule().sampling_sigmas(4),
            prior_std=1.0,
            strength=0.5,
        )
        assert counted.calls >= 1


# --- the command line ----------------------------------------------------------------------------
@pytest.fixture
def digits_run(tmp_path, tiny_config):
    from nanodiffusion.training.diffusion import train

    assert train(tiny_config, tmp_path / "run", progress=False)
    return tmp_path / "run"


def _png(path, array):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.slow
def test_inpaint_command_keeps_the_unmasked_pixels_of_the_file(digits_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from nanodiffusion.cli import main

    rng = np.random.default_rng(0)
    image = _png(tmp_path / "x.png", rng.integers(0, 256, (8, 8)))
    hole = np.zeros((8, 8))
    hole[2:6, 3:7] = 255
    mask = _png(tmp_path / "m.png", hole)
    out = tmp_path / "filled"
    for method in ("replace", "repaint"):
        assert (
            main(
                [
                    "inpaint",
                    str(digits_run),
                    "--image",
                    image,
                    "--mask",
                    mask,
                    "--method",
                    method,
                    "--steps",
                    "4",
                    "--n",
                    "2",
                    "--resample",
                    "2",
                    "--jump",
                    "2",
                    "--sampler",
                    "unipc",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert f"2 fillings of {image} ({method})" in capsys.readouterr().out
        files = sorted(out.glob(f"x-{method}-seed0_*.png"))
        assert len(files) == 2
        original = np.asarray(Image.open(image))
        for f in files:
            filled = np.asarray(Image.open(f).convert("L"))
            assert (filled[hole == 0] == original[hole == 0]).all()
            assert (filled[hole > 0] != original[hole > 0]).any()


@pytest.mark.slow
def test_inpaint_demo_shows_every_method_and_the_seam_error(digits_run, capsys):
    from nanodiffusion.cli import main

    assert main(["inpaint", str(digits_run), "--demo", "--n", "3", "--steps", "4", "--resample", "2"]) == 0
    printed = capsys.readouterr().out
    assert "replace" in printed and "repaint" in printed and "band at the seam" in printed
    assert (digits_run / "inpaint" / "demo.png").is_file()


@pytest.mark.slow
def test_img2img_from_the_command_line(digits_run, tmp_path, capsys):
    from nanodiffusion.cli import main

    image = _png(tmp_path / "x.png", [[40 * (i % 7) for i in range(16)] for _ in range(16)])  # resized
    out = tmp_path / "edited"
    assert (
        main(
            [
                "sample",
                str(digits_run),
                "--init",
                image,
                "--strength",
                "0.5",
                "--n",
                "2",
                "--steps",
                "4",
                "--sampler",
                "dpmpp_2m",
                "--out",
                str(out),
            ]
        )
        == 0
    )  # diffusers' spelling is accepted
    assert "img2img from" in capsys.readouterr().out and (out / "grid.png").is_file()


def test_bad_editing_input_on_the_command_line(digits_run, tmp_path, capsys):
    from nanodiffusion.cli import main

    image = _png(tmp_path / "x.png", [[0] * 8] * 8)
    small_mask = _png(tmp_path / "m4.png", [[255] * 4] * 4)
    black = _png(tmp_path / "black.png", [[0] * 8] * 8)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    run = str(digits_run)
    cases = [
        (["inpaint", run, "--image", image, "--mask", small_mask], "must be the same size"),
        (["inpaint", run, "--image", str(not_an_image), "--mask", black], "cannot read the image"),
        (["inpaint", run, "--image", image, "--mask", black], "no white pixels"),
        (["inpaint", run, "--image", image], "needs --mask"),
        (["inpaint", run], "give --image and --mask, or --demo"),
        (["inpaint", run, "--demo", "--image", image], "give --image and --mask, or --demo"),
        (["inpaint", run, "--image", image, "--mask", small_mask, "--prompt", "a cat"], "same size"),
        (["sample", run, "--init", image, "--strength", "1.5"], r"--strength must be in (0, 1]"),
        (["sample", run, "--init", image, "--strength", "0"], r"--strength must be in (0, 1]"),
        (["sample", run, "--strength", "0.5"], "--strength needs --init"),
        (["sample", run, "--init", str(not_an_image)], "cannot read the image"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


# --- the mask-conditioned model (data.task = "inpaint") -------------------------------------------
def test_random_masks_draw_five_families_reproducibly():
    from nanodiffusion.core.editing import random_masks

    masks = random_masks(400, 16, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 16, 16) and ((masks == 0) | (masks == 1)).all()
    assert torch.equal(masks, random_masks(400, 16, torch.Generator().manual_seed(0)))
    hidden = 1 - masks.mean((1, 2, 3))
    assert 0.05 < (hidden == 1).float().mean() < 0.15  # nothing known: about 10%
    assert 0.1 < (hidden == 0.5).float().mean() < 0.3  # one half hidden: about 20%
    assert (hidden > 0).all() and (hidden < 1).float().mean() > 0.85


def test_an_image_condition_reaches_the_network_and_follows_guidance_batches():
    from nanodiffusion.io.config import apply_overrides, preset

    cfg = apply_overrides(
        preset("digits"),
        ["model.channels=8", "model.blocks_per_level=1", "model.attn_resolutions=[]", "model.dropout=0"],
    )
    cfg.model.in_channels = cfg.model.out_channels = 1
    cfg.model.image_size, cfg.model.cond_channels = 8, 2
    torch.manual_seed(0)
    d = build_denoiser(cfg).eval()
    torch.nn.init.normal_(d.net.conv_out.weight)  # the zero-initialised output layer hides the input
    x, sigma = torch.randn(2, 1, 8, 8), torch.ones(2)
    a, b = torch.zeros(2, 2, 8, 8), torch.ones(2, 2, 8, 8)
    assert not torch.allclose(d.conditioned_on(a)(x, sigma), d.conditioned_on(b)(x, sigma))
    both = d.conditioned_on(a)(torch.cat([x, x]), torch.cat([sigma, sigma]))  # guidance's doubled batch
    assert torch.allclose(both[:2], d.conditioned_on(a)(x, sigma), atol=1e-6)
    with pytest.raises(NanodiffError, match="cannot serve a batch"):
        d.conditioned_on(torch.zeros(2, 2, 8, 8))(torch.randn(3, 1, 8, 8), torch.ones(3))


@pytest.mark.slow
def test_a_mask_conditioned_run_trains_and_fills_from_the_command_line(tmp_path, tiny_config, capsys):
    import numpy as np
    from PIL import Image

    from nanodiffusion.cli import main
    from nanodiffusion.inference.pipelines import load_run
    from nanodiffusion.training.diffusion import train

    tiny_config.data.task = "inpaint"
    tiny_config.run.sample_every = 3
    assert train(tiny_config, tmp_path / "run", progress=False)
    cfg, d = load_run(tmp_path / "run", device="cpu")
    assert cfg.model.cond_channels == 2  # the masked image and the mask
    assert (tmp_path / "run" / "samples" / "step_0000003.png").is_file()  # grids fill holes
    init, known = _images(2), demo_masks(2, 8)
    out = sample_images(d, 2, (1, 8, 8), "dpm++2m", 4, init=init, known=known, inpaint="model")
    assert torch.equal(out[known.expand_as(out) == 1], init[known.expand_as(init) == 1])
    with pytest.raises(NanodiffError, match="mask-conditioned inpainting model"):
        sample_images(d, 2, (1, 8, 8))

    image = _png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 256, (8, 8)))
    hole = np.zeros((8, 8))
    hole[:, 4:] = 255
    mask = _png(tmp_path / "m.png", hole)
    assert (
        main(
            [
                "inpaint",
                str(tmp_path / "run"),
                "--image",
                image,
                "--mask",
                mask,
                "--steps",
                "3",
                "--n",
                "2",
                "--out",
                str(tmp_path / "filled"),
            ]
        )
        == 0
    )
    assert "(model)" in capsys.readouterr().out
    filled = np.asarray(Image.open(tmp_path / "filled" / "x-model-seed0_0000.png").convert("L"))
    assert (filled[:, :4] == np.asarray(Image.open(image))[:, :4]).all()
    assert main(["inpaint", str(tmp_path / "run"), "--demo", "--n", "3", "--steps", "3"]) == 0
    assert "model" in capsys.readouterr().out


def test_the_model_method_needs_an_inpainting_run(denoiser):
    with pytest.raises(NanodiffError, match="trained for inpainting"):
        sample_images(denoiser, 2, (1, 8, 8), init=_images(2), known=demo_masks(2, 8), inpaint="model")

"""Stable Diffusion folders under nanodiffusion's samplers, checked against diffusers' own pipeline.

A tiny pipeline is built here from configs with random weights (a CLIP tokenizer from a
vocabulary this file writes; nothing is downloaded), saved as a diffusers folder, and loaded
by both libraries. From the same initial latents each sampler must give diffusers' image with
the matching scheduler to 1e-4 (docs/stable-diffusion.md names the one setting that differs).
"""

import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _sd_fixture import random_pipeline  # noqa: E402  (bench/_sd_fixture.py)
from nanodiffusion.errors import NanodiffError  # noqa: E402
from nanodiffusion.inference.stable_diffusion import StableDiffusion  # noqa: E402

PROMPT, NEGATIVE = "a red cat on a blue mat", "blurry"


def tiny_pipeline(folder, prediction_type="epsilon"):
    """A random-weight pipeline in Stable Diffusion 1.x's layout at toy size (16x16 images, 8x8x4
    latents), saved as a diffusers folder."""
    pipe = random_pipeline("tiny", prediction_type)
    pipe.save_pretrained(folder / "sd", safe_serialization=True)
    return pipe, folder / "sd"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd"))


def diffusers_image(pipe, scheduler_cls, steps, guidance, latents, seed, **scheduler_options):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **scheduler_options)
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents.clone(),
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    return out.images.float() * 2 - 1  # [0, 1] -> [-1, 1]


# (our sampler, diffusers scheduler, its options that match ours, does it start from sigma_max * latents)
MATCHES = [
    ("ddim", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, False),
    ("euler", "EulerDiscreteScheduler", {}, True),
    ("euler-a", "EulerAncestralDiscreteScheduler", {}, True),
    (
        "dpm++2m",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"},
        False,
    ),
]


@pytest.mark.parametrize("sampler,scheduler,options,euler_start", MATCHES, ids=[m[0] for m in MATCHES])
@pytest.mark.slow
def test_samplers_match_diffusers_pipeline(sd, sampler, scheduler, options, euler_start):
    reference, folder = sd
    ours = StableDiffusion.from_pretrained(folder, device="cpu")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    theirs.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    image = ours(
        PROMPT,
        negative_prompt=NEGATIVE,
        steps=10,
        guidance=5.0,
        sampler=sampler,
        seed=7,
        latents=latents,
        output="tensor",
    )
    # Our samplers start VP models at N(0, (1 + sigma_max^2) I) in sigma form, x_T ~ N(0, I), as
    # diffusers' DDIM and DPM-Solver do; its Euler schedulers with trailing spacing start at
    # sigma_max * latents (init_noise_sigma), so their latents are rescaled to the same x_T.
    sigma_max = float(ours.denoiser.schedule.sampling_sigmas(10, "trailing")[0])
    scale = (1 + sigma_max**2) ** 0.5 / sigma_max if euler_start else 1.0
    expected = diffusers_image(
        theirs,
        getattr(diffusers, scheduler),
        10,
        5.0,
        latents * scale,
        seed=7,
        timestep_spacing="trailing",
        steps_offset=0,
        **options,
    )
    assert image.shape == expected.shape == (1, 3, 16, 16)
    assert (image - expected).abs().max() < 1e-4
    # the loaders agree: the in-memory pipeline gives the same image
    again = StableDiffusion.from_diffusers(reference, device="cpu")(
        PROMPT,
        negative_prompt=NEGATIVE,
        steps=10,
        guidance=5.0,
        sampler=sampler,
        seed=7,
        latents=latents,
        output="tensor",
    )
    assert torch.equal(again, image)


@pytest.mark.slow
def test_v_prediction_checkpoint_matches_diffusers(tmp_path):
    """Stable Diffusion 2.x's 768 models predict v: the scheduler config says so."""
    reference, folder = tiny_pipeline(tmp_path, prediction_type="v_prediction")
    ours = StableDiffusion.from_pretrained(folder, device="cpu")
    assert ours.denoiser.parameterization == "v"
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    image = ours(
        PROMPT,
        negative_prompt=NEGATIVE,
        steps=8,
        guidance=4.0,
        sampler="dpm++2m",
        latents=latents,
        output="tensor",
    )
    expected = diffusers_image(
        reference,
        diffusers.DPMSolverMultistepScheduler,
        8,
        4.0,
        latents,
        seed=0,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )
    assert (image - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_prompts_change_the_image_and_seeds_repeat(sd):
    pipe = StableDiffusion.from_diffusers(sd[0], device="cpu")
    a = pipe(PROMPT, steps=4, output="latent")
    assert torch.equal(a, pipe(PROMPT, steps=4, output="latent"))
    assert not torch.allclose(a, pipe("a blue cat", steps=4, output="latent"))
    assert not torch.allclose(a, pipe(PROMPT, steps=4, seed=1, output="latent"))
    images = pipe([PROMPT, "a blue cat"], n=2, steps=2)
    assert len(images) == 4 and images[0].size == (16, 16)


def test_img2img(sd):
    pipe = StableDiffusion.from_diffusers(sd[0], device="cpu")
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = pipe.encode_image(init)
    txt2img = pipe(PROMPT, steps=10, sampler="ddim", seed=3, output="latent")
    full = pipe(PROMPT, steps=10, sampler="ddim", seed=3, init_image=init, strength=1.0, output="latent")
    assert torch.equal(full, txt2img)  # strength 1: the image is replaced by noise entirely
    light = pipe(PROMPT, steps=10, sampler="ddim", seed=3, init_image=init, strength=0.1, output="latent")
    middle = pipe(PROMPT, steps=10, sampler="ddim", seed=3, init_image=init, strength=0.5, output="latent")
    d_light, d_middle, d_full = ((x - z0).norm().item() for x in (light, middle, full))
    assert d_light < 0.25 * d_full and d_light < d_middle < d_full, (d_light, d_middle, d_full)
    with pytest.raises(NanodiffError, match=r"strength must be in \(0, 1\]"):
        pipe(PROMPT, init_image=init, strength=0)
    with pytest.raises(NanodiffError, match="rounds to no step"):
        pipe(PROMPT, steps=4, init_image=init, strength=0.1)


def test_bad_folders_and_sizes(sd, tmp_path):
    _, folder = sd
    with pytest.raises(NanodiffError, match="not a diffusers Stable Diffusion folder: model_index.json"):
        StableDiffusion.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        NanodiffError,
        match=r"unet/diffusion_pytorch_model.safetensors .* is missing "
        r"\(only .bin weights",
    ):
        StableDiffusion.from_pretrained(broken)
    with pytest.raises(NanodiffError, match="no Stable Diffusion folder"):
        StableDiffusion.from_pretrained(tmp_path / "nowhere")
    pipe = StableDiffusion.from_diffusers(sd[0], device="cpu")
    with pytest.raises(NanodiffError, match="multiples of 4"):
        pipe(PROMPT, size=18)


@pytest.mark.slow
def test_cli_writes_pngs_and_refuses_bad_input(sd, tmp_path, capsys):
    from PIL import Image

    from nanodiffusion.cli import main

    _, folder = sd
    out = tmp_path / "out"
    assert (
        main(
            [
                "sd",
                PROMPT,
                "--model",
                str(folder),
                "--sampler",
                "dpmpp-2m",
                "--steps",
                "2",
                "--n",
                "2",
                "--seed",
                "5",
                "--negative",
                "blurry",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"a-red-cat-on-a-blue-mat-seed{s}.png" for s in (5, 6)]
    Image.open(files[0]).save(tmp_path / "init.png")
    assert (
        main(
            [
                "sd",
                PROMPT,
                "--model",
                str(folder),
                "--steps",
                "4",
                "--init",
                str(tmp_path / "init.png"),
                "--strength",
                "0.5",
                "--out",
                str(tmp_path / "img2img"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "img2img").glob("*.png"))) == 1
    before = files[0].read_bytes()
    for bad, message in [
        (["--strength", "1.5", "--init", str(files[0])], "--strength must be in (0, 1]"),
        (["--strength", "0.5"], "--strength needs --init"),
        (["--size", "18"], "multiples of 4"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
    ]:
        capsys.readouterr()
        assert main(["sd", PROMPT, "--model", str(folder), "--out", str(out), *bad]) == 2
        assert message in capsys.readouterr().err
    assert files[0].read_bytes() == before  # nothing already written was touched


def test_hub_id_without_network_is_one_clear_line(monkeypatch, tmp_path):
    """A hub id is downloaded where the network allows; offline (as in tests) the error says what to do."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NanodiffError, match=r"cannot download 'someone/some-model' .*pass the folder"):
        StableDiffusion.from_pretrained("someone/some-model")


def test_missing_optional_packages_name_the_extra(monkeypatch, sd):
    import importlib.util

    from nanodiffusion.inference import stable_diffusion

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a)
    )
    with pytest.raises(NanodiffError, match=r"needs diffusers: pip install 'nanodiffusion\[sd\]'"):
        stable_diffusion.StableDiffusion.from_pretrained(sd[1])

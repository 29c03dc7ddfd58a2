"""SD3-class folders under nanodiffusion's samplers, checked against diffusers' StableDiffusion3Pipeline.

A tiny SD3 pipeline with random weights (bench/_sd3_fixture.py: two CLIP text models with
projections, no T5 unless asked, a 2-block joint transformer, a 16-channel autoencoder with SD3's
scale and shift, the flow scheduler with shift 3) is saved as a diffusers folder and loaded by
both libraries. nanodiffusion's Euler sampler on the flow schedule must give diffusers' image to
1e-4 from the same latents and the same noise levels, with and without guidance.
"""

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _sd3_fixture import POOLED_DIM, random_sd3_pipeline  # noqa: E402  (bench/_sd3_fixture.py)
from nanodiffusion.core.schedules import flow_t  # noqa: E402
from nanodiffusion.errors import NanodiffError  # noqa: E402
from nanodiffusion.inference import stable_diffusion as sd3  # noqa: E402
from nanodiffusion.inference.stable_diffusion import StableDiffusion  # noqa: E402

PROMPT, NEGATIVE = "a red cat on a blue mat", "blurry"


def save(folder, t5=False):
    """A tiny random-weight SD3 pipeline saved as a diffusers folder."""
    pipe = random_sd3_pipeline(t5=t5)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder


def load_diffusers(folder, t5=False):
    none = {} if t5 else dict(text_encoder_3=None, tokenizer_3=None)  # left out of the folder
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True, **none)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return save(tmp_path_factory.mktemp("sd3") / "sd3")


@pytest.fixture(scope="module")
def loaded(sd3_folder):
    """The folder loaded once by each library: (ours, diffusers')."""
    folder = sd3_folder[1]
    return StableDiffusion.from_pretrained(folder, device="cpu"), load_diffusers(folder)


def diffusers_image(pipe, schedule, steps, guidance, latents):
    """diffusers' pipeline over our noise levels: it shifts the t it is given, so it gets t unshifted."""
    sigmas = schedule.sampling_sigmas(steps)
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents.clone(),
        sigmas=flow_t(sigmas[:-1] / schedule.shift).tolist(),
        output_type="pt",
    )
    return out.images.float() * 2 - 1  # [0, 1] -> [-1, 1]


def test_the_scheduler_config_gives_the_flow_schedule():
    config = dict(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    schedule = sd3.flow_schedule_from_diffusers(config)
    assert (schedule.kind, schedule.shift) == ("flow", 3.0)
    # the trained levels one below t = 1 (sigma = inf) and at t = 1 / T, shifted: sigma' = 3 sigma
    assert schedule.sigma_max == pytest.approx(3 * 999) and schedule.sigma_min == pytest.approx(3 / 999)
    sigmas = schedule.sampling_sigmas(8)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(sigmas=flow_t(sigmas[:-1] / 3.0).tolist())
    assert torch.allclose(scheduler.sigmas.double(), flow_t(sigmas), atol=1e-6)
    for key, value, message in [
        ("use_dynamic_shifting", True, "use_dynamic_shifting=True"),
        ("invert_sigmas", True, "invert_sigmas=True"),
        ("num_train_timesteps", 500, "num_train_timesteps=500"),
        ("_class_name", "EulerDiscreteScheduler", "'EulerDiscreteScheduler' for an SD3 folder"),
    ]:
        with pytest.raises(NanodiffError, match=message):
            sd3.flow_schedule_from_diffusers({**config, key: value})


def test_packing_keeps_tokens_and_pooled_exactly():
    tokens, pooled = torch.randn(3, 5, 48), torch.randn(3, POOLED_DIM)  # 72 channels: two rows of 48
    cond = sd3.pack_condition(tokens, pooled)
    assert cond.shape == (3, 7, 48)
    back_tokens, back_pooled = sd3.unpack_condition(cond, POOLED_DIM)
    assert torch.equal(back_tokens, tokens) and torch.equal(back_pooled, pooled)


def test_embeddings_equal_diffusers_encode_prompt(loaded):
    ours, theirs = loaded
    assert isinstance(ours, sd3.StableDiffusion3) and ours.denoiser.parameterization == "flow"
    tokens, pooled = sd3.unpack_condition(ours.encode_prompt([PROMPT, NEGATIVE]), POOLED_DIM)
    embeds, negative_embeds, pooled_embeds, negative_pooled = theirs.encode_prompt(
        PROMPT, None, None, negative_prompt=NEGATIVE
    )
    assert tokens.shape == (2, 77 + 256, 48) and pooled.shape == (2, POOLED_DIM)
    assert (tokens[0] - embeds[0]).abs().max() < 1e-5
    assert (tokens[1] - negative_embeds[0]).abs().max() < 1e-5
    assert (pooled[0] - pooled_embeds[0]).abs().max() < 1e-5
    assert (pooled[1] - negative_pooled[0]).abs().max() < 1e-5
    assert tokens[:, 77:].abs().max() == 0  # no T5: zeros, as diffusers feeds


@pytest.mark.parametrize("guidance", [1.0, 4.5])
@pytest.mark.slow  # 2-8 s each on 2 busy cores
def test_flow_euler_matches_diffusers_pipeline(loaded, sd3_folder, guidance):
    ours, theirs = loaded
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    kwargs = dict(negative_prompt=NEGATIVE, steps=4, guidance=guidance, sampler="euler", latents=latents)
    image = ours(PROMPT, output="tensor", **kwargs)
    expected = diffusers_image(theirs, ours.denoiser.schedule, 4, guidance, latents)
    assert image.shape == expected.shape == (1, 3, 16, 16)
    assert (image - expected).abs().max() < 1e-4
    assert expected.std() > 0.05  # an image, not a constant: 1e-4 is a strict bound
    # the loaders agree: the in-memory pipeline (the same weights, other tensors: CPU kernels may
    # sum in another order) gives the same image to float32 rounding
    if guidance == 1:  # once is enough
        again = StableDiffusion.from_diffusers(sd3_folder[0], device="cpu")(PROMPT, output="tensor", **kwargs)
        assert (again - image).abs().max() < 1e-5


@pytest.mark.slow
def test_a_t5_folder_matches_diffusers(tmp_path):
    """With text_encoder_3: T5's 256 tokens follow the CLIP tokens, and the image still matches."""
    _, folder = save(tmp_path / "sd3-t5", t5=True)
    ours = StableDiffusion.from_pretrained(folder, device="cpu")
    assert ours.t5 is not None
    tokens, _ = sd3.unpack_condition(ours.encode_prompt(PROMPT), POOLED_DIM)
    theirs = load_diffusers(folder, t5=True)
    assert (tokens - theirs.encode_prompt(PROMPT, None, None)[0]).abs().max() < 1e-4
    assert tokens[:, 77:].abs().min() > 0
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    kwargs = dict(negative_prompt=NEGATIVE, steps=4, guidance=4.5, sampler="euler", latents=latents)
    image = ours(PROMPT, output="tensor", **kwargs)
    expected = diffusers_image(theirs, ours.denoiser.schedule, 4, 4.5, latents)
    assert (image - expected).abs().max() < 1e-4


def test_img2img_uses_the_shifted_latents(loaded):
    pipe = loaded[0]
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = pipe.encode_image(init)
    mean = pipe.vae.encode(init).latent_dist.mean
    assert torch.allclose(z0, (mean - 0.0609) * 1.5305)
    assert torch.allclose(pipe.vae.decode(mean).sample.clamp(-1, 1), pipe.decode(z0), atol=1e-5)
    txt2img = pipe(PROMPT, steps=6, sampler="euler", seed=3, output="latent")
    full = pipe(PROMPT, steps=6, sampler="euler", seed=3, init_image=init, strength=1.0, output="latent")
    assert torch.equal(full, txt2img)
    light = pipe(PROMPT, steps=6, sampler="euler", seed=3, init_image=init, strength=0.2, output="latent")
    assert (light - z0).norm() < 0.5 * (txt2img - z0).norm()


def test_cli_draws_with_an_sd3_folder(sd3_folder, loaded, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from nanodiffusion.cli import main

    folder, out = sd3_folder[1], tmp_path / "out"
    args = ["sd", PROMPT, "--model", str(folder), "--sampler", "euler", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    files = list(out.glob("*.png"))
    assert [f.name for f in files] == ["a-red-cat-on-a-blue-mat-seed0.png"]
    # the library's image with the command's defaults (guidance 7.5, seed 0), pixel for pixel
    expected = loaded[0](PROMPT, steps=2, sampler="euler", guidance=7.5, seed=0)[0]
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(expected))
    capsys.readouterr()
    assert main([*args, "--size", "64"]) == 2
    assert "64x64 is too large for this checkpoint: sides up to 32 pixels" in capsys.readouterr().err
    with pytest.raises(
        NanodiffError, match=r"multiples of 4 \(the autoencoder's factor 2 x the transformer's patch 2\)"
    ):
        loaded[0].check_size(18, 16)


def _broken(folder, tmp_path, name, change):
    broken = tmp_path / name
    shutil.copytree(folder, broken)
    change(broken)
    return broken


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_broken_sd3_folders_are_one_line(sd3_folder, tmp_path, capsys):
    from nanodiffusion.cli import main

    folder = sd3_folder[1]

    def bin_only(f):
        (f / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
        (f / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"")

    cases = [
        (
            lambda f: (f / "text_encoder_2" / "model.safetensors").unlink(),
            r"not a diffusers Stable Diffusion 3 folder: text_encoder_2/model.safetensors "
            r"\(CLIP-G's text model's weights\) is missing",
        ),
        (bin_only, r"transformer/diffusion_pytorch_model.safetensors .* \(only .bin weights"),
        (
            lambda f: shutil.rmtree(f / "tokenizer_2"),
            r"tokenizer_2/tokenizer.json \(a tokenizer\) is missing",
        ),
        (
            lambda f: _edit_json(f / "model_index.json", text_encoder_3=["transformers", "T5EncoderModel"]),
            r"text_encoder_3/config.json \(the T5 encoder's config\) is missing",
        ),
        (
            lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", use_dynamic_shifting=True),
            "unsupported scheduler option use_dynamic_shifting=True",
        ),
        (
            lambda f: _edit_json(f / "transformer" / "config.json", _class_name="FluxTransformer2DModel"),
            "describes 'FluxTransformer2DModel'; an SD3 folder has an SD3Transformer2DModel",
        ),
        (lambda f: (f / "model_index.json").write_text("{"), "model_index.json is not valid JSON"),
        (
            lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage"),
            "cannot load",
        ),
    ]
    for i, (change, message) in enumerate(cases):
        broken = _broken(folder, tmp_path, f"broken{i}", change)
        with pytest.raises(NanodiffError, match=message) as error:
            StableDiffusion.from_pretrained(broken, device="cpu")
        assert "\n" not in str(error.value)
    capsys.readouterr()  # and the CLI says the same in one line
    assert main(["sd", PROMPT, "--model", str(broken), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanodiff: error: cannot load") and err.count("\n") == 1

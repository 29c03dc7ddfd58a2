"""diffusers DiT folders (DiTPipeline) under nanodiffusion's samplers, checked against diffusers' own
pipeline: a tiny random-weight DiTPipeline (learned-sigma transformer, autoencoder) is saved as a
folder and loaded by both libraries; from the same seed and the same noise levels, DDIM and
DPM-Solver++(2M) must give diffusers' images to 1e-4, with and without guidance."""

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from nanodiffusion.core.denoisers import Denoiser  # noqa: E402
from nanodiffusion.inference.diffusers_models import (  # noqa: E402
    DiffusersDiT,
    DiffusersDiTPipeline,
    dit_denoiser,
    load_diffusers,  # noqa: E402
)
from nanodiffusion.inference.sampling import sample_images  # noqa: E402
from one_line import error_of  # noqa: E402

ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark"}
LABELS = [1, 7, 999]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _transformer(num_classes, out_channels=8, seed=0):
    """A 2-layer DiT over 4x8x8 latents, patch 2, 2 heads x 16; out_channels 8 = eps and learned sigma."""
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=out_channels,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    ).eval()


def _vae():
    """An AutoencoderKL with 4 latent channels and factor 2 (16x16 images)."""
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.3,
    ).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved DiTPipeline with ImageNet's 1000 classes: DiTPipeline feeds its null class as label
    1000 whatever the model's class count, so its guidance runs only on a 1000-class model. Its
    scheduler is DiT's own: DDIM over linear betas, clip_sample off. save_pretrained does not write
    id2label; the hub's DiT folders carry it in model_index.json, as written here."""
    path = tmp_path_factory.mktemp("dit") / "dit"
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    diffusers.DiTPipeline(_transformer(1000), _vae(), scheduler).save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "id2label": ID2LABEL}))
    return path


@pytest.fixture(scope="module")
def ours(folder):
    return DiffusersDiTPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def theirs(folder):
    pipe = diffusers.DiTPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_sigmas(scheduler, schedule, steps):
    """The noise levels a diffusers scheduler visits in `steps` steps (its timesteps' trained
    levels), then 0, where DDIM (set_alpha_to_one) and DPM-Solver (final sigma zero) end."""
    scheduler.set_timesteps(steps)
    return torch.cat([schedule.sigmas()[scheduler.timesteps], torch.zeros(1, dtype=torch.float64)])


# our sampler -> the diffusers scheduler it matches, from the folder's config (DiT's DDIM)
SCHEDULERS = {
    "ddim": lambda folder: diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
    "dpm++2m": lambda folder: diffusers.DPMSolverMultistepScheduler.from_pretrained(
        folder,
        subfolder="scheduler",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",  # its default: 999, 899, 799, ... for 10 steps
    ),
}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_samplers_give_diffusers_dit_images(folder, ours, theirs, sampler, guidance):
    theirs.scheduler = SCHEDULERS[sampler](folder)
    reference = theirs(
        LABELS,
        num_inference_steps=10,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    sigmas = diffusers_sigmas(theirs.scheduler, ours.denoiser.schedule, 10)
    image = ours(LABELS, guidance=guidance, sampler=sampler, sigmas=sigmas, seed=3, output="tensor")
    error = float(((image + 1) / 2 - reference).abs().max())  # diffusers' pixels are in [0, 1]
    assert error < 1e-4, error


def test_the_image_check_has_teeth(folder, ours):
    """Guidance, the class and one spacing off each move the images far more than 1e-4; DDIM's
    leading spacing (DiT's config) is nanodiffusion's spacing="leading" exactly."""
    schedule = ours.denoiser.schedule
    ddim = diffusers_sigmas(SCHEDULERS["ddim"](folder), schedule, 10)
    assert torch.equal(ddim, schedule.sampling_sigmas(10, "leading"))
    run = dict(sampler="ddim", sigmas=ddim, seed=3, output="tensor")
    plain = ours(LABELS, guidance=1.0, **run)
    assert (plain - ours(LABELS, guidance=4.0, **run)).abs().max() > 1e-2
    assert (plain - ours([2, 7, 999], guidance=1.0, **run)).abs().max() > 1e-2
    trailing = dict(run, sigmas=schedule.sampling_sigmas(10, "trailing"))
    assert (plain - ours(LABELS, guidance=1.0, **trailing)).abs().max() > 1e-2


def test_eps_half_and_the_null_class_row():
    """Guided D from a 3-class learned-sigma DiT equals the formula on the raw transformer's first
    4 channels with the null class 3 (num_embeds_ada_norm), at a trained step t. A scheduler
    config with variance_type learned_range is accepted here, the variance being dropped."""
    transformer = _transformer(3)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    D = dit_denoiser(transformer, scheduler.config)
    assert D.net.null_class == 3
    t, w = 600, 2.5
    alpha_bar = scheduler.alphas_cumprod[t].double()
    x_t, labels = torch.randn(2, 4, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        out = transformer(x_t.repeat(2, 1, 1, 1), torch.full((4,), t), torch.tensor([0, 2, 3, 3])).sample
        eps_c, eps_u = out[:, :4].double().chunk(2)
        eps = eps_u + w * (eps_c - eps_u)
        x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        sigma = ((1 - alpha_bar) / alpha_bar).sqrt().float()
        guided = DiffusersDiTPipeline(transformer, _vae(), scheduler.config).guided(w)
        ours = guided(x_t / alpha_bar.sqrt().float(), sigma.expand(2), labels)
    assert (ours - x0).abs().max() < 1e-4 * x0.abs().max()


def test_load_diffusers_gives_the_pipelines_denoiser(folder, ours):
    D = load_diffusers(folder, device="cpu")
    assert isinstance(D, Denoiser) and isinstance(D.net, DiffusersDiT) and not D.training
    assert D.net.sample_shape == (4, 8, 8) and D.schedule == ours.denoiser.schedule
    labels = torch.tensor([5, 0])
    latents = sample_images(
        D,
        2,
        D.net.sample_shape,
        "dpm++2m",
        steps=4,
        seed=5,
        class_labels=labels,
        guidance=3.0,
        uncond=torch.tensor(D.net.null_class),
        clamp=False,
    )
    expected = ours(labels, steps=4, guidance=3.0, sampler="dpm++2m", seed=5, output="latent")
    assert torch.allclose(latents, expected, rtol=1e-5, atol=1e-5)


def _with_transformer_class(folder, copy, class_name):
    """A copy of a DiT folder whose transformer/config.json names another class."""
    copy = shutil.copytree(folder, copy)
    config = copy / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": class_name}))
    return copy


def test_hub_style_transformer2dmodel_config_loads(folder, ours, tmp_path):
    """The hub's DiT folders name Transformer2DModel in transformer/config.json."""
    D = load_diffusers(_with_transformer_class(folder, tmp_path / "hub", "Transformer2DModel"), device="cpu")
    x, sigma, labels = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 8.0]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(D(x, sigma, labels), ours.denoiser(x, sigma, labels))


def test_class_names_from_id2label(ours, theirs):
    assert ours.labels == theirs.labels and ours.labels["Carassius auratus"] == 1
    names = ["goldfish", "great white shark", "tench"]
    assert ours.label_ids(names).tolist() == theirs.get_label_ids(names) == [1, 2, 0]
    run = dict(steps=2, sampler="ddim", output="latent")
    assert torch.equal(ours(["Tinca tinca", "goldfish"], **run), ours([0, 1], **run))
    from_object = DiffusersDiTPipeline.from_diffusers(theirs, device="cpu")
    assert from_object.labels == ours.labels
    assert torch.equal(from_object([0, 1], **run), ours([0, 1], **run))


# --- refusals, each one line -------------------------------------------------------------------
def test_folders_that_are_not_dit_folders(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "model_index.json").write_text("{}")
    assert "transformer/config.json (the transformer's config) is missing" in error_of(
        DiffusersDiTPipeline.from_pretrained, tmp_path / "index"
    )
    assert "holds no diffusers UNet or DiT" in error_of(load_diffusers, tmp_path / "index")
    assert "never downloads" in error_of(DiffusersDiTPipeline.from_pretrained, "facebook/DiT-XL-2-256")
    assert "never downloads" in error_of(load_diffusers, "facebook/DiT-XL-2-256")


def test_missing_files_and_other_transformers(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "scheduler" / "scheduler_config.json").unlink()
    assert "scheduler/scheduler_config.json (the noise levels" in error_of(load_diffusers, copy)
    copy = shutil.copytree(folder, tmp_path / "bin")
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    message = error_of(DiffusersDiTPipeline.from_pretrained, copy)
    assert "vae/diffusion_pytorch_model.safetensors (the autoencoder's weights) is missing" in message
    assert "only .bin weights" in message
    copy = _with_transformer_class(folder, tmp_path / "pixart", "PixArtTransformer2DModel")
    assert "describes 'PixArtTransformer2DModel'" in error_of(load_diffusers, copy)


def test_bad_labels_and_shapes(ours):
    assert "unknown class name 'koi'" in error_of(ours.label_ids, ["koi"])
    for bad in (1000, -1, 2.0):
        assert "integers in [0, 999]" in error_of(ours.label_ids, [bad])
    assert "class-conditional" in error_of(ours.net, torch.zeros(1, 4, 8, 8), torch.ones(1))
    assert "[0, 1000]" in error_of(ours.net, torch.zeros(1, 4, 8, 8), torch.ones(1), torch.tensor([1001]))
    wrong_latents = lambda: ours([0], steps=2, latents=torch.zeros(1, 4, 4, 4))  # noqa: E731
    assert "latents must have shape [1, 4, 8, 8]" in error_of(wrong_latents)
    assert "out_channels=5" in error_of(DiffusersDiT, _transformer(3, out_channels=5))

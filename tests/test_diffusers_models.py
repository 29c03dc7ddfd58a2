"""diffusers UNet2DModel folders as denoisers: the schedule, trajectories against diffusers'
own schedulers on the same UNet, every sampler, class labels and guidance, and the refusals."""

import pytest
import torch

from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.samplers import SAMPLERS, sample_ddim, sample_dpmpp_2m
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.diffusers_models import (
    denoiser_from_diffusers,
    load_diffusers,
    schedule_from_diffusers,
)
from nanodiffusion.inference.pipelines import sample_images

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _unet(seed=0, out_channels=1, **kw):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        **kw,
    )


def _save(folder, unet, **scheduler_kw):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, **scheduler_kw)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """DDPMPipeline folders of one random UNet: eps and v prediction, and a class-conditional one."""
    root = tmp_path_factory.mktemp("diffusers")
    unet = _unet()
    return {
        "eps": _save(root / "eps", unet),
        "v": _save(root / "v", unet, prediction_type="v_prediction"),
        "class": _save(root / "class", _unet(1, num_class_embeds=3)),
    }


# --- the schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "linear", "num_train_timesteps": 500},
        {"beta_schedule": "linear", "num_train_timesteps": 200, "beta_start": 1e-3, "beta_end": 0.05},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50},
    ],
)
def test_schedule_equals_diffusers_alphas_cumprod(options):
    ref = diffusers.DDPMScheduler(**options)
    schedule, parameterization = schedule_from_diffusers(ref)
    assert parameterization == "eps" and schedule.T == ref.config.num_train_timesteps
    # diffusers keeps float32 tables; the cosine tail (alpha_bar ~ 1e-9) carries ~1e-5 relative error
    assert torch.allclose(schedule.betas(), ref.betas.double(), rtol=1e-6, atol=1e-8)
    assert torch.allclose(schedule.alpha_bar(), ref.alphas_cumprod.double(), rtol=1e-4, atol=1e-7)


def test_prediction_types_map_to_parameterizations():
    for prediction, ours in [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")]:
        assert schedule_from_diffusers({"prediction_type": prediction})[1] == ours


@pytest.mark.parametrize(
    "options,match",
    [
        ({"trained_betas": [1e-4] * 10}, "trained_betas="),
        ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
        ({"thresholding": True}, "thresholding=True"),
        ({"variance_type": "learned_range"}, "variance_type='learned_range'"),
        ({"timestep_type": "continuous"}, "timestep_type='continuous'"),
        ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
        ({"_class_name": "ScoreSdeVeScheduler"}, "_class_name='ScoreSdeVeScheduler'"),
    ],
)
def test_unsupported_scheduler_options_are_refused_in_one_line(options, match):
    with pytest.raises(NanodiffError, match=match) as err:
        schedule_from_diffusers(options)
    assert "\n" not in str(err.value)


def test_sampling_only_options_are_ignored():
    schedule, _ = schedule_from_diffusers(
        diffusers.DDIMScheduler(
            clip_sample=True, set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=1
        )
    )
    assert schedule == schedule_from_diffusers({})[0]


# --- trajectories against diffusers on the same UNet ------------------------------------------------
def _start(denoiser, steps, seed=0):
    """The trailing sigmas, and one starting noise in VP form (diffusers) and sigma form (ours)."""
    sigmas = denoiser.schedule.sampling_sigmas(steps, "trailing")
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return sigmas, noise, noise * denoiser.schedule.prior_std(float(sigmas[0]))


@torch.no_grad()
def _diffusers_loop(scheduler, unet, steps, x_vp, **step_kw):
    """x (VP form) after each call of scheduler.step."""
    scheduler.set_timesteps(steps)
    out = []
    for t in scheduler.timesteps:
        x_vp = scheduler.step(unet(x_vp, t).sample, t, x_vp, **step_kw).prev_sample
        out.append(x_vp)
    return out


def _our_starts(fn, denoiser, sigmas, x):
    """Our final sample and x at the start of each step, both in VP form."""
    starts = []
    final = fn(denoiser, x, sigmas, callback=lambda d: starts.append(d["x"]))
    return final, [s / (1 + float(sig) ** 2) ** 0.5 for s, sig in zip(starts, sigmas, strict=False)]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [10, 20])  # divide T: diffusers' DDIM steps to t - T // N
def test_ddim_follows_diffusers_ddim_scheduler_step_by_step(folders, prediction, steps):
    D = load_diffusers(folders[prediction], device="cpu")
    assert D.parameterization == prediction
    ref = diffusers.DDIMScheduler.from_pretrained(
        folders[prediction],
        subfolder="scheduler",
        set_alpha_to_one=True,
        clip_sample=False,
        timestep_spacing="trailing",
    )
    sigmas, noise, x = _start(D, steps)
    theirs = _diffusers_loop(ref, D.net.unet, steps, noise.clone(), eta=0.0)
    final, ours = _our_starts(sample_ddim, D, sigmas, x)
    assert torch.allclose(ours[0], noise, atol=1e-6)
    for i in range(1, steps):  # x at the start of step i vs diffusers' x after step i - 1
        assert torch.allclose(ours[i], theirs[i - 1], atol=1e-4), f"step {i}"
    assert torch.allclose(final, theirs[-1], atol=1e-4)
    # the check has teeth: the UNet's output moves far more than 1e-4 when its step moves by one
    with torch.no_grad():
        t = torch.full((2,), 500.0)
        assert (D.net(noise, t) - D.net(noise, t + 1)).abs().max() > 1e-3


def test_loaded_weights_are_the_saved_ones(folders):
    saved = _unet().state_dict()
    loaded = load_diffusers(folders["eps"], device="cpu").net.unet.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(v, saved[k]) for k, v in loaded.items())


def test_learned_variance_unets_are_refused(folders):
    with pytest.raises(NanodiffError, match="out_channels=2"):
        denoiser_from_diffusers(_unet(out_channels=2), {})


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(folders, prediction):
    D = load_diffusers(folders[prediction], device="cpu")
    ref = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        folders[prediction], subfolder="scheduler", timestep_spacing="trailing"
    )
    sigmas, noise, x = _start(D, 10, seed=1)
    theirs = _diffusers_loop(ref, D.net.unet, 10, noise.clone())
    final, _ = _our_starts(sample_dpmpp_2m, D, sigmas, x)
    assert torch.allclose(final, theirs[-1], atol=1e-4), (final - theirs[-1]).abs().max()


# --- sampling through the pipeline ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_on_a_loaded_model(folders, name):
    D = load_diffusers(folders["eps"], device="cpu")
    assert not D.training and D.net.sample_shape == (1, 8, 8)
    x = sample_images(D, 3, D.net.sample_shape, name, steps=3, seed=0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_class_labels_and_guidance_on_a_class_conditional_unet(folders):
    D = load_diffusers(folders["class"], device="cpu")
    labels = torch.tensor([0, 1, 2])
    plain = sample_images(D, 3, (1, 8, 8), "dpm++2m", steps=3, class_labels=labels)
    other = sample_images(D, 3, (1, 8, 8), "dpm++2m", steps=3, class_labels=labels.flip(0))
    assert torch.isfinite(plain).all() and not torch.allclose(plain, other)
    # a diffusers class UNet has no reserved "no class" index: name one (here label 2)
    guided = ClassifierFreeGuidance(D, 3.0, uncond=torch.tensor(2))
    x = sample_images(guided, 3, (1, 8, 8), "dpm++2m", steps=3, class_labels=labels)
    assert torch.isfinite(x).all() and not torch.allclose(x, plain)
    same = sample_images(
        ClassifierFreeGuidance(D, 1.0, uncond=torch.tensor(2)),
        3,
        (1, 8, 8),
        "dpm++2m",
        steps=3,
        class_labels=labels,
    )
    assert torch.equal(same, plain)
    by_flag = sample_images(
        D, 3, (1, 8, 8), "dpm++2m", steps=3, class_labels=labels, guidance=3.0, uncond=torch.tensor(2)
    )
    assert torch.equal(by_flag, x)
    with pytest.raises(NanodiffError, match="class-conditional"):
        sample_images(D, 1, (1, 8, 8), "ddim", steps=2)


def test_a_bare_unet_folder_with_scheduler_config_loads_the_same(folders, tmp_path):
    D = load_diffusers(folders["v"], device="cpu")
    D.net.unet.save_pretrained(tmp_path)
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_config(tmp_path)
    E = load_diffusers(tmp_path, device="cpu")
    assert E.parameterization == "v" and E.schedule == D.schedule
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 5.0])
    with torch.no_grad():
        assert torch.allclose(D(x, sigma), E(x, sigma))
    E2 = denoiser_from_diffusers(D.net.unet, {"prediction_type": "v_prediction"})
    with torch.no_grad():
        assert torch.allclose(D(x, sigma), E2(x, sigma))


# --- refusals ---------------------------------------------------------------------------------------
def test_missing_folders_and_hub_ids_are_refused_in_one_line(tmp_path, folders):
    cases = [
        (tmp_path / "nope", "no diffusers model folder"),
        ("google/ddpm-cifar10-32", "never downloads"),
        (tmp_path, "holds no diffusers UNet"),
    ]
    bare = tmp_path / "bare"
    load_diffusers(folders["eps"], device="cpu").net.unet.save_pretrained(bare)
    cases.append((bare, "scheduler_config.json"))
    for path, match in cases:
        with pytest.raises(NanodiffError, match=match) as err:
            load_diffusers(path, device="cpu")
        assert "\n" not in str(err.value)

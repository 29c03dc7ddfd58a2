"""The one validation pass (nanodiffusion.io.validation.validate): every bad value is one line that
names its key, the presets pass, the memory estimate refuses with a number, and a run folder's bad
config.json stops `nanodiff info` with exit status 2."""

import json
import re

import pytest

from nanodiffusion.cli import main
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.io import validation
from nanodiffusion.io.config import PRESETS, Config, apply_overrides, preset, validate
from nanodiffusion.nets.unet import UNet, UNetConfig
from one_line import error_of

GB = 10**9


@pytest.fixture(autouse=True)
def a_24_gb_machine(monkeypatch):
    """The memory refusals' numbers do not depend on the machine the tests run on."""
    monkeypatch.setattr(validation, "physical_memory", lambda: 24 * GB)


def digits_with(*overrides: str) -> Config:
    """The digits preset with overrides, through both stages: from_dict's, then validate's on the
    config as a network would be built from it."""
    return validate(apply_overrides(preset("digits"), list(overrides)))


BAD = [
    # model: the UNet's sizes
    (["model.channels=-8"], "model.channels must be a positive multiple of 8, got -8"),
    (["model.channels=0"], "model.channels must be a positive multiple of 8, got 0"),
    (["model.channels=12"], "model.channels must be a positive multiple of 8, got 12"),
    (["model.channels=8.5"], "config value model.channels = 8.5 should be of type int"),
    (["model.head_dim=0"], "model.head_dim must be an integer >= 1, got 0"),
    (["model.head_dim=24"], "model.head_dim must divide every level's width [32, 64] (or exceed it), got 24"),
    (["model.channel_mults=[]"], "model.channel_mults must be 1 to 16 integers >= 1, got []"),
    (
        ["model.channel_mults=[1, 0]"],
        "model.channel_mults must be 1 to 16 integers >= 1, got [1, 0]",
    ),
    (
        ["model.channel_mults=[" + ", ".join(["1"] * 17) + "]"],
        "model.channel_mults must be 1 to 16 integers >= 1, got [" + ", ".join(["1"] * 17) + "]",
    ),
    (["model.blocks_per_level=-1"], "model.blocks_per_level must be an integer >= 1, got -1"),
    (["model.blocks_per_level=0"], "model.blocks_per_level must be an integer >= 1, got 0"),
    (
        ["model.image_size=0"],
        "model.image_size must be an integer >= 1 or a list of 1 to 3 of them (a UNet's: an integer), got 0",
    ),
    (["model.in_channels=0"], "model.in_channels must be an integer >= 1, got 0"),
    (['model.out_channels="3"'], "config value model.out_channels = '3' should be of type int"),
    (["model.num_classes=-1"], "model.num_classes must be an integer >= 0, got -1"),
    (["model.context_dim=-1"], "model.context_dim must be an integer >= 0, got -1"),
    (["model.cond_channels=-1"], "model.cond_channels must be an integer >= 0, got -1"),
    (["model.dropout=1"], "model.dropout must be a number in [0, 1), got 1"),
    (["model.dropout=NaN"], "model.dropout must be a number in [0, 1), got nan"),
    (["model.attn_resolutions=[0]"], "model.attn_resolutions must be a list of integers >= 1, got [0]"),
    (
        ["model.num_classes=10", "model.context_dim=8"],
        "model.num_classes (10) and model.context_dim (8): a UNet is class-conditional or "
        "text-conditional, not both",
    ),
    # model: what the data decides, checked before a network is built
    (
        ["model.attn_resolutions=[5]"],
        "model.attn_resolutions must be feature-map sizes of this UNet (8, 4 for model.image_size = 8), "
        "got [5]",
    ),
    (
        ["model.channel_mults=[1, 1, 1, 1, 1]"],
        "model.channel_mults must have at most 4 levels for model.image_size = 8 (each level halves it), "
        "got [1, 1, 1, 1, 1]",
    ),
    (
        ["data.class_conditional=true"],
        "model.num_classes must be positive when data.class_conditional = true, got 0",
    ),
    (
        ["data.text_encoder=minilm"],
        "model.context_dim must be positive when data.text_encoder = 'minilm', got 0",
    ),
    (
        ["data.task=upscale", "data.low_res=8", "model.attn_resolutions=[]"],
        "data.low_res must divide model.image_size (8) and be smaller (0: half of it), got 8",
    ),
    (
        ["data.task=upscale", "data.low_res=3", "model.attn_resolutions=[]"],
        "data.low_res must divide model.image_size (8) and be smaller (0: half of it), got 3",
    ),
    # data
    (['data.name=""'], "data.name must be a dataset name, an image folder or a .npz file, got ''"),
    (["data.image_size=0"], "data.image_size must be an integer >= 1 or null, got 0"),
    (["data.image_size=big"], "data.image_size must be an integer >= 1 or null, got 'big'"),
    (["data.channels=2"], "data.channels must be 1 (grey), 3 (RGB) or null (the data's own), got 2"),
    (["data.p_uncond=5"], "data.p_uncond must be a number in [0, 1], got 5"),
    (["data.p_uncond=-0.1"], "data.p_uncond must be a number in [0, 1], got -0.1"),
    (["data.max_tokens=0"], "data.max_tokens must be an integer in [1, 512], got 0"),
    (["data.max_tokens=1000"], "data.max_tokens must be an integer in [1, 512], got 1000"),
    (["data.autoencoder_steps=0"], "data.autoencoder_steps must be an integer >= 1, got 0"),
    (["data.autoencoder_channels=12"], "data.autoencoder_channels must be a positive multiple of 8, got 12"),
    (["data.autoencoder_batch_size=-1"], "data.autoencoder_batch_size must be an integer >= 1, got -1"),
    (["data.low_res=-1"], "data.low_res must be an integer >= 0, got -1"),
    (["data.noise_aug=-1"], "data.noise_aug must be a finite number >= 0, got -1"),
    (["data.residual_scale=Infinity"], "data.residual_scale must be a finite number >= 0, got inf"),
    (["data.crop=-4"], "data.crop must be an integer >= 0, got -4"),
    (
        ["data.task=colorize"],
        "data.task must be one of '', 'inpaint', 'upscale', 'molecules', got 'colorize'",
    ),
    (
        ["data.class_conditional=true", "data.text_encoder=minilm"],
        "data.class_conditional = true and data.text_encoder = 'minilm': train on labels or on captions, "
        "not both",
    ),
    # schedule, diffusion, loss
    (["schedule.T=0"], "schedule.T must be an integer in [1, 100000], got 0"),
    (["schedule.T=1000000000"], "schedule.T must be an integer in [1, 100000], got 1000000000"),
    (
        ["schedule.kind=karras"],
        "schedule.kind must be one of 'linear', 'scaled_linear', 'cosine', 'sigmoid', 'edm', 'flow', "
        "got 'karras'",
    ),
    (["schedule.beta_start=0"], "schedule.beta_start must be a number in (0, 1), got 0"),
    (["schedule.beta_end=1.5"], "schedule.beta_end must be a number in (0, 1), got 1.5"),
    (
        ["schedule.T=10", "run.sample_steps=5"],
        "schedule.beta_end must be below schedule.T / 1000 = 0.01 for the linear schedule (it scales the "
        "betas by 1000 / T), got 0.02",
    ),
    (["schedule.cosine_s=-1"], "schedule.cosine_s must be a finite number >= 0, got -1"),
    (["schedule.sigmoid_tau=0"], "schedule.sigmoid_tau must be a finite number > 0, got 0"),
    (
        ["schedule.kind=sigmoid", "schedule.sigmoid_start=3", "schedule.sigmoid_end=-3"],
        "schedule.sigmoid_end must be above schedule.sigmoid_start (3), got -3",
    ),
    (["schedule.sigma_min=0"], "schedule.sigma_min must be a finite number > 0, got 0"),
    (["schedule.sigma_max=0.001"], "schedule.sigma_max must be above schedule.sigma_min (0.002), got 0.001"),
    (["schedule.sigma_max=1e30"], "schedule.sigma_max must be a number in (0, 1e+19), got 1e+30"),
    (
        ["loss.sigma_sampling=lognormal", "loss.p_mean=40"],
        "loss.p_mean + 6 loss.p_std must be below 43.7 (ln of the sigma whose square overflows float32), "
        "got 47.2",
    ),
    (["schedule.rho=NaN"], "schedule.rho must be a finite number > 0, got nan"),
    (["diffusion.sigma_data=0"], "diffusion.sigma_data must be a finite number > 0, got 0"),
    (
        ["diffusion.parameterization=score"],
        "diffusion.parameterization must be one of 'eps', 'v', 'x0', 'edm', 'flow', got 'score'",
    ),
    (["loss.weighting=snr"], "loss.weighting must be one of 'uniform', 'min-snr', 'edm', got 'snr'"),
    (
        ["loss.sigma_sampling=gaussian"],
        "loss.sigma_sampling must be one of 'uniform-t', 'lognormal', 'mode', got 'gaussian'",
    ),
    (["loss.p_std=0"], "loss.p_std must be a finite number > 0, got 0"),
    (["loss.p_mean=-Infinity"], "loss.p_mean must be a finite number, got -inf"),
    (["loss.min_snr_gamma=-5"], "loss.min_snr_gamma must be a finite number > 0, got -5"),
    # optim, ema
    (["optim.lr=NaN"], "optim.lr must be a number in (0, 10], got nan"),
    (["optim.lr=-0.001"], "optim.lr must be a number in (0, 10], got -0.001"),
    (["optim.lr=Infinity"], "optim.lr must be a number in (0, 10], got inf"),
    (["optim.lr=0"], "optim.lr must be a number in (0, 10], got 0"),
    (["optim.lr=1e308"], "optim.lr must be a number in (0, 10], got 1e+308"),
    (["optim.lr=1" + "0" * 400], "optim.lr must be a number in (0, 10], got 1" + "0" * 400),
    (["optim.weight_decay=-1"], "optim.weight_decay must be a finite number >= 0, got -1"),
    (["optim.beta1=-0.5"], "optim.beta1 must be a number in [0, 1), got -0.5"),
    (["optim.beta2=1"], "optim.beta2 must be a number in [0, 1), got 1"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps must be an integer >= 0, got -5"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio must be a number in [0, 1], got 2"),
    (["optim.grad_clip=NaN"], "optim.grad_clip must be a finite number >= 0, got nan"),
    (["optim.batch_size=0"], "optim.batch_size must be an integer >= 1, got 0"),
    (["optim.grad_accum=0"], "optim.grad_accum must be an integer >= 1, got 0"),
    (
        ["optim.batch_size=10", "optim.grad_accum=4"],
        "optim.batch_size must divide by optim.grad_accum (4), got 10",
    ),
    (["ema.power=0"], "ema.power must be a finite number > 0, got 0"),
    (["ema.max_decay=1.5"], "ema.max_decay must be a number in [0, 1], got 1.5"),
    # run
    (["run.steps=0"], "run.steps must be an integer >= 1, got 0"),
    (["run.seed=-1"], "run.seed must be an integer in [0, 4294967295], got -1"),
    (["run.log_every=0"], "run.log_every must be an integer >= 1, got 0"),
    (["run.sample_every=-1"], "run.sample_every must be an integer >= 0, got -1"),
    (["run.checkpoint_every=-1"], "run.checkpoint_every must be an integer >= 0, got -1"),
    (["run.sample_n=0"], "run.sample_n must be an integer >= 1, got 0"),
    (["run.sample_steps=0"], "run.sample_steps must be an integer >= 1, got 0"),
    (["run.sample_steps=2000"], "run.sample_steps must be at most schedule.T (1000), got 2000"),
    (["run.sample_guidance=NaN"], "run.sample_guidance must be a finite number >= 0, got nan"),
    (["run.sampler=nope"], "run.sampler must be one of " + ", ".join(map(repr, SAMPLERS)) + ", got 'nope'"),
    (["run.device=tpu"], "run.device must be auto, cpu or cuda, got 'tpu'"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_is_one_line_naming_its_key(overrides, message):
    assert error_of(digits_with, *overrides) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.num_classes=1000000000"],
            "model.num_classes = 1000000000 would need about 512 GB for the class embedding alone; "
            "this machine has 24 GB",
        ),
        (
            ["model.image_size=100000", "model.attn_resolutions=[]"],
            r"model.image_size = 100000 would need about [\d,]+ GB for the model and the activations of "
            "one image; this machine has 24 GB",
        ),
        (
            ["model.image_size=256", "model.attn_resolutions=[256]"],
            r"model.attn_resolutions = \[256\] would need about \d+ GB for the model and the activations "
            "of one image; this machine has 24 GB",
        ),
        (
            ["model.blocks_per_level=1000000"],
            r"model.channels = 32 \(with model.channel_mults = \[1, 2\], model.blocks_per_level = 1000000\) "
            r"would need about [\d,]+ GB for the [\d,]+ parameters; this machine has 24 GB",
        ),
        (
            ["model.channels=65536"],
            r"model.channels = 65536 \(.*\) would need about [\d,]+ GB for the [\d,]+ parameters; "
            "this machine has 24 GB",
        ),
    ],
)
def test_what_needs_more_memory_than_the_machine_has_is_refused_with_the_number(overrides, message):
    assert re.fullmatch(message, error_of(digits_with, *overrides))


def test_training_counts_its_batch_and_the_optimiser_state():
    """A config that loads (one image, one copy of the weights) can still be too big to train; and
    before the data loads, a pixel run's size is data.image_size's."""
    cfg = apply_overrides(
        preset("digits"),
        [
            "model.image_size=128",
            "model.attn_resolutions=[]",
            "model.mid_attention=false",
            "optim.batch_size=512",
        ],
    )
    assert validate(cfg) is cfg
    message = error_of(lambda: validate(cfg, training=True))
    assert re.fullmatch(
        r"model.image_size = 128 would need about \d+ GB for the model and the activations of one "
        r"training batch \(512 images, optim.batch_size / optim.grad_accum\); this machine has 24 GB",
        message,
    )
    grid = apply_overrides(preset("digits"), ["run.sample_n=1000000000"])
    assert error_of(lambda: validate(grid, training=True)) == (
        "run.sample_n = 1000000000 would need about 768 GB for the sample grid of 8x8 images; "
        "this machine has 24 GB"
    )
    autoencoder = apply_overrides(preset("text"), ["data.autoencoder_batch_size=100000"])
    assert error_of(lambda: validate(autoencoder, prepared=False, training=True)) == (
        "data.autoencoder_batch_size = 100000 would need about 170 GB for the autoencoder's training on "
        "32x32 images (data.autoencoder_channels = 16); this machine has 24 GB"
    )
    big_data = ["data.autoencoder=", "data.image_size=100000"]
    assert error_of(apply_overrides, preset("text"), big_data).startswith(
        "data.image_size = 100000 would need about "
    )


def test_no_memory_figure_no_memory_refusal(monkeypatch):
    monkeypatch.setattr(validation, "physical_memory", lambda: None)
    assert digits_with("model.image_size=100000", "model.attn_resolutions=[]").model.image_size == 100000


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_for_training(name):
    cfg = preset(name)
    assert validate(cfg, prepared=False, training=True) is cfg
    if name in ("text", "video-shapes"):  # what the trainer fills in: MiniLM's token width
        cfg.model.context_dim = 384
    assert validate(cfg, training=True) is cfg


UNETS = [preset(name).model for name in PRESETS if preset(name).model.kind == "unet"] + [
    UNetConfig(
        channels=16,
        channel_mults=[1, 2, 3],
        blocks_per_level=3,
        attn_resolutions=[14, 7],
        head_dim=16,
        num_classes=10,
        cond_channels=2,
        image_size=28,
    ),
    UNetConfig(
        in_channels=3,
        out_channels=6,
        channels=32,
        channel_mults=[1, 2],
        attn_resolutions=[8, 4],
        head_dim=16,
        context_dim=12,
        image_size=8,
    ),
]


@pytest.mark.parametrize("m", UNETS)
def test_the_parameter_count_is_exact(m):
    """The memory estimate's parameters are UNet's own, in closed form (classes, a text UNet's
    transformer blocks, an image condition's channels included)."""
    assert validation.unet_parameters(m)["total"] == sum(p.numel() for p in UNet(m).parameters())


def test_a_config_built_in_code_is_checked_before_its_network(tmp_path):
    from nanodiffusion.inference.runs import build_denoiser
    from nanodiffusion.training.diffusion import train

    cfg = preset("digits")
    cfg.optim.lr = float("nan")
    assert error_of(build_denoiser, cfg) == "optim.lr must be a number in (0, 10], got nan"
    assert error_of(train, cfg, tmp_path / "run") == "optim.lr must be a number in (0, 10], got nan"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "head_dim", 0, "model.head_dim must be an integer >= 1, got 0"),
        ("optim", "lr", -1, "optim.lr must be a number in (0, 10], got -1"),
        (
            "model",
            "attn_resolutions",
            [3],
            "model.attn_resolutions must be feature-map sizes of this UNet (28, 14, 7 for "
            "model.image_size = 28), got [3]",
        ),
        (
            "model",
            "num_classes",
            10**9,
            "model.num_classes = 1000000000 would need about 256 GB for the class embedding alone; "
            "this machine has 24 GB",
        ),
    ],
)
def test_info_on_a_run_folder_with_a_bad_config_exits_2_with_one_line(
    tmp_path, capsys, section, key, value, message
):
    d = preset("mnist").to_dict()
    d[section][key] = value
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert main(["info", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"nanodiff: error: {tmp_path / 'config.json'}: {message}\n"


def test_an_old_run_folder_without_the_newer_keys_still_loads(tmp_path):
    d = preset("digits").to_dict()
    for section, key in [("data", "task"), ("data", "crop"), ("model", "mid_attention"), ("run", "sampler")]:
        del d[section][key]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert Config.load(tmp_path / "config.json") == preset("digits")

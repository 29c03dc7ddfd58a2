"""Run configuration (nanodiffusion.io.config): presets, TOML and JSON files, overrides, and the
one-line errors for unknown keys and wrong types."""

import dataclasses
import json

import pytest
import torch

from nanodiffusion.io.config import PRESETS, Config, apply_overrides, preset
from nanodiffusion.nets import build_net, sample_shape
from one_line import error_of

DATA = {
    "digits": "digits",
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "mnist-flow": "mnist",
    "fashion-mnist-flow": "fashion-mnist",
    "text": "shapes",
    "video-shapes": "video-shapes",
    "moving-mnist": "moving-mnist",
    "speech": "speech",
    "speech-wave": "speech",
    "chorales": "chorales",
    "cifar10": "cifar10",
    "upscale": "shapes",
    "qm9-like": "qm9-like",
    "drug-like": "drug-like",
}


def toml_text(d: dict) -> str:
    """A config dict as TOML: a table per section; None (TOML has no null) is left out."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        return "[" + ", ".join(value(x) for x in v) + "]"

    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


# --- presets --------------------------------------------------------------------------------------


def test_every_preset_is_listed():
    assert tuple(PRESETS) == (
        "digits",
        "mnist",
        "fashion-mnist",
        "mnist-flow",
        "fashion-mnist-flow",
        "text",
        "video-shapes",
        "moving-mnist",
        "speech",
        "speech-wave",
        "chorales",
        "cifar10",
        "upscale",
        "qm9-like",
        "drug-like",
    )
    assert set(DATA) == set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_a_config_and_its_network(name):
    cfg = preset(name)
    assert isinstance(cfg, Config) and cfg.data.name == DATA[name]
    assert Config.from_dict(cfg.to_dict()) == cfg
    net = build_net(cfg.model).eval()  # a UNet, or the video presets' space-time DiT
    shape = sample_shape(cfg.model)
    if cfg.model.kind == "egnn":  # atoms [N, 3 + K]: no channel axis first
        with torch.no_grad():
            assert net(torch.zeros(2, *shape), torch.zeros(2)).shape == (2, *shape)
        return
    x = torch.zeros(2, shape[0] + cfg.model.cond_channels, *shape[1:])
    with torch.no_grad():
        assert net(x, torch.zeros(2)).shape == (2, cfg.model.out_channels, *shape[1:])


def test_preset_values_the_docs_state():
    digits = preset("digits")
    assert (digits.model.image_size, digits.model.channels, digits.run.steps) == (8, 32, 800)
    assert (digits.schedule.kind, digits.diffusion.parameterization, digits.loss.weighting) == (
        "linear",
        "eps",
        "uniform",
    )
    fashion = preset("fashion-mnist")
    assert (fashion.schedule.kind, fashion.diffusion.parameterization) == ("edm", "edm")
    assert (fashion.loss.sigma_sampling, fashion.loss.weighting) == ("lognormal", "edm")
    text = preset("text")
    assert (text.data.text_encoder, text.data.autoencoder, text.model.in_channels) == ("minilm", "train", 4)
    assert text.diffusion.sigma_data == 1.0 and text.loss.p_mean == -0.5
    upscale = preset("upscale")
    assert (upscale.data.task, upscale.data.image_size, upscale.data.crop) == ("upscale", 64, 32)


def test_presets_are_fresh_objects():
    a = preset("digits")
    a.model.channel_mults.append(8)
    assert preset("digits").model.channel_mults == [1, 2]


def test_unknown_preset_is_one_line():
    assert error_of(preset, "cifar") == (
        "unknown preset 'cifar'; choose one of digits, mnist, fashion-mnist, mnist-flow, fashion-mnist-flow, "
        "text, video-shapes, moving-mnist, speech, speech-wave, chorales, cifar10, upscale, qm9-like, "
        "drug-like"
    )


# --- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_json_round_trip(tmp_path, name):
    cfg = preset(name)
    cfg.save(tmp_path / "config.json")
    assert (tmp_path / "config.json").read_text() == json.dumps(cfg.to_dict(), indent=2) + "\n"
    assert Config.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("name", PRESETS)
def test_toml_round_trip(tmp_path, name):
    cfg = preset(name)
    (tmp_path / "run.toml").write_text(toml_text(cfg.to_dict()))
    assert Config.load(tmp_path / "run.toml") == cfg


def test_a_partial_toml_file_keeps_the_defaults(tmp_path):
    (tmp_path / "run.toml").write_text('[model]\nchannels = 16\n[optim]\nlr = 1\n[run]\nsampler = "heun"\n')
    cfg = Config.load(tmp_path / "run.toml")
    expected = Config()
    expected.model.channels, expected.optim.lr, expected.run.sampler = 16, 1, "heun"
    assert cfg == expected
    assert cfg.optim.lr == 1.0 and cfg.data == Config().data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nnonsense = 1\nchanels = 8\n", "unknown config key(s) in [model]: chanels, nonsense"),
        ("[modle]\nchannels = 8\n", "unknown config section(s): modle"),
        ('[model]\nchannels = "eight"\n', "config value model.channels = 'eight' should be of type int"),
        ("[model]\nchannels = 8.5\n", "config value model.channels = 8.5 should be of type int"),
        ("[run]\nsteps = true\n", "config value run.steps = True should be of type int"),
        ('[optim]\nlr = "fast"\n', "config value optim.lr = 'fast' should be of type float"),
        (
            "[model]\nattn_resolutions = [4.5]\n",
            "config value model.attn_resolutions = [4.5] should be of type list of int",
        ),
        ("[data]\nclass_conditional = 1\n", "config value data.class_conditional = 1 should be of type bool"),
        ('[run]\nsampler = "nope"\n', "run.sampler must be one of "),
        ("model = 5\n", "config section [model] is a table of keys, not a int"),
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    assert error_of(Config.load, tmp_path / "bad.toml").startswith(f"{tmp_path / 'bad.toml'}: {message}")


def test_unreadable_files_are_named(tmp_path):
    assert error_of(Config.load, tmp_path / "none.toml") == f"config file not found: {tmp_path / 'none.toml'}"
    for name, text, start in [
        ("broken.toml", "[model\nchannels = 8", "cannot parse config"),
        ("broken.json", '{"model": ', "cannot parse config"),
    ]:
        (tmp_path / name).write_text(text)
        assert error_of(Config.load, tmp_path / name).startswith(f"{start} {tmp_path / name}: ")
    (tmp_path / "a-list.json").write_text("[1, 2]")
    assert error_of(Config.load, tmp_path / "a-list.json") == (
        f"{tmp_path / 'a-list.json'}: a config is a table of sections (model, ...), not a list"
    )
    (tmp_path / "folder.toml").mkdir()
    message = error_of(Config.load, tmp_path / "folder.toml")
    assert message == f"cannot read config {tmp_path / 'folder.toml'}: Is a directory"


# --- overrides ------------------------------------------------------------------------------------


def test_overrides_parse_json_values_and_keep_bare_strings():
    base = preset("digits")
    cfg = apply_overrides(
        base,
        [
            "model.channels=16",
            "model.attn_resolutions=[]",
            "optim.lr=0.01",
            "data.image_size=null",
            "data.class_conditional=true",
            "run.sampler=heun",
            "data.name=my images/faces",
            "run.sample_prompts=a red circle|two blue stars",
        ],
    )
    assert (cfg.model.channels, cfg.model.attn_resolutions, cfg.optim.lr) == (16, [], 0.01)
    assert cfg.data.image_size is None and cfg.data.class_conditional is True
    assert (cfg.run.sampler, cfg.data.name) == ("heun", "my images/faces")
    assert cfg.run.sample_prompts == "a red circle|two blue stars"
    # everything else is the preset's, and the preset itself is untouched
    rest = dataclasses.replace(cfg, model=base.model, optim=base.optim, data=base.data, run=base.run)
    assert rest == base
    assert base.model.channels == 32 and base.run.sampler == "ddim"


def test_the_last_override_of_a_key_wins():
    assert apply_overrides(Config(), ["run.steps=5", "run.steps=7"]).run.steps == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.channels", "override 'model.channels' must look like section.key=value"),
        ("channels=8", "override 'channels=8' must look like section.key=value"),
        ("model.nonsense=1", "unknown config key 'model.nonsense'"),
        ("nosection.steps=1", "unknown config key 'nosection.steps'"),
        ("model.channels=eight", "config value model.channels = 'eight' should be of type int"),
        ("run.steps=2.5", "config value run.steps = 2.5 should be of type int"),
        ("data.class_conditional=yes", "config value data.class_conditional = 'yes' should be of type bool"),
        ("optim.decay=linear", "optim.decay must be cosine or constant, got 'linear'"),
    ],
)
def test_bad_overrides_are_one_line(override, message):
    assert error_of(apply_overrides, Config(), [override]) == message

"""model.kind = "dit": the config picks the network, and every run-level path (training, resume,
EMA, sampling, guidance, editing, text) works on a DiT run through the one denoiser contract."""

import json

import pytest
import torch

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config, apply_overrides, preset
from nanodiffusion.io.validation import dit_parameters, validate
from nanodiffusion.nets import build_net
from nanodiffusion.nets.dit import DiT, DiTConfig
from nanodiffusion.nets.unet import UNet
from tiny_runs import TINY

# a DiT small enough for a second of training on the 8x8 digits: 16 tokens of 2x2 patches
TINY_DIT = ["model.kind=dit", "model.width=32", "model.depth=2", "model.head_dim=16"]


def train_tiny(run, *overrides: str):
    """tiny_runs.train_tiny's run with a tiny DiT instead of its tiny UNet."""
    from nanodiffusion.training.diffusion import train

    tiny = [o for o in TINY if not o.startswith("model.")]
    assert train(apply_overrides(preset("digits"), [*tiny, *TINY_DIT, *overrides]), run, progress=False)
    return run


def test_model_kind_picks_the_network_and_keeps_the_shared_keys():
    cfg = apply_overrides(preset("fashion-mnist"), ["model.depth=6", "model.kind=dit", "model.width=128"])
    m = cfg.model
    assert isinstance(m, DiTConfig) and (m.depth, m.width) == (6, 128)  # model.kind is applied first
    assert (m.in_channels, m.image_size, m.head_dim, m.dropout) == (1, 28, 32, 0.0)  # kept from the UNet
    assert isinstance(build_net(m), DiT)
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))  # a run folder's config.json
    assert back.model == m
    unet = apply_overrides(cfg, ["model.kind=unet"]).model
    assert isinstance(build_net(unet), UNet) and unet.channels == 64  # the UNet's defaults return
    old = cfg.to_dict()
    old["model"] = {k: v for k, v in preset("digits").to_dict()["model"].items() if k != "kind"}
    assert Config.from_dict(old).model.kind == "unet"  # 0.1's config.json has no model.kind


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.kind=transformer"], "model.kind must be one of 'unet', 'dit', 'egnn', got 'transformer'"),
        (["model.kind=[]"], "model.kind must be one of 'unet', 'dit', 'egnn', got \\[\\]"),  # unhashable
        (["model.kind=dit", "model.channels=32"], "unknown config key 'model.channels'"),
        (
            ["model.kind=dit", "model.patch_size=3"],
            "model.image_size 8 must be divisible by model.patch_size 3",
        ),
        (["model.image_size=[8, 8]"], "a UNet's model.image_size must be an integer"),
        (
            ["model.kind=dit", "model.patch_size=[2, 2, 2, 2]"],
            "model.patch_size must be an integer >= 1 or a list",
        ),
        (
            ["model.kind=dit", "model.width=1000000", "model.head_dim=1000"],
            "model.width = 1000000 .* would need",
        ),
        (
            ["model.kind=dit", "model.image_size=512", "model.patch_size=1"],
            "model.patch_size = 1 would need",
        ),
        (
            ["model.kind=dit", "data.crop=4"],
            "data.crop trains a convolutional UNet; model.kind = 'dit' cannot",
        ),
    ],
)
def test_dit_config_refusals_are_one_line(overrides, message):
    with pytest.raises(NanodiffError, match=message) as e:
        cfg = apply_overrides(preset("digits"), overrides)
        validate(cfg, training=True)
        from nanodiffusion.tasks.generate import check_crop

        check_crop(cfg, 8)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_classes": 10, "pos": "learned"},
        {
            "context_dim": 24,
            "cond_channels": 2,
            "mlp_ratio": 2.5,
            "image_size": [8, 12],
            "patch_size": [2, 4],
        },
        {"image_size": [4, 8, 8], "patch_size": [1, 2, 2], "width": 96, "out_channels": 2},
        {
            "image_size": [4, 8, 8],
            "patch_size": [2, 2, 2],
            "width": 96,
            "attention": "factorised",
            "context_dim": 8,
        },
    ],
)
def test_dit_parameters_are_counted_exactly(kw):
    m = DiTConfig(**kw)
    assert dit_parameters(m)["total"] == sum(p.numel() for p in DiT(m).parameters())


@pytest.mark.slow
def test_a_dit_run_trains_resumes_exactly_and_samples(tmp_path):
    """A class-conditional DiT run: checkpoints, an exact resume, the CLI's sample, guidance, info."""
    from nanodiffusion.cli import main
    from nanodiffusion.inference.pipelines import load_run
    from nanodiffusion.io.checkpoint import EMA, MODEL, checkpoint_file
    from nanodiffusion.training.diffusion import resume, train

    cfg = apply_overrides(
        preset("digits"),
        [
            *TINY_DIT,
            "data.class_conditional=true",
            "optim.batch_size=16",
            "run.steps=6",
            "run.checkpoint_every=3",
            "run.sample_every=0",
            "run.sample_n=4",
            "run.sample_steps=2",
        ],
    )
    assert train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=3)  # as if killed after the step-3 checkpoint
    assert resume(tmp_path / "cut", progress=False)
    for name in (MODEL, EMA):
        a = _tensors(checkpoint_file(tmp_path / "straight", name))
        b = _tensors(checkpoint_file(tmp_path / "cut", name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved, denoiser = load_run(tmp_path / "straight", "ema", "cpu")
    assert saved.model.kind == "dit" and isinstance(denoiser.net, DiT) and saved.model.num_classes == 10
    out = tmp_path / "drawn"
    assert (
        main(
            [
                "sample",
                str(tmp_path / "straight"),
                "--n",
                "4",
                "--steps",
                "3",
                "--class",
                "3",
                "--guidance",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file()
    assert main(["info", str(tmp_path / "straight")]) == 0


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_training_free_editing_and_controlnet_on_a_dit_run(tmp_path, capsys):
    from nanodiffusion.cli import main
    from nanodiffusion.training.controlnet import train_controlnet

    run = train_tiny(tmp_path / "run")
    for method in ("replace", "repaint"):
        out = tmp_path / method
        assert (
            main(
                [
                    "inpaint",
                    str(run),
                    "--demo",
                    "--n",
                    "2",
                    "--method",
                    method,
                    "--steps",
                    "4",
                    "--jump",
                    "2",
                    "--resample",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert any(out.iterdir())
    with pytest.raises(
        NanodiffError, match="ControlNet works on UNet runs only; this run's model.kind is 'dit'"
    ):
        train_controlnet(run, tmp_path / "control", steps=1, progress=False, device="cpu")
    capsys.readouterr()
    assert main(["train-controlnet", str(run), "--steps", "1", "--out", str(tmp_path / "c2")]) == 2
    assert "UNet runs only" in capsys.readouterr().err


def test_a_flow_dit_run_samples_with_every_kind_of_sampler(tmp_path):
    from nanodiffusion.inference.pipelines import load_run, sample_images

    flow = [
        "schedule.kind=flow",
        "schedule.sigma_max=999",
        "diffusion.parameterization=flow",
        "loss.sigma_sampling=mode",
    ]
    run = train_tiny(tmp_path / "run", *flow)
    _, denoiser = load_run(run, "ema", "cpu")
    for sampler in ("euler", "heun", "dpm++2m", "ddim", "unipc"):
        x = sample_images(denoiser, 2, (1, 8, 8), sampler, 4, seed=0)
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.slow
def test_a_latent_text_conditional_dit_run_generates(tmp_path, monkeypatch):
    """A DiT in an autoencoder's latent space, cross-attending to MiniLM's tokens: the shapes run
    trains, its prompt changes the prediction, and `nanodiff generate` draws decoded images."""
    from PIL import Image

    from nanodiffusion.cli import main
    from nanodiffusion.data.shapes import render_dataset
    from nanodiffusion.data.text import load_text_encoder
    from nanodiffusion.inference.pipelines import load_run
    from nanodiffusion.io.checkpoint import save_autoencoder
    from nanodiffusion.nets.autoencoder import AutoencoderConfig
    from nanodiffusion.training.autoencoder import train_autoencoder
    from nanodiffusion.training.diffusion import train
    from test_train import _text_config

    images = torch.from_numpy(render_dataset(48, size=16)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    ae, _ = train_autoencoder(
        images, AutoencoderConfig(channels=8, channel_mults=[1, 2]), steps=3, batch_size=8, progress=False
    )
    save_autoencoder(ae, tmp_path / "ae")
    cfg = apply_overrides(
        _text_config(tmp_path, monkeypatch), [*TINY_DIT, f"data.autoencoder={tmp_path / 'ae'}"]
    )
    assert train(cfg, tmp_path / "run", progress=False)
    saved, denoiser = load_run(tmp_path / "run", "model", "cpu")
    assert (saved.model.in_channels, saved.model.image_size, saved.model.context_dim) == (4, 8, 384)
    prompts = load_text_encoder("minilm", 12)(["a red circle", "two blue squares"])
    with torch.no_grad():
        out = denoiser(torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1), torch.tensor([1.0, 1.0]), prompts)
    assert (out[0] - out[1]).abs().max() > 1e-5
    drawn = tmp_path / "drawn"
    argv = [
        "generate",
        str(tmp_path / "run"),
        "a red circle",
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        str(drawn),
    ]
    assert main(argv) == 0
    assert Image.open(drawn / "grid.png").mode == "RGB"  # decoded to pixels

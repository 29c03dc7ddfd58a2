"""The command line's shape: every command's --help, each shared flag declared once with the
same defaults as before the split, the demos computed by the library (the CLI prints its
numbers), and library errors that name parameters, which the commands turn into flags."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nanodiffusion
from nanodiffusion.cli import build_parser, main
from nanodiffusion.cli.common import flag_names
from nanodiffusion.errors import NanodiffError
from tiny_runs import train_tiny

SRC = Path(nanodiffusion.__file__).parent
CLI = SRC / "cli"
COMMANDS = [
    "demo",
    "train",
    "train-autoencoder",
    "train-controlnet",
    "sample",
    "eval",
    "generate",
    "eval-prompts",
    "eval-video",
    "eval-audio",
    "eval-molecules",
    "inpaint",
    "upscale",
    "info",
    "schedules",
    "forward",
    "bench-samplers",
    "sd",
    "app",
]


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def _action(command: str, flag: str):
    (action,) = [a for a in _subparsers()[command]._actions if flag in a.option_strings]
    return action


def test_every_command_is_there_and_its_help_works(capsys):
    assert sorted(_subparsers()) == sorted(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0, command
        assert f"usage: nanodiff {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag",
    [
        "--device",
        "--seed",
        "--sampler",
        "--steps",
        "--weights",
        "--out",
        "--n",
        "--quiet",
        "--negative",
        "--init",
        "--strength",
    ],
)
def test_shared_flags_are_declared_once(flag):
    sources = "".join(p.read_text() for p in sorted(CLI.glob("*.py")))
    assert len(re.findall(rf'add_argument\(\s*"{flag}"', sources)) == 1


@pytest.mark.parametrize(
    "command,flag,default",
    [
        ("sample", "--n", 64),
        ("sample", "--steps", 20),
        ("sample", "--sampler", "dpm++2m"),
        ("sample", "--seed", 0),
        ("sample", "--weights", "ema"),
        ("sample", "--device", "auto"),
        ("sample", "--out", None),
        ("eval", "--n", 1000),
        ("eval", "--guidance", 1.0),
        ("eval", "--batch-size", 256),
        ("generate", "--n", 8),
        ("generate", "--guidance", 4.0),
        ("generate", "--negative", ""),
        ("eval-prompts", "--n", 200),
        ("eval-prompts", "--held-out", 100),
        ("inpaint", "--steps", 50),
        ("inpaint", "--n", None),
        ("inpaint", "--jump", 5),
        ("upscale", "--steps", 20),
        ("upscale", "--aug", 0.0),
        ("upscale", "--n", None),
        ("train", "--steps", None),
        ("train", "--seed", None),
        ("train", "--device", None),
        ("train", "--preset", "digits"),
        ("train-controlnet", "--steps", 1500),
        ("train-controlnet", "--lr", 5e-4),
        ("train-controlnet", "--seed", 0),
        ("train-autoencoder", "--steps", 2000),
        ("train-autoencoder", "--data", "shapes"),
        ("sd", "--guidance", 7.5),
        ("sd", "--out", "sd-images"),
        ("sd", "--n", 1),
        ("sd", "--steps", 20),
        ("schedules", "--out", "schedules.png"),
        ("forward", "--out", "forward_process.png"),
        ("forward", "--n", 4),
        ("demo", "--steps", None),
    ],
)
def test_defaults_are_as_before_the_split(command, flag, default):
    assert _action(command, flag).default == default


def test_device_and_weights_offer_the_same_choices_everywhere():
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if "--device" in action.option_strings:
                assert list(action.choices) == ["auto", "cpu", "cuda"], command
            if "--weights" in action.option_strings:
                assert list(action.choices) == ["ema", "model"], command


def test_flag_names_turn_parameters_into_flags():
    with pytest.raises(NanodiffError, match=r"^--class must be in 0\.\.9; class_labels stay$"):
        with flag_names({"class_label": "--class"}):
            raise NanodiffError("class_label must be in 0..9; class_labels stay")
    with pytest.raises(NanodiffError, match=r"\(nanodiff train --task upscale\)"):
        with flag_names({"data.task = 'upscale'": "nanodiff train --task upscale"}):
            raise NanodiffError("must be an upscaling run (data.task = 'upscale')")


def _library_messages():
    """(file, line, text) of every string literal inside a NanodiffError(...) outside cli/."""
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts or path.name == "bench_samplers.py":  # command-line code
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "NanodiffError":
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        yield path.name, node.lineno, part.value


def test_library_errors_name_no_flag_and_no_command():
    found = [m for m in _library_messages() if re.search(r"(^|[\s(`])--[a-z]|nanodiff [a-z]", m[2])]
    assert not found
    assert any("class_label must be in" in m[2] for m in _library_messages())  # the scan sees messages


def test_held_out_images_are_the_test_split_else_the_last_training_images():
    from nanodiffusion.data.datasets import held_out_images, load_data

    test = load_data("digits", "test").images
    assert torch.equal(held_out_images("digits", torch.zeros(5, 1, 8, 8), n=7), test[:7])
    train = torch.arange(10.0).reshape(10, 1, 1, 1)
    assert torch.equal(held_out_images("some/images.npz", train, n=3), train[-3:])


# --- the demos are the library's; the commands print their numbers ---------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("structure") / "digits")


@pytest.fixture(scope="module")
def upscale_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("structure") / "upscale", 'data.task="upscale"')


def test_the_inpaint_demo_is_the_library_s(digits_run, capsys):
    from nanodiffusion.inference import demos
    from nanodiffusion.inference.pipelines import load_run

    cfg, denoiser = load_run(digits_run, device="cpu")
    demo = demos.inpaint_demo(cfg, denoiser, 3, steps=3, resample=2)
    assert list(demo.filled) == ["replace", "repaint"] and demo.images.shape == (3, 1, 8, 8)
    for method, filled in demo.filled.items():  # the kept pixels are kept; the errors are fill_errors'
        keep = demo.known.expand_as(filled) == 1
        assert torch.equal(filled[keep], demo.images[keep])
        assert 0 < demo.errors[method][0] and 0 < demo.errors[method][1]
    assert (
        main(
            [
                "inpaint",
                str(digits_run),
                "--demo",
                "--n",
                "3",
                "--steps",
                "3",
                "--resample",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for method, (seam, hole) in demo.errors.items():
        assert (
            f"{method:8s} RMSE in the 2-pixel band at the seam {seam:.4f}, in the whole hole {hole:.4f}"
            in printed
        )


def test_the_upscale_demo_is_the_library_s(upscale_run, capsys):
    from nanodiffusion.inference import demos
    from nanodiffusion.inference.pipelines import load_run
    from nanodiffusion.metrics.image import psnr

    cfg, denoiser = load_run(upscale_run, device="cpu")
    demo = demos.upscale_demo(cfg, denoiser, 3, steps=3)
    assert demo.low.shape == (3, 1, 4, 4) and demo.upscaled.shape == demo.truth.shape == (3, 1, 8, 8)
    assert demo.scores["bicubic"] == {"psnr": psnr(demo.bicubic, demo.truth).mean().item()}  # 8x8: no SSIM
    assert main(["upscale", str(upscale_run), "--demo", "--n", "3", "--steps", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name, scores in demo.scores.items():
        assert f"{name:9s} PSNR {scores['psnr']:.2f} dB\n" in printed
    big = torch.rand(2, 3, 16, 16) * 2 - 1
    assert demos.image_scores(big, big)["ssim"] == pytest.approx(1.0)


# --- library errors that name parameters, shown with the flags that set them -----------------------
def _error(capsys, argv) -> str:
    """The error line (after any progress line printed before the library refused)."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nanodiff: error:") and sum(line.startswith("nanodiff") for line in err) == 1
    return err[-1]


def test_the_commands_name_their_flags_where_the_library_names_parameters(
    digits_run, upscale_run, tmp_path, capsys
):
    run = str(digits_run)
    assert "resume it with --resume or choose" in _error(capsys, ["train", "--steps", "2", "--out", run])
    assert "this model is unconditional; --class needs" in _error(capsys, ["sample", run, "--class", "1"])
    assert "this model is unconditional; --guidance needs" in _error(capsys, ["eval", run, "--guidance", "2"])
    assert "(nanodiff upscale)" in _error(capsys, ["sample", str(upscale_run), "--n", "1"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "m.png")
    image, mask = str(tmp_path / "x.png"), str(tmp_path / "m.png")
    err = _error(
        capsys, ["inpaint", run, "--image", image, "--mask", mask, "--method", "model", "--steps", "2"]
    )
    assert "needs a run trained for inpainting (nanodiff train --task inpaint)" in err

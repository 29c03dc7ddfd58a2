"""The models shipped inside the package: each loads by name, from the library and the command
line, and draws what its card says (weights/cards.json, which docs/pretrained.md quotes) within a
tolerance; a folder of the same name always wins, and nothing is written into the package."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pretrained_quality as quality
from nanodiffusion.cli import main
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import load_run
from nanodiffusion.io.checkpoint import EMA
from nanodiffusion.io.pretrained import (
    CARDS,
    SHIPPED,
    WEIGHTS_ROOT,
    folder_size,
    list_pretrained,
    pretrained_card,
    resolve_run,
    shipped_folder,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_TOTAL_BYTES = 12 * 2**20  # "a few MB in all"


@pytest.fixture(autouse=True)
def one_thread(one_thread_module):
    """Small networks: one thread each, as the rest of the suite."""


def package_files() -> dict[str, float]:
    """Every file under the shipped weights, with its modification time."""
    return {str(p): p.stat().st_mtime for p in WEIGHTS_ROOT.rglob("*") if p.is_file()}


def test_every_shipped_model_is_a_minimal_run_folder_with_a_card():
    cards = json.loads(CARDS.read_text())
    assert set(cards) == set(SHIPPED)
    for name in SHIPPED:
        folder = shipped_folder(name)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        latent = ["autoencoder/autoencoder.json", "autoencoder/autoencoder.safetensors"] * (name == "shapes")
        assert files == sorted([*latent, "config.json", EMA]), name  # no optimizer state, no samples
        card = pretrained_card(name)
        assert card["bytes"] == folder_size(folder), name  # the card describes the files as shipped
        assert card["command"].startswith("nanodiff train --preset ") and card["train_seconds"] > 0
        assert card["quality"] and card["check"], name


def test_the_weights_ship_as_float16_and_few_megabytes():
    total = sum(folder_size(shipped_folder(name)) for name in SHIPPED)
    assert total < MAX_TOTAL_BYTES, f"{total / 2**20:.1f} MB shipped"
    for path in WEIGHTS_ROOT.rglob("*.safetensors"):
        assert {t.dtype for t in load_file(path).values()} == {torch.float16}, path


def test_a_wheel_takes_every_shipped_file():
    """pyproject.toml's package data covers every file under weights/ and the molecule sets' SMILES
    (data/smiles/), so pip installs them."""
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = WEIGHTS_ROOT.parent
    taken = {p for pattern in globs["nanodiffusion"] for p in package.glob(pattern)}
    shipped = [*WEIGHTS_ROOT.rglob("*"), *(package / "data" / "smiles").rglob("*")]
    assert taken == {p for p in shipped if p.is_file()}


def test_list_pretrained_names_and_describes_every_model():
    listed = list_pretrained()
    assert list(listed) == list(SHIPPED) == ["digits", "fashion-mnist", "shapes", "upscale"]
    assert "class-conditional" in listed["digits"] and "prompt" in listed["shapes"]
    for name, text in listed.items():
        params = pretrained_card(name)["parameters"]
        assert f"{params / 1e6:.2f}M parameters" in text and " MB" in text


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "upscale"])
def test_a_shipped_model_loads_by_name_with_its_weights(name):
    cfg, denoiser = load_run(name, device="cpu")
    shipped = load_file(shipped_folder(name) / EMA)
    loaded = denoiser.net.state_dict()
    assert set(loaded) == set(shipped)
    assert all(torch.equal(loaded[k], shipped[k].to(loaded[k].dtype)) for k in shipped)
    assert cfg.data.name == {"digits": "digits", "fashion-mnist": "fashion-mnist", "upscale": "shapes"}[name]
    assert (cfg.model.num_classes, cfg.data.task) == {
        "digits": (10, ""),
        "fashion-mnist": (10, ""),
        "upscale": (0, "upscale"),
    }[name]


def test_sample_by_name_writes_outside_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = package_files()
    assert main(["sample", "digits", "--n", "4", "--steps", "5", "--class", "3"]) == 0
    out = tmp_path / "samples" / "digits" / "dpm++2m-5-seed0"  # not digits/samples/..., not the package
    assert (out / "grid.png").is_file() and len(list(out.glob("*.png"))) == 5
    assert main(["sample", "fashion-mnist", "--n", "2", "--steps", "3", "--out", "fm"]) == 0
    assert len(list((tmp_path / "fm").glob("*.png"))) == 3
    assert main(["info", "upscale"]) == 0
    assert str(shipped_folder("upscale")) in capsys.readouterr().out
    assert package_files() == before


def test_a_name_neither_a_folder_nor_shipped_is_one_line_with_the_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "digitz", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digitz" in err
    assert "digits, fashion-mnist, shapes, upscale" in err
    with pytest.raises(NanodiffError, match="run folder not found: nope .*digits, fashion-mnist"):
        load_run("nope")
    with pytest.raises(NanodiffError, match="holds only its EMA weights"):
        load_run("digits", weights="model")


def test_an_existing_folder_wins_over_a_shipped_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(shipped_folder("upscale"), tmp_path / "digits")  # a folder named like a model
    assert resolve_run("digits") == Path("digits")
    assert load_run("digits", device="cpu")[0].data.task == "upscale"  # the folder's run, not the digits
    assert main(["sample", "digits", "--n", "1"]) == 2
    assert "an upscaling run draws from low-resolution images" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "digits")
    (tmp_path / "digits").mkdir()  # even an empty one
    assert main(["sample", "digits", "--n", "1"]) == 2
    assert "digits is not a run folder" in capsys.readouterr().err


# --- what the cards say -------------------------------------------------------------------------
def test_digits_draw_what_the_card_says():
    """The digits judge reads the class asked for as often as the card's check says."""
    card = pretrained_card("digits")["check"]["accuracy"]
    assert abs(quality.check_digits()["accuracy"] - card) <= 0.05


def test_the_upscaler_beats_bicubic_as_the_card_says():
    card = pretrained_card("upscale")["check"]
    now = quality.check_upscale()
    assert now["psnr"] > now["bicubic_psnr"] + 1.0
    assert abs(now["psnr"] - card["psnr"]) <= 0.5


@pytest.mark.slow
def test_shapes_follow_prompts_as_the_card_says():
    card = pretrained_card("shapes")["check"]["adherence"]
    assert abs(quality.check_shapes()["adherence"] - card) <= 0.1


@pytest.mark.slow
def test_fashion_draws_the_classes_the_card_says():
    card = pretrained_card("fashion-mnist")["check"]["accuracy"]
    assert abs(quality.check_fashion()["accuracy"] - card) <= 0.08


@pytest.mark.slow
def test_text_to_image_and_cascade_by_name(tmp_path, monkeypatch):
    from nanodiffusion.inference.pipelines import Cascade, TextToImage

    pipe = TextToImage.from_pretrained("shapes", device="cpu")
    assert pipe.autoencoder is not None and pipe.encoder is not None
    images = pipe("a red circle", n=2, steps=5, output="tensor")
    assert images.shape == (2, 3, 32, 32)
    cascade = Cascade.from_pretrained("shapes", "upscale", device="cpu")
    assert cascade(1, prompt="a blue square", steps=5, sr_steps=5).shape == (1, 3, 64, 64)
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "shapes", "a green triangle", "--n", "1", "--steps", "5", "--upscale", "upscale"]
    assert main(argv) == 0
    assert (tmp_path / "generated" / "shapes" / "a-green-triangle-seed0" / "grid.png").is_file()

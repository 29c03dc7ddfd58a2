"""Training: exact resume, Ctrl-C, DDP equal to one process, EMA warm-up, run-folder contents."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import checkpoint_file, checkpoints, weights_step
from nanodiffusion.training.diffusion import EMAModel, lr_factor, resume, train


def _weights(run, name="model.safetensors"):
    return load_file(str(checkpoint_file(run, name)))


def _assert_same_weights(a, b, atol=0.0):
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = _weights(a, name), _weights(b, name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (name, k)


@pytest.mark.slow
def test_run_folder_holds_everything(tmp_path, tiny_config):
    assert train(tiny_config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for f in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples.png",
    ]:
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 7))
    assert [step for step, _ in checkpoints(run)] == [6]  # the final checkpoint, a folder of its own
    assert sorted(os.listdir(run / "checkpoints" / "step-00000006")) == [
        "ema.safetensors",
        "model.safetensors",
        "state.pt",
    ]
    assert weights_step(checkpoint_file(run, "model.safetensors")) == 6
    assert json.loads((run / "config.json").read_text())["model"]["image_size"] == 8


@pytest.mark.slow
def test_resume_after_interruption_reaches_the_same_weights(tmp_path, tiny_config):
    # dropout is on, so the global RNG state must come back too
    train(tiny_config, tmp_path / "full", progress=False)
    train(tiny_config, tmp_path / "split", progress=False, stop_after=3)
    assert weights_step(checkpoint_file(tmp_path / "split", "model.safetensors")) == 3
    resume(tmp_path / "split", progress=False)
    _assert_same_weights(tmp_path / "full", tmp_path / "split")
    state_a = torch.load(checkpoint_file(tmp_path / "full", "state.pt"), weights_only=True)
    state_b = torch.load(checkpoint_file(tmp_path / "split", "state.pt"), weights_only=True)
    assert torch.equal(state_a["noise_rng"], state_b["noise_rng"])


@pytest.mark.slow
def test_training_into_an_existing_run_is_refused_and_leaves_it_intact(tmp_path, tiny_config):
    train(tiny_config, tmp_path / "run", progress=False)
    before = checkpoint_file(tmp_path / "run", "model.safetensors").read_bytes()
    with pytest.raises(NanodiffError, match="already holds a run"):
        train(tiny_config, tmp_path / "run", progress=False)
    assert checkpoint_file(tmp_path / "run", "model.safetensors").read_bytes() == before


def test_ema_warm_up_follows_the_young_weights():
    ema = EMAModel(torch.nn.Linear(2, 2), power=2 / 3, max_decay=0.9999)
    assert ema.decay(0) == 0.0  # the first update copies the weights
    assert 0.94 < ema.decay(100) < 0.96 and 0.98 < ema.decay(1000) < 0.995
    assert ema.decay(10**9) == 0.9999


def test_lr_warms_up_then_decays(tiny_config):
    cfg = tiny_config
    cfg.run.steps, cfg.optim.warmup_steps = 100, 10
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] == pytest.approx(cfg.optim.min_lr_ratio, abs=0.01)


def _cli(*args):
    return [sys.executable, "-m", "nanodiffusion.cli", *args]


TINY_FLAGS = [
    "--preset",
    "digits",
    "--batch-size",
    "16",
    "--quiet",
    "--set",
    "model.channels=8",
    "--set",
    "model.blocks_per_level=1",
    "--set",
    "model.attn_resolutions=[]",
    "--set",
    "run.sample_every=0",
    "--set",
    "run.checkpoint_every=0",
    "--set",
    "run.sample_n=4",
    "--set",
    "run.sample_steps=5",
    "--set",
    "run.log_every=1",
    "--set",
    "optim.warmup_steps=2",
]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", *TINY_FLAGS, "--steps", "100000", "--out", str(run)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "nanodiff train --resume" in out and "Traceback" not in err
    k = weights_step(checkpoint_file(run, "model.safetensors"))
    assert k >= 3
    # continue two more steps, and compare with a run that was never interrupted
    from nanodiffusion.io.checkpoint import load_config

    resume(run, progress=False, stop_after=k + 2)
    cfg = load_config(run)
    train(cfg, tmp_path / "straight", progress=False, stop_after=k + 2)
    _assert_same_weights(run, tmp_path / "straight")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
@pytest.mark.slow
def test_two_process_ddp_takes_the_same_steps_as_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = [*TINY_FLAGS, "--steps", "3", "--set", "model.dropout=0"]
    one = subprocess.run(
        _cli("train", *flags, "--out", str(tmp_path / "one")),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "nanodiffusion.cli",
            "train",
            *flags,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[:3000] + "\n...\n" + two.stderr[-1500:]
    # Same data, same noise, gradients averaged: equal up to float reduction order, which Adam
    # can magnify on near-zero weights to ~1e-5. A real fault (a wrong slice, no averaging)
    # moves weights by about the learning rate, 2e-3; the tolerance is a tenth of that.
    _assert_same_weights(tmp_path / "one", tmp_path / "two", atol=2e-4)
    # and the comparison is not vacuous: three steps moved the weights well past the tolerance
    from nanodiffusion.inference.pipelines import build_denoiser
    from nanodiffusion.io.checkpoint import load_config

    cfg = load_config(tmp_path / "one")
    torch.manual_seed(cfg.run.seed)
    init = build_denoiser(cfg).net.state_dict()
    trained = _weights(tmp_path / "two")
    assert max((trained[k] - init[k]).abs().max().item() for k in init) > 1e-3


def test_batches_walk_seeded_epochs_without_repeats():
    from nanodiffusion.training.diffusion import batch_indices

    n = 50
    stream = torch.cat([batch_indices(step, 0, 1, 16, n, seed=0) for step in range(25)])
    assert len(stream) == 400
    for epoch in range(8):  # every epoch is a permutation of the whole data set
        assert sorted(stream[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n : 2 * n])


@pytest.mark.slow
def test_class_conditional_training_and_sampling(tmp_path, tiny_config):
    from nanodiffusion.io.checkpoint import load_config

    tiny_config.data.class_conditional = True
    assert train(tiny_config, tmp_path / "run", progress=False)
    cfg = load_config(tmp_path / "run")
    assert cfg.model.num_classes == 10
    w = _weights(tmp_path / "run")["class_emb.weight"]
    assert w.shape == (11, 32)  # ten digits and the reserved "no class" row
    from nanodiffusion.inference.pipelines import load_run, sample_images

    _, denoiser = load_run(tmp_path / "run")
    shape = (1, 8, 8)
    a = sample_images(denoiser, 2, shape, steps=3, class_labels=torch.tensor([3, 3]))
    b = sample_images(denoiser, 2, shape, steps=3, class_labels=torch.tensor([7, 7]))
    assert not torch.equal(a, b)  # the label reaches the network


def _text_config(tmp_path, monkeypatch):
    from nanodiffusion.data import datasets as data
    from nanodiffusion.io.config import apply_overrides, preset

    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(data.SHAPES_SCENES, "train", 48)  # a small shapes world, rendered once
    return apply_overrides(
        preset("digits"),
        [
            "data.name=shapes",
            "data.image_size=16",
            "data.text_encoder=minilm",
            "data.max_tokens=12",
            "model.channels=16",
            "model.blocks_per_level=1",
            "model.attn_resolutions=[8]",
            "model.head_dim=16",
            "optim.batch_size=8",
            "optim.warmup_steps=1",
            "run.steps=4",
            "run.sample_every=0",
            "run.checkpoint_every=0",
            "run.sample_n=4",
            "run.sample_steps=3",
        ],
    )


@pytest.mark.slow
def test_text_conditional_training_on_captions(tmp_path, monkeypatch):
    """Captions are encoded once, reach the UNet through cross-attention, and the run reloads."""
    from nanodiffusion.data.text import load_text_encoder
    from nanodiffusion.inference.pipelines import load_run

    cfg = _text_config(tmp_path, monkeypatch)
    assert train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["context_dim"] == 384 and saved["data"]["text_encoder"] == "minilm"
    assert (tmp_path / "run" / "samples.png").is_file()
    _, denoiser = load_run(tmp_path / "run", "model", "cpu")
    prompts = load_text_encoder("minilm", 12)(["a red circle", "two blue squares"])
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = denoiser(x, torch.tensor([1.0, 1.0]), prompts)
    assert (out[0] - out[1]).abs().max() > 1e-4  # the prompt changes the prediction


def test_text_encoder_needs_captions(tmp_path, tiny_config):
    tiny_config.data.text_encoder = "minilm"
    with pytest.raises(NanodiffError, match="needs captions"):
        train(tiny_config, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_latent_diffusion_trains_in_the_autoencoders_space(tmp_path, monkeypatch):
    """With data.autoencoder the UNet sees the scaled latents; samples come back decoded."""
    from nanodiffusion.cli import main
    from nanodiffusion.data.shapes import render_dataset
    from nanodiffusion.io.checkpoint import save_autoencoder
    from nanodiffusion.io.config import apply_overrides
    from nanodiffusion.nets.autoencoder import AutoencoderConfig
    from nanodiffusion.training.autoencoder import train_autoencoder

    cfg = _text_config(tmp_path, monkeypatch)
    images = torch.from_numpy(render_dataset(48, size=16)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    ae, _ = train_autoencoder(
        images, AutoencoderConfig(channels=8, channel_mults=[1, 2]), steps=3, batch_size=8, progress=False
    )
    save_autoencoder(ae, tmp_path / "ae")
    cfg = apply_overrides(
        cfg,
        [
            f"data.autoencoder={tmp_path / 'ae'}",
            "model.attn_resolutions=[4]",
            "data.text_encoder=",
            "run.sample_every=2",
        ],
    )
    assert train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["in_channels"], saved["image_size"]) == (4, 8)  # 16x16x3 images -> 8x8x4 latents
    from PIL import Image

    grid = Image.open(tmp_path / "run" / "samples.png")
    assert grid.mode == "RGB"  # decoded to colour images, not 4-channel latents
    out = tmp_path / "drawn"
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out / "grid.png").mode == "RGB"


@pytest.mark.slow
def test_text_preset_trains_its_autoencoder_first_and_grids_show_the_fixed_prompts(tmp_path, monkeypatch):
    """data.autoencoder = "train" (the text preset's): the autoencoder is trained into
    RUN/autoencoder with its report, the config then names that folder, a resume reuses it, and
    the sample grids are guided samples of shapes' fixed prompt list."""
    from nanodiffusion.data import datasets as data
    from nanodiffusion.inference.pipelines import TextToImage
    from nanodiffusion.io.config import apply_overrides, preset
    from nanodiffusion.training.diffusion import grid_prompts

    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(data.SHAPES_SCENES, "train", 40)
    monkeypatch.setitem(data.SHAPES_SCENES, "test", 8)
    cfg = apply_overrides(
        preset("text"),
        [
            "data.image_size=16",
            "data.autoencoder_steps=3",
            "data.autoencoder_channels=8",
            "data.autoencoder_batch_size=8",
            "data.max_tokens=12",
            "model.channels=32",
            "model.attn_resolutions=[2]",
            "optim.batch_size=8",
            "optim.warmup_steps=1",
            "run.steps=2",
            "run.sample_every=2",
            "run.checkpoint_every=0",
            "run.sample_steps=2",
            "run.sample_n=4",
        ],
    )
    assert train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["autoencoder"] == str(tmp_path / "run" / "autoencoder")
    assert (saved["model"]["in_channels"], saved["model"]["image_size"]) == (4, 4)  # 16x16x3 -> 4x4x4
    report = json.loads((tmp_path / "run" / "autoencoder" / "report.json").read_text())
    assert report["steps"] == 3 and report["latent_shape"] == [4, 4, 4] and report["seconds"] > 0
    assert (tmp_path / "run" / "autoencoder" / "reconstructions.png").is_file()
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    assert grid_prompts(cfg, ["x"])[-4] == "a purple triangle"  # the held-out row
    assert grid_prompts(apply_overrides(cfg, ["run.sample_prompts=a | b"]), ["x"]) == ["a", "b"]
    before = (tmp_path / "run" / "autoencoder" / "autoencoder.safetensors").read_bytes()
    assert resume(tmp_path / "run", steps=3, progress=False)
    assert (tmp_path / "run" / "autoencoder" / "autoencoder.safetensors").read_bytes() == before
    shutil.move(tmp_path / "run", tmp_path / "moved")  # the run finds its own autoencoder wherever it is
    image = TextToImage.from_pretrained(tmp_path / "moved", device="cpu")("a red circle", steps=2)[0]
    assert image.size == (16, 16)


@pytest.mark.slow
def test_text_to_image_pipeline_and_generate_command(tmp_path, monkeypatch, capsys):
    from nanodiffusion.cli import main
    from nanodiffusion.inference.pipelines import TextToImage

    cfg = _text_config(tmp_path, monkeypatch)
    assert train(cfg, tmp_path / "run", progress=False)
    pipe = TextToImage.from_pretrained(tmp_path / "run", device="cpu")
    images = pipe(["a red circle", "two blue squares"], n=2, steps=3, seed=1)
    assert len(images) == 4 and images[0].size == (16, 16) and images[0].mode == "RGB"
    a = pipe("a red circle", n=2, steps=3, seed=1, output="tensor")
    assert torch.equal(a, pipe("a red circle", n=2, steps=3, seed=1, output="tensor"))  # seeded
    assert not torch.equal(a, pipe("a red circle", n=2, steps=3, seed=1, guidance=1.0, output="tensor"))
    pipe.save_pretrained(tmp_path / "saved")
    again = TextToImage.from_pretrained(tmp_path / "saved", device="cpu")
    assert torch.equal(a, again("a red circle", n=2, steps=3, seed=1, output="tensor"))

    out = tmp_path / "drawn"
    assert (
        main(
            ["generate", str(tmp_path / "run"), "a red circle", "--n", "2", "--steps", "2", "--out", str(out)]
        )
        == 0
    )
    assert (out / "grid.png").is_file() and "2 images of 'a red circle'" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "run"), "x", "--guidance", "-1"]) == 2
    assert main(["generate", str(tmp_path / "missing"), "x"]) == 2

    capsys.readouterr()
    out = tmp_path / "adherence.json"
    assert (
        main(
            [
                "eval-prompts",
                str(tmp_path / "run"),
                "--n",
                "6",
                "--held-out",
                "3",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["prompts"]["captions"]) == 6 and len(result["held-out"]["captions"]) == 3
    assert result["prompts"]["renders"]["overall"]["all"] == 1.0  # the referee passes the renders
    assert "held-out overall" in printed and out.with_suffix(".png").is_file()


@pytest.mark.slow
def test_a_short_training_on_colours_follows_the_prompt(tmp_path, monkeypatch):
    """About a minute: a captioned folder of red and blue images (name.txt sidecars, three
    templates), a tiny text UNet; then "red" prompts come out red and "blue" prompts blue."""
    from PIL import Image

    from nanodiffusion.inference.pipelines import TextToImage
    from nanodiffusion.io.config import apply_overrides, preset

    folder, rng = tmp_path / "colours", np.random.default_rng(0)
    folder.mkdir()
    for i in range(64):
        colour = ("red", "blue")[i % 2]
        rgb = np.array({"red": (220, 30, 30), "blue": (30, 30, 220)}[colour])
        image = np.clip(rgb + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(
            (f"a {colour} circle", f"a {colour} square", f"two {colour} stars")[i % 3]
        )
    cfg = apply_overrides(
        preset("fashion-mnist"),
        [
            f"data.name={folder}",
            "data.text_encoder=minilm",
            "data.max_tokens=8",
            "model.channels=16",
            "model.channel_mults=[1]",
            "model.blocks_per_level=1",
            "model.attn_resolutions=[8]",
            "model.head_dim=16",
            "optim.batch_size=32",
            "optim.warmup_steps=10",
            "run.steps=60",
            "run.sample_every=0",
            "run.checkpoint_every=0",
            "run.sample_n=4",
            "run.sample_steps=3",
        ],
    )
    assert train(cfg, tmp_path / "run", progress=False)
    pipe = TextToImage.from_pretrained(tmp_path / "run", device="cpu")

    def redness(prompt: str, w: float) -> float:  # mean R - B in [-2, 2]: +1.5 red, -1.5 blue
        images = pipe(prompt, n=8, steps=10, guidance=w, seed=0, output="tensor")
        return (images[:, 0] - images[:, 2]).mean().item()

    # measured: w = 1: +0.61 / -0.63; w = 3: +1.25 / -1.10 (a 16x16 run after 20 steps: both -0.06)
    assert redness("a red circle", 1.0) - redness("a blue circle", 1.0) > 0.5
    red, blue = redness("a red circle", 3.0), redness("a blue circle", 3.0)
    assert red > 0.5 and blue < -0.5

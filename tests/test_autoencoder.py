"""The KL autoencoder of latent diffusion: shapes, a short training that learns, the measured scale."""

import pytest
import torch

from nanodiffusion.data.shapes import render_dataset
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import load_autoencoder, save_autoencoder
from nanodiffusion.metrics.image import psnr
from nanodiffusion.nets.autoencoder import Autoencoder, AutoencoderConfig
from nanodiffusion.training.autoencoder import train_autoencoder
from torchrun_helper import assert_same_steps, needs_torchrun, run_one_and_two


@pytest.fixture(scope="module")
def shapes16():
    images = torch.from_numpy(render_dataset(400, size=16)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images


def test_latent_shapes_and_bad_input():
    ae = Autoencoder(AutoencoderConfig(channels=8, channel_mults=[1, 2, 2])).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (2, 4, 8, 8)  # 32x32x3 -> 8x8x4
        assert ae.decode(z).shape == x.shape
        assert torch.allclose(ae.encode_images(x, batch_size=1), z, atol=1e-5)  # batching changes nothing
        assert torch.allclose(ae.decode_images(z, batch_size=1), ae.decode(z).clamp(-1, 1), atol=1e-5)
    with pytest.raises(NanodiffError, match="multiples of 4"):
        ae.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(NanodiffError, match=r"\[B, 3, H, W\]"):
        ae.encode(torch.zeros(1, 1, 32, 32))


@pytest.fixture
def one_thread():
    """Small convolutions run faster on one thread here; the setting is restored after the test
    (other tests compare runs across processes bit for bit, which needs the default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_training_lowers_the_error_and_measures_the_scale(shapes16, tmp_path, one_thread):
    cfg = AutoencoderConfig(channels=16, channel_mults=[1, 2], z_channels=4)
    ae, report = train_autoencoder(
        shapes16[:300], cfg, steps=150, batch_size=32, lr=2e-3, held_out=shapes16[300:], progress=False
    )
    assert report["mse_last_50"] < 0.5 * report["mse_first_50"], report
    assert report["latent_shape"] == [4, 8, 8]
    with torch.no_grad():
        z = ae.encode(shapes16[:300])
    mean_image = shapes16[:300].mean(0, keepdim=True).expand(100, -1, -1, -1)
    assert abs(z.std().item() - 1) < 0.05  # scale_factor makes the latents unit-variance
    assert report["psnr"] > psnr(mean_image, shapes16[300:], pooled=True) + 2.5  # +3.9 dB at 150 steps
    save_autoencoder(ae, tmp_path / "ae", step=150)
    again = load_autoencoder(tmp_path / "ae")
    assert again.cfg.scale_factor == ae.cfg.scale_factor
    with torch.no_grad():
        assert torch.equal(again.encode(shapes16[:4]), ae.encode(shapes16[:4]))
    with pytest.raises(NanodiffError, match="data.autoencoder must name"):
        load_autoencoder(tmp_path / "nothing")


# --- training through the loop: EMA, exact resume, Ctrl-C, torchrun ----------------------------------
def _digits():
    from nanodiffusion.data.datasets import load_data

    return load_data("digits").images[:80]


def _train(folder, steps=3, **options):
    from nanodiffusion.training.autoencoder import train_autoencoder_folder

    images = _digits()
    return train_autoencoder_folder(
        images[:64],
        images[64:],
        AutoencoderConfig(in_channels=1, channels=8, channel_mults=[1, 2]),
        folder,
        steps=steps,
        batch_size=8,
        lr=1e-2,
        progress=False,
        **options,
    )


def _checkpoint(folder):
    from safetensors.torch import load_file

    from nanodiffusion.io.checkpoint import checkpoint_file

    files = {name: checkpoint_file(folder / "checkpoint", f"{name}.safetensors") for name in ("model", "ema")}
    return {name: load_file(str(path)) for name, path in files.items()}


@pytest.fixture(scope="module")
def straight_and_stopped(tmp_path_factory):
    """A 3-step run, and one stopped after steps 1 and 2 and resumed each time (its checkpoints kept)."""
    tmp = tmp_path_factory.mktemp("ae")
    assert _train(tmp / "straight")["finished"]
    snapshots = []
    for k in (1, 2):
        report = _train(tmp / "stopped", stop_after=k, resume=k > 1)
        assert report == {"finished": False, "steps": k}
        assert not (tmp / "stopped" / "autoencoder.json").exists()  # nothing exported yet
        snapshots.append(_checkpoint(tmp / "stopped"))
    report = _train(tmp / "stopped", resume=True)
    assert report["finished"] and report["steps"] == 3 and report["weights"] == "raw"
    return tmp / "straight", tmp / "stopped", snapshots


def test_a_stopped_and_resumed_autoencoder_reaches_the_same_weights(straight_and_stopped):
    straight, stopped, _ = straight_and_stopped
    for name, a in _checkpoint(straight).items():
        b = _checkpoint(stopped)[name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    exported = "autoencoder.safetensors"
    assert (straight / exported).read_bytes() == (stopped / exported).read_bytes()
    assert load_autoencoder(straight).cfg.scale_factor == load_autoencoder(stopped).cfg.scale_factor


def test_the_autoencoders_ema_follows_the_power_function_decay(straight_and_stopped):
    from nanodiffusion.training.loop import EMAModel

    straight, _, snapshots = straight_and_stopped
    torch.manual_seed(0)  # the initial weights: the EMA's start
    ema = Autoencoder(AutoencoderConfig(in_channels=1, channels=8, channel_mults=[1, 2])).state_dict()
    decay = EMAModel(torch.nn.Linear(1, 1), power=2 / 3, max_decay=0.9999).decay
    for step, snap in enumerate([*snapshots, _checkpoint(straight)], start=1):
        w = 1 - decay(step)  # 0.63, 0.48, 0.40: the EMA is far from the raw weights
        ema = {k: torch.lerp(ema[k], snap["model"][k], w) for k in ema}
        assert all(torch.allclose(snap["ema"][k], ema[k], rtol=1e-6, atol=1e-7) for k in ema), step
    raw = _checkpoint(straight)["model"]
    assert max((raw[k] - ema[k]).abs().max().item() for k in raw) > 1e-3
    exported = load_autoencoder(straight).state_dict()  # the raw weights by default
    assert all(torch.equal(exported[k], raw[k]) for k in raw)


def test_ctrl_c_saves_the_autoencoders_checkpoint_and_resume_continues_exactly(
    straight_and_stopped, tmp_path, monkeypatch
):
    import os
    import signal

    from nanodiffusion.io.checkpoint import checkpoint_file, weights_step

    calls, loss = [], Autoencoder.loss

    def interrupted_loss(self, *args, **kwargs):  # Ctrl-C during the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(Autoencoder, "loss", interrupted_loss)
    assert _train(tmp_path / "ae") == {"finished": False, "steps": 2}  # the step finished, then saved
    assert weights_step(checkpoint_file(tmp_path / "ae" / "checkpoint", "ema.safetensors")) == 2
    with pytest.raises(NanodiffError, match="resume=True"):
        _train(tmp_path / "ae")  # a new run may not mix with the stopped one's files
    monkeypatch.setattr(Autoencoder, "loss", loss)
    assert _train(tmp_path / "ae", resume=True)["finished"]
    a, b = _checkpoint(straight_and_stopped[0]), _checkpoint(tmp_path / "ae")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


@pytest.mark.slow
@needs_torchrun
def test_two_process_autoencoder_takes_the_same_steps_as_one_process(tmp_path):
    run_one_and_two(
        [
            "train-autoencoder",
            "--data",
            "digits",
            "--size",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--channels",
            "8",
            "--lr",
            "0.01",
            "--quiet",
        ],
        tmp_path / "one",
        tmp_path / "two",
    )
    torch.manual_seed(0)
    init = Autoencoder(AutoencoderConfig(in_channels=1, channels=8)).state_dict()
    assert_same_steps(
        tmp_path / "one",
        tmp_path / "two",
        ["checkpoint/model.safetensors", "checkpoint/ema.safetensors", "autoencoder.safetensors"],
        init,
        atol=2e-4,
        biases=False,
    )


@pytest.mark.slow
def test_the_command_stops_on_ctrl_c_with_exit_130_and_resumes(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from nanodiffusion.cli import main

    calls, loss = [], Autoencoder.loss

    def interrupted_loss(self, *args, **kwargs):  # Ctrl-C during the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, *args, **kwargs)

    out = tmp_path / "ae"
    argv = ["train-autoencoder", "--data", "digits", "--steps", "4", "--batch-size", "8", "--channels", "8",
            "--out", str(out), "--quiet"]  # fmt: skip
    monkeypatch.setattr(Autoencoder, "loss", interrupted_loss)
    assert main(argv) == 130
    printed = capsys.readouterr().out
    assert f"stopped after 2 steps; checkpoint saved in {out / 'checkpoint'}" in printed
    assert "the same command plus --resume" in printed and not (out / "autoencoder.safetensors").exists()
    monkeypatch.setattr(Autoencoder, "loss", loss)
    assert main([*argv, "--resume"]) == 0
    assert "held-out PSNR" in capsys.readouterr().out and (out / "autoencoder.safetensors").is_file()
    assert main(argv) == 2  # a finished folder is not replaced without --overwrite
    assert main([*argv, "--overwrite"]) == 0

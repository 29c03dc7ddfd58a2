"""ControlNet: zero convolutions, edge maps and their F1, training and the generate flags."""

import numpy as np
import pytest
import torch

from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.image import edge_f1, sobel_edges
from nanodiffusion.nets.controlnet import Controlled, ControlNet, controlled, load_controlnet
from nanodiffusion.nets.unet import UNet, UNetConfig
from nanodiffusion.training.controlnet import train_controlnet
from tiny_runs import train_tiny
from torchrun_helper import assert_same_steps, needs_torchrun, run_one_and_two


def _text_unet():
    torch.manual_seed(0)
    cfg = UNetConfig(
        in_channels=4,
        channels=16,
        channel_mults=[1, 2],
        attn_resolutions=[4],
        image_size=8,
        context_dim=8,
        dropout=0.0,
    )
    net = UNet(cfg).eval()
    for p in net.parameters():  # a "trained" base: no zero-initialised layers left
        p.data.normal_(0, 0.1)
    return net


def _inputs(n=3):
    g = torch.Generator().manual_seed(1)
    x, c_noise = torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, generator=g)
    cond = torch.cat([torch.randn(n, 5, 8, generator=g), torch.ones(n, 5, 1)], -1)
    control = (torch.rand(n, 1, 32, 32, generator=g) > 0.8).float()
    return x, c_noise, cond, control


def test_at_its_zero_convolutions_the_controlled_model_is_the_base_model_exactly():
    base = _text_unet()
    x, c_noise, cond, control = _inputs()
    cn = ControlNet(base, 1, factor=4)
    assert torch.equal(Controlled(base, cn, control)(x, c_noise, cond), base(x, c_noise, cond))
    # and through a sampler, for a class-conditional base at the control's own resolution
    from nanodiffusion.inference.pipelines import build_denoiser, sample_images
    from nanodiffusion.io.config import apply_overrides, preset

    cfg = apply_overrides(preset("digits"), ["model.channels=8", "model.num_classes=10"])
    torch.manual_seed(0)
    d = build_denoiser(cfg).eval()
    for p in d.net.parameters():
        p.data.normal_(0, 0.05)
    edges = sobel_edges(torch.rand(2, 1, 8, 8) * 2 - 1)
    ctrl = controlled(d, ControlNet(d.net, 1, 1), edges)
    labels = torch.tensor([3, 7])
    for sampler in ("dpm++2m", "euler-a"):
        want = sample_images(d, 2, (1, 8, 8), sampler, 4, class_labels=labels, guidance=3.0)
        assert torch.equal(
            sample_images(ctrl, 2, (1, 8, 8), sampler, 4, class_labels=labels, guidance=3.0), want
        )


@pytest.mark.slow
def test_trained_zero_convolutions_carry_the_control_and_the_scale_weighs_it():
    base = _text_unet()
    x, c_noise, cond, control = _inputs()
    cn = ControlNet(base, 1, factor=4)
    for p in list(cn.zero.parameters()) + list(cn.zero_mid.parameters()) + list(cn.hint.parameters()):
        p.data.normal_(0, 0.1)
    plain = base(x, c_noise, cond)
    out = Controlled(base, cn, control)(x, c_noise, cond)
    assert (out - plain).abs().max() > 1e-3
    other = Controlled(base, cn, 1 - control)(x, c_noise, cond)
    assert (out - other).abs().max() > 1e-3  # the control image itself matters
    assert torch.equal(Controlled(base, cn, control, scale=0.0)(x, c_noise, cond), plain)
    doubled = Controlled(base, cn, control)(
        torch.cat([x, x]), torch.cat([c_noise, c_noise]), torch.cat([cond, cond])
    )  # guidance's doubled batch
    assert torch.allclose(doubled[:3], out, atol=1e-5)
    with pytest.raises(NanodiffError, match="power-of-2"):
        ControlNet(base, 1, factor=3)


def test_sobel_edges_and_edge_f1():
    img = -torch.ones(1, 3, 32, 32)
    img[:, 0, 8:20, 8:20] = 1  # a red square on black: edges on its border only
    e = sobel_edges(img)
    assert e[0, 0, 14, 14] == 0 and e[0, 0, 3, 3] == 0 and e[0, 0, 8, 14] == 1 and e[0, 0, 19, 14] == 1
    assert edge_f1(e, e).item() == 1
    assert edge_f1(torch.roll(e, 1, -1), e).item() == 1  # within the pixel of tolerance
    assert edge_f1(torch.roll(e, 1, -1), e, tolerance=0).item() < 1
    assert edge_f1(torch.roll(e, 6, -1), e).item() < 0.6
    assert edge_f1(torch.zeros_like(e), e).item() == 0
    flat = sobel_edges(torch.zeros(1, 3, 16, 16))
    assert flat.sum() == 0  # a flat image has no edges, borders included


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("cn") / "run", "data.class_conditional=true")


@pytest.mark.slow
def test_training_moves_only_the_controlnet_and_round_trips(class_run, tmp_path):
    from nanodiffusion.inference.pipelines import load_run

    _, before = load_run(class_run, device="cpu")
    report = train_controlnet(class_run, tmp_path / "cn", steps=6, batch_size=8, progress=False)
    assert report["steps"] == 6 and np.isfinite(report["loss_last_50"])
    _, d = load_run(class_run, device="cpu")
    for a, b in zip(before.net.state_dict().values(), d.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the base run's weights are untouched
    cn, info = load_controlnet(tmp_path / "cn", d.net)
    assert info["steps"] == 6 and info["factor"] == 1
    assert any(p.abs().sum() > 0 for p in cn.zero.parameters())  # the zero convolutions moved
    with pytest.raises(NanodiffError, match="no ControlNet"):
        load_controlnet(tmp_path, d.net)


@pytest.mark.slow
def test_generate_with_a_control_from_the_command_line(tmp_path, monkeypatch, capsys):
    """A tiny text run (test_train's recipe), a ControlNet of a few steps, then --control."""
    from PIL import Image

    from nanodiffusion.cli import main
    from nanodiffusion.training.diffusion import train
    from test_train import _text_config

    run = tmp_path / "run"
    assert train(_text_config(tmp_path, monkeypatch), run, progress=False)
    assert main(["train-controlnet", str(run), "--steps", "3", "--batch-size", "4", "--quiet"]) == 0
    assert "ControlNet trained 3 steps" in capsys.readouterr().out
    edges = np.zeros((16, 16), np.uint8)
    edges[4:12, 4] = edges[4:12, 11] = 255
    Image.fromarray(edges).save(tmp_path / "edges.png")
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                str(run),
                "a red circle",
                "--control",
                str(tmp_path / "edges.png"),
                "--n",
                "2",
                "--steps",
                "2",
                "--control-scale",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "at scale 0.5" in printed and (out / "control.png").is_file() and (out / "grid.png").is_file()
    assert (
        main(
            [
                "generate",
                str(run),
                "x",
                "--control-from",
                str(tmp_path / "edges.png"),
                "--steps",
                "2",
                "--n",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["generate", str(run), "x", "--control-scale", "2"]) == 2
    assert "--control-scale needs" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                str(run),
                "x",
                "--control",
                str(tmp_path / "edges.png"),
                "--controlnet",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no ControlNet" in capsys.readouterr().err


# --- training through the loop: EMA, exact resume, Ctrl-C, refusing to overwrite, torchrun ------------
def _train_cn(run, out, steps=3, **options):
    return train_controlnet(run, out, steps=steps, batch_size=8, lr=0.05, progress=False, **options)


def _cn_checkpoint(out):
    from safetensors.torch import load_file

    from nanodiffusion.io.checkpoint import checkpoint_file

    files = {name: checkpoint_file(out / "checkpoint", f"{name}.safetensors") for name in ("model", "ema")}
    return {name: load_file(str(path)) for name, path in files.items()}


@pytest.fixture(scope="module")
def straight_and_stopped_cn(class_run, tmp_path_factory):
    """A 3-step ControlNet, and one stopped after steps 1 and 2 and resumed each time."""
    tmp = tmp_path_factory.mktemp("cn-loop")
    assert _train_cn(class_run, tmp / "straight")["finished"]
    snapshots = []
    for k in (1, 2):
        report = _train_cn(class_run, tmp / "stopped", stop_after=k, resume=k > 1)
        assert report == {"finished": False, "steps": k}
        assert not (tmp / "stopped" / "controlnet.json").exists()  # nothing exported yet
        snapshots.append(_cn_checkpoint(tmp / "stopped"))
    report = _train_cn(class_run, tmp / "stopped", resume=True)
    assert report["finished"] and report["steps"] == 3
    return tmp / "straight", tmp / "stopped", snapshots


def test_a_stopped_and_resumed_controlnet_reaches_the_same_weights(straight_and_stopped_cn):
    straight, stopped, _ = straight_and_stopped_cn
    for name, a in _cn_checkpoint(straight).items():
        b = _cn_checkpoint(stopped)[name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    exported = "controlnet.safetensors"
    assert (straight / exported).read_bytes() == (stopped / exported).read_bytes()


def test_the_controlnets_ema_follows_the_power_function_decay(straight_and_stopped_cn):
    from nanodiffusion.training.loop import EMAModel

    straight, _, snapshots = straight_and_stopped_cn
    ema = {k: v for k, v in snapshots[0]["model"].items() if k.startswith("zero")}
    ema = {k: torch.zeros_like(v) for k, v in ema.items()}  # the zero convolutions start at zero
    decay = EMAModel(torch.nn.Linear(1, 1), power=2 / 3, max_decay=0.9999).decay
    for step, snap in enumerate([*snapshots, _cn_checkpoint(straight)], start=1):
        ema = {k: torch.lerp(ema[k], snap["model"][k], 1 - decay(step)) for k in ema}
        assert all(torch.allclose(snap["ema"][k], ema[k], rtol=1e-6, atol=1e-8) for k in ema), step
    raw = _cn_checkpoint(straight)["model"]
    assert max((raw[k] - ema[k]).abs().max().item() for k in ema) > 1e-3


def test_ctrl_c_saves_the_controlnets_checkpoint_and_resume_continues_exactly(
    class_run, straight_and_stopped_cn, tmp_path, monkeypatch
):
    import os
    import signal

    from nanodiffusion.io.checkpoint import checkpoint_file, weights_step

    calls, forward = [], ControlNet.forward

    def interrupted_forward(self, *args):  # Ctrl-C during the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args)

    monkeypatch.setattr(ControlNet, "forward", interrupted_forward)
    assert _train_cn(class_run, tmp_path / "cn") == {"finished": False, "steps": 2}
    assert weights_step(checkpoint_file(tmp_path / "cn" / "checkpoint", "model.safetensors")) == 2
    monkeypatch.setattr(ControlNet, "forward", forward)
    assert _train_cn(class_run, tmp_path / "cn", resume=True)["finished"]
    a, b = _cn_checkpoint(straight_and_stopped_cn[0]), _cn_checkpoint(tmp_path / "cn")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_a_finished_controlnet_is_only_replaced_when_asked(class_run, straight_and_stopped_cn, tmp_path):
    import shutil

    out = tmp_path / "cn"
    shutil.copytree(straight_and_stopped_cn[0], out)
    before = (out / "controlnet.safetensors").read_bytes()
    with pytest.raises(NanodiffError, match="already holds a ControlNet; pass overwrite=True"):
        _train_cn(class_run, out, seed=1)
    assert (out / "controlnet.safetensors").read_bytes() == before
    assert _train_cn(class_run, out, seed=1, overwrite=True)["finished"]
    assert (out / "controlnet.safetensors").read_bytes() != before


@pytest.mark.slow
@needs_torchrun
def test_two_process_controlnet_takes_the_same_steps_as_one_process(class_run, tmp_path):
    run_one_and_two(
        ["train-controlnet", str(class_run), "--steps", "3", "--batch-size", "8", "--lr", "0.5", "--quiet"],
        tmp_path / "one",
        tmp_path / "two",
    )
    zero = {
        k: torch.zeros_like(v)
        for k, v in _cn_checkpoint(tmp_path / "one")["model"].items()
        if k.startswith("zero")
    }  # the zero convolutions' start
    assert_same_steps(
        tmp_path / "one",
        tmp_path / "two",
        ["checkpoint/model.safetensors", "checkpoint/ema.safetensors", "controlnet.safetensors"],
        zero,
        atol=2e-4,
        biases=False,
    )

"""The command line: one-line errors with a non-zero exit, nothing already written lost."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from nanodiffusion.cli import main
from nanodiffusion.training.diffusion import train
from tiny_runs import train_tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("cli") / "run", "run.sample_steps=5")


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0
    assert len(err.splitlines()) == 1 and err.startswith("nanodiff: error:"), err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_sample_same_seed_same_images(run_dir, tmp_path, capsys):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "sample",
                    str(run_dir),
                    "--n",
                    "5",
                    "--steps",
                    "4",
                    "--seed",
                    "3",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    a = [np.array(Image.open(tmp_path / "a" / f"sample_{i:04d}.png")) for i in range(5)]
    b = [np.array(Image.open(tmp_path / "b" / f"sample_{i:04d}.png")) for i in range(5)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert (tmp_path / "a" / "grid.png").is_file()
    main(["sample", str(run_dir), "--n", "5", "--steps", "4", "--seed", "4", "--out", str(tmp_path / "c")])
    c = np.array(Image.open(tmp_path / "c" / "sample_0000.png"))
    assert not (c == a[0]).all()


@pytest.mark.parametrize("sampler", ["heun", "unipc", "sde"])
def test_sample_reports_nfe(run_dir, tmp_path, capsys, sampler):
    assert (
        main(
            [
                "sample",
                str(run_dir),
                "--n",
                "2",
                "--steps",
                "3",
                "--sampler",
                sampler,
                "--spacing",
                "karras",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    nfe = 5 if sampler == "heun" else 3
    assert f"3 steps = {nfe} NFE" in capsys.readouterr().out


@pytest.mark.slow
def test_guidance_rows_and_class_checks(tmp_path, capsys):
    from nanodiffusion.io.config import apply_overrides, preset

    cfg = apply_overrides(
        preset("digits"),
        [
            "model.channels=8",
            "model.attn_resolutions=[]",
            "optim.batch_size=16",
            "run.steps=2",
            "run.sample_every=0",
            "run.checkpoint_every=0",
            "run.sample_n=4",
            "run.sample_steps=3",
            "data.class_conditional=true",
        ],
    )
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    assert (
        main(
            [
                "sample",
                str(run),
                "--n",
                "4",
                "--steps",
                "3",
                "--guidance",
                "0,1,3",
                "--out",
                str(tmp_path / "rows"),
            ]
        )
        == 0
    )
    assert "one row each" in capsys.readouterr().out
    assert Image.open(tmp_path / "rows" / "guidance.png").size[1] > 3 * 8
    assert (
        main(
            [
                "sample",
                str(run),
                "--n",
                "3",
                "--steps",
                "3",
                "--class",
                "7",
                "--guidance",
                "3",
                "--out",
                str(tmp_path / "seven"),
            ]
        )
        == 0
    )
    assert "guidance 3" in capsys.readouterr().out
    assert "--class must be in 0..9" in _error(capsys, ["sample", str(run), "--class", "10"])


@pytest.mark.slow
def test_eval_writes_json_and_prints_every_caveat(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    out = tmp_path / "metrics.json"
    assert (
        main(
            ["eval", str(run_dir), "--n", "40", "--steps", "3", "--features", "classifier", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"fid", "kid_mean", "kid_std", "precision", "recall", "floor_fid"} <= set(result)
    assert result["n"] == 40 and result["nfe"] == 3 and result["sampler"] == "dpm++2m"
    for caveat in ["real-vs-real floor", "N          40 generated", "nanodiff-classifier", "resize"]:
        assert caveat in printed, caveat
    assert "unconditional" in _error(capsys, ["eval", str(run_dir), "--guidance", "3"])


def test_info_describes_the_run(run_dir, capsys):
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step 3 of 3" in out and "eps prediction" in out and "linear schedule" in out
    assert "checkpoint   checkpoints/step-00000003: model.safetensors, ema.safetensors, state.pt" in out


def test_a_run_folder_of_the_old_layout_still_samples_and_resumes(run_dir, tmp_path, capsys):
    """Before 0.2 a run kept model.safetensors, ema.safetensors and state.pt at its top."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for f in (old / "checkpoints" / "step-00000003").iterdir():
        f.rename(old / f.name)
    shutil.rmtree(old / "checkpoints")
    capsys.readouterr()
    assert main(["info", str(old)]) == 0
    assert "step 3 of 3" in capsys.readouterr().out
    assert main(["sample", str(old), "--n", "2", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", str(run_dir), "--n", "2", "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()
    assert (
        main(["train", "--resume", str(old), "--steps", "4", "--quiet"]) == 0
    )  # continues, into checkpoints/
    assert main(["info", str(old)]) == 0
    assert "step 4 of 4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["sample", "RUN", "--n", "0"], "must be positive"),
        (["sample", "RUN", "--steps", "-1"], "must be positive"),
        (["sample", "RUN", "--steps", "2000"], "cannot exceed"),
        (["sample", "RUN", "--class", "3"], "unconditional"),
        (["sample", "RUN", "--guidance", "3"], "unconditional"),
        (["sample", "RUN", "--guidance", "1,x"], "expected numbers"),
        (["sample", "RUN", "--guidance", "-2"], ">= 0"),
        (["sample", "RUN", "--sampler", "euler", "--eta", "0.5"], "sampler euler has no option --eta"),
        (["sample", "RUN", "--sampler", "unipc", "--order", "5"], "order must be 1, 2 or 3"),
        (["sample", "RUN", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["bench-samplers", "--samplers", "nope"], "unknown sampler 'nope'"),
        (["bench-samplers", "--nfe", "10,x"], "--nfe"),
        (["bench-samplers", "--n", "-5"], "argument --n: must be in [1, 1000000], got -5"),
        (["bench-samplers", "--nfe", "0"], "argument --nfe: must be in [1, 10000], got 0"),
        (["bench-samplers", "--dims", ","], "argument --dims: expected a comma-separated list, got ','"),
        (["bench-samplers", "--seed", "-1"], "argument --seed: must be in [0, 9223372036854775807], got -1"),
        (["train", "--steps", "0"], "must be positive"),
        (["sample", "/no/such/run"], "run folder not found"),
        (["train", "--set", "model.nonsense=1"], "unknown config key"),
        (["train", "--config", "/no/such.toml"], "config file not found"),
        (["train", "--resume", "RUN", "--lr", "0.1"], "only --steps and --device may change"),
    ],
)
def test_bad_arguments(run_dir, capsys, argv, message):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert message in _error(capsys, argv)


def test_missing_and_corrupt_checkpoints(run_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    from nanodiffusion.io.checkpoint import checkpoint_file

    ema = checkpoint_file(broken, "ema.safetensors")
    ema.write_bytes(b"not a safetensors file")
    assert "corrupt checkpoint" in _error(capsys, ["sample", str(broken)])
    ema.unlink()
    assert "missing checkpoint file" in _error(capsys, ["sample", str(broken)])
    (broken / "config.json").unlink()
    assert "not a run folder" in _error(capsys, ["sample", str(broken)])


def test_config_that_does_not_match_the_weights(run_dir, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["channels"] = 16
    (other / "config.json").write_text(json.dumps(cfg))
    before = _digest(other)
    assert "does not match the weights" in _error(capsys, ["sample", str(other), "--n", "2"])
    assert "does not match the weights" in _error(capsys, ["train", "--resume", str(other)])
    assert _digest(other) == before  # nothing in the run was touched


def test_bad_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found" in _error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "r1")])
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("L", (8, 8)).save(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"\x89PNG garbage")
    assert "broken.png" in _error(capsys, ["train", "--data", str(bad), "--out", str(tmp_path / "r2")])
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 5), dtype=np.uint8))
    assert "shape" in _error(
        capsys, ["train", "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "r3")]
    )
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())


def test_training_into_an_existing_run_keeps_it(run_dir, capsys):
    before = _digest(run_dir)
    assert "already holds a run" in _error(capsys, ["train", "--steps", "2", "--out", str(run_dir)])
    assert _digest(run_dir) == before


def test_schedule_and_forward_pictures(tmp_path, capsys):
    assert main(["schedules", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["forward", "--out", str(tmp_path / "f.png"), "--schedule", "cosine"]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 200 and Image.open(tmp_path / "f.png").size[0] > 200


@pytest.mark.slow
def test_toml_config_with_flag_overrides(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(
        '[data]\nname = "digits"\n\n[model]\nchannels = 8\nblocks_per_level = 1\nattn_resolutions = []\n\n'
        '[diffusion]\nparameterization = "v"\n\n[schedule]\nkind = "cosine"\n\n'
        "[optim]\nbatch_size = 8\n\n[run]\nsteps = 50\nsample_every = 0\nsample_n = 4\nsample_steps = 4\n"
    )
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(tmp_path / "tiny.toml"), "--steps", "2", "--quiet", "--out", str(run)])
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["run"]["steps"] == 2  # the flag wins over the file
    assert cfg["schedule"]["kind"] == "cosine" and cfg["diffusion"]["parameterization"] == "v"
    (tmp_path / "bad.toml").write_text("[model\nchannels = 8")
    assert "cannot parse config" in _error(capsys, ["train", "--config", str(tmp_path / "bad.toml")])


@pytest.mark.slow
def test_train_autoencoder_command(tmp_path, monkeypatch, capsys):
    from nanodiffusion.data import datasets as data
    from nanodiffusion.io.checkpoint import load_autoencoder

    monkeypatch.setenv("NANODIFF_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(data.SHAPES_SCENES, "train", 64)
    monkeypatch.setitem(data.SHAPES_SCENES, "test", 16)
    out = tmp_path / "ae"
    assert (
        main(
            [
                "train-autoencoder",
                "--size",
                "16",
                "--steps",
                "5",
                "--batch-size",
                "8",
                "--channels",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "latents 4x4x4" in printed and "PSNR" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["latent_shape"] == [4, 4, 4] and (out / "reconstructions.png").is_file()
    assert load_autoencoder(out).cfg.scale_factor == report["scale_factor"]
    assert main(["train-autoencoder", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2

"""Run folders and checkpoints (nanodiffusion.io.checkpoint): exact round trips, the step in the
weights' metadata, and one-line errors for every damaged or mismatched file."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nanodiffusion.io.checkpoint import (
    CHECKPOINTS,
    atomic_write,
    checkpoint_file,
    checkpoints,
    clean_checkpoints,
    latest_checkpoint,
    load_config,
    load_state,
    load_weights,
    save_config,
    save_state,
    save_weights,
    weights_step,
    write_checkpoint,
)
from nanodiffusion.io.config import apply_overrides, preset
from one_line import error_of


def net(seed: int, hidden: int = 4, layers: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    modules = [nn.Linear(3, hidden)]
    if layers == 2:
        modules += [nn.ReLU(), nn.Linear(hidden, 2)]
    return nn.Sequential(*modules)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- weights --------------------------------------------------------------------------------------


def test_weights_round_trip_exactly_with_their_step(tmp_path):
    path = tmp_path / "model.safetensors"
    saved = net(0)
    save_weights(saved, path, step=1234)
    loaded = net(1)
    assert not same_weights(saved, loaded)
    load_weights(loaded, path)
    assert same_weights(saved, loaded)
    assert weights_step(path) == 1234
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temporary file left behind


def test_saving_again_replaces_the_file_and_its_step(tmp_path):
    path = tmp_path / "ema.safetensors"
    save_weights(net(0), path, step=10)
    save_weights(net(2), path, step=20)
    loaded = net(1)
    load_weights(loaded, path)
    assert same_weights(loaded, net(2)) and weights_step(path) == 20


def test_weights_step_without_a_step_is_minus_one(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    assert weights_step(tmp_path / "plain.safetensors") == -1
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    assert weights_step(tmp_path / "other.safetensors") == -1


def test_wrong_shapes_and_names_are_one_line_and_leave_the_module_as_it_was(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(net(0, hidden=4), path, step=1)
    wider = net(1, hidden=5)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    assert error_of(load_weights, wider, path) == (
        f"config.json does not match the weights in {path}: shape of 0.weight is (4, 3) in the file, "
        "(5, 3) in the config"
    )
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    assert error_of(load_weights, net(1, layers=1), path) == (
        f"config.json does not match the weights in {path}: unexpected ['2.bias', '2.weight']"
    )
    save_weights(net(0, layers=1), path, step=1)
    assert error_of(load_weights, net(1), path) == (
        f"config.json does not match the weights in {path}: missing ['2.bias', '2.weight']"
    )


def test_damaged_weights_are_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    assert error_of(load_weights, net(0), path) == f"missing checkpoint file: {path}"
    save_weights(net(0), path, step=1)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"\x00" * 64, b"not a safetensors file at all"):
        path.write_bytes(damaged)
        assert error_of(load_weights, net(0), path).startswith(f"corrupt checkpoint file {path}: ")


# --- training state -------------------------------------------------------------------------------


def test_state_round_trips_optimizer_and_rng_exactly(tmp_path):
    model = net(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(5, 3)).square().sum().backward()
    optimizer.step()
    state = {
        "step": 7,
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "generator": torch.Generator().manual_seed(3).get_state(),
    }
    save_state(state, tmp_path / "state.pt")
    loaded = load_state(tmp_path / "state.pt")
    assert loaded["step"] == 7
    assert torch.equal(loaded["rng"], state["rng"]) and torch.equal(loaded["generator"], state["generator"])
    moments = state["optimizer"]["state"][0]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], moments["exp_avg"])
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg_sq"], moments["exp_avg_sq"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    # a fresh optimizer takes the state and steps exactly as the original does
    twin = net(5)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    twin_optimizer.load_state_dict(loaded["optimizer"])
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        o.zero_grad()
        m(torch.ones(5, 3)).square().sum().backward()
        o.step()
    assert same_weights(model, twin)


def test_damaged_or_unsafe_state_is_one_line(tmp_path):
    path = tmp_path / "state.pt"
    assert error_of(load_state, path) == (f"missing training state: {path} (was this run saved by train()?)")
    save_state({"step": 1, "w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:40])
    assert error_of(load_state, path).startswith(f"corrupt training state {path}: ")
    torch.save({"step": 1, "call": os.getcwd}, path)  # a pickled function: never unpickled
    assert error_of(load_state, path) == f"refused {path}: loading it would run code from the file"
    torch.save([1, 2], path)  # a valid file of the wrong layout
    assert error_of(load_state, path) == f"corrupt training state {path}: it holds a list, not a dict"


# --- config and writes ----------------------------------------------------------------------------


def test_config_round_trips_through_the_run_folder(tmp_path):
    cfg = apply_overrides(preset("digits"), ["run.steps=5", "model.channels=16"])
    save_config(cfg, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
    assert load_config(tmp_path) == cfg


def test_missing_run_folders_are_one_line(tmp_path):
    assert error_of(load_config, tmp_path / "nope") == f"run folder not found: {tmp_path / 'nope'}"
    assert error_of(load_config, tmp_path) == f"{tmp_path} is not a run folder: it has no config.json"


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")

    def write_half_then_fail(tmp):
        tmp.write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"


# --- checkpoint folders ---------------------------------------------------------------------------


def _writer(text: str):
    return lambda path: path.write_text(text)


def test_a_checkpoint_is_a_folder_and_only_the_newest_are_kept(tmp_path):
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, step, {"a.txt": _writer(f"a{step}"), "b.txt": _writer(f"b{step}")}, keep=2)
    assert [s for s, _ in checkpoints(tmp_path)] == [4, 6]
    assert sorted(os.listdir(tmp_path / CHECKPOINTS)) == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(tmp_path) == tmp_path / CHECKPOINTS / "step-00000006"
    assert checkpoint_file(tmp_path, "b.txt").read_text() == "b6"
    for step in (8, 10):
        write_checkpoint(tmp_path, step, {"a.txt": _writer(f"a{step}")}, keep=0)  # 0 keeps them all
    assert [s for s, _ in checkpoints(tmp_path)] == [4, 6, 8, 10]


def test_a_failed_write_leaves_the_earlier_checkpoints_and_no_temporary_folder(tmp_path):
    write_checkpoint(tmp_path, 2, {"a.txt": _writer("a2")})

    def full_disk(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    message = error_of(write_checkpoint, tmp_path, 4, {"a.txt": _writer("a4"), "b.txt": full_disk})
    where = tmp_path / CHECKPOINTS
    start = f"could not write the checkpoint of step 4 in {where} ([Errno 28] No space left on device; "
    assert message.startswith(start) and message.endswith(
        " MB free there); the checkpoint of step 2 is intact"
    )
    assert sorted(os.listdir(tmp_path / CHECKPOINTS)) == ["step-00000002"]
    assert checkpoint_file(tmp_path, "a.txt").read_text() == "a2"


def test_half_written_and_half_deleted_checkpoints_are_never_taken_and_get_cleaned(tmp_path):
    write_checkpoint(tmp_path, 2, {"a.txt": _writer("a2")})
    root = tmp_path / CHECKPOINTS
    (root / ".step-00000004.tmp").mkdir()  # a save killed half way
    (root / ".step-00000004.tmp" / "a.txt").write_text("a4 cut sh")
    (root / ".step-00000000.old").mkdir()  # a deletion killed half way
    (root / "notes.txt").write_text("a user's file")
    assert latest_checkpoint(tmp_path) == root / "step-00000002"
    assert clean_checkpoints(tmp_path) == [".step-00000000.old", ".step-00000004.tmp"]
    assert sorted(os.listdir(root)) == ["notes.txt", "step-00000002"]


def test_a_folder_of_weights_without_checkpoints_is_read_in_place(tmp_path):
    """Runs saved before 0.2 and exported pipelines keep their weights at the top."""
    assert latest_checkpoint(tmp_path) is None
    assert error_of(checkpoint_file, tmp_path, "ema.safetensors").endswith(
        "holds no checkpoint (no checkpoints/step-* folder and no ema.safetensors)"
    )
    save_weights(net(0), tmp_path / "ema.safetensors", 7)
    assert checkpoint_file(tmp_path, "ema.safetensors") == tmp_path / "ema.safetensors"
    write_checkpoint(tmp_path, 9, {"ema.safetensors": lambda p: save_weights(net(1), p, 9)})
    assert weights_step(checkpoint_file(tmp_path, "ema.safetensors")) == 9  # checkpoints/ comes first


def test_weights_with_a_step_that_is_not_a_number_or_nan_values_are_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net(0).state_dict().items()}, str(path), metadata={"step": "abc"}
    )
    assert error_of(weights_step, path) == f"corrupt checkpoint file {path}: step 'abc' is not a number"
    tensors = net(0).state_dict()
    tensors["0.weight"] = torch.full_like(tensors["0.weight"], float("nan"))
    save_file(tensors, str(path), metadata={"step": "1"})
    model = net(1)
    assert (
        error_of(load_weights, model, path)
        == f"corrupt checkpoint file {path}: 0.weight holds NaN or infinite values"
    )
    assert same_weights(model, net(1))

"""One command run in one process and under torchrun in two, and their weights compared: the
shared check that a trainer's torchrun path takes the same steps as one process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanodiffusion.io.checkpoint import checkpoint_file

needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")


def run_one_and_two(args: list[str], one: Path, two: Path) -> None:
    """`nanodiff ARGS --out ONE` in one process, then under torchrun with two into TWO."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher, out in [([sys.executable], one), (["torchrun", "--standalone", "--nproc_per_node=2"], two)]:
        done = subprocess.run(
            [*launcher, "-m", "nanodiffusion.cli", *args, "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]


def _file(folder: Path, name: str) -> Path:
    """FOLDER/name; for "checkpoint/F", file F of the newest checkpoint in FOLDER/checkpoint; for
    "run/F", of the run FOLDER's newest checkpoint."""
    where, _, file = name.rpartition("/")
    if where == "run":  # a diffusion run's newest checkpoint (FOLDER/checkpoints/step-*)
        return checkpoint_file(folder, file)
    return checkpoint_file(folder / where, file) if where == "checkpoint" else folder / name


def assert_same_steps(
    one: Path, two: Path, files: list[str], init: dict[str, torch.Tensor], atol: float, biases: bool = True
) -> None:
    """The weight files in ONE and TWO agree to atol (float reduction order differs across
    processes, and Adam can magnify it on near-zero weights), while training moved the weights
    from `init` (some of their tensors) by more than ten times atol, so the check is not vacuous.

    biases=False compares the matrices and kernels only: a bias that a following per-channel
    GroupNorm cancels gets nothing but float noise as its gradient, and Adam's first steps,
    which divide by the gradient's own size, turn noise into steps of +-lr."""
    for name in files:
        a, b = load_file(str(_file(one, name))), load_file(str(_file(two, name)))
        assert a.keys() == b.keys()
        for k in a:
            if biases or a[k].ndim > 1:
                assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (name, k, (a[k] - b[k]).abs().max())
    trained = load_file(str(_file(two, files[0])))
    assert max((trained[k] - v).abs().max().item() for k, v in init.items()) > 10 * atol

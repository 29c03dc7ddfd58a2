import sys
from pathlib import Path

import pytest

from nanodiffusion.io.config import apply_overrides, preset

# bench/ on the path: the tests import the benchmarks and the fixtures they share (bench/_sd_fixture.py)
sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))


@pytest.fixture
def tiny_config():
    """A digits model small enough that a training step takes milliseconds."""
    return apply_overrides(
        preset("digits"),
        [
            "model.channels=8",
            "model.blocks_per_level=1",
            "model.attn_resolutions=[]",
            "model.dropout=0.1",
            "optim.batch_size=16",
            "optim.warmup_steps=2",
            "run.steps=6",
            "run.log_every=1",
            "run.sample_every=0",
            "run.checkpoint_every=0",
            "run.sample_n=4",
            "run.sample_steps=5",
        ],
    )


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a module of small networks (they gain nothing from threads, and
    spinning threads slow 10x beside other jobs); the default is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""A digits run small enough to train in a second, for tests that need a real run folder."""

from pathlib import Path

from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.training.diffusion import train

TINY = [
    "model.channels=8",
    "model.blocks_per_level=1",
    "model.attn_resolutions=[]",
    "optim.batch_size=16",
    "run.steps=3",
    "run.sample_every=0",
    "run.checkpoint_every=0",
    "run.sample_n=4",
    "run.sample_steps=3",
]


def train_tiny(run: Path, *overrides: str) -> Path:
    """Train the digits preset shrunk by TINY, then `overrides` (later ones win), into `run`."""
    assert train(apply_overrides(preset("digits"), [*TINY, *overrides]), run, progress=False)
    return run

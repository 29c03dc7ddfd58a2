"""The one training loop on a toy model: accumulation, the schedule's horizon, checkpoints' steps."""

import math

import pytest
import torch

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import OptimConfig
from nanodiffusion.training.loop import Loop, lr_multiplier


def _toy_loop(grad_accum: int, folder=None, steps: int = 4) -> Loop:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8 * steps, 3, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    micro = 8 // grad_accum

    def step_fn(step: int, k: int) -> torch.Tensor:
        rows = slice(step * 8 + k * micro, step * 8 + (k + 1) * micro)
        return ((model(x[rows]) - y[rows]) ** 2).mean()

    optim = OptimConfig(lr=0.1, warmup_steps=1, grad_clip=0.0, batch_size=8, grad_accum=grad_accum)
    return Loop(model, step_fn, optim, steps, folder=folder, progress=False)


def test_accumulated_micro_batches_take_the_full_batchs_step():
    one, two = _toy_loop(1), _toy_loop(2)
    assert one.fit() and two.fit()
    assert two.step == 4
    for a, b in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(one.model.weight, _toy_loop(1).model.weight)  # it trained
    assert [r["step"] for r in two.records] == [4]  # logged every 10 steps, and at the last


def test_the_cosine_reaches_its_floor_at_the_horizon():
    o = OptimConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.1)
    # the autoencoder's schedule: at the floor on its last step (horizon = steps - 1)
    assert [lr_multiplier(s, o, 2) for s in range(3)] == pytest.approx([1.0, 0.55, 0.1])
    assert lr_multiplier(0, o, 0) == 1.0  # a one-step run
    constant = OptimConfig(lr=1.0, warmup_steps=4, decay="constant")
    assert [lr_multiplier(s, constant, 100) for s in (0, 3, 50)] == [0.25, 1.0, 1.0]
    assert math.isclose(lr_multiplier(7, OptimConfig(warmup_steps=2, min_lr_ratio=0.0), 12), 0.5)


def test_a_resumed_loop_continues_the_metrics_and_refuses_a_mixed_checkpoint(tmp_path):
    loop = _toy_loop(1, tmp_path)
    loop.log_every = 1
    assert loop.fit(stop_after=2)
    resumed = _toy_loop(1, tmp_path)
    resumed.load()
    assert resumed.step == 2 and [r["step"] for r in resumed.records] == [1, 2]
    from nanodiffusion.io.checkpoint import checkpoint_file, save_weights

    save_weights(resumed.model, checkpoint_file(tmp_path, "model.safetensors"), 5)  # a tampered file
    with pytest.raises(NanodiffError, match="different steps"):
        _toy_loop(1, tmp_path).load()
    with pytest.raises(NanodiffError, match="nothing to resume"):
        _toy_loop(1, tmp_path / "empty").load()

"""The task protocol: what a kind of run (plain generation, inpainting, upscaling, ...) adds to the
one denoiser contract D(x, sigma, cond) -> x0_hat, held in one object so that the trainer and
the pipelines ask the task instead of branching on its name.

A task answers four questions, each a method:

* ``prepare(cfg, data)``: is this config right for this data, and what does the task decide?
  (At least ``cfg.model.cond_channels``: the channels of the image the network sees beside x.)
* ``batch(cfg, denoiser, x0, eps, generator, draws, rows)``: for one training micro-batch, what
  is the network conditioned on and what is it trained to produce? It returns the denoiser to
  train (bound to the batch's image condition, if any), the target x0 and the noise eps. Random
  draws come from ``generator`` for the whole global micro-batch of ``draws`` images, and this
  process keeps ``rows`` of them, so every number of processes draws the same numbers.
* ``grid(cfg, images)``: what a training grid shows: the keywords of
  ``nanodiffusion.inference.pipelines.draw`` (editing inputs made from the first training
  images), or nothing for grids drawn from noise.
* ``sampling(cfg, n, seed, **inputs)``: what a draw of n images needs from the task: an image
  condition for the network and the post-processing of the samples (a ``Sampling``). ``inputs``
  are the task's own draw keywords, named in ``inputs`` (an upscaling run's ``low_res``).

Tasks live one per module in ``nanodiffusion.tasks`` and are found by name with ``get_task``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Sampling:
    """What a task adds to a draw: ``image``, an image condition [1 or n, C', *spatial] bound beside
    x (None: none); ``clamp``, whether the samples are images to clamp to [-1, 1] (False for a
    target that is not, such as a residual or atoms' coordinates); ``finish``, samples [n, *shape]
    -> images; ``wrappers``, the sampling core's wrappers the task binds innermost (a molecule
    run's atom mask, core.pointsets.PointMask)."""

    image: torch.Tensor | None = None
    clamp: bool = True
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None
    wrappers: list = field(default_factory=list)


class Task(Protocol):
    """One kind of run; see the module's docstring for what each method answers."""

    name: str  # data.task's value for it
    inputs: tuple[str, ...]  # the draw keywords that sampling takes

    def prepare(self, cfg, data) -> None: ...

    def batch(
        self,
        cfg,
        denoiser,
        x0: torch.Tensor,
        eps: torch.Tensor,
        generator: torch.Generator,
        draws: int,
        rows: slice,
    ) -> tuple: ...

    def grid(self, cfg, images: torch.Tensor) -> dict: ...

    def sampling(self, cfg, n: int, seed: int, **inputs) -> Sampling: ...

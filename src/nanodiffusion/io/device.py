"""Where tensors run: "auto" takes the GPU when torch sees one, else the CPU."""

from __future__ import annotations

import torch

from nanodiffusion.errors import NanodiffError


def pick_device(name: str = "auto") -> torch.device:
    """The device called `name` ("auto", "cpu" or "cuda"); "cuda" without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NanodiffError("device cuda was asked for, but torch sees no GPU")
    return torch.device(name)

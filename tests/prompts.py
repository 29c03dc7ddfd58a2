"""A text condition for the networks' tests: random prompt tokens with a mask, as
nets.unet.split_context reads them (the last channel marks the real tokens)."""

import torch

D, L = 12, 6  # the tokens' width and the prompt's length


def prompt(batch: int, real: int, seed: int) -> torch.Tensor:
    """A text condition: random tokens, the first `real` of L marked real, the rest padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, L, D, generator=g)
    mask = (torch.arange(L) < real).float().expand(batch, L)
    return torch.cat([tokens, mask[..., None]], -1)

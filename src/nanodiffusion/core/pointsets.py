"""Point sets with a mask (atoms of molecules): the one denoiser contract on [B, N, 3 + K].

A sample is N points, each with 3 coordinates and K features; ``mask`` [B, N] (1 = a real point)
pads sets of fewer points. The data live in a linear subspace V of the tensor's space: padded rows
are zero, and the coordinates have zero centre of mass (a molecule's position is not part of
it; Hoogeboom et al. 2022, Sec. 3.2, diffuse in this subspace). ``project`` is the orthogonal
projection P onto V.

Nothing in the samplers changes. The network only ever sees P x, and the denoiser puts the input's
centre of mass back on its estimate:

    D_V(x, sigma, cond) = D(P x, sigma, cond) + com(x)     (on real rows; padded rows 0)

Every sampler's update is a linear combination of x and D, so P x follows exactly the path it would
follow if the sampler drew its noise in V, whatever noise it adds outside V (the fresh noise of
ancestral and SDE samplers, the initial full-space noise): the part outside V never reaches the
network, and P of the final x is the sample. D_V is translation equivariant (D_V(x + t) = D_V(x) + t)
when the network is. Training draws its noise in V (``project(eps)``), as the paper does.

Inpainting over points (some points held where they are) needs the estimate in the held points'
frame, not the noise's: with ``anchor`` rows, the translation added to D(P x) is the one that best
lays its anchor rows onto x's, t = mean over anchors of (x - D(P x)) (least squares), so the points
generated around a scaffold are generated where the scaffold is. With every real point as the
anchor, t = com(x): the plain D_V above.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanodiffusion.core.denoisers import Denoiser, batch_rows

COORDS = 3


def com(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real points' mean position, [B, 1, 3]."""
    m = mask.to(x.dtype)[..., None]
    return (x[..., :COORDS] * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)


def center(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Coordinates [B, N, 3] moved so that the real points' mean is 0; padded rows set to 0."""
    return (pos - com(pos, mask)) * mask.to(pos.dtype)[..., None]


def project(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """P x: padded rows zero, coordinates centred over the real points."""
    return torch.cat([center(x[..., :COORDS], mask), x[..., COORDS:] * mask.to(x.dtype)[..., None]], -1)


def mask_of(x0: torch.Tensor) -> torch.Tensor:
    """The mask [B, N] of clean point sets: a padded row is all zeros, a real point's features
    (a one-hot type) never are."""
    return (x0[..., COORDS:] != 0).any(-1).to(x0.dtype)


class MaskedNet(nn.Module):
    """net(x, c_noise, cond) with a mask [B or 1, N] bound (repeated when guidance doubles the
    batch): the network sees P x and returns an output in V."""

    def __init__(self, net: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.net, self.mask = net, mask

    @property
    def cfg(self):
        return self.net.cfg

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        mask = batch_rows(self.mask, x, "a point mask")
        return self.net(project(x, mask), c_noise, cond, mask=mask)


class PointSetDenoiser(Denoiser):
    """D_V of the module's docstring around a Denoiser whose network takes ``mask=``; ``anchor``
    ([B or 1, N], default: the mask) the rows whose frame the estimate takes."""

    def __init__(self, denoiser: Denoiser, mask: torch.Tensor, anchor: torch.Tensor | None = None):
        super().__init__(
            MaskedNet(denoiser.net, mask), denoiser.schedule, denoiser.parameterization, denoiser.sigma_data
        )
        self.mask, self.anchor = mask, anchor

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None):
        mask = batch_rows(self.mask, x, "a point mask")
        return super().raw(project(x, mask), sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        mask = batch_rows(self.mask, x, "a point mask")
        d = super().forward(project(x, mask), sigma, cond)
        if self.anchor is None:
            t = com(x, mask)
        else:  # the translation that lays the estimate's anchor rows onto x's
            t = com(x - d, batch_rows(self.anchor, x, "an anchor mask") * mask)
        shift = torch.cat([t, torch.zeros_like(x[:, :1, COORDS:])], -1)
        return (d + shift) * mask[..., None]


def on_points(denoiser: Denoiser, mask: torch.Tensor, anchor: torch.Tensor | None = None) -> PointSetDenoiser:
    """The denoiser of point sets whose real rows are ``mask`` ([B or 1, N]), in the frame of the
    ``anchor`` rows (default: all real rows)."""
    return PointSetDenoiser(denoiser, mask, anchor)


class PointMask:
    """The sampling core's wrapper (inference.sampling.Wrapper) binding each batch's rows of an
    [n or 1, N] mask (and of an anchor mask: the rows held fixed, whose frame the estimate takes)."""

    def __init__(self, mask: torch.Tensor, anchor: torch.Tensor | None = None):
        self.mask, self.anchor = mask, anchor

    def __call__(self, denoiser, rows: slice):
        device = next(denoiser.parameters()).device

        def take(t):
            return None if t is None else (t if len(t) == 1 else t[rows]).to(device)

        return on_points(denoiser, take(self.mask), take(self.anchor))

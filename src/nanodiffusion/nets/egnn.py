"""An E(n)-equivariant graph network for atoms (EGNN; Satorras, Hoogeboom & Welling 2021), as the
denoiser of equivariant diffusion for molecules (EDM; Hoogeboom, Satorras, Vignac & Welling 2022).

A molecule is a point set: each of N atoms has coordinates x_i (3 numbers) and features h_i (its
type, one-hot, times a scale). The sample is one tensor [B, N, 3 + K]: x = [..., :3], h = [..., 3:];
molecules of fewer atoms are padded, and ``mask`` [B, N] (1 = a real atom) says which rows are
atoms. Each layer (paper, eq. 3-6) works on the fully connected graph of real atoms:

    m_ij  = phi_e(h_i, h_j, ||x_i - x_j||^2, ||x_i^0 - x_j^0||^2)             messages
    m_ij <- m_ij * sigmoid(phi_inf(m_ij))                                     edge gate (eq. 8)
    x_i  <- x_i + mean_j (x_i - x_j) / (||x_i - x_j|| + 1) * C tanh(phi_x(m_ij))
    h_i  <- h_i + phi_h(h_i, mean_j m_ij)

with EDM's normalised differences and tanh-bounded step (C = ``coords_range``). Distances are
invariant and differences rotate with the input, so rotating and translating the input rotates
and translates every x_i, and h is unchanged (``tests/test_molecules.py`` checks it to 1e-5).

The output has the input's shape: for the coordinates the displacement x^L - x^0 of the last
layer (translation invariant, rotation equivariant), centred over the real atoms, so it lives
where the noise of the coordinates lives (zero centre of mass); for the types a linear map of
h^L. Padded rows are zero in and out. The network conditions on the noise level (a sinusoidal
code of c_noise added to every h_i) and, with ``num_classes``, on a class (a property's bin).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from nanodiffusion.core.pointsets import COORDS, center  # the first three features: the position
from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.unet import timestep_embedding


@dataclass
class EGNNConfig:
    in_channels: int = 8  # 3 coordinates + K atom-type features
    out_channels: int | None = None  # defaults to in_channels
    max_atoms: int = 29  # N: the sample is [N, in_channels]; smaller molecules are padded
    width: int = 128  # h's width and the messages'
    depth: int = 6  # equivariant layers
    num_classes: int = 0  # 0: unconditional; else index num_classes is "no class"
    coords_range: float = 15.0  # C: the bound on one layer's step of x (EDM's tanh)
    rbf: int = 0  # > 0: each distance also as this many Gaussians over 0-6 Å (SchNet's expansion)
    normalization: float = 0.0  # messages summed and divided by this (EDM: 1); 0: their mean
    context_dim: int = 0  # text conditioning: not for atoms (kept for the shared checks)
    cond_channels: int = 0  # an image condition: not for atoms (kept for the shared checks)
    dropout: float = 0.0
    kind: str = "egnn"  # config.model.kind (nets.MODELS)

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.check()

    @property
    def sample_shape(self) -> tuple[int, int]:
        """One sample's shape: [N atoms, 3 + K features]."""
        return (self.max_atoms, self.in_channels)

    def check(self) -> None:
        if self.kind != "egnn":
            raise NanodiffError(f"an EGNN's model.kind is 'egnn', got {self.kind!r}")
        if self.in_channels <= COORDS or self.out_channels != self.in_channels:
            raise NanodiffError(
                f"an EGNN's atoms are 3 coordinates and at least one type feature, in and out: "
                f"model.in_channels = {self.in_channels}, model.out_channels = {self.out_channels}"
            )
        if self.max_atoms < 1 or self.width < 1 or self.depth < 1:
            raise NanodiffError("model.max_atoms, model.width and model.depth must be positive")
        if self.context_dim or self.cond_channels:
            raise NanodiffError(
                "an EGNN takes no text (model.context_dim) and no image (model.cond_channels)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class EquivariantLayer(nn.Module):
    """One E(n)-equivariant graph convolutional layer (EGCL, paper eq. 3-6) over an edge list."""

    def __init__(self, width: int, coords_range: float, rbf: int = 0):
        super().__init__()
        self.coords_range, self.rbf = coords_range, rbf
        # phi_e's first layer on [h_i, h_j, d2, d2_0], applied as A h_i + B h_j + (d2, d2_0) w: the
        # per-atom products are computed once, not once per edge
        self.edge_i, self.edge_j = nn.Linear(width, width), nn.Linear(width, width, bias=False)
        self.edge_d = nn.Linear(2 + rbf, width, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.gate = nn.Linear(width, 1)  # phi_inf
        self.phi_x = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1, bias=False))
        nn.init.xavier_uniform_(self.phi_x[-1].weight, gain=0.001)  # small first steps, as EDM
        self.phi_h = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, h, x, d2_0, row, col, count):
        """h [A, W] and x [A, 3] of all atoms of the batch (padded rows too: they have no edges),
        the edges i = row, j = col [E] between real atoms of one molecule, d2_0 [E, 1] their
        first distances, count [A, 1] each atom's neighbours (at least 1)."""
        diff = x[row] - x[col]  # x_i - x_j
        d2 = (diff**2).sum(-1, keepdim=True)
        edge = [d2, d2_0]
        if self.rbf:  # Gaussians of width 6 / rbf Å centred from 0 to 6 Å (Schutt et al. 2017)
            centres = torch.linspace(0, 6, self.rbf, device=x.device, dtype=x.dtype)
            edge.append(torch.exp(-((((d2 + 1e-8).sqrt() - centres) * (self.rbf / 6)) ** 2)))
        m = self.edge_i(h)[row] + self.edge_j(h)[col] + self.edge_d(torch.cat(edge, -1))
        m = self.edge_out(m)
        m = m * torch.sigmoid(self.gate(m))
        step = diff / (d2 + 1e-8).sqrt().add(1) * torch.tanh(self.phi_x(m)) * self.coords_range
        x = x + torch.zeros_like(x).index_add(0, row, step) / count
        h = h + self.phi_h(torch.cat([self.norm(h), torch.zeros_like(h).index_add(0, row, m) / count], -1))
        return h, x


class EGNN(nn.Module):
    """net(x [B, N, 3 + K], c_noise [B], cond, mask [B, N]) -> [B, N, 3 + K]; see the module's
    docstring. ``mask`` None: every row is an atom."""

    def __init__(self, cfg: EGNNConfig):
        super().__init__()
        self.cfg = cfg
        W, K = cfg.width, cfg.in_channels - COORDS
        self.embed = nn.Linear(K, W)
        self.time = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, W) if cfg.num_classes else None
        self.text_emb = None
        self.layers = nn.ModuleList(EquivariantLayer(W, cfg.coords_range, cfg.rbf) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, K))

    def forward(self, x, c_noise, cond=None, mask=None):
        B, N, C = x.shape
        if N != self.cfg.max_atoms or C != self.cfg.in_channels:
            raise NanodiffError(
                f"the EGNN takes molecules [B, {self.cfg.max_atoms}, {self.cfg.in_channels}], "
                f"got {list(x.shape)}"
            )
        mask = x.new_ones(B, N) if mask is None else mask.to(x.dtype)
        m = mask[..., None]
        pos, types = center(x[..., :COORDS], mask), x[..., COORDS:] * m
        emb = self.time(timestep_embedding(c_noise.reshape(-1).expand(B), self.cfg.width).to(x.dtype))
        if self.class_emb is not None:
            if cond is None:  # the reserved "no class" index
                cond = torch.full((B,), self.cfg.num_classes, device=x.device)
            emb = emb + self.class_emb(cond)
        h = (self.embed(types) + emb[:, None]).reshape(B * N, -1)
        # the fully connected graph of each molecule's real atoms, as an edge list over the batch
        real = mask.bool()
        pair = real[:, :, None] & real[:, None, :] & ~torch.eye(N, dtype=torch.bool, device=x.device)
        b, i, j = pair.nonzero(as_tuple=True)
        row, col = b * N + i, b * N + j
        count = pair.sum(2).reshape(B * N, 1).clamp(min=1).to(x.dtype)
        if self.cfg.normalization:
            count = torch.full_like(count, self.cfg.normalization)
        y = pos.reshape(B * N, COORDS)
        d2_0 = ((y[row] - y[col]) ** 2).sum(-1, keepdim=True)
        for layer in self.layers:
            h, y = layer(h, y, d2_0, row, col, count)
        eps_x = center(y.view(B, N, COORDS) - pos, mask)
        return torch.cat([eps_x, self.out(h).view(B, N, -1) * m], -1)

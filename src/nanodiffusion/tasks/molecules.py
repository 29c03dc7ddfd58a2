"""Molecules: equivariant diffusion of atoms (Hoogeboom et al. 2022, "Equivariant Diffusion for
Molecule Generation in 3D"), on the engine's one denoiser contract.

A molecule is a point set [N, 3 + K] with a mask (core.pointsets): the task binds each batch's mask
to the denoiser (the EGNN sees the real atoms only, their coordinates centred) and trains on noise
projected to the data's subspace (zero centre of mass, nothing on padded rows). Sampling draws each
molecule's number of atoms M from the training set's histogram, p(M) (or, for a property bin c,
p(M | c)), the paper's Sec. 3.4, unless the draw names the sizes (``atoms``). Every sampler,
guidance and atom inpainting run unchanged.
"""

from __future__ import annotations

import torch

from nanodiffusion.core.losses import LossConfig
from nanodiffusion.core.pointsets import PointMask, mask_of, on_points, project
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config, DataConfig, DiffusionConfig, OptimConfig, RunConfig
from nanodiffusion.nets.egnn import EGNNConfig
from nanodiffusion.tasks.base import Sampling


def atom_histogram(cfg, label: int | None = None) -> torch.Tensor:
    """Counts of training molecules with n = 0, 1, ... atoms (of property bin `label`)."""
    counts = torch.tensor(cfg.data.atom_counts, dtype=torch.float64)
    if label is not None and cfg.data.class_atom_counts:
        per = torch.tensor(cfg.data.class_atom_counts, dtype=torch.float64).view(-1, len(counts))
        counts = per[label]
    if counts.sum() <= 0:
        if label is not None:
            raise NanodiffError(f"property bin {label} has no training molecules: choose another bin")
        raise NanodiffError("this run records no molecule sizes (data.atom_counts); train it again")
    return counts


def draw_sizes(cfg, n: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """n numbers of atoms drawn from the training histogram (per label when given), seeded."""
    g = torch.Generator().manual_seed(seed + 7_919)  # not the samplers' stream
    if labels is None:
        return torch.multinomial(atom_histogram(cfg), n, replacement=True, generator=g)
    out = torch.empty(n, dtype=torch.long)
    for i, c in enumerate(labels.tolist()):
        k = None if c >= cfg.model.num_classes else c
        out[i] = torch.multinomial(atom_histogram(cfg, k), 1, generator=g)[0]
    return out


def size_mask(sizes: torch.Tensor, max_atoms: int) -> torch.Tensor:
    """[n, max_atoms] masks of the first sizes[i] rows."""
    sizes = torch.as_tensor(sizes, dtype=torch.long).reshape(-1)
    bad = [int(k) for k in sizes if not 1 <= k <= max_atoms]
    if bad:
        raise NanodiffError(
            f"a molecule of {bad[0]} atoms: this model's molecules have 1 to at most {max_atoms}"
        )
    return (torch.arange(max_atoms)[None] < sizes[:, None]).float()


class Molecules:
    """Atoms from noise; see the module's docstring. Draw keywords: ``atoms``, the number of atoms
    of each molecule ([n] or one int), or a mask [n, N]; ``fixed``, the rows [1 or n, N] an edit
    holds where they are (their frame is the estimate's: core.pointsets)."""

    name = "molecules"
    inputs: tuple[str, ...] = ("atoms", "fixed")

    def prepare(self, cfg, data) -> None:
        if data.modality != "molecule":
            raise NanodiffError(f"data.task = 'molecules' trains on molecules, and {data.name} holds images")
        cfg.model.cond_channels = 0

    def batch(self, cfg, denoiser, x0, eps, generator, draws, rows):
        mask = mask_of(x0)
        return on_points(denoiser, mask), x0, project(eps, mask)

    def grid(self, cfg, images: torch.Tensor) -> dict:
        return {}

    def sampling(self, cfg, n: int, seed: int, atoms=None, fixed=None) -> Sampling:
        N = cfg.model.max_atoms
        if atoms is None:
            atoms = draw_sizes(cfg, n, seed)
        if isinstance(atoms, int):
            atoms = torch.full((n,), atoms)
        atoms = torch.as_tensor(atoms)
        mask = atoms.float() if atoms.ndim == 2 else size_mask(atoms, N)
        if mask.shape != (n, N) and mask.shape != (1, N):
            raise NanodiffError(
                f"atoms: give one size, {n} sizes or masks [{n}, {N}], got {list(atoms.shape)}"
            )
        wrap = PointMask(mask, None if fixed is None else torch.as_tensor(fixed, dtype=torch.float32))
        return Sampling(clamp=False, finish=lambda x: x * mask[..., None].to(x), wrappers=[wrap])


def _molecule_preset(name: str, width: int, depth: int, batch: int, steps: int, **data) -> Config:
    """Equivariant diffusion (Hoogeboom et al. 2022's network, noise and sampling) trained with
    Karras et al. 2022's preconditioning, lognormal noise levels and loss weighting (sigma_data 1:
    coordinates in Å): in a short CPU budget it draws more valid molecules than the paper's eps
    prediction with uniform t (docs/molecules.md), and a cosine schedule's last level (sigma 2e4)
    wrecks the first steps of sampling. Sampled by ancestral steps (DDPM), as the paper does."""
    model = EGNNConfig(width=width, depth=depth, num_classes=data.get("property_bins", 0))
    run = RunConfig(steps=steps, sample_every=0, checkpoint_every=250, sampler="ddpm", sample_steps=100)
    run.sample_n = 16
    return Config(
        data=DataConfig(name=name, task="molecules", **data),
        model=model,
        schedule=Schedule(kind="edm"),
        diffusion=DiffusionConfig(parameterization="edm", sigma_data=1.0),
        loss=LossConfig(sigma_sampling="lognormal", weighting="edm"),
        optim=OptimConfig(lr=1e-3, batch_size=batch, warmup_steps=100, grad_clip=1.0),
        run=run,
    )


def _qm9_like() -> Config:
    """QM9-like molecules (up to 9 heavy atoms of C, N, O, F and their hydrogens: up to 29
    atoms), an EGNN of width 96 and 6 layers; planned for ~30 minutes on one CPU thread
    (bench/molecules.py). Conditioned on the QED tercile, dropped 10% of the time: the one model
    draws unconditionally (the "no class" input) and towards low, middle or high QED."""
    return _molecule_preset(
        "qm9-like", 96, 6, 64, 3000, class_conditional=True, property="qed", property_bins=3
    )


def _drug_like() -> Config:
    """Drug-like MOSES molecules as heavy atoms only (9-26 atoms of C, N, O, F, S, Cl, Br; the
    hydrogens follow from valences), an EGNN of width 96 and 6 layers."""
    return _molecule_preset("drug-like", 96, 6, 32, 3000, hydrogens=False)


Molecules.presets = {"qm9-like": _qm9_like, "drug-like": _drug_like}

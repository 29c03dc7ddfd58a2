"""Molecules from a run: point sets drawn by the engine, read back as atoms, written as files.

``draw_molecules`` draws n molecules of an EGNN run (tasks.molecules): each one's number of atoms
from the training histogram (or given), optionally towards a property bin by classifier-free
guidance, optionally around a fixed scaffold. The scaffold is inpainting over atoms
(core.editing's "replace" on the rows of the scaffold's atoms): those atoms keep their types and
coordinates exactly, in the scaffold's own frame, and the rest is generated around them.
``molecule_files`` writes an SDF of all, one XYZ per molecule and a grid of 2-D depictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.pointsets import com
from nanodiffusion.data.molecules import TYPE_SCALE, from_tensor
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import draw
from nanodiffusion.io.config import Config
from nanodiffusion.tasks.molecules import draw_sizes, size_mask

Molecule = tuple[list[str], np.ndarray]  # (elements, positions [n, 3] in Å)


def draws_molecules(cfg: Config) -> bool:
    return cfg.data.modality == "molecule"


def atom_types(cfg: Config) -> list[str]:
    if not draws_molecules(cfg):
        raise NanodiffError("this run does not draw molecules (train one with the qm9-like preset)")
    return cfg.data.atom_types.split("|")


def property_bins(cfg: Config) -> list[str]:
    """A property-conditional run's bins ("qed 0.31-0.47", ...), or []."""
    return [c for c in cfg.data.class_names.split("|") if c] if cfg.model.num_classes else []


def scaffold_tensor(cfg: Config, scaffold: Molecule) -> tuple[torch.Tensor, int]:
    """A scaffold (elements, positions) as the first rows of a run's sample [1, N, 3 + K], and its
    number of atoms; one line for an element the run was not trained on or too many atoms."""
    elements = atom_types(cfg)
    els, pos = scaffold
    N = cfg.model.max_atoms
    if not els:
        raise NanodiffError("the scaffold has no atoms")
    if len(els) >= N:
        raise NanodiffError(
            f"the scaffold has {len(els)} atoms; this run's molecules have at most {N}, a scaffold {N - 1}"
        )
    unknown = sorted(set(els) - set(elements))
    if unknown:
        raise NanodiffError(
            f"the scaffold has {unknown[0]}, an element this run was not trained on ({', '.join(elements)})"
        )
    x = torch.zeros(1, N, 3 + len(elements))
    x[0, : len(els), :3] = torch.as_tensor(np.asarray(pos, np.float64), dtype=torch.float32)
    for i, e in enumerate(els):
        x[0, i, 3 + elements.index(e)] = TYPE_SCALE
    return x, len(els)


@torch.no_grad()
def draw_molecules(
    cfg: Config,
    denoiser: Denoiser,
    n: int,
    *,
    label: int | None = None,
    guidance: float | None = None,
    atoms: int | list[int] | None = None,
    scaffold: Molecule | None = None,
    sampler: str = "ddim",
    steps: int = 100,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> list[Molecule]:
    """n molecules of a molecule run; see the module's docstring. ``label`` is a property bin
    (guidance default 2 with one, else 1); ``atoms`` the number of atoms of every molecule (one int
    or n); ``scaffold`` atoms to keep. Coordinates are centred unless a scaffold fixes the frame."""
    elements = atom_types(cfg)
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    k, N = cfg.model.num_classes, cfg.model.max_atoms
    cond = None
    if label is not None:
        if not k:
            raise NanodiffError("this run is not property-conditional (train it with data.property)")
        if not 0 <= label < k:
            raise NanodiffError(f"the property bin must be in 0..{k - 1}, got {label}")
        cond = torch.full((n,), label)
    elif k:
        cond = torch.full((n,), k)  # the reserved "no class" input
    guidance = (2.0 if label is not None else 1.0) if guidance is None else guidance
    if guidance != 1 and label is None:
        raise NanodiffError("guidance needs a property bin to guide towards")
    if atoms is None:
        sizes = draw_sizes(cfg, n, seed, cond if label is not None else None)
    else:
        sizes = torch.as_tensor([atoms] * n if isinstance(atoms, int) else list(atoms), dtype=torch.long)
        if len(sizes) != n:
            raise NanodiffError(f"give one number of atoms, or one per molecule ({n}), got {len(sizes)}")
    edit = {}
    if scaffold is not None:
        init, m = scaffold_tensor(cfg, scaffold)
        if atoms is not None and int(sizes.min()) <= m:
            raise NanodiffError(f"the molecules must have more atoms than the scaffold's {m}")
        sizes = sizes.clamp(min=m + 1)
        known = torch.zeros(1, N, 1)
        known[0, :m] = 1
        edit = dict(init_image=init, known=known, fixed=known[..., 0])
    mask = size_mask(sizes, N)
    x = draw(
        cfg,
        denoiser,
        n,
        cond=cond,
        sampler=sampler,
        steps=steps,
        seed=seed,
        guidance=guidance,
        atoms=sizes,
        progress=progress,
        **edit,
        **options,
    )
    if scaffold is None:
        x[..., :3] = (x[..., :3] - com(x, mask)) * mask[..., None]
    return from_tensor(x, elements, mask)


def molecule_files(out: str | Path, molecules: list[Molecule], legends: list[str] | None = None) -> dict:
    """molecules.sdf, xyz/molecule_NNNN.xyz and molecules.png (2-D depictions) in `out`."""
    from nanodiffusion.io.molecules import draw_grid, write_sdf, write_xyz

    out = Path(out)
    (out / "xyz").mkdir(parents=True, exist_ok=True)
    for old in (out / "xyz").glob("molecule_*.xyz"):  # an earlier draw's, so the folder holds one draw
        old.unlink()
    sdf = write_sdf(out / "molecules.sdf", molecules)
    for i, (els, pos) in enumerate(molecules):
        write_xyz(out / "xyz" / f"molecule_{i:04d}.xyz", els, pos, comment=f"nanodiffusion molecule {i}")
    grid = draw_grid(molecules[:100], out / "molecules.png", legends=legends)
    return {"sdf": Path(sdf), "xyz": out / "xyz", "grid": Path(grid)}

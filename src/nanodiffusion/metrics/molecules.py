"""The chemistry judges of generated 3-D molecules, as in EDM (Hoogeboom, Satorras, Vignac and
Welling, "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022).

A molecule is a pair (elements, positions): element symbols ["C", "O", "H", ...] and a float
array [n, 3] in ångström, hydrogens explicit. A network outputs atoms, not bonds; EDM's evaluation
reads the bonds from the distances: the pair (a, b) at distance d is bonded with the highest
order k whose typical length l_k(a, b) (BOND_LENGTHS) satisfies d < l_k + m_k, with margins
m = (10, 5, 3) pm for single, double and triple bonds, each order tried only when the lower one
holds. An atom is stable when the sum of its bond orders is one of its VALENCES; a molecule is
stable when all its atoms are. A molecule is valid when RDKit sanitizes it (RDKit adds implicit
hydrogens to under-bonded atoms, so validity only refuses over-bonded ones, as in EDM); its
SMILES is the canonical SMILES of the largest fragment, hydrogens removed, without stereo.

Aromatic rings: a benzene C-C bond (139-140 pm) lies at the single/double boundary (134 + 5 pm),
so ring atoms read as under-bonded and unstable; EDM reports 99.0 % atom and 95.2 % molecule
stability on QM9's own molecules for this reason.

The bond tables, the bonds from distances and the RDKit molecule (to_rdkit, smiles_of) are defined
in io.molecules, below this layer, because molecule files are written with them; they are imported
here under the same names. RDKit is an optional extra (pip install rdkit): it is imported inside
the functions that need it.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.molecules import (
    BOND_LENGTHS,
    MARGINS,
    bond_matrix,
    bond_order,
    canonical,
    check_molecule,
    largest_fragment,
    mol_smiles,
    require_rdkit,
    smiles_of,
    to_rdkit,
)

# the bonds from distances live in io.molecules (molecule files are written with them); the
# judges' public names include them
__all__ = [
    "BOND_LENGTHS",
    "MARGINS",
    "VALENCES",
    "atom_stability",
    "bond_matrix",
    "bond_order",
    "canonical",
    "format_molecule_table",
    "judge_molecules",
    "mol_smiles",
    "properties",
    "random_atoms",
    "rings_tv",
    "smiles_of",
    "to_rdkit",
]

# the allowed valences (sums of bond orders) of each element
VALENCES: dict[str, tuple[int, ...]] = {"H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "S": (2, 4, 6)}
VALENCES.update({"Cl": (1,), "Br": (1,), "I": (1,), "P": (3, 5)})


def _stable(elements: list[str], bonds: np.ndarray) -> np.ndarray:
    total = bonds.sum(axis=1)
    return np.array([int(t) in VALENCES.get(e, ()) for e, t in zip(elements, total, strict=True)], bool)


def atom_stability(elements, positions) -> tuple[int, int]:
    """(stable atoms, atoms): an atom is stable when the sum of its bond orders is one of its
    VALENCES. Atoms of a molecule with non-finite positions are all unstable."""
    elements, positions = check_molecule(elements, positions)
    if not np.isfinite(positions).all():
        return 0, len(elements)
    return int(_stable(elements, bond_matrix(elements, positions)).sum()), len(elements)


_SASCORER = None


def _sascorer():
    global _SASCORER
    if _SASCORER is None:
        from rdkit import RDConfig

        folder = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if folder not in sys.path:
            sys.path.append(folder)
        try:
            import sascorer
        except ImportError:
            raise NanodiffError(f"RDKit's SA score (sascorer.py) is missing from {folder}") from None
        _SASCORER = sascorer
    return _SASCORER


def properties(mol) -> dict:
    """Drug-likeness properties of an RDKit molecule (hydrogens removed first): "qed" (Bickerton et
    al. 2012), "sa" (synthetic accessibility, Ertl and Schuffenhauer 2009: 1 easy to 10 hard),
    "logp" (Crippen's), "rings" (SSSR ring count), "heavy_atoms"."""
    Chem = require_rdkit()
    from rdkit.Chem import QED, Crippen, rdMolDescriptors

    mol = Chem.RemoveHs(mol)
    return {
        "qed": float(QED.qed(mol)),
        "sa": float(_sascorer().calculateScore(mol)),
        "logp": float(Crippen.MolLogP(mol)),
        "rings": int(rdMolDescriptors.CalcNumRings(mol)),
        "heavy_atoms": int(mol.GetNumHeavyAtoms()),
    }


def rings_tv(a: list[int], b: list[int]) -> float:
    """Total-variation distance 1/2 sum_k |p_k - q_k| between the ring-count histograms of a, b."""
    if not a or not b:
        return math.nan
    top = max(max(a), max(b)) + 1
    p = np.bincount(a, minlength=top) / len(a)
    q = np.bincount(b, minlength=top) / len(b)
    return float(0.5 * np.abs(p - q).sum())


def judge_molecules(
    molecules,
    train_smiles: set[str] | None = None,
    reference: list[dict] | None = None,
    hydrogens: bool = True,
) -> dict:
    """EDM's judges over a list of molecules (elements, positions[, ...]): "atom_stability" (stable
    atoms / atoms), "molecule_stability" (fraction with all atoms stable), "validity" (fraction
    with a SMILES), "uniqueness" (distinct SMILES / valid), "validity_x_uniqueness", "novelty"
    (fraction of the distinct SMILES not in train_smiles, which should be canonical(); None
    without it), the means "qed", "sa", "logp", "rings", "heavy_atoms" over the valid molecules
    (the largest fragment), and against reference (properties() dicts of held-out molecules) the
    Wasserstein-1 distances "qed_w1", "sa_w1", "logp_w1" and the ring-count "rings_tv"; "n".
    Fractions of nothing are nan; a molecule of 0 atoms or with non-finite positions counts as
    unstable and invalid. molecules may be any iterable. ``hydrogens`` False: molecules of heavy
    atoms only, whose valences hydrogens would complete: stability is not defined (None)."""
    from scipy.stats import wasserstein_distance

    molecules = list(molecules)
    stable_atoms = atoms = stable_molecules = 0
    smiles, props = [], []
    for molecule in molecules:
        elements, positions = check_molecule(molecule[0], molecule[1])
        atoms += len(elements)
        if not elements or not np.isfinite(positions).all():
            continue
        bonds = bond_matrix(elements, positions)
        stable = int(_stable(elements, bonds).sum())
        stable_atoms += stable
        stable_molecules += stable == len(elements)
        mol = to_rdkit(elements, positions, bonds)
        if mol is None:
            continue
        fragment = largest_fragment(mol)
        smiles.append(mol_smiles(fragment))
        try:
            props.append(properties(fragment))
        except Exception:  # a descriptor RDKit cannot compute for an odd molecule: it has no properties
            pass
    n = len(molecules)

    def frac(a, b):
        return a / b if b else math.nan

    unique = set(smiles)
    out = {
        "n": n,
        "atom_stability": frac(stable_atoms, atoms) if hydrogens else None,
        "molecule_stability": frac(stable_molecules, n) if hydrogens else None,
        "validity": frac(len(smiles), n),
        "uniqueness": frac(len(unique), len(smiles)),
        "validity_x_uniqueness": frac(len(unique), n),
        "novelty": None if train_smiles is None else frac(len(unique - set(train_smiles)), len(unique)),
    }
    for key in ("qed", "sa", "logp", "rings", "heavy_atoms"):
        out[key] = float(np.mean([p[key] for p in props])) if props else None
    if reference is not None:
        for key in ("qed", "sa", "logp"):
            a, b = [p[key] for p in props], [p[key] for p in reference]
            out[f"{key}_w1"] = float(wasserstein_distance(a, b)) if a and b else math.nan
        out["rings_tv"] = rings_tv([p["rings"] for p in props], [p["rings"] for p in reference])
    return out


def random_atoms(n_atoms: list[int], type_weights: dict[str, float], rms_radius: float, n: int, seed: int):
    """The random baseline: n molecules, each with an atom count drawn uniformly from n_atoms,
    element types drawn by type_weights, positions uniform in a ball of radius R = rms_radius /
    sqrt(3/5) (so the RMS distance to the centre is rms_radius)."""
    weights = np.array(list(type_weights.values()), dtype=np.float64)
    if not n_atoms or min(n_atoms) < 0 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise NanodiffError(
            "random_atoms needs atom counts >= 0 and non-negative type weights with a positive sum"
        )
    if not rms_radius > 0 or n < 0:
        raise NanodiffError(f"random_atoms needs rms_radius > 0 and n >= 0, got {rms_radius} and {n}")
    rng = np.random.default_rng(seed)
    types = list(type_weights)
    radius = rms_radius / math.sqrt(3 / 5)
    out = []
    for _ in range(n):
        k = int(n_atoms[rng.integers(len(n_atoms))])
        elements = [types[i] for i in rng.choice(len(types), size=k, p=weights / weights.sum())]
        direction = rng.normal(size=(k, 3))
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
        positions = direction * radius * rng.random((k, 1)) ** (1 / 3)
        out.append((elements, positions))
    return out


_COLUMNS = [
    ("atom stable %", "atom_stability", True),
    ("mol stable %", "molecule_stability", True),
    ("valid %", "validity", True),
    ("unique %", "uniqueness", True),
    ("valid x unique %", "validity_x_uniqueness", True),
    ("novel %", "novelty", True),
    ("QED", "qed", False),
    ("SA", "sa", False),
    ("logP", "logp", False),
    ("QED W1", "qed_w1", False),
    ("SA W1", "sa_w1", False),
    ("logP W1", "logp_w1", False),
    ("rings TV", "rings_tv", False),
]


def format_molecule_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per named set (e.g. "model", "random atoms", "training set",
    "EDM (paper)"): judge_molecules dicts, or any dict with some of their keys ("-" for the rest)."""
    head = ["set"] + [c[0] for c in _COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name]
        for _, key, percent in _COLUMNS:
            value = row.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            else:
                cells.append(f"{100 * value:.1f}" if percent else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

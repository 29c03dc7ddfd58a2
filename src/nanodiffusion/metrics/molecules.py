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

RDKit is an optional extra (pip install rdkit): it is imported inside the functions that need it.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from nanodiffusion.errors import NanodiffError

# typical bond lengths in pm (standard tables of covalent bond lengths), "A-B length" per entry
_SINGLE = """
H-H 74 H-C 109 H-N 101 H-O 96 H-F 92 H-S 134 H-Cl 127 H-Br 141 H-I 161 H-P 144
C-C 154 C-N 147 C-O 143 C-F 135 C-S 182 C-Cl 177 C-Br 194 C-I 214 C-P 184
N-N 145 N-O 140 N-F 136 N-S 168 N-Cl 175 N-Br 214 N-P 177
O-O 148 O-F 142 O-S 151 O-P 163 O-Cl 164 O-I 194
F-F 142 F-S 158 F-P 156 F-Cl 166 F-Br 178 F-I 187
S-S 204 S-P 210 S-Cl 207 P-P 221 P-Cl 203 Cl-Cl 199 Cl-Br 214 Cl-I 232 Br-Br 228 Br-I 247 I-I 267
"""
_DOUBLE = "C-C 134 C-N 129 C-O 120 N-N 125 N-O 121 O-O 121 C-S 160 S-O 143 P-O 150"
_TRIPLE = "C-C 120 C-N 116 N-N 110 C-O 113"


def _table(text: str) -> dict[tuple[str, str], float]:
    words = text.split()
    return {
        tuple(pair.split("-")): float(length) for pair, length in zip(words[::2], words[1::2], strict=True)
    }


# BOND_LENGTHS[k][(a, b)]: the typical length of a bond of order k; each pair in one order only
BOND_LENGTHS: dict[int, dict[tuple[str, str], float]] = {
    1: _table(_SINGLE),
    2: _table(_DOUBLE),
    3: _table(_TRIPLE),
}
MARGINS = {1: 10, 2: 5, 3: 3}  # pm, EDM's margins m_1, m_2, m_3
VALENCES: dict[str, tuple[int, ...]] = {"H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "S": (2, 4, 6)}
VALENCES.update({"Cl": (1,), "Br": (1,), "I": (1,), "P": (3, 5)})
_ELEMENTS = sorted({e for table in BOND_LENGTHS.values() for pair in table for e in pair})
_INDEX = {e: i for i, e in enumerate(_ELEMENTS)}


def _threshold_table() -> np.ndarray:
    """float [3, T, T]: l_k(a, b) + m_k in pm for k = 1, 2, 3; -inf where the table has no bond."""
    out = np.full((3, len(_ELEMENTS), len(_ELEMENTS)), -np.inf)
    for k, table in BOND_LENGTHS.items():
        for (a, b), length in table.items():
            out[k - 1, _INDEX[a], _INDEX[b]] = out[k - 1, _INDEX[b], _INDEX[a]] = length + MARGINS[k]
    return out


_THRESHOLDS = _threshold_table()


def _rdkit():
    """RDKit's Chem module with its log silenced, or one line saying how to get it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise NanodiffError("the molecule judges need RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def bond_order(a: str, b: str, distance_pm: float) -> int:
    """EDM's bond order of atoms a and b at distance_pm: 0 (none), 1, 2 or 3."""
    order = 0
    for k in (1, 2, 3):
        length = BOND_LENGTHS[k].get((a, b), BOND_LENGTHS[k].get((b, a)))
        if length is None or not distance_pm < length + MARGINS[k]:
            break
        order = k
    return order


def _check(elements, positions) -> tuple[list[str], np.ndarray]:
    elements = [str(e) for e in elements]
    positions = np.asarray(positions, dtype=np.float64)
    if positions.size == 0 and not elements:
        return elements, positions.reshape(0, 3)
    if positions.ndim != 2 or positions.shape != (len(elements), 3):
        raise NanodiffError(
            f"a molecule needs positions [n, 3] for its {len(elements)} atoms, "
            f"got shape {list(positions.shape)}"
        )
    return elements, positions


def _bonds(elements: list[str], positions: np.ndarray) -> np.ndarray:
    n = len(elements)
    if n == 0:
        return np.zeros((0, 0), np.int64)
    d = 100.0 * np.linalg.norm(positions[:, None] - positions[None], axis=-1)  # pm; nan stays nan
    known = np.array([e in _INDEX for e in elements])
    idx = np.array([_INDEX.get(e, 0) for e in elements])
    t = _THRESHOLDS[:, idx[:, None], idx[None]]  # [3, n, n]
    with np.errstate(invalid="ignore"):
        single = d < t[0]
        double = single & (d < t[1])
        triple = double & (d < t[2])
    order = single.astype(np.int64) + double + triple
    order[~known] = 0
    order[:, ~known] = 0
    np.fill_diagonal(order, 0)
    return order


def bond_matrix(elements, positions) -> np.ndarray:
    """int [n, n]: the bond order of each pair of atoms by their distance (EDM's rule)."""
    return _bonds(*_check(elements, positions))


def _stable(elements: list[str], bonds: np.ndarray) -> np.ndarray:
    total = bonds.sum(axis=1)
    return np.array([int(t) in VALENCES.get(e, ()) for e, t in zip(elements, total, strict=True)], bool)


def atom_stability(elements, positions) -> tuple[int, int]:
    """(stable atoms, atoms): an atom is stable when the sum of its bond orders is one of its
    VALENCES. Atoms of a molecule with non-finite positions are all unstable."""
    elements, positions = _check(elements, positions)
    if not np.isfinite(positions).all():
        return 0, len(elements)
    return int(_stable(elements, _bonds(elements, positions)).sum()), len(elements)


def _build(elements: list[str], positions: np.ndarray, bonds: np.ndarray | None):
    """An RWMol of the atoms, the bonds (none when bonds is None) and a conformer of the positions."""
    Chem = _rdkit()
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    for e in elements:
        try:
            mol.AddAtom(Chem.Atom(e))
        except RuntimeError:
            raise NanodiffError(f"unknown element symbol {e!r} in a molecule") from None
    if bonds is not None:
        kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
        for i, j in zip(*np.nonzero(np.triu(bonds)), strict=True):
            mol.AddBond(int(i), int(j), kinds[int(bonds[i, j])])
    conf = Chem.Conformer(len(elements))
    for i, (x, y, z) in enumerate(np.nan_to_num(positions, nan=0.0, posinf=0.0, neginf=0.0)):
        conf.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    return mol


def _sanitized(elements: list[str], positions: np.ndarray, bonds: np.ndarray):
    Chem = _rdkit()
    if not elements or not np.isfinite(positions).all():
        return None
    mol = _build(elements, positions, bonds)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several types (valence, kekulization, ...)
        return None
    return mol


def to_rdkit(elements, positions):
    """An RDKit RWMol of the atoms, the distance-inferred bonds and a conformer of the positions,
    sanitized; None when sanitization fails (the molecule is invalid, as in EDM)."""
    elements, positions = _check(elements, positions)
    return _sanitized(elements, positions, _bonds(elements, positions))


def _largest_fragment(mol):
    """The fragment of a sanitized molecule with the most atoms (hydrogens counted), as in EDM."""
    frags = _rdkit().GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(frags, key=lambda f: f.GetNumAtoms())


def _smiles(fragment) -> str:
    Chem = _rdkit()
    return Chem.MolToSmiles(Chem.RemoveHs(fragment, sanitize=False), isomericSmiles=False)


def smiles_of(elements, positions) -> str | None:
    """The canonical SMILES (no hydrogens, no stereo) of the largest fragment of to_rdkit; None
    when the molecule is invalid."""
    mol = to_rdkit(elements, positions)
    return None if mol is None else _smiles(_largest_fragment(mol))


def canonical(smiles: str) -> str | None:
    """smiles in the form smiles_of gives (RDKit canonical, no stereo); None if it does not parse.
    Use it on training SMILES before judging novelty."""
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


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
    Chem = _rdkit()
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
    molecules, train_smiles: set[str] | None = None, reference: list[dict] | None = None
) -> dict:
    """EDM's judges over a list of molecules (elements, positions[, ...]): "atom_stability" (stable
    atoms / atoms), "molecule_stability" (fraction with all atoms stable), "validity" (fraction
    with a SMILES), "uniqueness" (distinct SMILES / valid), "validity_x_uniqueness", "novelty"
    (fraction of the distinct SMILES not in train_smiles, which should be canonical(); None
    without it), the means "qed", "sa", "logp", "rings", "heavy_atoms" over the valid molecules
    (the largest fragment), and against reference (properties() dicts of held-out molecules) the
    Wasserstein-1 distances "qed_w1", "sa_w1", "logp_w1" and the ring-count "rings_tv"; "n".
    Fractions of nothing are nan; a molecule of 0 atoms or with non-finite positions counts as
    unstable and invalid."""
    from scipy.stats import wasserstein_distance

    stable_atoms = atoms = stable_molecules = 0
    smiles, props = [], []
    for molecule in molecules:
        elements, positions = _check(molecule[0], molecule[1])
        atoms += len(elements)
        if not elements or not np.isfinite(positions).all():
            continue
        bonds = _bonds(elements, positions)
        stable = int(_stable(elements, bonds).sum())
        stable_atoms += stable
        stable_molecules += stable == len(elements)
        mol = _sanitized(elements, positions, bonds)
        if mol is None:
            continue
        fragment = _largest_fragment(mol)
        smiles.append(_smiles(fragment))
        props.append(properties(fragment))
    n = len(molecules)

    def frac(a, b):
        return a / b if b else math.nan

    unique = set(smiles)
    out = {
        "n": n,
        "atom_stability": frac(stable_atoms, atoms),
        "molecule_stability": frac(stable_molecules, n),
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

"""Molecule files (SDF, XYZ, SMILES lists) and pictures of molecules.

A molecule is (elements, positions): element symbols and a float array [n, 3] in ångström,
hydrogens explicit (see metrics.molecules). SDF files are read and written with RDKit (MDL
"CTfile formats", the V2000 molfile records separated by "$$$$"); XYZ is the plain format: an
atom-count line, a comment line, then one "El x y z" line per atom, frames one after another.
Every failure a user can cause is one NanodiffError line naming the file; files are written
completely or not at all. SMILES here are canonical without stereo, as canonical() gives.

The bonds of a molecule of atoms are read from their distances as in EDM's evaluation (Hoogeboom,
Satorras, Vignac and Welling, "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022):
atoms a, b at distance d are bonded with the highest order k whose typical length l_k(a, b)
(BOND_LENGTHS) satisfies d < l_k + m_k, margins m = (10, 5, 3) pm, each order tried only when the
lower one holds. They are here, not in metrics.molecules (the judges, which import them), because
write_sdf and draw_grid need them. to_rdkit builds the RDKit molecule of those bonds; it is valid
when RDKit sanitizes it (RDKit adds implicit hydrogens to under-bonded atoms, so only over-bonded
atoms make a molecule invalid, as in EDM).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanodiffusion.data.files import check_file, one_line, write_atomically
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


def require_rdkit():
    """RDKit's Chem module with its log silenced, or one line saying how to get it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise NanodiffError("reading, judging and drawing molecules needs RDKit: pip install rdkit") from None
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


def check_molecule(elements, positions) -> tuple[list[str], np.ndarray]:
    """(elements as a list of str, positions as float64 [n, 3]); one line when the shapes differ."""
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
    return _bonds(*check_molecule(elements, positions))


_NUMBERS: dict[str, int] = {}


def _atomic_numbers() -> dict[str, int]:
    """Element symbol -> atomic number, from RDKit's periodic table (read once)."""
    if not _NUMBERS:
        table = require_rdkit().GetPeriodicTable()
        _NUMBERS.update({table.GetElementSymbol(z): z for z in range(1, 119)})
    return _NUMBERS


def _build(elements: list[str], positions: np.ndarray, bonds: np.ndarray | None):
    """An RWMol of the atoms, the bonds (none when bonds is None) and a conformer of the positions."""
    Chem = require_rdkit()
    from rdkit.Geometry import Point3D

    numbers = _atomic_numbers()
    mol = Chem.RWMol()
    for e in elements:
        if e not in numbers:  # checked here: RDKit prints a C++ stack trace for an unknown symbol
            raise NanodiffError(f"unknown element symbol {e!r} in a molecule")
        mol.AddAtom(Chem.Atom(numbers[e]))
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


def to_rdkit(elements, positions, bonds: np.ndarray | None = None):
    """An RDKit RWMol of the atoms, the distance-inferred bonds (or bonds, a bond_matrix already
    computed) and a conformer of the positions, sanitized; None when sanitization fails (the
    molecule is invalid, as in EDM), and for no atoms or non-finite positions."""
    Chem = require_rdkit()
    elements, positions = check_molecule(elements, positions)
    if not elements or not np.isfinite(positions).all():
        return None
    mol = _build(elements, positions, _bonds(elements, positions) if bonds is None else bonds)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several types (valence, kekulization, ...)
        return None
    return mol


def largest_fragment(mol):
    """The fragment of a sanitized molecule with the most atoms (hydrogens counted), as in EDM."""
    frags = require_rdkit().GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(frags, key=lambda f: f.GetNumAtoms())


def mol_smiles(mol) -> str:
    """The canonical SMILES of an RDKit molecule as smiles_of writes it: no hydrogens, no stereo."""
    Chem = require_rdkit()
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False), isomericSmiles=False)


def smiles_of(elements, positions) -> str | None:
    """The canonical SMILES (no hydrogens, no stereo) of the largest fragment of to_rdkit; None
    when the molecule is invalid."""
    mol = to_rdkit(elements, positions)
    return None if mol is None else mol_smiles(largest_fragment(mol))


def canonical(smiles: str) -> str | None:
    """smiles in the form smiles_of gives (RDKit canonical, no stereo); None if it does not parse.
    Use it on training SMILES before judging novelty."""
    Chem = require_rdkit()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def _read_sdf(path: Path) -> list:
    Chem = require_rdkit()
    out = []
    try:
        supplier = Chem.SDMolSupplier(str(path), removeHs=False)
        for i, mol in enumerate(supplier, start=1):
            if mol is None:
                raise NanodiffError(f"cannot read {path}: record {i} does not parse as a molecule")
            if mol.GetNumConformers() == 0:
                raise NanodiffError(f"cannot read {path}: record {i} has no coordinates")
            conf = mol.GetConformer()
            positions = np.array(conf.GetPositions(), dtype=np.float64).reshape(-1, 3)
            if not conf.Is3D() or (len(positions) >= 3 and not positions[:, 2].any()):
                raise NanodiffError(f"cannot read {path}: record {i} has 2-D coordinates, not 3-D")
            elements = [a.GetSymbol() for a in mol.GetAtoms()]
            out.append((elements, positions, mol_smiles(largest_fragment(mol))))
    except OSError as e:
        raise NanodiffError(f"cannot read {path}: {one_line(e)}") from None
    return out


def _read_xyz(path: Path) -> list:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise NanodiffError(f"cannot read {path}: {one_line(e)}") from None
    out, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            count = int(lines[i].split()[0])
        except ValueError:
            raise NanodiffError(f"cannot read {path}: line {i + 1} should be an atom count") from None
        if count < 0 or i + 2 + count > len(lines):
            raise NanodiffError(f"cannot read {path}: the frame at line {i + 1} is cut short")
        elements, positions = [], []
        for j in range(i + 2, i + 2 + count):
            words = lines[j].replace("*^", "e").split()
            try:
                if len(words) < 4 or not words[0].isalpha():
                    raise ValueError
                positions.append([float(w) for w in words[1:4]])
            except ValueError:
                raise NanodiffError(f"cannot read {path}: line {j + 1} is not 'element x y z'") from None
            elements.append(words[0].capitalize())
        positions = np.array(positions, dtype=np.float64).reshape(-1, 3)
        out.append((elements, positions, smiles_of(elements, positions)))
        i += 2 + count
    return out


def read_molecules(path) -> list[tuple[list[str], np.ndarray, str | None]]:
    """The molecules of an .sdf or .xyz file as (elements, positions, smiles): for SDF the SMILES
    of the file's own bonds (largest fragment), for XYZ that of the distance-inferred bonds (None
    when invalid). Refused in one line: an SDF record that does not parse (RDKit sanitizes it) or
    whose coordinates are 2-D (the header says so, or all z are 0 in a molecule of 3 atoms or
    more), an XYZ line that is not "element x y z", a frame cut short, a file without molecules."""
    path = check_file(path, "molecule file")
    suffix = path.suffix.lower()
    if suffix not in (".sdf", ".xyz"):
        raise NanodiffError(f"cannot read {path}: molecules are read from .sdf or .xyz files")
    out = _read_sdf(path) if suffix == ".sdf" else _read_xyz(path)
    if not out:
        raise NanodiffError(f"cannot read {path}: it holds no molecules")
    return out


def read_smiles(path_or_list) -> list:
    """(canonical smiles, RDKit Mol) for each SMILES of a list of strings or of a .smi/.txt file
    (the first field of each non-empty line; a first line "SMILES" is a header)."""
    Chem = require_rdkit()
    if isinstance(path_or_list, (str, Path)):
        path = check_file(path_or_list, "SMILES file")
        if path.suffix.lower() not in (".smi", ".txt"):
            raise NanodiffError(f"cannot read {path}: SMILES are read from .smi or .txt files")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise NanodiffError(f"cannot read {path}: {one_line(e)}") from None
        where = f" of {path}"
    else:
        lines, where = [str(s) for s in path_or_list], ""
    out, first = [], True
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        if first and words[0].lower() == "smiles":
            first = False
            continue
        first = False
        mol = Chem.MolFromSmiles(words[0])
        if mol is None:
            raise NanodiffError(f"the SMILES {words[0]!r} on line {number}{where} does not parse")
        out.append((Chem.MolToSmiles(mol, isomericSmiles=False), mol))
    if not out:
        raise NanodiffError(f"no SMILES{where or ' in the list'}")
    return out


def write_xyz(path, elements, positions, comment: str = "") -> Path:
    """One molecule as an XYZ file (positions in ångström, 6 decimals)."""
    elements, positions = check_molecule(elements, positions)
    lines = [str(len(elements)), " ".join(str(comment).split())]
    lines += [f"{e:<2s} {x:.6f} {y:.6f} {z:.6f}" for e, (x, y, z) in zip(elements, positions, strict=True)]
    return write_atomically(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def write_sdf(path, molecules) -> Path:
    """Molecules (elements, positions[, ...]) as an SDF file: record i titled i, with the
    distance-inferred bonds and the properties valid = 1 and smiles where to_rdkit succeeds, else
    the atoms alone and valid = 0 (nothing generated is lost; non-finite coordinates become 0)."""
    Chem = require_rdkit()
    records = []
    for i, molecule in enumerate(molecules):
        elements, positions = check_molecule(molecule[0], molecule[1])
        mol = to_rdkit(elements, positions)
        valid = mol is not None
        if not valid:
            mol = _build(elements, positions, None)
            mol.UpdatePropertyCache(strict=False)
        mol.SetProp("_Name", str(i))
        mol.SetIntProp("valid", int(valid))
        if valid:
            mol.SetProp("smiles", smiles_of(elements, positions))
        records.append(mol)

    def write(tmp):
        writer = Chem.SDWriter(str(tmp))
        try:
            for mol in records:
                writer.write(mol)
        finally:
            writer.close()

    return write_atomically(path, write)


def draw_grid(molecules, path, per_row: int = 5, size: int = 200, legends=None) -> Path:
    """A PNG grid of 2-D depictions of the molecules (elements, positions[, ...]): each valid one's
    largest fragment without hydrogens, legend its SMILES (or legends[i]); an invalid one as an
    empty cell with the legend "invalid"."""
    Chem = require_rdkit()
    from rdkit.Chem import AllChem, Draw

    molecules = list(molecules)
    if not molecules:
        raise NanodiffError("draw_grid needs at least one molecule")
    if legends is not None and len(legends) != len(molecules):
        raise NanodiffError(f"draw_grid got {len(legends)} legends for {len(molecules)} molecules")
    if per_row < 1 or size < 16:
        raise NanodiffError(f"draw_grid needs per_row >= 1 and size >= 16, got {per_row} and {size}")
    mols, texts = [], []
    for i, molecule in enumerate(molecules):
        smiles = smiles_of(molecule[0], molecule[1])
        if smiles is None:
            mols.append(Chem.Mol())
            texts.append("invalid")
            continue
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:  # a SMILES RDKit writes but does not read back: drawn as invalid
            mols.append(Chem.Mol())
            texts.append("invalid")
            continue
        AllChem.Compute2DCoords(mol)
        mols.append(mol)
        texts.append(smiles if legends is None else str(legends[i]))
    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(size, size), legends=texts)
    return write_atomically(Path(path), lambda tmp: image.save(tmp, format="PNG"))

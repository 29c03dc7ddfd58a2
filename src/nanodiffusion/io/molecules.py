"""Molecule files (SDF, XYZ, SMILES lists) and pictures of molecules.

A molecule is (elements, positions): element symbols and a float array [n, 3] in ångström,
hydrogens explicit (see metrics.molecules). SDF files are read and written with RDKit (MDL
"CTfile formats", the V2000 molfile records separated by "$$$$"); XYZ is the plain format: an
atom-count line, a comment line, then one "El x y z" line per atom, frames one after another.
Every failure a user can cause is one NanodiffError line naming the file; files are written
completely or not at all. SMILES here are canonical without stereo, as metrics.molecules.canonical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanodiffusion.data.files import check_file, one_line, write_atomically
from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.molecules import (
    _build,
    _check,
    _largest_fragment,
    _rdkit,
    _smiles,
    smiles_of,
    to_rdkit,
)


def _read_sdf(path: Path) -> list:
    Chem = _rdkit()
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
            if not conf.Is3D() or not positions[:, 2].any():
                raise NanodiffError(f"cannot read {path}: record {i} has 2-D coordinates, not 3-D")
            elements = [a.GetSymbol() for a in mol.GetAtoms()]
            out.append((elements, positions, _smiles(_largest_fragment(mol))))
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
    when invalid)."""
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
    Chem = _rdkit()
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
    elements, positions = _check(elements, positions)
    lines = [str(len(elements)), " ".join(str(comment).split())]
    lines += [f"{e:<2s} {x:.6f} {y:.6f} {z:.6f}" for e, (x, y, z) in zip(elements, positions, strict=True)]
    return write_atomically(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def write_sdf(path, molecules) -> Path:
    """Molecules (elements, positions[, ...]) as an SDF file: record i titled i, with the
    distance-inferred bonds and the properties valid = 1 and smiles where to_rdkit succeeds, else
    the atoms alone and valid = 0 (nothing generated is lost; non-finite coordinates become 0)."""
    Chem = _rdkit()
    records = []
    for i, molecule in enumerate(molecules):
        elements, positions = _check(molecule[0], molecule[1])
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
    Chem = _rdkit()
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

"""Molecules as point sets: the QM9-like and drug-like sets, SMILES and SDF files, 3-D conformers.

Two built-in sets, their SMILES shipped in the package (``data/smiles/``) so that nothing
downloads, their 3-D structures made here once and cached:

* ``qm9-like``: small molecules of C, N, O and F with up to 9 heavy atoms and their hydrogens (QM9's
  elements and sizes; Ramakrishnan et al. 2014). QM9 itself does not install offline, so these are
  pieces of real molecules: connected sets of 3-9 heavy atoms cut out of MOSES molecules (Polykovskiy
  et al. 2020; PyPI ``molsets``), kekulized first and filled with hydrogens, plus RDKit's NCI
  molecules (``rdkit/Data/NCI/first_5K.smi``) that are small enough; neutral, one fragment.
  20,000 train and 2,000 test molecules, split by a hash of the SMILES.
* ``drug-like``: 20,000 MOSES training molecules and 2,000 of its test set (drawn with seed 0;
  C, N, O, F, S, Cl, Br; 9-26 heavy atoms).

A 3-D structure is RDKit's ETKDG v3 conformer (Wang et al. 2020; seed 0 for every molecule, so
the set does not depend on the order or the number of workers) relaxed by MMFF94. A molecule's
tensor is [N, 3 + K]: its atoms' coordinates in ångström, centred, then its type one-hot times
``TYPE_SCALE`` (EDM's scaling of h, Hoogeboom et al. 2022); padded rows are zero.
``build_shipped`` remakes the shipped SMILES from molsets (maintainers only).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodiffusion.data.files import cache_root, check_file, one_line, write_atomically
from nanodiffusion.errors import NanodiffError

SETS = ("qm9-like", "drug-like")
ELEMENTS = {  # each set's atom types, in this order in the one-hot
    "qm9-like": ("H", "C", "N", "O", "F"),
    "drug-like": ("H", "C", "N", "O", "F", "S", "Cl", "Br"),
}
ORDER = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")  # a user file's types: the judges' elements
TYPE_SCALE = 0.25
SHIPPED = Path(__file__).parent / "smiles"
CACHE_VERSION = 1
SPLIT_SIZES = {"train": 20000, "test": 2000}


def require_rdkit():
    """RDKit's Chem module with its log silenced, or one line saying how to get it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise NanodiffError("reading, judging and drawing molecules needs RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def rdkit():
    """RDKit's Chem and AllChem (require_rdkit's one line if it is missing)."""
    Chem = require_rdkit()
    from rdkit.Chem import AllChem

    return Chem, AllChem


def largest_fragment(mol):
    """The fragment of a sanitized molecule with the most atoms (hydrogens counted), as in EDM."""
    frags = require_rdkit().GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(frags, key=lambda f: f.GetNumAtoms())


def mol_smiles(mol) -> str:
    """The canonical SMILES of an RDKit molecule as smiles_of writes it: no hydrogens, no stereo."""
    Chem = require_rdkit()
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False), isomericSmiles=False)


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
            if not conf.Is3D():  # the header's flag: a planar molecule written as 3-D is 3-D
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
        out.append((elements, positions, None))  # io.molecules.read_molecules infers the bonds
        i += 2 + count
    return out


def read_molecule_file(path) -> list[tuple[list[str], np.ndarray, str | None]]:
    """The molecules of an .sdf or .xyz file as (elements, positions, smiles): for SDF the SMILES
    of the file's own bonds (largest fragment), for XYZ None (io.molecules.read_molecules reads
    bonds from distances). Refused in one line: an SDF record that does not parse (RDKit sanitizes it) or
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


# --- 3-D structures ----------------------------------------------------------------------------
def embed(smiles: str, seed: int = 0, hydrogens: bool = True) -> tuple[list[str], np.ndarray] | None:
    """(elements, positions [n, 3] in Å) of one ETKDG v3 conformer relaxed by MMFF94 (UFF where
    MMFF has no parameters), or None where RDKit cannot embed the molecule."""
    Chem, AllChem = rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        return None
    try:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
        else:
            AllChem.UFFOptimizeMolecule(mol, maxIters=500)
    except (ValueError, RuntimeError):
        pass  # the unrelaxed conformer is still a conformer
    if not hydrogens:
        mol = Chem.RemoveHs(mol)
    pos = mol.GetConformer().GetPositions().astype(np.float32)
    return [a.GetSymbol() for a in mol.GetAtoms()], pos


def _embed_one(args):
    return embed(*args)


def embed_all(
    smiles: Sequence[str], seed: int = 0, hydrogens: bool = True, workers: int | None = None, progress=False
) -> list[tuple[list[str], np.ndarray] | None]:
    """embed() of every SMILES, on a pool of processes (every molecule has its own seed, so the
    result does not depend on the number of workers)."""
    jobs = [(s, seed, hydrogens) for s in smiles]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = dict(total=len(jobs), disable=not progress, desc="3-D conformers", leave=False)
    if workers == 1 or len(jobs) < 64:
        return [embed(*j) for j in tqdm(jobs, **bar)]
    with get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:  # RDKit only
        return list(tqdm(pool.imap(_embed_one, jobs, chunksize=32), **bar))


# --- the shipped sets ------------------------------------------------------------------------------
def shipped_smiles(name: str, split: str) -> list[str]:
    path = SHIPPED / f"{name}-{split}.smi.gz"
    if not path.is_file():
        raise NanodiffError(f"the {name} SMILES are missing from the package ({path}); reinstall it")
    return gzip.decompress(path.read_bytes()).decode().split()


def _properties(smiles: Sequence[str]) -> dict[str, np.ndarray]:
    """QED, Crippen logP, heavy atoms and rings of each SMILES (the conditioning properties)."""
    Chem, _ = rdkit()
    from rdkit.Chem import QED, Crippen

    out = {"qed": [], "logp": [], "heavy_atoms": [], "rings": []}
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        out["qed"].append(QED.qed(m))
        out["logp"].append(Crippen.MolLogP(m))
        out["heavy_atoms"].append(m.GetNumHeavyAtoms())
        out["rings"].append(m.GetRingInfo().NumRings())
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


PROPERTIES = ("qed", "logp", "heavy_atoms")  # data.property's choices


class Molecules:
    """A set of molecules: ``elements`` (its atom types, the one-hot's order), per molecule its
    SMILES, atom types (indices into elements, -1 padding) and positions, and properties."""

    def __init__(self, name, elements, smiles, types, positions, properties):
        self.name, self.elements, self.smiles = name, tuple(elements), list(smiles)
        self.types, self.positions, self.properties = types, positions, properties

    def __len__(self) -> int:
        return len(self.smiles)

    @property
    def counts(self) -> np.ndarray:
        """Atoms per molecule."""
        return (self.types >= 0).sum(1)

    def molecules(self) -> list[tuple[list[str], np.ndarray]]:
        """(elements, positions) of each molecule, the judges' form."""
        out = []
        for t, p in zip(self.types, self.positions, strict=True):
            real = t >= 0
            out.append(([self.elements[i] for i in t[real]], p[real].astype(np.float64)))
        return out

    def tensor(self, max_atoms: int | None = None) -> torch.Tensor:
        """[M, N, 3 + K]: centred positions, then the one-hot type times TYPE_SCALE; zero padding."""
        return to_tensor(self.types, self.positions, len(self.elements), max_atoms)


def to_tensor(types: np.ndarray, positions: np.ndarray, k: int, max_atoms: int | None = None) -> torch.Tensor:
    n = types.shape[1] if max_atoms is None else max_atoms
    if types.shape[1] > n:
        raise NanodiffError(f"a molecule of {types.shape[1]} atoms is more than the model's maximum ({n})")
    from nanodiffusion.core.pointsets import center

    t = torch.as_tensor(types, dtype=torch.long)
    real = (t >= 0).float()
    pos = center(torch.as_tensor(positions, dtype=torch.float32), real)
    onehot = torch.nn.functional.one_hot(t.clamp(min=0), k).float() * real[..., None] * TYPE_SCALE
    x = torch.cat([pos, onehot], -1)
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))


def from_tensor(x: torch.Tensor, elements: Sequence[str], mask: torch.Tensor | None = None):
    """The molecules (elements, positions) of samples [M, N, 3 + K]: an atom's type is its largest
    feature; rows outside ``mask`` (default: the rows that are not all zero) are not atoms."""
    x = x.detach().float().cpu()
    if mask is None:
        mask = (x != 0).any(-1)
    out = []
    for xi, mi in zip(x, mask.bool(), strict=True):
        xi = xi[mi]
        kinds = xi[:, 3:].argmax(-1).tolist()
        out.append(([elements[k] for k in kinds], xi[:, :3].double().numpy()))
    return out


def pack(name, molecules, smiles, elements=None, hydrogens=True) -> Molecules:
    """A Molecules of (elements, positions) pairs (None: failed, dropped) and their SMILES."""
    keep = [(m, s) for m, s in zip(molecules, smiles, strict=True) if m is not None]
    if not keep:
        raise NanodiffError(f"{name}: no molecule could be given 3-D coordinates")
    for i, ((els, pos), _) in enumerate(keep, start=1):
        if not els:
            raise NanodiffError(f"{name}: molecule {i} has no atoms{'' if hydrogens else ' but hydrogens'}")
        if not np.isfinite(np.asarray(pos, np.float32)).all():
            raise NanodiffError(f"{name}: molecule {i} has a coordinate that is not a finite number")
    seen = {e for m, _ in keep for e in m[0]}
    if elements is None:
        unknown = seen - set(ORDER)
        if unknown:
            raise NanodiffError(f"{name}: element {sorted(unknown)[0]} is not one nanodiffusion models")
        elements = tuple(e for e in ORDER if e in seen)
    elif seen - set(elements):
        raise NanodiffError(
            f"{name}: element {sorted(seen - set(elements))[0]} is not among {list(elements)}"
        )
    index = {e: i for i, e in enumerate(elements)}
    n = max(len(m[0]) for m, _ in keep)
    types = np.full((len(keep), n), -1, np.int8)
    pos = np.zeros((len(keep), n, 3), np.float32)
    for i, ((els, p), _) in enumerate(keep):
        types[i, : len(els)] = [index[e] for e in els]
        pos[i, : len(els)] = p
    smiles = [s for _, s in keep]
    return Molecules(name, elements, smiles, types, pos, _properties(smiles))


def load_molecules(
    name: str,
    split: str = "train",
    hydrogens: bool = True,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Molecules:
    """A built-in set (SETS) or a user's file: ``.smi``/``.txt`` SMILES (3-D conformers made here) or
    ``.sdf``/``.xyz`` with 3-D coordinates. Built-in sets are embedded once and cached
    (``$NANODIFF_DATA/molecules``); ``limit`` takes the first molecules only (not cached)."""
    if name in SETS:
        if split not in SPLIT_SIZES:
            raise NanodiffError(f"{name} has the splits train and test, not {split!r}")
        smiles = shipped_smiles(name, split)
        if limit is not None:
            return pack(name, embed_all(smiles[:limit], hydrogens=hydrogens), smiles[:limit], ELEMENTS[name])
        tag = "" if hydrogens else "-heavy"
        path = cache_root(cache_dir) / "molecules" / f"{name}-{split}{tag}-v{CACHE_VERSION}.npz"
        if path.is_file():
            with np.load(path) as f:
                props = {k[5:]: f[k] for k in f.files if k.startswith("prop_")}
                return Molecules(
                    name, ELEMENTS[name], f["smiles"].tolist(), f["types"], f["positions"], props
                )
        mols = pack(name, embed_all(smiles, hydrogens=hydrogens, progress=progress), smiles, ELEMENTS[name])
        arrays = {"smiles": np.asarray(mols.smiles), "types": mols.types, "positions": mols.positions}
        arrays.update({f"prop_{k}": v for k, v in mols.properties.items()})
        write_atomically(path, lambda tmp: np.savez(tmp, **arrays))
        return mols
    return load_molecule_file(name, split, hydrogens, progress, limit)


def is_molecule_file(name: str) -> bool:
    """A .smi or .txt (SMILES), .sdf or .xyz file name."""
    return Path(name).suffix.lower() in (".smi", ".txt", ".sdf", ".xyz")


def load_molecule_file(
    path: str, split: str = "train", hydrogens: bool = True, progress: bool = True, limit: int | None = None
):
    """A user's molecules: SMILES (.smi or .txt) or 3-D (.sdf, .xyz); the first `limit` only."""
    if split == "test":
        raise NanodiffError(f"{path} has no test split: a file is one split")
    if Path(path).suffix.lower() in (".sdf", ".xyz"):
        records = read_molecule_file(path)[:limit]
        Chem, _ = rdkit()
        mols = []
        for els, pos, _ in records:
            if not hydrogens:
                keep = [i for i, e in enumerate(els) if e != "H"]
                els, pos = [els[i] for i in keep], pos[keep]
            mols.append((list(els), np.asarray(pos, np.float32)))
        smiles = [s or "" for _, _, s in records]
        # properties need a SMILES that parses: an XYZ record (no bonds) stands in as methane, and
        # data.property refuses such files (data.datasets.molecule_data)
        valid = [s if s and Chem.MolFromSmiles(s) is not None else "C" for s in smiles]
        out = pack(str(path), mols, valid, hydrogens=hydrogens)
        out.smiles = smiles
        return out
    smiles = [s for s, _ in read_smiles(path)][:limit]
    return pack(str(path), embed_all(smiles, hydrogens=hydrogens, progress=progress), smiles)


# --- making the shipped SMILES (maintainers: needs `pip install --no-deps molsets`) -------------
def _piece(Chem, mol, rng: random.Random, k: int) -> str | None:
    """A connected set of k atoms of a kekulized molecule grown from a random atom, filled with
    hydrogens: the SMILES of a neutral one-fragment molecule of C, N, O, F, or None."""
    n = mol.GetNumAtoms()
    chosen = {rng.randrange(n)}
    while len(chosen) < k:
        near = sorted({b.GetIdx() for a in chosen for b in mol.GetAtomWithIdx(a).GetNeighbors()} - chosen)
        if not near:
            break
        chosen.add(rng.choice(near))
    rw = Chem.RWMol(mol)
    for i in sorted(set(range(n)) - chosen, reverse=True):
        rw.RemoveAtom(i)
    for a in rw.GetAtoms():
        a.SetNoImplicit(False)
        a.SetNumExplicitHs(0)
    piece = rw.GetMol()
    try:
        Chem.SanitizeMol(piece)
    except Exception:  # RDKit raises several types for one bad valence
        return None
    return Chem.MolToSmiles(piece) if _qm9_like(piece) else None


def _qm9_like(m) -> bool:
    Chem, _ = rdkit()
    return (
        2 <= m.GetNumHeavyAtoms() <= 9
        and all(
            a.GetSymbol() in ("C", "N", "O", "F")
            and a.GetFormalCharge() == 0
            and a.GetNumRadicalElectrons() == 0
            for a in m.GetAtoms()
        )
        and len(Chem.GetMolFrags(m)) == 1
    )


def _test_split(smiles: str) -> bool:
    return int(hashlib.md5(smiles.encode()).hexdigest(), 16) % 11 == 0


def build_shipped(out: Path = SHIPPED, seed: int = 0) -> None:
    """Write data/smiles/*.smi.gz from MOSES (molsets) and RDKit's NCI set."""
    import importlib.util

    from rdkit import RDConfig

    Chem, _ = rdkit()
    spec = importlib.util.find_spec("moses")  # its files only: importing moses needs its old pins
    if spec is None:
        raise NanodiffError(
            "building the shipped SMILES needs MOSES: install the molsets package without its dependencies"
        )
    root = Path(spec.submodule_search_locations[0]) / "dataset" / "data"
    train = gzip.open(root / "train.csv.gz", "rt").read().split("\n")[1:]
    test = gzip.open(root / "test.csv.gz", "rt").read().split("\n")[1:]
    train, test = [s.split(",")[0] for s in train if s], [s.split(",")[0] for s in test if s]
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"drug-like-train": rng.sample(train, 20000), "drug-like-test": rng.sample(test, 2000)}
    small = set()
    for line in open(Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"):
        m = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
        if m is not None and _qm9_like(m):
            small.add(Chem.MolToSmiles(m))
    for s in rng.sample(train, 120000):
        m = Chem.MolFromSmiles(s)
        if m is None:
            continue
        Chem.Kekulize(m, clearAromaticFlags=True)
        for _ in range(3):
            piece = _piece(Chem, m, rng, rng.randint(3, 9))
            if piece:
                small.add(piece)
    small = sorted(small)
    rng.shuffle(small)
    sets["qm9-like-train"] = [s for s in small if not _test_split(s)][:20000]
    sets["qm9-like-test"] = [s for s in small if _test_split(s)][:2000]
    for name, smiles in sets.items():
        (out / f"{name}.smi.gz").write_bytes(gzip.compress(("\n".join(smiles) + "\n").encode(), mtime=0))
        print(name, len(smiles))


if __name__ == "__main__":
    build_shipped()

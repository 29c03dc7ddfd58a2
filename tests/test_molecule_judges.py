"""The molecule judges (metrics.molecules: EDM's bonds from distances, stability, validity,
uniqueness, novelty, drug-likeness) and molecule files and pictures (io.molecules)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from nanodiffusion.io.molecules import draw_grid, read_molecules, read_smiles, write_sdf, write_xyz
from nanodiffusion.metrics.molecules import (
    BOND_LENGTHS,
    MARGINS,
    atom_stability,
    bond_matrix,
    bond_order,
    canonical,
    format_molecule_table,
    judge_molecules,
    properties,
    random_atoms,
    rings_tv,
    smiles_of,
    to_rdkit,
)
from one_line import error_of

pytest.importorskip("rdkit")

# (SMILES, aromatic): small molecules with hydrogens, and a few drug-like ones with S and Cl
REAL = [
    ("CCO", False),  # ethanol
    ("CC(=O)O", False),  # acetic acid
    ("CC#N", False),  # acetonitrile
    ("CC(C)=O", False),  # acetone
    ("NC(N)=O", False),  # urea
    ("NCC(=O)O", False),  # glycine
    ("FC(F)F", False),  # trifluoromethane
    ("C", False),
    ("O", False),
    ("N", False),
    ("C=C", False),
    ("C#C", False),
    ("OCCO", False),
    ("C1CCCCC1", False),
    ("CCN(CC)CC", False),
    ("O=CC=O", False),
    ("CCOC(C)=O", False),
    ("CNC=O", False),
    ("CSC", False),  # dimethyl sulfide
    ("CS", False),  # methanethiol
    ("OCCCl", False),
    ("ClC(Cl)Cl", False),  # chloroform
    ("O=C(O)CCl", False),  # chloroacetic acid
    ("CS(C)(=O)=O", False),  # dimethyl sulfone
    ("CS(N)(=O)=O", False),  # methanesulfonamide
    ("CCSC(C)=O", False),  # S-ethyl thioacetate
    ("c1ccccc1", True),  # benzene
    ("c1ccncc1", True),  # pyridine
    ("c1ccsc1", True),  # thiophene
    ("Clc1ccccc1", True),  # chlorobenzene
    ("CC(=O)Nc1ccc(Cl)cc1", True),  # 4'-chloroacetanilide
]
QM9_WEIGHTS = {"H": 0.5, "C": 0.35, "N": 0.06, "O": 0.08, "F": 0.01}


def _embed(smiles: str):
    """A seeded ETKDG conformer, MMFF-optimized, with explicit hydrogens: (elements, positions)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    return [a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()


@pytest.fixture(scope="module")
def real():
    return {s: _embed(s) for s, _ in REAL}


def _methane() -> tuple[list[str], np.ndarray]:
    tetrahedron = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)
    return ["C", "H", "H", "H", "H"], np.vstack([np.zeros(3), 1.09 * tetrahedron])


def test_bond_order_on_table_distances():
    assert [bond_order("C", "C", d) for d in (154, 134, 120)] == [1, 2, 3]
    assert [bond_order("C", "N", d) for d in (147, 129, 116)] == [1, 2, 3]
    assert [bond_order("O", "C", d) for d in (143, 120)] == [1, 2]  # either order of the pair
    assert bond_order("C", "H", 109) == 1 and bond_order("H", "O", 96) == 1 and bond_order("N", "H", 101) == 1
    # margins: strictly below length + margin
    assert bond_order("C", "C", 154 + MARGINS[1] - 0.01) == 1 and bond_order("C", "C", 154 + MARGINS[1]) == 0
    assert bond_order("C", "C", 134 + MARGINS[2]) == 1 and bond_order("C", "C", 120 + MARGINS[3]) == 2
    assert bond_order("C", "Cl", 100) == 1  # no double C=Cl in the table: single however close
    assert [
        bond_order(*pair, d) for pair, d in ((("S", "O"), 143), (("P", "O"), 150), (("C", "S"), 160))
    ] == [2] * 3
    assert bond_order("H", "H", 200) == 0 and bond_order("Xe", "C", 150) == 0
    for k, table in BOND_LENGTHS.items():  # every entry reads as its own order
        for (a, b), length in table.items():
            assert bond_order(a, b, length) >= k


def test_bond_matrix_agrees_with_bond_order():
    for elements, positions in random_atoms([12], {**QM9_WEIGHTS, "S": 0.05, "Cl": 0.05}, 1.2, 20, seed=3):
        bonds = bond_matrix(elements, positions)
        assert (bonds == bonds.T).all() and (np.diag(bonds) == 0).all()
        for i in range(len(elements)):
            for j in range(len(elements)):
                if i != j:
                    d = 100 * np.linalg.norm(positions[i] - positions[j])
                    assert bonds[i, j] == bond_order(elements[i], elements[j], d)
    for k, table in BOND_LENGTHS.items():  # on the thresholds themselves
        for (a, b), length in table.items():
            for d in (length + MARGINS[k], length + MARGINS[k] - 1e-6):
                positions = np.array([[0.0, 0.0, 0.0], [d / 100, 0.0, 0.0]])
                assert bond_matrix([a, b], positions)[0, 1] == bond_order(a, b, 100 * positions[1, 0])
    assert "'Qq'" in error_of(to_rdkit, ["Qq"], np.zeros((1, 3)))


def test_methane_stability_and_bond_matrix():
    elements, positions = _methane()
    bonds = bond_matrix(elements, positions)
    assert bonds.tolist() == [[0, 1, 1, 1, 1]] + [[1, 0, 0, 0, 0]] * 4
    assert atom_stability(elements, positions) == (5, 5)
    moved = positions.copy()
    moved[4] = [3.0, 0.0, 0.0]  # 3 Å from the carbon: C has 3 bonds and the H none
    assert atom_stability(elements, moved) == (3, 5)
    assert smiles_of(elements, positions) == "C"
    assert smiles_of(elements, moved) == "C"  # EDM's validity: RDKit fills the carbon with an implicit H
    five = (["C"] + ["H"] * 5, np.vstack([np.zeros(3), 1.09 * np.vstack([np.eye(3), -np.eye(3)[:2]])]))
    assert atom_stability(*five) == (5, 6) and to_rdkit(*five) is None  # over-bonded carbon: invalid
    assert "positions [n, 3]" in error_of(atom_stability, ["C", "H"], np.zeros((3, 3)))


def test_real_molecules(real):
    """EDM's judges on MMFF conformers of real molecules: all valid; the non-aromatic ones fully
    stable with the SMILES of the input; aromatic C-C bonds (139-140 pm) read as single bonds."""
    from rdkit import Chem

    for smiles, aromatic in REAL:
        elements, positions = real[smiles]
        stable, atoms = atom_stability(elements, positions)
        assert smiles_of(elements, positions) is not None, smiles
        if not aromatic:
            assert smiles_of(elements, positions) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles)), smiles
            assert stable == atoms, smiles
    # benzene: every C-C at 139.5 pm is above 134 + 5 pm, a single bond; the carbons have valence 3
    assert atom_stability(*real["c1ccccc1"]) == (6, 12)
    assert smiles_of(*real["c1ccccc1"]) == "C1CCCCC1"
    assert atom_stability(*real["c1ccsc1"]) == (9, 9)  # thiophene's C=C bonds are short enough
    judged = judge_molecules(list(real.values()))
    assert judged["n"] == len(REAL) and judged["validity"] == 1.0
    # measured: 272 of 292 atoms stable (93.2 %), 27 of 31 molecules (all but 4 aromatic ones)
    assert judged["atom_stability"] == pytest.approx(272 / 292)
    assert judged["molecule_stability"] == pytest.approx(27 / 31)
    assert judged["uniqueness"] == pytest.approx(30 / 31)  # benzene reads as cyclohexane


DRUGS = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "sulfamethoxazole": "Cc1cc(NS(=O)(=O)c2ccc(N)cc2)no1",
    "chlorpromazine": "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc21",
    "diclofenac": "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl",
    "celecoxib": "Cc1ccc(cc1)-c1cc(nn1-c1ccc(cc1)S(N)(=O)=O)C(F)(F)F",
}


def test_drug_like_aromatic_rings():
    """EDM's rule on drugs with benzene rings: ring bonds (138-140 pm) read as single or double
    by a hair, so ring atoms are unstable and a few molecules over-bonded (invalid). Measured:
    77.1 % of atoms stable, 1 of 8 molecules (caffeine) stable, 7 of 8 valid (paracetamol has a
    ring carbon of valence 5); EDM reports 86.5 % atom stability on GEOM-Drugs' own conformers."""
    judged = judge_molecules([_embed(s) for s in DRUGS.values()])
    assert 0.65 < judged["atom_stability"] < 0.9
    assert judged["molecule_stability"] <= 0.25 and judged["validity"] >= 0.75
    assert atom_stability(*_embed(DRUGS["caffeine"])) == (24, 24)


def test_random_baseline_is_worse(real):
    molecules = random_atoms([18], QM9_WEIGHTS, 1.6, 100, seed=0)
    assert len(molecules) == 100 and all(len(e) == 18 and p.shape == (18, 3) for e, p in molecules)
    baseline, judged = judge_molecules(molecules), judge_molecules(list(real.values()))
    assert baseline["molecule_stability"] < 0.5 and baseline["atom_stability"] < 0.5
    assert baseline["validity"] < judged["validity"] - 0.5
    assert baseline["atom_stability"] < judged["atom_stability"]
    assert baseline["molecule_stability"] < judged["molecule_stability"]
    # measured (seed 0): 23 % of atoms stable, no molecule stable, none valid (too crowded)
    assert baseline["atom_stability"] == pytest.approx(0.232, abs=0.005)
    assert baseline["validity"] == 0.0 and baseline["uniqueness"] != baseline["uniqueness"]  # nan


def test_random_atoms_distribution():
    molecules = random_atoms([5, 9], {"C": 3.0, "O": 1.0}, 2.0, 400, seed=1)
    assert {len(e) for e, _ in molecules} == {5, 9}
    assert sum(len(e) == 5 for e, _ in molecules) == pytest.approx(200, abs=40)
    elements = [x for e, _ in molecules for x in e]
    assert elements.count("C") / len(elements) == pytest.approx(0.75, abs=0.03)
    radii = np.linalg.norm(np.vstack([p for _, p in molecules]), axis=1)
    assert np.sqrt(np.mean(radii**2)) == pytest.approx(2.0, rel=0.03)
    assert radii.max() <= 2.0 / math.sqrt(3 / 5) + 1e-9
    again = random_atoms([5, 9], {"C": 3.0, "O": 1.0}, 2.0, 400, seed=1)
    assert all(np.array_equal(p, q) and e == f for (e, p), (f, q) in zip(molecules, again, strict=True))
    assert "rms_radius" in error_of(random_atoms, [5], {"C": 1.0}, 0.0, 3, 0)
    assert "type weights" in error_of(random_atoms, [], {"C": 1.0}, 1.0, 3, 0)


def test_uniqueness_novelty_and_edge_cases(real):
    ethanol, acid = real["CCO"], real["CC(=O)O"]
    over = (["C"] + ["H"] * 5, np.vstack([np.zeros(3), 1.09 * np.vstack([np.eye(3), -np.eye(3)[:2]])]))
    empty = ([], np.zeros((0, 3)))
    molecules = [ethanol, ethanol, acid, ethanol, over, empty]
    judged = judge_molecules(molecules)
    assert judged["n"] == 6
    assert judged["validity"] == pytest.approx(4 / 6)
    assert judged["uniqueness"] == pytest.approx(2 / 4)
    assert judged["validity_x_uniqueness"] == pytest.approx(2 / 6)
    assert judged["molecule_stability"] == pytest.approx(4 / 6)
    assert judged["novelty"] is None
    assert judge_molecules(molecules, train_smiles={"CCO"})["novelty"] == pytest.approx(1 / 2)
    assert judge_molecules(molecules, train_smiles={"CCO", "CC(=O)O"})["novelty"] == 0.0
    assert judge_molecules(molecules, train_smiles=set())["novelty"] == 1.0
    assert canonical("OC(C)=O") == "CC(=O)O" and canonical("C[C@H](N)C(=O)O") == "CC(N)C(=O)O"
    assert canonical("C1CC") is None
    # nothing, one atom, non-finite positions: no crash; NaN is unstable and invalid
    nothing = judge_molecules([])
    assert nothing["n"] == 0 and math.isnan(nothing["validity"]) and nothing["qed"] is None
    nan = (["C", "H"], np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]))
    assert atom_stability(*nan) == (0, 2) and smiles_of(*nan) is None
    odd = judge_molecules([empty, (["C"], np.zeros((1, 3))), nan], reference=[properties_of("CCO")])
    assert odd["n"] == 3 and odd["atom_stability"] == 0.0 and odd["molecule_stability"] == 0.0
    assert odd["validity"] == pytest.approx(1 / 3)  # a lone carbon sanitizes (as methane)


def properties_of(smiles: str) -> dict:
    from rdkit import Chem

    return properties(Chem.MolFromSmiles(smiles))


def test_properties_and_distances(real):
    benzene = properties_of("c1ccccc1")
    assert benzene["rings"] == 1 and benzene["heavy_atoms"] == 6
    assert benzene["qed"] == pytest.approx(0.443, abs=0.01)  # Bickerton et al.'s QED of benzene
    assert benzene["logp"] == pytest.approx(1.6866, abs=1e-3) and 1.0 <= benzene["sa"] < 2.0
    assert properties_of("CC(=O)Nc1ccc(O)cc1")["sa"] < properties_of("C1C2CC3CC1CC(C2)C3")["sa"] + 3  # sane
    assert rings_tv([0, 0, 1, 2], [0, 1, 1, 1]) == pytest.approx(0.5)  # 1/2 (|.5-.25| + |.25-.75| + |.25-0|)
    assert rings_tv([1, 2], [2, 1]) == 0.0
    smiles = [s for s, _ in REAL]
    reference = [properties_of(s) for s in smiles]  # the same molecules
    same = judge_molecules([real[s] for s in smiles if not dict(REAL)[s]], reference=reference[:26])
    for key in ("qed_w1", "sa_w1", "logp_w1", "rings_tv"):
        assert same[key] == pytest.approx(0.0, abs=1e-9), key
    other = judge_molecules([real[s] for s in smiles[:10]], reference=reference[20:])
    for key in ("qed_w1", "sa_w1", "logp_w1", "rings_tv"):
        assert other[key] > 0, key
    assert other["rings"] == 0.0 and same["qed"] == pytest.approx(np.mean([r["qed"] for r in reference[:26]]))


def test_format_table(real):
    judged = judge_molecules(list(real.values()), train_smiles={"CCO"})
    paper = {"atom_stability": 0.987, "validity": 0.917}
    table = format_molecule_table({"model": judged, "EDM (paper)": paper})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| set | atom stable %")
    assert "| model | 93.2 | 87.1 | 100.0 | 96.8 | 96.8 | 96.7 |" in lines[2]
    assert lines[3].startswith("| EDM (paper) | 98.7 | - | 91.7 |")


def test_speed(real):
    molecules = (list(real.values()) * 4)[:100]
    judge_molecules(molecules[:2])  # loads the SA score's fragment table
    start = time.perf_counter()
    judge_molecules(molecules)
    assert time.perf_counter() - start < 2.0  # measured 0.15 s per 100 on one core


# --- files ---------------------------------------------------------------------------------------
def test_sdf_round_trip(tmp_path, real):
    from rdkit import Chem

    over = (["C"] + ["H"] * 5, np.vstack([np.zeros(3), 1.09 * np.vstack([np.eye(3), -np.eye(3)[:2]])]))
    molecules = [real["CCO"], real["CS(C)(=O)=O"], over, real["Clc1ccccc1"]]
    path = write_sdf(tmp_path / "out.sdf", molecules)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.sdf"]  # no temporary file left
    back = read_molecules(path)
    assert len(back) == 4
    for (elements, positions), (e, p, _) in zip(molecules, back, strict=True):
        assert e == elements
        np.testing.assert_allclose(p, positions, atol=1e-4)
    assert [b[2] for b in back[:2]] == ["CCO", "CS(C)(=O)=O"]
    records = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert [r.GetProp("_Name") for r in records] == ["0", "1", "2", "3"]
    assert [r.GetIntProp("valid") for r in records] == [1, 1, 0, 1]
    assert records[2].GetNumBonds() == 0 and not records[2].HasProp("smiles")  # the invalid one, atoms only
    assert records[0].GetProp("smiles") == "CCO"


def test_xyz_round_trip_and_frames(tmp_path, real):
    ethanol, urea = real["CCO"], real["NC(N)=O"]
    write_xyz(tmp_path / "a.xyz", *ethanol, comment="ethanol\nfrom a test")
    write_xyz(tmp_path / "b.xyz", *urea)
    [(elements, positions, smiles)] = read_molecules(tmp_path / "a.xyz")
    assert elements == ethanol[0] and smiles == "CCO"
    np.testing.assert_allclose(positions, ethanol[1], atol=1e-6)
    both = tmp_path / "both.xyz"
    both.write_text((tmp_path / "a.xyz").read_text() + (tmp_path / "b.xyz").read_text())
    assert [m[2] for m in read_molecules(both)] == ["CCO", "NC(N)=O"]
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nC 0 0 0\nH 0 zero 1\n")
    assert "line 4" in error_of(read_molecules, bad)
    cut = tmp_path / "cut.xyz"
    cut.write_text("3\n\nC 0 0 0\n")
    assert "cut short" in error_of(read_molecules, cut)


def test_refusals(tmp_path, real):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    flat = Chem.MolFromSmiles("CCO")
    AllChem.Compute2DCoords(flat)
    two_d = tmp_path / "flat.sdf"
    write_sdf(tmp_path / "ok.sdf", [real["CCO"]])
    two_d.write_text((tmp_path / "ok.sdf").read_text() + Chem.MolToMolBlock(flat) + "$$$$\n")
    message = error_of(read_molecules, two_d)
    assert "flat.sdf" in message and "record 2" in message and "2-D" in message
    text = (tmp_path / "ok.sdf").read_text()
    truncated = tmp_path / "truncated.sdf"
    truncated.write_text(text + text[: len(text) // 2])
    assert "record 2" in error_of(read_molecules, truncated)
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    assert "empty" in error_of(read_molecules, empty)
    assert "no such file" in error_of(read_molecules, tmp_path / "missing.xyz")
    other = tmp_path / "a.pdb"
    other.write_text("ATOM\n")
    assert ".sdf or .xyz" in error_of(read_molecules, other)
    blank = tmp_path / "blank.xyz"
    blank.write_text("\n\n")
    assert "no molecules" in error_of(read_molecules, blank)


def test_read_smiles(tmp_path):
    path = tmp_path / "train.smi"
    path.write_text("SMILES\nOCC ethanol\n\nc1ccccc1\nC1CC\n")
    message = error_of(read_smiles, path)
    assert "'C1CC'" in message and "line 5" in message and "train.smi" in message
    path.write_text("smiles\nOCC ethanol\n\nc1ccccc1\nC[C@H](N)C(=O)O\n")
    assert [s for s, _ in read_smiles(path)] == ["CCO", "c1ccccc1", "CC(N)C(=O)O"]
    assert read_smiles(["CCO"])[0][1].GetNumAtoms() == 3
    assert "line 2" in error_of(read_smiles, ["CCO", "X"])
    empty = tmp_path / "empty.smi"
    empty.write_text("")
    assert "empty" in error_of(read_smiles, empty)


def test_draw_grid(tmp_path, real):
    from PIL import Image

    over = (["C"] + ["H"] * 5, np.vstack([np.zeros(3), 1.09 * np.vstack([np.eye(3), -np.eye(3)[:2]])]))
    molecules = [real[s] for s, _ in REAL[:6]] + [over]
    path = draw_grid(molecules, tmp_path / "grid.png", per_row=3, size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (300, 300)  # 7 molecules: 3 rows of 3
    assert np.asarray(image.convert("L")).std() > 0  # something is drawn
    assert "legends" in error_of(draw_grid, molecules, tmp_path / "x.png", 3, 100, ["a"])
    assert "at least one" in error_of(draw_grid, [], tmp_path / "x.png")


def test_without_rdkit(monkeypatch):
    """RDKit is an optional extra: the modules import without it (no top-level rdkit import), the
    stability judges work, and what needs it says how to install it."""
    import ast
    import sys

    import nanodiffusion.io.molecules as io_molecules
    import nanodiffusion.metrics.molecules as metrics_molecules

    for module in (io_molecules, metrics_molecules):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [
            n.module or "" for n in top if isinstance(n, ast.ImportFrom)
        ]
        assert not any(name.split(".")[0] == "rdkit" for name in names), module.__name__
    monkeypatch.setitem(sys.modules, "rdkit", None)
    assert atom_stability(*_methane()) == (5, 5)
    assert "pip install rdkit" in error_of(judge_molecules, [_methane()])
    assert "pip install rdkit" in error_of(read_smiles, ["CCO"])

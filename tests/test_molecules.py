"""Molecules: the EGNN's equivariance, point sets on the one denoiser contract (zero centre-of-mass
noise, every sampler, guidance, atom inpainting), the data, the CLI and its refusals, and a short
training judged by chemistry (data.molecules, nets.egnn, core.pointsets, tasks.molecules,
inference.molecules, training.molecule_eval, cli.molecules)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanodiffusion.cli import main
from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.pointsets import com, mask_of, on_points, project
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.nets.egnn import EGNN, EGNNConfig
from one_line import error_of
from torchrun_helper import assert_same_steps, needs_torchrun, run_one_and_two

pytest.importorskip("rdkit")

K = 5  # H, C, N, O, F


def _rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q * torch.sign(torch.diagonal(r))  # a proper orthogonal matrix (a reflection is fine too)


def _atoms(batch=3, n=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, n, dtype=dtype)
    mask[1:, 7:] = 0
    mask[2:, 4:] = 0
    types = torch.nn.functional.one_hot(torch.randint(0, K, (batch, n), generator=g), K).to(dtype) * 0.25
    x = torch.cat([torch.randn(batch, n, 3, generator=g, dtype=dtype) * 1.5, types], -1)
    return x * mask[..., None], mask


def test_the_egnn_is_equivariant_and_its_types_invariant():
    torch.manual_seed(0)
    net = EGNN(EGNNConfig(in_channels=3 + K, max_atoms=10, width=32, depth=3, num_classes=2)).double()
    x, mask = _atoms()
    Q, t = _rotation(1), torch.tensor([[[3.0, -2.0, 5.0]]], dtype=torch.float64)
    moved = torch.cat([x[..., :3] @ Q.T + t, x[..., 3:]], -1) * mask[..., None]
    c, labels = torch.tensor([3.0, 200.0, 900.0], dtype=torch.float64), torch.tensor([0, 1, 2])
    out, out_moved = net(x, c, labels, mask), net(moved, c, labels, mask)
    assert (out_moved[..., :3] - out[..., :3] @ Q.T).abs().max() < 1e-5  # displacements rotate
    assert (out_moved[..., 3:] - out[..., 3:]).abs().max() < 1e-5  # types do not change
    assert out[..., :3].abs().max() > 1e-4 and out[..., 3:].abs().max() > 1e-3  # not trivially zero
    # the denoiser D_V(x) = D(P x) + com(x) rotates and translates with its input
    den = on_points(Denoiser(net, Schedule(kind="cosine")).double(), mask)
    sigma = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
    d, d_moved = den(x, sigma, labels), den(moved, sigma, labels)
    expected = torch.cat([d[..., :3] @ Q.T + t, d[..., 3:]], -1) * mask[..., None]
    assert (d_moved - expected).abs().max() < 1e-5
    assert (d * (1 - mask[..., None])).abs().max() == 0  # padded rows stay zero


def test_permuting_atoms_permutes_the_output():
    torch.manual_seed(0)
    net = EGNN(EGNNConfig(in_channels=3 + K, max_atoms=10, width=16, depth=2)).double()
    x, mask = _atoms(batch=1)
    perm = torch.randperm(10)
    out = net(x, torch.tensor([50.0]), None, mask)
    assert torch.allclose(
        net(x[:, perm], torch.tensor([50.0]), None, mask[:, perm]), out[:, perm], atol=1e-10
    )


def test_training_noise_has_zero_centre_of_mass_and_no_padding():
    from nanodiffusion.tasks.molecules import Molecules

    x0, mask = _atoms(dtype=torch.float32)
    assert torch.equal(mask_of(x0), mask)
    eps = torch.randn_like(x0)
    den = Denoiser(
        EGNN(EGNNConfig(in_channels=3 + K, max_atoms=10, width=8, depth=1)), Schedule(kind="cosine")
    )
    _, _, eps_v = Molecules().batch(None, den, x0, eps, None, 3, slice(None))
    assert com(eps_v, mask).abs().max() < 1e-6  # each molecule's noise is centred
    assert (eps_v * (1 - mask[..., None])).abs().max() == 0
    assert torch.allclose(project(eps_v, mask), eps_v, atol=1e-6)  # P is a projection: P P = P


def _tiny_cfg(num_classes: int = 0):
    from nanodiffusion.io.config import apply_overrides, preset

    cfg = apply_overrides(preset("qm9-like"), ["model.width=16", "model.depth=2"])
    cfg.model.in_channels = cfg.model.out_channels = 3 + K
    cfg.model.max_atoms, cfg.model.num_classes = 12, num_classes
    cfg.data.atom_types, cfg.data.modality, cfg.data.task = "H|C|N|O|F", "molecule", "molecules"
    cfg.data.atom_counts = [0, 0, 0, 1, 2, 3, 2, 1, 0, 0, 0, 0, 0]
    cfg.data.class_atom_counts = [0] * 13 * num_classes
    cfg.data.class_conditional = num_classes > 0
    return cfg


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_draws_molecules(sampler):
    from nanodiffusion.inference.molecules import draw_molecules
    from nanodiffusion.inference.runs import build_denoiser

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    den = build_denoiser(cfg)
    mols = draw_molecules(cfg, den, 3, atoms=[4, 6, 11], sampler=sampler, steps=4, seed=0)
    assert [len(e) for e, _ in mols] == [4, 6, 11]
    for elements, pos in mols:
        assert set(elements) <= {"H", "C", "N", "O", "F"} and np.isfinite(pos).all()
        assert np.abs(pos.mean(0)).max() < 1e-6 * np.abs(pos).max() + 1e-5  # centred (untrained: far apart)


def test_guided_draws_and_sizes_from_the_histogram():
    from nanodiffusion.inference.molecules import draw_molecules
    from nanodiffusion.inference.runs import build_denoiser
    from nanodiffusion.tasks.molecules import draw_sizes

    torch.manual_seed(0)
    cfg = _tiny_cfg(num_classes=3)
    cfg.data.class_atom_counts = [0] * 13 * 2 + [0] * 9 + [5, 0, 0, 0]  # bin 2: always 9 atoms
    den = build_denoiser(cfg)
    mols = draw_molecules(cfg, den, 4, label=2, guidance=3.0, steps=3)
    assert [len(e) for e, _ in mols] == [9, 9, 9, 9]  # p(M | c), Hoogeboom et al. 2022 Sec. 3.4
    sizes = draw_sizes(cfg, 4000, seed=0)
    freq = torch.bincount(sizes, minlength=13).double() / 4000
    assert (freq - torch.tensor(cfg.data.atom_counts).double() / 9).abs().max() < 0.03
    assert "property bin must be in 0..2" in error_of(lambda: draw_molecules(cfg, den, 2, label=5))
    assert "needs a property bin" in error_of(lambda: draw_molecules(cfg, den, 2, guidance=3.0))


@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_a_scaffold_keeps_its_atoms_exactly(method):
    from nanodiffusion.inference.molecules import draw_molecules
    from nanodiffusion.inference.runs import build_denoiser

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    den = build_denoiser(cfg)
    ring = [(1.39 * math.cos(a), 1.39 * math.sin(a), 0.2) for a in np.linspace(0, 2 * math.pi, 7)[:6]]
    scaffold = (["C"] * 5 + ["N"], np.asarray(ring) + 4.0)  # anywhere: the frame is the scaffold's
    mols = draw_molecules(
        cfg,
        den,
        3,
        scaffold=scaffold,
        atoms=[9, 10, 11],
        steps=12,
        seed=1,
        inpaint=method,
        jump=2,
        resample=2,
    )
    for elements, pos in mols:
        assert elements[:6] == scaffold[0] and len(elements) > 6
        assert np.abs(pos[:6] - scaffold[1]).max() < 1e-5  # float32 storage of the given positions
        assert np.isfinite(pos).all()
        # the rest is drawn where the scaffold is (the estimate takes the held atoms' frame), not
        # where the initial noise's centre of mass put it (tens of ångström away)
        assert np.linalg.norm(pos[6:].mean(0) - scaffold[1].mean(0)) < 2.5  # 0.4-1.7 here; 2.6-7.4 without
    big = (["C"] * 12, np.zeros((12, 3)))
    assert "at most 12" in error_of(lambda: draw_molecules(cfg, den, 1, scaffold=big))
    assert "not trained on" in error_of(
        lambda: draw_molecules(cfg, den, 1, scaffold=(["Cl"], np.zeros((1, 3))))
    )


def test_molecule_tensors_and_files(tmp_path):
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.data.molecules import from_tensor, load_molecules

    mols = load_molecules("qm9-like", "train", limit=40, progress=False)
    x = mols.tensor()
    assert x.shape[0] == 40 and x.shape[2] == 3 + K
    mask = mask_of(x)
    assert torch.equal(mask.sum(1).long(), torch.as_tensor(mols.counts).long())
    assert com(x, mask).abs().max() < 1e-5
    back = from_tensor(x, mols.elements)
    assert back[0][0] == mols.molecules()[0][0]  # the same atoms in the same order
    # a user's SMILES file and an SDF file as data
    (tmp_path / "mine.smi").write_text("SMILES\nCCO\nc1ccccc1\nCC(=O)O\n")
    data = load_data(str(tmp_path / "mine.smi"))
    assert data.modality == "molecule" and data.molecules.elements == ("H", "C", "O")
    (tmp_path / "bad.smi").write_text("CCO\nC1CC\n")
    assert "line 2" in error_of(load_data, str(tmp_path / "bad.smi"))
    assert "test split" in error_of(load_data, str(tmp_path / "mine.smi"), "test")
    assert "do not apply" in error_of(lambda: load_data("qm9-like", image_size=8))
    (tmp_path / "list.txt").write_text("CCO\nCCN\nCCC\n")
    assert len(load_data(str(tmp_path / "list.txt"), limit=2).images) == 2  # a .txt of SMILES, limited
    (tmp_path / "nan.xyz").write_text("2\nbad\nC 0 0 nan\nO 1.2 0 0\n")
    assert "not a finite number" in error_of(load_data, str(tmp_path / "nan.xyz"))
    (tmp_path / "empty.xyz").write_text("1\nh\nH 0 0 0\n0\nnothing\n")
    assert "no atoms" in error_of(load_data, str(tmp_path / "empty.xyz"))
    (tmp_path / "w.xyz").write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    assert "SMILES" in error_of(lambda: load_data(str(tmp_path / "w.xyz"), property="qed"))


@pytest.mark.slow  # makes 300 conformers (~5 s): the fast suite is near its 2 minutes
def test_the_judges_on_the_data_and_on_random_atoms():
    from nanodiffusion.data.molecules import load_molecules
    from nanodiffusion.metrics.molecules import judge_molecules, random_atoms

    mols = load_molecules("qm9-like", "test", limit=150, progress=False)
    real = judge_molecules(mols.molecules())
    counts = [len(e) for e, _ in mols.molecules()]
    weights = {"H": 0.5, "C": 0.35, "N": 0.06, "O": 0.08, "F": 0.01}
    rand = judge_molecules(random_atoms(counts, weights, 1.6, 150, 0))
    assert real["validity"] >= 0.95 and real["atom_stability"] >= 0.98  # measured: 0.98, 0.997
    assert rand["validity"] < 0.3 and rand["atom_stability"] < 0.4
    assert rand["molecule_stability"] < real["molecule_stability"] - 0.5
    # novelty is judged against the SMILES the judge reads from the training conformers too, so the
    # training set is not novel to itself (aromatic rings read as single bonds would be)
    from nanodiffusion.io.config import preset
    from nanodiffusion.training.molecule_eval import judging, reference_data

    cfg = preset("qm9-like")
    cfg.data.limit = 150
    data = reference_data(cfg)
    assert judge_molecules(data["train"].molecules(), **judging(data))["novelty"] == 0.0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A molecule run of a few steps (a QED-conditional tiny EGNN on 100 molecules)."""
    run = tmp_path_factory.mktemp("mol") / "run"
    args = ["train", "--preset", "qm9-like", "--out", str(run), "--steps", "4", "--quiet"]
    overrides = ["data.limit=100", "model.width=16", "model.depth=2", "optim.batch_size=8",
                 "run.sample_n=4", "run.sample_steps=3", "run.checkpoint_every=0"]  # fmt: skip
    assert main(args + [f"--set={o}" for o in overrides]) == 0
    return run


def _fails(capsys, argv: list[str], words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err


@pytest.mark.slow  # trains a tiny run (~5 s), draws and judges through the command line
def test_generate_sample_and_eval_molecules_through_the_cli(small_run, tmp_path, capsys):
    from nanodiffusion.io.molecules import read_molecules

    out = tmp_path / "gen"
    assert main(["generate", str(small_run), "--n", "5", "--steps", "3", "--out", str(out)]) == 0
    assert len(read_molecules(out / "molecules.sdf")) == 5 and (out / "molecules.png").is_file()
    assert len(list((out / "xyz").glob("*.xyz"))) == 5
    assert (
        main(["generate", str(small_run), "high", "--n", "2", "--steps", "2", "--out", str(tmp_path / "hi")])
        == 0
    )
    assert main(["sample", str(small_run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    scaffold = tmp_path / "ring.xyz"
    scaffold.write_text("3\nwater\nO 0.5 0.5 0.5\nH 1.45 0.5 0.5\nH 0.26 1.42 0.5\n")
    sc = tmp_path / "sc"
    assert (
        main(
            [
                "generate",
                str(small_run),
                "--n",
                "2",
                "--steps",
                "2",
                "--scaffold",
                str(scaffold),
                "--out",
                str(sc),
            ]
        )
        == 0
    )
    for elements, pos, _ in read_molecules(sc / "molecules.sdf"):
        assert elements[:3] == ["O", "H", "H"] and np.abs(pos[0] - 0.5).max() < 1e-4
    js = tmp_path / "eval.json"
    assert main(["eval-molecules", str(small_run), "--n", "6", "--steps", "2", "--out", str(js)]) == 0
    import json

    result = json.loads(js.read_text())
    assert set(result["sets"]) >= {
        "model, ddpm 2 steps",
        "random atoms",
        "training set",
        "EDM on QM9 (paper)",
    }
    assert result["sets"]["training set"]["validity"] > 0.9
    assert "conditioning" in result and "atom stable" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_molecule_input_is_one_line(small_run, tmp_path, capsys):
    run = str(small_run)
    out = ["--out", str(tmp_path / "o")]
    _fails(capsys, ["generate", run, "--atoms", "500", *out], "at most")
    _fails(capsys, ["generate", run, "--scaffold", "C1CC", *out], "neither a SMILES that parses")
    _fails(capsys, ["generate", run, "--scaffold", "ClCCl", *out], "not trained on")
    flat = tmp_path / "flat.sdf"
    flat.write_text(
        "flat\n  RDKit          2D\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n"
        "    0.0000    0.0000    0.0000 C   0  0\n    1.5000    0.0000    0.0000 O   0  0\n"
        "  1  2  1  0\nM  END\n$$$$\n"
    )
    _fails(capsys, ["generate", run, "--scaffold", str(flat), *out], "3-D")
    _fails(capsys, ["generate", run, "purple", *out], "not a bin")
    _fails(capsys, ["sample", run, "--guidance", "2", *out], "--class")
    _fails(capsys, ["eval", run], "makes molecules")
    _fails(capsys, ["eval-audio", run], "makes molecules")
    _fails(capsys, ["eval-video", run], "molecules")
    _fails(capsys, ["inpaint", run, "--demo", "--out", str(tmp_path / "o")], "molecules")
    bad = tmp_path / "bad.smi"
    bad.write_text("CCO\nnot-a-molecule\n")
    _fails(
        capsys,
        ["train", "--preset", "qm9-like", "--set", f"data.name={bad}", "--out", str(tmp_path / "r")],
        "line 2",
    )
    _fails(capsys, ["train", "--preset", "qm9-like", "--set", "model.kind=unet", "--set", "data.limit=20",
                    "--out", str(tmp_path / "r2")], "EGNN")  # fmt: skip
    assert not (tmp_path / "o").exists()  # nothing was written by a refused command


SMILES = """CCO CC(=O)O CC#N c1ccncc1 CC(C)=O NC(N)=O NCC(=O)O FC(F)F OCCO CNC=O C1CCOC1 CC(C)CO
C=CC=O COC(C)=O CC(N)C(=O)O OC1CCCC1 N#CCC#N CCOC(N)=O O=C1CCCN1 CC1=CNC=C1""".split()


@needs_torchrun
@pytest.mark.slow
def test_two_process_molecule_training_takes_the_same_steps(tmp_path):
    """An EGNN on a SMILES file under torchrun with two processes takes the steps of one."""
    data = tmp_path / "small.smi"
    data.write_text("\n".join(SMILES) + "\n")
    run_one_and_two(
        ["train", "--preset", "qm9-like", "--data", str(data), "--steps", "3", "--batch-size", "4",
         "--set", "model.width=16", "--set", "model.depth=2", "--set", "data.class_conditional=false",
         "--set", "model.num_classes=0", "--set", "optim.warmup_steps=1", "--set", "run.sample_n=2",
         "--set", "run.sample_steps=2", "--set", "run.checkpoint_every=3", "--quiet"],
        tmp_path / "one",
        tmp_path / "two",
    )  # fmt: skip
    from nanodiffusion.inference.pipelines import build_denoiser
    from nanodiffusion.io.checkpoint import load_config

    cfg = load_config(tmp_path / "one")
    assert cfg.data.atom_types == "H|C|N|O|F" and cfg.model.max_atoms == 16  # cyclopentanol: 16 atoms
    torch.manual_seed(cfg.run.seed)
    init = dict(build_denoiser(cfg).net.state_dict())
    files = ["run/model.safetensors", "run/ema.safetensors"]
    assert_same_steps(tmp_path / "one", tmp_path / "two", files, init, atol=2e-4)


@pytest.mark.slow  # ~60 CPU-s of training, ~20 s of sampling and judging
def test_a_short_training_beats_random_atoms_on_stability(tmp_path):
    """400 steps of a small EGNN on 1,000 QM9-like molecules: the loss falls, and its molecules'
    atoms are stable more often than random atoms with the data's sizes, types and radius."""
    from nanodiffusion.inference.molecules import draw_molecules
    from nanodiffusion.inference.runs import build_denoiser
    from nanodiffusion.io.config import apply_overrides, preset
    from nanodiffusion.metrics.molecules import judge_molecules
    from nanodiffusion.training.diffusion import Trainer
    from nanodiffusion.training.molecule_eval import baselines

    cfg = apply_overrides(
        preset("qm9-like"),
        ["model.width=64", "model.depth=4", "optim.batch_size=32", "data.limit=1000", "run.steps=400",
         "optim.lr=2e-3", "optim.warmup_steps=20", "run.device=cpu"],
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    losses = [trainer.train_step() for _ in range(400)]
    assert np.mean(losses[-30:]) < 0.6 * np.mean(losses[:30])
    den = build_denoiser(trainer.cfg, trainer.ema.model)
    model = judge_molecules(draw_molecules(trainer.cfg, den, 100, sampler="ddpm", steps=100, seed=1))
    data = {"train": trainer.data.molecules, "train_smiles": set(), "reference": [], "hydrogens": True}
    random = baselines(data, 100)["random atoms"]
    assert model["atom_stability"] > random["atom_stability"] + 0.03, (model, random)

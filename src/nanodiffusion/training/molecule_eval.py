"""`nanodiff eval-molecules`: a molecule run's samples judged by chemistry (metrics.molecules).

The run draws n molecules at each sampler setting; EDM's judges (Hoogeboom et al. 2022): atom and
molecule stability (valences of the bonds read from distances), RDKit validity, uniqueness,
novelty against the training set, and the distances of the QED, SA, logP and ring-count
distributions to the held-out molecules. Beside them, the baselines: random atoms in a ball (the
data's atom counts, type frequencies and radius) and the training set itself (its own conformers,
the ceiling), and the published numbers of EDM on QM9. A property-conditional run also draws
towards its lowest and highest bins: the shift of the property's mean from the unconditional
draw, in standard deviations of the training data.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.molecules import draw_molecules, draws_molecules, property_bins
from nanodiffusion.inference.runs import load_run

EDM_QM9 = {  # Hoogeboom et al. 2022, Table 2 (QM9 with hydrogens)
    "atom_stability": 0.987,
    "molecule_stability": 0.820,
    "validity": 0.919,
    "validity_x_uniqueness": 0.907,
}
BATCH = 250  # molecules drawn at once


def reference_data(cfg, progress: bool = False) -> dict:
    """The run's data as the judges read them: the training molecules (their SMILES, and the SMILES
    the judge reads from their own conformers: novelty is judged against both, so that a molecule
    the judge misreads, such as an aromatic ring read as single bonds, is not counted novel) and
    the held-out ones' properties as the judge reads them (a user's file: itself)."""
    from nanodiffusion.data.molecules import SETS, load_molecules
    from nanodiffusion.io.molecules import canonical, largest_fragment, smiles_of, to_rdkit
    from nanodiffusion.metrics.molecules import properties

    name, h = cfg.data.name, cfg.data.hydrogens
    limit = cfg.data.limit or None
    train = load_molecules(name, "train", h, limit, progress=progress)
    test = load_molecules(name, "test", h, limit, progress=progress) if name in SETS else train
    reference = []
    for elements, positions in test.molecules():
        mol = to_rdkit(elements, positions)
        if mol is not None:
            try:
                reference.append(properties(largest_fragment(mol)))
            except Exception:  # a descriptor RDKit cannot compute for an odd molecule
                pass
    read = (smiles_of(e, p) for e, p in tqdm(train.molecules(), disable=not progress, desc="training SMILES"))
    smiles = {c for c in (canonical(s) for s in train.smiles if s) if c} | {s for s in read if s}
    return {"train": train, "test": test, "train_smiles": smiles, "reference": reference, "hydrogens": h}


def judging(data: dict) -> dict:
    """judge_molecules' keywords for a run's reference_data."""
    return {key: data[key] for key in ("train_smiles", "reference", "hydrogens")}


def baselines(data: dict, n: int, seed: int = 0) -> dict:
    """The judges on random atoms (the training data's atom counts, type frequencies and RMS radius)
    and on n training molecules (the ceiling)."""
    from nanodiffusion.metrics.molecules import judge_molecules, random_atoms

    train = data["train"]
    mols = train.molecules()
    counts = [len(e) for e, _ in mols]
    types = np.concatenate([np.asarray(e) for e, _ in mols])
    kinds, freq = np.unique(types, return_counts=True)
    rms = float(np.mean([np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) for _, p in mols]))
    weights = {str(k): float(f) / len(types) for k, f in zip(kinds, freq, strict=True)}
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(mols), size=min(n, len(mols)), replace=False)
    judge = judging(data)
    return {
        "random atoms": judge_molecules(random_atoms(counts, weights, rms, n, seed), **judge),
        "training set": judge_molecules([mols[i] for i in pick], **judge),
    }


def evaluate_molecules(
    run: str | Path,
    n: int = 500,
    steps: tuple[int, ...] = (100,),
    sampler: str = "ddpm",
    seed: int = 0,
    guidance: float = 2.0,
    with_baselines: bool = True,
    conditioning: bool = True,
    weights: str = "ema",
    device: str = "auto",
    progress: bool = True,
    data: dict | None = None,
) -> dict:
    """The judges of a molecule run (see the module's docstring) as one dict: "sets" (name -> the
    judges), "conditioning" (a property run's bins), "molecules" (the first setting's molecules).
    ``data``: the run's reference_data when the caller has it already."""
    cfg, denoiser = load_run(run, weights, device)
    if not draws_molecules(cfg):
        raise NanodiffError(f"{run} does not draw molecules: eval-molecules judges a molecule run")
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    from nanodiffusion.metrics.molecules import judge_molecules

    data = reference_data(cfg, progress) if data is None else data
    judge = judging(data)
    sets, first, timing = {}, None, {}
    for k in steps:
        t = time.process_time()
        mols = draw_batches(cfg, denoiser, n, sampler, k, seed, progress)
        timing[f"{sampler}-{k}"] = (time.process_time() - t) / n
        sets[f"model, {sampler} {k} steps"] = judge_molecules(mols, **judge)
        first = first if first is not None else mols
    if with_baselines:
        sets.update(baselines(data, n, seed))
        if cfg.data.name == "qm9-like":
            sets["EDM on QM9 (paper)"] = dict(EDM_QM9)
    result = {
        "run": str(run),
        "n": n,
        "sampler": sampler,
        "steps": list(steps),
        "sets": sets,
        "cpu_s_per_molecule": timing,
        "molecules": first,
    }
    bins = property_bins(cfg)
    if conditioning and bins:
        result["conditioning"] = _conditioning(
            cfg, denoiser, data, n, sampler, steps[0], seed, guidance, judge
        )
    return result


def draw_batches(cfg, denoiser, n, sampler, steps, seed, progress, **options):
    """draw_molecules in batches of BATCH (each seeded by its first index)."""
    out = []
    for start in range(0, n, BATCH):
        out += draw_molecules(
            cfg, denoiser, min(BATCH, n - start), sampler=sampler, steps=steps, seed=seed + start,
            progress=progress, **options,
        )  # fmt: skip
    return out


def _conditioning(cfg, denoiser, data, n, sampler, steps, seed, guidance, judge) -> dict:
    """The property's mean drawn unconditionally and towards the first and last bins (n/2
    molecules each, at least 2), and the shifts in standard deviations of the training data."""
    from nanodiffusion.metrics.molecules import judge_molecules

    prop = cfg.data.property
    values = data["train"].properties[prop]
    std = float(np.std(values))
    key = {"qed": "qed", "logp": "logp", "heavy_atoms": "heavy_atoms"}[prop]
    n = max(n // 2, 2)
    plain = judge_molecules(draw_batches(cfg, denoiser, n, sampler, steps, seed, False), **judge)
    bins = property_bins(cfg)
    rows = {"unconditional": {"mean": plain[key], "validity": plain["validity"]}}
    for label in (0, len(bins) - 1):
        drawn = draw_batches(cfg, denoiser, n, sampler, steps, seed, False, label=label, guidance=guidance)
        got = judge_molecules(drawn, **judge)
        shift = None if got[key] is None or plain[key] is None else (got[key] - plain[key]) / std
        rows[bins[label]] = {"mean": got[key], "validity": got["validity"], "shift_std": shift}
    return {"property": prop, "data_mean": float(np.mean(values)), "data_std": std,
            "guidance": guidance, "rows": rows}  # fmt: skip


def format_molecule_report(result: dict) -> str:
    """The judges' table, the sampling cost and a property run's shifts, as Markdown."""
    from nanodiffusion.metrics.molecules import format_molecule_table

    lines = [format_molecule_table(result["sets"])]
    cost = ", ".join(f"{k}: {v:.3f} CPU s" for k, v in result.get("cpu_s_per_molecule", {}).items())
    if cost:
        lines += ["", f"Sampling, per molecule: {cost}."]
    c = result.get("conditioning")
    if c:
        lines += [
            "",
            f"Conditioning on {c['property']} (data mean {c['data_mean']:.3f}, std {c['data_std']:.3f}; "
            f"guidance {c['guidance']:g}):",
            "",
            f"| drawn towards | mean {c['property']} | validity | shift from unconditional (std) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in c["rows"].items():
            mean = "-" if row["mean"] is None else f"{row['mean']:.3f}"
            shift = "-" if row.get("shift_std") is None else f"{row['shift_std']:+.2f}"
            lines.append(f"| {name} | {mean} | {100 * row['validity']:.1f}% | {shift} |")
    return "\n".join(lines)


def molecule_json(result: dict) -> dict:
    """The result without its molecules, NaN (a fraction of nothing) as null: strict JSON."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and v != v else v

    return clean({k: v for k, v in result.items() if k != "molecules"})


__all__ = [
    "baselines",
    "evaluate_molecules",
    "judging",
    "format_molecule_report",
    "molecule_json",
    "reference_data",
]

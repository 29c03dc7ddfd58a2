"""The judging half of bench/molecules.py: one trained run's molecules at 50, 100 and 500 network
evaluations (DDIM: one evaluation a step), the baselines, the property conditioning and the
report."""

from __future__ import annotations

import time
from pathlib import Path

from nanodiffusion.training.molecule_eval import (
    EDM_QM9,
    baselines,
    evaluate_molecules,
    format_molecule_report,
    molecule_json,
)

NFE = (50, 100, 500)


def judge_run(run: Path, n: int, quick: bool, picture: Path) -> dict:
    """The run's judges: each NFE (n molecules; n/2 at 500), the baselines, the conditioning."""
    from nanodiffusion.inference.runs import load_run
    from nanodiffusion.io.molecules import draw_grid
    from nanodiffusion.metrics.molecules import judge_molecules
    from nanodiffusion.training.molecule_eval import draw_batches, judging, reference_data

    nfe = (2, 3) if quick else NFE
    cfg, denoiser = load_run(run, "ema", "cpu")
    data = reference_data(cfg)  # once: reading 20,000 training conformers' SMILES takes ~30 s
    first = evaluate_molecules(
        run, n=n, steps=(nfe[0],), sampler="ddpm", with_baselines=False, progress=False, data=data
    )
    sets = dict(first["sets"])
    timing = dict(first["cpu_s_per_molecule"])
    judge = judging(data)
    shown = None
    for k in nfe[1:]:
        m = n if k <= 100 else max(n // 2, 2)
        t = time.process_time()
        mols = draw_batches(cfg, denoiser, m, "ddpm", k, 0, False)
        timing[f"ddpm-{k}"] = (time.process_time() - t) / m
        sets[f"model, ddpm {k} steps"] = judge_molecules(mols, **judge)
        if k == 100 or shown is None:
            shown = mols
    sets.update(baselines(data, n))
    if cfg.data.name == "qm9-like":
        sets["EDM on QM9 (paper)"] = dict(EDM_QM9)
    if not quick:
        picture.parent.mkdir(parents=True, exist_ok=True)
        draw_grid(shown[:20], picture, per_row=5)
    result = {**molecule_json(first), "sets": sets, "cpu_s_per_molecule": timing, "n": n}
    result["hydrogens"] = cfg.data.hydrogens
    return result


def format_report(s, trained: dict, judged: dict) -> str:
    lines = [
        f"Budget: {s.budget_cpu_s / 60:.0f} CPU-minutes a training, one torch thread each, the two "
        "trainings at once on the 2-core machine. `python bench/molecules.py`.",
        "",
        "| training | params | steps x batch | molecules/CPU s | loss, first 20 -> last 50 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in trained.items():
        if t:
            lines.append(
                f"| {name} | {t['params'] / 1e6:.2f}M | {t['steps']} x {t['batch']} | "
                f"{t['samples_per_cpu_s']:.1f} | {t['first_loss']:.3f} -> {t['final_loss']:.3f} |"
            )
    for name, r in judged.items():
        if r:
            what = "with hydrogens" if r.get("hydrogens", True) else "heavy atoms only"
            lines += [
                "",
                f"### {name} ({what}; n = {r['n']}, ancestral DDPM steps)",
                "",
                format_molecule_report(r),
            ]
    return "\n".join(lines)

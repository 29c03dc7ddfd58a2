"""Molecules after a laptop's CPU budget, judged by chemistry: EDM (Hoogeboom et al. 2022) on CPU.

Two trainings through nanodiffusion's Trainer, each a process of one torch thread that stops when
its process time reaches its budget (the cosine decay planned to end with it):

- qm9-like: the `qm9-like` preset (C, N, O, F molecules of up to 9 heavy atoms with their
  hydrogens, an EGNN of width 96 and 6 layers, conditioned on the QED tercile);
- drug-like: the `drug-like` preset (MOSES molecules as heavy atoms), the same budget.

Then each model draws N molecules (ancestral DDPM steps at 50, 100 and 500 network evaluations; N/2 at 500),
judged by metrics.molecules beside the random-atoms baseline, the training set (the ceiling) and
the published numbers of EDM on QM9; the QED-conditional model draws N/2 molecules towards each
QED tercile (guidance 1 and 2) and the shift of the mean QED is reported in standard deviations
of the data.

Everything is kept under the output folder (runs, results/*.json), so `--reuse` continues; the
section of docs/molecules.md between its markers is rewritten after every job.

    python bench/molecules.py              # 2 trainings (30 CPU-minutes each) at once, then the judges
    python bench/molecules.py --reuse      # continue
    python bench/molecules.py --quick      # a smoke test of every path (docs only with --out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _common import Settings, Store, budgeted_main, train_on_budget
from nanodiffusion.io.config import apply_overrides, preset

DOC = Path(__file__).resolve().parent.parent / "docs" / "molecules.md"
SECTION = "molecules"
IMAGES = DOC.parent / "images"


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    budget: float = 1.0  # share of the budget


VARIANTS = (Variant("qm9-like", "qm9-like"), Variant("drug-like", "drug-like"))


def train(v: Variant, s: Settings, results: Store) -> None:
    if results.get(f"train-{v.name}") is not None:
        return
    cfg = apply_overrides(preset(v.preset), ["run.device=cpu"])
    if s.quick:
        cfg.run.sample_steps, cfg.run.sample_n = 2, 4
        cfg.data.limit = 200
    results.put(f"train-{v.name}", train_on_budget(cfg, s.out / v.name, s.budget_cpu_s * v.budget, v.name))


def judge(v: Variant, s: Settings, results: Store) -> None:
    from molecule_judging import judge_run  # noqa: I001  (bench/molecule_judging.py)

    if results.get(f"judge-{v.name}") is not None:
        return
    results.put(
        f"judge-{v.name}", judge_run(s.out / v.name, s.n, s.quick, IMAGES / f"molecules-{v.name}.png")
    )


def jobs(s: Settings) -> list[str]:
    return [f"train:{v.name}" for v in VARIANTS] + [f"judge:{v.name}" for v in VARIANTS]


def run_job(job: str, s: Settings, results: Store) -> None:
    kind, name = job.split(":")
    v = next(v for v in VARIANTS if v.name == name)
    (train if kind == "train" else judge)(v, s, results)


def report(s: Settings, results: Store) -> str:
    from molecule_judging import format_report

    return format_report(s, {v.name: results.get(f"train-{v.name}") for v in VARIANTS},
                         {v.name: results.get(f"judge-{v.name}") for v in VARIANTS})  # fmt: skip


def main() -> None:
    help = {
        "description": __doc__.splitlines()[0],
        "n": "molecules per judged set (default 300)",
        "budget": "CPU-minutes per training (default 30)",
    }
    budgeted_main(__file__, DOC, SECTION, "molecules", 300, 40, help, jobs, run_job, report)


if __name__ == "__main__":
    main()

"""Helpers the benchmarks in bench/ share: the machine's matmul ceiling, FLOP counting,
a description of the machine, and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DOC_HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts in `bench/` (see `bench/README.md`); each script replaces only\n"
    "its own section, between its markers.\n"
)


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    """fp32 GFLOP/s of an n x n matmul with torch's default threads: median of `repeats` timings."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # the first call allocates and picks its kernel
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and then A V: 2 B heads L S (d_qk + d_v) FLOPs for [B, heads, L, d] inputs."""
    batch, heads, length, d_qk = query_shape
    return 2 * batch * heads * length * key_shape[-2] * (d_qk + value_shape[-1])


def forward_flops(forward: Callable[[], object]) -> int:
    """FLOPs of one call of `forward`, counting the CPU attention kernel that torch counts as 0."""
    flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={flash_cpu: _sdpa_flops}) as fc:
        forward()
    return fc.get_total_flops()


class BudgetClock:
    """The training time spent so far (the steps' own time) and the run length it predicts.

    The cosine decay of every recipe is planned to end when the budget does: its length is
    re-estimated after every step from the mean speed so far, so the plan follows the machine's
    load. Before the first few steps (all within every recipe's warm-up) `fallback` stands in.
    """

    def __init__(self, budget_s: float):
        self.budget_s, self.used = budget_s, 0.0

    def planned_steps(self, step: int, fallback: int = 10**6) -> int:
        if step < 10 or self.used <= 0:
            return fallback
        return max(step + 1, round(step + (self.budget_s - self.used) * step / self.used))

    @property
    def done(self) -> bool:
        return self.used >= self.budget_s


def machine() -> str:
    """CPU model, torch's thread count, torch version and today's date, in one line."""
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    cpu = found.group(1).strip() if found else platform.processor() or platform.machine()
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}"
    )


def write_section(name: str, body: str, path: Path = DOC) -> None:
    """Put `body` between `<!-- name:start -->` and `<!-- name:end -->` in `path`, leaving
    the rest of the file as it is (the section is appended if the markers are not there)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def write_page(doc: Path | None, fallback: Path, render: Callable[[Path], str]) -> None:
    """A benchmark's own page: render(figures folder) -> Markdown, printed, and written to `doc`
    with its figures in docs/images (doc None, as --quick: figures under `fallback`, no page)."""
    text = render((doc.parent if doc else fallback) / "images")
    print(text)
    if doc is not None:
        doc.write_text(text + "\n")
        print(f"wrote {doc}")


class Store:
    """One JSON file per result under out/results, so parallel jobs never write one file."""

    def __init__(self, out: Path):
        self.root = out / "results"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, value: dict) -> None:
        tmp = self.root / f".{key}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(self.root / f"{key}.json")


def train_on_budget(cfg, run_dir: Path, budget_cpu_s: float, name: str) -> dict:
    """Train `cfg` into run_dir (afresh) until this process's CPU time reaches the budget, the cosine
    decay planned to end with it; save, write the final grid and return the training's numbers."""
    from nanodiffusion.io.checkpoint import save_config
    from nanodiffusion.training.diffusion import Trainer

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted training starts again (its budget is one process's)
    trainer = Trainer(cfg, run_dir, progress=False)
    params = sum(p.numel() for p in trainer.denoiser.net.parameters())
    budget, wall = BudgetClock(budget_cpu_s), 0.0
    losses: list[float] = []
    trainer.model.train()
    while not budget.done:
        trainer.cfg.run.steps = budget.planned_steps(trainer.step)
        c0, w0 = time.process_time(), time.perf_counter()
        losses.append(trainer.train_step())
        budget.used += time.process_time() - c0
        wall += time.perf_counter() - w0
        if trainer.step % 100 == 0:
            tail = sum(losses[-50:]) / len(losses[-50:])
            print(
                f"  {name}: step {trainer.step}, {budget.used:.0f}/{budget_cpu_s:.0f} CPU s, loss {tail:.4f}",
                flush=True,
            )
    trainer.cfg.run.steps = trainer.step
    trainer.save()
    save_config(trainer.cfg, run_dir)
    trainer.sample_grid(run_dir / "samples.png")
    batch = trainer.cfg.optim.batch_size
    print(
        f"  trained {name}: {trainer.step} steps in {budget.used:.0f} CPU s ({wall:.0f} s wall)", flush=True
    )
    return {
        "params": params,
        "steps": trainer.step,
        "batch": batch,
        "cpu_s": budget.used,
        "wall_s": wall,
        "samples_per_cpu_s": trainer.step * batch / budget.used,
        "first_loss": sum(losses[:20]) / len(losses[:20]),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
    }


def run_jobs(
    script: str, a, out: Path, doc: Path | None, section: str, jobs: list[str], run_job, report
) -> None:
    """The job runner of the budgeted benchmarks (bench/video.py, bench/audio.py). `a` holds the
    parsed --job, --reuse, --only and --jobs. A worker (--job) runs one job with one torch thread,
    so that CPU time measures the work and not other processes' contention. Otherwise the jobs
    (--only's, else all) run as worker processes, --jobs at a time, the trainings ("train:...")
    before the rest; the docs' section is rewritten after each, and the report printed at the end.
    Without --reuse the output folder starts afresh."""
    if a.job:
        torch.set_num_threads(1)
        run_job(a.job)
        return
    if out.exists() and not a.reuse:
        print(f"starting afresh: removing {out} (pass --reuse to continue it instead)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    passed = [arg for arg in sys.argv[1:] if arg not in ("--reuse",)]
    passed = [
        arg for i, arg in enumerate(passed) if arg != "--only" and (i == 0 or passed[i - 1] != "--only")
    ]

    def work(job: str) -> None:
        subprocess.run([sys.executable, script, *passed, "--reuse", "--job", job], check=True)
        if doc is not None:
            write_section(section, report(), doc)

    todo = a.only.split(",") if a.only else jobs
    with ThreadPoolExecutor(a.jobs) as pool:  # the trainings first: every judge needs its model
        list(pool.map(work, [j for j in todo if j.startswith("train:")]))
        list(pool.map(work, [j for j in todo if not j.startswith("train:")]))
    print(report())


def budget_arguments(description: str, doc: Path, n_help: str, budget_help: str) -> argparse.Namespace:
    """The command line of the budgeted benchmarks (bench/video.py, bench/audio.py), parsed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--out", type=Path, help=f"Markdown file to update (default {doc}; --quick: only if given)"
    )
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--budget-min", type=float, help=budget_help)
    p.add_argument("--n", type=int, help=n_help)
    p.add_argument("--only", help="comma-separated jobs (train:NAME, judge:NAME) instead of all")
    p.add_argument("--jobs", type=int, default=2, help="jobs at once, one torch thread each (default 2)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # a worker: run one job and exit
    return p.parse_args()


@dataclass
class Settings:
    """A budgeted benchmark's settings (bench/video.py, bench/audio.py)."""

    out: Path
    budget_cpu_s: float
    n: int  # samples per judged set
    steps: int  # sampling steps
    quick: bool


def budgeted_main(
    script: str, doc: Path, section: str, name: str, n: int, n_quick: int, help: dict, jobs, run_job, report
) -> None:
    """The main of a budgeted benchmark: its command line (budget_arguments; `help` holds the
    description and the help of --n and --budget-min), its Settings (runs/bench-NAME, 30
    CPU-minutes and `n` samples a set; --quick: 0.2 minutes, `n_quick` samples, 2 steps) and its
    jobs through run_jobs: the benchmark's jobs(s) (names), run_job(job, s, results) and
    report(s, results)."""
    a = budget_arguments(help["description"], doc, help["n"], help["budget"])
    q = a.quick
    s = Settings(
        out=a.out_dir or Path(f"runs/bench-{name}" + ("-quick" if q else "")),
        budget_cpu_s=60 * (a.budget_min or (0.2 if q else 30.0)),
        n=a.n or (n_quick if q else n),
        steps=2 if q else 20,
        quick=q,
    )
    results = Store(s.out)
    doc = a.out or (None if q else doc)
    run_jobs(
        script,
        a,
        s.out,
        doc,
        section,
        jobs(s),
        lambda job: run_job(job, s, results),
        lambda: report(s, results),
    )

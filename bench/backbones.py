"""UNet or DiT, EDM or flow matching: four trainings of equal CPU budget on Fashion-MNIST.

The `fashion-mnist` preset (a UNet with EDM's preconditioning and noise levels), the same UNet
trained with rectified flow (SD3's logit-normal timesteps, Esser et al. 2024), a DiT (Peebles &
Xie 2023) of about the UNet's forward FLOPs with EDM, and that DiT with flow matching. Each
trains through nanodiffusion's Trainer, one step at a time, until its steps have used the same
CPU time (process time: the budget holds when other work shares the machine, which wall time
does not), then its EMA weights draw N images at 10, 20 and 50 NFE (DPM-Solver++(2M), each
schedule's default spacing) and at 100 NFE for the flow models (their converged reference),
all from the same starting noise, scored with FID and KID against the test split at one N,
next to the real-vs-real floor.

Everything is kept under the output folder (runs, 8-bit samples, results.json), so `--reuse`
continues an interrupted run; the docs section is rewritten after every scored set, with the
sets not yet measured marked so.

    python bench/backbones.py            # 4 x 10 CPU-minutes of training (2 threads: 20 CPU-minutes),
                                         # then sampling and Inception features at N = 1000
    python bench/backbones.py --reuse    # continue
    python bench/backbones.py --quick    # a smoke test of every path (writes docs only with --out)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from _common import DOC, machine, write_section
from nanodiffusion.inference.pipelines import load_run, sample_images
from nanodiffusion.io.checkpoint import save_config
from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.training.classifier import evaluate_images
from nanodiffusion.training.diffusion import Trainer
from quality import SHAPE, _count_params, _flops_cpu, _mean_tail, _to_uint8, load_samples

DATASET = "fashion-mnist"
SECTION = "backbones"
SAMPLER = "dpm++2m"
# rectified flow, Lipman et al. 2023 / Liu et al. 2023, with SD3's logit-normal(0, 1) timesteps:
# ln sigma = logit t, so they are the lognormal sigma sampling with p_mean 0, p_std 1
FLOW = [
    "schedule.kind=flow",
    "schedule.sigma_max=999",
    "diffusion.parameterization=flow",
    "loss.sigma_sampling=lognormal",
    "loss.p_mean=0",
    "loss.p_std=1",
    "loss.weighting=uniform",
]
# a DiT of about the preset UNet's forward FLOPs: 196 tokens of 2x2 patches, 3 heads of 32
DIT = [
    "model.kind=dit",
    "model.patch_size=2",
    "model.width=96",
    "model.depth=4",
    "model.head_dim=32",
    "optim.lr=0.001",
]


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: tuple[str, ...]

    @property
    def flow(self) -> bool:
        return "schedule.kind=flow" in self.overrides


VARIANTS = [
    Variant("unet-edm", "UNet, EDM (the `fashion-mnist` preset)", ()),
    Variant("unet-flow", "UNet, flow matching", tuple(FLOW)),
    Variant("dit-edm", "DiT, EDM", tuple(DIT)),
    Variant("dit-flow", "DiT, flow matching", tuple(DIT + FLOW)),
]


@dataclass
class Settings:
    out: Path
    budget_cpu_s: float  # process CPU seconds (all threads) per training
    n: int
    steps: tuple[int, ...]
    ref_steps: int
    features: str
    batch: int
    seed: int


class Store:
    """One small JSON file per result under OUT/results/{trainings,samples,metrics}/, written
    atomically, so that parallel jobs never write the same file."""

    def __init__(self, out: Path):
        self.root = out / "results"

    def _path(self, part: str, key: str) -> Path:
        return self.root / part / (key.replace("/", "--") + ".json")

    def get(self, part: str, key: str) -> dict | None:
        path = self._path(part, key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, part: str, key: str, value: dict) -> None:
        path = self._path(part, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(value, indent=1) + "\n")
        os.replace(tmp, path)

    def all(self, part: str) -> dict[str, dict]:
        folder = self.root / part
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return {f.stem.replace("--", "/"): json.loads(f.read_text()) for f in files}


def config(v: Variant, s: Settings):
    cfg = apply_overrides(preset(DATASET), list(v.overrides))
    cfg.run.device, cfg.run.seed = "cpu", s.seed
    return cfg


def train(v: Variant, s: Settings, results: Store) -> None:
    if results.get("trainings", v.name) is not None:
        return
    run_dir = s.out / v.name
    trainer = Trainer(config(v, s), run_dir, progress=False)
    net = trainer.denoiser.net
    info = {
        "params": _count_params(net),
        "flops": _flops_cpu(net, lambda m: m(torch.zeros(1, *SHAPE), torch.zeros(1))),
    }
    used = wall = 0.0
    losses: list[float] = []
    trainer.model.train()
    while used < s.budget_cpu_s:
        # the cosine decay is planned to end with the budget, re-estimated from the speed so far
        step = trainer.step
        trainer.cfg.run.steps = 10**6 if step < 10 else max(step + 1, round(step * s.budget_cpu_s / used))
        c0, w0 = time.process_time(), time.perf_counter()
        losses.append(trainer.train_step())
        used += time.process_time() - c0
        wall += time.perf_counter() - w0
        if trainer.step % 100 == 0:
            print(
                f"  {v.name}: step {trainer.step}, {used:.0f}/{s.budget_cpu_s:.0f} CPU s, "
                f"loss {_mean_tail(losses):.4f}",
                flush=True,
            )
    trainer.cfg.run.steps = trainer.step
    trainer.save()
    save_config(trainer.cfg, run_dir)
    batch = trainer.cfg.optim.batch_size
    results.put(
        "trainings",
        v.name,
        {
            **info,
            "steps": trainer.step,
            "cpu_s": used,
            "wall_s": wall,
            "images_per_cpu_s": trainer.step * batch / used,
            "final_loss": _mean_tail(losses),
            "lr": trainer.cfg.optim.lr,
            "threads": torch.get_num_threads(),
        },
    )
    print(f"  trained {v.name}: {trainer.step} steps in {used:.0f} CPU s ({wall:.0f} s wall)", flush=True)


def sample_and_score(v: Variant, steps: int, s: Settings, results: Store) -> None:
    key = f"{v.name}/{SAMPLER}-{steps}"
    path = s.out / "samples" / f"{v.name}-{SAMPLER}-{steps}.safetensors"
    if results.get("samples", key) is None or not path.is_file():
        _, denoiser = load_run(s.out / v.name, "ema", "cpu")
        stats: dict = {}
        start = time.perf_counter()
        images = sample_images(
            denoiser, s.n, SHAPE, SAMPLER, steps, seed=s.seed, batch_size=s.batch, stats=stats
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": _to_uint8(images).contiguous()}, str(path))
        results.put("samples", key, {"nfe": stats["nfe"], "seconds": time.perf_counter() - start})
        print(f"  sampled {key}: {stats['nfe']} NFE", flush=True)
    if results.get("metrics", key) is None:
        start = time.perf_counter()
        m = evaluate_images(
            load_samples(path),
            dataset=DATASET,
            features=s.features,
            device="cpu",
            progress=sys.stderr.isatty(),
        )
        m = {k: x for k, x in m.items() if isinstance(x, (int, float, str))}
        m["seconds"] = time.perf_counter() - start
        results.put("metrics", key, m)
        print(f"  scored {key}: FID {m['fid']:.2f} (floor {m['floor_fid']:.2f})", flush=True)


def plan(s: Settings) -> list[tuple[Variant, int]]:
    """The sets in the order they are drawn: 20 NFE first (the aim), then the flow references
    (for the 10-NFE aim), 10, then 50."""
    order = [20] if 20 in s.steps else []
    items = [(v, n) for n in order for v in VARIANTS]
    items += [(v, s.ref_steps) for v in VARIANTS if v.flow]
    items += [(v, n) for n in s.steps if n != 20 for v in VARIANTS]
    return items


def _fmt(x: float | None, d: int = 2) -> str:
    return "not measured" if x is None else f"{x:.{d}f}"


def report(s: Settings, results: Store) -> str:
    t, met = results.all("trainings"), results.all("metrics")
    fid = lambda v, n: met.get(f"{v.name}/{SAMPLER}-{n}", {}).get("fid")  # noqa: E731
    floor = next((m["floor_fid"] for m in met.values()), None)
    lines = [
        "## UNet or DiT, EDM or flow matching, at an equal CPU budget on Fashion-MNIST",
        "",
        f"Four trainings of {s.budget_cpu_s / 60:g} CPU-minutes each (the CPU time of "
        f"{s.budget_cpu_s / 120:g} minutes on 2 cores; each training is a process of one torch "
        "thread, two at a time, and stops when its process time reaches the budget), sampled "
        "from their EMA weights with DPM-Solver++(2M) and scored with FID at "
        f"N = {s.n} ({s.features} features) against the test split.",
        "",
        f"- Machine: {machine().replace('2 torch threads', '1 torch thread per job')}. Other work "
        "shared the CPU during parts of this run, which is why the budget is the CPU time of a "
        "one-thread process (contention does not inflate it, as it would a spinning thread's); "
        "wall seconds are listed for what they are.",
        "- Flow matching: `schedule.kind=flow` (sigma_max 999, shift 1), `diffusion.parameterization=flow`, "
        "logit-normal(0, 1) timesteps (`loss.sigma_sampling=lognormal`, p_mean 0, p_std 1), uniform weight. "
        "EDM: the preset's (lognormal(-1.2, 1.2), EDM weight).",
        f"- DiT: `{' '.join(o for o in DIT if o.startswith('model.'))}` (2x2 patches: 196 tokens), "
        "lr 1e-3; the UNet keeps the preset's lr 2e-3. Everything else is the preset's (batch 64, EMA, "
        "warm-up 50, cosine decay planned to end with the budget).",
        f"- Sampling: the same {s.n} starting noises for every row (seed {s.seed}); each schedule's "
        "default spacing (karras for EDM, uniform in t for flow).",
        "",
        "| training | params | forward GFLOPs / image | steps | images / CPU-s | wall s | loss, last 50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in VARIANTS:
        r = t.get(v.name)
        if r is None:
            lines.append(f"| {v.label} | not trained | | | | | |")
            continue
        lines.append(
            f"| {v.label} | {r['params'] / 1e6:.2f}M | {r['flops'] / 1e9:.3f} | {r['steps']} | "
            f"{r['images_per_cpu_s']:.1f} | {r['wall_s']:.0f} | {r['final_loss']:.4f} |"
        )
    cols = sorted(set(s.steps) | {s.ref_steps})
    lines += [
        "",
        "| training | " + " | ".join(f"FID, {n} NFE" for n in cols) + " | KID x 1000, 20 NFE |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | ---: |",
    ]
    for v in VARIANTS:
        kid = met.get(f"{v.name}/{SAMPLER}-20", {}).get("kid_mean")
        cells = [_fmt(fid(v, n)) if (n != s.ref_steps or v.flow) else "" for n in cols]
        lines.append(
            f"| {v.label} | " + " | ".join(cells) + f" | {_fmt(None if kid is None else 1000 * kid)} |"
        )
    lines.append(f"| real-vs-real floor | {_fmt(floor)} | | | | |")
    best = [(fid(v, 20), v) for v in VARIANTS if fid(v, 20) is not None]
    lines += [
        "",
        "The UNet, EDM row is the preset that `bench/quality.py` trained for 10 wall-minutes of one "
        "2-thread process (810 steps, FID 96.3 at 20 NFE there); a one-thread process does more work "
        "per CPU-second, so the same CPU time buys it more steps here.",
        "",
        "What the issue aims at:",
        "",
    ]
    if best:
        b, bv = min(best, key=lambda p: p[0])
        verdict = "reached" if b <= 70 else f"missed by {b - 70:.1f}"
        lines.append(
            f"- Best FID at 20 NFE <= 70 after {s.budget_cpu_s / 120:g} minutes of 2 cores: "
            f"**{verdict}**: {bv.label}, {b:.2f}."
        )
        dits = [f for f, v in best if v.name.startswith("dit")]
        unets = [f for f, v in best if v.name.startswith("unet")]
        if dits and unets and min(dits) > min(unets):
            lines.append(
                f"- At this budget the DiTs trail the UNets (best DiT {min(dits):.2f}, best UNet "
                f"{min(unets):.2f} at 20 NFE); the DiT's size, patch and learning rate were not tuned "
                "for this budget."
            )
    for v in VARIANTS:
        if v.flow and fid(v, 10) is not None and fid(v, s.ref_steps) is not None:
            rel = fid(v, 10) / fid(v, s.ref_steps) - 1
            ok = "reached" if rel <= 0.10 else "missed"
            lines.append(
                f"- {v.label}: 10 NFE within 10% of its {s.ref_steps}-NFE FID: **{ok}**, "
                f"{fid(v, 10):.2f} against {fid(v, s.ref_steps):.2f} ({rel:+.1%})."
            )
    lines += ["", "Reproduce with `python bench/backbones.py` (`--reuse` continues an interrupted run)."]
    return "\n".join(lines)


def jobs(s: Settings) -> list[str]:
    """The work in order: the four trainings, then the sample sets (see plan)."""
    return [f"train:{v.name}" for v in VARIANTS] + [f"set:{v.name}:{n}" for v, n in plan(s)]


def run_job(job: str, s: Settings, results: Store) -> None:
    kind, name, *rest = job.split(":")
    v = next(v for v in VARIANTS if v.name == name)
    if kind == "train":
        train(v, s, results)
    else:
        sample_and_score(v, int(rest[0]), s, results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--out", type=Path, help=f"Markdown file to update (default {DOC}; --quick: only if given)"
    )
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--budget-min", type=float, help="minutes of 2 cores per training (default 10)")
    p.add_argument("--n", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="jobs at once, one torch thread each (default 2)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # a worker: run one job and exit
    a = p.parse_args()
    q = a.quick
    s = Settings(
        out=a.out_dir or Path("runs/bench-backbones" + ("-quick" if q else "")),
        budget_cpu_s=120 * (a.budget_min or (0.1 if q else 10.0)),
        n=a.n or (40 if q else 1000),
        steps=(10, 20) if q else (10, 20, 50),
        ref_steps=25 if q else 100,
        features="classifier" if q else "inception",
        batch=250,
        seed=a.seed,
    )
    results = Store(s.out)
    if a.job:  # one thread: CPU time then measures the work, not other processes' contention
        torch.set_num_threads(1)
        run_job(a.job, s, results)
        return
    doc = a.out or (None if q else DOC)
    if s.out.exists() and not a.reuse:
        print(f"starting afresh: removing {s.out} (pass --reuse to continue it instead)")
        shutil.rmtree(s.out)
    s.out.mkdir(parents=True, exist_ok=True)
    passed = [arg for arg in sys.argv[1:] if arg not in ("--reuse",)]

    def work(job: str) -> None:
        subprocess.run([sys.executable, __file__, *passed, "--job", job], check=True)
        if doc is not None:
            write_section(SECTION, report(s, results), doc)

    todo = jobs(s)
    with ThreadPoolExecutor(a.jobs) as pool:  # the trainings first: every set needs its model
        list(pool.map(work, [j for j in todo if j.startswith("train:")]))
        list(pool.map(work, [j for j in todo if j.startswith("set:")]))
    print(report(s, results))


if __name__ == "__main__":
    main()

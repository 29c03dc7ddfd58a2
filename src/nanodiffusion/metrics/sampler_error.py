"""Ground-truth sampler error: every sampler on Gaussian mixtures, whose ideal denoiser is exact.

For each mixture, sampler and NFE budget (steps = ``SAMPLERS[name].steps_for_nfe(budget)``, the
NFE actually spent counted by ``CountingDenoiser``), all on Karras et al. (2022) sigmas
(sigma_min 0.002, sigma_max 80, rho 7) and in float64:

(a) deterministic samplers: the RMS error (per coordinate) of the final samples against a
    high-accuracy solution of the same probability-flow ODE from the same starting noise:
    Heun with 1000 Karras steps, checked against its own 500-step solution; plus the share of
    samples that end in a different mixture component than the reference (a "mode flip": one
    of those costs O(1) and dominates the RMS in high dimensions);
(b) every sampler: the sliced Wasserstein distance (``gmm.sliced_wasserstein``) of its n
    samples to n fresh true samples, beside the noise floor (two true sets, same n) and
    1000-step rows (Heun, DDPM).

``run`` measures and prints the tables (markdown) and a summary per mixture:
    nanodiff bench-samplers [--quick] [--n N] [--samplers euler,heun ...]
``python bench/samplers.py`` runs the same measurement and writes the tables and a log-log plot
into docs/samplers.md.
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from nanodiffusion.core.gmm import GaussianMixture, mixture_2d, mixture_nd, sliced_wasserstein, sw_noise_floor
from nanodiffusion.core.samplers import SAMPLERS, CountingDenoiser, get_sampler
from nanodiffusion.core.schedules import karras_sigmas

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
DEFAULT_NFES = (5, 10, 20, 50, 100, 200)
N_PROJ = 128  # sliced-W directions
FULL = {"n": 20_000, "ref_steps": 1000, "long_steps": 1000}
QUICK = {"n": 256, "ref_steps": 100, "long_steps": 100, "nfes": (5, 10), "dims": (2,)}


def karras(steps: int) -> torch.Tensor:
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO)


def run_sampler(mixture: GaussianMixture, name: str, x: torch.Tensor, steps: int, seed: int):
    """(final samples, measured NFE) of one sampler run from x at sigma_max."""
    info, counted = get_sampler(name), CountingDenoiser(mixture.denoiser)
    generator = torch.Generator().manual_seed(seed) if info.stochastic else None
    return info.fn(counted, x, karras(steps), generator=generator), counted.calls


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS difference per coordinate, so that 2-D and 64-D numbers read alike."""
    return float(((a - b) ** 2).mean().sqrt())


def mode_flips(mixture: GaussianMixture, a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose most likely mixture component differs between a and b."""
    ka, kb = mixture.responsibilities(a).argmax(1), mixture.responsibilities(b).argmax(1)
    return float((ka != kb).double().mean())


# --- one mixture ----------------------------------------------------------------------------------
@dataclass
class Problem:
    """A mixture with its shared starting noise, its true samples and its reference ODE solution."""

    name: str
    mixture: GaussianMixture
    noise: torch.Tensor  # x at sigma_max, the same for every sampler
    truth: torch.Tensor  # n true samples every sampler is scored against
    floor: tuple[float, float]  # sliced W of fresh true samples to `truth`: mean, std
    reference: torch.Tensor = None
    ref_steps: int = 0
    ref_check: float = math.nan  # RMS(ref at ref_steps, ref at ref_steps / 2)
    rows: dict = field(default_factory=dict)  # sampler -> list of measurements per budget
    long_rows: dict = field(default_factory=dict)  # "heun, 1000 steps" -> (NFE, sliced W)
    budgets: list = field(default_factory=list)  # the NFE budgets of every sampler's rows, ascending


def make_mixture(dim: int) -> tuple[str, GaussianMixture]:
    if dim == 2:
        return "2-D: 8 Gaussians on a ring (std 0.05)", mixture_2d()
    return f"{dim}-D: 10 Gaussians, per-axis std 0.02-0.1", mixture_nd(dim)


def make_problem(dim: int, n: int, seed: int) -> Problem:
    name, mixture = make_mixture(dim)
    g = torch.Generator().manual_seed(seed)
    noise = SIGMA_MAX * torch.randn(n, dim, generator=g, dtype=torch.float64)
    truth = mixture.sample(n, torch.Generator().manual_seed(seed + 1))
    floor = sw_noise_floor(mixture, n, truth, n_proj=N_PROJ, seed=seed)
    return Problem(name, mixture, noise, truth, floor)


def solve_reference(p: Problem, steps: int) -> None:
    """Heun at `steps` Karras steps; its distance to the `steps // 2` solution bounds its error
    (for a 2nd-order method the finer one's error is about a third of that distance)."""
    p.reference, nfe = run_sampler(p.mixture, "heun", p.noise, steps, 0)
    half, _ = run_sampler(p.mixture, "heun", p.noise, steps // 2, 0)
    p.ref_steps, p.ref_check = steps, rms(p.reference, half)
    p.long_rows[f"heun, {steps} steps"] = (nfe, sliced_wasserstein(p.reference, p.truth, N_PROJ))


def measure(p: Problem, name: str, budget: int, seed: int) -> dict:
    """One sampler at one NFE budget: measured NFE, ODE error and mode flips (deterministic), sliced W."""
    info = SAMPLERS[name]
    steps = info.steps_for_nfe(budget)
    out, nfe = run_sampler(p.mixture, name, p.noise, steps, seed)
    row = {
        "budget": budget,
        "steps": steps,
        "nfe": nfe,
        "expected_nfe": info.nfe(steps),
        "sw": sliced_wasserstein(out, p.truth, N_PROJ),
        "ode": None,
        "flips": None,
    }
    if not info.stochastic:
        row["ode"], row["flips"] = rms(out, p.reference), mode_flips(p.mixture, out, p.reference)
    return row


# --- tables ---------------------------------------------------------------------------------------
def _nfe_note(rows: list[dict]) -> str:
    used = [r["nfe"] for r in rows]
    note = ", ".join(map(str, used))
    bad = [r for r in rows if r["nfe"] != r["expected_nfe"]]
    return note + (" (registry says " + ", ".join(str(r["expected_nfe"]) for r in bad) + "!)" if bad else "")


def table(p: Problem, budgets, metric: str, fmt: str) -> list[str]:
    """Markdown rows: samplers down, NFE budgets across, the measured NFE last."""
    lines = [
        "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " | NFE used |",
        "|---" * (len(budgets) + 2) + "|",
    ]
    for name, rows in p.rows.items():
        if rows[0][metric] is None:
            continue
        cells = " | ".join(format(r[metric], fmt) for r in rows)
        lines.append(f"| {name} | {cells} | {_nfe_note(rows)} |")
    if metric == "sw":
        for label, (nfe, value) in p.long_rows.items():
            lines.append(f"| *{label}* | " + " | ".join([f"*{value:{fmt}}*"] * len(budgets)) + f" | {nfe} |")
        mean, std = p.floor
        lines.append(
            "| *noise floor (true vs true)* | "
            + " | ".join([f"*{mean:{fmt}}*"] * len(budgets))
            + f" | ± {std:{fmt}} (std) |"
        )
    return lines


def problem_section(p: Problem, budgets) -> list[str]:
    n, d = p.truth.shape
    flips = [
        f"| {name} | " + " | ".join(f"{100 * r['flips']:.2f}" for r in rows) + " |"
        for name, rows in p.rows.items()
        if rows[0]["flips"] is not None
    ]
    return [
        f"### {p.name}; n = {n}",
        "",
        f"ODE error: RMS per coordinate of the final samples against Heun at {p.ref_steps} Karras "
        f"steps from the same noise (that reference is {p.ref_check:.1e} from its own "
        f"{p.ref_steps // 2}-step solution).",
        "",
        *table(p, budgets, "ode", ".2e"),
        "",
        "Samples (%) ending in a different mixture component than the reference:",
        "",
        "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---" * (len(budgets) + 1) + "|",
        *flips,
        "",
        f"Sliced W2 ({N_PROJ} directions) to {n} fresh true samples:",
        "",
        *table(p, budgets, "sw", ".4f"),
        "",
    ]


def summary(p: Problem, budgets) -> str:
    """Where the best sampler at 10 NFE (or the budget nearest 10) lands against the long-run
    (reference-length) rows and the noise floor."""
    i = min(range(len(budgets)), key=lambda j: abs(math.log(budgets[j] / 10)))
    best = min(p.rows, key=lambda name: p.rows[name][i]["sw"])
    value, nfe = p.rows[best][i]["sw"], p.rows[best][i]["nfe"]
    label, (long_nfe, long_sw) = next(iter(p.long_rows.items()))
    floor, spread = p.floor
    gap, steps = value - long_sw, p.ref_steps
    if gap <= 2 * spread:
        verdict = f"within the noise floor's reach of the {steps}-step result (at most 2 floor std above)"
    else:
        reach = sorted(
            (r["nfe"], r["sw"], name)
            for name, rows in p.rows.items()
            for r in rows
            if r["sw"] - long_sw <= 2 * spread
        )
        first = (
            (
                f"; the fewest NFE that get within 2 floor std of it are {reach[0][0]}, best there "
                f"{reach[0][2]} ({reach[0][1]:.4f})"
            )
            if reach
            else "; no sampler gets there in this sweep"
        )
        verdict = f"not within the noise floor's reach of the {steps}-step result{first}"
    return (
        f"**{p.name}.** At {budgets[i]} NFE the best sampler is **{best}** ({nfe} NFE): sliced W2 "
        f"{value:.4f}, against {long_sw:.4f} for {label} ({long_nfe} NFE) and a noise floor of "
        f"{floor:.4f} ± {spread:.4f}. That is {value / long_sw:.2f}x the {steps}-step distance "
        f"({gap:+.4f}, or {gap / spread:.1f} floor std) and {value / floor:.2f}x the floor: {verdict}."
    )


# --- the whole run --------------------------------------------------------------------------------
def _row_text(name: str, rows: list[dict]) -> str:
    ode = " ".join("-" if r["ode"] is None else f"{r['ode']:.2e}" for r in rows)
    return f"{name:12} NFE {_nfe_note(rows):26} ODE {ode} | SW " + " ".join(f"{r['sw']:.4f}" for r in rows)


@contextmanager
def threads_for(work: int):
    """One torch thread for small per-call work: on a shared 2-core machine, intra-op threads
    that wait on each other's barriers made small runs up to 20x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if work < 1_000_000 else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(
    samplers=None,
    nfes=DEFAULT_NFES,
    dims=(2, 64),
    n: int | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
) -> list[Problem]:
    """Measure the samplers on the mixtures of `dims`, print each mixture's tables and the
    summary, and return the data (``problem_section`` and ``summary`` give the same text)."""
    sizes = dict(QUICK if quick else FULL)
    if quick:
        nfes = sizes["nfes"] if tuple(nfes) == DEFAULT_NFES else nfes
        dims = sizes["dims"] if tuple(dims) == (2, 64) else dims
    n, budgets = n or sizes["n"], sorted(nfes)
    names = list(samplers or SAMPLERS)
    for name in names:
        get_sampler(name)  # unknown names fail before any work
    start, problems = time.time(), []
    bar = tqdm(total=len(dims) * (len(names) * len(budgets) + 2), disable=not progress, desc="bench-samplers")
    for dim in dims:
        with threads_for(n * dim * 10):
            problems.append(_bench_mixture(dim, n, seed, names, budgets, sizes, bar))
    bar.close()
    print("\n".join(summary(p, budgets) for p in problems))
    print(f"measured in {time.time() - start:.0f} s")
    return problems


def _bench_mixture(dim: int, n: int, seed: int, names, budgets, sizes: dict, bar) -> Problem:
    """The reference, every sampler at every budget, and the long DDPM row, for one mixture."""
    p = make_problem(dim, n, seed)
    p.budgets = list(budgets)
    bar.set_postfix_str(f"{dim}-D reference")
    solve_reference(p, sizes["ref_steps"])
    tqdm.write(
        f"\n{p.name}, n = {n}: noise floor {p.floor[0]:.4f} ± {p.floor[1]:.4f}; reference "
        f"Heun {p.ref_steps} steps vs {p.ref_steps // 2}: RMS {p.ref_check:.2e}"
    )
    bar.update()
    for name in names:
        bar.set_postfix_str(f"{dim}-D {name}")
        p.rows[name] = []
        for budget in budgets:
            p.rows[name].append(measure(p, name, budget, seed + 2))
            bar.update()
        tqdm.write(_row_text(name, p.rows[name]))
    bar.set_postfix_str(f"{dim}-D ddpm long")
    long, nfe = run_sampler(p.mixture, "ddpm", p.noise, sizes["long_steps"], seed + 2)
    p.long_rows[f"ddpm, {sizes['long_steps']} steps"] = (nfe, sliced_wasserstein(long, p.truth, N_PROJ))
    bar.update()
    tqdm.write("\n".join(problem_section(p, budgets)))
    return p


# --- command line ---------------------------------------------------------------------------------
def _count(low: int, high: int):
    """An argparse type: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def _list(kind):
    """An argparse type: a non-empty comma-separated list of `kind`."""

    def parse(text: str):
        values = [kind(v) for v in text.split(",") if v]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--samplers",
        type=_list(str),
        default=None,
        help=f"comma-separated sampler names (default: all of {', '.join(SAMPLERS)})",
    )
    parser.add_argument(
        "--nfe",
        type=_list(_count(1, 10_000)),
        default=list(DEFAULT_NFES),
        help="comma-separated NFE budgets (default: %(default)s)",
    )
    parser.add_argument(
        "--dims",
        type=_list(_count(1, 4096)),
        default=[2, 64],
        help="mixture dimensions: 2 is the ring, others a random mixture (default: 2,64)",
    )
    parser.add_argument(
        "--n",
        type=_count(1, 1_000_000),
        default=None,
        help=f"samples per run (default: {FULL['n']}, quick {QUICK['n']})",
    )
    parser.add_argument("--seed", type=_count(0, 2**63 - 1), default=0)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (2-D, NFE 5 and 10)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    run(
        samplers=args.samplers,
        nfes=tuple(args.nfe),
        dims=tuple(args.dims),
        n=args.n,
        seed=args.seed,
        quick=args.quick,
    )
    return 0

"""Every hostile input of tests/hostile.py through every command that reads it, as a markdown
table (input, command, exit code, what the user sees, whether the rule held, seconds) in
docs/hostile-inputs.md, which docs/reliability.md links to.

    python bench/hostile_inputs.py            # the whole matrix (minutes on 2 cores)
    python bench/hostile_inputs.py --fast     # only the cases of the fast test tier
    python bench/hostile_inputs.py --kind run --out /tmp/table.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the corpus and the rule live with the tests

import hostile  # noqa: E402

DOC = ROOT / "docs" / "hostile-inputs.md"
RELIABILITY = ROOT / "docs" / "reliability.md"  # its summary table, between the two markers, is ours
BEGIN, END = "<!-- summary: written by bench/hostile_inputs.py -->", "<!-- end of summary -->"
SUMMARY = [  # one row of reliability.md's summary per input: the first command that refuses it
    "bomb 40000x40000 png",
    "truncated jpeg",
    "text named .png",
    "folder named x.png",
    "npz header 10^6x1000x1000",
    "npz pickled object",
    "npz images [4,0,0]",
    "npz NaN images",
    "npz labels 2^40",
    "model header 2^62",
    "weights step 'abc'",
    "config a list",
    "config model.head_dim=0",
    "config model.num_classes=1000000000",
    "config model.image_size=100000",
    "config data.p_uncond=5",
    "toml optim.lr=1e+308",
    "state pickle that runs code",
    "state a list",
]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(rows: list[tuple[hostile.Case, hostile.Outcome, float]]) -> str:
    held = sum(not outcome.problems() for _, outcome, _ in rows)
    lines = [
        "<!-- written by bench/hostile_inputs.py; do not edit by hand -->",
        "# Hostile inputs and what nanodiff says",
        "",
        "Every input of the corpus in `tests/hostile.py` (made by the tests themselves), through every "
        "command that reads that kind of file; see [reliability.md](reliability.md). "
        "The command: `python bench/hostile_inputs.py`.",
        "",
        f"{held} of {len(rows)} hostile cases keep the rule (exit 0, or exit 2 with one "
        "`nanodiff: error:` line; no traceback; no file that existed before changed).",
        "",
        "| input | command | exit | message | rule | s |",
        "|---|---|---|---|---|---|",
    ]
    for case, outcome, seconds in rows:
        problems = outcome.problems()
        code = "exception" if outcome.rc is None else str(outcome.rc)
        verdict = "ok" if not problems else "**broken**: " + _cell("; ".join(problems), 120)
        lines.append(
            f"| {_cell(case.input)} | `{case.command}` | {code} | {_cell(outcome.message)} | {verdict} "
            f"| {seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def summary(rows: list[tuple[hostile.Case, hostile.Outcome, float]]) -> str:
    """reliability.md's short table: for each input of SUMMARY, its first refusal."""
    lines = [BEGIN, "| input | command | message (exit 2) |", "| --- | --- | --- |"]
    for name in SUMMARY:
        found = next(((c, o) for c, o, _ in rows if c.input == name and o.rc == 2), None)
        if found is not None:
            case, outcome = found
            message = outcome.message.removeprefix("nanodiff: error: ")
            lines.append(f"| {_cell(name)} | `{case.command}` | {_cell(message, 220)} |")
    return "\n".join([*lines, END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="only the fast test tier's cases")
    p.add_argument("--kind", choices=["image", "array", "run", "toml"], action="append")
    p.add_argument("--out", type=Path, default=DOC)
    args = p.parse_args(argv)
    cases = [
        c for c in hostile.CASES if (not args.fast or not c.slow) and (not args.kind or c.kind in args.kind)
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)  # a command that falls back to a default folder writes here
        runs = hostile.make_runs(tmp / "runs")
        for i, case in enumerate(cases):
            case_dir = tmp / f"case-{i:04d}"
            case_dir.mkdir()
            start = time.perf_counter()
            outcome = hostile.run_case(case, runs, case_dir)
            for name in ("stderr", "stdout", "crash"):  # the table shows paths relative to the case
                setattr(outcome, name, getattr(outcome, name).replace(f"{case_dir}/", ""))
            rows.append((case, outcome, time.perf_counter() - start))
            status = "ok" if not outcome.problems() else "BROKEN"
            progress = f"[{i + 1}/{len(cases)}] {status:6s} {case.id}: {outcome.message[:100]}"
            print(progress, file=sys.__stderr__, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(rows))
    if args.out == DOC and not args.fast and not args.kind and RELIABILITY.is_file():
        text = RELIABILITY.read_text()
        start, end = text.find(BEGIN), text.find(END)
        if start >= 0 and end > start:
            RELIABILITY.write_text(text[:start] + summary(rows) + text[end + len(END) :])
    broken = sum(bool(o.problems()) for _, o, _ in rows)
    print(f"{len(rows) - broken} of {len(rows)} cases keep the rule; table: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

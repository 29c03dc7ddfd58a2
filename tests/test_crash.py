"""Kill a training run anywhere, fill its disk, and resume: checkpoints are complete or absent.

Each run trains in a forked child process (torch is imported once, so a child costs
milliseconds) with one thread in every process, so the float results do not depend on how
work was split. A child with `kill_at=k` sends itself SIGKILL at the k-th event of its
checkpoint writes: before, in the middle of (the file cut to half its size, what a kill
during the write leaves) and after each file, before and after each rename, and before and
in the middle of each deletion of an old checkpoint. After the kill, `resume` must continue
from the newest complete checkpoint, at most one checkpoint interval back, and reach
bit-for-bit the weights of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanodiffusion.io import checkpoint
from nanodiffusion.io.checkpoint import CHECKPOINTS, checkpoint_file, checkpoints
from nanodiffusion.io.config import apply_overrides, preset
from nanodiffusion.training import loop
from tiny_runs import TINY

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills run in forked children (POSIX)")

EVERY, STEPS = 2, 6
CRASH = [
    *TINY,
    f"run.steps={STEPS}",
    f"run.checkpoint_every={EVERY}",
    "run.keep_checkpoints=1",
    "run.log_every=1",
    "model.dropout=0.1",
]
FILES = ["ema.safetensors", "model.safetensors", "state.pt"]


class Faults:
    """Numbered events around every file operation of a checkpoint; SIGKILL at event kill_at.
    Each event is appended to `log` (flushed) before it may kill, so the parent knows where."""

    def __init__(self, kill_at: int | None, log: Path):
        self.kill_at, self.n, self.log = kill_at, 0, log.open("a")
        self.step = 0

    def event(self, what: str, damage=None) -> None:
        self.n += 1
        self.log.write(json.dumps({"n": self.n, "step": self.step, "what": what}) + "\n")
        self.log.flush()
        if self.n == self.kill_at:
            if damage is not None:
                damage()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        real_write, real_rename, real_rmtree = loop.write_checkpoint, os.rename, shutil.rmtree

        def write_checkpoint(folder, step, files, keep):
            self.step = step
            return real_write(folder, step, {name: self._file(name, w) for name, w in files.items()}, keep)

        def rename(src, dst):
            what = f"rename {Path(src).name} -> {Path(dst).name}"
            self.event(f"before {what}")
            real_rename(src, dst)
            self.event(f"after {what}")

        def rmtree(path, *args, **kwargs):
            def delete_one_file():  # a deletion cut short: one file of the folder gone
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                if files:
                    files[0].unlink()

            self.event(f"before deleting {Path(path).name}")
            self.event(f"in the middle of deleting {Path(path).name}", delete_one_file)
            real_rmtree(path, *args, **kwargs)

        loop.write_checkpoint, os.rename = write_checkpoint, rename
        checkpoint.shutil.rmtree = rmtree

    def _file(self, name, write):
        def faulty(path: Path) -> None:
            self.event(f"before writing {name}")
            write(path)
            size = path.stat().st_size
            self.event(f"{name} half written", lambda: os.truncate(path, size // 2))
            self.event(f"after writing {name}")

        return faulty


def in_child(work, kill_at: int | None = None, log: Path | None = None, fsize: int | None = None) -> int:
    """Run work() in a forked child: its exit code (0: returned, 1: raised), or -9 if killed.
    fsize: the child's largest file in bytes (`ulimit -f`); Python ignores SIGXFSZ, so a write
    beyond it fails with EFBIG, "File too large", as on a full disk."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            if log is not None:
                Faults(kill_at, log).install()
            code = work()
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush(), sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _train(run: Path, stop_after: int | None = None):
    def work() -> int:
        from nanodiffusion.training.diffusion import train

        cfg = apply_overrides(preset("digits"), CRASH)
        return 0 if train(cfg, run, progress=False, stop_after=stop_after) else 3

    return work


def _resume(run: Path, stop_after: int | None = None):
    def work() -> int:
        from nanodiffusion.training.diffusion import resume

        return 0 if resume(run, progress=False, stop_after=stop_after) else 3

    return work


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {f: load_file(str(checkpoint_file(run, f))) for f in ("model.safetensors", "ema.safetensors")}


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A run never interrupted, and the list of its checkpoint events (a child that never kills)."""
    import matplotlib.pyplot  # noqa: F401  (imported once here, not in every child: seconds each)
    import sklearn.datasets  # noqa: F401
    import torch._dynamo  # noqa: F401  (what torch.optim imports on first use)

    tmp = tmp_path_factory.mktemp("crash")
    run, log = tmp / "straight", tmp / "events.jsonl"
    assert in_child(_train(run), kill_at=None, log=log) == 0
    return run, [json.loads(x) for x in log.read_text().splitlines()]


def _check_killed_at(straight, tmp_path, k: int) -> str:
    """Kill a run at event k, check what is on disk, resume, compare with the straight run."""
    ref, events = straight
    run, log = tmp_path / f"killed-{k}", tmp_path / f"events-{k}.jsonl"
    assert in_child(_train(run), kill_at=k, log=log) == -signal.SIGKILL
    event = json.loads(log.read_text().splitlines()[-1])
    assert event["n"] == k, event
    # whatever the moment, every checkpoint on disk is whole (a half-written one is hidden)
    found = checkpoints(run)
    for _, folder in found:
        assert sorted(os.listdir(folder)) == FILES, (event, folder)
    newest = found[-1][0] if found else 0
    # killed while saving step s: at most one checkpoint interval is lost
    assert newest >= event["step"] - EVERY, (event, newest)
    assert in_child(_resume(run)) == 0, event
    assert not [p.name for p in (run / CHECKPOINTS).iterdir() if p.name.startswith(".")], event
    assert [s for s, _ in checkpoints(run)] == [STEPS]  # keep_checkpoints=1
    a, b = _weights(ref), _weights(run)
    for f in a:
        assert all(torch.equal(a[f][key], b[f][key]) for key in a[f]), (event, f)
    assert _losses(run) == _losses(ref), event
    return f"{event['what']} (step {event['step']}) -> resumed from step {newest}"


def test_the_straight_run_has_the_events_the_kills_aim_at(straight):
    ref, events = straight
    whats = [e["what"] for e in events]
    # three checkpoints (steps 2, 4, 6), each: 3 files x 3 events + a rename; the two older
    # ones are deleted (keep_checkpoints=1), each a rename and a deletion
    for name in FILES:
        assert whats.count(f"{name} half written") == 3
    assert whats.count("before rename .step-00000004.tmp -> step-00000004") == 1
    assert whats.count("before rename step-00000002 -> .step-00000002.old") == 1
    assert whats.count("in the middle of deleting .step-00000004.old") == 1
    assert [s for s, _ in checkpoints(ref)] == [STEPS]


# the second checkpoint's save: inside each file, between files, around the rename, and the
# deletion of the first checkpoint that follows (the slow test below kills at every event)
AIMS = [
    "model.safetensors half written",
    "after rename .step-00000004.tmp -> step-00000004",
    "in the middle of deleting .step-00000002.old",
]


@pytest.mark.parametrize("aim", AIMS)
def test_a_kill_during_a_checkpoint_costs_at_most_one_interval(straight, tmp_path, aim):
    k = next(e["n"] for e in straight[1] if e["what"] == aim and e["step"] == 4)
    _check_killed_at(straight, tmp_path, k)


@pytest.mark.slow
def test_a_kill_at_every_event_of_a_checkpoint(straight, tmp_path):
    """Every event of step 4's save (its files, its rename, the deletion of step 2 that follows);
    the saves of steps 2 and 6 are made of the same events (all of them: 5 minutes on 2 cores)."""
    events = [e for e in straight[1] if e["step"] == 4]
    seen = [_check_killed_at(straight, tmp_path, e["n"]) for e in events]
    assert len(seen) == len(events) == 15


def test_a_kill_before_the_first_checkpoint_starts_the_run_again(straight, tmp_path):
    k = next(e["n"] for e in straight[1] if e["what"] == "state.pt half written")  # step 2's save
    assert "resumed from step 0" in _check_killed_at(straight, tmp_path, k)


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_so_in_one_line(straight, tmp_path):
    ref, _ = straight
    run = tmp_path / "full"
    assert in_child(_train(run, stop_after=2)) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    limit = checkpoint_file(run, "model.safetensors").stat().st_size // 2
    err = tmp_path / "stderr.txt"

    def cli_resume() -> int:
        from nanodiffusion.cli import main

        with err.open("w") as sys.stderr:
            try:
                return main(["train", "--resume", str(run), "--quiet"])
            finally:
                sys.stderr = sys.__stderr__

    assert in_child(cli_resume, fsize=limit) == 2
    lines = err.read_text().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.read_text(), lines
    root = run / CHECKPOINTS
    assert lines[0].startswith(f"nanodiff: error: could not write the checkpoint of step 4 in {root} ")
    assert "File too large" in lines[0] and lines[0].endswith("; the checkpoint of step 2 is intact"), lines
    for path, data in before.items():  # the metrics log may have grown; nothing else changed
        if path.name != "metrics.jsonl":
            assert path.read_bytes() == data, path
    assert sorted(os.listdir(root)) == ["step-00000002"]  # the half-written one is gone
    assert in_child(_resume(run)) == 0  # with room again, the run goes on as if nothing happened
    a, b = _weights(ref), _weights(run)
    assert all(torch.equal(a[f][key], b[f][key]) for f in a for key in a[f])

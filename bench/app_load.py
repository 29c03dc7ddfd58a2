"""The web app under load, on loopback: `nanodiff app RUN --running 1 --waiting 4` in a subprocess,
then bursts of concurrent generate requests (one thread and one streaming httpx client each, a
distinct seed and class per request). Each request ends in exactly one outcome: done, busy (HTTP
429) or error; a done one's images must equal the library's images for that request's own
settings (pipelines.conditioning + draw, computed here after the burst): none lost, none mixed
up. Then every hostile request of tests/test_app.py's HOSTILE goes to the same server, and the
server must still draw afterwards.

    python bench/app_load.py RUN            # RUN: a class-conditional digits run folder
    python bench/app_load.py                # the shipped digits model, where the package has it

It writes two tables into docs/app.md, between <!-- load:begin --> and <!-- load:end --> and
between <!-- hostile:begin --> and <!-- hostile:end -->, leaving the rest of the page as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the hostile list and the library's images live with the tests

import test_app  # noqa: E402
from _common import machine  # noqa: E402

DOC = ROOT / "docs" / "app.md"


@dataclass
class Outcome:
    """One request's end: "done" (with its images), "busy" (429) or "error", and its latency."""

    settings: dict
    kind: str = "error"
    seconds: float = 0.0
    detail: str = ""
    images: list[str] = field(default_factory=list)
    position: int | None = None  # its first place in line
    equal: bool | None = None  # a done one's images against the library's


def request(base: str, settings: dict, start: threading.Barrier) -> Outcome:
    """One generate request, streamed to its end."""
    outcome = Outcome(settings)
    with httpx.Client(base_url=base, timeout=120) as client:
        start.wait()
        t0 = time.perf_counter()
        try:
            with client.stream("POST", "/api/jobs", json=settings) as answer:
                if answer.status_code == 429:
                    answer.read()
                    outcome.kind, outcome.detail = "busy", answer.headers.get("Retry-After", "")
                elif answer.status_code != 200:
                    outcome.detail = f"HTTP {answer.status_code}: {answer.read().decode()[:200]}"
                else:
                    for line in answer.iter_lines():
                        event = json.loads(line)
                        if event["type"] == "queued" and outcome.position is None:
                            outcome.position = event["position"]
                        elif event["type"] == "done":
                            outcome.kind, outcome.images = "done", event["images"]
                        elif event["type"] in ("error", "cancelled"):
                            outcome.detail = f"{event['type']}: {event.get('message', '')}"
        except httpx.HTTPError as e:
            outcome.detail = f"{type(e).__name__}: {e}"
        outcome.seconds = time.perf_counter() - t0
    return outcome


def burst(base: str, model: str, index: int, requests: int, steps: int, n: int) -> list[Outcome]:
    """`requests` generate requests at once; their outcomes, in the order they were made."""
    start, outcomes = threading.Barrier(requests), [None] * requests

    def one(i: int) -> None:
        settings = {"model": model, "class_label": i % 10, "seed": 1000 * index + i, "steps": steps, "n": n}
        outcomes[i] = request(base, settings, start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(o, Outcome) for o in outcomes), "a request ended without an outcome"
    return outcomes


def check_images(run: str, outcomes: list[Outcome]) -> None:
    """Each done request's images against the library's for its own settings."""
    for o in outcomes:
        if o.kind == "done":
            s = o.settings
            expected = test_app.library_images(
                run, n=s["n"], steps=s["steps"], seed=s["seed"], class_label=s["class_label"]
            )
            o.equal = np.array_equal(np.stack([test_app.pixels_of(url) for url in o.images]), expected)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM in /proc/PID/status), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "nanodiffusion.cli", "app", run, "--no-shipped"]
    command += ["--port", str(port), "--running", "1", "--waiting", "4"]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_table(bursts: list[list[Outcome]], rss: list[float], args, command: str) -> str:
    rows, summary = [], {key: [] for key in ("done", "busy", "error", "p50", "p95", "rss")}
    for k, (outcomes, peak) in enumerate(zip(bursts, rss, strict=True), 1):
        done = [o for o in outcomes if o.kind == "done"]
        busy = [o for o in outcomes if o.kind == "busy"]
        errors = [o for o in outcomes if o.kind == "error"]
        seconds = [o.seconds for o in done]
        equal = sum(bool(o.equal) for o in done)
        positions = ", ".join(str(o.position) for o in sorted(done, key=lambda o: o.seconds))
        values = (len(done), len(busy), len(errors), percentile(seconds, 50), percentile(seconds, 95), peak)
        for key, value in zip(summary, values, strict=True):
            summary[key].append(value)
        busy_s = max((o.seconds for o in busy), default=float("nan"))
        rows.append(
            f"| {k} | {len(done)} | {len(busy)} (slowest answer {busy_s * 1000:.0f} ms, "
            f"Retry-After {', '.join(sorted({o.detail for o in busy}))} s) | {len(errors)} | "
            f"{values[3]:.2f} | {values[4]:.2f} | {equal} of {len(done)} | {positions} | {peak:.0f} |"
        )
    median = {key: statistics.median(values) for key, values in summary.items()}
    errors = [o.detail for outcomes in bursts for o in outcomes if o.kind == "error"]
    return "\n".join(
        [
            f"Measured with `{command}` on {machine()}: {args.bursts} bursts of {args.requests} "
            f"generate requests sent at once (one thread and one streaming httpx client each, "
            f"class i mod 10, a seed of its own, {args.steps} steps of {args.n} images: one job "
            f"takes {args.job_seconds:.1f} s alone) to `nanodiff app RUN --running 1 --waiting 4` "
            "on loopback. Each request ends in exactly one outcome; a done one's images are "
            "compared with the library's (`pipelines.conditioning` + `draw`) for its own settings.",
            "",
            "| burst | done | busy (429) | error | p50 latency of done, s | p95, s | images equal "
            "the library's | first place in line of the done ones | server peak RSS, MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            f"| median | {median['done']:g} | {median['busy']:g} | {median['error']:g} | "
            f"{median['p50']:.2f} | {median['p95']:.2f} | | | {median['rss']:.0f} |",
            "",
            "The line holds 5 (1 running, 4 waiting): the rest are refused at once with 429 and a "
            "Retry-After, so a done request's latency is its wait plus its own job. Peak RSS is the "
            "server process's VmHWM after each burst (cumulative)."
            + (f" Errors: {'; '.join(errors[:5])}." if errors else ""),
        ]
    )


def hostile_table(base: str) -> tuple[str, int]:
    """Each hostile request's answer from the real server; and how many differ from the test's."""
    rows, differ = [], 0
    with httpx.Client(base_url=base, timeout=60) as client:
        for hostile in test_app.HOSTILE:
            answer = test_app.send(client, hostile)
            try:
                message = answer.json().get("error", answer.text)
            except ValueError:
                message = answer.text
            same = (answer.status_code, message) == (hostile.status, hostile.message)
            differ += not same
            shown = message.replace("|", "\\|")
            rows.append(
                f"| {hostile.name} | `{hostile.route}` | {answer.status_code} | {shown} | "
                f"{'yes' if same else 'NO'} |"
            )
    head = [
        f"Every request of `HOSTILE` in `tests/test_app.py` sent to the same server ({len(rows)} "
        f"requests; {len(rows) - differ} answered exactly as the test expects).",
        "",
        "| request | route | status | answer (`error`) | as the test expects |",
        "| --- | --- | --- | --- | --- |",
    ]
    return "\n".join(head + rows), differ


def write_between(name: str, body: str, path: Path = DOC) -> None:
    """Replace what lies between `<!-- name:begin -->` and `<!-- name:end -->` in `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{path} needs the markers {begin} and {end}, once each")
    head, rest = text.split(begin)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end)[1]}")


def default_run() -> str | None:
    try:
        from nanodiffusion.io.pretrained import shipped_folder
    except ImportError:
        return None
    return str(shipped_folder("digits"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default=default_run(), help="a class-conditional digits run folder")
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--no-doc", action="store_true", help="print the tables, write nothing")
    args = ap.parse_args()
    if args.run is None:
        raise SystemExit("give RUN: this install has no shipped digits model")
    command = " ".join(["python bench/app_load.py", *sys.argv[1:]])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="app_load_")) / "server.log"
    server = start_server(args.run, port, log)
    try:
        (model,) = [m["name"] for m in httpx.get(f"{base}/api/models").json()["models"]]
        burst(base, model, 0, 1, args.steps, args.n)  # the server loads the model
        args.job_seconds = burst(base, model, 0, 1, args.steps, args.n)[0].seconds  # one job alone
        print(f"server pid {server.pid} on port {port}; one job alone: {args.job_seconds:.2f} s", flush=True)
        bursts, rss = [], []
        for k in range(1, args.bursts + 1):
            outcomes = burst(base, model, k, args.requests, args.steps, args.n)
            rss.append(peak_rss_mb(server.pid))
            check_images(args.run, outcomes)
            bursts.append(outcomes)
            kinds = [o.kind for o in outcomes]
            print(
                f"burst {k}: done {kinds.count('done')}, busy {kinds.count('busy')}, error "
                f"{kinds.count('error')}; images equal the library's: "
                f"{sum(bool(o.equal) for o in outcomes)}; peak RSS {rss[-1]:.0f} MiB",
                flush=True,
            )
        load = load_table(bursts, rss, args, command)
        hostile, differ = hostile_table(base)
        after = burst(base, model, 99, 1, args.steps, args.n)
        check_images(args.run, after)
        assert after[0].kind == "done" and after[0].equal, f"the server stopped drawing: {after[0]}"
        hostile += "\n\nAfter them the server still drew a job, equal to the library's images."
        if server.poll() is not None:
            raise SystemExit(f"the server died:\n{log.read_text()}")
    finally:
        server.terminate()
        server.wait(30)
    print(load, hostile, sep="\n\n")
    if not args.no_doc:
        write_between("load", load)
        write_between("hostile", hostile)
        print(f"wrote {DOC}")
    mixed = [o for outcomes in bursts for o in outcomes if o.kind == "done" and not o.equal]
    if mixed or differ:
        raise SystemExit(f"{len(mixed)} done request(s) with other images; {differ} hostile answer(s) differ")


if __name__ == "__main__":
    main()

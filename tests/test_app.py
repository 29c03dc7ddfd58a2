"""The web app's API (nanodiffusion.app): its images are the library's, its PNGs carry settings that
draw them again, its queue is bounded and cancellable, and every hostile request gets one line
(400, 404 or 413), never a server error.

HOSTILE is the list of hostile requests with the answers they must get; bench/app_load.py sends
the same list to a real server and writes the answers into docs/app.md.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from app_reference import library_images
from hostile import png_bytes as header_png
from nanodiffusion.app import engine, jobs
from nanodiffusion.app.jobs import JobQueue
from nanodiffusion.app.server import MAX_BODY, create_app
from nanodiffusion.cli import main
from nanodiffusion.core.editing import mask_from_image
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.io.viz import load_image
from tiny_runs import train_tiny

pytestmark = pytest.mark.usefixtures("one_thread_module")


# --- the model, and the library's images to compare with ------------------------------------------
@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """The shipped digits model where the package has it, else a tiny class-conditional digits
    run trained once per session (about 10 s)."""
    try:
        from nanodiffusion.io.pretrained import shipped_folder
    except ImportError:
        return train_tiny(
            tmp_path_factory.mktemp("app") / "digits", "data.class_conditional=true", "run.steps=30"
        )
    return shipped_folder("digits")


@pytest.fixture(scope="session")
def models(digits_run) -> dict[str, engine.Model]:
    return {"digits": engine.Model.open("digits", str(digits_run))}


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models, running=1, waiting=4)) as c:
        yield c


def url_of(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def bytes_of(data_url: str) -> bytes:
    return base64.b64decode(data_url.partition(",")[2])


def pixels_of(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes_of(data_url))))


def events_of(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line]


def run_job(client, **settings) -> list[dict]:
    """The events of one job of the model "digits" (TestClient reads the whole stream)."""
    return events_of(client.post("/api/jobs", json={"model": "digits", **settings}))


def done_images(events: list[dict]) -> np.ndarray:
    assert events[-1]["type"] == "done", events[-1]
    return np.stack([pixels_of(url) for url in events[-1]["images"]])


# an 8x8 grey picture and a mask that repaints its right half
PICTURE = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
MASK = np.zeros((8, 8), np.uint8)
MASK[:, 4:] = 255


# --- what the API answers ---------------------------------------------------------------------------
def test_models_lists_classes_conditioning_and_limits(client):
    answer = client.get("/api/models").json()
    (model,) = answer["models"]
    assert model["name"] == "digits"
    assert model["classes"] == [str(k) for k in range(10)]
    assert (model["conditioning"], model["size"], model["channels"]) == ("class", [8, 8], 1)
    assert answer["limits"] == {
        "steps": 200,
        "n": 16,
        "guidance": 30.0,
        "prompt": 300,
        "upload_bytes": 8 * 2**20,
        "upload_pixels": 4096 * 4096,
    }
    assert answer["samplers"] == list(SAMPLERS)
    assert answer["queue"] == {"running": 1, "waiting": 4}


@pytest.mark.parametrize(
    "settings",
    [
        {"class_label": 3, "steps": 6, "n": 3, "seed": 7},
        {"sampler": "euler-a", "steps": 5, "n": 2, "seed": 11, "guidance": 2.5},  # no class: "no class" input
    ],
    ids=["class 3 dpm++2m", "euler-a guided, no class"],
)
def test_generate_equals_the_library_and_streams_every_step_first(client, digits_run, settings):
    events = run_job(client, **settings)
    kinds = [e["type"] for e in events]
    steps = settings["steps"]
    assert kinds == ["queued", "start", *["step"] * steps, "done"]
    assert [e["i"] for e in events if e["type"] == "step"] == list(range(1, steps + 1))
    for step in events[2:-1]:  # each step shows x_t and x0_hat, each a PNG grid of the n images
        assert pixels_of(step["x"]).shape == pixels_of(step["x0"]).shape
    ours = done_images(events)
    assert np.array_equal(ours, library_images(digits_run, **settings))


def test_png_settings_restore_and_draw_the_same_image(client):
    events = run_job(client, class_label=5, steps=4, n=2, seed=3, sampler="ddim")
    url = events[-1]["images"][1]
    restored = client.post("/api/settings", json={"image": url}).json()
    assert restored.pop("index") == 1
    assert restored == events[-1]["settings"]
    assert restored["guidance"] == 4.0  # the default scale, written out
    again = run_job(client, **{k: v for k, v in restored.items() if k != "model"})
    assert bytes_of(again[-1]["images"][1]) == bytes_of(url)  # the same pixels and the same chunks


def test_png_parameters_read_like_automatic1111(client):
    events = run_job(client, class_label=2, steps=3, n=1, seed=42, guidance=3)
    text = Image.open(io.BytesIO(bytes_of(events[-1]["images"][0]))).text["parameters"]
    prompt, negative, params = text.split("\n")
    assert (prompt, negative) == ("", "Negative prompt: ")
    # AUTOMATIC1111's own pattern for its "key: value, ..." line (modules/infotext_utils.py)
    pairs = dict(re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', params))
    assert params.startswith("Steps: 3, Sampler: dpm++2m, CFG scale: 3, Seed: 42, ")
    assert (int(pairs["Steps"]), float(pairs["CFG scale"]), int(pairs["Seed"])) == (3, 3.0, 42)
    assert pairs["Class"] == "2"


def test_inpaint_keeps_the_unmasked_pixels_and_equals_the_library(client, digits_run):
    settings = {"class_label": 1, "steps": 5, "n": 2, "seed": 9}
    events = run_job(
        client,
        mode="inpaint",
        method="replace",
        image=url_of(png_of(PICTURE)),
        mask=url_of(png_of(MASK)),
        **settings,
    )
    ours = done_images(events)
    assert np.array_equal(ours[:, :, :4], np.broadcast_to(PICTURE[:, :4], (2, 8, 4)))
    assert not np.array_equal(ours[:, :, 4:], np.broadcast_to(PICTURE[:, 4:], (2, 8, 4)))
    known = mask_from_image(load_image(Image.fromarray(MASK), channels=1)[0])
    init = load_image(Image.fromarray(PICTURE), channels=1)
    expected = library_images(digits_run, init_image=init, known=known, inpaint="replace", **settings)
    assert np.array_equal(ours, expected)


def test_img2img_at_strength_1_is_plain_generation(client):
    """sample_images: "strength 1 without a mask gives plain sampling's images"."""
    settings = {"class_label": 7, "steps": 5, "n": 2, "seed": 4}
    edited = run_job(client, mode="img2img", strength=1.0, image=url_of(png_of(PICTURE)), **settings)
    assert np.array_equal(done_images(edited), done_images(run_job(client, **settings)))
    nearer = run_job(client, mode="img2img", strength=0.3, image=url_of(png_of(PICTURE)), **settings)
    assert not np.array_equal(done_images(nearer), done_images(edited))


def test_an_upscaler_without_its_image_is_refused_in_one_line():
    upscaler = engine.Model("up", "never-loaded", info={"task": "upscale", "conditioning": "none"})
    with TestClient(create_app({"up": upscaler})) as c:
        answer = c.post("/api/jobs", json={"model": "up", "mode": "upscale"})
    assert (answer.status_code, answer.json()) == (400, {"error": "upscale needs an image"})


# --- the queue --------------------------------------------------------------------------------------
@pytest.fixture
def loop():
    """An event loop in a thread: the consumer side of the jobs' events."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def next_event(job, loop, timeout: float = 10) -> dict:
    return asyncio.run_coroutine_threadsafe(asyncio.wait_for(job.events.get(), timeout), loop).result()


def events_until_end(job, loop) -> list[str]:
    kinds = []
    while not kinds or kinds[-1] != "end":
        kinds.append(next_event(job, loop)["type"])
    return kinds


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Gates:
    """Work that blocks until the test opens its gate, one gate per job (by ticket)."""

    def __init__(self):
        self.gates: dict[int, threading.Event] = {}
        self.started: list[int] = []

    def work(self, job) -> None:
        self.started.append(job.ticket)
        assert self.gates.setdefault(job.ticket, threading.Event()).wait(10)

    def open(self, ticket: int) -> None:
        self.gates.setdefault(ticket, threading.Event()).set()


def test_queue_admits_running_plus_waiting_and_the_line_moves_up(loop):
    queue, gates = JobQueue(running=1, waiting=4), Gates()
    admitted = [queue.submit(gates.work, loop) for _ in range(5)]
    assert all(admitted) and queue.submit(gates.work, loop) is None  # the 6th is refused
    wait_for(lambda: gates.started == [0])
    assert [job.position() for job in admitted] == [0, 1, 2, 3, 4]
    gates.open(0)
    wait_for(lambda: gates.started == [0, 1])
    assert [job.position() for job in admitted[1:]] == [0, 1, 2, 3]
    assert queue.submit(gates.work, loop) is not None  # a place came free
    for ticket in range(6):
        gates.open(ticket)
    wait_for(lambda: not queue.jobs)
    assert gates.started == [0, 1, 2, 3, 4, 5]  # in order of admission
    queue.shutdown()


def test_a_waiting_job_cancelled_never_starts(loop):
    queue, gates = JobQueue(running=1, waiting=1), Gates()
    first, second = queue.submit(gates.work, loop), queue.submit(gates.work, loop)
    wait_for(lambda: gates.started == [0])
    second.cancel()
    gates.open(0)
    assert events_until_end(second, loop) == ["cancelled", "end"]
    assert events_until_end(first, loop) == ["start", "end"]
    assert gates.started == [0] and second.started is None
    queue.shutdown()


def test_a_running_job_cancelled_stops_in_the_reporter_within_one_step(loop):
    queue, allowed, raised_at = JobQueue(running=1, waiting=0), threading.Semaphore(0), []
    d = {"x": torch.zeros(1, 1, 4, 4), "x0_hat": torch.zeros(1, 1, 4, 4), "sigma": 1.0}

    def work(job) -> None:
        reporter = engine.Reporter(job.emit, job.cancelled, steps=100)
        for i in range(100):
            assert allowed.acquire(timeout=10)
            try:
                reporter({**d, "i": i})
            except engine.Cancelled:
                raised_at.append(i)
                raise

    job = queue.submit(work, loop)
    assert next_event(job, loop)["type"] == "start"
    for i in range(3):
        allowed.release()
        step = next_event(job, loop)
        assert (step["type"], step["i"]) == ("step", i + 1)
    job.cancel()
    allowed.release()
    assert events_until_end(job, loop) == ["cancelled", "end"]
    assert raised_at in ([2], [3])  # the reporter checks before and after each step's previews
    queue.shutdown()


def test_durations_of_finished_jobs_set_retry_after(loop, monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(jobs, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    queue, gates = JobQueue(running=1, waiting=4), Gates()
    for seconds in (10, 30, 20):

        def work(job, seconds=seconds) -> None:
            clock.now += seconds

        events_until_end(queue.submit(work, loop), loop)
    assert queue.durations == [10, 30, 20]
    held = [queue.submit(gates.work, loop) for _ in range(5)]
    wait_for(lambda: gates.started == [3])
    assert queue.retry_after() == 20 * 5  # the median job's time, for each job in line
    for job in held:
        gates.open(job.ticket)
    queue.shutdown()
    assert JobQueue(running=2, waiting=0).retry_after() == 1  # nothing in line, nothing measured


# --- the queue over HTTP ------------------------------------------------------------------------------
def test_a_full_line_answers_429_busy_and_a_job_is_cancelled_by_its_id(models, monkeypatch):
    release, generate = threading.Event(), engine.generate

    def held(entry, s, inputs, reporter):  # a job that runs until released (or cancelled)
        while not release.wait(0.01):
            reporter.check()
        return generate(entry, s, inputs, reporter)

    monkeypatch.setattr(engine, "generate", held)
    app = create_app(models, running=1, waiting=0)
    queue, answers = app.state.queue, []
    with TestClient(app) as c:
        first = threading.Thread(target=lambda: answers.append(run_job(c, steps=2, n=1)))
        first.start()
        wait_for(lambda: any(job.started for job in queue.jobs.values()))
        busy = c.post("/api/jobs", json={"model": "digits", "steps": 2, "n": 1})
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "2"  # 2 s a job, nothing measured
        assert busy.json() == {"error": "busy: 1 job(s) running and 0 waiting; try again in 2 s"}
        (job_id,) = queue.jobs
        assert c.post(f"/api/jobs/{job_id}/cancel").json() == {"cancelled": job_id}
        first.join(10)
        assert [e["type"] for e in answers[0]] == ["queued", "start", "cancelled"]
        gone = c.post(f"/api/jobs/{job_id}/cancel")  # finished: no longer known
        assert (gone.status_code, gone.json()) == (
            404,
            {"error": "no such job (it finished, or was never made)"},
        )
        release.set()
        assert run_job(c, steps=2, n=1)[-1]["type"] == "done"  # the place is free again


# --- hostile requests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    """A request no client should send, and the answer it must get: a status and one line."""

    name: str
    route: str  # "POST /api/jobs"
    body: Callable[[], bytes] | None  # made when sent: some are megabytes
    status: int
    message: str


def job(**settings) -> Callable[[], bytes]:
    """A job's JSON body: the model "digits", two steps of one image, and `settings`."""
    return lambda: json.dumps({"model": "digits", "steps": 2, "n": 1, **settings}).encode()


def raw(text: str | bytes) -> Callable[[], bytes]:
    return lambda: text.encode() if isinstance(text, str) else text


def upload(make: Callable[[], bytes], kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(make()).decode()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PICTURE).save(buffer, "JPEG")
    return buffer.getvalue()


def image(array: np.ndarray = PICTURE) -> str:
    return url_of(png_of(array))


def between(key: str, low, high, got: str) -> str:
    return f"{key} must be an integer from {low} to {high}, got {got}"


STEPS, N, SEED, CLASS = (
    between(k, lo, hi, "{}")
    for k, lo, hi in [("steps", 1, 200), ("n", 1, 16), ("seed", 0, 2**63 - 1), ("class_label", 0, 9)]
)
GUIDANCE = "guidance must be a number from 0 to 30, got {}"
BOMB = (  # Pillow's words, as the library's commands show them (docs/hostile-inputs.md)
    "Image size (10000000000 pixels) exceeds limit of 178956970 pixels, "
    "could be decompression bomb DOS attack."
)
NO_SETTINGS = "this PNG carries no nanodiffusion settings (no 'nanodiffusion' text chunk)"
NOT_PNG = "settings travel in a PNG's text chunks, and this file is not a PNG"
JOBS, SETTINGS, FORWARD = "POST /api/jobs", "POST /api/settings", "POST /api/forward"
HOSTILE = [
    Hostile("unknown model", JOBS, job(model="sd-xl"), 400, 'model must be one of digits, got "sd-xl"'),
    Hostile(
        "a path as the model",
        JOBS,
        job(model="../../etc/passwd"),
        400,
        'model must be one of digits, got "../../etc/passwd"',
    ),
    Hostile("the root as the model", JOBS, job(model="/"), 400, 'model must be one of digits, got "/"'),
    Hostile(
        "a path as the schedule's model",
        "GET /api/schedule?model=%2Fetc%2Fpasswd",
        None,
        400,
        'model must be one of digits, got "/etc/passwd"',
    ),
    Hostile("unknown setting", JOBS, job(eta=1), 400, 'unknown setting "eta"'),
    Hostile("steps 0", JOBS, job(steps=0), 400, STEPS.format(0)),
    Hostile("steps 1e9", JOBS, job(steps=1e9), 400, STEPS.format(1000000000.0)),
    Hostile('steps "abc"', JOBS, job(steps="abc"), 400, STEPS.format('"abc"')),
    Hostile("steps [1]", JOBS, job(steps=[1]), 400, STEPS.format("[1]")),
    Hostile("steps true", JOBS, job(steps=True), 400, STEPS.format("true")),
    Hostile("steps 2.5", JOBS, job(steps=2.5), 400, STEPS.format(2.5)),
    Hostile("n 0", JOBS, job(n=0), 400, N.format(0)),
    Hostile("n 17", JOBS, job(n=17), 400, N.format(17)),
    Hostile("guidance -1", JOBS, job(guidance=-1), 400, GUIDANCE.format(-1)),
    Hostile("guidance NaN", JOBS, raw('{"model": "digits", "guidance": NaN}'), 400, GUIDANCE.format("NaN")),
    Hostile(
        "guidance Infinity",
        JOBS,
        raw('{"model": "digits", "guidance": Infinity}'),
        400,
        GUIDANCE.format("Infinity"),
    ),
    Hostile(
        "guidance 1e309",
        JOBS,
        raw('{"model": "digits", "guidance": 1e309}'),
        400,
        GUIDANCE.format("Infinity"),
    ),
    Hostile("seed -1", JOBS, job(seed=-1), 400, SEED.format(-1)),
    Hostile("seed 2^63", JOBS, job(seed=2**63), 400, SEED.format(2**63)),
    Hostile(
        "seed of 5000 digits",
        JOBS,
        raw('{"model": "digits", "seed": ' + "9" * 5000 + "}"),
        400,
        SEED.format("Infinity"),
    ),
    Hostile(
        "prompt of 301 characters", JOBS, job(prompt="a" * 301), 400, "prompt is 301 characters; at most 300"
    ),
    Hostile(
        "negative prompt a number", JOBS, job(negative_prompt=7), 400, "negative_prompt must be text, got int"
    ),
    Hostile(
        "prompt to a class model",
        JOBS,
        job(prompt="a red circle"),
        400,
        "the model digits draws without a prompt (class conditioning)",
    ),
    Hostile("class 10 of 10", JOBS, job(class_label=10), 400, CLASS.format(10)),
    Hostile("class -1", JOBS, job(class_label=-1), 400, CLASS.format(-1)),
    Hostile(
        "sampler unknown",
        JOBS,
        job(sampler="plms"),
        400,
        f'sampler must be one of {", ".join(SAMPLERS)}, got "plms"',
    ),
    Hostile(
        "mode unknown",
        JOBS,
        job(mode="outpaint"),
        400,
        'mode must be one of generate, img2img, inpaint, control, upscale, got "outpaint"',
    ),
    Hostile("view unknown", JOBS, job(view="grid"), 400, 'view must be single, compare or sweep, got "grid"'),
    Hostile(
        "strength 2",
        JOBS,
        job(mode="img2img", strength=2, image=image()),
        400,
        "strength must be a number from 0 to 1, got 2",
    ),
    Hostile(
        "method 'model' on a non-inpaint run",
        JOBS,
        job(mode="inpaint", method="model", image=image(), mask=image(MASK)),
        400,
        "the method 'model' is for a mask-conditioned inpainting model; others use replace or repaint",
    ),
    Hostile(
        "upscale with a non-upscaler",
        JOBS,
        job(mode="upscale", image=image()),
        400,
        "the mode upscale needs an upscaling model; digits is not one",
    ),
    Hostile(
        "control without a ControlNet",
        JOBS,
        job(mode="control", control=image()),
        400,
        "the model digits was offered without a ControlNet",
    ),
    Hostile(
        "upload not a data URL",
        JOBS,
        job(mode="img2img", image="file:///etc/passwd"),
        400,
        "the image must be sent as a data: URL (data:image/png;base64,...)",
    ),
    Hostile(
        "upload a number",
        JOBS,
        job(mode="img2img", image=5),
        400,
        "the image must be sent as a data: URL (data:image/png;base64,...)",
    ),
    Hostile(
        "upload not base64",
        JOBS,
        job(mode="img2img", image="data:image/png;base64,@@@"),
        400,
        "the image is not valid base64",
    ),
    Hostile(
        "upload not an image",
        JOBS,
        job(mode="img2img", image=upload(lambda: b"<html></html>")),
        400,
        "cannot read the image upload (image): not a picture Pillow reads",
    ),
    Hostile(
        "upload a 100000x100000 PNG bomb",
        JOBS,
        job(mode="img2img", image=upload(lambda: header_png(100000, 100000, rows=1))),
        400,
        f"cannot read the image upload (image): {BOMB}",
    ),
    Hostile(
        "upload over 8 MB",
        JOBS,
        lambda: job(mode="img2img", image="data:image/png;base64," + "A" * (12 * 2**20))(),
        413,
        "the image is larger than the 8 MB allowed",
    ),
    Hostile(
        "mask of the wrong size",
        JOBS,
        job(mode="inpaint", image=image(), mask=image(MASK[:4, :4])),
        400,
        "the mask is 4x4 and the image 8x8; they must be the same size",
    ),
    Hostile(
        "mask with no white pixels",
        JOBS,
        job(mode="inpaint", image=image(), mask=image(MASK * 0)),
        400,
        "the mask has no white pixels: nothing to repaint",
    ),
    Hostile("inpaint without an image", JOBS, job(mode="inpaint"), 400, "inpaint needs an image"),
    Hostile(
        "inpaint without a mask",
        JOBS,
        job(mode="inpaint", image=image()),
        400,
        "inpaint needs a mask (white where to repaint)",
    ),
    Hostile("img2img without an image", JOBS, job(mode="img2img"), 400, "img2img needs an image"),
    Hostile("an upload for generate", JOBS, job(image=image()), 400, "the mode generate takes no image"),
    Hostile("a body that is not JSON", JOBS, raw("steps=20&n=4"), 400, "the request body is not JSON"),
    Hostile("an empty body", JOBS, raw(""), 400, "the request body is not JSON"),
    Hostile("a JSON array body", JOBS, raw("[1, 2]"), 400, "the request must be a JSON object of settings"),
    Hostile(
        "JSON nested 100000 deep", JOBS, raw("[" * 100000), 400, "the request body is JSON nested too deeply"
    ),
    Hostile(
        "a body over 24 MB",
        JOBS,
        lambda: b" " * (MAX_BODY + 1),
        413,
        "the request is larger than the 24 MB allowed",
    ),
    Hostile(
        "settings from a JPEG",
        SETTINGS,
        lambda: json.dumps({"image": upload(jpeg, "jpeg")}).encode(),
        400,
        NOT_PNG,
    ),
    Hostile(
        "settings from a PNG without them",
        SETTINGS,
        lambda: json.dumps({"image": image()}).encode(),
        400,
        NO_SETTINGS,
    ),
    Hostile("settings without an image", SETTINGS, raw("{}"), 400, 'send {"image": a PNG data: URL}'),
    Hostile(
        "forward with u 2",
        FORWARD,
        lambda: json.dumps({"model": "digits", "u": 2, "image": image()}).encode(),
        400,
        "u must be a number from 0 to 1, got 2",
    ),
    Hostile(
        "forward without an image",
        FORWARD,
        raw('{"model": "digits"}'),
        400,
        "the forward process needs an image (generate one, or upload one)",
    ),
    Hostile(
        "cancel an unknown job",
        "POST /api/jobs/feedfacecafebeef/cancel",
        None,
        404,
        "no such job (it finished, or was never made)",
    ),
]


def send(client: httpx.Client, hostile: Hostile) -> httpx.Response:
    """Send `hostile` with `client` (a TestClient, or an httpx.Client on a real server)."""
    method, path = hostile.route.split(" ")
    body = None if hostile.body is None else hostile.body()
    headers = None if body is None else {"Content-Type": "application/json"}
    return client.request(method, path, content=body, headers=headers)


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_a_hostile_request_gets_its_one_line(client, hostile):
    answer = send(client, hostile)
    assert (answer.status_code, answer.json()) == (hostile.status, {"error": hostile.message})
    assert "\n" not in hostile.message


def test_the_server_still_serves_after_the_hostile_requests(client, digits_run):
    assert not client.app.state.queue.jobs
    events = run_job(client, class_label=0, steps=3, n=2, seed=1)
    assert np.array_equal(
        done_images(events), library_images(digits_run, class_label=0, steps=3, n=2, seed=1)
    )


# --- the command, and a client that leaves ------------------------------------------------------------
def test_nanodiff_app_refuses_a_remote_host_without_allow_remote(digits_run, capsys):
    assert main(["app", "--host", "0.0.0.0", str(digits_run)]) == 2
    assert capsys.readouterr().err == (
        "nanodiff: error: --host 0.0.0.0 would let other machines use the app; "
        "add --allow-remote if you mean it\n"
    )


def test_nanodiff_app_refuses_a_missing_folder_in_one_line(capsys):
    assert main(["app", "some/missing/folder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanodiff: error: run folder not found: some/missing/folder")
    assert err.count("\n") == 1


@pytest.fixture
def server(models):
    """A real uvicorn server on a free loopback port, in a thread: (its base URL, its queue)."""
    import uvicorn

    app = create_app(models, running=1, waiting=4)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app.state.queue
    server.should_exit = True
    thread.join(10)


def test_a_client_that_leaves_cancels_its_job(server, monkeypatch):
    base, queue = server
    steps, report = [], engine.Reporter.__call__
    monkeypatch.setattr(engine.Reporter, "__call__", lambda self, d: (steps.append(d["i"]), report(self, d)))
    with httpx.Client(base_url=base, timeout=10) as c:
        with c.stream("POST", "/api/jobs", json={"model": "digits", "steps": 200, "n": 16}) as answer:
            kinds = (json.loads(line)["type"] for line in answer.iter_lines())
            assert next(kind for kind in kinds if kind != "queued") == "start"
            assert next(kinds) == "step"
        wait_for(lambda: not queue.jobs, timeout=2)  # the stream closed: the job stopped
        made = len(steps)
        time.sleep(0.3)
        assert len(steps) == made < 200
        assert c.get("/api/models").status_code == 200

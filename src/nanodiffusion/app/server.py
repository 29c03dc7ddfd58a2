"""The web app's HTTP side: a Starlette app that serves one plain page (no build step, nothing
fetched from outside the machine) and a small JSON API over ``engine`` and ``jobs``.

    GET  /                      the page
    GET  /api/models            the models this server was started with, and the bounds
    POST /api/jobs              settings (+ uploads) -> a stream of NDJSON events: queued (with
                                the place in line), start, step (x_t and x0_hat), row, done, or
                                error / cancelled; 429 with Retry-After when the line is full
    POST /api/jobs/{id}/cancel  stop a job (a waiting one never starts; a running one within a step)
    POST /api/forward           x_t at time u of a model's schedule, with alpha_bar and SNR
    GET  /api/schedule          alpha_bar and log SNR over time, for the plots
    POST /api/settings          the settings a dropped PNG carries

A bad request gets HTTP 400 (413 past a size limit) and {"error": one line}; no path from a
client reaches the file system (a model is chosen by name among the server's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nanodiffusion.app import engine
from nanodiffusion.app.jobs import Job, JobQueue
from nanodiffusion.errors import NanodiffError

MAX_BODY = engine.MAX_UPLOAD_BYTES * 3  # an image, a mask and an edge drawing, base64
HEARTBEAT = 1.0  # seconds between "queued" events while a job waits (a left client is noticed)
# The page may load only what this server serves (a test checks that it asks for nothing else).
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
)


def error(message: str, status: int = 400, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def refused(e: NanodiffError) -> JSONResponse:
    """A bad request's one line: 413 for one past a size limit, else 400."""
    return error(str(e), 413 if isinstance(e, engine.TooLarge) else 400)


async def read_json(request: Request):
    """The request's JSON body, at most MAX_BODY bytes, or NanodiffError."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise engine.TooLarge(f"the request is larger than the {MAX_BODY // 2**20} MB allowed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise engine.TooLarge(f"the request is larger than the {MAX_BODY // 2**20} MB allowed")
    try:  # an integer of thousands of digits reads as infinity, and is refused by its bounds
        return json.loads(body, parse_int=lambda digits: int(digits) if len(digits) < 100 else math.inf)
    except ValueError:
        raise NanodiffError("the request body is not JSON") from None
    except RecursionError:
        raise NanodiffError("the request body is JSON nested too deeply") from None


def create_app(models: dict[str, engine.Model], running: int = 1, waiting: int = 4) -> Starlette:
    """The app serving `models` (name -> Model) with a queue of `running` + `waiting` jobs."""
    queue = JobQueue(running, waiting)
    static = resources.files("nanodiffusion.app") / "static"

    async def page(request: Request) -> Response:
        return HTMLResponse((static / "index.html").read_text(), headers={"Content-Security-Policy": CSP})

    async def list_models(request: Request) -> Response:
        from nanodiffusion.core.samplers import SAMPLERS

        return JSONResponse(
            {
                "models": [m.describe() for m in models.values()],
                "samplers": list(SAMPLERS),
                "modes": list(engine.MODES),
                "methods": list(engine.METHODS),
                "compare": list(engine.COMPARE),
                "sweep": list(engine.SWEEP),
                "limits": {
                    "steps": engine.MAX_STEPS,
                    "n": engine.MAX_N,
                    "guidance": engine.MAX_GUIDANCE,
                    "prompt": engine.MAX_PROMPT,
                    "upload_bytes": engine.MAX_UPLOAD_BYTES,
                    "upload_pixels": engine.MAX_UPLOAD_PIXELS,
                },
                "queue": {"running": queue.running, "waiting": queue.waiting},
            }
        )

    async def submit(request: Request) -> Response:
        try:
            body = await read_json(request)
            view = body.pop("view", "single") if isinstance(body, dict) else "single"
            if view not in ("single", "compare", "sweep"):
                raise NanodiffError(f"view must be single, compare or sweep, got {engine.shown(view)}")
            uploads = {k: body.pop(k) for k in engine.UPLOADS if isinstance(body, dict) and body.get(k)}
            settings = engine.parse_settings(body, models)
            inputs = await asyncio.to_thread(engine.prepare, models[settings.model], settings, uploads)
        except NanodiffError as e:
            return refused(e)
        except ClientDisconnect:
            return Response(status_code=499)
        entry = models[settings.model]

        def work(job: Job) -> None:
            reporter = engine.Reporter(job.emit, job.cancelled, settings.steps)
            t0 = time.perf_counter()
            if view == "single":
                images = engine.finished(engine.generate(entry, settings, inputs, reporter), settings)
            else:  # the rows are emitted as they are done
                (engine.compare if view == "compare" else engine.sweep)(
                    entry, settings, inputs, reporter, job.emit
                )
                images = []
            job.emit(
                {
                    "type": "done",
                    "images": images,
                    "settings": settings.to_dict(),
                    "seconds": time.perf_counter() - t0,
                }
            )

        job = queue.submit(work, asyncio.get_running_loop())
        if job is None:
            wait = queue.retry_after()
            return error(
                f"busy: {queue.running} job(s) running and {queue.waiting} waiting; try again in {wait} s",
                429,
                {"Retry-After": str(wait)},
            )
        return StreamingResponse(stream(job), media_type="application/x-ndjson")

    async def stream(job: Job):
        """The job's events as NDJSON lines; when the client leaves (the stream is closed or
        cancelled), the job is cancelled."""
        try:
            yield line({"type": "queued", "job": job.id, "position": job.position()})
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), HEARTBEAT)
                except TimeoutError:
                    if job.started is None:
                        yield line({"type": "queued", "job": job.id, "position": job.position()})
                    else:
                        yield line({"type": "alive"})
                    continue
                if event["type"] == "end":
                    return
                yield line(event)
        finally:
            job.cancel()  # a no-op once the job is done; else the client left: stop its work

    async def cancel(request: Request) -> Response:
        job = queue.get(request.path_params["job"])
        if job is None:
            return error("no such job (it finished, or was never made)", 404)
        job.cancel()
        return JSONResponse({"cancelled": job.id})

    async def forward(request: Request) -> Response:
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise NanodiffError("the request must be a JSON object")
            entry = engine.model_of(body, models)
            u = engine.number_setting(body, "u", 0.0, 1.0, 0.5)
            seed = engine.integer_setting(body, "seed", 0, engine.MAX_SEED, 0)
            if not body.get("image"):
                raise NanodiffError("the forward process needs an image (generate one, or upload one)")
            result = await asyncio.to_thread(engine.forward, entry, body["image"], u, seed)
        except NanodiffError as e:
            return refused(e)
        return JSONResponse(result)

    async def schedule(request: Request) -> Response:
        try:
            entry = engine.model_of(dict(request.query_params), models)
            return JSONResponse(await asyncio.to_thread(engine.schedule_curves, entry))
        except NanodiffError as e:
            return refused(e)

    async def settings_of(request: Request) -> Response:
        try:
            body = await read_json(request)
            if not isinstance(body, dict) or not body.get("image"):
                raise NanodiffError('send {"image": a PNG data: URL}')
            return JSONResponse(engine.read_settings(body["image"]))
        except NanodiffError as e:
            return refused(e)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.shutdown()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/models", list_models),
            Route("/api/jobs", submit, methods=["POST"]),
            Route("/api/jobs/{job}/cancel", cancel, methods=["POST"]),
            Route("/api/forward", forward, methods=["POST"]),
            Route("/api/schedule", schedule),
            Route("/api/settings", settings_of, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.queue = queue
    return app


def line(event: dict) -> bytes:
    return (json.dumps(event) + "\n").encode()

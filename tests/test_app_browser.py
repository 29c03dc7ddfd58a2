"""The web app end to end in a real browser: Debian's chromium (/usr/bin/chromium) driven by
Playwright's Python package (no browser download), against the app served by uvicorn on a free
loopback port. One browser and one server per module; each test opens a fresh page.

Screenshots go to each test's tmp_path; with NANODIFF_SCREENSHOTS set they also go to
docs/images/ (app-generate.png, app-inpaint.png, app-explore.png) for docs/app.md, made with

    NANODIFF_SCREENSHOTS=1 NANODIFF_APP_RUN=runs/pretrained/digits \
        NANODIFF_APP_TEXT_RUN=runs/pretrained/shapes pytest tests/test_app_browser.py
"""

import base64
import contextlib
import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app_reference import controlled_run as reference_controlled_run
from app_reference import library_images, parts
from nanodiffusion.app import engine
from nanodiffusion.core.editing import mask_from_image
from nanodiffusion.core.samplers import get_sampler
from nanodiffusion.io.viz import load_image, to_uint8

uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
create_app = pytest.importorskip("nanodiffusion.app.server").create_app  # starlette: the app extra

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-quic",
]
# Whether a canvas (its id the argument) shows something other than one flat colour.
PAINTED = """(id) => {
  const c = document.getElementById(id), data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  return data.some((v, i) => v !== data[i % 4]);
}"""
DOCS_SCREENSHOTS = ("app-generate.png", "app-inpaint.png", "app-explore.png")
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
TIMEOUT = 60_000  # ms: a busy 2-core machine

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="the browser tests drive Debian's chromium: apt-get install chromium",
    ),
    pytest.mark.usefixtures("one_thread_module"),
]


# --- fixtures ------------------------------------------------------------------------------------
def shipped(name: str) -> Path | None:
    """The shipped model `name`'s folder, once the package ships it; else None."""
    try:
        from nanodiffusion.io.pretrained import shipped_folder
    except ImportError:
        return None
    folder = shipped_folder(name)
    return folder if (folder / "config.json").is_file() else None


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """NANODIFF_APP_RUN if set (a run folder: the docs' screenshots use a trained digits run),
    else the shipped class-conditional digits model; before it ships, a tiny class-conditional
    digits run trained here in seconds (the tests compare with the library, not with digits)."""
    if os.environ.get("NANODIFF_APP_RUN"):
        return Path(os.environ["NANODIFF_APP_RUN"])
    folder = shipped("digits")
    if folder is not None:
        return folder
    from tiny_runs import train_tiny

    return train_tiny(tmp_path_factory.mktemp("app-browser") / "digits", "data.class_conditional=true")


@pytest.fixture(scope="module")
def text_run() -> Path | None:
    """A latent text-to-image run: NANODIFF_APP_TEXT_RUN if set, else the shipped shapes model,
    else None (its test skips)."""
    if os.environ.get("NANODIFF_APP_TEXT_RUN"):
        return Path(os.environ["NANODIFF_APP_TEXT_RUN"])
    return shipped("shapes")


@contextlib.contextmanager
def serve(models: dict):
    """The app over `models`, served by uvicorn in a thread on a free loopback port: (origin, app)."""
    app = create_app(models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(digits_run, text_run):
    """The app over the digits model (the first, so the page's default) and the text run if
    there is one: (origin, app)."""
    models = {"digits": engine.Model.open("digits", str(digits_run))}
    if text_run is not None:
        models["shapes"] = engine.Model.open("shapes", str(text_run))
    with serve(models) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh page on the app, recording every request it makes and every error it reports."""

    def __init__(self, browser, origin: str, out: Path):
        self.origin, self.out = origin, out
        self.context = browser.new_context(viewport={"width": 1180, "height": 760})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.requests: list[str] = []
        self.job_bodies: list[dict] = []  # the JSON of each POST /api/jobs
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on(
            "console", lambda m: m.type == "error" and self.errors.append(f"console error: {m.text}")
        )
        # Anything for another host is refused, so a stray CDN or analytics call fails here too.
        self.page.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith(origin + "/") else route.abort(),
        )
        self.page.goto(origin + "/")
        self.loaded()

    def loaded(self) -> None:
        """Wait until the page has asked the server for its models."""
        self.until("() => document.querySelectorAll('#model option').length > 0")

    def until(self, predicate: str, arg=None) -> None:
        """Wait until the JavaScript function `predicate` returns true (a function, not an
        expression: Playwright evaluates expressions with eval, which the page's CSP refuses)."""
        try:
            self.page.wait_for_function(predicate, arg=arg)
        except sync_api.TimeoutError:
            status = self.page.text_content("#status")
            raise AssertionError(f"timed out: {predicate}; the status says {status!r}") from None

    def _request(self, request) -> None:
        self.requests.append(request.url)
        if request.url == self.origin + "/api/jobs":
            self.job_bodies.append(json.loads(request.post_data))

    def steps(self) -> int:
        """Step events received so far (body[data-steps])."""
        return int(self.page.evaluate("Number(document.body.dataset.steps || 0)"))

    def set_settings(self, **fields) -> None:
        """Fill the form: sampler and class are selects, the rest inputs."""
        for key, value in fields.items():
            if key in ("sampler", "class"):
                self.page.select_option(f"#{key}", str(value))
            else:
                self.page.fill(f"#{key}", str(value))

    def run(self, button: str = "#generate", done: str = "done in") -> None:
        """Press `button` and wait until the job's status says `done`."""
        self.page.click(button)
        self.until(
            "(text) => document.getElementById('status').textContent.includes(text) && "
            "!document.getElementById('generate').disabled",
            done,
        )

    def results(self) -> list[str]:
        """The result images' src (PNG data URLs), in order."""
        return self.page.eval_on_selector_all("#results img.result", "els => els.map(e => e.src)")

    def shot(self, name: str) -> None:
        """A screenshot into the test's folder, and into docs/images/ when NANODIFF_SCREENSHOTS is set."""
        self.page.screenshot(path=str(self.out / name), full_page=True)
        if os.environ.get("NANODIFF_SCREENSHOTS") and name in DOCS_SCREENSHOTS:
            self.page.screenshot(path=str(DOCS_IMAGES / name), full_page=True)


@contextlib.contextmanager
def open_page(browser, origin: str, out: Path):
    """A fresh Page; closed after, and then it must have reported no error."""
    view = Page(browser, origin, out)
    try:
        yield view
    finally:
        view.context.close()
    assert not view.errors, view.errors


@pytest.fixture
def app_page(browser, server, tmp_path):
    with open_page(browser, server[0], tmp_path) as view:
        yield view


def png_bytes(data_url: str) -> bytes:
    head, _, payload = data_url.partition(",")
    assert head == "data:image/png;base64", head[:40]
    return base64.b64decode(payload)


def pixels(data_url_or_bytes) -> np.ndarray:
    """A PNG's pixels as uint8 [H, W] (grey) or [H, W, C]."""
    raw = png_bytes(data_url_or_bytes) if isinstance(data_url_or_bytes, str) else data_url_or_bytes
    return np.array(Image.open(io.BytesIO(raw)))


# --- tests ---------------------------------------------------------------------------------------
def test_page_asks_nothing_outside_the_server(app_page):
    page = app_page
    page.run()  # a job too: its requests and previews stay on the server as well
    page.shot("loaded.png")
    assert any(url.endswith("/static/app.js") for url in page.requests)
    assert any(url.endswith("/api/jobs") for url in page.requests)
    outside = [url for url in page.requests if not url.startswith(page.origin + "/")]
    assert not outside, outside
    assert not page.errors, page.errors


def test_generate_streams_previews_before_the_result(app_page):
    page = app_page
    # What the page shows, in the order it happened: one observer of both, so its records keep
    # their order even when many events arrive in one chunk.
    page.page.evaluate(
        """() => {
          window.order = [];
          new MutationObserver((records) => records.forEach((r) => {
            if (r.target.id === "preview-x" && r.attributeName === "src") window.order.push("preview");
            if (r.target.id === "results" && r.addedNodes.length) window.order.push("result");
          })).observe(document.getElementById("output"),
                      { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
        }"""
    )
    page.set_settings(**{"class": 3, "steps": 12, "n": 4})
    page.run()
    order = page.page.evaluate("window.order")
    assert order == ["preview"] * 12 + ["result"] * 4, order  # every step's x_t, then the images
    assert page.steps() == 12  # one step event per sampler step (dpm++2m: one per step)
    assert page.page.get_attribute("#preview-x0", "src").startswith("data:image/png;base64,")
    assert page.page.evaluate("document.getElementById('progress').value") == 1
    assert len(page.results()) == 4
    page.shot("generate.png")


def test_result_equals_the_library_image(app_page, digits_run):
    page = app_page
    page.set_settings(**{"class": 5, "sampler": "euler", "steps": 8, "seed": 11, "n": 3})
    page.run()
    shown = np.stack([pixels(url) for url in page.results()])
    expected = library_images(digits_run, n=3, sampler="euler", steps=8, seed=11, class_label=5)  # grey
    assert shown.dtype == np.uint8 and shown.shape == expected.shape  # the model's own size
    np.testing.assert_array_equal(shown, expected)


@pytest.mark.slow
def test_prompt_draws_the_library_image(app_page, text_run):
    if text_run is None:
        pytest.skip("no text-to-image run: the shipped shapes model, or NANODIFF_APP_TEXT_RUN")
    page = app_page
    page.page.select_option("#model", "shapes")
    assert page.page.is_visible("#prompt") and not page.page.is_visible("#class")
    prompt = "a red circle above a blue square"
    page.page.fill("#prompt", prompt)
    page.set_settings(steps=20, n=4, seed=2)
    page.run()
    assert page.job_bodies[-1]["prompt"] == prompt
    shown = np.stack([pixels(url) for url in page.results()])
    np.testing.assert_array_equal(
        shown, library_images(text_run, n=4, sampler="dpm++2m", steps=20, seed=2, prompt=prompt)
    )
    page.shot("app-generate.png")


def test_inpaint_keeps_the_unmasked_pixels(app_page):
    page = app_page
    page.set_settings(**{"class": 2, "steps": 10, "seed": 4, "n": 1})
    page.run()
    (original,) = page.results()
    page.page.click("#tabs button[data-tab=edit]")
    assert page.page.text_content("#generate") == "Run the edit"
    page.page.select_option("#mode", "inpaint")
    page.page.click("#use-last")
    canvas = page.page.locator("#edit-canvas")
    page.until(PAINTED, "edit-canvas")  # the edit image is drawn onto the canvas
    page.page.locator("#brush").fill("8")  # a radius of 8/64 of the width: one pixel of 8
    box = canvas.bounding_box()
    # A stroke across the upper middle: a third of the way down, from a quarter to three quarters.
    y = box["y"] + box["height"] * 0.35
    page.page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=12)
    page.page.mouse.up()
    page.shot("painted.png")
    page.run()
    (edited,) = page.results()
    body = page.job_bodies[-1]
    assert body["mode"] == "inpaint" and body["method"] == "replace"
    # The mask the page sent, read as the server reads it: 1 = keep.
    known = mask_from_image(load_image(Image.open(io.BytesIO(png_bytes(body["mask"]))), channels=1)[0])[0, 0]
    keep = known.bool().numpy()
    assert 0 < (~keep).sum() < keep.size / 2, (~keep).sum()  # the stroke, and only the stroke
    before, after = pixels(original), pixels(edited)
    np.testing.assert_array_equal(after[keep], before[keep])
    assert (after[~keep] != before[~keep]).any()
    page.shot("app-inpaint.png")


@pytest.fixture(scope="module")
def controlled_run(tmp_path_factory):
    """A tiny class-conditional digits run and a ControlNet trained on it, in seconds: (run, controlnet)."""
    return reference_controlled_run(tmp_path_factory.mktemp("app-browser-cn"))


@pytest.mark.slow  # a run and a ControlNet to train, and a server of their own
def test_controlnet_follows_edges_drawn_on_a_blank_canvas(browser, controlled_run, tmp_path):
    from nanodiffusion.inference.sampling import Control
    from nanodiffusion.nets.controlnet import load_controlnet

    run, cn = controlled_run
    models = {"digits-cn": engine.Model.open("digits-cn", str(run), controlnet=str(cn))}
    with serve(models) as (origin, _), open_page(browser, origin, tmp_path) as page:
        page.page.click("#tabs button[data-tab=edit]")
        page.page.select_option("#mode", "control")  # no image chosen: the edges need none
        page.until(  # the canvas is drawn: opaque black (the page's placeholder is transparent)
            "() => document.getElementById('edit-canvas').getContext('2d')"
            ".getImageData(0, 0, 1, 1).data[3] === 255"
        )
        box = page.page.locator("#edit-canvas").bounding_box()
        x = box["x"] + box["width"] * 2.5 / 8  # down the middle of column 2
        page.page.mouse.move(x, box["y"] + 2)
        page.page.mouse.down()
        page.page.mouse.move(x, box["y"] + box["height"] - 2, steps=12)
        page.page.mouse.up()
        page.set_settings(**{"class": 4, "steps": 5, "n": 2})
        page.run()
        body = page.job_bodies[-1]
        assert body["mode"] == "control" and "image" not in body
        drawn = load_image(Image.open(io.BytesIO(png_bytes(body["control"]))), (8, 8), 1)
        control = (drawn > 0).float()  # the edge map, as the server reads the drawing
        assert control[0, 0, :, 2].all() and control.sum() < 8 * 3  # the line, and little else
        net = parts(str(run))[1].net
        controlnet = Control(load_controlnet(cn, net)[0], control, 1.0)
        want = library_images(run, n=2, steps=5, seed=0, class_label=4, wrappers=[controlnet])
        np.testing.assert_array_equal(np.stack([pixels(url) for url in page.results()]), want)


def test_restored_png_draws_its_image_again(app_page, tmp_path):
    page = app_page
    chosen = {"class": 7, "sampler": "heun", "steps": 6, "seed": 123, "n": 2, "guidance": 2.5}
    page.set_settings(**chosen)
    page.run()
    saved = tmp_path / "restore-me.png"
    saved.write_bytes(png_bytes(page.results()[1]))
    expected = {key: str(value) for key, value in chosen.items()}
    for how in ("drop", "choose"):
        page.page.reload()  # fresh state: the default settings again
        page.loaded()
        assert page.page.input_value("#seed") == "0"
        if how == "drop":  # the PNG dropped on the page
            files = page.page.evaluate_handle(
                """(bytes) => {
                  const files = new DataTransfer();
                  files.items.add(new File([new Uint8Array(bytes)], "restore-me.png", { type: "image/png" }));
                  return files;
                }""",
                list(saved.read_bytes()),
            )
            page.page.dispatch_event("main", "drop", {"dataTransfer": files})
        else:  # the PNG chosen in the file dialog
            page.page.set_input_files("#restore-file", str(saved))
        page.until("() => document.getElementById('status').textContent.includes('restored')")
        assert {key: page.page.input_value(f"#{key}") for key in chosen} == expected, how
    page.run()
    np.testing.assert_array_equal(pixels(page.results()[1]), pixels(saved.read_bytes()))


def test_cancel_stops_the_job(app_page, server):
    page = app_page
    _, app = server
    page.set_settings(steps=200, n=16)

    def answer_late(route):  # the stream's "cancelled" comes first; the late answer must not undo it
        answer = route.fetch()
        time.sleep(0.5)
        route.fulfill(response=answer)

    page.page.route("**/api/jobs/*/cancel", answer_late)
    page.page.evaluate(  # Cancel is clicked by the page itself on the first step event: no round trip
        """() => new MutationObserver((records, observer) => {
          observer.disconnect();
          document.getElementById("cancel").click();
        }).observe(document.body, { attributes: true, attributeFilter: ["data-steps"] })"""
    )
    with page.page.expect_response("**/cancel"):
        page.page.click("#generate")
    page.until("() => !document.getElementById('generate').disabled")
    page.page.wait_for_timeout(100)
    assert page.page.text_content("#status") == "cancelled"
    assert page.steps() < 100, page.steps()  # it stopped within a few steps of the click, not at 200
    assert page.results() == []
    deadline = time.monotonic() + 10
    while app.state.queue.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not app.state.queue.jobs


def test_explore_forward_process_samplers_and_sweep(app_page, digits_run):
    page = app_page
    page.set_settings(**{"class": 8, "steps": 10, "n": 4})
    page.run()
    # The tab sends t = 0.5 at once; the slider moves to 0.3 while that request is out, and the
    # page must still end on 0.3.
    page.page.evaluate(
        """() => {
          document.querySelector("#tabs button[data-tab=explore]").click();
          const slider = document.getElementById("forward-u");
          slider.value = "0.3";
          slider.dispatchEvent(new Event("input"));
        }"""
    )
    page.until("() => document.getElementById('forward-out').value.startsWith('t 0.30')")
    text = page.page.evaluate("document.getElementById('forward-out').value")
    alpha_bar = float(re.search(r"alpha_bar ([0-9.]+)", text).group(1))
    expected = float(parts(digits_run)[0].schedule.alpha_bar_at(torch.tensor([0.3]))[0])
    assert alpha_bar == pytest.approx(expected, abs=1e-4), text
    # x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps of the last output, eps drawn from the seed
    x0 = load_image(Image.open(io.BytesIO(png_bytes(page.results()[-1]))), channels=1)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = expected**0.5 * x0 + (1 - expected) ** 0.5 * eps
    shown = pixels(page.page.get_attribute("#forward-image", "src"))
    np.testing.assert_array_equal(shown, to_uint8(x_t)[0, ..., 0])
    page.until(PAINTED, "schedule-plot")  # the alpha_bar and log SNR curves
    page.page.fill("#nfe", "10")
    page.run("#compare")
    labels = page.page.eval_on_selector_all("#rows .row span", "els => els.map(e => e.textContent)")
    assert labels == [f"{name}, {get_sampler(name).steps_for_nfe(10)} steps" for name in engine.COMPARE]
    strips = page.page.eval_on_selector_all("#rows .row img", "els => els.map(e => e.src)")
    assert [pixels(url).shape for url in strips] == [(1 + 8 + 1, 1 + 4 * (8 + 1))] * 5  # 4 side by side
    page.shot("app-explore.png")
    page.run("#sweep")
    labels = page.page.eval_on_selector_all("#rows .row span", "els => els.map(e => e.textContent)")
    assert labels == [f"guidance {scale:g}" for scale in engine.SWEEP]

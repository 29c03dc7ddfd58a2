"""The web app over the other kinds of model it offers: a Stable Diffusion folder and a run with
a ControlNet. Each draws, through the app's engine, the image the library gives for the same
settings (the browser and HTTP sides are tests/test_app_browser.py and tests/test_app.py)."""

import pytest
import torch

pytest.importorskip("starlette")

from app_reference import controlled_run as reference_controlled_run  # noqa: E402
from nanodiffusion.app import engine  # noqa: E402
from nanodiffusion.errors import NanodiffError  # noqa: E402


def collect(entry, settings, uploads=None):
    """(images, step events) of one job through the engine, as the server runs it."""
    events = []
    reporter = engine.Reporter(events.append, lambda: False, settings.steps)
    inputs = engine.prepare(entry, settings, uploads or {})
    return engine.generate(entry, settings, inputs, reporter), events


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from _sd_fixture import random_pipeline  # bench/_sd_fixture.py

    folder = tmp_path_factory.mktemp("sd") / "sd"
    random_pipeline("tiny", "epsilon").save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.slow  # building the random pipeline takes about 15 s
def test_a_stable_diffusion_folder_draws_the_pipelines_image(sd_folder, one_thread_module):
    from nanodiffusion.inference.stable_diffusion import StableDiffusion

    entry = engine.Model.open("sd", str(sd_folder))
    assert entry.kind == "sd" and entry.info["conditioning"] == "text"
    s = engine.parse_settings(
        {"model": "sd", "prompt": "a red cat", "negative_prompt": "blurry", "steps": 4, "n": 2, "seed": 3},
        {"sd": entry},
    )
    images, events = collect(entry, s)
    want = StableDiffusion.from_pretrained(sd_folder)(
        "a red cat", negative_prompt="blurry", n=2, steps=4, guidance=7.5, seed=3, output="tensor"
    )
    assert torch.equal(images, want)
    assert [e["i"] for e in events] == [1, 2, 3, 4]  # every step previewed (x_t and x0_hat decoded)
    assert all(e["x"].startswith("data:image/png;base64,") and e["x0"] for e in events)
    with pytest.raises(NanodiffError, match="Stable Diffusion folders generate and do img2img here"):
        engine.parse_settings({"model": "sd", "mode": "inpaint", "prompt": "x"}, {"sd": entry})


@pytest.fixture(scope="module")
def controlled_run(tmp_path_factory):
    return reference_controlled_run(tmp_path_factory.mktemp("app-cn"))


def test_a_controlnet_run_draws_the_librarys_controlled_image(controlled_run, one_thread_module):
    from PIL import Image

    from nanodiffusion.inference.pipelines import conditioning, draw, load_parts
    from nanodiffusion.inference.sampling import Control
    from nanodiffusion.nets.controlnet import load_controlnet

    run, cn = controlled_run
    entry = engine.Model.open("run", str(run), controlnet=str(cn))
    plain = engine.Model.open("plain", str(run))
    assert entry.info["control"] and not plain.info["control"]
    edges = Image.new("L", (8, 8), 0)
    edges.paste(255, (2, 0, 3, 8))  # one vertical line
    upload = engine.data_url(engine.png_bytes(edges))
    body = {"model": "run", "mode": "control", "class_label": 4, "steps": 5, "n": 2, "control_scale": 0.5}
    s = engine.parse_settings(body, {"run": entry})
    images, _ = collect(entry, s, {"control": upload})

    cfg, denoiser, ae, encoder = load_parts(run, device="cpu")
    controlnet = load_controlnet(cn, denoiser.net)[0]
    control = torch.zeros(1, 1, 8, 8)
    control[..., 2] = 1
    cond, w, uncond = conditioning(cfg, encoder, 2, None, "", 4, None)
    want = draw(
        cfg, denoiser, 2, cond=cond, guidance=w, uncond=uncond, sampler="dpm++2m", steps=5, seed=0,
        wrappers=[Control(controlnet, control, 0.5)],
    )  # fmt: skip
    assert torch.equal(images, want)
    with pytest.raises(NanodiffError, match="the model plain was offered without a ControlNet"):
        engine.parse_settings({**body, "model": "plain"}, {"plain": plain})
    with pytest.raises(NanodiffError, match="control needs an edge drawing"):
        engine.prepare(entry, s, {})

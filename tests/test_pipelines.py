"""The sampling core (wrappers and edits composed around a denoiser), its keyword front doors, the
task registry, and the presets registry."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nanodiffusion.core import editing
from nanodiffusion.core.editing import demo_masks
from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.samplers import get_sampler
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.runs import build_denoiser
from nanodiffusion.inference.sampling import (
    Control,
    Edit,
    Guidance,
    ImageCondition,
    masked_model,
    sample,
    sample_images,
)
from nanodiffusion.io.config import PRESET_BUILDERS, PRESETS, apply_overrides, preset
from nanodiffusion.tasks import TASKS, get_task

SHAPE = (1, 8, 8)


def _denoiser(cond_channels=2, num_classes=10, seed=0):
    """An untrained digits UNet with an image condition and classes, its weights randomised (the
    zero-initialised output layer would hide every input)."""
    cfg = apply_overrides(
        preset("digits"),
        ["model.channels=8", "model.blocks_per_level=1", "model.attn_resolutions=[]", "model.dropout=0"],
    )
    cfg.model.in_channels = cfg.model.out_channels = 1
    cfg.model.image_size, cfg.model.cond_channels, cfg.model.num_classes = 8, cond_channels, num_classes
    torch.manual_seed(seed)
    d = build_denoiser(cfg).eval()
    for p in d.net.parameters():
        p.data.normal_(0, 0.05)
    return d


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- the sampling core ---------------------------------------------------------------------------
def test_guidance_an_image_condition_and_inpainting_compose_as_written_by_hand():
    d = _denoiser()
    image, labels = _rand(1, 2, 8, 8), torch.tensor([1, 2, 3])  # one image condition serves all rows
    init, known = _rand(3, *SHAPE, seed=1), demo_masks(3, 8)
    got = sample(
        d,
        3,
        SHAPE,
        "euler",
        4,
        7,
        labels,
        [ImageCondition(image), Guidance.of(d, 2.0)],
        Edit(init, known=known, method="replace"),
        clamp=False,
    )
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(3, *SHAPE, generator=g)
    sigmas = d.schedule.sampling_sigmas(4)
    by_hand = ClassifierFreeGuidance(d.conditioned_on(image), 2.0, torch.tensor(10))
    want = editing.edit(
        get_sampler("euler").fn,
        by_hand,
        noise,
        init,
        sigmas,
        labels,
        prior_std=d.schedule.prior_std(float(sigmas[0])),
        known=known,
        generator=g,
    )
    assert torch.equal(got, want)
    keep = known.expand_as(got) == 1
    assert torch.equal(got[keep], init[keep]) and (got[~keep] - init[~keep]).abs().mean() > 0.05
    plain = sample(
        d,
        3,
        SHAPE,
        "euler",
        4,
        7,
        labels,
        [ImageCondition(image)],
        Edit(init, known=known, method="replace"),
        clamp=False,
    )
    assert not torch.equal(plain, got)  # the guidance wrapper took part


def test_samples_do_not_depend_on_the_batch_size():
    d = _denoiser()
    labels, image, init = torch.arange(5), _rand(5, 2, 8, 8), _rand(5, *SHAPE, seed=2)
    kw = dict(
        cond=labels, wrappers=[ImageCondition(image), Guidance.of(d, 2.0)], edit=Edit(init, 0.5), clamp=False
    )
    whole = sample(d, 5, SHAPE, "ddim", 6, 3, batch_size=5, **kw)
    assert torch.allclose(sample(d, 5, SHAPE, "ddim", 6, 3, batch_size=2, **kw), whole, atol=1e-5)
    assert torch.equal(
        sample(d, 5, SHAPE, "ddim", 6, 3, batch_size=2, **kw),
        sample(d, 5, SHAPE, "ddim", 6, 3, batch_size=2, **kw),
    )
    assert not torch.equal(sample(d, 5, SHAPE, "ddim", 6, 4, batch_size=5, **kw), whole)  # the seed matters


def test_the_keyword_front_door_gives_the_composed_cores_images():
    d = _denoiser()
    labels, image, init = torch.tensor([4, 5, 6]), _rand(3, 2, 8, 8), _rand(3, *SHAPE, seed=3)
    old = sample_images(
        d,
        3,
        SHAPE,
        "dpm++2m",
        4,
        seed=1,
        class_labels=labels,
        guidance=3.0,
        init=init,
        strength=0.6,
        image_cond=image,
        clamp=False,
    )
    new = sample(
        d,
        3,
        SHAPE,
        "dpm++2m",
        4,
        1,
        labels,
        [ImageCondition(image), Guidance.of(d, 3.0)],
        Edit(init, 0.6),
        clamp=False,
    )
    assert torch.equal(old, new) and (old - init).abs().mean() > 0.05
    assert torch.equal(
        sample_images(
            d,
            3,
            SHAPE,
            "dpm++2m",
            4,
            seed=1,
            cond=labels,
            guidance=3.0,
            init=init,
            strength=0.6,
            image_cond=image,
            clamp=False,
        ),
        old,
    )  # the new name
    known = demo_masks(3, 8)  # a mask-conditioned network: the method "model"
    old = sample_images(d, 3, SHAPE, "heun", 3, seed=2, init=init, known=known, inpaint="model", clamp=False)
    bound, edit = masked_model(init, known, 3, SHAPE)
    assert torch.equal(bound.image, torch.cat([init * known, known], 1))
    assert torch.equal(sample(d, 3, SHAPE, "heun", 3, 2, None, [bound], edit, clamp=False), old)


def test_a_control_composes_with_guidance_and_at_its_zeros_changes_nothing():
    from nanodiffusion.nets.controlnet import ControlNet

    d, labels = _denoiser(cond_channels=0), torch.tensor([3, 7])
    edges = (_rand(2, 1, 8, 8, seed=4) > 0.5).float()
    control = Control(ControlNet(d.net, 1, 1), edges)
    want = sample(d, 2, SHAPE, "dpm++2m", 4, 0, labels, [Guidance.of(d, 3.0)], clamp=False)
    steered = sample(d, 2, SHAPE, "dpm++2m", 4, 0, labels, [control, Guidance.of(d, 3.0)], clamp=False)
    assert torch.equal(steered, want)
    for p in control.controlnet.zero.parameters():
        p.data.normal_(0, 0.1)
    steered = sample(d, 2, SHAPE, "dpm++2m", 4, 0, labels, [control, Guidance.of(d, 3.0)], clamp=False)
    assert (steered - want).abs().max() > 1e-3


def test_bad_core_input_is_one_clear_error():
    d = _denoiser(cond_channels=0, num_classes=0)
    with pytest.raises(NanodiffError, match="number of samples must be positive"):
        sample(d, 0, SHAPE)
    with pytest.raises(NanodiffError, match=r"init images must be \[1 or 2, 1, 8, 8\]"):
        sample(d, 2, SHAPE, edit=Edit(_rand(2, 1, 4, 4), 0.5))
    with pytest.raises(NanodiffError, match=r"strength must be in \(0, 1\]"):
        Edit(_rand(1, *SHAPE), 2.0)
    with pytest.raises(NanodiffError, match="class-conditional"):
        Guidance.of(d, 3.0)


# --- tasks ---------------------------------------------------------------------------------------
def test_an_unknown_task_is_one_line_naming_the_choices(tiny_config):
    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.training.diffusion import prepare_config

    with pytest.raises(NanodiffError) as e:
        get_task("colorize")
    assert str(e.value) == f"unknown task 'colorize'; choose one of {', '.join(map(repr, TASKS))}"
    assert "\n" not in str(e.value) and {"", "inpaint", "upscale"} <= set(TASKS)
    tiny_config.data.task = "colorize"  # a config built in code; a file's or an override's is refused sooner
    with pytest.raises(NanodiffError, match="unknown task 'colorize'"):
        prepare_config(tiny_config, load_data("digits"))


@pytest.mark.parametrize("name", sorted(t for t in TASKS if t != "molecules"))  # atoms: test_molecules.py
def test_every_task_trains_a_tiny_run_and_its_grid_is_the_tasks_draw(name, tiny_config, tmp_path):
    """The trainer's final grid (RUN/samples.png) is exactly draw() with the task's grid inputs."""
    from PIL import Image

    from nanodiffusion.data.datasets import load_data
    from nanodiffusion.inference.pipelines import draw, load_run
    from nanodiffusion.io.viz import save_grid
    from nanodiffusion.training.diffusion import train

    tiny_config.data.task = name
    assert train(tiny_config, tmp_path / "run", progress=False)
    cfg, d = load_run(tmp_path / "run", device="cpu")
    task = get_task(cfg.data.task)
    shown = load_data("digits").images[: cfg.run.sample_n]
    images = draw(
        cfg,
        d,
        len(shown),
        sampler=cfg.run.sampler,
        steps=cfg.run.sample_steps,
        seed=0,
        **task.grid(cfg, shown),
    )
    assert images.shape == (cfg.run.sample_n, *SHAPE) and images.abs().max() <= 1
    save_grid(images, tmp_path / "mine.png", nrow=2)
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "run" / "samples.png")),
        np.asarray(Image.open(tmp_path / "mine.png")),
    )


def test_another_tasks_input_is_one_clear_error(tiny_config):
    from nanodiffusion.inference.pipelines import draw

    cfg = tiny_config
    cfg.model.in_channels, cfg.model.out_channels, cfg.model.image_size = 1, 1, 8
    with pytest.raises(
        NanodiffError,
        match=r"low_res is an input of runs whose data.task is 'upscale'; "
        r"this run's is ''",
    ):
        draw(cfg, build_denoiser(cfg).eval(), 2, steps=2, low_res=_rand(2, 1, 4, 4))
    d = build_denoiser(cfg).eval()
    assert torch.equal(draw(cfg, d, 2, steps=2, low_res=None), draw(cfg, d, 2, steps=2))  # None: not given


def test_an_inpainting_batch_sees_the_masked_image_with_masks_drawn_for_the_whole_batch(tiny_config):
    """The inpaint task: masks for all `draws` images first (this process keeps its rows), then the
    network's input [x0 * known, known]; its grids fill the demo masks' holes by the method "model"."""
    from nanodiffusion.core.editing import random_masks
    from nanodiffusion.data.datasets import load_data

    task, d = get_task("inpaint"), _denoiser(num_classes=0)
    x0, eps = _rand(2, *SHAPE), torch.randn(2, *SHAPE)
    g = torch.Generator().manual_seed(5)
    bound, x, e = task.batch(tiny_config, d, x0, eps, g, 4, slice(2, 4))
    known = random_masks(4, 8, torch.Generator().manual_seed(5))[2:]
    assert torch.equal(bound.net.image, torch.cat([x0 * known, known], 1)) and x is x0 and e is eps
    assert torch.equal(g.get_state(), _drawn(lambda h: random_masks(4, 8, h), 5))  # nothing else drawn
    grid = task.grid(tiny_config, x0)
    assert grid["inpaint"] == "model" and torch.equal(grid["known"], demo_masks(2, 8))
    task.prepare(tiny_config, load_data("digits"))
    assert tiny_config.model.cond_channels == 2  # the masked image and the mask
    with pytest.raises(NanodiffError, match="an inpainting run trains on whole images"):
        task.prepare(apply_overrides(tiny_config, ["data.crop=4"]), load_data("digits"))


def _drawn(draw, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    draw(g)
    return g.get_state()


SOURCE = Path(__file__).parents[1] / "src" / "nanodiffusion"
TASK_WORDS = re.compile(r"inpaint|upscal|superres", re.IGNORECASE)


def _task_names_in_code(path: Path) -> list[str]:
    """Identifiers and string values in `path` that name a task, outside docstrings, comments, the
    words of an error message, and lines marked `# compat` (old keywords kept for callers)."""
    source = path.read_text()
    lines, tree = source.splitlines(), ast.parse(source)
    prose = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            prose.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "NanodiffError":
            prose.update(id(part) for arg in node.args for part in ast.walk(arg))  # a message
    found = []
    for node in ast.walk(tree):
        words = {
            ast.Name: lambda n: [n.id],
            ast.Attribute: lambda n: [n.attr],
            ast.arg: lambda n: [n.arg],
            ast.keyword: lambda n: [n.arg or ""],
            ast.alias: lambda n: [n.name, n.asname or ""],
            ast.ImportFrom: lambda n: [n.module or ""],
            ast.FunctionDef: lambda n: [n.name],
            ast.ClassDef: lambda n: [n.name],
        }.get(type(node), lambda n: [])(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            words = [node.value]
        for word in words:
            if TASK_WORDS.search(word) and "# compat" not in lines[node.lineno - 1]:
                found.append(f"{path.name}:{node.lineno}: {word}")
    return found


def test_the_trainer_the_pipelines_and_the_config_name_no_task(tmp_path):
    # inference/demos.py is exempt: it holds one demo per editing task, named for it, and branches on none
    files = [
        *sorted((SOURCE / "training").rglob("*.py")),
        *sorted((SOURCE / "inference").rglob("*.py")),
        SOURCE / "io" / "config.py",
    ]
    files = [f for f in files if f.name != "demos.py"]
    assert len(files) >= 5
    assert [hit for f in files for hit in _task_names_in_code(f)] == []
    planted = tmp_path / "planted.py"  # the check finds a branch on a task's name, and only that
    planted.write_text(
        '"""Upscaling, in a docstring."""\nfrom nanodiffusion.tasks import upscale as sr\n\n\n'
        'def grid(cfg):\n    if cfg.data.task == "upscale":  # upscale\n'
        '        raise NanodiffError("an upscaling run")\n    return inpaint_masks(cfg)\n'
    )
    assert sorted(hit.split(": ")[1] for hit in _task_names_in_code(planted)) == [
        "inpaint_masks",
        "upscale",
        "upscale",
    ]


# --- presets -------------------------------------------------------------------------------------
def test_presets_are_a_registry_of_builders():
    assert list(PRESETS) == list(PRESET_BUILDERS)
    assert {"digits", "mnist", "fashion-mnist", "text", "upscale"} <= set(PRESETS)
    for name in PRESETS:
        a, b = preset(name), preset(name)
        assert a == b and a is not b and a.data is not b.data  # a new Config each time
    assert preset("upscale").data.task == "upscale" and preset("mnist").data.name == "mnist"
    assert preset("fashion-mnist").data.name == "fashion-mnist"
    with pytest.raises(NanodiffError, match="unknown preset 'cifar'; choose one of digits, mnist"):
        preset("cifar")

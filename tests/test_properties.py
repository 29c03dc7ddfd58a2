"""Property tests of the input boundary (hypothesis): configs, .npz arrays and command lines drawn
at random either work or fail with one line, a NanodiffError or `nanodiff: error:`, never another
exception, and nothing already on disk changes.

The `ci` profile (the default) runs few examples, derandomized, so the fast suite stays fast and
reproducible; the slow-marked tests run the same properties under the `thorough` profile (300
examples, derandomized too: CI must not depend on the draw), and HYPOTHESIS_PROFILE=thorough makes
every test here use it. HYPOTHESIS_PROFILE=explore runs them all on 300 fresh random examples, to
look for new failures.
"""

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

import hostile
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import Config, apply_overrides, preset

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
for name, fixed in (("thorough", True), ("explore", False)):
    settings.register_profile(
        name,
        max_examples=300,
        deadline=None,
        derandomize=fixed,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
THOROUGH = settings.get_profile("explore" if PROFILE == "explore" else "thorough")


def one_line_error(call, *args):
    """call(*args), or None when it raised a NanodiffError of one line; any other exception fails."""
    try:
        return call(*args)
    except NanodiffError as e:
        assert "\n" not in str(e) and str(e).strip(), repr(str(e))
        return None


# --- (a) configs -----------------------------------------------------------------------------------
KEYS = [f"{section}.{key}" for section, values in preset("digits").to_dict().items() for key in values]
ints = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([-(2**63), -(10**9), 10**5, 10**9, 2**31, 2**63, 2**64, 10**30]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e-308])
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
override_values = st.one_of(
    json_values.map(json.dumps),  # NaN and Infinity too: json.dumps writes them and json.loads reads them
    st.text(max_size=12),  # kept as a bare string when it is not JSON
    st.sampled_from(["", "[", "{", "nan", "NaN", "1e999", "[1,,2]", "[8, 4]", "[]", "true", "null"]),
)
overrides = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(KEYS), override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(max_size=16),  # no '=', no section, unknown keys
    ),
    max_size=4,
)


def _parameters_estimate(cfg: Config) -> float:
    """A rough upper bound on the UNet's parameter count, to skip building absurd networks."""
    m = cfg.model
    width = m.channels * max(m.channel_mults or [1])
    levels = len(m.channel_mults or [1]) * (abs(m.blocks_per_level) + 2)
    return 40 * levels * width**2 + (abs(m.num_classes) + 2) * 4 * m.channels + abs(m.context_dim) * width * 4


def check_overrides(items: list[str]) -> None:
    cfg = one_line_error(apply_overrides, preset("digits"), items)
    if cfg is None:
        return
    assert isinstance(cfg, Config)
    if _parameters_estimate(cfg) > 5e7:
        return
    from nanodiffusion.inference.runs import build_denoiser

    with hostile.limits():  # a config that loads builds its network, or, when a size the data
        one_line_error(build_denoiser, cfg)  # decides is still open (classes, text width), says so


@given(overrides)
def test_overrides_give_a_config_or_one_line(items):
    check_overrides(items)


@pytest.mark.slow
@settings(THOROUGH)
@given(overrides)
def test_overrides_give_a_config_or_one_line_thorough(items):
    check_overrides(items)


# --- (b) arrays ------------------------------------------------------------------------------------
dtypes = st.one_of(
    npst.scalar_dtypes(),
    npst.byte_string_dtypes(max_len=3),
    npst.unicode_string_dtypes(max_len=3),
)
images = npst.arrays(dtypes, npst.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
labels = st.none() | npst.arrays(
    st.sampled_from([np.int64, np.uint8, np.float32, np.bool_]), npst.array_shapes(max_dims=2, max_side=6)
)


def check_npz(array: np.ndarray, label_array: np.ndarray | None) -> None:
    from nanodiffusion.data.datasets import ImageData, load_data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        extra = {} if label_array is None else {"labels": label_array}
        np.savez(path, images=array, **extra)
        before = hostile.tree_digest([Path(tmp)])
        with hostile.limits():
            data = one_line_error(load_data, str(path))
        assert hostile.tree_digest([Path(tmp)]) == before
    if data is not None:
        assert isinstance(data, ImageData)
        assert data.images.ndim == 4 and data.images.dtype.is_floating_point
        assert len(data.images) > 0 and math.prod(data.images.shape[1:]) > 0
        assert bool(data.images.isfinite().all()) and float(data.images.abs().max()) <= 1


@given(images, labels)
def test_npz_datasets_load_or_fail_in_one_line(array, label_array):
    check_npz(array, label_array)


@pytest.mark.slow
@settings(THOROUGH)
@given(images, labels)
def test_npz_datasets_load_or_fail_in_one_line_thorough(array, label_array):
    check_npz(array, label_array)


# --- (c) command lines -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A tiny run, a scratch folder beside it (a file, a folder, a picture) and where outputs go."""
    root = tmp_path_factory.mktemp("properties")
    run = hostile.make_runs(root / "runs").digits
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "file.txt").write_text("a file\n")
    hostile.good_png(scratch / "picture.png")
    return {"root": root, "run": run, "scratch": scratch}


NUMBERS = [
    "0",
    "-1",
    "1",
    "2",
    "3",
    "10**12",
    "-7",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "",
    " ",
    "abc",
    "0x10",
    "٣",
]
NUMBERS = [str(10**12) if v == "10**12" else v for v in NUMBERS] + [str(2**63), str(-(2**64)), "1.5", "-0.0"]
# paths as placeholders, turned into real paths by _realize: a file, a path under a file, a missing
# path, a folder, the run itself, a picture, the empty string
PATHS = ["@file", "@file/under", "@missing/x.png", "@scratch", "@run", "@picture", ""]
FLAGS = {
    "--n": NUMBERS,
    "--steps": NUMBERS,
    "--seed": NUMBERS,
    "--class": NUMBERS,
    "--guidance": NUMBERS + ["1,2", "1,nan", ",", "2,-1"],
    "--eta": NUMBERS,
    "--order": NUMBERS,
    "--churn": NUMBERS,
    "--strength": NUMBERS,
    "--init": PATHS,
    "--out": PATHS + ["@out"],
    "--sampler": ["ddim", "euler-a", "heun", "dpm++2m", "unipc", "", "nope", "DPMPP_2M"],
    "--spacing": ["karras", "leading", "", "x"],
    "--weights": ["ema", "model", "", "both"],
    "--device": ["cpu", "cuda", "auto", "tpu"],
    "--negative": ["", "x" * 300, "\n"],
}
COMMAND_FLAGS = {
    "sample": [f for f in FLAGS if f != "--negative"],
    "generate": [
        "--n",
        "--steps",
        "--seed",
        "--guidance",
        "--negative",
        "--init",
        "--strength",
        "--out",
        "--sampler",
        "--weights",
        "--device",
    ],  # fmt: skip
    "info": [],
}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(COMMAND_FLAGS)))
    run = draw(st.sampled_from(["@run", "@run", "@run", *PATHS]))
    argv = [command, run] + (["a red circle"] if command == "generate" else [])
    flags = draw(st.lists(st.sampled_from(COMMAND_FLAGS[command] or ["--n"]), max_size=5, unique=True))
    for flag in flags if command != "info" else []:
        argv += [flag, draw(st.sampled_from(FLAGS[flag]))]
    if command != "info" and "--n" not in flags:  # keep the run short: one image, two steps
        argv += ["--n", "1"]
    if command != "info" and "--steps" not in flags:
        argv += ["--steps", "2"]
    return argv


def _realize(argv: list[str], places: dict, out: Path) -> list[str]:
    s = places["scratch"]
    names = {
        "@file/under": s / "file.txt" / "under",
        "@file": s / "file.txt",
        "@missing/x.png": s / "missing" / "x.png",
        "@scratch": s,
        "@run": places["run"],
        "@picture": s / "picture.png",
        "@out": out,
    }
    return [str(names[a]) if a in names else a for a in argv]


def check_command_line(argv: list[str], places: dict) -> None:
    with tempfile.TemporaryDirectory(dir=places["root"]) as tmp:
        out = Path(tmp) / "out"
        argv = _realize(argv, places, out)
        # results may appear where --out points (any folder the user names, even the run) or in the
        # run's own samples/ and generated/ folders; every file already there stays as it is
        outputs = [out, places["run"] / "samples", places["run"] / "generated"]
        outputs += [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--out" and argv[i + 1]]
        outcome = hostile.run_cli(argv, [places["run"], places["scratch"]], outputs)
        hostile.assert_rule(outcome)


@given(command_lines())
def test_command_lines_work_or_exit_2_with_one_line(places, argv):
    check_command_line(argv, places)


@pytest.mark.slow
@settings(THOROUGH)
@given(command_lines())
def test_command_lines_work_or_exit_2_with_one_line_thorough(places, argv):
    check_command_line(argv, places)

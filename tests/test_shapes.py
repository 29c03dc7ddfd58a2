"""The shapes world and its judge: the referee is tested first."""

import numpy as np
import pytest

from nanodiffusion.data.shapes import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    Obj,
    detect,
    detector_accuracy,
    draw,
    judge,
    render_dataset,
    render_scene,
)
from nanodiffusion.errors import NanodiffError


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = render_scene(7), render_scene(7), render_scene(8)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8
    big = render_scene(7, size=64)  # the same scene at another resolution
    assert big.image.shape == (64, 64, 3) and (big.caption, big.objects) == (a.caption, a.objects)
    small = big.image.reshape(32, 2, 32, 2, 3).mean((1, 3))
    assert np.abs(small - a.image).mean() < 6


@pytest.mark.parametrize("size,n", [(32, 300), (64, 80)])
def test_detector_accuracy_on_fresh_renders(size, n):
    acc = detector_accuracy(n, size)
    assert min(acc.values()) >= 0.99, acc


def test_captions_hold_in_their_own_images():
    """What the caption states is what the detector reads, for every kind of caption."""
    verdicts = [judge(s.image, s.spec)["all"] for s in (render_scene(i) for i in range(300))]
    assert np.mean(verdicts) >= 0.99


def test_the_judge_rejects_what_is_not_there():
    scene = render_scene(3, kind="single")
    want = scene.spec["objects"][0]
    other_colour = next(c for c in COLOURS if c != want["colour"])
    other_shape = next(s for s in SHAPES if s != want["shape"])
    wrong_colour = {"kind": "single", "objects": [{**want, "colour": other_colour}]}
    wrong_shape = {"kind": "single", "objects": [{**want, "shape": other_shape}]}
    assert judge(scene.image, scene.spec)["all"]
    assert not judge(scene.image, wrong_colour)["colour"]
    assert not judge(scene.image, wrong_shape)["shape"]

    pair = render_scene(5, kind="relation")
    flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    swapped = {**pair.spec, "relation": flipped[pair.spec["relation"]]}
    assert judge(pair.image, pair.spec)["spatial"] and not judge(pair.image, swapped)["spatial"]

    many = render_scene(11, kind="count")
    more = {**many.spec, "count": many.spec["count"] + 1}
    assert judge(many.image, many.spec)["count"] and not judge(many.image, more)["count"]


def test_noise_and_blank_images_hold_nothing():
    rng = np.random.default_rng(0)
    blank = np.full((32, 32, 3), 60, np.uint8)
    noise = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert detect(blank) == []
    spec = render_scene(2, kind="single").spec
    assert not judge(blank, spec)["all"] and not judge(noise, spec)["all"]


def test_detector_reads_each_shape_and_colour():
    for shape in SHAPES:
        for colour in COLOURS:
            (d,) = detect(draw([Obj(shape, colour, "large", 0.52, 0.47)], 32))
            assert (d.shape, d.colour, d.size, d.position) == (shape, colour, "large", "centre")


def test_held_out_pairs_are_never_in_the_training_stream():
    pairs = {(o.colour, o.shape) for i in range(600) for o in render_scene(i).objects}
    assert not pairs & set(HELD_OUT)
    assert len(pairs) == len(COLOURS) * len(SHAPES) - len(HELD_OUT)  # everything else is drawn
    for i in range(20):
        scene = render_scene(i, held_out=True)
        assert {(o.colour, o.shape) for o in scene.objects} & set(HELD_OUT)


def test_captions_are_varied_and_grammatical():
    captions = render_dataset(400)[1]
    assert len(set(captions)) > 250
    assert not any(" a orange" in c or c.startswith("a orange") for c in captions)
    for word in ("left of", "above", "two", "three", "small", "large", "centre"):
        assert any(word in c for c in captions), word


def test_bad_input_gets_a_clear_error():
    with pytest.raises(NanodiffError, match="square RGB"):
        detect(np.zeros((32, 16, 3)))
    with pytest.raises(NanodiffError, match="scene kind"):
        render_scene(0, kind="cloud")
    with pytest.raises(NanodiffError, match="16 pixels"):
        render_scene(0, size=8)


def test_adherence_of_the_renders_themselves_and_of_noise():
    from nanodiffusion.data.shapes import adherence, prompt_set

    scenes = prompt_set(60)
    exact = adherence([s.image for s in scenes], [s.spec for s in scenes])
    assert exact["overall"]["all"] >= 0.98 and exact["overall"]["n"] == 60
    assert set(exact) >= {"single", "relation", "count", "overall"}
    rng = np.random.default_rng(0)
    noise = adherence(
        [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in scenes], [s.spec for s in scenes]
    )
    assert noise["overall"]["all"] <= 0.05
    shuffled = adherence([s.image for s in scenes], [s.spec for s in scenes[1:] + scenes[:1]])
    assert shuffled["overall"]["all"] < 0.3  # another scene's caption rarely holds
    held = prompt_set(10, held_out=True)
    assert all({(o.colour, o.shape) for o in s.objects} & set(HELD_OUT) for s in held)
    with pytest.raises(NanodiffError, match="images for"):
        adherence([scenes[0].image], [s.spec for s in scenes[:2]])


def test_evaluate_prompts_scores_renders_perfect_and_blank_images_zero():
    from nanodiffusion.data.shapes import evaluate_prompts, format_adherence, prompt_set

    held = prompt_set(12, held_out=True, seed=2 * 10**7 + 10**6)  # evaluate_prompts' held-out seeds
    scenes = {s.caption: s.image for s in prompt_set(24) + held}
    perfect = evaluate_prompts(lambda caps: np.stack([scenes[c] for c in caps]), n=24, n_held_out=12)
    blank = evaluate_prompts(lambda caps: np.full((len(caps), 32, 32, 3), 128, np.uint8), n=24, n_held_out=12)
    for name in ("prompts", "held-out"):
        assert perfect[name]["generated"]["overall"]["all"] == 1.0
        assert blank[name]["generated"]["overall"]["all"] == 0.0
        assert perfect[name]["generated"]["overall"]["n"] == (24 if name == "prompts" else 12)
    assert "held-out overall" in format_adherence(perfect)
    with pytest.raises(NanodiffError, match="expected"):
        evaluate_prompts(lambda caps: np.zeros((1, 32, 32, 3), np.uint8), n=4, n_held_out=0)

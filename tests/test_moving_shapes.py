"""Moving shapes: the renderer, its true tracks, the held-out triples, and the video judge."""

import numpy as np
import pytest

from nanodiffusion.data.moving_shapes import (
    BOUNCE_RANGE,
    BOUNCE_SPEED,
    DIRECTIONS,
    HELD_OUT_MOTIONS,
    MOTIONS,
    SPEEDS,
    render_video,
    render_videos,
)
from nanodiffusion.data.shapes import Obj, draw, judge
from nanodiffusion.errors import NanodiffError
from nanodiffusion.metrics.video import SMOOTH_PX, judge_video, tracks_of, video_adherence


@pytest.fixture(scope="module")
def videos():
    return [render_video(5000 + i) for i in range(40)]


def test_same_seed_same_video_other_seed_other_video():
    a, b, c = render_video(3), render_video(3), render_video(4)
    assert a.frames.tobytes() == b.frames.tobytes() and a.caption == b.caption and a.spec == b.spec
    assert np.array_equal(a.tracks, b.tracks)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (16, 32, 32, 3) and a.frames.dtype == np.uint8
    assert a.tracks.shape == (len(a.spec["objects"]), 16, 2)
    big = render_video(3, size=64)  # the same video at another resolution
    assert (big.caption, big.spec) == (a.caption, a.spec) and np.array_equal(big.tracks, a.tracks)


def test_tracks_are_what_the_detector_reads(videos):
    for video in videos[:30]:
        for f, frame in enumerate(video.frames):
            found = [d for t in tracks_of(frame[None]) for d in t]
            assert len(found) == len(video.tracks), video.caption
            for want, track in zip(video.spec["objects"], video.tracks, strict=True):
                d = min(found, key=lambda d: np.hypot(d.cx - track[f, 0], d.cy - track[f, 1]))
                assert np.hypot(d.cx - track[f, 0], d.cy - track[f, 1]) * 32 < 1.0
                assert (d.colour, d.shape) == (want["colour"], want["shape"])


def test_motion_is_constant_velocity_the_stated_way_inside_the_frame(videos):
    for video in [v for v in videos if v.spec["kind"] != "bounce"]:
        steps = np.diff(video.tracks, axis=1)  # [objects, F - 1, 2]
        assert np.allclose(steps, steps[:, :1]), video.caption  # no bounce, no change of speed
        assert video.tracks.min() > 0.15 and video.tracks.max() < 0.85  # boxes stay in view
        want = video.spec["objects"][0]
        if want["motion"] in DIRECTIONS:  # the stated way at one of the speeds (the stated one, if said)
            speed = np.dot(steps[0, 0], DIRECTIONS[want["motion"]])
            assert np.isclose(
                speed, [SPEEDS[want["speed"]]] if want["speed"] else list(SPEEDS.values())
            ).any()
        else:
            distance = np.hypot(*(video.tracks[0] - video.tracks[1]).T)
            assert np.all(np.sign(np.diff(distance)) == (1 if want["motion"] == "apart" else -1))


def test_bounces_reflect_at_the_walls():
    for seed in range(20):
        x, y = render_video(seed, kind="bounce").tracks[0].T
        steps = np.diff(x)
        assert np.all(y == y[0]) and BOUNCE_RANGE[0] <= x.min() and x.max() <= BOUNCE_RANGE[1]
        assert np.all(np.abs(steps) <= BOUNCE_SPEED + 1e-12)
        assert np.isclose(np.abs(steps), BOUNCE_SPEED).sum() >= len(steps) - 2  # all but the steps at a wall
        turns = np.sum(np.sign(steps[1:]) != np.sign(steps[:-1]))
        assert 1 <= turns <= 2


def test_captions_name_what_the_spec_says(videos):
    phrases = {"left": "left", "right": "right", "up": ("rises", "up"), "down": ("falls", "down", "drops")}
    phrases |= {"apart": ("apart", "away"), "together": ("together", "towards"), "bounce": "bounces"}
    for video in videos:
        for want in video.spec["objects"]:
            assert f"{want['colour']} {want['shape']}" in video.caption
            assert want["motion"] in MOTIONS
            assert any(p in video.caption for p in np.atleast_1d(phrases[want["motion"]]))
        speed = video.spec["objects"][0]["speed"]
        assert ("slowly" in video.caption) == (speed == "slow") and ("quickly" in video.caption) == (
            speed == "fast"
        )


def test_held_out_triples_only_when_asked():
    def triples(video):
        return {(o["colour"], o["shape"], o["motion"]) for o in video.spec["objects"]}

    # specs do not depend on frames or size, so tiny renders show the training stream's choices
    seen = set().union(*(triples(render_video(i, frames=2, size=16)) for i in range(600)))
    assert not seen & set(HELD_OUT_MOTIONS)
    assert {t[2] for t in seen} == set(MOTIONS) and len({t[:2] for t in seen}) == 30  # all else is seen
    held = [triples(render_video(i, frames=2, size=16, held_out=True)) for i in range(60)]
    assert all(t & set(HELD_OUT_MOTIONS) for t in held)
    assert set().union(*held) >= set(HELD_OUT_MOTIONS)


def test_judge_scores_real_videos_high_and_shuffled_or_reversed_low(videos):
    frames, specs = [v.frames for v in videos], [v.spec for v in videos]
    real = video_adherence(frames, specs)
    assert real["identity"] >= 0.95 and real["motion"] >= 0.95 and real["smooth"] >= 0.95, real
    assert real["per_frame"] >= 0.99 and real["n"] == 40
    assert real["max_jerk_px"] < SMOOTH_PX / 2
    rng = np.random.default_rng(0)
    shuffled = video_adherence([f[rng.permutation(len(f))] for f in frames[:20]], specs[:20])
    assert shuffled["motion"] <= 0.1 and shuffled["smooth"] <= 0.2 and shuffled["all"] <= 0.05, shuffled
    assert shuffled["per_frame"] >= 0.99  # every frame is still a good still image
    ahead = [i for i, s in enumerate(specs[:16]) if s["kind"] != "bounce"]  # a bounce backwards still bounces
    backwards = video_adherence([frames[i][::-1] for i in ahead], [specs[i] for i in ahead])
    assert backwards["motion"] == 0.0 and backwards["identity"] >= 0.95, backwards


def test_per_frame_adherence_is_the_still_judges_colour_check():
    video = render_video(11, kind="single")
    blank = video.frames.copy()
    blank[::2] = blank[::2, :1, :1]  # even frames: the top-left background pixel everywhere
    verdict = judge_video(blank, video.spec)
    still = [
        judge(frame, {"kind": "single", "objects": [video.spec["objects"][0]]})["colour"] for frame in blank
    ]
    assert verdict["per_frame"] == np.mean(still) == 0.5
    assert not verdict["identity"] and not verdict["all"]


def test_render_videos_and_errors():
    frames, captions = render_videos(3, frames=4, size=16, seed=2)
    assert frames.shape == (3, 4, 16, 16, 3) and frames.dtype == np.uint8
    assert captions == [render_video(6 + i, frames=4, size=16).caption for i in range(3)]
    with pytest.raises(NanodiffError, match="unknown video kind 'spin'"):
        render_video(0, kind="spin")
    with pytest.raises(NanodiffError, match="too long"):
        render_video(0, frames=64, kind="pair")
    with pytest.raises(NanodiffError, match=r"\[F, H, W, 3\]"):
        judge_video(np.zeros((4, 32, 32)), {"objects": []})


def test_a_bounce_turns_at_the_walls_not_in_mid_air():
    red = {"colour": "red", "shape": "circle", "motion": "bounce", "speed": None}
    spec = {"kind": "bounce", "objects": [red]}

    def video(xs):
        return np.stack([draw([Obj("circle", "red", "small", x, 0.5)], 32) for x in xs])

    lo, hi = BOUNCE_RANGE
    at_walls = lo + np.abs(np.mod(np.arange(16) * BOUNCE_SPEED, 2 * (hi - lo)) - (hi - lo))  # a triangle wave
    assert judge_video(video(at_walls), spec)["all"]
    mid_air = np.r_[np.linspace(0.2, 0.62, 8), np.linspace(0.56, 0.2, 8)]  # turns at 0.62
    assert judge_video(mid_air_video := video(mid_air), spec)["motion"]
    assert not judge_video(mid_air_video, spec)["smooth"]
    one_way = video(np.linspace(0.2, 0.8, 16))
    assert not judge_video(one_way, spec)["motion"] and judge_video(one_way, spec)["smooth"]

"""Moving shapes: the shapes world in motion, captioned videos rendered from a seed.

A video is `frames` frames of the still shapes world (`data.shapes`): the same objects, drawn by
the same `draw`, over one background, each object moving at a constant velocity. Its caption
says what moves and how ("a red circle moves from left to right", "a blue square falls
quickly", "a green star and a yellow triangle move apart"); its spec states the same for the
judge (`metrics.video`), and its tracks hold every object's true centre in every frame.

Three kinds of video, a third each:

- single: one object (small or large) moves left, right, up or down, slow (0.012 of the side
  per frame) or fast (0.028); the caption says the speed half of the time. The path always fits
  inside the frame, so nothing bounces.
- pair: two small objects of different colour-shape pairs, one in the top band and one in the
  bottom band (so they never touch), move horizontally in opposite directions at 0.018 of the
  side per frame: apart (the distance between them grows) or together (it shrinks, and they
  never pass each other).
- bounce: one small object moves horizontally at 0.06 of the side per frame and reflects off
  the walls (the centre's range is [0.18, 0.82]), so it turns once or twice in 16 frames.

Held out: the colour-shape-motion triples in HELD_OUT_MOTIONS are never rendered by the
training stream (`render_video(seed)`); `render_video(seed, held_out=True)` puts one of them in
the video. Every colour-shape pair and every motion of a triple is seen in training, only never
together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanodiffusion.data.shapes import COLOURS, SHAPES, SIZES, Obj, draw
from nanodiffusion.errors import NanodiffError

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image y points down
PAIR_MOTIONS = ("apart", "together")
MOTIONS = (*DIRECTIONS, *PAIR_MOTIONS, "bounce")
SPEEDS = {"slow": 0.012, "fast": 0.028}  # fractions of the side per frame (single objects)
PAIR_SPEED = 0.018
BOUNCE_SPEED = 0.06
_MARGIN = 0.03  # gap between an object's box and the frame's edge
BOUNCE_RANGE = (SIZES["small"] + _MARGIN, 1 - SIZES["small"] - _MARGIN)  # where a bouncing centre turns
# (colour, shape, motion) triples the training stream never renders
HELD_OUT_MOTIONS = (
    ("red", "circle", "up"),
    ("blue", "square", "left"),
    ("yellow", "star", "down"),
    ("green", "triangle", "apart"),
    ("purple", "diamond", "together"),
    ("orange", "square", "bounce"),
)
KINDS = ("single", "pair", "bounce")
_PHRASES = {
    "right": ("moves from left to right", "moves right", "moves to the right"),
    "left": ("moves from right to left", "moves left", "moves to the left"),
    "up": ("rises", "moves up", "moves upward"),
    "down": ("falls", "moves down", "drops"),
    "apart": ("move apart", "move away from each other", "drift apart"),
    "together": ("move together", "move towards each other", "come together"),
    "bounce": ("bounces from side to side", "bounces left and right", "bounces between the walls"),
}
_ADVERBS = {"slow": "slowly", "fast": "quickly"}
GRID_PROMPTS = (  # a text-to-video run's sample grids: one of each motion, none held out
    "a red circle moves from left to right",
    "a blue square falls",
    "a green star moves left quickly",
    "a yellow triangle rises slowly",
    "a purple diamond bounces from side to side",
    "an orange circle and a blue star move apart",
    "a green square and a red triangle move together",
    "a yellow circle moves up",
)


@dataclass
class Video:
    frames: np.ndarray  # [F, size, size, 3] uint8
    caption: str
    spec: dict  # what the caption states: kind, and per object colour, shape, motion (and speed)
    tracks: np.ndarray  # [objects, F, 2]: each object's true centre (cx, cy) per frame, fractions of the side


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, motions: tuple[str, ...], held_out: bool) -> tuple[str, str, str]:
    """A colour, shape and motion (one of `motions`): a held-out triple if held_out, else never one."""
    if held_out:
        triples = [t for t in HELD_OUT_MOTIONS if t[2] in motions]
        return triples[rng.integers(len(triples))]
    while True:
        triple = (list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))])
        triple += (motions[rng.integers(len(motions))],)
        if triple not in HELD_OUT_MOTIONS:
            return triple


def _single(rng: np.random.Generator, frames: int, held_out: bool) -> tuple[np.ndarray, list[Obj], str, dict]:
    colour, shape, motion = _pick(rng, tuple(DIRECTIONS), held_out)
    size = list(SIZES)[rng.integers(len(SIZES))]
    speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
    lo = SIZES[size] + _MARGIN
    travel = SPEEDS[speed] * (frames - 1)
    if travel > 1 - 2 * lo:
        raise NanodiffError(f"{frames} frames is too long for a {speed} {size} object to stay in view")
    dx, dy = DIRECTIONS[motion]
    along = rng.uniform(lo, 1 - lo - travel)  # the start, counted along the direction of motion
    across = rng.uniform(lo, 1 - lo)
    start = np.array([along, across] if dx else [across, along])
    if dx < 0 or dy < 0:
        start[0 if dx else 1] = 1 - start[0 if dx else 1]
    step = SPEEDS[speed] * np.array([dx, dy], float)
    track = start + np.arange(frames)[:, None] * step  # [F, 2]
    say_speed = rng.random() < 0.5
    verb = _PHRASES[motion][rng.integers(3)] + (f" {_ADVERBS[speed]}" if say_speed else "")
    caption = f"{_a(colour)} {colour} {shape} {verb}"
    want = {"colour": colour, "shape": shape, "motion": motion, "speed": speed if say_speed else None}
    return track[None], [Obj(shape, colour, size, 0.0, 0.0)], caption, {"kind": "single", "objects": [want]}


def _pair(rng: np.random.Generator, frames: int, held_out: bool) -> tuple[np.ndarray, list[Obj], str, dict]:
    first = _pick(rng, PAIR_MOTIONS, held_out)
    motion = first[2]
    while True:
        second = _pick(rng, (motion,), False)
        if second[:2] != first[:2]:
            break
    lo = SIZES["small"] + _MARGIN
    travel = PAIR_SPEED * (frames - 1)
    room = 1 - 2 * lo - 2 * travel  # what is left for the gap between them at their closest
    if room < 0:
        raise NanodiffError(f"{frames} frames is too long for two objects to stay in view")
    gap = rng.uniform(0, room)
    mid = rng.uniform(lo + gap / 2 + travel, 1 - lo - gap / 2 - travel)
    t = np.arange(frames) * PAIR_SPEED
    half = gap / 2 + (t if motion == "apart" else travel - t)  # half the distance between centres
    ys = rng.uniform(0.2, 0.28), rng.uniform(0.72, 0.8)  # top and bottom bands: boxes never touch
    sides = (-1, 1) if rng.random() < 0.5 else (1, -1)  # which of the two is on the left
    tracks = np.stack(
        [np.stack([mid + side * half, np.full(frames, y)], 1) for side, y in zip(sides, ys, strict=True)]
    )
    objs = [Obj(shape, colour, "small", 0.0, 0.0) for colour, shape, _ in (first, second)]
    names = [f"{_a(c)} {c} {s}" for c, s, _ in (first, second)]
    caption = f"{names[0]} and {names[1]} {_PHRASES[motion][rng.integers(3)]}"
    wants = [{"colour": c, "shape": s, "motion": motion, "speed": None} for c, s, _ in (first, second)]
    return tracks, objs, caption, {"kind": "pair", "objects": wants}


def _bounce(rng: np.random.Generator, frames: int, held_out: bool) -> tuple[np.ndarray, list[Obj], str, dict]:
    colour, shape, motion = _pick(rng, ("bounce",), held_out)
    lo, hi = BOUNCE_RANGE
    width = hi - lo
    # unfolded path from a random start and heading, folded into [lo, 1 - lo] (reflection at the walls)
    unfolded = rng.uniform(0, 2 * width) + BOUNCE_SPEED * np.arange(frames)
    folded = np.mod(unfolded, 2 * width)
    x = lo + np.where(folded <= width, folded, 2 * width - folded)
    track = np.stack([x, np.full(frames, rng.uniform(lo, 1 - lo))], 1)
    caption = f"{_a(colour)} {colour} {shape} {_PHRASES[motion][rng.integers(3)]}"
    want = {"colour": colour, "shape": shape, "motion": motion, "speed": None}
    return (
        track[None],
        [Obj(shape, colour, "small", 0.0, 0.0)],
        caption,
        {"kind": "bounce", "objects": [want]},
    )


_MAKERS = {"single": _single, "pair": _pair, "bounce": _bounce}


def render_video(
    seed: int, frames: int = 16, size: int = 32, kind: str | None = None, held_out: bool = False
) -> Video:
    """The video of a seed: frames [F, size, size, 3] uint8, caption, spec and true tracks.

    kind: single | pair | bounce (None: any, a third each). held_out=True puts one of
    HELD_OUT_MOTIONS's colour-shape-motion triples in the video (the training stream never does).
    Laid out in fractions of the side, so one seed at 32 and at 64 pixels is the same video."""
    if size < 16 or frames < 2:
        raise NanodiffError(f"videos need size >= 16 and frames >= 2, got size={size}, frames={frames}")
    rng = np.random.default_rng(seed)
    if kind is None:
        kind = KINDS[rng.integers(len(KINDS))]
    if kind not in _MAKERS:
        raise NanodiffError(f"unknown video kind {kind!r}; choose one of {', '.join(KINDS)}")
    tracks, objs, caption, spec = _MAKERS[kind](rng, frames, held_out)
    background_seed = int(rng.integers(2**31))  # one background for every frame
    images = [
        draw(
            [Obj(o.shape, o.colour, o.size, *track[f]) for o, track in zip(objs, tracks, strict=True)],
            size,
            np.random.default_rng(background_seed),
        )
        for f in range(frames)
    ]
    return Video(np.stack(images), caption, spec, tracks)


def render_videos(n: int, frames: int = 16, size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n training videos (seeds seed*n ... seed*n + n - 1): frames [n, F, H, W, 3] uint8 (the
    layout of `render_dataset`, one more axis) and captions."""
    videos = [render_video(seed * n + i, frames, size) for i in range(n)]
    return np.stack([v.frames for v in videos]), [v.caption for v in videos]

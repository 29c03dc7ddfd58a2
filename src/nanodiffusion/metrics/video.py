"""The judge of moving-shapes videos: the still shapes detector per frame, linked into tracks.

A video is read frame by frame with `data.shapes.detect`; detections are linked into tracks by
nearest centre; each object the caption names is the track that most often has its colour and
shape. Four verdicts per video (`judge_video`):

- identity: every named object is found, with its colour and shape, in every frame of one track;
- motion: its tracked displacement goes the stated way (left/right/up/down along that axis,
  apart/together in the distance between the two) by at least MIN_TRAVEL of the side, and at
  least STEADY of the frame-to-frame steps go that way too (a shuffled video's do about half);
  a bounce turns once or twice (as 16 frames of the renders do), over at least 0.3 of the side;
- smooth: the largest frame-to-frame velocity change of any track (`jerk_px`, in pixels) is at
  most SMOOTH_PX; constant-velocity renders read back at most about 0.3 px (detector noise).
  A bounce's turns at the walls are the data's own: frames within a step of a wall are left out;
- per_frame: the fraction of frames in which the still judge's colour check holds for every
  named object (an object of that shape in that colour; `data.shapes.judge`, kind single).
"""

from __future__ import annotations

import numpy as np

from nanodiffusion.data.moving_shapes import BOUNCE_RANGE, BOUNCE_SPEED, DIRECTIONS, SPEEDS
from nanodiffusion.data.shapes import Detected, detect
from nanodiffusion.errors import NanodiffError

MIN_TRAVEL = 0.1  # fraction of the side; the slowest render travels 0.18 in 16 frames
STEADY = 0.8  # share of frame-to-frame steps that must go the stated way
SMOOTH_PX = 1.0  # largest velocity change, pixels per frame per frame
STILL = 0.01  # a step shorter than this (fraction of the side) has no direction (detector noise: 0.005)
MAX_JUMP = 0.25  # a detection further than this (fraction of the side) from a track starts a new one

Track = list[Detected | None]  # one entry per frame


def tracks_of(frames: np.ndarray, max_jump: float = MAX_JUMP) -> list[Track]:
    """Detections of every frame [F, H, W, 3] linked into tracks: in each frame, the closest
    (track, detection) pairs are joined first; a detection left over starts a new track."""
    tracks: list[Track] = []
    for f, frame in enumerate(frames):
        found = detect(frame)
        last = [next(d for d in reversed(t) if d is not None) for t in tracks]
        pairs = sorted(
            (np.hypot(a.cx - d.cx, a.cy - d.cy), i, j)
            for i, a in enumerate(last)
            for j, d in enumerate(found)
        )
        taken_tracks, taken_found = set(), set()
        for distance, i, j in pairs:
            if distance <= max_jump and i not in taken_tracks and j not in taken_found:
                tracks[i].append(found[j])
                taken_tracks.add(i)
                taken_found.add(j)
        for i, track in enumerate(tracks):
            if i not in taken_tracks:
                track.append(None)
        tracks += [[None] * f + [d] for j, d in enumerate(found) if j not in taken_found]
    return tracks


def _is(d: Detected | None, want: dict) -> bool:
    return d is not None and d.colour == want["colour"] and d.shape == want["shape"]


def _centres(track: Track, want: dict) -> np.ndarray:
    """[F, 2] centres of the frames where the track holds the wanted object, NaN elsewhere."""
    return np.array([(d.cx, d.cy) if _is(d, want) else (np.nan, np.nan) for d in track])


def _goes(values: np.ndarray) -> bool:
    """Whether a per-frame quantity [F] (NaN where unseen) rises by MIN_TRAVEL, steadily."""
    seen = values[~np.isnan(values)]
    if len(seen) < 2:
        return False
    steps = np.diff(seen)
    return bool(seen[-1] - seen[0] >= MIN_TRAVEL and np.mean(steps > 0) >= STEADY)


def _directed(centres: np.ndarray, want: dict) -> dict[str, bool]:
    """motion (and speed, when stated) of one object's centres [F, 2] that should go left/right/up/down."""
    along = centres @ np.array(DIRECTIONS[want["motion"]], float)
    across = centres @ np.array(DIRECTIONS[want["motion"]][::-1], float)
    seen = np.flatnonzero(~np.isnan(along))
    if len(seen) < 2:
        return {"motion": False} | ({"speed": False} if want.get("speed") else {})
    drift = abs(across[seen[-1]] - across[seen[0]])
    checks = {"motion": _goes(along) and bool(drift < MIN_TRAVEL)}
    if want.get("speed"):
        speed = (along[seen[-1]] - along[seen[0]]) / (seen[-1] - seen[0])
        checks["speed"] = bool((speed > np.mean(list(SPEEDS.values()))) == (want["speed"] == "fast"))
    return checks


def _bounces(centres: np.ndarray) -> bool:
    """Whether centres [F, 2] bounce as 16 frames of the renders do: turn once or twice, over at
    least 0.3 of the side, with little vertical drift."""
    x, y = centres[~np.isnan(centres[:, 0])].T
    if len(x) < 2:
        return False
    steps = np.diff(x)
    heading = np.sign(steps[np.abs(steps) > STILL])
    turns = int(np.sum(heading[1:] != heading[:-1]))
    return bool(1 <= turns <= 2 and np.ptp(x) >= 0.3 and np.ptp(y) < MIN_TRAVEL)


def judge_video(frames: np.ndarray, spec: dict) -> dict:
    """Which of the caption's statements hold in a video [F, H, W, 3] (uint8 or floats in [0, 255]).

    Returns identity, motion, smooth, speed (when the caption states one) and all as booleans,
    jerk_px (largest velocity change, pixels) and per_frame (fraction of frames), as described
    in the module docstring."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise NanodiffError(f"judge_video() wants frames [F, H, W, 3], got shape {frames.shape}")
    size = frames.shape[1]
    tracks = tracks_of(frames)
    wants = spec["objects"]
    best = [max(tracks, key=lambda t: sum(_is(d, w) for d in t), default=[None] * len(frames)) for w in wants]
    centres = [_centres(t, w) for t, w in zip(best, wants, strict=True)]  # each [F, 2]
    checks: dict = {"identity": all(not np.isnan(c).any() for c in centres)}

    motion = wants[0]["motion"]
    if motion in DIRECTIONS:
        checks |= _directed(centres[0], wants[0])
    elif motion in ("apart", "together"):
        distance = np.hypot(*(centres[0] - centres[1]).T)
        checks["motion"] = _goes(distance if motion == "apart" else -distance)
    elif motion == "bounce":
        checks["motion"] = _bounces(centres[0])
        # the velocity changes at the walls are the data's own: judge the frames a step away from them
        x = centres[0][:, 0]
        near_wall = (x < BOUNCE_RANGE[0] + BOUNCE_SPEED) | (x > BOUNCE_RANGE[1] - BOUNCE_SPEED)
        centres = [np.where(near_wall[:, None], np.nan, centres[0])]
    else:
        raise NanodiffError(f"unknown motion {motion!r}")

    jerks = [np.abs(np.diff(c, 2, axis=0)).max(1) for c in centres]  # each [F - 2], NaN where unseen
    jerk = max((float(np.nanmax(j)) for j in jerks if not np.isnan(j).all()), default=np.inf)
    checks["smooth"] = bool(jerk * size <= SMOOTH_PX)
    checks["all"] = all(checks.values())
    # the still judge's colour check per frame (kind single: an object of that shape in that colour)
    found = [[d for t in tracks if (d := t[f]) is not None] for f in range(len(frames))]
    per_frame = np.mean([all(any(_is(d, w) for d in ds) for w in wants) for ds in found])
    return {**checks, "jerk_px": jerk * size, "per_frame": float(per_frame)}


def video_adherence(videos: list[np.ndarray] | np.ndarray, specs: list[dict]) -> dict[str, float]:
    """Over a set of videos [F, H, W, 3], one per caption spec: the fraction that hold each
    verdict of `judge_video` (speed: of those whose caption states one), motion_single (motion
    among single-object captions), the mean per_frame adherence, the largest jerk_px (max_jerk_px) and n."""
    if len(videos) != len(specs):
        raise NanodiffError(f"{len(videos)} videos for {len(specs)} prompts")
    verdicts = [judge_video(v, s) for v, s in zip(videos, specs, strict=True)]
    names = ("identity", "motion", "smooth", "speed", "all", "per_frame")
    result = {
        name: float(np.mean([v[name] for v in verdicts if name in v]))
        for name in names
        if any(name in v for v in verdicts)
    }
    single = [v["motion"] for v, s in zip(verdicts, specs, strict=True) if s["kind"] == "single"]
    if single:  # the direction of one object's motion: the aim the video benchmark reports
        result["motion_single"] = float(np.mean(single))
    return {**result, "max_jerk_px": max(v["jerk_px"] for v in verdicts), "n": len(verdicts)}

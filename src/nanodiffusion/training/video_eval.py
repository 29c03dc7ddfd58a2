"""`nanodiff eval-video`: a video run's samples judged exactly.

Moving shapes (a text-to-video run on `video-shapes`): the run draws one video for each of n
test prompts (the captions of test videos, seeds never rendered in training), of n held-out
colour-shape-motion prompts (never rendered in training at all), and continues n test videos
from their first frame (image-to-video); the judge (metrics.video) reads each video's tracks:
identity, motion (all prompts and single objects), smoothness, per-frame adherence. The test
videos themselves are judged beside them (the judge's ceiling), and a frame-by-frame baseline
(an image run sampled once per frame, `data.per_frame`) on the same prompts when given.

Moving MNIST (an unconditional run on `moving-mnist`): n videos read by the frame classifier
(metrics.moving_mnist, trained once and cached: the one reason this lives in the training
layer): the fraction whose two digits keep their identity (one pair read in at least 80% of the
frames), and the per-frame
FID of classifier features against the test videos, beside the real-vs-real floor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nanodiffusion.data.datasets import SHAPES_TEST_SEED, as_frames
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import conditioning, load_parts
from nanodiffusion.inference.video import draw_video, run_frames
from nanodiffusion.io.viz import to_uint8

HELD_OUT_SEED = SHAPES_TEST_SEED + 500_000  # held-out prompts' seeds (render_video(..., held_out=True))
BATCH = 20  # videos drawn at once


def as_uint8_videos(videos: torch.Tensor) -> np.ndarray:
    """[N, C, F, H, W] in [-1, 1] -> [N, F, H, W, C] uint8."""
    n, c, f, h, w = videos.shape
    return to_uint8(as_frames(videos)).reshape(n, f, h, w, c)


def _draw(parts, prompts: list[str] | None, n: int, *, guidance: float, seed: int = 0, first=None, **kw):
    """n videos, prompt i for video i (None: unconditional), in batches of BATCH drawn with seeds
    seed, seed + 1, ...; `first`: each video's given first frame(s)."""
    cfg, denoiser, autoencoder, encoder = parts
    out = []
    for b, start in enumerate(range(0, n, BATCH)):
        rows = slice(start, min(n, start + BATCH))
        k = rows.stop - rows.start
        cond, w, uncond = conditioning(cfg, encoder, k, prompts[rows] if prompts else None, guidance=guidance)
        given = None if first is None else first[rows]
        drawn = draw_video(
            cfg, denoiser, k, autoencoder=autoencoder, cond=cond, guidance=w, uncond=uncond, first=given,
            seed=seed + b, **kw,
        )  # fmt: skip
        out.append(drawn)
    return torch.cat(out)


def evaluate_video(
    run: str | Path,
    n: int = 100,
    n_held_out: int | None = None,
    steps: int = 20,
    sampler: str = "dpm++2m",
    guidance: float | None = None,
    seed: int = 0,
    baseline: str | Path | None = None,
    weights: str = "ema",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """The judges of a video run (see the module's docstring) as one dict."""
    parts = load_parts(run, weights, device)
    cfg = parts[0]
    frames = run_frames(cfg)
    if frames is None:
        from nanodiffusion.inference.audio import run_makes

        raise NanodiffError(
            f"{run} makes {run_makes(cfg)}, not videos: "
            "eval-video judges a video run (the video-shapes preset)"
        )
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    kw = {"steps": steps, "sampler": sampler, "seed": seed}
    if cfg.data.name == "moving-mnist":
        return _moving_mnist(parts, n, kw, progress)
    if cfg.data.name != "video-shapes" or parts[3] is None:
        raise NanodiffError(
            f"{run} was trained on {cfg.data.name}: eval-video judges text-to-video on video-shapes "
            "and unconditional moving-mnist runs"
        )
    from nanodiffusion.data.moving_shapes import render_video
    from nanodiffusion.metrics.video import video_adherence

    guidance = (
        guidance
        if guidance is not None
        else (cfg.run.sample_guidance if cfg.run.sample_guidance > 1 else 4.0)
    )
    n_held_out = n if n_held_out is None else n_held_out
    size = cfg.model.image_size[-1]
    bar = tqdm(total=4 + (baseline is not None), desc="eval-video", disable=not progress)
    test = [render_video(SHAPES_TEST_SEED + i, frames, size) for i in range(n)]
    held = [render_video(HELD_OUT_SEED + i, frames, size, held_out=True) for i in range(n_held_out)]
    result: dict = {"run": str(run), "frames": frames, "guidance": guidance, **kw}
    result["real"] = video_adherence([v.frames for v in test], [v.spec for v in test])
    bar.update()

    start = time.perf_counter()
    videos = _draw(parts, [v.caption for v in test], n, guidance=guidance, **kw)
    result["frames_per_s"] = n * frames / (time.perf_counter() - start)
    result["text"] = video_adherence(as_uint8_videos(videos), [v.spec for v in test])
    result["samples"] = videos[:8]
    bar.update()
    if held:
        drawn = _draw(parts, [v.caption for v in held], n_held_out, guidance=guidance, **kw)
        result["held_out"] = video_adherence(as_uint8_videos(drawn), [v.spec for v in held])
    bar.update()
    first = torch.from_numpy(np.stack([v.frames[0] for v in test])).permute(0, 3, 1, 2).float() / 127.5 - 1
    drawn = _draw(parts, [v.caption for v in test], n, first=first, guidance=guidance, **kw)
    result["i2v"] = video_adherence(as_uint8_videos(drawn), [v.spec for v in test])
    result["i2v"]["first_frame_max_error"] = float((drawn[:, :, 0] - first).abs().max())
    bar.update()
    if baseline is not None:
        base = load_parts(baseline, weights, device)
        if run_frames(base[0]) is not None or base[3] is None:
            raise NanodiffError(f"the baseline {baseline} must be a text-to-image run (data.per_frame)")
        drawn = _draw(base, [v.caption for v in test], n, frames=frames, guidance=guidance, **kw)
        result["baseline"] = video_adherence(as_uint8_videos(drawn), [v.spec for v in test])
        result["baseline_run"] = str(baseline)
        bar.update()
    bar.close()
    return result


def _moving_mnist(parts, n: int, kw: dict, progress: bool) -> dict:
    from nanodiffusion.data.moving_mnist import load_moving_mnist
    from nanodiffusion.metrics.moving_mnist import frame_fid, judge_moving_mnist
    from nanodiffusion.training.video_judge import frame_classifier

    cfg = parts[0]
    frames, size = run_frames(cfg), cfg.model.image_size[-1]
    classifier = frame_classifier(progress=progress)
    test = load_moving_mnist("test", frames=frames, size=size, progress=progress)
    train = load_moving_mnist("train", frames=frames, size=size, progress=progress)
    start = time.perf_counter()
    videos = _draw(parts, None, n, guidance=1.0, progress=progress, **kw)
    fps = n * frames / (time.perf_counter() - start)
    samples = as_uint8_videos(videos)[..., 0]  # [n, F, H, W]
    judged = judge_moving_mnist(classifier, samples)
    real = judge_moving_mnist(classifier, test.videos[:n], test.labels[:n])
    return {
        "frames": frames,
        **kw,
        "frames_per_s": fps,
        "identity": judged["identity"],
        "real_identity": real["identity"],
        "real_per_frame_accuracy": real.get("per_frame_accuracy"),
        "frame_fid": frame_fid(classifier, samples, test.videos[:n]),
        "floor_fid": frame_fid(classifier, train.videos[:n], test.videos[:n]),
        "n": n,
        "samples": videos[:8],
    }


def format_video_table(result: dict) -> str:
    """evaluate_video's result as a plain-text table, one row per judged set."""
    if "identity" in result:  # Moving MNIST
        return "\n".join(
            [
                f"{'':24s} {'identity':>9s} {'frame FID':>10s}",
                f"{'samples':24s} {result['identity']:9.3f} {result['frame_fid']:10.2f}",
                f"{'real test videos':24s} {result['real_identity']:9.3f} {result['floor_fid']:10.2f}",
                f"{result['n']} videos, {result['frames_per_s']:.1f} frames/s sampled",
            ]
        )
    names = ("identity", "motion", "motion_single", "smooth", "per_frame", "all")
    heads = ("identity", "motion", "single", "smooth", "per-frame", "all")
    lines = [f"{'':24s}" + "".join(f"{h:>10s}" for h in heads)]
    sets = [("text", "test prompts"), ("held_out", "held-out prompts"), ("i2v", "image-to-video")]
    sets += [("baseline", "frame-by-frame baseline"), ("real", "real test videos")]
    for key, label in sets:
        if key in result:
            row = result[key]
            lines.append(
                f"{label:24s}" + "".join(f"{row[k]:10.3f}" if k in row else f"{'':10s}" for k in names)
            )
    lines.append(
        f"guidance {result['guidance']:g}; {result['text']['n']} videos a set; {result['frames_per_s']:.1f} "
        f"frames/s; image-to-video's frame 0 differs from the given by at most "
        f"{result['i2v']['first_frame_max_error']:.1e}"
    )
    return "\n".join(lines)

"""Videos from a run: text-to-video, image-to-video and the frame-by-frame baseline.

A video run's network takes [B, C, F, H, W] (a space-time DiT, `model.image_size = [F, H, W]`)
and everything else is the image engine's: `draw` gives its videos as it gives images. Image-to-
video (the first frame given), video prediction (the first k frames given) and frame
interpolation (every other frame given) are inpainting over the frame axis (core.editing,
"replace"): the given frames are the known region, no training of their own.

The frame-by-frame baseline (what the temporal model buys) is an image run sampled once per
frame with the same condition and independent noise: a run trained with `data.per_frame` (the
frames of a video dataset, each with its video's caption) or any image run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import draw
from nanodiffusion.io.config import Config
from nanodiffusion.nets import sample_shape

MAX_FRAMES = 256


def run_frames(cfg: Config) -> int | None:
    """The frames of a video run's videos; None for an image run."""
    shape = sample_shape(cfg.model)
    return shape[1] if len(shape) == 4 else None


def given_mask(frames: int, given: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """known [1, 1, F, H, W]: 1 on the given frames (indices), 0 elsewhere."""
    known = torch.zeros(1, 1, frames, *shape[-2:])
    known[:, :, given] = 1
    return known


@torch.no_grad()
def draw_video(
    cfg: Config,
    denoiser: Denoiser,
    n: int,
    *,
    frames: int | None = None,
    autoencoder=None,
    cond: torch.Tensor | None = None,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
    first: torch.Tensor | None = None,
    at: list[int] | None = None,
    sampler: str = "dpm++2m",
    steps: int = 20,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """n videos [n, C, F, H, W] in [-1, 1].

    A video run draws them whole (``frames``: None or its own count). An image run is the
    frame-by-frame baseline: n x frames images, frame f of video i with video i's condition and
    its own noise. ``first`` ([1 or n, C, H, W], or [1 or n, C, k, H, W] for the first k frames)
    is image-to-video / video prediction: a video run keeps those frames exactly and draws the
    rest around them; the baseline puts them in place and draws the others independently.
    ``at`` places the given frames elsewhere: frame interpolation gives every other frame,
    ``at=list(range(0, F, 2))`` with k = F / 2 frames in ``first``."""
    own = run_frames(cfg)
    if own is not None and frames not in (None, own):
        raise NanodiffError(f"this run makes {own}-frame videos, not {frames}-frame ones")
    frames = own if frames is None else frames
    if frames is None or not 1 <= frames <= MAX_FRAMES:
        raise NanodiffError(f"frames must be 1 to {MAX_FRAMES}, got {frames}")
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    given = None if first is None else _given_frames(cfg, autoencoder, first, n, frames)
    if at is None and given is not None:
        at = list(range(given.shape[2]))
    if given is not None and (
        len(at) != given.shape[2] or len(set(at)) != len(at) or not set(at) <= set(range(frames))
    ):
        raise NanodiffError(f"at must name {given.shape[2]} different frames of 0..{frames - 1}, got {at}")
    common = {"autoencoder": autoencoder, "guidance": guidance, "uncond": uncond, "sampler": sampler}
    common |= {"steps": steps, "seed": seed, "progress": progress, **options}
    if own is not None and given is None:
        return draw(cfg, denoiser, n, cond=cond, **common)
    if own is not None:  # the given frames are the known region of an inpainting over frames
        init = torch.zeros(len(given), given.shape[1], frames, *given.shape[-2:])
        init[:, :, at] = given
        known = given_mask(frames, at, init.shape)
        return draw(
            cfg, denoiser, n, cond=cond, init_image=init, known=known, **common
        )  # replace: the default
    # the frame-by-frame baseline: the image run once per frame, its condition repeated
    per = None if cond is None else cond.repeat_interleave(frames, 0)
    images = draw(cfg, denoiser, n * frames, cond=per, **common)
    videos = images.unflatten(0, (n, frames)).transpose(1, 2).contiguous()  # [n, C, F, H, W]
    if given is not None:
        videos[:, :, at] = given.expand(n, -1, -1, -1, -1)
    return videos


def _given_frames(cfg: Config, autoencoder, first: torch.Tensor, n: int, frames: int) -> torch.Tensor:
    """`first` as [1 or n, C, k, H, W] in pixels, checked against the run's frame size."""
    from nanodiffusion.inference.runs import image_shape

    shape = image_shape(cfg, autoencoder)
    c, h, w = shape[0], shape[-2], shape[-1]
    if first.ndim == 4:
        first = first[:, :, None]
    if (
        first.ndim != 5
        or tuple(first.shape[1:2]) + tuple(first.shape[3:]) != (c, h, w)
        or len(first) not in (1, n)
    ):
        raise NanodiffError(
            f"given frames must be [1 or {n}, {c}, {h}, {w}] (a first frame) or "
            f"[1 or {n}, {c}, k, {h}, {w}], got {list(first.shape)}"
        )
    if not 1 <= first.shape[2] < frames:
        raise NanodiffError(f"give 1 to {frames - 1} frames of a {frames}-frame video, got {first.shape[2]}")
    return first.float()


def video_files(videos: torch.Tensor, folder: str | Path, fps: float = 8) -> dict[str, Path]:
    """Write videos [N, C, F, H, W] as a frame strip (strip.png, a video a row), one animated GIF
    of them all (videos.gif), the same as MP4 where an encoder is installed (videos.mp4,
    imageio-ffmpeg), and each video's own GIF (video_0000.gif, ...)."""
    from nanodiffusion.io.viz import mp4_encoder, save_mp4, save_strip, save_video_gif

    folder = Path(folder)
    files = {
        "strip": save_strip(videos, folder / "strip.png"),
        "gif": save_video_gif(videos, folder / "videos.gif", fps),
    }
    if mp4_encoder() is not None:
        files["mp4"] = save_mp4(videos, folder / "videos.mp4", fps)
    for i, video in enumerate(videos):
        save_video_gif(video[None], folder / f"video_{i:04d}.gif", fps)
    return files

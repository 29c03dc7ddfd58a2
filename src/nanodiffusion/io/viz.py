"""Pictures of images, schedules and training runs, as PNG and GIF files.

Images are tensors [N, C, H, W] in [-1, 1] with C = 1 (grey) or 3 (RGB); -1 maps to pixel 0
and 1 to 255. Grids put white padding between tiles. Figures are drawn on matplotlib's
``Figure`` directly (Agg canvas, no pyplot), so importing this module never changes the
backend of a notebook or a GUI session.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from nanodiffusion.core.schedules import Schedule
from nanodiffusion.data.datasets import as_frames
from nanodiffusion.data.files import read_image, write_atomically
from nanodiffusion.errors import NanodiffError

PAD = 255  # grid padding: white, in pixel units
MIN_TILE_PX = 48  # automatic scales make each tile at least this big


def _save_figure(fig: Figure, path: str | Path) -> Path:
    # "tight" keeps long row labels in
    return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise NanodiffError(f"{name} must be a [N, C, H, W] tensor with C = 1 or 3, got {shape}")
    if images.shape[0] == 0:
        raise NanodiffError(f"{name} is an empty batch; nothing to draw")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 in [0, 255]."""
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _grid(images: torch.Tensor, ncol: int, padding: int) -> np.ndarray:
    """Tile [N, C, H, W] into one [H', W', C] uint8 array, ncol tiles per row."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), PAD)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncol)
        y, x = padding + row * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = tile
    return grid.astype(np.uint8)


def _auto_scale(images: torch.Tensor) -> int:
    return max(1, math.ceil(MIN_TILE_PX / min(images.shape[-2:])))


def _imshow(ax, pixels: np.ndarray) -> None:
    """Show an [H, W, C] uint8 array pixel-exact, greys in grey."""
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")


def to_pil(images: torch.Tensor, nrow: int | None = None, padding: int = 1, scale: int = 1) -> Image.Image:
    """Tile a batch into one image, ``nrow`` tiles per row (default ceil(sqrt(N))).

    The grid is (rows * (H + padding) + padding) * scale pixels high, likewise wide, enlarged
    with nearest-neighbour so that tiny digits stay crisp. Mode "L" for grey, "RGB" for colour.
    """
    _check_images(images)
    n = images.shape[0]
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1 or padding < 0 or scale < 1:
        raise NanodiffError(f"need nrow >= 1, padding >= 0, scale >= 1; got {nrow}, {padding}, {scale}")
    grid = _grid(images, min(nrow, n), padding)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    scale: int | None = None,
    modality: str = "",
    sample_rate: int = 16000,
) -> Path:
    """Write a batch as one PNG grid; by default scaled so each tile is at least 48 px. Videos
    [N, C, F, H, W] are drawn as frame strips, a video a row; sound (modality "audio": waveforms
    [N, 1, T]; "spectrogram") as spectrograms; piano rolls ("roll") as rolls."""
    if isinstance(images, torch.Tensor) and images.ndim == 5:
        return save_strip(images, path, scale)
    if modality == "audio":
        from nanodiffusion.data.audio import mel_spectrogram

        images, modality = (
            mel_spectrogram(images.reshape(len(images), -1), sample_rate)[:, None],
            "spectrogram",
        )
    if modality == "spectrogram":
        return save_spectrograms(images, path, nrow, scale)
    if modality == "roll":
        return save_rolls(images, path, nrow, scale)
    _check_images(images)
    grid = to_pil(images, nrow, scale=_auto_scale(images) if scale is None else scale)
    return write_atomically(path, grid.save)


# --- sound and music: spectrograms [N, 1, M, F] and piano rolls [N, V, P, S] in [-1, 1] ----------
VOICE_COLOURS = ((0.85, 0.15, 0.15), (0.95, 0.55, 0.05), (0.15, 0.6, 0.2), (0.15, 0.3, 0.85))


def save_spectrograms(
    specs: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None
):
    """Spectrogram images in [-1, 1] (row 0 the lowest band) as a grid, low frequencies at the
    bottom, in matplotlib's magma colours."""
    from matplotlib import colormaps

    if not isinstance(specs, torch.Tensor) or specs.ndim != 4 or specs.shape[1] != 1 or len(specs) == 0:
        raise NanodiffError(f"spectrograms must be a non-empty [N, 1, M, F] tensor, got {_shape(specs)}")
    values = ((specs[:, 0].flip(1).clamp(-1, 1) + 1) / 2).numpy()
    rgb = torch.from_numpy(colormaps["magma"](values)[..., :3]).permute(0, 3, 1, 2).float() * 2 - 1
    grid = to_pil(rgb, nrow, scale=scale or 2)
    return write_atomically(path, grid.save)


def save_rolls(rolls: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None):
    """Piano rolls (a note where > 0; voices soprano, alto, tenor, bass in red, orange, green,
    blue) as a grid, high pitches at the top, time to the right."""
    if not isinstance(rolls, torch.Tensor) or rolls.ndim != 4 or len(rolls) == 0:
        raise NanodiffError(f"piano rolls must be a non-empty [N, V, P, S] tensor, got {_shape(rolls)}")
    on = (rolls.float() > 0).flip(2)  # [N, V, P, S], high pitches first
    rgb = torch.ones(len(rolls), 3, *rolls.shape[2:])
    for v in range(rolls.shape[1]):
        colour = torch.tensor(VOICE_COLOURS[v % len(VOICE_COLOURS)])[None, :, None, None]
        rgb = torch.where(on[:, v : v + 1], colour, rgb)
    grid = to_pil(rgb * 2 - 1, nrow, scale=scale or 2)
    return write_atomically(path, grid.save)


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


# --- videos [N, C, F, H, W] in [-1, 1]: frame strips, animated GIFs, MP4 -----------------------


def _check_videos(videos: torch.Tensor) -> None:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] not in (1, 3):
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise NanodiffError(f"videos must be a [N, C, F, H, W] tensor with C = 1 or 3, got {shape}")
    if 0 in videos.shape[:3]:
        raise NanodiffError(f"videos of shape {tuple(videos.shape)} hold no frames; nothing to draw")


def save_strip(videos: torch.Tensor, path: str | Path, scale: int | None = None) -> Path:
    """Write videos as one PNG: each video's frames left to right, a video a row."""
    _check_videos(videos)
    frames = as_frames(videos)  # [N F, C, H, W], video-major
    grid = to_pil(frames, videos.shape[2], scale=_auto_scale(frames) if scale is None else scale)
    return write_atomically(path, grid.save)


def video_frames(
    videos: torch.Tensor, nrow: int | None = None, scale: int | None = None
) -> list[Image.Image]:
    """Frame f of every video tiled into one image, for each f: an animation of the whole batch."""
    _check_videos(videos)
    scale = _auto_scale(videos) if scale is None else scale
    return [to_pil(videos[:, :, f], nrow, scale=scale) for f in range(videos.shape[2])]


def save_video_gif(videos: torch.Tensor, path: str | Path, fps: float = 8, nrow: int | None = None) -> Path:
    """Write videos as one looping animated GIF (the batch tiled in every frame)."""
    _check_videos(videos)
    if not fps > 0:
        raise NanodiffError(f"fps must be positive, got {fps}")
    ms = round(1000 / fps)
    return save_gif(list(videos.unbind(2)), path, duration_ms=ms, nrow=nrow, hold_last_ms=ms)


def mp4_encoder() -> str | None:
    """The ffmpeg binary of PyPI's imageio-ffmpeg (which ships its own), or None without it."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def save_mp4(videos: torch.Tensor, path: str | Path, fps: float = 8, nrow: int | None = None) -> Path:
    """Write videos as an H.264 MP4 (yuv420p, so every player shows it) through imageio-ffmpeg's
    ffmpeg; one line when it is not installed. Frames are padded to even sides."""
    import subprocess

    ffmpeg = mp4_encoder()
    if ffmpeg is None:
        raise NanodiffError("no MP4 encoder: pip install imageio-ffmpeg (it ships ffmpeg), or write a GIF")
    if not fps > 0:
        raise NanodiffError(f"fps must be positive, got {fps}")
    frames = [np.asarray(f.convert("RGB")) for f in video_frames(videos, nrow)]
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    raw = b"".join(np.pad(f, ((0, H - h), (0, W - w), (0, 0)), constant_values=PAD).tobytes() for f in frames)

    def encode(tmp: Path) -> None:
        command = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}"]
        command += [
            "-r",
            str(fps),
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
            str(tmp),
        ]
        done = subprocess.run(command, input=raw, capture_output=True)
        if done.returncode:
            message = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
            raise NanodiffError(f"ffmpeg could not write {path}: {message[-1]}")

    return write_atomically(path, encode)


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each image at its own size as ``{prefix}_0000.png``, ``{prefix}_0001.png``, ..."""
    _check_images(images)
    paths = [Path(folder) / f"{prefix}_{i:04d}.png" for i in range(images.shape[0])]
    for image, path in zip(images, paths, strict=True):
        write_atomically(path, to_pil(image[None], padding=0).save)
    return paths


def _strip_levels(schedule: Schedule, steps: Sequence[int] | None) -> tuple[torch.Tensor, list[str]]:
    """alpha_bar [K] (float64) at the chosen steps, and a panel title for each."""
    T = schedule.T
    steps = sorted({round(i * T / 10) for i in range(10)} | {T - 1}) if steps is None else steps
    steps = [int(t) for t in steps]
    if not steps or not all(0 <= t < T for t in steps):
        raise NanodiffError(f"steps must be a non-empty list of steps in [0, {T - 1}], got {steps}")
    if schedule.discrete:
        return schedule.alpha_bar()[steps], [f"t={t}" for t in steps]
    # Continuous (edm): step t is time u = t / (T - 1); label by sigma, the level a model sees.
    alpha_bar = schedule.alpha_bar_at(torch.tensor(steps, dtype=torch.float64) / max(T - 1, 1))
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    return alpha_bar, [f"σ={float(s):.3g}" for s in sigmas]


def forward_strip(
    x0: torch.Tensor, schedule: Schedule, steps: Sequence[int] | None = None, seed: int = 0
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps at each step, one eps, clamped.

    x0 is [C, H, W] or [1, C, H, W]; returns [K, C, H, W] clamped to [-1, 1] for display.
    Default steps: 0, T/10, ..., 9T/10 and T-1. For ``edm``, step t means time u = t / (T - 1)
    of ``alpha_bar_at``.
    """
    alpha_bar, _ = _strip_levels(schedule, steps)
    return _forward(x0, alpha_bar, seed)


def _as_batch(x0: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [1, C, H, W]; batches pass through, checked."""
    x0 = x0[None] if isinstance(x0, torch.Tensor) and x0.ndim == 3 else x0
    _check_images(x0, "x0")
    return x0


def _forward(x0: torch.Tensor, alpha_bar: torch.Tensor, seed: int) -> torch.Tensor:
    x0 = _as_batch(x0)
    if x0.shape[0] != 1:
        raise NanodiffError(f"forward_strip takes one image, got a batch of {x0.shape[0]}")
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    a = alpha_bar.to(x0.device).to(x0.dtype).reshape(-1, 1, 1, 1)  # [K, 1, 1, 1]
    return (a.sqrt() * x0 + (1 - a).sqrt() * eps).clamp(-1, 1)


def save_forward_strip(
    x0: torch.Tensor,
    schedule: Schedule,
    path: str | Path,
    steps: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Save the forward process as a figure: one row per image in x0, columns titled by level."""
    x0 = _as_batch(x0)
    alpha_bar, titles = _strip_levels(schedule, steps)
    fig = Figure(figsize=(1.1 * len(titles), 1.2 * x0.shape[0] + 0.3), layout="constrained")
    axes = fig.subplots(x0.shape[0], len(titles), squeeze=False)
    for row, image in zip(axes, x0, strict=True):
        for ax, x_t in zip(row, _forward(image, alpha_bar, seed), strict=True):
            _imshow(ax, to_uint8(x_t[None])[0])
            ax.set_axis_off()
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"forward process q(x_t | x0), {schedule.kind} schedule", fontsize=10)
    return _save_figure(fig, path)


def plot_schedules(schedules: dict[str, Schedule], path: str | Path) -> Path:
    """Plot alpha_bar and log-SNR against u = t / (T - 1), one line per schedule."""
    if not schedules:
        raise NanodiffError("plot_schedules needs at least one schedule")
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_ab, ax_snr = fig.subplots(1, 2)
    for name, schedule in schedules.items():
        if schedule.discrete:
            alpha_bar = schedule.alpha_bar()
            u = torch.arange(schedule.T, dtype=torch.float64) / max(schedule.T - 1, 1)
        else:
            u = torch.linspace(0, 1, 201, dtype=torch.float64)
            alpha_bar = schedule.alpha_bar_at(u)
        ax_ab.plot(u, alpha_bar, label=name)
        # logit clamps alpha_bar into [eps, 1 - eps], so 0 and 1 plot as finite values
        ax_snr.plot(u, torch.logit(alpha_bar, eps=1e-12), label=name)
    ax_ab.set(xlabel="u = t / (T - 1)", ylabel="alpha_bar", title="signal kept: alpha_bar")
    ax_snr.set(
        xlabel="u = t / (T - 1)",
        ylabel="log SNR = log(alpha_bar / (1 - alpha_bar))",
        title="log signal-to-noise ratio",
    )
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(fig, path)


def save_gif(
    frames: list[torch.Tensor],
    path: str | Path,
    duration_ms: int = 80,
    nrow: int | None = None,
    scale: int | None = None,
    hold_last_ms: int = 1000,
) -> Path:
    """Animate a list of batches (each tiled like ``to_pil``) as a looping GIF; hold the last."""
    if not frames:
        raise NanodiffError("save_gif needs at least one frame")
    for frame in frames:
        _check_images(frame, "each frame")
    if len({tuple(frame.shape) for frame in frames}) > 1:
        raise NanodiffError("all frames of a GIF must have the same shape")
    scale = _auto_scale(frames[0]) if scale is None else scale
    images = [to_pil(frame, nrow, scale=scale) for frame in frames]
    durations = [duration_ms] * (len(images) - 1) + [hold_last_ms]
    return write_atomically(
        path,
        lambda tmp: images[0].save(tmp, save_all=True, append_images=images[1:], duration=durations, loop=0),
    )


def _read_metrics(metrics: list[dict] | str | Path) -> list[dict]:
    if isinstance(metrics, list):
        return metrics
    records = []
    for number, line in enumerate(Path(metrics).read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise NanodiffError(f"{metrics}:{number}: not a JSON line ({err.msg})") from None
    return records


def plot_loss(metrics: list[dict] | str | Path, path: str | Path) -> Path:
    """Plot loss against step from a JSONL log or a list of dicts: raw (thin) and EMA (bold).

    Records without a finite ``loss`` are skipped. The EMA spans about 1/40 of the points.
    """
    points = [
        (record["step"], float(record["loss"]))
        for record in _read_metrics(metrics)
        if "loss" in record and math.isfinite(record["loss"])
    ]
    if not points:
        raise NanodiffError("no records with a finite 'loss' to plot")
    steps, losses = zip(*points, strict=True)
    beta = 1 - 1 / max(1, len(losses) // 40)
    ema = [losses[0]]
    for loss in losses[1:]:
        ema.append(beta * ema[-1] + (1 - beta) * loss)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, lw=0.7, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(steps, ema, lw=2, color="tab:blue", label="moving average")
    ax.set_yscale("log" if min(losses) > 0 else "linear")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save_figure(fig, path)


def plot_rows(rows: list[torch.Tensor], labels: list[str], path: str | Path, padding: int = 1) -> Path:
    """One labelled row per batch (e.g. one per guidance scale or sampler), in one figure.

    All rows need the same C, H, W; shorter rows are filled out with blank tiles.
    """
    if not rows or len(rows) != len(labels):
        raise NanodiffError(f"need one label per row, got {len(rows)} rows, {len(labels)} labels")
    for row in rows:
        _check_images(row, "each row")
    if len({tuple(row.shape[1:]) for row in rows}) > 1:
        raise NanodiffError("all rows must hold images of the same [C, H, W]")
    width = max(row.shape[0] for row in rows)
    # fill short rows with white tiles (1.0 maps to PAD), so every row has `width` tiles
    batch = torch.cat([torch.cat([r, r.new_ones(width - len(r), *r.shape[1:])]) for r in rows])
    grid = _grid(batch, width, padding)
    scale = _auto_scale(batch)
    fig = Figure(
        figsize=(grid.shape[1] * scale / 100 + 1.5, grid.shape[0] * scale / 100 + 0.2), layout="constrained"
    )
    ax = fig.subplots()
    _imshow(ax, grid)
    h = batch.shape[-2]
    ax.set_yticks([padding + i * (h + padding) + (h - 1) / 2 for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    return _save_figure(fig, path)


# --- reading images --------------------------------------------------------------------------------
def open_image(path_or_pil: Any, mode: str = "RGB") -> Image.Image:
    """A PIL image in `mode` (RGB, or L for grey) from a path or a PIL image; an unreadable file
    is one clear line (data.files.read_image)."""
    if isinstance(path_or_pil, Image.Image):
        return path_or_pil.convert(mode)
    return read_image(path_or_pil, mode)


def load_image(path_or_pil: Any, size: tuple[int, int] | None = None, channels: int = 3) -> torch.Tensor:
    """An image [1, channels, H, W] in [-1, 1] (channels 3: RGB, 1: grey) from a path or a PIL
    image, resized to `size` (w, h)."""
    if channels not in (1, 3):
        raise NanodiffError(f"images have 1 or 3 channels, not {channels}")
    image = open_image(path_or_pil, "RGB" if channels == 3 else "L")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    w, h = image.size
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).reshape(h, w, -1)
    return (array / 127.5 - 1).permute(2, 0, 1)[None]

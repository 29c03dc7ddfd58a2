import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io import viz


def assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


# --- grids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, nrow, padding, scale, cols, rows",
    [(5, 3, 2, 3, 3, 2), (5, None, 1, 1, 3, 2), (2, 5, 0, 2, 2, 1), (1, None, 1, 4, 1, 1)],
)
def test_grid_size_is_tiles_plus_padding_times_scale(n, nrow, padding, scale, cols, rows):
    image = viz.to_pil(torch.zeros(n, 1, 8, 6), nrow=nrow, padding=padding, scale=scale)
    assert image.size == ((cols * (6 + padding) + padding) * scale, (rows * (8 + padding) + padding) * scale)
    assert image.mode == "L"
    assert viz.to_pil(torch.zeros(n, 3, 8, 6), nrow, padding, scale).mode == "RGB"


def test_pixel_values_at_known_tiles():
    # tiles: black, white, mid grey, out-of-range values clamp; nrow=2 leaves slot 4 empty
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 1.0, 0.0)])
    images[2, 0, 0, 0], images[2, 0, 0, 1] = -7.0, 9.0
    pixels = np.asarray(viz.to_pil(images, nrow=2, padding=1, scale=2))
    # tile (row r, col c) starts at ((1 + 5 r) * 2, (1 + 5 c) * 2) after scale 2
    assert (pixels[2:10, 2:10] == 0).all()
    assert (pixels[2:10, 12:20] == 255).all()
    assert pixels[12 + 4, 2 + 4] == 128
    assert pixels[12, 2] == 0 and pixels[12, 4] == 255
    assert (pixels[0:2, :] == viz.PAD).all() and (pixels[:, 10:12] == viz.PAD).all()
    assert (pixels[12:20, 12:20] == viz.PAD).all()  # the empty fourth slot


def test_rgb_channels_keep_their_order():
    red = torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert viz.to_pil(red, padding=0).getpixel((1, 1)) == (255, 0, 0)


def test_save_grid_scales_tiny_tiles_to_48px(tmp_path):
    path = viz.save_grid(torch.zeros(4, 1, 8, 8), tmp_path / "new" / "dir" / "grid.png")
    assert_png(path)
    with Image.open(path) as image:
        assert image.size == ((2 * 9 + 1) * 6,) * 2  # scale ceil(48 / 8) = 6
    with Image.open(viz.save_grid(torch.zeros(4, 3, 64, 64), tmp_path / "big.png")) as image:
        assert image.size == ((2 * 65 + 1),) * 2


def test_save_images_round_trips_pixels(tmp_path):
    images = torch.rand(3, 3, 5, 7) * 2 - 1
    paths = viz.save_images(images, tmp_path / "out")
    assert [p.name for p in paths] == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    expected = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for path, pixels in zip(paths, expected, strict=True):
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image), pixels)
    assert viz.save_images(images[:1], tmp_path, prefix="x")[0].name == "x_0000.png"


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(0, 1, 8, 8), "empty batch"),
        (torch.zeros(1, 8, 8), r"got \(1, 8, 8\)"),
        (torch.zeros(2, 2, 8, 8), "C = 1 or 3"),
        (np.zeros((1, 1, 8, 8)), "got ndarray"),
    ],
)
def test_bad_images_raise(images, message, tmp_path):
    for call in (viz.to_pil, lambda x: viz.save_grid(x, tmp_path / "g.png")):
        with pytest.raises(NanodiffError, match=message):
            call(images)
    with pytest.raises(NanodiffError, match="padding"):
        viz.to_pil(torch.zeros(1, 1, 4, 4), padding=-1)


# --- forward process ----------------------------------------------------------------------


def test_forward_strip_matches_q_sample():
    schedule = Schedule("linear")
    x0 = torch.rand(3, 16, 16) * 2 - 1
    strip = viz.forward_strip(x0, schedule, seed=3)
    steps = torch.tensor([0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999])
    assert strip.shape == (11, 3, 16, 16)
    eps = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    reference = schedule.q_sample(x0.expand(11, -1, -1, -1), steps, eps.expand(11, -1, -1, -1))
    assert torch.equal(strip, reference.clamp(-1, 1))
    assert (strip[0] - x0).abs().max() < 0.05  # t=0 is nearly clean
    assert torch.equal(viz.forward_strip(x0[None], schedule, seed=3), strip)
    assert not torch.equal(viz.forward_strip(x0, schedule, seed=4), strip)


def test_forward_strip_ends_in_noise_uncorrelated_with_x0():
    x0 = torch.sign(torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1)))
    for kind in ("linear", "cosine", "edm"):
        strip = viz.forward_strip(x0, Schedule(kind))
        assert corr(strip[0], x0) > 0.99
        assert abs(corr(strip[-1], x0)) < 0.05
        assert corr(strip[0], x0) > corr(strip[5], x0) > corr(strip[-1], x0)
    # a zero image ends as N(0, 1) clamped to [-1, 1], whose std is sqrt(1 - 2 phi(1)) = 0.718
    clipped_std = math.sqrt(1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi))
    last = viz.forward_strip(torch.zeros(3, 64, 64), Schedule("cosine"))[-1]
    assert abs(float(last.std()) - clipped_std) < 0.02 and abs(float(last.mean())) < 0.03


def test_forward_strip_edm_uses_alpha_bar_at():
    schedule = Schedule("edm")
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    strip = viz.forward_strip(x0, schedule, steps=[0, 999], seed=0)
    alpha_bar = schedule.alpha_bar_at(torch.tensor([0.0, 1.0])).float().reshape(2, 1, 1, 1)
    eps = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps).clamp(-1, 1)
    assert torch.equal(strip, expected)


def test_forward_strip_bad_input():
    with pytest.raises(NanodiffError, match="one image"):
        viz.forward_strip(torch.zeros(2, 1, 8, 8), Schedule())
    with pytest.raises(NanodiffError, match=r"\[0, 99\]"):
        viz.forward_strip(torch.zeros(1, 8, 8), Schedule(T=100), steps=[0, 100])
    with pytest.raises(NanodiffError, match="non-empty"):
        viz.forward_strip(torch.zeros(1, 8, 8), Schedule(), steps=[])


def test_save_forward_strip_one_row_per_image(tmp_path):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    one = viz.save_forward_strip(x0[0], Schedule("cosine"), tmp_path / "a" / "one.png", steps=[0, 500, 999])
    two = viz.save_forward_strip(x0, Schedule("edm"), tmp_path / "two.png", steps=[0, 999])
    assert_png(one)
    assert_png(two)
    with Image.open(one) as a, Image.open(two) as b:
        assert b.height > 1.5 * a.height  # two rows of panels
        assert a.width > b.width  # three columns against two


# --- plots --------------------------------------------------------------------------------


def test_plot_schedules(tmp_path):
    kinds = ("linear", "cosine", "sigmoid", "edm")
    path = viz.plot_schedules({k: Schedule(k, T=200) for k in kinds}, tmp_path / "p" / "s.png")
    assert_png(path)
    with pytest.raises(NanodiffError, match="at least one"):
        viz.plot_schedules({}, tmp_path / "empty.png")


def test_plot_loss_from_jsonl_or_list(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1 / (s + 1), "lr": 1e-3} for s in range(0, 200, 10)]
    lines += [{"step": 200, "eval_fid": 12.0}, {"step": 210, "loss": float("nan")}]
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert_png(viz.plot_loss(log, tmp_path / "a" / "loss.png"))
    assert_png(
        viz.plot_loss([{"step": 0, "loss": -1.0}, {"step": 1, "loss": 0.5}], tmp_path / "negative.png")
    )


def test_plot_loss_bad_input(tmp_path):
    with pytest.raises(NanodiffError, match="no records"):
        viz.plot_loss([{"step": 0, "lr": 1.0}], tmp_path / "x.png")
    log = tmp_path / "broken.jsonl"
    log.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo\n')
    with pytest.raises(NanodiffError, match=r"broken.jsonl:2: not a JSON line"):
        viz.plot_loss(log, tmp_path / "x.png")


def test_plot_rows(tmp_path):
    rows = [torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1]
    path = viz.plot_rows(rows, ["guidance 1", "guidance 7.5"], tmp_path / "r" / "rows.png")
    assert_png(path)
    with pytest.raises(NanodiffError, match="one label per row"):
        viz.plot_rows(rows, ["only one"], tmp_path / "x.png")
    with pytest.raises(NanodiffError, match="same"):
        viz.plot_rows([rows[0], torch.zeros(2, 1, 9, 8)], ["a", "b"], tmp_path / "x.png")


# --- animation ----------------------------------------------------------------------------


def test_save_gif_frames_loop_and_hold(tmp_path):
    frames = [torch.full((3, 1, 8, 8), v) for v in torch.linspace(-1, 1, 5)]
    path = viz.save_gif(frames, tmp_path / "g" / "anim.gif", duration_ms=80, hold_last_ms=1000)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.info["loop"] == 0
        assert gif.size == viz.to_pil(frames[0], scale=6).size
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert durations == [80, 80, 80, 80, 1000]
        assert np.asarray(gif.convert("L"))[8, 8] == 255  # last frame: white tiles


def test_save_gif_bad_input(tmp_path):
    with pytest.raises(NanodiffError, match="at least one frame"):
        viz.save_gif([], tmp_path / "a.gif")
    with pytest.raises(NanodiffError, match="same shape"):
        viz.save_gif([torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8)], tmp_path / "a.gif")

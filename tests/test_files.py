"""Hostile input: a corpus of broken and malicious files the tests make themselves, each of which
must end in one NanodiffError line naming the file (and, through the command line, exit 2 with
one stderr line), never a traceback, and never run code or allocate what the header claims."""

import io
import re
import struct
import warnings
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from nanodiffusion.cli import main
from nanodiffusion.data.datasets import load_data
from nanodiffusion.data.files import MAX_PIXELS, read_array, read_image, read_mask
from one_line import error_of


# --- the corpus ------------------------------------------------------------------------------------
def png_bytes(size=(4, 4), mode="RGB", color=0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A valid 4x4 PNG whose IHDR (and its CRC) is rewritten to declare width x height."""
    data = bytearray(png_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def npy_bytes(array: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """array as .npy bytes, its header declaring `shape` instead of the array's own if given."""
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    if shape is not None:
        header["shape"] = shape
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(array.tobytes())
    return buffer.getvalue()


def write_npz(path, **members: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(f"{name}.npy", payload)
    return path


class RunsCode:
    """Unpickling this writes the marker file: the proof that a loader ran code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def corpus(tmp_path):
    files = {
        "bomb.png": forged_png(40000, 40000),
        "huge.png": forged_png(9000, 9000),  # under Pillow's bomb limit, over ours
        "truncated.png": png_bytes((64, 64))[:60],
        "empty.png": b"",
        "text.png": b"just some text, not an image\n",
        "truncated.jpg": _jpeg()[:200],
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    (tmp_path / "folder.png").mkdir()
    return tmp_path


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


# --- images ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("bomb.png", r"bomb\.png: Image size \(1600000000 pixels\) exceeds limit of \d+ pixels, could be"),
        ("huge.png", r"huge\.png: it is 9000x9000 = 81000000 pixels, more than the 67108864 allowed"),
        ("truncated.png", r"cannot read the image .*truncated\.png: "),
        ("truncated.jpg", r"cannot read the image .*truncated\.jpg: "),
        ("empty.png", r"empty\.png: the file is empty \(0 bytes\)"),
        ("text.png", r"cannot read the image .*text\.png: cannot identify image file"),
        ("folder.png", r"folder\.png: it is a folder, not a file"),
        ("missing.png", r"missing\.png: no such file"),
    ],
)
def test_hostile_images_are_one_line(corpus, name, message):
    assert MAX_PIXELS == 67108864
    with no_bomb_warning():
        text = error_of(read_image, corpus / name)
    assert re.search(message, text), text


@contextmanager
def no_bomb_warning():
    """Pillow's DecompressionBombWarning must not reach the user's terminal either."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if "decompression" in str(w.message).lower()]


def test_a_good_image_still_reads(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes((5, 3), "L", 200))
    image = read_image(path, None)
    assert image.mode == "L" and image.size == (5, 3)
    assert read_image(path, "RGB").getpixel((0, 0)) == (200, 200, 200)


def test_masks_of_the_wrong_kind(tmp_path):
    black = tmp_path / "black.png"
    black.write_bytes(png_bytes((8, 8), "L", 0))
    deep = tmp_path / "deep.png"
    Image.new("I;16", (8, 8), 60000).save(deep)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes((8, 8), "L", 255))
    assert error_of(read_mask, black).endswith("black.png has no white pixels: nothing to repaint")
    assert "16-bit or float" in error_of(read_mask, deep)
    assert read_mask(good).getextrema() == (255, 255)


def test_image_folder_with_a_bomb(corpus, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "b.png").write_bytes(forged_png(40000, 40000))
    assert "b.png: Image size (1600000000 pixels) exceeds limit" in error_of(load_data, str(folder))


# --- arrays ----------------------------------------------------------------------------------------
def test_forged_huge_header_is_refused_before_loading(tmp_path):
    small = np.zeros((2, 4, 4), np.uint8)
    path = write_npz(tmp_path / "forged.npz", images=npy_bytes(small, (10**6, 10**6, 10**3)))
    message = error_of(read_array, path)
    assert "array 'images' declares shape [1000000, 1000000, 1000] (1000000000000000 bytes)" in message
    assert "forged.npz" in error_of(load_data, str(path))


def test_more_than_memory_is_refused(tmp_path, monkeypatch):
    from nanodiffusion.data import files

    path = tmp_path / "big.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8))
    monkeypatch.setattr(files, "available_memory", lambda: 100)
    assert error_of(read_array, path).endswith("would take 0.0 GiB; 0.0 GiB is free")


def test_object_arrays_never_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "pickle.npz"
    np.savez(path, images=np.array([RunsCode(marker)], dtype=object))
    assert not marker.exists()
    message = error_of(read_array, path)
    assert "array 'images' holds Python objects (a pickle, which could run code)" in message
    error_of(load_data, str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"PK not really a zip", "File is not a zip file"),
        (b"", "the file is empty (0 bytes)"),
    ],
)
def test_not_an_npz(tmp_path, payload, message):
    path = tmp_path / "set.npz"
    path.write_bytes(payload)
    assert message in error_of(load_data, str(path))


def test_npz_member_that_is_not_npy(tmp_path):
    path = write_npz(tmp_path / "odd.npz", images=b"\x93NUMPY garbage")
    assert "odd.npz" in error_of(read_array, path)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((3, 0, 0), np.uint8), "images have shape [3, 0, 0], with no pixels"),
        (np.zeros((3, 4, 0, 1), np.uint8), "images have shape [3, 4, 0, 1], with no pixels"),
        (np.zeros((3, 4), np.uint8), "images have shape [3, 4]; expected"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), "videos have shape [2, 2, 2, 2, 2]; expected [N, F, H, W, C]"),
        (np.array(["ab", "cd"]).reshape(2, 1, 1), "images have dtype <U2; expected integer or float"),
        (np.zeros((2, 2, 2), bool), "images have dtype bool"),
        (np.full((2, 2, 2), np.nan, np.float32), "pixel values span nan..nan"),
    ],
)
def test_npz_images_of_the_wrong_kind(tmp_path, images, message):
    path = tmp_path / "bad.npz"
    np.savez(path, images=images)
    assert message in error_of(load_data, str(path))


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 10**9, 1]), "labels go up to 1000000000 for 3 images"),
        (np.array([0, -1, 1]), "labels must be 3 integers >= 0"),
        (np.array([0, 1]), "labels must be 3 integers >= 0, got int64 [2]"),
        (np.array([0.5, 1, 2]), "labels must be 3 integers >= 0, got float64"),
    ],
)
def test_npz_bad_labels(tmp_path, labels, message):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=labels)
    assert message in error_of(load_data, str(path))


def test_a_good_npz_still_loads(tmp_path):
    path = tmp_path / "good.npz"
    np.savez(path, images=np.full((3, 4, 4), 255, np.uint8), labels=np.array([2, 0, 1]))
    data = load_data(str(path))
    assert torch.equal(data.images, torch.ones(3, 1, 4, 4)) and data.num_classes == 3


# --- through the command line ----------------------------------------------------------------------
def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.split("\r")[-1].lstrip(" ")  # after the progress bar, if any
    assert len(err.splitlines()) == 1 and err.startswith("nanodiff: error: "), err
    assert "Traceback" not in err
    return err


def test_cli_train_on_hostile_data(corpus, capsys, tmp_path):
    marker = tmp_path / "ran"
    np.savez(tmp_path / "pickle.npz", images=np.array([RunsCode(marker)], dtype=object))
    write_npz(tmp_path / "forged.npz", images=npy_bytes(np.zeros(4, np.uint8), (10**9, 64, 64)))
    for data in ("pickle.npz", "forged.npz"):
        out = tmp_path / f"run-{data}"
        argv = ["train", "--data", str(tmp_path / data), "--steps", "1", "--out", str(out)]
        err = one_error_line(capsys, argv)
        assert data in err
    assert not marker.exists()


# --- noise: drawn batch by batch, equal to the one big draw ------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (3,), (1, 1, 1), (2, 3, 5), (1, 8, 8), (3, 7, 7), (17,)])
@pytest.mark.parametrize("n", [1, 3, 7, 33])
def test_noise_rows_equal_one_big_draw(shape, n, monkeypatch):
    from nanodiffusion.inference import sampling

    monkeypatch.setattr(sampling, "NOISE_CHUNK", 32)  # advance() in many draws, not one
    g = torch.Generator().manual_seed(5)
    big = torch.randn(n, *shape, generator=g)
    after = torch.rand(4, generator=g)  # what a stochastic sampler draws next
    for batch in (1, 2, 4, 64):
        rows = sampling.NoiseRows(5, n, shape)
        drawn = torch.cat([rows.take(min(batch, n - start)) for start in range(0, n, batch)])
        assert torch.equal(drawn, big), (shape, n, batch)
    advanced = sampling.advance(torch.Generator().manual_seed(5), big.numel())
    assert torch.equal(torch.rand(4, generator=advanced), after)


class Shrink(torch.nn.Module):
    """A denoiser that returns x / 2: enough to run a sampler."""

    def __init__(self):
        super().__init__()
        from nanodiffusion.core.schedules import Schedule

        self.schedule = Schedule()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma, cond=None):
        return x / 2


def test_sample_draws_noise_a_batch_at_a_time(monkeypatch):
    """Drawing all n noises first would ask torch.randn for n * 64 values at once."""
    from nanodiffusion.inference import sampling

    monkeypatch.setattr(sampling, "NOISE_CHUNK", 64)
    sizes, randn = [], torch.randn

    def recording_randn(*args, **kwargs):
        out = randn(*args, **kwargs)
        sizes.append(out.numel())
        return out

    d, shape = Shrink(), (1, 8, 8)
    whole = sampling.sample(d, 40, shape, "euler", 3, seed=2, batch_size=40)
    # what sample() did before: all the noise first, then the sampler's draws from the same generator
    g = torch.Generator().manual_seed(2)
    noise, sigmas = torch.randn(40, *shape, generator=g), d.schedule.sampling_sigmas(3)
    fn = sampling.get_sampler("euler-a").fn
    before = fn(d, noise * d.schedule.prior_std(float(sigmas[0])), sigmas, None, generator=g).clamp(-1, 1)
    monkeypatch.setattr(torch, "randn", recording_randn)
    assert torch.equal(sampling.sample(d, 40, shape, "euler-a", 3, seed=2, batch_size=40), before)
    sizes.clear()
    assert torch.equal(sampling.sample(d, 40, shape, "euler", 3, seed=2, batch_size=1), whole)
    assert max(sizes) <= 64 + 16 and sum(sizes) == 2 * 40 * 64  # the noise, and advance()'s skip


# --- numbers on the command line: checked by argparse, before anything loads ------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["sample", "RUN", "--seed", "-1"],
            "--seed: must be at least 0 and at most 9223372036854775807, got -1",
        ),
        (
            ["sample", "RUN", "--seed", str(2**64)],
            "--seed: must be at least 0 and at most 9223372036854775807",
        ),
        (["train", "--seed", "1.5"], "--seed: expected an integer, got '1.5'"),
        (["sample", "RUN", "--n", "100000000"], "--n: must be positive and at most 100000, got 100000000"),
        (["sample", "RUN", "--n", "0"], "--n: must be positive and at most 100000, got 0"),
        (["sample", "RUN", "--steps", "1000000000"], "--steps: must be positive and at most 10000"),
        (["eval", "RUN", "--guidance", "inf"], "--guidance: expected a finite number, got 'inf'"),
        (["eval", "RUN", "--guidance", "-5"], "--guidance: must be >= 0 and <= 100, got -5"),
        (["sample", "RUN", "--guidance", "1,-5"], "got '1,-5': must be >= 0 and <= 100, got -5"),
        (["sample", "RUN", "--guidance", "1,nan"], "got '1,nan': expected a finite number, got 'nan'"),
        (["generate", "RUN", "a", "--guidance", "1e9"], "--guidance: must be >= 0 and <= 100, got 1e9"),
        (["eval-prompts", "RUN", "--held-out", "-1"], "--held-out: must be at least 0 and at most 100000"),
        (["sample", "RUN", "--strength", "nan", "--init", "x.png"], "--strength: expected a finite number"),
        (["sample", "RUN", "--eta", "-1"], "--eta: must be >= 0, got -1"),
        (["inpaint", "RUN", "--resample", "1000000"], "--resample: must be positive and at most 1000"),
        (["upscale", "RUN", "--aug", "-0.5"], "--aug: must be >= 0, got -0.5"),
        (["train", "--lr", "nan"], "--lr: expected a finite number, got 'nan'"),
        (["train", "--lr", "0"], "--lr: must be > 0, got 0"),
        (["train", "--batch-size", "1000000000"], "--batch-size: must be positive and at most 65536"),
        (["train-autoencoder", "--kl-weight=-inf"], "--kl-weight: expected a finite number"),
        (["sd", "a cat", "--size", "100000"], "--size: must be positive and at most 4096"),
    ],
)
def test_numeric_flags(capsys, argv, message):
    assert message in one_error_line(capsys, argv)


# --- where results go: checked before the work, written completely or not at all ------------------
def test_check_out(tmp_path):
    from nanodiffusion.cli.common import check_out

    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    assert error_of(check_out, a_file) == f"--out {a_file} is a file, not a folder"
    assert (
        error_of(check_out, a_file / "x" / "y") == f"--out {a_file}/x/y lies under {a_file}, which is a file"
    )
    assert error_of(check_out, tmp_path, True) == f"--out {tmp_path} is a folder; give the name of a file"
    assert error_of(check_out, a_file / "r.json", True).endswith(f"lies under {a_file}, which is a file")
    message = error_of(check_out, "/proc/nanodiff-out")
    assert message.startswith("--out /proc/nanodiff-out: cannot write in /proc: ")
    assert check_out(tmp_path / "new" / "r.json", True) == tmp_path / "new" / "r.json"
    assert check_out(a_file, True) == a_file  # a result file is replaced, atomically, at the end
    assert a_file.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # nothing made, no probe left


@pytest.mark.parametrize("command", [["train"], ["train-autoencoder", "--data", "digits"], ["demo"]])
def test_training_out_is_checked_first(command, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    err = one_error_line(capsys, [*command, "--steps", "1", "--out", str(a_file / "run")])
    assert f"--out {a_file}/run lies under {a_file}, which is a file" in err
    assert a_file.read_text() == "keep me"


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    from nanodiffusion.io import viz

    grid = viz.save_grid(torch.zeros(2, 1, 4, 4), tmp_path / "grid.png")
    before = grid.read_bytes()

    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    message = error_of(viz.save_grid, torch.ones(2, 1, 4, 4), grid)
    assert message == f"cannot write {grid}: [Errno 28] No space left on device"
    assert grid.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    message = error_of(viz.save_images, torch.ones(2, 1, 4, 4), tmp_path / "grid.png" / "sub")
    assert message.startswith(f"cannot make the folder {grid}/sub: ")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tiny_runs import train_tiny

    return train_tiny(tmp_path_factory.mktemp("files") / "run", "run.steps=1")


def draw_nothing(*args, **kwargs):
    raise AssertionError("the command drew before it checked --out")


@pytest.mark.slow
def test_out_is_checked_before_drawing(run, tmp_path, capsys, monkeypatch):
    from nanodiffusion.inference import pipelines

    monkeypatch.setattr(pipelines, "draw", draw_nothing)
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    sample = ["sample", str(run), "--n", "2", "--steps", "2", "--out"]
    evaluate = ["eval", str(run), "--n", "2", "--steps", "2", "--features", "classifier", "--out"]
    assert f"--out {a_file} is a file, not a folder" in one_error_line(capsys, [*sample, str(a_file)])
    under = a_file / "sub" / "x"
    assert f"--out {under} lies under {a_file}, which is a file" in one_error_line(
        capsys, [*sample, str(under)]
    )
    assert f"--out {tmp_path} is a folder; give the name of a file" in one_error_line(
        capsys, [*evaluate, str(tmp_path)]
    )
    err = one_error_line(capsys, [*evaluate, str(a_file / "result.json")])
    assert "lies under" in err
    assert "cannot write in /proc: " in one_error_line(capsys, [*sample, "/proc/nanodiff-out"])
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.slow
def test_a_full_disk_leaves_the_old_results_whole(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "samples"
    argv = ["sample", str(run), "--n", "1", "--steps", "1", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    err = one_error_line(capsys, argv)
    assert f"cannot write {out}/" in err and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp files, nothing half


@pytest.mark.slow
def test_hostile_images_through_the_command_line(run, corpus, capsys):
    sample = ["sample", str(run), "--n", "1", "--steps", "1", "--out", str(corpus / "out"), "--init"]
    assert "bomb.png: Image size" in one_error_line(capsys, [*sample, str(corpus / "bomb.png")])
    assert "huge.png: it is 9000x9000" in one_error_line(capsys, [*sample, str(corpus / "huge.png")])
    assert "truncated.jpg" in one_error_line(capsys, [*sample, str(corpus / "truncated.jpg")])
    black = corpus / "black.png"
    black.write_bytes(png_bytes((8, 8), "L", 0))
    inpaint = ["inpaint", str(run), "--image", str(black), "--out", str(corpus / "out"), "--mask"]
    assert "has no white pixels" in one_error_line(capsys, [*inpaint, str(black)])
    assert "text.png: cannot identify" in one_error_line(capsys, [*inpaint, str(corpus / "text.png")])
    assert "folder.png: it is a folder" in one_error_line(capsys, [*inpaint, str(corpus / "folder.png")])


def test_a_corrupt_shapes_cache_is_one_line(tmp_path):
    cache = tmp_path / "shapes" / "shapes-test-2000-8.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"PK\x03\x04 cut short")
    assert str(cache) in error_of(load_data, "shapes", "test", 8, None, tmp_path)


def test_sample_refuses_more_than_memory_holds(monkeypatch):
    from nanodiffusion.data import files
    from nanodiffusion.inference import sampling

    monkeypatch.setattr(files, "available_memory", lambda: 2**30)
    message = error_of(sampling.sample, Shrink(), 100_000, (3, 64, 64), "euler", 1)
    assert message == "100000 samples of shape [3, 64, 64] would take 4.6 GiB; 1.0 GiB is free"

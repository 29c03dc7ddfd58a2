"""CIFAR-10 from the official binary archive, written small in the test in the official format."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch

from nanodiffusion.data import datasets as data
from nanodiffusion.data.datasets import held_out_images, load_data
from nanodiffusion.errors import NanodiffError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _batch(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random records: labels [n] and pixels [n, 3, 32, 32] (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n, dtype=np.uint8), rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _records(labels: np.ndarray, pixels: np.ndarray) -> bytes:
    """The official layout: per record, the label byte then 1024 R, 1024 G, 1024 B bytes, row-major."""
    return np.concatenate([labels[:, None], pixels.reshape(len(labels), 3072)], axis=1).tobytes()


def _archive(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding cifar-10-batches-bin/<name> for each file, as the official one does."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, contents in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(contents)
            tar.addfile(info, io.BytesIO(contents))
    return buffer.getvalue()


def _official_files(batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, bytes]:
    meta = ("\n".join(CLASSES) + "\n\n").encode()  # the real file ends with blank lines
    return {"batches.meta.txt": meta, **{name: _records(*batch) for name, batch in batches.items()}}


def _offline(url, timeout):
    raise OSError("network is unreachable")


@pytest.fixture
def tiny_cifar(monkeypatch, tmp_path):
    """A cache folder holding a small archive in the official format (two records per training
    batch, three test records), trusted through the module's checksum; no network."""
    batches = {name: _batch(i, 2) for i, name in enumerate(TRAIN)} | {"test_batch.bin": _batch(9, 3)}
    labels, pixels = batches["data_batch_1.bin"]
    # record 0: R is black but for one white pixel at row 1, column 2; G is white; B counts 0..255
    pixels[0, 0] = 0
    pixels[0, 0, 1, 2] = 255
    pixels[0, 1] = 255
    pixels[0, 2] = (np.arange(1024) % 256).reshape(32, 32)
    labels[0] = 7
    archive = _archive(_official_files(batches))
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    path.parent.mkdir()
    path.write_bytes(archive)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(data.urllib.request, "urlopen", _offline)
    return tmp_path, path, batches


def _unit(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1


def test_pixel_layout_labels_class_names_and_splits(tiny_cifar):
    cache, path, batches = tiny_cifar
    train = load_data("cifar10", cache_dir=cache)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.float32
    record = train.images[0]
    assert record[0, 1, 2] == 1 and (record[0] == -1).sum() == 1024 - 1  # the white pixel, in R
    assert torch.equal(record[1], torch.ones(32, 32))  # G
    assert torch.equal(record[2, 0, :4], _unit(np.arange(4)))  # B, row-major: row 0 counts 0, 1, 2, 3
    assert torch.equal(record[2, 1, 0], _unit(np.array(32)))  # and row 1 starts at 32
    # every record, in batch order 1..5
    assert torch.equal(train.images, _unit(np.concatenate([batches[b][1] for b in TRAIN])))
    assert train.labels.tolist() == np.concatenate([batches[b][0] for b in TRAIN]).tolist()
    assert train.labels[0] == 7 and train.labels.dtype == torch.int64
    assert train.class_names == CLASSES and train.num_classes == 10

    test = load_data("cifar10", "test", cache_dir=cache)
    assert torch.equal(test.images, _unit(batches["test_batch.bin"][1]))
    assert test.labels.tolist() == batches["test_batch.bin"][0].tolist()
    everything = load_data("cifar10", "all", cache_dir=cache)
    assert torch.equal(everything.images, torch.cat([train.images, test.images]))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # read in memory, nothing extracted

    # the held-out images (autoencoders, FID) are the test split's
    assert torch.equal(held_out_images("cifar10", train.images, n=2, cache_dir=cache), test.images[:2])
    grey = load_data("cifar10", "test", image_size=16, channels=1, cache_dir=cache)
    assert grey.images.shape == (3, 1, 16, 16)


def _error(cache) -> str:
    with pytest.raises(NanodiffError) as error:
        load_data("cifar10", cache_dir=cache)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_archive_says_where_to_put_it_and_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data.urllib.request, "urlopen", _offline)
    message = _error(tmp_path)
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    assert message.startswith(f"cifar10 not found: put cifar-10-binary.tar.gz (from {URL}) at {path};")
    assert "network is unreachable" in message
    assert not (tmp_path / "cifar10").exists()


def test_wrong_checksum_names_the_file_and_the_official_one(tiny_cifar, monkeypatch):
    cache, path, _ = tiny_cifar
    monkeypatch.setattr(data, "CIFAR10_MD5", "c32a1d4ab5d03f1284b67883e8d87530")  # the real one
    message = _error(cache)
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    assert message.startswith(f"{path} is corrupt: it has MD5 {digest}, expected c32a1d4ab5d03f1284b")
    assert URL in message and message.endswith("delete or replace it")


def test_truncated_archive_is_one_line_naming_it(tiny_cifar, monkeypatch):
    cache, path, _ = tiny_cifar
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert _error(cache).startswith(f"{path} is corrupt: it has MD5")  # the checksum catches it first
    # and were the checksum that of the cut file, the reader would still stop at the cut
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(whole[: len(whole) // 2]).hexdigest())
    message = _error(cache)
    assert message.startswith(f"{path} is not a valid .tar.gz file (") and message.endswith(
        "delete or replace it"
    )


def _write(path, monkeypatch, files: dict[str, bytes]) -> None:
    archive = _archive(files)
    path.write_bytes(archive)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())


def test_a_short_batch_or_a_missing_member_is_named(tiny_cifar, monkeypatch):
    cache, path, batches = tiny_cifar
    files = _official_files(batches)
    _write(path, monkeypatch, files | {"data_batch_3.bin": files["data_batch_3.bin"][:-5]})
    assert _error(cache) == (
        f"{path} is damaged: data_batch_3.bin holds {2 * 3073 - 5} bytes, not a whole number of "
        "3073-byte records; delete or replace it"
    )
    # the python version's members (pickles, never read) are not the binary version's
    _write(path, monkeypatch, {name.removesuffix(".bin"): contents for name, contents in files.items()})
    assert _error(cache).startswith(
        f"{path} has no cifar-10-batches-bin/data_batch_1.bin: it is not the binary CIFAR-10 archive"
    )


def test_download_is_verified_before_it_is_kept(tiny_cifar, monkeypatch):
    cache, path, _ = tiny_cifar
    archive = path.read_bytes()
    path.unlink()
    served = {URL: archive}

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response(served[url]))
    assert load_data("cifar10", "test", cache_dir=cache).images.shape == (3, 3, 32, 32)
    assert path.read_bytes() == archive  # kept in the cache, under the official name only
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    path.unlink()
    served[URL] = archive[:-1]
    assert _error(cache).startswith(f"{URL} is corrupt: it has MD5")
    assert not list(path.parent.iterdir())  # nothing kept, not even a part


def test_cifar10_preset_is_the_ddpm_unet_and_trains(tiny_cifar, monkeypatch, tmp_path):
    from nanodiffusion.io.checkpoint import load_config
    from nanodiffusion.io.config import apply_overrides, preset
    from nanodiffusion.io.validation import validate
    from nanodiffusion.nets.unet import UNet
    from nanodiffusion.training.diffusion import train

    cfg = preset("cifar10")
    validate(cfg, prepared=False)
    assert cfg.data.name == "cifar10" and (cfg.model.in_channels, cfg.model.image_size) == (3, 32)
    with torch.device("meta"):  # counted without allocating
        params = sum(p.numel() for p in UNet(cfg.model).parameters())
    assert 35e6 < params < 40e6

    cache, _, _ = tiny_cifar
    monkeypatch.setenv("NANODIFF_DATA", str(cache))
    tiny = [
        "data.class_conditional=true",
        "model.channels=8",
        "model.blocks_per_level=1",
        "model.head_dim=8",
        "model.dropout=0.0",
        "optim.batch_size=4",
        "optim.warmup_steps=1",
        "run.steps=2",
        "run.sample_every=0",
        "run.checkpoint_every=0",
        "run.sample_n=2",
        "run.sample_steps=2",
        "run.device=cpu",
    ]
    assert train(apply_overrides(cfg, tiny), tmp_path / "run", progress=False)
    trained = load_config(tmp_path / "run")
    assert trained.model.num_classes == 10 and trained.model.channel_mults == [1, 2, 2, 2]
    assert trained.model.attn_resolutions == [16] and trained.data.name == "cifar10"

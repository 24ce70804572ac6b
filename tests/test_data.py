"""Tests of imle.data: real MNIST/Fashion-MNIST/photos/LFW, CIFAR pickles, generic sources,
downloads over file:// URLs, and every kind of bad input."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import pickletools
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imle.data as data_mod
from imle.data import (
    DataSplit,
    download_url,
    get_data_dir,
    list_datasets,
    load_dataset,
    validate_images,
)
from imle.data import cifar as cifar_mod
from imle.errors import ConfigError, DataError, ShapeError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, so the per-user cache fallback never sees or touches the real one."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def _raw_idx(path: Path, header: int) -> np.ndarray:
    """Independent reader: skip the fixed-size header, no validation."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=header)


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = bytes([0, 0, 0x08, arr.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic + dims + arr.astype(np.uint8).tobytes()


# --------------------------------------------------------------------------- data dir, DataSplit


def test_get_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMLE_DATA_DIR", str(tmp_path / "env"))
    assert get_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_dir() == tmp_path / "env"
    monkeypatch.delenv("IMLE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_dir() == tmp_path / ".cache" / "imle" / "data"


def test_datasplit_container() -> None:
    s = DataSplit(x=torch.zeros(5, 1, 2, 2), labels=torch.arange(5), name="t", split="train")
    assert len(s) == 5 and s.sample_shape == (1, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.split = "test"  # type: ignore[misc]
    with pytest.raises(ShapeError):
        DataSplit(x=torch.zeros(5, 2), labels=torch.arange(4), name="t", split="train")


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST


def test_mnist_splits(data_dir: Path) -> None:
    full = load_dataset("mnist", "train-full", data_dir=data_dir)
    train = load_dataset("mnist", "train", data_dir=data_dir)
    val = load_dataset("mnist", "val", data_dir=data_dir)
    test = load_dataset("mnist", "test", data_dir=data_dir)
    for s, n in [(full, 60_000), (train, 50_000), (val, 10_000), (test, 10_000)]:
        assert s.x.shape == (n, 1, 28, 28) and s.x.dtype == torch.float32
        assert s.labels is not None and s.labels.shape == (n,) and s.labels.dtype == torch.int64
        assert float(s.x.min()) == 0.0 and float(s.x.max()) == 1.0
        assert s.name == "mnist"
    assert torch.equal(train.x, full.x[:50_000]) and torch.equal(val.x, full.x[50_000:])
    assert torch.equal(train.labels, full.labels[:50_000])
    assert torch.equal(val.labels, full.labels[50_000:])
    # Well-known facts about MNIST: first labels and class counts.
    assert full.labels[0] == 5 and train.labels[0] == 5 and test.labels[0] == 7
    assert val.labels[-1] == full.labels[-1] == 8
    assert torch.bincount(full.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS


def test_mnist_pixels_match_raw_file(data_dir: Path) -> None:
    raw = _raw_idx(data_dir / "mnist" / "train-images-idx3-ubyte.gz", 16)
    train = load_dataset("mnist", "train", data_dir=data_dir)
    assert int((train.x.double() * 255).round().sum()) == int(raw[: 50_000 * 784].sum())
    assert torch.equal(
        train.x[123, 0], torch.from_numpy(raw[123 * 784 : 124 * 784] / 255.0).float().view(28, 28)
    )
    lab = _raw_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", 8)
    assert load_dataset("mnist", "test", data_dir=data_dir).labels.tolist() == lab.tolist()


def test_mnist_load_is_cached_and_returns_copies(data_dir: Path) -> None:
    # Speed is measured by benchmarks, not asserted here; this checks the cache's semantics.
    data_mod.mnist._read_idx_cached.cache_clear()
    a = load_dataset("mnist", "train", data_dir=data_dir)
    b = load_dataset("mnist", "train", data_dir=data_dir)
    assert data_mod.mnist._read_idx_cached.cache_info().hits >= 1
    assert torch.equal(a.x, b.x) and a.x.data_ptr() != b.x.data_ptr()  # callers get copies
    b.x.zero_()
    assert load_dataset("mnist", "train", data_dir=data_dir).x.max() == 1.0


def test_env_var_is_default_source(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMLE_DATA_DIR", str(data_dir))
    assert len(load_dataset("mnist", "test", download=False)) == 10_000


def test_fashion_mnist(data_dir: Path) -> None:
    full = load_dataset("fashion-mnist", "train-full", data_dir=data_dir)
    test = load_dataset("fashion_mnist", "test", data_dir=data_dir)  # alias
    val = load_dataset("fashion-mnist", "val", data_dir=data_dir)
    assert full.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(full.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert full.labels[0] == 9 and test.labels[0] == 9  # ankle boots, as in upstream's files
    assert torch.equal(val.labels, full.labels[50_000:])
    raw = _raw_idx(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", 16)
    assert int((test.x.double() * 255).round().sum()) == int(raw.sum(dtype=np.int64))


def test_bad_split_and_options(data_dir: Path) -> None:
    with pytest.raises(DataError, match="train-full"):
        load_dataset("mnist", "validation", data_dir=data_dir)
    with pytest.raises(ConfigError, match="stride"):
        load_dataset("mnist", data_dir=data_dir, stride=3)


# --------------------------------------------------------------------------- corrupt IDX files


def test_truncated_gz(data_dir: Path, tmp_path: Path, home: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for base in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        src = (data_dir / "mnist" / f"{base}.gz").read_bytes()
        (tmp_path / "mnist" / f"{base}.gz").write_bytes(src[: len(src) // 2])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*delete it"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_garbage_gz_and_wrong_magic(tmp_path: Path, home: Path) -> None:
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(3))))
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    wrong = b"\x12\x34\x56\x78" + bytes(100)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(wrong))
    with pytest.raises(DataError, match="magic number 0x12345678"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_idx_count_mismatches(tmp_path: Path, home: Path) -> None:
    d = tmp_path / "mnist"
    d.mkdir()
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    # Raw (uncompressed) files are accepted too.
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(10) % 10))
    s = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert torch.equal(s.x[:, 0], torch.from_numpy(imgs / 255.0).float())
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(9)))
    with pytest.raises(DataError, match="do not match the 10 images"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    (d / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs)[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_missing_dir(tmp_path: Path, home: Path) -> None:
    with pytest.raises(DataError, match="IMLE_DATA_DIR") as e:
        load_dataset("mnist", data_dir=tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere" / "mnist") in str(e.value)


# --------------------------------------------------------------------------- downloads (file://)


def test_download_url_md5(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 << 20)  # several chunks
    src.write_bytes(payload)
    good = hashlib.md5(payload).hexdigest()
    out_dir = tmp_path / "out"
    dest = download_url(src.as_uri(), out_dir / "f.bin", md5=good)
    assert dest.read_bytes() == payload
    with pytest.raises(DataError, match="does not match"):
        download_url(src.as_uri(), out_dir / "g.bin", md5="0" * 32)
    assert sorted(p.name for p in out_dir.iterdir()) == ["f.bin"]  # no partial file left
    # A dead mirror is skipped in favour of the next one.
    dead = (tmp_path / "missing.bin").as_uri()
    assert download_url([dead, src.as_uri()], out_dir / "h.bin", md5=good).is_file()
    with pytest.raises(DataError, match="missing.bin"):
        download_url([dead], out_dir / "i.bin")
    assert sorted(p.name for p in out_dir.iterdir()) == ["f.bin", "h.bin"]


def test_mnist_download_from_mirror(data_dir: Path, tmp_path: Path, home: Path) -> None:
    mirror = (data_dir / "mnist").as_uri()  # byte-identical to the canonical files
    s = load_dataset("mnist", "test", data_dir=tmp_path, mirrors=[mirror])
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    ref = load_dataset("mnist", "test", data_dir=data_dir)
    assert torch.equal(s.x, ref.x) and torch.equal(s.labels, ref.labels)


def test_download_falls_back_to_cache_when_not_writable(
    data_dir: Path, tmp_path: Path, home: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a data dir that cannot hold folders")
    s = load_dataset("mnist", "test", data_dir=blocker, mirrors=[(data_dir / "mnist").as_uri()])
    assert len(s) == 10_000
    assert (home / ".cache" / "imle" / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_download_md5_mismatch_and_no_network(data_dir: Path, tmp_path: Path, home: Path) -> None:
    # The shared Fashion-MNIST .gz files were recompressed: upstream's md5 must reject them.
    with pytest.raises(DataError, match="md5"):
        load_dataset(
            "fashion-mnist",
            "test",
            data_dir=tmp_path,
            mirrors=[(data_dir / "fashion-mnist").as_uri()],
        )
    assert not (tmp_path / "fashion-mnist").exists()  # a failed download leaves nothing behind
    with pytest.raises(DataError, match="--data-dir / IMLE_DATA_DIR"):
        load_dataset("mnist", data_dir=tmp_path, mirrors=[(tmp_path / "offline").as_uri()])


# --------------------------------------------------------------------------- photos, LFW


def _image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a photo, read independently of the loader."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_photos_patches(data_dir: Path) -> None:
    sizes = {p.name: _image(p).shape[1::-1] for p in (data_dir / "photos").iterdir()}
    n = {k: ((w - 32) // 8 + 1) * ((h - 32) // 8 + 1) for k, (w, h) in sizes.items()}
    held = n["chelsea.png"] + n["rocket.jpg"]
    test = load_dataset("photos", "test", data_dir=data_dir)
    train = load_dataset("photos", "train", data_dir=data_dir)
    assert len(test) == held == 5652 and len(train) == sum(n.values()) - held == 27737
    assert train.x.shape[1:] == (3, 32, 32) and train.x.dtype == torch.float32
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    # Deterministic order: photos by name, then row-major patch corners.
    first = _image(data_dir / "photos" / "astronaut.png")
    assert torch.equal(
        train.x[0], torch.from_numpy(first[:32, :32] / 255.0).float().permute(2, 0, 1)
    )
    assert torch.equal(
        train.x[1], torch.from_numpy(first[:32, 8:40] / 255.0).float().permute(2, 0, 1)
    )
    chelsea = _image(data_dir / "photos" / "chelsea.png")
    assert torch.equal(
        test.x[0], torch.from_numpy(chelsea[:32, :32] / 255.0).float().permute(2, 0, 1)
    )
    assert test.labels.unique().numel() == 2


def test_photos_options(data_dir: Path) -> None:
    s = load_dataset(
        "photos", "test", data_dir=data_dir, stride=16, patch_size=16, holdout=["coffee"]
    )
    h, w = _image(data_dir / "photos" / "coffee.png").shape[:2]
    assert s.x.shape == (((w - 16) // 16 + 1) * ((h - 16) // 16 + 1), 3, 16, 16)
    with pytest.raises(DataError, match="available"):
        load_dataset("photos", "test", data_dir=data_dir, holdout=["nope.png"])


def test_photos_100shot_is_evenly_spaced_through_the_training_patches(data_dir: Path) -> None:
    train = load_dataset("photos", "train", data_dir=data_dir)
    few = load_dataset("photos-100shot", "train", data_dir=data_dir)
    n = len(train)  # 27,737: picks 0, 280.17 -> 280, ..., n - 1
    assert few.x.shape == (100, 3, 32, 32)
    assert torch.equal(few.x[0], train.x[0]) and torch.equal(few.x[-1], train.x[n - 1])
    assert torch.equal(few.x[1], train.x[round((n - 1) / 99)])
    assert few.labels.unique().numel() == 5  # every training photo contributes
    test = load_dataset("photos-100shot", "test", data_dir=data_dir)
    assert torch.equal(test.x, load_dataset("photos", "test", data_dir=data_dir).x)
    with pytest.raises(DataError, match="photos-100shot"):
        load_dataset("photos-100shot", "val", data_dir=data_dir)
    with pytest.raises(DataError, match="at least 100"):
        data_mod.photos_fewshot_indices(99)


def test_lfw_faces(data_dir: Path) -> None:
    s = load_dataset("lfw-faces", data_dir=data_dir)
    raw = np.load(data_dir / "lfw-subset" / "lfw_subset.npy")
    assert s.x.shape == (100, 1, 25, 25) and s.labels is None
    assert torch.equal(s.x[:, 0], torch.from_numpy(raw[:100]).float())


# --------------------------------------------------------------------------- CIFAR-10 pickles


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


class _Py2Pickler(pickle._Pickler):
    """Writes what python 2's cPickle wrote for the official batches: str opcodes for bytes and
    str, and numpy's pre-2.0 module name ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def _save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8
    dispatch[type] = _save_global
    dispatch[type(len)] = _save_global  # numpy's _reconstruct is a builtin function


def _dumps(obj: object, protocol: int | str) -> bytes:
    if protocol == "py2":
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        return buf.getvalue()
    return pickle.dumps(obj, protocol=protocol)


def _write_cifar(folder: Path, protocol: int | str) -> dict[str, dict]:
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    for name, b in batches.items():
        (folder / name).write_bytes(_dumps(b, protocol))
    return batches


def test_py2_pickler_writes_py2_opcodes() -> None:
    ops = {op.name: arg for op, arg, _ in pickletools.genops(_dumps(_cifar_batch(1, 0), "py2"))}
    assert not {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"} & set(ops)
    assert ops["GLOBAL"].startswith("numpy")


@pytest.mark.parametrize("protocol", ["py2", 2, 4])
def test_cifar_round_trip(tmp_path: Path, home: Path, protocol: int | str) -> None:
    batches = _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", protocol)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    test = load_dataset("cifar-10", "test", data_dir=tmp_path, download=False)
    assert train.x.shape == (15, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    row = batches["data_batch_2"][b"data"][1]  # 1024 R, 1024 G, 1024 B, each row-major
    px = train.x[4] * 255
    assert px[0, 0, 1] == row[1] and px[1, 0, 0] == row[1024] and px[2, 31, 31] == row[3071]
    assert train.labels.tolist() == sum(
        (batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []
    )
    assert test.labels.dtype == torch.int64


def test_cifar_flat_layout_and_missing(tmp_path: Path, home: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, 4)
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path, download=False)) == 4
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_refused(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(DataError, match="posix.system|os.system|not allowed"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        cifar_mod.safe_pickle_load(pickle.dumps(io.BytesIO))


def test_cifar_archive_download_and_extract(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    _write_cifar(src / "cifar-10-batches-py", 4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    # Not the official archive, so its md5 must be refused and nothing left behind.
    with pytest.raises(DataError, match="md5"):
        load_dataset("cifar10", data_dir=tmp_path / "d", mirrors=[archive.as_uri()])
    assert not (tmp_path / "d" / "cifar10").exists()  # a failed download leaves nothing behind
    # The extraction step itself, on the archive as it would be after a verified download.
    target = tmp_path / "e"
    target.mkdir()
    cifar_mod._extract(archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]
    assert len(load_dataset("cifar10", "test", data_dir=target, download=False)) == 4


# --------------------------------------------------------------------------- .npy / .npz


def test_npy_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "nhw.npy", u8)
    s = load_dataset(str(tmp_path / "nhw.npy"))
    assert s.x.shape == (6, 1, 5, 4) and torch.equal(
        s.x[:, 0], torch.from_numpy(u8 / 255.0).float()
    )
    assert s.labels is None and s.name == str(tmp_path / "nhw.npy")

    f = rng.random((3, 3, 7, 5))
    np.save(tmp_path / "nchw.npy", f)
    s = load_dataset(tmp_path / "nchw.npy", "all")
    assert s.x.shape == (3, 3, 7, 5) and s.x.dtype == torch.float32

    hwc = rng.integers(0, 256, (2, 7, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", hwc)
    s = load_dataset(tmp_path / "nhwc.npy")
    assert s.x.shape == (2, 3, 7, 5)
    assert torch.equal(s.x, torch.from_numpy(hwc / 255.0).float().permute(0, 3, 1, 2))


def test_npz_keys(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 3, 3), np.float32)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(4))
    s = load_dataset(tmp_path / "a.npz")
    assert s.x.shape == (4, 1, 3, 3) and s.labels.tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "b.npz", whatever=np.ones((2, 3, 3)))
    assert load_dataset(tmp_path / "b.npz").x.shape == (2, 1, 3, 3)
    np.savez(tmp_path / "c.npz", a=x, b=x)
    with pytest.raises(DataError, match="'x' or 'images'"):
        load_dataset(tmp_path / "c.npz")


@pytest.mark.parametrize(
    ("arr", "pattern"),
    [
        (np.stack([np.zeros((4, 4)), np.full((4, 4), 1.5)]), "min=0 to max=1.5.*rescale"),
        (np.full((2, 4, 4), -0.25), "min=-0.25"),
        (np.array([[[np.nan, 0.5]]]), "NaN"),
        (np.array([[[np.inf, 0.5]]]), "infinite"),
        (np.zeros((0, 4, 4), np.uint8), "empty"),
        (np.zeros((4, 4), np.uint8), "2-D"),
        (np.zeros((2, 4, 4, 5), np.uint8), "channel"),
        (np.zeros((2, 4, 4), np.int32), "dtype int32"),
    ],
)
def test_npy_bad_values(tmp_path: Path, arr: np.ndarray, pattern: str) -> None:
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match=pattern):
        load_dataset(tmp_path / "bad.npy")


def test_path_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match="no split 'test'"):
        load_dataset(tmp_path / "ok.npy", "test")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npy"))
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="corrupt.npy"):
        load_dataset(tmp_path / "corrupt.npy")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported source"):
        load_dataset(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- image folders


def _save(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


def test_image_folder_gray_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gray = tmp_path / "gray"
    gray.mkdir()
    g = rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)
    for i, name in enumerate(["b.png", "a.png", "c.PNG"]):
        _save(gray / name, g[i])
    (gray / "readme.txt").write_text("ignored")
    s = load_dataset(str(gray))
    assert s.x.shape == (3, 1, 6, 5)
    # Sorted by file name: a.png (g[1]), b.png (g[0]), c.PNG (g[2]).
    assert torch.equal(s.x[:, 0], torch.from_numpy(g[[1, 0, 2]] / 255.0).float())

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    _save(mixed / "1.png", g[0])
    _save(mixed / "2.png", rgb)
    Image.fromarray(rgb).save(mixed / "3.jpg", quality=95)
    s = load_dataset(mixed)
    assert s.x.shape == (3, 3, 6, 5)  # one colour image makes the whole folder RGB
    assert torch.equal(s.x[0, 0], s.x[0, 2])  # grey replicated over channels
    assert torch.equal(s.x[1], torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1))
    assert load_dataset(mixed, mode="L").x.shape == (3, 1, 6, 5)


def test_image_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(empty)

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    _save(sizes / "a.png", np.zeros((4, 4), np.uint8))
    _save(sizes / "b.png", np.zeros((4, 4), np.uint8))
    _save(sizes / "c.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match=r"a\.png is 4x4 and c\.png is 4x5"):
        load_dataset(sizes)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    _save(corrupt / "a.png", np.zeros((4, 4), np.uint8))
    (corrupt / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"b\.png"):
        load_dataset(corrupt)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(buf, "PNG")
    (truncated / "t.png").write_bytes(buf.getvalue()[:200])
    with pytest.raises(DataError, match=r"t\.png"):
        load_dataset(truncated)


# --------------------------------------------------------------------------- registry, validation


def test_unknown_name_lists_known() -> None:
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    msg = str(e.value)
    for name in ["mnist", "fashion-mnist", "cifar10", "photos", "lfw-faces"]:
        assert name in msg
    assert ".npy/.npz" in msg and "folder" in msg


def test_list_datasets_builtins() -> None:
    names = list_datasets()
    assert {"mnist", "fashion-mnist", "cifar10", "photos", "lfw-faces"} <= set(names)
    assert names == sorted(names)


def test_extension_modules_are_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "imle_test_ext_ok.py").write_text(
        "import torch\n"
        "from imle.data import DataSplit\n"
        "def _load(split, data_dir, download, *, n=3):\n"
        "    return DataSplit(torch.zeros(n, 2), None, 'fake-set', split)\n"
        "DATASETS = {'fake-set': _load}\n"
    )
    (tmp_path / "imle_test_ext_broken.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        data_mod,
        "_EXTENSION_MODULES",
        ("imle_test_ext_ok", "imle_test_ext_broken", "imle_test_ext_absent"),
    )
    assert "fake-set" in list_datasets()
    s = load_dataset("fake-set", "test", n=5)
    assert s.x.shape == (5, 2) and s.split == "test"
    with pytest.raises(ConfigError, match="accepts: n"):
        load_dataset("fake-set", m=1)
    with pytest.raises(DataError, match="imle_test_ext_broken.*half written"):
        load_dataset("no-such-set")


def test_validate_images() -> None:
    validate_images(torch.rand(2, 3, 4, 4), "ok")
    with pytest.raises(DataError, match="what-1.*NaN"):
        validate_images(torch.tensor([float("nan")]).view(1, 1, 1, 1), "what-1")
    with pytest.raises(DataError, match="max=2"):
        validate_images(torch.full((1, 1, 2, 2), 2.0), "x")
    with pytest.raises(DataError, match="N, C, H, W"):
        validate_images(torch.rand(3, 4, 4), "x")
    with pytest.raises(DataError, match="uint8"):
        validate_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), "x")


def test_npz_rows_are_read_checked_and_never_unpickled(tmp_path):
    from imle.data.tasks import load_pairs

    path = tmp_path / "p.npz"
    np.savez(path, c=np.eye(3)[[0, 1, 2, 0]], x=np.random.rand(4, 2))
    c, x = load_pairs(path)
    assert c.shape == (4, 3) and x.shape == (4, 2) and x.dtype == torch.float32
    cases = [({"x": np.zeros((4, 2))}, r"missing \['c'\], found \['x'\]"),
             ({"c": np.zeros((3, 2)), "x": np.zeros((4, 2))}, "same number of rows"),
             ({"c": np.zeros((4, 2)), "x": np.full((4, 2), np.nan)}, "'x' has NaN"),
             ({"c": np.array(["a"] * 4), "x": np.zeros((4, 2))}, "not numbers"),
             ({"c": np.array([{}] * 4, dtype=object), "x": np.zeros((4, 2))},
              "cannot read as .npz")]
    for arrays, message in cases:
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=message):
            load_pairs(path)

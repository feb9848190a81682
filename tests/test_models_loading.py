"""advex.models.load / load_weights: module:factory + weights, torch.export programs, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import advex
from advex.models import (
    ExportedModel,
    ModelLoadError,
    ModelSpecError,
    Normalize,
    load,
    load_weights,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "loading_nets.py").write_text(
        "from torch import nn\n\n"
        "def make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))\n\n"
        "def broken():\n"
        "    raise RuntimeError('no GPU here')\n\n"
        "def not_a_module():\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "loading_nets", raising=False)
    return "loading_nets"


def test_public_api():
    assert advex.models.load is load and issubclass(ModelLoadError, ValueError)
    assert issubclass(ModelSpecError, ModelLoadError)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin", ".ckpt"])
def test_factory_with_weights(tmp_path, factory_module, suffix):
    ref = _net().eval()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = load(f"{factory_module}:make", weights=path)
    assert not model.training
    x = torch.rand(5, 1, 4, 4)
    assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dicts_are_unwrapped(tmp_path, key):
    ref = _net()
    torch.save({key: ref.state_dict(), "epoch": 3}, tmp_path / "ckpt.ckpt")
    model = load_weights(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),
                         tmp_path / "ckpt.ckpt")  # fmt: skip
    assert torch.equal(model[1].weight, ref[1].weight)


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    save_file(
        {"1.weight": torch.zeros(4, 16), "9.bias": torch.zeros(2)}, str(tmp_path / "w.safetensors")
    )
    with pytest.raises(ModelLoadError) as err:
        load_weights(_net(), tmp_path / "w.safetensors")
    msg = str(err.value)
    assert "w.safetensors do not match the model" in msg
    assert "missing keys ['1.bias', '3.weight', '3.bias']" in msg
    assert "unexpected keys ['9.bias']" in msg
    assert "1.weight: file (4, 16) vs model (8, 16)" in msg


def test_weights_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="weights file not found"):
        load_weights(_net(), tmp_path / "nope.pt")
    (tmp_path / "w.pkl").write_bytes(b"x")
    with pytest.raises(ModelSpecError, match=r"w\.pkl: unknown file type '\.pkl'.*\.safetensors"):
        load_weights(_net(), tmp_path / "w.pkl")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="cannot read weights empty.pt: the file is empty"):
        load_weights(_net(), tmp_path / "empty.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="does not hold a state dict"):
        load_weights(_net(), tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "ints.pt")
    with pytest.raises(ModelLoadError, match="not name -> tensor"):
        load_weights(_net(), tmp_path / "ints.pt")


def test_factory_spec_errors(factory_module):
    with pytest.raises(ModelSpecError, match="cannot import 'no_such_mod_xyz'"):
        load("no_such_mod_xyz:make")
    with pytest.raises(ModelSpecError, match="has no callable 'nope'"):
        load(f"{factory_module}:nope")
    with pytest.raises(ModelSpecError, match="returned int, not an nn.Module"):
        load(f"{factory_module}:not_a_module")
    with pytest.raises(ModelLoadError, match=r"calling broken\(\) failed: RuntimeError: no GPU"):
        load(f"{factory_module}:broken")
    with pytest.raises(ModelSpecError, match="expected package.module:factory"):
        load(":make")
    with pytest.raises(ModelSpecError, match="advex.zoo.load"):
        load("mnist-smallcnn")
    with pytest.raises(ModelSpecError, match="nn.Module"):
        load(3)


def test_normalize_and_module_spec(factory_module):
    model = load(f"{factory_module}:make", normalize=([0.5], [0.25]))
    assert isinstance(model[0], Normalize) and not model.training
    assert model[0].mean.tolist() == [0.5] and model[0].std.tolist() == [0.25]
    net = _net().train()
    same = load(net)
    assert same is net and not net.training
    with pytest.raises(ModelSpecError, match="normalize"):
        load(net, normalize=([0.5], [0.0]))
    with pytest.raises(ModelSpecError, match="normalize"):
        load(net, normalize=0.5)


def test_exported_program(tmp_path):
    net = _net().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.rand(2, 1, 4, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "net.pt2")
    model = load(tmp_path / "net.pt2")
    assert isinstance(model, ExportedModel) and not model.training
    x = torch.rand(7, 1, 4, 4)
    torch.testing.assert_close(model(x), net(x))
    model.train()  # only sets the flag
    assert model.training
    with pytest.raises(RuntimeError):  # torch's own input check still runs (as a pre-hook)
        model(torch.rand(3, 1, 5, 5))
    normalized = load(str(tmp_path / "net.pt2"), normalize=([0.1], [0.2]))
    torch.testing.assert_close(normalized(x), net((x - 0.1) / 0.2))
    with pytest.raises(ModelSpecError, match="no such .pt2 file"):
        load(tmp_path / "nope.pt2")
    with pytest.raises(ModelSpecError, match="not with a .pt2"):
        load(tmp_path / "net.pt2", weights=tmp_path / "w.safetensors")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.linear(x), lambda x: -self.linear(x), (x,))


def test_exported_program_with_higher_order_ops(tmp_path):
    net = _Branchy().eval()
    torch.export.save(torch.export.export(net, (torch.ones(2, 4),)), tmp_path / "cond.pt2")
    model = load(tmp_path / "cond.pt2")
    for x in (torch.ones(2, 4), -torch.ones(2, 4)):
        torch.testing.assert_close(model(x), net(x))


def test_concurrent_exported_loads_restore_torch_load(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    net = _net().eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 4, 4),)), tmp_path / "n.pt2")
    (tmp_path / "bad.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    original = torch.load
    paths = [tmp_path / "n.pt2", tmp_path / "bad.pt2"] * 3

    def attempt(path):
        try:
            return load(path)(torch.ones(2, 1, 4, 4))
        except ModelLoadError as err:
            return err

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, paths))
    assert torch.load is original
    assert all(torch.is_tensor(r) for r in results[0::2])
    assert all(isinstance(r, ModelLoadError) for r in results[1::2])

"""Hostile files: every loader refuses them with advex's own error naming the file, and no payload
ever runs.

Each payload touches a marker file when unpickled or evaluated. Where torch's own loader would run
it, the test first shows that it does (so the payload is live and the test could fail), then that
advex's loader does not.
"""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import pickle
import struct
import sys
import zipfile

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from advex import data as D
from advex import zoo
from advex.cli import main
from advex.models import ModelLoadError, load, load_weights


class _Touch:
    """Unpickling this object creates ``path`` (a stand-in for any code an attacker runs)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def runner():
    return CliRunner()


_CLI = ["attack", "--attack", "fgsm", "--eps", "0.1", "--n", "4", "--no-progress"]


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "hostile_nets.py").write_text(
        "from torch import nn\n\ndef make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hostile_nets", raising=False)
    return "hostile_nets:make"


_EVALUATE = ["evaluate", "--eps", "0.1", "--n", "4", "--no-progress"]


def _cli_refuses(runner, args, *needles, command=_CLI):
    result = runner.invoke(main, [*command, *args, "--out", "out"])
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


# ----------------------------------------------------------------------------------------------
# Pickled weights with payloads
# ----------------------------------------------------------------------------------------------


def _payload_files(tmp_path, marker):
    good = {k: v for k, v in _net().state_dict().items()}
    return {
        "evil.pt": _torch_bytes({**good, "extra": _Touch(marker)}),
        "evil.pth": _torch_bytes(_Touch(marker)),
        "evil.ckpt": _torch_bytes({"state_dict": good, "hook": _Touch(marker)}),
        "evil.bin": _torch_bytes({"model": {"0.weight": _Touch(marker)}}),
        "legacy.pt": pickle.dumps({"w": _Touch(marker)}, protocol=2),  # a raw (non-zip) pickle
    }


def test_payload_pickles_never_run(tmp_path, marker, runner, factory):
    for name, blob in _payload_files(tmp_path, marker).items():
        path = tmp_path / name
        path.write_bytes(blob)
        # the payload is live: a full unpickle runs it
        try:
            torch.load(path, weights_only=False)
        except RuntimeError:  # a raw pickle: the payload ran, then torch found no magic number
            pass
        assert marker.exists(), name
        marker.unlink()
        with pytest.raises(ModelLoadError, match=f"refused weights {name}") as err:
            load(factory, weights=path)
        assert "weights_only=True" in str(err.value)
        with pytest.raises(ModelLoadError):
            load_weights(_net(), path)
        _cli_refuses(runner, ["--model", factory, "--weights", name], f"refused weights {name}")
        _cli_refuses(runner, ["--model", factory, "--weights", name], name, command=_EVALUATE)
        assert not marker.exists(), name


# ----------------------------------------------------------------------------------------------
# torch.export archives with payloads
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def program_bytes(tmp_path_factory):
    torch.manual_seed(0)
    net = _net().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(program, path)
    return path.read_bytes()


def _rewrite(blob: bytes, edits: dict, add: dict | None = None) -> bytes:
    """A copy of a .pt2 archive with some entries (paths relative to its root) replaced."""
    src = zipfile.ZipFile(io.BytesIO(blob))
    root = src.namelist()[0].split("/", 1)[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            rel = info.filename.split("/", 1)[1]
            if rel in edits:
                data = edits[rel](data)
            dst.writestr(info, data)
        for rel, data in (add or {}).items():
            dst.writestr(f"{root}/{rel}", data)
    return out.getvalue()


def _json_edit(fn):
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return edit


def _evil_archives(program_bytes, marker):
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def pickled_weight(cfg):
        name = next(iter(cfg["config"]))
        cfg["config"][name]["use_pickle"] = True

    first_weight = "data/weights/weight_0"

    def sympy_size(doc):
        graph = doc["graph_module"]["graph"]
        user_input = graph["inputs"][-1]["as_tensor"]["name"]
        sizes = graph["tensor_values"][user_input]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": f"1 + 0*len(str({touch}))", "hint": {"as_int": 1}}}

    def guard(doc):
        doc["guards_code"] = [f"{touch} is None"]

    def os_system(doc):
        node = {"target": "torch.os.system", "name": "evil", "metadata": {}, "outputs": []}
        node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
        doc["graph_module"]["graph"]["nodes"].insert(0, node)

    def spec(type_name, context, children):
        def edit(doc):
            sig = doc["graph_module"]["module_call_graph"][0]["signature"]
            node = {"type": type_name, "context": context, "children_spec": children}
            sig["out_spec"] = json.dumps([1, node])

        return _json_edit(edit)

    leaf = {"type": None, "context": None, "children_spec": []}
    default_factory = {"default_factory_module": "hostile_probe_dd", "dict_context": []}
    default_factory["default_factory_name"] = "factory"
    enum = json.dumps([{"__enum__": True, "fqn": "hostile_probe_enum:factory", "name": "x"}])

    def opaque_constant(cfg):
        cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                 "use_pickle": True, "tensor_meta": None}  # fmt: skip

    return {
        # torch falls back to torch.load(weights_only=False) when the sample inputs do not load
        "sample_inputs": (
            _rewrite(
                program_bytes,
                {"data/sample_inputs/model.pt": lambda d: _torch_bytes(((_Touch(marker),), {}))},
            ),  # fmt: skip
            "load",
        ),
        # a weight marked use_pickle is read with torch.load(weights_only=False)
        "pickled_weight": (
            _rewrite(
                program_bytes,
                {
                    "data/weights/model_weights_config.json": _json_edit(pickled_weight),
                    first_weight: lambda d: _torch_bytes(_Touch(marker)),
                },
            ),
            "load",
        ),
        # a legacy state-dict pickle inside a current archive: weights-only, then full unpickling
        "legacy_weights": (
            _rewrite(
                program_bytes,
                {},
                add={"data/weights/model.pt": _torch_bytes({"x": _Touch(marker)})},
            ),  # fmt: skip
            "load",
        ),
        # decoding the output structure imports the module a defaultdict or enum context names
        "import_defaultdict": (
            _rewrite(
                program_bytes,
                {"models/model.json": spec("collections.defaultdict", default_factory, [])},
            ),  # fmt: skip
            "load",
        ),
        "import_enum": (
            _rewrite(program_bytes, {"models/model.json": spec("builtins.dict", enum, [leaf])}),
            "load",
        ),
        # symbolic shapes are parsed with sympy.sympify, i.e. eval
        "sympy": (_rewrite(program_bytes, {"models/model.json": _json_edit(sympy_size)}), "load"),
        # guards_code is compiled into Python and run before each forward
        "guards": (_rewrite(program_bytes, {"models/model.json": _json_edit(guard)}), "forward"),
        "os_system_node": (
            _rewrite(program_bytes, {"models/model.json": _json_edit(os_system)}),
            None,
        ),
        "opaque_constant": (
            _rewrite(
                program_bytes,
                {"data/constants/model_constants_config.json": _json_edit(opaque_constant)},
                add={"data/constants/opaque_obj_0": pickle.dumps(_Touch(marker))},
            ),
            None,
        ),
        "aotinductor": (
            _rewrite(program_bytes, {}, add={"data/aotinductor/model/model.so": b"\x7fELF"}),
            None,
        ),
    }


def test_payload_pt2_archives_never_run(tmp_path, marker, program_bytes, runner, factory):
    for probe in ("hostile_probe_dd", "hostile_probe_enum"):  # importing these runs a payload
        (tmp_path / f"{probe}.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\ndef factory():\n"
            "    return 0\n"
        )
    legit = tmp_path / "legit.pt2"
    legit.write_bytes(program_bytes)
    assert load(legit)(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    for kind, (blob, runs_in_torch) in _evil_archives(program_bytes, marker).items():
        path = tmp_path / f"evil_{kind}.pt2"
        path.write_bytes(blob)
        if runs_in_torch:  # the payload is live: torch's own loader runs it
            try:
                program = torch.export.load(path)
                if runs_in_torch == "forward":
                    program.module()(torch.rand(2, 1, 28, 28))
            except Exception:
                pass
            assert marker.exists(), kind
            marker.unlink()
            for probe in ("hostile_probe_dd", "hostile_probe_enum"):
                sys.modules.pop(probe, None)  # so that a second import would run it again
        if kind == "guards":  # advex ignores the file's guard code; torch's checks still apply
            assert load(path)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        else:
            with pytest.raises(ModelLoadError, match=f"refused the torch.export program .*{kind}"):
                load(path)
            _cli_refuses(runner, ["--model", str(path)], f"evil_{kind}.pt2")
            _cli_refuses(runner, ["--model", str(path)], f"evil_{kind}.pt2", command=_EVALUATE)
        assert not marker.exists(), kind


def test_corrupt_pt2_files(tmp_path, program_bytes, runner, factory):
    cases = {
        "empty.pt2": b"",
        "junk.pt2": b"not a zip at all" * 10,
        "truncated.pt2": program_bytes[: len(program_bytes) // 2],
        "weights.pt2": _torch_bytes(_net().state_dict()),  # a zip, but not an export archive
        "legacy.pt2": _zip({"version": b"1", "serialized_state_dict.pt": b"\x80\x02}q\x00."}),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelLoadError, match=name):
            load(tmp_path / name)
        _cli_refuses(runner, ["--model", name], name)


def _zip(entries: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# Corrupt, empty, truncated and wrong weights
# ----------------------------------------------------------------------------------------------


def test_corrupt_weights_files(tmp_path, runner, factory):
    good = {k: v.contiguous() for k, v in _net().state_dict().items()}
    save_file(good, str(tmp_path / "good.safetensors"))
    blob = (tmp_path / "good.safetensors").read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    cases = {
        "empty.safetensors": (b"", "the file is empty"),
        "empty.pt": (b"", "the file is empty"),
        "tiny.safetensors": (b"\x01\x02", "truncated"),
        "truncated.safetensors": (blob[: len(blob) // 2], "corrupt safetensors"),
        "header_cut.safetensors": (blob[:40], "truncated"),
        "oversized.safetensors": (struct.pack("<Q", 1 << 40) + b"{}", "truncated"),
        "badjson.safetensors": (struct.pack("<Q", 8) + b"not json", "corrupt safetensors"),
        "short_data.safetensors": (struct.pack("<Q", len(header)) + header + b"1234", "corrupt"),
        "junk.pt": (b"\x00\x01garbage" * 50, "not a PyTorch checkpoint"),
        "truncated.pt": (_torch_bytes(good)[:300], "not a PyTorch checkpoint"),
        "notdict.ckpt": (_torch_bytes([torch.zeros(2)]), "does not hold a state dict"),
        "wrong.safetensors": (None, "do not match the model"),
    }
    save_file({"0.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError) as err:
            load(factory, weights=tmp_path / name)
        assert name in str(err.value) and needle in str(err.value), str(err.value)
        _cli_refuses(runner, ["--model", factory, "--weights", name], name, needle)
    with pytest.raises(ModelLoadError, match=r"1.weight.*1.bias|missing keys \['1.weight'"):
        load(factory, weights=tmp_path / "wrong.safetensors")


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def test_corrupt_idx_files(tmp_path, runner, factory):
    good_images = _idx(2051, (2, 28, 28), bytes(2 * 784))
    good_labels = _idx(2049, (2,), b"\x01\x02")
    cases = {
        "wrong_magic": (_idx(2049, (2, 28, 28), bytes(2 * 784)), good_labels, "bad magic"),
        "short_data": (_idx(2051, (2, 28, 28), bytes(100)), good_labels, "truncated"),
        "long_data": (_idx(2051, (2, 28, 28), bytes(3 * 784)), good_labels, "corrupt file"),
        "empty": (b"", good_labels, "too short"),
        "float_idx": (struct.pack(">I", 0x0D03) + bytes(20), good_labels, "bad magic"),
        "bad_gzip": (b"\x1f\x8b" + b"junk" * 10, good_labels, "corrupt or truncated gzip"),
        "label_range": (good_images, _idx(2049, (2,), b"\x01\x63"), "out of range"),
        "count_mismatch": (good_images, _idx(2049, (3,), b"\x01\x02\x03"), "count mismatch"),
    }
    for case, (images, labels, needle) in cases.items():
        root = tmp_path / case
        root.mkdir()
        (root / "t10k-images-idx3-ubyte").write_bytes(images)
        (root / "t10k-labels-idx1-ubyte").write_bytes(labels)
        for loader in (D.mnist, D.fashion_mnist):
            with pytest.raises(D.DatasetError, match=needle):
                loader(root)
        result = runner.invoke(main, [*_CLI, "--data", f"mnist:{root}", "--model", factory])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert needle in result.output and case in result.output, result.output
    with pytest.raises(D.DatasetError, match="bad magic"):
        D.read_idx(tmp_path / "wrong_magic" / "t10k-images-idx3-ubyte", 2051)
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(good_images)[:-10])
    (gz / "t10k-labels-idx1-ubyte").write_bytes(good_labels)
    with pytest.raises(D.DatasetError, match="gzip"):
        D.mnist(gz)


# ----------------------------------------------------------------------------------------------
# Zoo model directories
# ----------------------------------------------------------------------------------------------


def test_corrupt_zoo_directories(tmp_path, runner, factory):
    model = zoo.build("smallcnn")
    good = tmp_path / "good"
    zoo.save(model, good, {"note": "test"}, "smallcnn", {})
    card = (good / zoo.CARD_FILE).read_text()
    weights = (good / zoo.MODEL_FILE).read_bytes()
    cases = {
        "card_truncated": ({zoo.CARD_FILE: card[: len(card) // 2]}, zoo.CARD_FILE),
        "card_empty": ({zoo.CARD_FILE: ""}, zoo.CARD_FILE),
        "card_binary": ({zoo.CARD_FILE: b"\xff\xfe\x00garbage"}, zoo.CARD_FILE),
        "card_no_arch": ({zoo.CARD_FILE: "[1, 2]"}, zoo.CARD_FILE),
        "card_bad_kwargs": (
            {zoo.CARD_FILE: json.dumps({"arch": "smallcnn", "arch_kwargs": {"num_classes": -3}})},
            zoo.CARD_FILE,
        ),
        "weights_truncated": ({zoo.MODEL_FILE: weights[: len(weights) // 2]}, zoo.MODEL_FILE),
        "weights_empty": ({zoo.MODEL_FILE: b""}, zoo.MODEL_FILE),
        "weights_oversized": (
            {zoo.MODEL_FILE: struct.pack("<Q", 1 << 40) + b"{}"},
            zoo.MODEL_FILE,
        ),
        "weights_wrong": ({zoo.MODEL_FILE: None}, zoo.MODEL_FILE),
    }
    for case, (files, needle) in cases.items():
        d = tmp_path / case
        d.mkdir()
        (d / zoo.CARD_FILE).write_text(card)
        (d / zoo.MODEL_FILE).write_bytes(weights)
        for name, content in files.items():
            if content is None:
                save_file({"0.weight": torch.zeros(2)}, str(d / name))
            elif isinstance(content, bytes):
                (d / name).write_bytes(content)
            else:
                (d / name).write_text(content)
        with pytest.raises(zoo.ZooError) as err:
            zoo.load(d)
        assert str(d / needle) in str(err.value), (case, str(err.value))
        result = runner.invoke(main, [*_CLI, "--model", str(d)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert needle in result.output and case in result.output, result.output

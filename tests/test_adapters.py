"""Adapters (advex.models.adapters): torch, scikit-learn, ONNX Runtime and any callable; what
each exposes, query counting, ONNX export parity, safe loading (skops; pickles refused)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from advex import models
from advex.attacks import PGD, Square
from advex.models import (
    CallableAdapter,
    LabelBlackBox,
    ModelLoadError,
    ModelSpecError,
    OnnxAdapter,
    SklearnAdapter,
    TorchAdapter,
    as_adapter,
    capability,
)
from advex.models.blackbox import BlackBoxError

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
skops_io = pytest.importorskip("skops.io")


@pytest.fixture(scope="module")
def tabular():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.random((300, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.2 * rng.standard_normal(300) > 0.8).astype(int)
    y[X[:, 2] > 0.8] = 2  # three classes
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    return clf, torch.from_numpy(X), torch.from_numpy(y)


@pytest.fixture(scope="module")
def cnn_onnx(mnist_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    models.export_onnx(mnist_model, path, torch.rand(1, 1, 28, 28))
    return path


def _counting(model):
    """An independent counter at the model: number of samples it was asked about."""
    calls = {"n": 0}

    def fn(x):
        calls["n"] += int(x.shape[0])
        return model(x)

    return fn, calls


# -- torch CNN exported to ONNX ---------------------------------------------------------------


def test_onnx_export_of_zoo_cnn_matches(mnist_model, mnist_correct, cnn_onnx):
    box = models.load(cnn_onnx)
    assert isinstance(box, OnnxAdapter) and box.exposes == "scores"
    x = mnist_correct[0][:64]
    with torch.no_grad():
        ref = mnist_model(x)
    out = box(x)
    assert box.queries == 64 and box.calls == 1
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_attack_on_onnx_session_succeeds_like_original(mnist_model, mnist_correct, cnn_onnx):
    x, y = mnist_correct[0][:24], mnist_correct[1][:24]
    box = OnnxAdapter(cnn_onnx)
    a = Square(eps=0.3, n_queries=150, seed=1)(mnist_model, x, y)
    b = Square(eps=0.3, n_queries=150, seed=1)(box, x, y)
    assert a.success.float().mean() > 0.5  # the attack does something at this budget
    assert abs(a.success.float().mean() - b.success.float().mean()) <= 1 / 24 + 1e-9
    # the adapter counted exactly the queries the attack reports
    assert box.queries == int(b.queries.sum())
    # a gradient attack on a score-only ONNX session names the problem
    with pytest.raises(BlackBoxError, match="score-only black box.*Square"):
        PGD(eps=0.3, steps=2)(box, x[:2], y[:2])


def test_malformed_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf of a model")
    with pytest.raises(ModelLoadError, match=r"model\.onnx.*not a valid ONNX file"):
        models.load(bad)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        models.load(tmp_path / "empty.onnx")
    with pytest.raises(ModelSpecError, match="not found"):
        models.load(tmp_path / "missing.onnx")


# -- scikit-learn ------------------------------------------------------------------------------


def test_sklearn_adapter_scores_and_labels(tabular):
    clf, X, y = tabular
    box = SklearnAdapter(clf)
    assert box.exposes == "scores" and box.num_classes == 3
    out = box(X)
    assert box.queries == len(X)
    expect = torch.from_numpy(clf.predict_proba(X.numpy().astype(np.float64))).log()
    assert torch.allclose(out, expect.float(), atol=1e-5)
    assert np.array_equal(out.argmax(1).numpy(), clf.predict(X.numpy()))
    labels = SklearnAdapter(clf, output="labels")
    onehot = labels(X[:10])
    assert labels.exposes == "labels" and set(onehot.unique().tolist()) <= {0.0, 1.0}
    assert np.array_equal(onehot.argmax(1).numpy(), clf.predict(X[:10].numpy()))
    with pytest.raises(BlackBoxError, match="hard-label.*HopSkipJump"):
        x = X[:2].clone().requires_grad_(True)
        labels(x).sum().backward()


def test_sklearn_binary_decision_function_and_class_labels():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(1)
    X = rng.random((100, 3))
    y = np.where(X[:, 0] > 0.5, "spam", "ham")
    svc = LinearSVC().fit(X, y)
    box = SklearnAdapter(svc)
    assert box.output == "decision" and box.num_classes == 2
    pred = box(torch.from_numpy(X)).argmax(1).numpy()
    assert np.array_equal(svc.classes_[pred], svc.predict(X))
    assert box.class_index(["spam", "ham"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="not among classes_"):
        box.class_index(["eggs"])


def test_sklearn_onnx_export_matches(tabular, tmp_path):
    clf, X, _ = tabular
    path = models.export_sklearn_onnx(clf, tmp_path / "clf.onnx", n_features=X.shape[1])
    box = models.load(path)
    assert box.exposes == "scores"
    a, b = SklearnAdapter(clf)(X), box(X)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(a.argmax(1), b.argmax(1))
    # attacks succeed at the same rate on the original and on the ONNX session
    keep = a.argmax(1) == tabular[2]
    x, y = X[keep][:30], tabular[2][keep][:30]
    ra = Square(eps=0.25, n_queries=60, seed=0)(SklearnAdapter(clf), x, y)
    rb = Square(eps=0.25, n_queries=60, seed=0)(box, x, y)
    assert ra.success.float().mean() > 0.2
    assert abs(ra.success.float().mean() - rb.success.float().mean()) <= 1 / 30 + 1e-9


def test_skops_loading_and_refusals(tabular, tmp_path):
    clf, X, _ = tabular
    path = tmp_path / "clf.skops"
    skops_io.dump(clf, path)
    box = models.load(f"sklearn:{path}")
    assert isinstance(box, SklearnAdapter)
    assert torch.allclose(box(X[:5]), SklearnAdapter(clf)(X[:5]))
    assert isinstance(models.load(path), SklearnAdapter)  # the prefix is optional
    # pickles are refused before anything is read from them
    for name in ("clf.pkl", "clf.joblib"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps(clf))
        with pytest.raises(ModelLoadError, match=r"refused .*pickle.*skops"):
            models.load(f"sklearn:{p}")
        with pytest.raises(ModelLoadError, match="refused"):
            models.load(p)
    # a skops file that would create a type outside scikit-learn/numpy/scipy is refused
    evil = tmp_path / "evil.skops"
    skops_io.dump({"model": clf, "f": _counting}, evil)
    with pytest.raises(ModelLoadError, match=r"refused the skops file .*test_adapters"):
        models.load(f"sklearn:{evil}")
    with pytest.raises(ModelSpecError, match="expected a .skops file"):
        models.load(f"sklearn:{tmp_path / 'clf.txt'}")


# -- callables and torch -----------------------------------------------------------------------


def test_callable_adapter_auto_detects_labels_and_scores(mnist_model, mnist_correct):
    x = mnist_correct[0][:8]
    with torch.no_grad():
        ref = mnist_model(x)
    scores = CallableAdapter(lambda a: mnist_model(torch.from_numpy(a)).numpy(), as_numpy=True)
    assert scores.exposes == "unknown"
    assert torch.allclose(scores(x), ref) and scores.exposes == "scores"
    labels = CallableAdapter(lambda t: mnist_model(t).argmax(1), num_classes=10)
    out = labels(x)
    assert labels.exposes == "labels" and torch.equal(out.argmax(1), ref.argmax(1))
    assert labels.queries == 8
    onehot = CallableAdapter(lambda t: torch.eye(10)[mnist_model(t).argmax(1)])
    onehot(x)
    assert onehot.exposes == "labels"
    with pytest.raises(ValueError, match="num_classes"):
        CallableAdapter(lambda t: mnist_model(t).argmax(1))(x)


def test_torch_adapter_counts_and_keeps_gradients(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:6], mnist_correct[1][:6]
    model = TorchAdapter(mnist_model)
    r = PGD(eps=0.3, steps=5)(model, x, y)
    assert model.exposes == "gradients" and capability(model) == "gradients"
    assert model.queries == int(r.queries.sum())


def test_adapt_and_capability():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert isinstance(as_adapter(lin), TorchAdapter)
    box = LabelBlackBox(lambda t: lin(t).argmax(1), num_classes=3)
    assert as_adapter(box) is box and capability(box) == "labels"
    # a black box behind a Normalize still declares what it exposes
    wrapped = nn.Sequential(models.Normalize([0.5], [0.5]), box)
    assert capability(wrapped) == "labels"
    assert capability(lin) == "gradients"
    with pytest.raises(TypeError, match="cannot adapt"):
        as_adapter(42)


def test_factory_returning_an_estimator(tabular, monkeypatch, tmp_path):
    clf = tabular[0]
    mod = tmp_path / "bb_factory_mod.py"
    mod.write_text("CLF = None\ndef make():\n    return CLF\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    m = importlib.import_module("bb_factory_mod")
    m.CLF = clf
    box = models.load("bb_factory_mod:make")
    assert isinstance(box, SklearnAdapter) and box.exposes == "scores"

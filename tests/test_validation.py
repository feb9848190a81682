"""One validation for every entry point (advex.core.validate + advex.models.guards).

The attacks, ``robust_accuracy``, ``robustness_curve`` and ``evaluate`` refuse the same bad
inputs with the same messages, and common model mistakes get an advex message naming the
problem and the fix instead of a raw framework error.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import advex.attacks as A
from advex.core.validate import check_batch, check_classes, check_target
from advex.evaluate import evaluate, robust_accuracy, robustness_curve
from advex.models import CastInput, InputDtypeWarning, SelectOutput, round_toward


class TinyConv(nn.Module):
    def __init__(self, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def forward(self, x):
        return self.head(self.conv(x).relu().flatten(1))


@pytest.fixture
def model():
    return TinyConv()


@pytest.fixture
def batch(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def _entry_points(model, x, y, **kw):
    """Every public entry point, called on (x, y)."""
    return {
        "attack": lambda: A.PGD(eps=0.1, steps=2)(model, x, y, **kw),
        "robust_accuracy": lambda: robust_accuracy(model, (x, y), A.FGSM(eps=0.1), **kw),
        "robustness_curve": lambda: robustness_curve(model, (x, y), A.FGSM, [0.05, 0.1], **kw),
        "evaluate_quick": lambda: evaluate(
            model, (x, y), eps=0.1, preset="quick", checks=False, **kw
        ),
        "evaluate_checks": lambda: evaluate(
            model, (x, y), eps=0.1, preset=[A.FGSM(eps=0.1)], probe=4, **kw
        ),
    }


ENTRY = ["attack", "robust_accuracy", "robustness_curve", "evaluate_quick", "evaluate_checks"]


# -- NaN / inf inputs and out-of-range labels: the same errors everywhere ----------------------
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_inputs_refused_everywhere(model, batch, entry, bad):
    x, y = batch
    x = x.clone()
    x[5, 0, 3, 4] = bad  # a single pixel, late in the batch
    with pytest.raises(ValueError, match="contains NaN or inf values"):
        _entry_points(model, x, y)[entry]()


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("label", [10, 11, -1])
def test_out_of_range_labels_refused_everywhere(model, batch, entry, label):
    x, y = batch
    y = y.clone()
    y[6] = label
    with pytest.raises(ValueError, match=f"y has label {label} ") as err:
        _entry_points(model, x, y)[entry]()
    if label >= 0:
        assert "the model outputs 10 classes" in str(err.value)


@pytest.mark.parametrize("entry", ENTRY)
def test_out_of_bounds_inputs_refused_everywhere(model, batch, entry):
    x, y = batch
    x = x.clone()
    x[7] = x[7] * 2 + 0.5
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        _entry_points(model, x, y)[entry]()


@pytest.mark.parametrize("entry", ENTRY)
def test_wrong_label_dtype_and_shape(model, batch, entry):
    x, y = batch
    with pytest.raises(TypeError, match="integer class labels"):
        _entry_points(model, x, y.float())[entry]()
    with pytest.raises(TypeError, match="integer class labels"):
        _entry_points(model, x, y.bool())[entry]()
    with pytest.raises(ValueError):
        _entry_points(model, x, y[:, None])[entry]()


def test_late_bad_batch_of_a_loader_is_refused(model, batch):
    x, y = batch
    x = x.clone()
    x[-1, 0, 0, 0] = float("nan")
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    with pytest.raises(ValueError, match="batch 2.*contains NaN or inf"):
        robust_accuracy(model, loader, A.FGSM(eps=0.1))
    y2 = y.clone()
    y2[-1] = 12
    loader = DataLoader(TensorDataset(batch[0], y2), batch_size=3)
    with pytest.raises(ValueError, match="y has label 12 but the model outputs 10 classes"):
        evaluate(model, loader, eps=0.1, preset="quick", checks=False)


def test_whole_data_labels_checked_at_the_first_batch(model, batch):
    """A bad label in the last batch fails before the first attack runs."""
    x, y = batch
    y = y.clone()
    y[-1] = 10
    calls = []

    class Spy(A.FGSM):
        def __call__(self, *a, **k):
            calls.append(1)
            return super().__call__(*a, **k)

    with pytest.raises(ValueError, match="y has label 10"):
        robust_accuracy(model, (x, y), Spy(eps=0.1), batch_size=2)
    assert calls == []


# -- targets ------------------------------------------------------------------------------------
def test_target_true_is_refused(model, batch):
    x, y = batch
    for target in (True, False, torch.ones(len(y), dtype=torch.bool)):
        with pytest.raises(TypeError, match="bool"):
            A.PGD(eps=0.1, steps=2)(model, x, y, target=target)
        with pytest.raises(TypeError):
            robust_accuracy(model, (x, y), A.FGSM(eps=0.1), target=target)
        with pytest.raises(TypeError):
            robustness_curve(model, (x, y), A.FGSM, [0.1], target=target)


def test_target_equal_to_label(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="target equals the true label"):
        A.PGD(eps=0.1, steps=2)(model, x, y, target=y)
    # the evaluation skips those points (documented) and refuses out-of-range targets
    res = robust_accuracy(model, (x, y), A.FGSM(eps=0.1), target=(y + 1) % 10)
    assert res.n_skipped == 0
    with pytest.raises(ValueError, match="target has label 10"):
        robust_accuracy(model, (x, y), A.FGSM(eps=0.1), target=torch.full_like(y, 10))


def test_check_functions_are_public_and_still_importable_from_attacks_base():
    from advex.attacks.base import check_labels as from_base
    from advex.core.validate import check_labels

    assert from_base is check_labels
    x = torch.rand(3, 2)
    y, t = check_batch(x, torch.tensor([0, 1, 2]), num_classes=4, target=3)
    assert t.tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="target equals"):
        check_classes(4, y, 2)
    with pytest.raises(TypeError, match="bool"):
        check_target(True, y, 4)


# -- model mistakes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,hint",
    [((8, 8, 8), "unsqueeze(1)"), ((8, 64), "flattened"), ((8, 8, 8, 1), "permute(0, 3, 1, 2)")],
)
def test_wrong_input_rank_names_shape_and_fix(model, shape, hint):
    x = torch.rand(*shape)
    y = torch.zeros(shape[0], dtype=torch.long)
    for entry in ("attack", "robust_accuracy", "evaluate_quick"):
        with pytest.raises(ValueError) as err:
            _entry_points(model, x, y)[entry]()
        msg = str(err.value)
        assert f"rejected x of shape {shape}" in msg
        assert hint in msg
        assert "The model said:" in msg  # the original error, quoted
        assert isinstance(err.value.__cause__, RuntimeError)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_dtype_other_than_the_models(model, batch, dtype):
    """Documented: float64 x with a float32 model — the model sees float32 (CastInput), the
    attack runs in float64; float16 / bfloat16 x — the attack runs in float32 and x_adv is
    rounded back toward x. Either way x_adv has the caller's dtype, stays inside the budget,
    and success is the model's prediction on the returned x_adv."""
    x, y = batch
    xd = x.to(dtype)
    with pytest.warns(InputDtypeWarning, match=f"x is {str(dtype)[6:]}"):
        res = A.PGD(eps=0.1, steps=5)(model, xd, y)
    assert res.x_adv.dtype == dtype
    assert float((res.x_adv.double() - xd.double()).abs().max()) <= 0.1 + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        pred = CastInput(model, torch.float32)(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)
    assert bool(res.success.any())
    with pytest.warns(InputDtypeWarning):
        ev = robust_accuracy(model, (xd, y), A.FGSM(eps=0.1))
    assert ev.n == len(y)


def test_round_toward_never_grows_a_perturbation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 100, generator=g).half()
    x_adv = (x.float() + (torch.rand(64, 100, generator=g) - 0.5) * 0.2).clamp(0, 1)
    for low in (torch.float16, torch.bfloat16):
        xl = x.to(low)
        r = round_toward(x_adv, xl)
        assert r.dtype == low
        grown = (r.double() - xl.double()).abs() > (x_adv.double() - xl.double()).abs()
        assert not bool(grown.any())
        assert float((r.double() - x_adv.double()).abs().max()) <= torch.finfo(low).eps


@pytest.mark.parametrize("data_dtype", [torch.float32, torch.float64])
def test_float64_model_through_evaluate_with_checks(batch, data_dtype):
    model = TinyConv().double()
    x, y = batch
    with torch.no_grad():
        y = model(x.double()).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputDtypeWarning)
        ev = evaluate(model, (x.to(data_dtype), y), eps=0.1, preset="quick", probe=8)
    assert ev.verdict in ("PASS", "SUSPECT")
    assert len(ev.checks) >= 5
    assert 0.0 <= ev.robust_accuracy <= ev.clean_accuracy == 1.0


class TupleModel(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net = TinyConv()
        self.kind = kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "tuple":
            return z, z.sum()
        if self.kind == "dict":
            return {"logits": z, "aux": z.sum()}
        return type("Out", (), {"logits": z})()


@pytest.mark.parametrize("kind,key", [("tuple", 0), ("dict", "logits"), ("attr", "logits")])
def test_tuple_or_dict_output_points_to_select_output(batch, kind, key):
    x, y = batch
    bad = TupleModel(kind).eval()
    for entry in ("attack", "robust_accuracy", "robustness_curve", "evaluate_quick"):
        with pytest.raises(TypeError, match="not a tensor of logits.*SelectOutput"):
            _entry_points(bad, x, y)[entry]()
    good = SelectOutput(bad, key)
    res = A.PGD(eps=0.1, steps=3)(good, x, y)
    ref = A.PGD(eps=0.1, steps=3)(TinyConv(), x, y)
    assert torch.equal(res.x_adv, ref.x_adv)
    with pytest.raises(TypeError, match="no 5"):
        SelectOutput(TupleModel("tuple"), 5)(x)


class NoGrad(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.net = TinyConv()
        self.how = how
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.how == "no_grad":
            with torch.no_grad():
                return self.net(x)
        if self.how == "numpy":
            return torch.from_numpy(self.net(x).detach().numpy())
        return self.net(x).detach()


@pytest.mark.parametrize("how", ["no_grad", "detach", "numpy"])
def test_model_without_gradient_graph_fails_at_first_gradient_step(batch, how):
    x, y = batch
    for attack in (
        A.PGD(eps=0.1, steps=5),
        A.APGD(eps=0.1, steps=5),
        A.DeepFool(max_iter=3),
        A.CW(max_iterations=3, binary_search_steps=1),
    ):
        m = NoGrad(how).eval()
        with pytest.raises(TypeError, match="carries no gradient.*no_grad.*BPDA.*Square"):
            attack(m, x, y)
        assert m.calls == 2  # the clean pass and the first gradient step
    # a black-box attack does not need one
    res = A.Square(eps=0.1, n_queries=5)(NoGrad(how).eval(), x, y)
    assert res.x_adv.shape == x.shape
    # an evaluation sees it before any attack runs (issue #15) and evaluates it with the
    # black-box stages instead of failing: the verdict says the number is an upper bound
    m = NoGrad(how).eval()
    xs, ys = x.repeat(4, 1, 1, 1), y.repeat(4)
    ev = evaluate(m, (xs, ys), eps=0.1, preset="quick", batch_size=8)
    assert ev.access["exposes"] == "scores" and ev.stage_names == ["square"]
    assert ev.verdict == "UPPER-BOUND" and "no gradient" in ev.access["reason"]


def test_single_output_model_is_refused(batch):
    x, _ = batch
    model = TinyConv(classes=1)
    y = torch.zeros(len(x), dtype=torch.long)
    for entry in ENTRY:
        with pytest.raises(ValueError, match="1 output per sample.*at least 2"):
            _entry_points(model, x, y)[entry]()
    with pytest.raises(ValueError, match="one score per sample"):
        A.PGD(eps=0.1)(lambda z: model(z)[:, 0], x, y)


_NO_WARNINGS = """
import warnings, torch
warnings.simplefilter("error")
import advex.attacks as A
from advex.evaluate import evaluate, robust_accuracy, robustness_curve
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
x = torch.rand(6, 1, 8, 8).requires_grad_(True)
with torch.no_grad():
    y = m(x).argmax(1)
for atk in (A.FGSM(eps=0.1), A.PGD(eps=0.1, steps=2), A.DeepFool(max_iter=2)):
    atk(m, x, y)
robust_accuracy(m, (x, y), A.FGSM(eps=0.1))
robustness_curve(m, (x, y), A.FGSM, [0.1])
evaluate(m, (x, y), eps=0.1, preset="quick", probe=4)
assert x.grad is None
print("clean")
"""


def test_input_requiring_grad_triggers_no_warning():
    """Run in a fresh interpreter: torch emits some warnings once per process."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_WARNINGS], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "clean"
    assert out.stderr.strip() == ""

"""Fuzz harness: every public entry point either returns a valid result or refuses clearly.

Property-based tests (hypothesis) over each attack class exported by :mod:`advex.attacks`
(with small settings), :func:`advex.evaluate.robust_accuracy`,
:func:`advex.evaluate.robustness_curve` and :func:`advex.evaluate.evaluate` (``preset="quick"``)
on tiny models with ``1×8×8`` inputs. Each example draws input shapes and layouts, dtypes
(float32/64, float16, bfloat16, uint8), NaN/inf placement, out-of-bounds values, label values,
dtypes and shapes, targets (including ``True``), budgets, and the model's output kind (logits,
float64 weights, probabilities, tuple, dict, a single output, no gradient graph, a plain
callable). Each call must either

- return a valid result: ``x_adv`` finite, of the caller's shape and dtype, inside the threat
  model, ``success`` equal to the model's re-prediction on ``x_adv``; accuracies in [0, 1] with
  robust <= clean; or
- raise advex's own ``ValueError`` / ``TypeError`` (raised from advex code) with a message;

never another exception, never a NaN.

Profiles (``ADVEX_FUZZ_PROFILE``, registered here so the file does not depend on conftest):

- ``ci`` (default): a fixed number of derandomized examples per test, no deadline; the whole
  file runs in well under 2 minutes on a CPU;
- ``long``: 20x the examples, random seeds (a few minutes), for local runs:
  ``ADVEX_FUZZ_PROFILE=long python -m pytest tests/test_fuzz.py``.

Inside the threat means ``ThreatModel.contains`` with a tolerance of 1e-5, or, for float16 /
bfloat16 inputs, of the dtype's resolution times the number of features per sample (``contains``
itself computes the distance in that dtype).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import advex.attacks as A
from advex.core.result import AttackResult
from advex.evaluate import evaluate, robust_accuracy, robustness_curve
from advex.models import match_input_dtype

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, suppress_health_check=_HEALTH
)
settings.register_profile("long", max_examples=4000, deadline=None, suppress_health_check=_HEALTH)
PROFILE = os.environ.get("ADVEX_FUZZ_PROFILE", "ci")
FUZZ = settings.get_profile(PROFILE)
#: the slower entry points (whole evaluations) get a quarter of the examples
FUZZ_SLOW = settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 4))

# -- attacks with small settings: name -> (factory(norm, eps), norms, targeted?) ----------------
# targeted: "any" (with or without target), "only" (needs one), "never" (untargeted only)
ATTACKS = {
    "APGD": (lambda n, e: A.APGD(e, n, steps=3), ("linf", "l2", "l1"), "any"),
    "BIM": (lambda n, e: A.BIM(e, n, steps=2), ("linf", "l2", "l1"), "any"),
    "CW": (
        lambda n, e: A.CW(
            n,
            max_iterations=3,
            learning_rate=0.1,
            initial_const=1.0,
            **({"binary_search_steps": 1} if n == "l2" else {"largest_const": 2.0}),
        ),
        ("l2", "linf"),
        "any",
    ),
    "DeepFool": (lambda n, e: A.DeepFool(n, max_iter=3), ("l2", "linf"), "never"),
    "EAD": (
        lambda n, e: A.EAD(max_iterations=3, binary_search_steps=1, initial_const=1.0),
        ("l1",),
        "any",
    ),
    "FAB": (lambda n, e: A.FAB(e, n, steps=3), ("linf", "l2", "l1"), "any"),
    "FABT": (lambda n, e: A.FABT(e, n, steps=2, n_target_classes=2), ("linf",), "never"),
    "FGSM": (lambda n, e: A.FGSM(e, n), ("linf", "l2", "l1"), "any"),
    "JSMA": (lambda n, e: A.JSMA(gamma=0.3), ("l2",), "any"),
    "LBFGS": (lambda n, e: A.LBFGS(search_steps=2, max_iterations=3), ("l2",), "only"),
    "MIFGSM": (lambda n, e: A.MIFGSM(e, n, steps=2), ("linf", "l2"), "any"),
    "PGD": (lambda n, e: A.PGD(e, n, steps=2), ("linf", "l2", "l1"), "any"),
    "Square": (lambda n, e: A.Square(e, n, n_queries=10), ("linf", "l2"), "any"),
    "HopSkipJump": (
        lambda n, e: A.HopSkipJump(e, n, max_queries=30, init_evals=4, init_tries=3),
        ("linf", "l2"),
        "any",
    ),
    "BoundaryAttack": (lambda n, e: A.BoundaryAttack(e, n, max_queries=20), ("l2",), "any"),
    "RayS": (lambda n, e: A.RayS(e, n, max_queries=20), ("linf",), "any"),
    "UniversalPerturbation": (
        lambda n, e: A.UniversalPerturbation(e, n, max_epochs=1, inner_steps=2, candidates=3),
        ("linf", "l2"),
        "never",
    ),
}
NORM_EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}


@functools.cache
def _fitted_advgan(norm: str, eps: float):
    """AdvGAN needs fit() before use: one tiny generator per (norm, eps), fitted once on 1×8×8
    inputs against a fixed linear model (the fuzzed models are then attacked by transfer)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.arange(16) % 3
    return A.AdvGAN(eps, norm, epochs=1, batch_size=8, width=2, blocks=0).fit(net, (x, y))


def _advgan(norm: str, eps: float):
    if not eps > 0:
        return A.AdvGAN(eps, norm)  # refused: a budget eps > 0 is required
    return _fitted_advgan(norm, eps)


ATTACKS["AdvGAN"] = (_advgan, ("linf", "l2"), "never")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8]
MODEL_KINDS = [
    "linear",
    "conv",
    "float64",
    "probabilities",
    "callable",
    "tuple",
    "dict",
    "single",
    "no_grad",
]


# Attacks over other threat shapes (a sticker mask on a sign, a tabular schema) or built around
# other models (surrogates) are fuzzed with their own bad inputs in their family's tests.
FUZZED_ELSEWHERE = {
    "RP2": "tests/test_physical.py",
    "AdversarialPatch": "tests/test_physical.py",
    "ConstrainedPGD": "tests/test_tabular_attacks.py",
    "LowProFool": "tests/test_tabular_attacks.py",
    "ConstrainedEvolution": "tests/test_tabular_attacks.py",
    "TransferAttack": "tests/test_transfer.py",
}


def test_every_exported_attack_is_fuzzed():
    exported = {
        n
        for n in A.__all__
        if isinstance(getattr(A, n), type)
        and issubclass(getattr(A, n), A.Attack)
        and not getattr(getattr(A, n), "__abstractmethods__", None)
    }
    assert exported == set(ATTACKS) | set(FUZZED_ELSEWHERE)
    root = Path(__file__).resolve().parent.parent
    for name, test_file in FUZZED_ELSEWHERE.items():
        assert name in (root / test_file).read_text(), (name, test_file)


# -- models -----------------------------------------------------------------------------------
class _Conv(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 8 * 8, classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().flatten(1))


class _Wrap(nn.Module):
    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "probabilities":
            return z.softmax(1)
        if self.kind == "tuple":
            return z, z.sum()
        if self.kind == "dict":
            return {"logits": z}
        if self.kind == "no_grad":
            return z.detach()
        return z


def _model(kind: str, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "conv":
        net: nn.Module = _Conv(classes)
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1 if kind == "single" else classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    if kind == "float64":
        net = net.double()
    if kind in ("probabilities", "tuple", "dict", "no_grad"):
        net = _Wrap(net, kind)
    net.eval()
    if kind == "callable":
        return lambda x: net(x)
    return net


# -- inputs -----------------------------------------------------------------------------------
@st.composite
def batches(draw, classes: int):
    """``(x, y, target)``: half the time a valid batch (any floating dtype), else one with
    some of: an empty batch, a wrong layout, an integer dtype, NaN/inf, out-of-bounds values,
    bad labels (out of range, float, bool, 2-D, one too few), bad targets."""
    valid = draw(st.booleans(), label="valid batch")

    def bad(p: int) -> bool:  # one chance in p of this mistake, when mistakes are drawn
        return not valid and draw(st.integers(0, p - 1)) == 0

    b = draw(st.integers(0, 4) if bad(8) else st.integers(1, 4))
    layouts = ["no_channel", "flat", "channels_last", "1d"]
    layout = draw(st.sampled_from(layouts)) if bad(3) else "ok"
    shape = {
        "ok": (b, 1, 8, 8),
        "no_channel": (b, 8, 8),
        "flat": (b, 64),
        "channels_last": (b, 8, 8, 1),
        "1d": (64,),
    }[layout]
    dtype = draw(st.sampled_from(DTYPES if not valid else DTYPES[:1] * 4 + DTYPES[1:4]))
    seed = draw(st.integers(0, 2**16))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    if bad(4):
        x = x * 3 - 1  # out of bounds
    if bad(2) and x.numel():
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = value
    x = (x > 0.5).to(dtype) if dtype == torch.uint8 else x.to(dtype)

    n = shape[0] if len(shape) > 1 else 1
    y = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
    label_kinds = ["high", "negative", "float", "bool", "2d"]
    label_kind = draw(st.sampled_from(label_kinds)) if bad(2) else ""
    if label_kind == "high" and n:
        y[draw(st.integers(0, n - 1))] = classes + draw(st.integers(0, 2))
    elif label_kind == "negative" and n:
        y[draw(st.integers(0, n - 1))] = -1
    elif label_kind == "float":
        y = y.float()
    elif label_kind == "bool":
        y = y > 0
    elif label_kind == "2d":
        y = y[:, None]
    if bad(8):
        y = y[:-1]  # one label too few
    kinds = [None, None, "next", "int"] + (["same", "true", "high"] if not valid else [])
    target_kind = draw(st.sampled_from(kinds))
    target = {
        None: None,
        "next": None if y.dim() != 1 or y.is_floating_point() else (y.long() + 1) % classes,
        "int": draw(st.integers(0, classes - 1)),
        "same": y,
        "true": True,
        "high": classes,
    }[target_kind]
    return x, y, target


def _label_with_predictions(model, x, y):
    """Mostly use the model's own clean predictions as labels, so the attacks have work."""
    if not (x.dim() == 4 and x.is_floating_point() and torch.isfinite(x).all()):
        return y
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool or len(y) != len(x):
        return y
    try:
        with torch.no_grad():
            out = match_input_dtype(model, x, warn=False)(x)
        if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] > 1:
            return out.float().argmax(1)
    except Exception:  # the call under test reports it
        pass
    return y


# -- what counts as a valid outcome -----------------------------------------------------------
def _raised_by_advex(err: BaseException) -> bool:
    if not isinstance(err, ValueError | TypeError) or not str(err).strip():
        return False
    tb = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and f"{os.sep}advex{os.sep}" in last.tb_frame.f_code.co_filename


def _call(fn):
    """Run ``fn``; an advex ValueError/TypeError is a valid refusal (returns None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn()
        except (ValueError, TypeError) as err:
            if _raised_by_advex(err):
                return None
            raise


def _tol(x: torch.Tensor) -> float:
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.finfo(x.dtype).eps * x[0].numel()
    return 1e-5


def _check_attack_result(res: AttackResult, model, x, y, target) -> None:
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert bool(torch.isfinite(res.x_adv).all())
    assert bool(torch.isfinite(res.norms).all())
    assert bool(res.threat.contains(res.x_adv, x, tol=_tol(x)).all())
    with torch.no_grad():
        pred = match_input_dtype(model, x, warn=False)(res.x_adv).argmax(1)
    if res.target is not None:
        assert torch.equal(res.success, pred == res.target)
    else:
        assert torch.equal(res.success, pred != res.y)
    assert torch.equal(res.y, y.long())
    assert int(res.queries.min()) >= 1


def _check_fraction(*vals: float) -> None:
    for v in vals:
        assert not math.isnan(v) and 0.0 <= v <= 1.0


# -- the properties -----------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_attacks(data):
    name = data.draw(st.sampled_from(sorted(ATTACKS)), label="attack")
    factory, norms, targeted = ATTACKS[name]
    norm = data.draw(st.sampled_from(norms), label="norm")
    classes = data.draw(st.sampled_from([2, 3, 10]), label="classes")
    kind = data.draw(st.sampled_from(["linear"] * 4 + MODEL_KINDS), label="model")
    model = _model(kind, classes, data.draw(st.integers(0, 99)))
    x, y, target = data.draw(batches(classes), label="batch")
    y = _label_with_predictions(model, x, y)
    if targeted == "only" and target is None and y.dim() == 1 and not y.is_floating_point():
        target = (y.long() + 1) % classes
    if targeted == "never" and data.draw(st.integers(0, 3)) > 0:
        target = None
    scale = data.draw(st.sampled_from([0.0, 0.1, 1.0, 1.0, 3.0, -1.0]), label="scale")
    eps = NORM_EPS[norm] * scale

    res = _call(lambda: factory(norm, eps)(model, x, y, target))
    if res is not None:
        _check_attack_result(res, model, x, y, target)


@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_robust_accuracy(data):
    classes = data.draw(st.sampled_from([2, 10]))
    kind = data.draw(st.sampled_from(["linear"] * 3 + MODEL_KINDS))
    model = _model(kind, classes, data.draw(st.integers(0, 99)))
    x, y, target = data.draw(batches(classes))
    y = _label_with_predictions(model, x, y)
    eps = data.draw(st.sampled_from([0.0, 0.05, 0.3]))
    attacks = [A.FGSM(eps=eps), A.PGD(eps=eps, steps=2)][: data.draw(st.integers(1, 2))]
    loader = data.draw(st.booleans())

    def run():
        d = (x, y)
        if loader and isinstance(x, torch.Tensor) and len(x) == len(y) and len(x):
            d = DataLoader(TensorDataset(x, y), batch_size=2)
        return robust_accuracy(model, d, attacks, target=target, batch_size=3)

    res = _call(run)
    if res is not None:
        _check_fraction(res.clean_accuracy, res.robust_accuracy)
        assert res.robust_accuracy <= res.clean_accuracy
        assert res.n + res.n_skipped == len(x)


@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_robustness_curve(data):
    classes = data.draw(st.sampled_from([2, 10]))
    kind = data.draw(st.sampled_from(["linear"] * 3 + MODEL_KINDS))
    model = _model(kind, classes, data.draw(st.integers(0, 99)))
    x, y, target = data.draw(batches(classes))
    y = _label_with_predictions(model, x, y)
    good = st.sampled_from([0.0, 0.05, 0.1, 0.3])
    eps_list = data.draw(
        st.lists(good, min_size=1, max_size=3)
        if data.draw(st.integers(0, 3))
        else st.lists(st.sampled_from([0.1, -0.1, math.nan, math.inf]), max_size=2)
    )
    spec = data.draw(st.sampled_from(["class", "instance", "minimum_norm"]))
    attack = {
        "class": lambda: A.FGSM,
        "instance": lambda: A.PGD(eps=0.1, steps=2),
        "minimum_norm": lambda: A.DeepFool(max_iter=3),
    }[spec]

    res = _call(lambda: robustness_curve(model, (x, y), attack(), eps_list, target=target))
    if res is not None:
        _check_fraction(res.clean_accuracy, *res.worst_case)
        assert all(a >= b for a, b in zip(res.worst_case, res.worst_case[1:], strict=False))
        assert all(v <= res.clean_accuracy + 1e-12 for v in res.worst_case)


@FUZZ_SLOW
@given(data=st.data())
def test_fuzz_evaluate_quick(data):
    classes = data.draw(st.sampled_from([2, 10]))
    kind = data.draw(st.sampled_from(["linear"] * 3 + MODEL_KINDS))
    model = _model(kind, classes, data.draw(st.integers(0, 99)))
    x, y, _ = data.draw(batches(classes))
    y = _label_with_predictions(model, x, y)
    eps = data.draw(st.sampled_from([0.0, 0.1, 0.3, -0.1]))
    checks = data.draw(st.booleans())

    res = _call(
        lambda: evaluate(
            model, (x, y), eps=eps, preset="quick", checks=checks, probe=4, batch_size=3
        )
    )
    if res is not None:
        _check_fraction(res.clean_accuracy, res.robust_accuracy, *res.robust_accuracy_ci)
        assert res.robust_accuracy <= res.clean_accuracy
        assert res.verdict in (("PASS", "SUSPECT") if checks else ("UNCHECKED",))


@pytest.mark.parametrize("profile", ["ci", "long"])
def test_profiles_are_registered(profile):
    p = settings.get_profile(profile)
    assert p.deadline is None
    assert p.max_examples >= 200

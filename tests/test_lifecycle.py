"""The attack lifecycle: ``fit(model, data)`` (a no-op by default) then ``attack(model, x, y)``;
no state left on the attack by a call; EOT as a constructor option of every attack."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import advex.attacks as A
from advex.attacks import registry
from advex.models import EOT


class Linear(nn.Module):
    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(36, classes)
        with torch.no_grad():
            for p in self.fc.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.fc(x.flatten(1))


class Noisy(nn.Module):
    """A randomised model: Gaussian input noise from torch's global generator."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.inner = Linear(classes, seed=1)

    def forward(self, x):
        return self.inner(x + 0.2 * torch.randn_like(x))


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g)


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _same(r1, r2) -> None:
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert torch.equal(r1.success, r2.success)
    assert torch.equal(r1.queries, r2.queries) and torch.equal(r1.gradients, r2.gradients)


def _exported():
    return [
        getattr(A, n)
        for n in A.__all__
        if isinstance(getattr(A, n), type)
        and issubclass(getattr(A, n), A.Attack)
        and not inspect.isabstract(getattr(A, n))
    ]


# -- fit ---------------------------------------------------------------------------------------
def test_fit_is_a_no_op_by_default_and_returns_self():
    model = Linear(3).eval()
    x = _batch()
    y = _labels(model, x)
    atk = A.PGD(eps=0.1, steps=3)
    before = dict(vars(atk))
    assert atk.fit(model, (x, y)) is atk
    assert atk.fit(model, x, y) is atk and atk.fit(model, x) is atk
    assert vars(atk).keys() == before.keys()
    assert all(vars(atk)[k] is v for k, v in before.items())
    # and the attack is unchanged by it
    _same(atk(model, x, y), A.PGD(eps=0.1, steps=3)(model, x, y))


def test_fit_validates_its_data():
    model = Linear(3).eval()
    x = _batch()
    atk = A.FGSM(eps=0.1)
    with pytest.raises(ValueError, match="NaN"):
        atk.fit(model, x * float("nan"))
    with pytest.raises(ValueError, match="shape"):
        atk.fit(model, (x, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TypeError, match="pair"):
        atk.fit(model, (x, x, x))


@pytest.mark.parametrize("cls", _exported(), ids=lambda c: c.__name__)
def test_every_attack_has_the_lifecycle_and_eot_samples(cls):
    assert "eot_samples" in registry.init_params(cls)  # follows **kwargs to the parent
    kw = {"eps": 0.1} if "eps" in registry.init_params(cls) else {}
    if cls.targeted_only and "target" in registry.init_params(cls):
        kw["target"] = 1  # a universal targeted patch is built for its target
    if cls is A.TransferAttack:
        kw["surrogates"] = Linear(3).eval()  # a transfer attack is built around its surrogates
    assert cls(**kw, eot_samples=3).params()["eot_samples"] == 3
    assert callable(cls.fit) and callable(cls.attack)
    assert cls.__call__ is A.Attack.__call__


# -- universal: fit, then attack through the base prologue -------------------------------------
def test_universal_fit_then_attack():
    model = Linear(3).eval()
    x = _batch(24, seed=1)
    y = _labels(model, x)
    xf, yf, xt, yt = x[:16], y[:16], x[16:], y[16:]
    uap = A.UniversalPerturbation(eps=0.3, max_epochs=2, batch_size=8, inner_steps=3)
    assert uap.fit(model, (xf, yf)) is uap
    v = uap.perturbation_
    assert v.shape == x.shape[1:] and float(v.abs().max()) <= 0.3 + 1e-6
    # the pair and the (x, y) forms learn the same perturbation
    again = A.UniversalPerturbation(eps=0.3, max_epochs=2, batch_size=8, inner_steps=3)
    assert torch.equal(again.fit(model, xf, yf).perturbation_, v)
    r = uap.attack(model, xt, yt)
    assert torch.allclose(r.x_adv, (xt + v).clamp(0, 1))
    with torch.no_grad():
        assert torch.equal(r.success, model(r.x_adv).argmax(1) != yt)  # re-predicted
    # applying a fitted perturbation: the clean and the final forward, no gradient
    assert (r.queries == 2).all() and (r.gradients == 0).all()
    # the perturbation is not refitted by a call
    assert torch.equal(uap.perturbation_, v)


# -- no state left on the attack by a call -----------------------------------------------------
SHARED = {
    "apgd-t": lambda: A.APGD(eps=0.3, steps=4, targeted=True, n_target_classes=9),
    "fab": lambda: A.FAB(eps=0.5, norm="l2", steps=4),
    "jsma": lambda: A.JSMA(gamma=0.5),
    "pgd": lambda: A.PGD(eps=0.2, steps=4),
}


@pytest.mark.parametrize("name", list(SHARED))
def test_one_attack_object_serves_calls_and_threads(name):
    make = SHARED[name]
    models = [Linear(4, seed=2).eval(), Linear(7, seed=3).eval()]
    x = _batch(5, seed=4)
    ys = [_labels(m, x) for m in models]
    fresh = [make()(m, x, y) for m, y in zip(models, ys, strict=True)]
    shared = make()
    keys = set(vars(shared))
    # sequential calls, alternating class counts
    for _ in range(2):
        for m, y, want in zip(models, ys, fresh, strict=True):
            _same(shared(m, x, y), want)
    # concurrent calls from two threads
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(shared.attack, m, x, y)
            for _ in range(2)
            for m, y in zip(models, ys, strict=True)
        ]
        got = [f.result() for f in futures]
    for i, r in enumerate(got):
        _same(r, fresh[i % 2])
    assert set(vars(shared)) == keys  # nothing was stored during the calls


# -- EOT as a constructor option ---------------------------------------------------------------
def test_eot_samples_equals_wrapping_the_model_by_hand():
    model = Noisy().eval()
    x = _batch(6, seed=5)
    y = Linear(4, seed=1).eval()(x).argmax(1).detach()
    torch.manual_seed(0)
    by_option = A.PGD(eps=0.2, steps=5, eot_samples=4)(model, x, y)
    torch.manual_seed(0)
    by_hand = A.PGD(eps=0.2, steps=5)(EOT(model, 4).eval(), x, y)
    assert torch.equal(by_option.x_adv, by_hand.x_adv)
    assert torch.equal(by_option.success, by_hand.success)
    assert torch.equal(by_option.gradients, by_hand.gradients)
    assert by_option.params["eot_samples"] == 4
    # the attribute still works, and means the same thing
    atk = A.PGD(eps=0.2, steps=5)
    atk.eot_samples = 4
    torch.manual_seed(0)
    _same(atk(model, x, y), by_option)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None])
def test_eot_samples_below_one_or_not_an_integer_is_refused(bad):
    with pytest.raises(ValueError, match="eot_samples must be an integer >= 1"):
        A.PGD(eps=0.1, eot_samples=bad)
    with pytest.raises(ValueError, match="eot_samples"):
        A.CW(eot_samples=bad)


def test_eot_samples_set_to_zero_on_an_instance_is_refused_at_the_call():
    model = Linear(3).eval()
    x = _batch()
    atk = A.FGSM(eps=0.1)
    atk.eot_samples = 0
    with pytest.raises(ValueError, match="eot_samples"):
        atk(model, x, _labels(model, x))

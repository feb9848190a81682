"""The one attack interface: validation, immutability, determinism, threat-model invariants.

Every attack advex exports is listed in ``FACTORIES``; the property tests below run each one on
random shapes and budgets and check the invariants the design promises for all of them.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import advex.attacks as A
from advex.models.guards import ProbabilityOutputWarning

NORM_EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}


def _fixed(cls, **kw):
    def make(norm, eps):
        return cls(eps=eps, norm=norm, **kw)

    return make


# name -> (factory(norm, eps), norms supported, fixed budget?)
FACTORIES = {
    "fgsm": (_fixed(A.FGSM), ["linf", "l2", "l1"], True),
    "pgd": (_fixed(A.PGD, steps=5), ["linf", "l2", "l1"], True),
    "bim": (_fixed(A.BIM, steps=5), ["linf", "l2", "l1"], True),
    "mifgsm": (_fixed(A.MIFGSM, steps=3), ["linf", "l2"], True),
    "apgd": (_fixed(A.APGD, steps=6), ["linf", "l2", "l1"], True),
    "apgd-t": (_fixed(A.APGD, steps=4, targeted=True, n_target_classes=2), ["linf"], True),
    "square": (_fixed(A.Square, n_queries=30), ["linf", "l2"], True),
    "universal": (
        _fixed(A.UniversalPerturbation, max_epochs=1, inner_steps=2, candidates=3),
        ["linf", "l2"],
        True,
    ),
    "cw": (
        lambda norm, eps: A.CW(
            norm,
            max_iterations=8,
            learning_rate=0.1,
            initial_const=1.0,
            **({"binary_search_steps": 2} if norm == "l2" else {"largest_const": 2.0}),
        ),
        ["l2", "linf"],
        False,
    ),
    "ead": (
        lambda norm, eps: A.EAD(
            max_iterations=8, binary_search_steps=2, learning_rate=0.1, initial_const=1.0
        ),
        ["l1"],
        False,
    ),
    "lbfgs": (lambda norm, eps: A.LBFGS(search_steps=2, max_iterations=5), ["l2"], False),
    "deepfool": (lambda norm, eps: A.DeepFool(norm, max_iter=5), ["l2", "linf"], False),
    "fab": (_fixed(A.FAB, steps=5), ["linf", "l2", "l1"], True),
    "fab-minimum-norm": (lambda norm, eps: A.FAB(norm=norm, steps=5), ["linf", "l2", "l1"], False),
    "fabt": (_fixed(A.FABT, steps=4, n_target_classes=2), ["linf"], True),
    "jsma": (lambda norm, eps: A.JSMA(gamma=0.3), ["l2"], False),
    "hopskipjump": (_fixed(A.HopSkipJump, max_queries=60, init_evals=8), ["l2", "linf"], True),
    "hopskipjump-minimum-norm": (
        lambda norm, eps: A.HopSkipJump(norm=norm, max_queries=60, init_evals=8),
        ["l2", "linf"],
        False,
    ),
    "boundary": (_fixed(A.BoundaryAttack, max_queries=60), ["l2"], True),
    "rays": (_fixed(A.RayS, max_queries=60), ["linf"], True),
}
# attacks that only run targeted / only untargeted, as their papers define them
TARGETED_ONLY = {"lbfgs"}
UNTARGETED_ONLY = {"universal", "fabt"}


class ConvNet(torch.nn.Module):
    def __init__(self, channels: int, classes: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _cases():
    for name, (_, norms, _) in FACTORIES.items():
        for norm in norms:
            yield name, norm


@pytest.mark.parametrize("name,norm", list(_cases()))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 6),
    c=st.integers(1, 3),
    h=st.integers(3, 8),
    w=st.integers(3, 8),
    scale=st.floats(0.2, 3.0),
    seed=st.integers(0, 50),
    targeted=st.booleans(),
)
def test_invariants_for_every_attack(name, norm, b, c, h, w, scale, seed, targeted):
    factory, _, fixed = FACTORIES[name]
    if name in TARGETED_ONLY:
        targeted = True
    if name in UNTARGETED_ONLY:
        targeted = False
    eps = NORM_EPS[norm] * scale
    model = ConvNet(c, seed=seed).eval()
    x = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 5, (b,), generator=torch.Generator().manual_seed(seed + 1))
    target = (y + 1) % 5 if targeted else None
    x_before, state_before = x.clone(), copy.deepcopy(model.state_dict())
    attack = factory(norm, eps)
    r1 = attack(model, x, y, target)
    r2 = factory(norm, eps)(model, x, y, target)
    # caller's tensors and model untouched
    assert torch.equal(x, x_before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k])
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # inside bounds (and the ε-ball for fixed-budget attacks)
    assert r1.x_adv.shape == x.shape and r1.x_adv.dtype == x.dtype
    assert float(r1.x_adv.min()) >= -1e-6 and float(r1.x_adv.max()) <= 1 + 1e-6
    if fixed:
        assert (r1.norms <= eps + 1e-6).all(), (r1.norms.max(), eps)
        assert r1.threat.contains(r1.x_adv, x, tol=1e-6).all()
    # success is the model's verdict on x_adv
    with torch.no_grad():
        pred = model(r1.x_adv).argmax(1)
    expected = pred == target if targeted else pred != y
    assert torch.equal(r1.success, expected)
    # same seed, same result
    assert torch.equal(r1.x_adv, r2.x_adv)


def test_bad_inputs_give_clear_errors(tiny_model):
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    pgd = A.PGD(eps=0.1, steps=2)
    with pytest.raises(ValueError, match="label 12 but the model outputs 10 classes"):
        pgd(tiny_model, x, torch.tensor([0, 1, 2, 12]))
    with pytest.raises(TypeError, match="integer class labels"):
        pgd(tiny_model, x, y.float())
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        pgd(tiny_model, x, y[:3])
    with pytest.raises(ValueError, match="target equals the true label"):
        pgd(tiny_model, x, y, target=y)
    with pytest.raises(ValueError, match="target has label 10"):
        pgd(tiny_model, x, y, target=10)
    with pytest.raises(ValueError, match="outside the threat model's bounds"):
        pgd(tiny_model, x * 2 + 0.5, y)
    with pytest.raises(ValueError, match="NaN"):
        pgd(tiny_model, torch.full((4, 1, 8, 8), float("nan")), y)
    with pytest.raises(TypeError, match="floating-point"):
        pgd(tiny_model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        A.PGD(eps=-0.1)
    with pytest.raises(ValueError, match="pass eps"):
        A.PGD()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        A.PGD(eps=0.1, steps=0)
    with pytest.raises(ValueError, match="unknown loss"):
        A.PGD(eps=0.1, loss="hinge")


def test_probability_output_is_detected(tiny_model):
    probs = torch.nn.Sequential(tiny_model, torch.nn.Softmax(dim=1)).eval()
    x = torch.rand(4, 1, 8, 8)
    with pytest.warns(ProbabilityOutputWarning, match="probabilities"):
        A.PGD(eps=0.1, steps=2)(probs, x, torch.tensor([0, 1, 2, 3]))


def test_train_mode_model_is_attacked_in_eval_mode_and_restored():
    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.drop = torch.nn.Dropout(0.9)
            self.seen = []

        def forward(self, x):
            self.seen.append(self.training)
            return self.drop(self.lin(x.flatten(1)))

    m = Recorder().train()
    with pytest.warns(UserWarning, match="train mode"):
        A.PGD(eps=0.1, steps=3)(m, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert m.training and m.drop.training
    assert m.seen and not any(m.seen)


def test_no_warning_for_eval_model(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.PGD(eps=0.1, steps=2)(tiny_model, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))


def test_already_fooled_points_cost_nothing(tiny_model):
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        pred = tiny_model(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 10  # first three already misclassified
    r = A.PGD(eps=0.05, steps=10)(tiny_model, x, y)
    assert (r.gradients[:3] == 0).all()
    assert torch.equal(r.x_adv[:3], x[:3])
    assert r.success[:3].all()

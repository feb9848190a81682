"""Square Attack and the black-box adapters, measured on the zoo MNIST CNN.

Budgets are reduced to keep CI fast (stated per test); the numbers in comments were measured on
the zoo ``mnist-smallcnn`` with seed 0.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from advex.attacks.gradient import FGSM, PGD
from advex.attacks.square import Square, p_schedule
from advex.models.blackbox import BlackBoxError, LabelBlackBox, ScoreBlackBox
from advex.threats import ThreatModel


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture(scope="module")
def linf_run(mnist_model, mnist_correct):
    """L∞ Square at ε=0.3 with 1000 queries (instead of 5000) on 100 correctly classified
    digits."""
    x, y = mnist_correct[0][:100], mnist_correct[1][:100]
    return x, y, Square(eps=0.3, n_queries=1000)(mnist_model, x, y)


def test_linf_fools_most_digits_within_the_ball(mnist_model, linf_run):
    x, y, r = linf_run
    # measured: 100% fooled, mean 14 queries, median 7, max 129
    assert r.success.float().mean() >= 0.95
    assert bool(r.threat.contains(r.x_adv, x, tol=1e-6).all())
    assert float((r.x_adv - x).abs().amax()) <= 0.3 + 1e-6
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    # success is the model's own verdict on x_adv
    assert torch.equal(r.success, _pred(mnist_model, r.x_adv) != y)
    assert r.robust_accuracy == pytest.approx(1.0 - float(r.success.float().mean()))


def test_linf_counts_queries_and_no_gradients(linf_run):
    _, _, r = linf_run
    assert int(r.gradients.sum()) == 0
    # clean forward + at most n_queries for the search + final re-prediction
    assert int(r.queries.max()) <= 1000 + 2
    assert int(r.queries.min()) >= 3
    # points fooled early stop spending queries: most cost far less than the budget
    assert float(r.queries.float().median()) < 50
    assert int(r.queries.min()) < int(r.queries.max())


def test_linf_no_stronger_than_pgd(mnist_model, mnist_correct):
    """At ε=0.15 (where some digits resist) with 150 queries on 20 digits, the black-box
    random search leaves at least as many digits robust as white-box PGD-40."""
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    sq = Square(eps=0.15, n_queries=150)(mnist_model, x, y)
    pgd = PGD(eps=0.15, steps=40)(mnist_model, x, y)
    # measured: Square 65% robust (7/20 fooled), PGD-40 0% robust
    assert sq.robust_accuracy >= pgd.robust_accuracy
    assert 0.2 <= sq.robust_accuracy <= 0.9
    # robust points spent the whole budget; fooled ones stopped when fooled (one may be fooled
    # by its very last query)
    robust = ~sq.success
    assert bool((sq.queries[robust] == 150 + 2).all())
    assert bool((sq.queries[sq.success] <= 150 + 2).all())
    assert float((sq.queries[sq.success] < 150 + 2).float().mean()) >= 0.8
    assert bool(sq.threat.contains(sq.x_adv, x, tol=1e-6).all())


def test_l2_square_works(mnist_model, mnist_correct):
    """L2 Square at ε=2.0 with 300 queries (instead of 5000) on digits 16-35."""
    x, y = mnist_correct[0][16:36], mnist_correct[1][16:36]
    r = Square(eps=2.0, norm="l2", n_queries=300)(mnist_model, x, y)
    # measured: 8/20 digits fooled with 300 queries (PGD-40 L2 fools 20/20: with so few queries
    # the random search is much weaker in L2; ~49% of 100 digits with 1000 queries)
    assert r.success.float().mean() >= 0.25
    assert bool(r.threat.contains(r.x_adv, x, tol=1e-6).all())
    norms = (r.x_adv - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 2.0 + 1e-5
    # the search keeps the perturbation on the sphere (up to clipping at the pixel bounds)
    assert float(norms.min()) > 1.0
    assert torch.equal(r.success, _pred(mnist_model, r.x_adv) != y)
    assert int(r.gradients.sum()) == 0
    assert int(r.queries.max()) <= 300 + 2
    pgd = PGD(eps=2.0, norm="l2", steps=40)(mnist_model, x, y)
    assert r.robust_accuracy >= pgd.robust_accuracy


def test_targeted(mnist_model, mnist_correct):
    """Targeted L∞ Square (ε=0.3, 1000 queries, 20 digits, target = y+1 mod 10)."""
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]
    target = (y + 1) % 10
    r = Square(eps=0.3, n_queries=1000)(mnist_model, x, y, target=target)
    # measured: 19/20 reach the target (CE loss, the paper's targeted choice)
    assert r.success.float().mean() >= 0.85
    assert torch.equal(r.success, _pred(mnist_model, r.x_adv) == target)
    assert bool(r.threat.contains(r.x_adv, x, tol=1e-6).all())
    assert r.params["loss"] == "auto"


def test_targeted_margin_loss(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:8], mnist_correct[1][:8]
    target = (y + 3) % 10
    r = Square(eps=0.3, n_queries=300, loss="margin")(mnist_model, x, y, target=target)
    # measured: 6/8 reach the target with 300 queries
    assert r.success.float().mean() >= 0.6
    assert torch.equal(r.success, _pred(mnist_model, r.x_adv) == target)


def test_deterministic_for_a_seed(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:8], mnist_correct[1][:8]
    for norm, eps in (("linf", 0.15), ("l2", 1.5)):
        a = Square(eps=eps, norm=norm, n_queries=30, seed=3)(mnist_model, x, y)
        b = Square(eps=eps, norm=norm, n_queries=30, seed=3)(mnist_model, x, y)
        c = Square(eps=eps, norm=norm, n_queries=30, seed=4)(mnist_model, x, y)
        assert torch.equal(a.x_adv, b.x_adv)
        assert torch.equal(a.queries, b.queries)
        assert not torch.equal(a.x_adv, c.x_adv)


def test_restarts_only_on_robust_points(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    r = Square(eps=0.1, n_queries=40, restarts=2)(mnist_model, x, y)
    robust = ~r.success
    assert bool(robust.any())
    assert bool((r.queries[robust] == 2 * 40 + 2).all())
    assert int(r.queries.max()) <= 2 * 40 + 2


def test_already_successful_points_cost_nothing(tiny_model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    wrong = _pred(tiny_model, x) != y
    assert bool(wrong.any()) and bool((~wrong).any())
    r = Square(eps=0.05, n_queries=30)(tiny_model, x, y)
    assert bool((r.queries[wrong] == 2).all())  # clean forward + final re-prediction only
    assert torch.equal(r.x_adv[wrong], x[wrong])


@pytest.mark.parametrize("shape", [(6, 64), (6, 2, 32), (6, 3, 6, 10)])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_any_input_shape(shape, norm, eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    d = x[0].numel()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    y = _pred(model, x)
    r = Square(eps=eps, norm=norm, n_queries=30)(model, x, y)
    assert r.x_adv.shape == x.shape
    assert bool(r.threat.contains(r.x_adv, x, tol=1e-6).all())
    assert int(r.queries.max()) <= 32


def test_mask_respected(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:6], mnist_correct[1][:6]
    mask = torch.zeros(1, 28, 28, dtype=torch.bool)
    mask[:, 7:21, 7:21] = True
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):
        r = Square(eps=eps, norm=norm, n_queries=20, mask=mask)(mnist_model, x, y)
        assert bool(r.threat.contains(r.x_adv, x, tol=1e-6).all())
        assert float((r.x_adv - x)[:, ~mask].abs().max()) == 0.0


def test_caller_tensors_and_model_unchanged(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:6].clone(), mnist_correct[1][:6].clone()
    x0, y0 = x.clone(), y.clone()
    model = copy.deepcopy(mnist_model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="train mode"):
        Square(eps=0.3, n_queries=20)(model, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="n_queries"):
        Square(eps=0.3, n_queries=0)
    with pytest.raises(ValueError, match="n_queries"):
        Square(eps=0.3, n_queries=2.5)
    with pytest.raises(ValueError, match="p_init"):
        Square(eps=0.3, p_init=0.0)
    with pytest.raises(ValueError, match="p_init"):
        Square(eps=0.3, p_init=1.5)
    with pytest.raises(ValueError, match="restarts"):
        Square(eps=0.3, restarts=0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        Square(eps=-0.1)
    with pytest.raises(ValueError, match="pass eps"):
        Square()
    with pytest.raises(ValueError, match="Square supports linf and l2"):
        Square(eps=10.0, norm="l1")
    with pytest.raises(ValueError, match="unknown loss"):
        Square(eps=0.3, loss="hinge")
    with pytest.raises(ValueError, match="Square supports linf and l2"):
        Square(threat=ThreatModel("l1", eps=5.0))


def test_p_schedule():
    # the paper's schedule on 10,000 queries, and its rescaling to 5,000 (AutoAttack)
    assert p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 201, 10000) == 0.1
    assert p_schedule(0.8, 9000, 10000) == pytest.approx(0.8 / 512)
    assert p_schedule(0.8, 6, 5000) == 0.4
    assert p_schedule(0.8, 6, 5000, rescale=False) == 0.8


# -- black-box adapters -------------------------------------------------------------------------


def test_square_through_score_black_box(mnist_model, mnist_correct):
    """A numpy probability API: Square works through it and finds the same x_adv as on the
    white-box model (probabilities become log-probabilities, a shift of the logits)."""
    x, y = mnist_correct[0][:20], mnist_correct[1][:20]

    def api(batch):
        with torch.no_grad():
            return mnist_model(torch.as_tensor(batch)).softmax(1).double().numpy()

    box = ScoreBlackBox(api, num_classes=10, as_numpy=True)
    r = Square(eps=0.3, n_queries=300)(box, x, y)
    white = Square(eps=0.3, n_queries=300)(mnist_model, x, y)
    assert r.success.float().mean() >= 0.95
    assert box.queries == int(r.queries.sum())
    assert box.calls >= 3
    assert int(r.gradients.sum()) == 0
    assert torch.equal(r.success, white.success)
    assert float((r.x_adv - white.x_adv).abs().max()) < 1e-6
    box.reset_queries()
    assert box.queries == 0 and box.calls == 0


# a hard-label one-hot output looks like probabilities to check_logits (see docs)
@pytest.mark.filterwarnings("ignore::advex.models.ProbabilityOutputWarning")
def test_gradient_attack_through_black_box_raises(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:4], mnist_correct[1][:4]
    box = ScoreBlackBox(mnist_model)
    with pytest.raises(BlackBoxError, match="score-only black box.*Square"):
        PGD(eps=0.3, steps=2)(box, x, y)
    label_box = LabelBlackBox(lambda b: mnist_model(b).argmax(1), num_classes=10)
    with pytest.raises(BlackBoxError, match="hard-label black box"):
        FGSM(eps=0.3)(label_box, x, y)


def test_score_black_box_outputs_and_errors(mnist_model, mnist_correct):
    x = mnist_correct[0][:5]
    with torch.no_grad():
        logits = mnist_model(x)
    box = ScoreBlackBox(lambda b: mnist_model(b).numpy())
    out = box(x)
    assert out.dtype == x.dtype and torch.allclose(out, logits)
    probs = ScoreBlackBox(lambda b: mnist_model(b).softmax(1))(x)
    assert torch.allclose(probs.softmax(1), logits.softmax(1), atol=1e-5)
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    assert box.queries == 5 and box.calls == 1
    with pytest.raises(ValueError, match="num_classes=7"):
        ScoreBlackBox(mnist_model, num_classes=7)(x)
    with pytest.raises(ValueError, match="shape"):
        ScoreBlackBox(lambda b: np.zeros(len(b)))(x)
    with pytest.raises(ValueError, match="scores must be"):
        ScoreBlackBox(mnist_model, scores="softmax")
    with pytest.raises(TypeError, match="callable"):
        ScoreBlackBox(3)


def test_label_black_box(mnist_model, mnist_correct):
    x = mnist_correct[0][:6]
    labels = _pred(mnist_model, x)
    box = LabelBlackBox(lambda b: mnist_model(b).argmax(1).numpy(), num_classes=10)
    out = box(x)
    assert out.shape == (6, 10)
    assert torch.equal(out.argmax(1), labels)
    assert torch.equal(out.sum(1), torch.ones(6))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert box.queries == 6
    from_scores = LabelBlackBox(mnist_model)(x)
    assert torch.equal(from_scores, out)
    with pytest.raises(ValueError, match="num_classes"):
        LabelBlackBox(lambda b: mnist_model(b).argmax(1))(x)
    with pytest.raises(ValueError, match="outside"):
        LabelBlackBox(lambda b: torch.full((len(b),), 12), num_classes=10)(x)


def test_run_eps_reuses_fooled_points(mnist_model, mnist_correct):
    x, y = mnist_correct[0][:10], mnist_correct[1][:10]
    out = Square(eps=0.3, n_queries=60).run_eps(mnist_model, x, y, eps=[0.1, 0.3])
    lo, hi = out[0.1], out[0.3]
    assert hi.robust_accuracy <= lo.robust_accuracy
    assert bool((hi.queries[lo.success] == 0).all())
    assert bool(hi.threat.contains(hi.x_adv, x, tol=1e-6).all())
    assert float((lo.x_adv - x).abs().amax()) <= 0.1 + 1e-6
    with pytest.raises(TypeError, match="run_eps"):
        Square(eps=[0.1, 0.3])

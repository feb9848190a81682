"""PointRandom: per-point random numbers (advex.threats.random)."""

from __future__ import annotations

import math

import pytest
import torch

from advex.threats import L1, L2, LInf, PointRandom, ThreatModel, point_keys


@pytest.fixture
def x():
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_statistics_of_every_distribution(x):
    rng = PointRandom(0, x=x)
    u = rng.uniform("u", (1000,), dtype=torch.float64)
    assert u.shape == (64, 1000) and 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.var()) - 1 / 12) < 0.002
    g = rng.normal("g", (1000,), dtype=torch.float64)
    assert abs(float(g.mean())) < 0.02 and abs(float(g.var()) - 1.0) < 0.03
    assert abs(float((g.abs() < 1.96).double().mean()) - 0.95) < 0.005
    e = rng.exponential("e", (1000,), dtype=torch.float64)
    assert float(e.min()) >= 0 and abs(float(e.mean()) - 1.0) < 0.02
    lap = rng.laplace("l", (1000,), dtype=torch.float64)
    assert abs(float(lap.mean())) < 0.03 and abs(float(lap.var()) - 2.0) < 0.08
    s = rng.signs("s", (1000,))
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.mean())) < 0.02


def test_integers_are_uniform_chi_square(x):
    rng = PointRandom(1, x=x)
    k = 7
    draws = rng.integers("i", 3, 3 + k, (700,))
    assert draws.dtype == torch.int64 and int(draws.min()) == 3 and int(draws.max()) == 3 + k - 1
    counts = torch.bincount((draws - 3).flatten(), minlength=k).double()
    expected = draws.numel() / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 22.5  # 6 degrees of freedom: p = 0.001
    with pytest.raises(ValueError, match="empty range"):
        rng.integers("i", 2, 2, (1,))


def test_uniform_never_reaches_one_in_low_precision(x):
    rng = PointRandom(0, x=x)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        u = rng.uniform("u", (4096,), dtype=dtype)
        assert u.dtype == dtype and float(u.max()) < 1.0 and float(u.min()) >= 0.0


def test_draws_are_deterministic_and_depend_on_seed_stream_and_point(x):
    a = PointRandom(0, x=x).uniform("start", (1, 8, 8))
    assert torch.equal(a, PointRandom(0, x=x.clone()).uniform("start", (1, 8, 8)))
    assert not torch.equal(a, PointRandom(1, x=x).uniform("start", (1, 8, 8)))
    assert not torch.equal(a, PointRandom(0, x=x).uniform("other", (1, 8, 8)))
    assert not torch.equal(a[0], a[1])  # different points, different numbers
    rng = PointRandom(0, x=x)
    # tuple streams: (name, r) for restart r are unrelated streams
    r1, r2 = rng.uniform(("start", 1), (16,)), rng.uniform(("start", 2), (16,))
    assert not torch.equal(r1, r2)
    assert torch.equal(r1, rng.uniform(("start", 1), (16,)))
    # a changed pixel changes the point's key
    x2 = x.clone()
    x2[5, 0, 3, 3] += 1e-3
    assert torch.equal(point_keys(x2)[:5], point_keys(x)[:5])
    assert point_keys(x2)[5] != point_keys(x)[5]


def test_subset_gives_the_rows_of_the_full_draw(x):
    rng = PointRandom(3, x=x)
    idx = torch.tensor([40, 2, 17, 17, 63])
    for draw in (
        lambda i: rng.uniform("u", (2, 3), i),
        lambda i: rng.normal("n", (5,), i),
        lambda i: rng.integers("k", 0, 9, (4,), i),
        lambda i: rng.signs("s", (1, 1), i),
        lambda i: rng.laplace("l", (3,), i),
    ):
        full = draw(None)
        assert torch.equal(draw(idx), full[idx])
    # the same points in their own, smaller batch: the same numbers
    assert torch.equal(PointRandom(3, x=x[idx]).normal("n", (5,)), rng.normal("n", (5,))[idx])


def test_shuffled_points_get_permuted_draws_and_a_permuted_order(x):
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(9))
    a, b = PointRandom(0, x=x), PointRandom(0, x=x[perm])
    assert torch.equal(b.uniform("u", (3,)), a.uniform("u", (3,))[perm])
    order_a, order_b = a.permutation("order"), b.permutation("order")
    assert sorted(order_a.tolist()) == list(range(64))
    # the same points, in the same order, wherever they sit in the batch
    assert torch.equal(perm[order_b], order_a)
    assert not torch.equal(order_a, torch.arange(64))
    sub = torch.tensor([5, 9, 30])
    assert sorted(a.permutation("order", sub).tolist()) == [0, 1, 2]


def test_explicit_keys_and_errors(x):
    rng = PointRandom(0, keys=torch.arange(10))
    assert len(rng) == 10 and rng.uniform("u", (2,)).shape == (10, 2)
    assert torch.equal(rng.uniform("u", (2,))[3:5], PointRandom(0, keys=[3, 4]).uniform("u", (2,)))
    with pytest.raises(ValueError, match="exactly one"):
        PointRandom(0)
    with pytest.raises(ValueError, match="exactly one"):
        PointRandom(0, x=x, keys=torch.arange(64))


def test_keys_for_every_dtype(x):
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        k = point_keys(x.to(dtype))
        assert k.shape == (64,) and k.dtype == torch.int64 and k.unique().numel() == 64


@pytest.mark.parametrize("norm", [LInf(), L2(), L1()])
def test_random_start_is_per_point_and_uniform_in_the_ball(norm):
    x = torch.full((512, 1, 4, 4), 0.5)
    x += torch.arange(512).reshape(-1, 1, 1, 1) * 1e-6  # distinct points
    eps = {"linf": 0.1, "l2": 0.3, "l1": 1.0}[norm.name]
    t = ThreatModel(eps=eps, norm=norm)
    rng = PointRandom(0, x=x)
    start = t.random_start(x, rng)
    delta = start - x
    r = norm.measure(delta)
    assert bool((r <= eps * (1 + 1e-5)).all())
    # uniform in a d-ball: P(radius <= eps * q) = q^d; with d = 16 the median radius is 0.957 eps
    d = 16
    med = float(r.median()) / eps
    assert abs(med - 0.5 ** (1 / d)) < 0.02
    # rows of a subset are the rows of the full draw
    idx = torch.tensor([7, 100, 3])
    assert torch.equal(t.random_start(x[idx], rng, idx=idx), start[idx])
    # a different stream (e.g. restart 1) gives a different start
    assert not torch.equal(t.random_start(x, rng, stream=("start", 1)), start)
    with pytest.raises(ValueError, match="idx="):
        t.random_start(x[:3], rng)
    # a torch.Generator still works (one batch-wide draw)
    g = t.random_start(x, torch.Generator().manual_seed(0))
    assert bool((norm.measure(g - x) <= eps * (1 + 1e-5)).all())


def test_linf_start_covers_the_ball_coordinatewise():
    x = torch.zeros(2000, 3)
    t = ThreatModel(eps=1.0, norm="linf", bounds=(-1.0, 1.0))
    delta = t.random_start(x, PointRandom(5, keys=torch.arange(2000))) - x
    assert abs(float(delta.mean())) < 0.03 and abs(float(delta.var()) - 1 / 3) < 0.02
    assert math.isclose(float(delta.abs().max()), 1.0, abs_tol=0.01)


def test_speed_is_reasonable(x):
    """A draw for a batch costs about as much as a few elementwise passes over it (a few ms for
    64 × 784 on one CPU core): cheap next to one forward pass of any real model."""
    import time

    big = torch.rand(64, 1, 28, 28)
    rng = PointRandom(0, x=big)
    t0 = time.perf_counter()
    for i in range(10):
        rng.uniform(("u", i), (1, 28, 28))
    assert (time.perf_counter() - t0) / 10 < 0.5  # generous: shared CI machines

"""The tabular threat: schemas (files, errors naming the feature), the repair's guarantee (every
output satisfies every declared constraint) and the breast cancer schema's real relations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import advex
from advex.data import breast_cancer
from advex.threats import Constraint, Feature, Schema, SchemaError, TabularThreat


# -- the property: every output of the repair satisfies every declared constraint --------------
def _random_case(seed: int, n_cont: int, n_int: int, n_bin: int, group: int, rows: int):
    g = torch.Generator().manual_seed(seed)
    feats, cols = [], []

    def u(lo, hi, k=rows):
        return lo + (hi - lo) * torch.rand(k, generator=g, dtype=torch.float64)

    for i in range(n_cont):
        feats.append(Feature(f"c{i}", low=0.0, high=10.0, scale=float(u(0.5, 3.0, 1))))
        cols.append(u(1.0, 9.0))
    for i in range(n_int):
        feats.append(Feature(f"i{i}", type="integer", low=0, high=20, scale=2.0))
        cols.append(torch.randint(0, 21, (rows,), generator=g).double())
    for i in range(n_bin):
        feats.append(Feature(f"b{i}", type="binary", scale=0.5, mutable=bool(i % 2)))
        cols.append(torch.randint(0, 2, (rows,), generator=g).double())
    if group:
        cat = torch.randint(0, group, (rows,), generator=g)
        for k in range(group):
            feats.append(Feature(f"g{k}", type="categorical", group="grp", scale=0.5))
            cols.append((cat == k).double())
    x = torch.stack(cols, 1)
    # a linear relation c0 >= c1 (+ an immutable c2 when there is one) and c0 / c1 in [1, 3]
    hi_, lo_ = torch.maximum(x[:, 0], x[:, 1]), torch.minimum(x[:, 0], x[:, 1])
    lo_ = torch.clamp(lo_, min=hi_ / 2.9)
    x[:, 0], x[:, 1] = hi_, lo_
    cons = [
        Constraint("c0 >= c1", expr="c0 - c1", low=0),
        Constraint("ratio", expr="c0 / c1", low=1.0, high=3.0),
    ]
    if n_cont > 2:
        feats[2] = Feature("c2", low=0.0, high=10.0, scale=1.0, mutable=False)
        cons.append(Constraint("sum", fn=lambda c0, c2: c0 + c2, high=25.0))
    if n_int >= 2:
        cons.append(Constraint("i0 <= i1 + 10", expr="i0 - i1", high=10))
        x[:, n_cont + 1] = torch.maximum(x[:, n_cont + 1], x[:, n_cont] - 10)
    return Schema(feats, cons), x.float()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_cont=st.integers(2, 4),
    n_int=st.integers(0, 3),
    n_bin=st.integers(0, 2),
    group=st.sampled_from([0, 2, 3]),
    eps=st.floats(0.05, 4.0),
    norm=st.sampled_from(["linf", "l2"]),
    noise=st.floats(0.1, 20.0),
)
# found by CI: the repair put c1 at 0, the ratio c0 / c1 became inf and the check let it pass
@example(seed=1372, n_cont=2, n_int=0, n_bin=0, group=0, eps=4.0, norm="linf", noise=2.0)
def test_every_repaired_point_satisfies_every_constraint(
    seed, n_cont, n_int, n_bin, group, eps, norm, noise
):
    schema, x = _random_case(seed, n_cont, n_int, n_bin, group, rows=12)
    schema.check_data(x)  # the clean rows are valid by construction
    threat = TabularThreat(schema, eps=eps, norm=norm)
    g = torch.Generator().manual_seed(seed + 1)
    x_adv = x + noise * torch.randn(x.shape, generator=g)
    before = x_adv.clone()
    out = threat.project(x_adv, x)
    assert torch.equal(x_adv, before)  # the caller's tensor is untouched
    assert out.dtype == x.dtype and out.shape == x.shape
    assert bool(threat.contains(out, x).all()), threat.verdicts(out, x).summary()
    # the same, spelled out, without the threat's own check
    xd, od = x.double(), out.double()
    for j, f in enumerate(schema.features):
        col = od[:, j]
        assert bool((col >= f.low - 1e-5).all() and (col <= f.high + 1e-5).all()), f.name
        if f.type in ("integer", "binary"):
            assert torch.equal(col, col.round()), f.name
        if not f.mutable:
            assert torch.equal(col, xd[:, j]), f.name
    if group:
        block = od[:, [schema.index(f"g{k}") for k in range(group)]]
        assert torch.equal(block.sum(1), torch.ones(len(block)))
    assert bool((od[:, 0] >= od[:, 1] - 1e-5).all())
    ratio = od[:, 0] / od[:, 1]
    assert bool((ratio >= 1 - 1e-5).all() and (ratio <= 3 + 1e-5).all())
    size = ((od - xd) / threat.unit(xd)).abs()
    size = size.amax(1) if norm == "linf" else size.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all())


def test_repair_returns_the_closest_point_of_a_single_slab():
    """One linear constraint and a wide box: the repair is the exact projection (in the
    standardised metric) onto the half-space."""
    schema = Schema(
        [Feature("a", low=-100, high=100, scale=1.0), Feature("b", low=-100, high=100, scale=2.0)],
        [Constraint("a >= b", expr="a - b", low=0)],
    )
    threat = TabularThreat(schema, eps=None)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    out = threat.project(torch.tensor([[0.0, 5.0]], dtype=torch.float64), x)
    # minimise (da)^2 + (db/2)^2 s.t. a = b: a = b = (0*1 + 5*4... ) the weighted mean
    assert out[0, 0].item() == pytest.approx(out[0, 1].item(), abs=1e-9)
    assert out[0, 0].item() == pytest.approx((0.0 * 1 + 5.0 * 0.25) / 1.25, abs=1e-6)


def test_verdicts_name_every_check():
    schema, x = _random_case(0, 3, 2, 2, 3, rows=4)
    threat = TabularThreat(schema, eps=1.0)
    v = threat.contains(x, x, per_constraint=True)
    assert v.ok.shape == (4, len(v.names)) and bool(v.all().all())
    for name in ("range:c0", "integer:i0", "one-hot:grp", "c0 >= c1", "ratio", "budget"):
        assert name in v.names
    assert "immutable:c2" in v.names
    bad = x.clone()
    bad[0, 0] = 11.0  # out of range, and ratio / c0 >= c1 may break
    assert "range:c0" in threat.verdicts(bad, x).failed(0)
    assert not bool(threat.contains(bad, x)[0])


# -- files and errors ----------------------------------------------------------------------------
def test_schema_round_trips_through_yaml_and_json(tmp_path):
    pytest.importorskip("yaml", reason="YAML schemas need the [tabular] extra (PyYAML)")
    schema = breast_cancer("test").schema
    for name in ("s.yaml", "s.json"):
        p = schema.save(tmp_path / name)
        back = Schema.from_file(p)
        assert back.names == schema.names
        assert [c.name for c in back.constraints] == [c.name for c in schema.constraints]
        assert back.scales() == schema.scales()


@pytest.mark.parametrize(
    "doc, message",
    [
        (
            {
                "features": [{"name": "age", "range": [0, 1]}],
                "constraints": [{"name": "c", "expr": "age - agee", "low": 0}],
            },
            r"unknown feature 'agee'.*did you mean 'age'",
        ),
        (
            {
                "features": [{"name": "a", "range": [0, 1]}, {"name": "b", "range": [0, 1]}],
                "constraints": [
                    {"name": "up", "expr": "a - b", "low": 0.6},
                    {"name": "down", "expr": "b - a", "low": 0.1},
                    {"name": "free", "expr": "a + b", "high": 5},
                ],
            },
            r"infeasible constraint set: constraints 'up', 'down'",
        ),
        (
            {
                "features": [{"name": "a", "range": [0, 1]}],
                "constraints": [{"name": "big", "expr": "3 * a", "low": 5}],
            },
            r"infeasible.*'big'.*\[0, 3\].*features a",
        ),
        ({"features": [{"name": "a", "type": "real"}]}, r"feature 'a': unknown type 'real'"),
        ({"features": [{"name": "a", "rnage": [0, 1]}]}, r"feature 'a': unknown key"),
        ({"features": [{"name": "mean radius"}]}, r"must be an identifier"),
        (
            {
                "features": [{"name": "a"}],
                "constraints": [{"name": "x", "expr": "__import__('os')", "low": 0}],
            },
            r"not allowed|unknown function",
        ),
    ],
)
def test_bad_schemas_name_the_feature(doc, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict(doc)


def test_data_outside_the_stated_range_names_the_feature(tmp_path):
    schema = Schema.from_dict(
        {
            "target": "y",
            "classes": ["no", "yes"],
            "features": [
                {"name": "age", "type": "integer", "range": [18, 100]},
                {"name": "dose", "range": [0, 5], "unit": "mg"},
            ],
        }
    )
    with pytest.raises(SchemaError, match=r"feature 'dose' has value 7.5 in row 1.*\[0, 5\]"):
        schema.check_data(torch.tensor([[30.0, 1.0], [40.0, 7.5]]))
    with pytest.raises(SchemaError, match=r"feature 'age' is declared integer.*30.5"):
        schema.check_data(torch.tensor([[30.5, 1.0]]))
    csv = tmp_path / "t.csv"
    csv.write_text("age,dose,y\n30,1.0,no\n41,9,yes\n")
    with pytest.raises(SchemaError, match=r"feature 'dose' has value 9 in row 1"):
        advex.data.read_csv(csv, schema)
    csv.write_text("age,dos,y\n30,1.0,no\n")
    with pytest.raises(SchemaError, match=r"feature 'dose' of the schema is not a column"):
        advex.data.read_csv(csv, schema)
    csv.write_text("age,dose,y\n30,1.0,maybe\n")
    with pytest.raises(SchemaError, match=r"label 'maybe'"):
        advex.data.read_csv(csv, schema)
    threat = TabularThreat(schema.with_scales([10.0, 1.0]), eps=0.5)
    with pytest.raises(SchemaError, match="feature 'dose'"):
        threat.check_inputs(torch.tensor([[30.0, -1.0]]))
    with pytest.raises(SchemaError, match="has no scale"):
        TabularThreat(schema, eps=0.5)


def test_csv_loader_and_spec(tmp_path):
    pytest.importorskip("yaml", reason="YAML schemas need the [tabular] extra (PyYAML)")
    (tmp_path / "t.schema.yaml").write_text(
        "name: toy\ntarget: y\nclasses: ['no', 'yes']\nfeatures:\n"
        "  - {name: a, range: [0, 10], unit: mm}\n  - {name: b, range: [0, 10]}\n"
        "constraints:\n  - {name: a >= b, expr: a - b, low: 0}\n"
    )
    rows = "".join(f"{5 + i % 5},{i % 5},{'yes' if i % 2 else 'no'}\n" for i in range(20))
    (tmp_path / "t.csv").write_text("a,b,y\n" + rows)
    ds = advex.data.load(f"csv:{tmp_path / 't.csv'}", "all")
    assert len(ds) == 20 and ds.class_names == ["no", "yes"] and ds.schema.names == ["a", "b"]
    assert ds.schema.feature("a").scale == pytest.approx(
        float(ds.x[:, 0].double().std(0, unbiased=False)), rel=0.3
    )
    assert len(advex.data.load(f"csv:{tmp_path / 't.csv'}", "test")) == 5
    with pytest.raises(SchemaError, match="quote the class names"):
        Schema.from_dict({"classes": [False, True], "features": [{"name": "a"}]})
    with pytest.raises(ValueError, match="needs a schema file"):
        (tmp_path / "u.csv").write_text("a,b,y\n1,0,no\n")
        advex.data.load(f"csv:{tmp_path / 'u.csv'}")


# -- breast cancer ---------------------------------------------------------------------------------
def test_breast_cancer_schema_states_relations_that_hold():
    ds, tr = breast_cancer("test"), breast_cancer("train")
    assert ds.class_names == ["malignant", "benign"] and len(ds) + len(tr) == 569
    assert torch.equal(breast_cancer("test").index, ds.index)  # deterministic split
    x = torch.cat([ds.x, tr.x])
    s = ds.schema
    for base in ("radius", "texture", "area", "concave_points", "fractal_dimension"):
        assert bool((x[:, s.index(f"worst_{base}")] >= x[:, s.index(f"mean_{base}")]).all())
        assert f"worst {base.replace('_', ' ')} >= mean" in [c.name for c in s.constraints]
    assert bool(s.verdicts(x).all().all())
    assert all(f.low == 0 for f in s.features)
    area = next(c for c in s.constraints if c.name == "mean area ~ pi radius^2")
    ratio = area(x.double())
    assert area.low <= float(ratio.min()) and float(ratio.max()) <= area.high
    assert area.high - area.low < 0.2  # a real tolerance, not a free pass
    assert s.feature("mean_radius").scale == pytest.approx(
        float(tr.x[:, 0].double().std(unbiased=False)), rel=1e-6
    )
    assert math.isclose(
        TabularThreat(s, eps=0.5).unit(x)[0].item(), s.feature("mean_radius").scale, rel_tol=1e-6
    )


def test_a_relation_that_is_infinite_is_a_violation():
    schema, x = _random_case(0, 2, 0, 0, 0, rows=3)
    bad = x.clone()
    bad[0, 1] = 0.0  # c0 / c1 = inf
    ok = schema.verdicts(bad).ok
    assert not bool(ok[0].all()) and bool(ok[1:].all())

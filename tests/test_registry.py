"""The one attack registry: every exported attack registered once, names and aliases resolve,
declared norms match what the attacks accept, presets and ``advex list`` read the registry."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from click.testing import CliRunner

import advex.attacks as A
from advex.attacks import registry
from advex.attacks.base import Attack
from advex.cli import main
from advex.evaluate.presets import PRESETS, Stage, get_preset
from advex.threats import ThreatModel

NORM_EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}
# the cheapest settings each attack takes (unknown keys are dropped per attack)
FAST = {
    "steps": 2,
    "n_queries": 10,
    "max_iterations": 3,
    "max_iter": 3,
    "binary_search_steps": 1,
    "search_steps": 1,
    "max_epochs": 1,
    "epochs": 1,  # AdvGAN: fitted (below) before use
    "inner_steps": 1,
    "candidates": 2,
    "n_target_classes": 2,
}


def _exported_attacks() -> list[type]:
    out = []
    for export in A.__all__:
        obj = getattr(A, export)
        if isinstance(obj, type) and issubclass(obj, Attack) and obj is not Attack:
            if getattr(obj, "_attack", None) is not Attack._attack:  # not a base class
                out.append(obj)
    return out


def test_every_exported_attack_is_registered_exactly_once():
    classes = list(registry.available_attacks().values())
    exported = _exported_attacks()
    assert exported, "advex.attacks exports no attack"
    for cls in exported:
        assert classes.count(cls) == 1, cls
    assert set(classes) == set(exported)
    names = list(registry.available_attacks())
    assert len(set(names)) == len(names)


def test_names_aliases_and_class_names_resolve():
    seen: dict[str, type] = {}
    for name, cls in registry.available_attacks().items():
        for alias in (name, cls.__name__, *cls.aliases):
            for spelling in (alias, alias.upper(), alias.replace("-", "_")):
                assert registry.find_attack(spelling) is cls, (spelling, cls)
            key = registry.attack_key(alias)
            assert seen.setdefault(key, cls) is cls, f"{alias!r} names two attacks"
        assert isinstance(cls.aliases, tuple) and isinstance(cls.norms, tuple)
        assert cls.norms and set(cls.norms) <= {"linf", "l2", "l1", "patch"}  # patch: physical
        assert isinstance(cls.black_box, bool)
    # every name that worked before the registry still works
    for old in ("fgsm", "pgd", "bim", "mifgsm", "apgd", "square", "universal", "cw", "ead"):
        registry.find_attack(old)
    for old in ("lbfgs", "l-bfgs", "deepfool", "fab", "fab-t", "fabt", "jsma"):
        registry.find_attack(old)
    assert registry.find_attack("universalperturbation") is A.UniversalPerturbation
    assert registry.find_attack(A.PGD) is A.PGD


def test_unknown_name_lists_names_and_a_close_match():
    with pytest.raises(
        ValueError, match=r"unknown attack 'pdg' \(did you mean 'pgd'\?\); available"
    ) as info:
        registry.find_attack("pdg")
    for name in registry.available_attacks():
        assert name in str(info.value)
    with pytest.raises(
        ValueError, match="unknown attack 'zzzzzz'; available attacks: advgan, apgd"
    ):
        registry.find_attack("zzzzzz")
    runner = CliRunner()
    r = runner.invoke(main, ["attack", "--attack", "squre", "--eps", "0.1", "--n", "2"])
    assert r.exit_code == 2 and "did you mean 'square'" in r.output


def _build(cls, norm):
    init = registry.init_params(cls)
    kw = {k: v for k, v in FAST.items() if k in init}
    if "norm" in init:
        kw["norm"] = norm
    fixed = "eps" in init and not cls.minimum_norm
    if cls is A.UniversalPerturbation:
        kw["eps"] = None  # its eps has a default; the threat brings the budget
    if cls is A.CW and norm == "linf":
        kw.pop("binary_search_steps", None)  # an L2-only parameter
    if cls is A.TransferAttack:  # a transfer attack needs a surrogate to attack
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kw["surrogates"] = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    threat = ThreatModel(norm=norm, eps=NORM_EPS[norm] if fixed else None)
    return cls(threat=threat, **kw)


@pytest.mark.parametrize(
    "cls",
    [c for c in _exported_attacks() if c.norms != ("patch",)],  # physical: tests/test_physical*
    ids=lambda c: c.__name__,
)
def test_declared_norms_match_behaviour(cls, tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = tiny_model(x).argmax(1)
    target = (y + 1) % 10 if cls.targeted_only else None
    for norm in ("linf", "l2", "l1"):
        if norm in cls.norms:
            atk = _build(cls, norm)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if hasattr(atk, "fit") and "data" in inspect.signature(atk.fit).parameters:
                    atk.fit(tiny_model, (x, y))
                r = atk(tiny_model, x, y, target=target)
            assert r.threat.norm == norm
        else:
            with pytest.raises(ValueError, match=norm):
                _build(cls, norm)


def test_build_attack_and_parse_params():
    pgd = registry.build_attack("PGD", eps=0.3, norm="l2", seed=3, params=["steps=7"])
    assert isinstance(pgd, A.PGD) and pgd.steps == 7 and pgd.threat.norm == "l2"
    assert registry.parse_params("bim", ["random-start=no"]) == {"random_start": False}
    with pytest.raises(ValueError, match="fixed-budget"):
        registry.build_attack("pgd")
    with pytest.raises(ValueError, match="drop eps"):
        registry.build_attack("cw", eps=0.5)
    with pytest.raises(ValueError, match="Square supports"):
        registry.build_attack("square", eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="valid parameters"):
        registry.parse_params("pgd", ["stepz=1"])
    assert registry.supported_norms("square") == ("linf", "l2")
    assert registry.is_black_box("square") and not registry.is_black_box(A.PGD(eps=0.1))
    assert not registry.is_black_box(lambda m, x, y: x)


def test_register_an_outside_attack(monkeypatch):
    monkeypatch.setattr(registry, "_EXTRA", [])

    @registry.register
    class Nudge(Attack):
        name = "nudge"
        aliases = ("tiny-step",)
        norms = ("linf",)

        def _attack(self, caller, x, goal, done, clean_logits):
            return x

    assert registry.find_attack("tiny_step") is Nudge
    assert "nudge" in registry.available_attacks()
    with pytest.raises(ValueError, match="taken by PGD"):

        @registry.register
        class Other(Attack):
            name = "pgd"

            def _attack(self, caller, x, goal, done, clean_logits):
                return x


def test_presets_use_registered_attacks_and_their_declarations():
    for preset in PRESETS.values():
        for stage in preset.stages:
            cls = registry.find_attack(stage.attack)
            assert stage.black_box == cls.black_box and stage.norms == cls.norms
    with pytest.raises(ValueError, match="did you mean 'pgd'"):
        Stage("x", "pdg")
    custom = get_preset({"sq": A.Square(eps=0.1), "pgd": A.PGD(eps=0.1)})
    assert [s.black_box for s in custom.stages] == [True, False]


def test_advex_list_shows_every_registered_attack():
    text = CliRunner().invoke(main, ["list"]).output
    lines = text.splitlines()
    for name, cls in registry.available_attacks().items():
        head = next(ln for ln in lines if ln.split()[:1] == [name])
        assert "norms: " + ", ".join(cls.norms) in head
        for alias in cls.aliases:
            assert alias in head
        assert ("black-box" in head) == cls.black_box
        minimum_norm = registry.declaration(cls, "minimum_norm")
        assert ("minimum-norm" in head) == (minimum_norm is not False)
        assert ("without eps" in head) == (minimum_norm is None)  # FAB: eps given or not
        assert ("targeted only" in head) == cls.targeted_only

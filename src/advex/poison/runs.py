"""The two workflows behind ``advex poison`` and ``advex scan``, as library functions.

:func:`poison_run` poisons a training set, trains the victim and the clean reference with the
same recipe, measures them and writes ``DIR/``: ``model.safetensors`` + ``card.json`` (the
poisoned victim, loadable with ``advex.zoo.load(DIR)``), ``reference/`` (the clean model),
``poison.json`` + ``poison.safetensors`` (the attack and the poisoned rows, so that a scan can
rebuild the exact poisoned training set), ``results.json``, figures and ``report.html``.

:func:`scan_run` runs one detector on such a directory (or on any saved model, without
ground truth), optionally repairs, and writes ``results.json``, figures and ``report.html``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from advex import zoo
from advex._io import atomic_write, write_json
from advex.data import ArrayDataset
from advex.report import metadata

from . import defenses as D
from . import figures as FG
from .attacks import (
    BadNets,
    Blend,
    CleanLabel,
    FeatureCollision,
    PoisonAttack,
    Trigger,
    check_dataset,
)
from .measure import (
    VictimRecipe,
    accuracy,
    attack_success_rate,
    default_recipe,
    measure,
    predict,
)

__all__ = [
    "ATTACKS",
    "DETECTORS",
    "build_poison_attack",
    "attack_from_description",
    "poison_run",
    "scan_run",
    "load_poisoned_training_set",
    "training_activations",
]

ATTACKS = ("badnets", "blend", "clean-label", "feature-collision")
DETECTORS = ("spectral", "activation-clustering", "strip", "neural-cleanse")
POISON_FILE = "poison.safetensors"
POISON_META = "poison.json"
ACTIVATIONS_FILE = "activations.safetensors"


def build_poison_attack(
    name: str,
    rate: float,
    target: int,
    *,
    seed: int = 0,
    trigger: dict | None = None,
    mode: str = "all-to-one",
    opacity: float = 0.2,
    eps: float = 0.3,
    steps: int = 20,
    amplitude: float = 1.0,
    target_input: torch.Tensor | None = None,
) -> PoisonAttack:
    """An attack of :data:`ATTACKS` by name (what the CLI's ``--attack`` takes)."""
    trig = Trigger(**trigger) if trigger else None
    if name == "badnets":
        return BadNets(rate, target, trigger=trig, mode=mode, seed=seed)
    if name == "blend":
        return Blend(rate, target, opacity=opacity, seed=seed)
    if name == "clean-label":
        return CleanLabel(
            rate, target, eps=eps, steps=steps, trigger=trig, amplitude=amplitude, seed=seed
        )
    if name == "feature-collision":
        return FeatureCollision(rate, target, target_input=target_input, seed=seed)
    raise ValueError(f"unknown poisoning attack {name!r}; expected one of {ATTACKS}")


def attack_from_description(desc: dict, target_input: torch.Tensor | None = None):
    """Rebuild an attack from its :meth:`PoisonAttack.describe` dictionary."""
    name = desc.get("attack")
    trig = desc.get("trigger")
    if trig and isinstance(trig.get("position"), list):
        trig = {**trig, "position": tuple(trig["position"])}
    return build_poison_attack(
        name,
        desc["rate"],
        desc["target"],
        seed=desc.get("seed", 0),
        trigger=trig,
        mode=desc.get("mode", "all-to-one"),
        opacity=desc.get("opacity", 0.2),
        eps=desc.get("eps", 0.3),
        steps=desc.get("steps", 20),
        amplitude=desc.get("amplitude", 1.0),
        target_input=target_input,
    )


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _card(model, train: ArrayDataset, test: ArrayDataset, acc: float, extra: dict) -> dict:
    return {
        "name": extra.get("name", "poisoned-victim"),
        "accuracy": acc,
        "accuracy_split": test.name,
        "n_train": len(train),
        "n_test": len(test),
        "input_shape": list(train.x.shape[1:]),
        "bounds": list(train.bounds),
        "num_classes": train.num_classes,
        "class_names": train.class_names,
        **extra,
    }


def poison_run(
    attack: PoisonAttack,
    train: ArrayDataset,
    test: ArrayDataset,
    out: str | os.PathLike,
    *,
    recipe: VictimRecipe | None = None,
    data_spec: str | None = None,
    command: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Poison, train, measure and write everything to ``out``; returns the results dict.
    ``recipe`` defaults to :func:`advex.poison.measure.default_recipe` of ``train``."""
    recipe = recipe or default_recipe(train)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    m = measure(attack, train, test, recipe=recipe, progress=progress)
    arch_kwargs = m.recipe["arch_kwargs"]
    common = {"recipe": m.recipe, "data": data_spec, "poison": m.attack}
    zoo.save(
        m.model,
        out,
        _card(m.model, train, test, m.clean_accuracy, {"name": "poisoned-victim", **common}),
        recipe.arch,
        arch_kwargs,
    )
    zoo.save(
        m.reference_model,
        out / "reference",
        _card(
            m.reference_model,
            train,
            test,
            m.clean_accuracy_reference,
            {"name": "clean-reference", **common},
        ),
        recipe.arch,
        arch_kwargs,
    )
    # the poisoned rows, so that `advex scan` rebuilds the exact poisoned training set
    from safetensors.torch import save_file

    idx = m.poisoned.indices
    tensors = {
        "indices": idx.clone(),
        "x": m.poisoned.dataset.x[idx].contiguous(),
        "y": m.poisoned.dataset.y[idx].contiguous(),
    }
    if isinstance(attack, FeatureCollision):
        tensors["target_input"] = attack.target_input.contiguous()
    atomic_write(out / POISON_FILE, lambda tmp: save_file(tensors, tmp))
    write_json(
        out / POISON_META,
        {"attack": m.attack, "recipe": m.recipe, "data": data_spec, "n_train": len(train)},
    )
    results = {
        "command": "poison",
        **m.to_dict(),
        "data": data_spec,
        "wall_time_s": time.perf_counter() - t0,
    }
    figs = {}
    lo_hi = train.bounds
    x0 = test.x[(test.y != attack.target).nonzero().squeeze(1)[0]]
    if not isinstance(attack, FeatureCollision):
        figs["trigger"] = FG.save_figure(FG.trigger_figure(attack, x0, lo_hi), out / "trigger.png")
        sel = (test.y != attack.target).nonzero().squeeze(1)[:8]
        figs["clean (top) and triggered (bottom) test images, poisoned model"] = FG.save_figure(
            FG.examples_figure(attack, m.model, test.x[sel], test.y[sel], test.class_names, lo_hi),
            out / "triggered_examples.png",
        )
    pidx = m.poisoned.indices[:8]
    ex_fig = FG.examples_figure(
        _Identity(),
        m.model,
        m.poisoned.dataset.x[pidx],
        m.poisoned.dataset.y[pidx],
        train.class_names,
        lo_hi,
    )
    figs["poisoned training samples (with the labels they were trained with)"] = FG.save_figure(
        ex_fig, out / "poisoned_samples.png"
    )
    results["figures"] = [p.name for p in figs.values()]
    write_json(out / "results.json", results)
    FG.save_report(
        out / "report.html",
        f"advex poison: {m.attack['attack']} at {100 * attack.rate:g}% on {train.name}",
        cards=[
            ("attack success", _pct(m.attack_success_rate), "triggered non-target test inputs"),
            ("clean accuracy", _pct(m.clean_accuracy), "poisoned model"),
            ("clean reference", _pct(m.clean_accuracy_reference), "same recipe, clean data"),
            (
                "drop",
                f"{100 * m.accuracy_drop:.2f} pt",
                f"control ASR {_pct(m.attack_success_rate_reference)}",
            ),
            ("poisoned", str(m.n_poisoned), f"of {m.n_train} training samples"),
        ],
        tables={
            "Attack": {k: v for k, v in m.attack.items()},
            "Victim recipe": {k: v for k, v in m.recipe.items()},
        },
        figures=figs,
        meta=metadata(seed=attack.seed, command=command),
    )
    return results


class _Identity(PoisonAttack):
    """Shows images as they are (the 'triggered' row of a poisoned-samples figure)."""

    def __init__(self):
        self.rate, self.target, self.seed = 0.5, 0, 0

    def poison(self, x, y, data, model):  # pragma: no cover - never called
        return x, y

    def apply_trigger(self, x, bounds=(0.0, 1.0)):
        return x.clone()


def load_poisoned_training_set(model_dir: str | os.PathLike, train: ArrayDataset):
    """``(poisoned training set, poisoned indices, attack)`` rebuilt from a :func:`poison_run`
    directory and the clean training split it was made from; ``(train, None, None)`` when
    the directory holds no poisoning record."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not (d / POISON_FILE).is_file() or not (d / POISON_META).is_file():
        return train, None, None
    meta = json.loads((d / POISON_META).read_text(encoding="utf-8"))
    t = load_file(str(d / POISON_FILE))
    idx, px, py = t["indices"].long(), t["x"], t["y"].long()
    if meta.get("n_train") != len(train):
        raise ValueError(
            f"{d} was poisoned on a training set of {meta.get('n_train')} samples; --data "
            f"gives {len(train)}: pass the same dataset"
        )
    if tuple(px.shape[1:]) != tuple(train.x.shape[1:]):
        raise ValueError(f"{d}: poisoned images {tuple(px.shape[1:])} do not match the data")
    x, y = train.x.clone(), train.y.clone()
    x[idx], y[idx] = px, py
    poisoned = ArrayDataset(
        x,
        y,
        name=f"{train.name}-poisoned",
        num_classes=train.num_classes,
        class_names=train.class_names,
        bounds=train.bounds,
    )
    attack = attack_from_description(meta["attack"], target_input=t.get("target_input"))
    return poisoned, idx, attack


def _fingerprint(model, data: ArrayDataset) -> str:
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for t in data.tensors():
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def training_activations(model_dir: str | os.PathLike, model, data: ArrayDataset) -> torch.Tensor:
    """The penultimate activations ``(N, D)`` of ``model`` on the training set ``data``
    (:func:`advex.poison.defenses.activations`), cached in ``model_dir/activations.safetensors``
    under a fingerprint of the weights and the data: spectral signatures and activation
    clustering on the same model share one pass over the training set. A cache that does not
    match (another model or data) is recomputed and replaced; a directory that cannot be
    written to just goes without the cache."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(model_dir) / ACTIVATIONS_FILE
    key = _fingerprint(model, data)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") == key:
                    reps = f.get_tensor("activations")
                    if reps.dim() == 2 and len(reps) == len(data):
                        return reps
        except Exception:  # noqa: BLE001 - a broken cache is recomputed, never trusted
            pass
    reps = D.activations(model, data.x)
    try:
        atomic_write(
            path,
            lambda tmp: save_file(
                {"activations": reps.contiguous()}, tmp, metadata={"fingerprint": key}
            ),
        )
    except OSError:
        pass
    return reps


def _recipe_of(card: dict) -> tuple[VictimRecipe, dict]:
    r = dict(card.get("recipe") or {})
    kw = r.pop("arch_kwargs", card.get("arch_kwargs", {}))
    fields = VictimRecipe.__dataclass_fields__
    # a card written before a field existed was trained as that field's old default
    r.setdefault("channels_last", False)
    recipe = VictimRecipe(**{k: v for k, v in r.items() if k in fields})
    return recipe, kw


def scan_run(
    model_dir: str | os.PathLike,
    train: ArrayDataset,
    test: ArrayDataset,
    detector: str,
    out: str | os.PathLike,
    *,
    repair: bool = False,
    seed: int = 0,
    n_clean: int = 1000,
    nc_steps: int = 300,
    strip_overlays: int = 100,
    frr: float = 0.01,
    expected_rate: float | None = None,
    command: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``detector`` (one of :data:`DETECTORS`) on the model in ``model_dir`` and write
    ``results.json`` (``recall``, ``precision``, ``false_positive_rate``, and with ``repair``
    the new ``clean_accuracy`` and ``attack_success_rate``), figures and ``report.html``.

    The defender holds a seeded half of ``test``: STRIP's overlays and calibration and Neural
    Cleanse's reversal use up to ``n_clean`` of it, unlearning all of it (Wang et al. fine-tune
    on 10 % of the training data); accuracies and attack success are measured on the other
    half, before and after the repair. ``expected_rate``: spectral signatures at the paper's
    operating point (see :func:`advex.poison.defenses.spectral_signatures`)."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; expected one of {DETECTORS}")
    check_dataset(train, "training data")
    check_dataset(test, "test data")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = zoo.load(model_dir)
    card = model.card
    recipe, arch_kwargs = _recipe_of(card)
    poisoned, idx, attack = load_poisoned_training_set(model_dir, train)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(test), generator=g)
    half = len(test) // 2
    clean = test.subset(perm[: min(half, n_clean)])
    defender = test.subset(perm[:half])
    evalset = test.subset(perm[half:])
    res: dict[str, Any] = {
        "command": "scan",
        "detector": detector,
        "model": str(model_dir),
        "poison": card.get("poison"),
        "n_train": len(train),
        "n_defender_clean": len(clean),
        "n_eval": len(evalset),
        "clean_accuracy_before": accuracy(model, evalset),
        "attack_success_rate_before": attack_success_rate(model, attack, evalset)
        if attack is not None
        else None,
    }
    figs: dict[str, Path] = {}
    if detector in ("spectral", "activation-clustering"):
        fn = D.spectral_signatures if detector == "spectral" else D.activation_clustering
        kw = {"expected_rate": expected_rate} if detector == "spectral" else {}
        reps = training_activations(model_dir, model, poisoned)
        det = fn(model, poisoned, poisoned_indices=idx, reps=reps, **kw)
        res.update(det.to_dict())
        if det.metrics is None:
            res.update({"recall": None, "precision": None, "false_positive_rate": None})
        truth = torch.zeros(len(poisoned), dtype=torch.bool)
        if idx is not None:
            truth[idx] = True
        figs[f"{detector} scores (poisoned in red)"] = FG.save_figure(
            FG.histogram_figure(
                det.scores,
                truth if idx is not None else None,
                title=f"{detector}: score per training sample",
                xlabel="robust z-score" if detector == "spectral" else "cluster score",
            ),
            out / "scores.png",
        )
        if repair:
            if attack is None:
                raise ValueError("--repair needs a model directory written by `advex poison`")
            fr = D.filter_and_retrain(
                poisoned,
                det.flagged,
                evalset,
                attack,
                recipe=recipe,
                arch_kwargs=arch_kwargs,
                progress=progress,
            )
            res.update(
                {
                    "repair": "filter-and-retrain",
                    "n_removed": fr["n_removed"],
                    "clean_accuracy": fr["clean_accuracy"],
                    "attack_success_rate": fr["attack_success_rate"],
                }
            )
            _save_repaired(fr["model"], out, card, arch_kwargs, fr["clean_accuracy"])
    elif detector == "strip":
        if attack is None:
            raise ValueError(
                "STRIP is scored on triggered inputs: pass a model directory written by "
                "`advex poison` (it records the trigger)"
            )
        s = D.strip_evaluate(
            model, attack, test, frr=frr, n_overlays=strip_overlays, n=n_clean, seed=seed
        )
        det_rate = 1 - s.miss_rate
        tp = det_rate * s.n_triggered
        fp = s.false_rejection_rate * s.n_clean
        res.update(s.to_dict())
        res.update(
            {
                "recall": det_rate,
                "precision": tp / (tp + fp) if tp + fp else None,
                "false_positive_rate": s.false_rejection_rate,
            }
        )
        ent = torch.cat([s.entropy_clean, s.entropy_triggered])
        trig = torch.cat(
            [torch.zeros(len(s.entropy_clean)), torch.ones(len(s.entropy_triggered))]
        ).bool()
        figs["STRIP entropy (triggered in red)"] = FG.save_figure(
            FG.histogram_figure(
                ent,
                trig,
                title="STRIP: mean entropy under superimposition",
                xlabel="entropy (nats)",
                threshold=s.threshold,
                labels=("clean", "triggered"),
            ),
            out / "scores.png",
        )
        if repair:
            # the repair of an input filter: reject what it flags
            x, y = evalset.tensors()
            strip = D.STRIP(model, clean, n_overlays=strip_overlays, seed=seed)
            strip.threshold = s.threshold
            pred = predict(model, x)
            accepted = ~strip.detect(x)
            goal = attack.target_labels(y, test.num_classes)
            keep = goal != y
            xt = attack.apply_trigger(x[keep], test.bounds)
            acc_t = ~strip.detect(xt)
            pt = predict(model, xt)
            res.update(
                {
                    "repair": "reject-flagged-inputs",
                    "clean_accuracy": float(((pred == y) & accepted).float().mean()),
                    "attack_success_rate": float(((pt == goal[keep]) & acc_t).float().mean()),
                }
            )
    else:  # neural-cleanse
        nc = D.neural_cleanse(model, clean, steps=nc_steps, seed=seed)
        res.update(nc.to_dict())
        k = test.num_classes
        truth = {attack.target} if attack is not None and not _all_to_all(attack) else set()
        fl = set(nc.flagged_classes)
        if attack is not None:
            res["recall"] = len(fl & truth) / len(truth) if truth else None
            res["precision"] = len(fl & truth) / len(fl) if fl else None
            res["false_positive_rate"] = len(fl - truth) / (k - len(truth))
        else:
            res.update({"recall": None, "precision": None, "false_positive_rate": None})
        figs["anomaly index per class"] = FG.save_figure(
            FG.anomaly_figure(
                nc.anomaly_index, nc.l1_norms, nc.params["classes"], nc.threshold, test.class_names
            ),
            out / "anomaly_index.png",
        )
        t = nc.suspected_target
        if t is not None:
            figs[f"reversed trigger of class {t} (mask × pattern)"] = FG.save_figure(
                FG.trigger_figure(_Reversed(nc.masks[t], nc.patterns[t]), clean.x[0], test.bounds),
                out / "reversed_trigger.png",
            )
        if repair:
            if t is None:
                res.update(
                    {
                        "repair": "none (no class flagged)",
                        "clean_accuracy": res["clean_accuracy_before"],
                        "attack_success_rate": res["attack_success_rate_before"],
                    }
                )
            else:
                rep = D.unlearn(model, defender, nc.masks[t], nc.patterns[t], seed=seed)
                acc = accuracy(rep, evalset)
                res.update(
                    {
                        "repair": "unlearning",
                        "clean_accuracy": acc,
                        "attack_success_rate": attack_success_rate(rep, attack, evalset)
                        if attack is not None
                        else None,
                    }
                )
                _save_repaired(rep, out, card, arch_kwargs, acc)
    res["wall_time_s"] = time.perf_counter() - t0
    res["figures"] = [p.name for p in figs.values()]
    write_json(out / "results.json", res)
    cards = [
        ("recall", _pct(res.get("recall")), "poisoned found"),
        ("precision", _pct(res.get("precision")), "flagged that are poisoned"),
        ("false positives", _pct(res.get("false_positive_rate")), "clean flagged"),
    ]
    if repair:
        cards += [
            (
                "clean accuracy",
                _pct(res.get("clean_accuracy")),
                f"before {_pct(res['clean_accuracy_before'])}",
            ),
            (
                "attack success",
                _pct(res.get("attack_success_rate")),
                f"before {_pct(res['attack_success_rate_before'])}",
            ),
        ]
    table = {k: v for k, v in res.items() if not isinstance(v, (list, dict)) and k != "figures"}
    FG.save_report(
        out / "report.html",
        f"advex scan: {detector} on {model_dir}",
        cards=cards,
        tables={"Results": table},
        figures=figs,
        meta=metadata(seed=seed, command=command),
    )
    return res


def _all_to_all(attack) -> bool:
    return getattr(attack, "mode", "all-to-one") == "all-to-all"


class _Reversed(PoisonAttack):
    """A reversed Neural Cleanse trigger shown as an attack trigger in figures."""

    def __init__(self, mask, pattern):
        self.rate, self.target, self.seed = 0.5, 0, 0
        self.mask, self.pattern = mask, pattern

    def poison(self, x, y, data, model):  # pragma: no cover - never called
        return x, y

    def apply_trigger(self, x, bounds=(0.0, 1.0)):
        return (1 - self.mask) * x + self.mask * self.pattern


def _save_repaired(model, out: Path, card: dict, arch_kwargs: dict, acc: float) -> None:
    new = {k: v for k, v in card.items() if k not in ("format", "arch", "arch_kwargs")}
    new.update({"name": "repaired", "accuracy": acc, "accuracy_split": "scan evaluation half"})
    zoo.save(model, out / "repaired", new, card["arch"], arch_kwargs)

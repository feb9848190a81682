"""Text foundation: the SMS spam data, the edit budget, the text model adapters, the zoo text
models."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advex.data import DatasetError, TextDataset, load, sms_spam
from advex.data.text import read_labelled_tsv
from advex.models import ModelLoadError
from advex.models.text import (
    CallableTextClassifier,
    CharTokenizer,
    SklearnTextClassifier,
    WordTokenizer,
    as_text_classifier,
    load_skops,
    load_tokenizer,
)
from advex.threats.text import EditBudget, char_edits, words_changed

# -- data -------------------------------------------------------------------------------------


def test_sms_spam_split_is_stratified_deterministic_and_disjoint(sms_root):
    train, test = sms_spam(sms_root, "train"), sms_spam(sms_root, "test")
    full = sms_spam(sms_root, "all")
    assert len(train) + len(test) == len(full) == len(set(full.texts))  # deduplicated
    assert not set(train.texts) & set(test.texts)
    assert train.class_names == test.class_names == ("ham", "spam")
    share = [float((d.y == 1).float().mean()) for d in (train, test, full)]
    assert abs(share[0] - share[1]) < 0.01 and 0.1 < share[2] < 0.15
    assert sms_spam(sms_root, "test").texts == test.texts  # same seed, same split
    assert sms_spam(sms_root, "test", seed=1).texts != test.texts
    assert test.of_class("spam").y.eq(1).all()
    assert load(f"sms:{sms_root}", "test").texts == test.texts


def test_tsv_tolerates_bom_crlf_blank_lines_and_names_bad_lines(tmp_path):
    p = tmp_path / "sms.tsv"
    p.write_bytes(b"\xef\xbb\xbfham\thello there\r\n\r\nSPAM \tWIN \xc2\xa3100\tnow\r\n")
    texts, labels = read_labelled_tsv(p)
    assert texts == ["hello there", "WIN £100\tnow"] and labels == [0, 1]
    p.write_text("ham\tok\nthis line has no tab\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2.*no TAB"):
        read_labelled_tsv(p)
    p.write_text("ham\tok\neggs\twhat\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: label 'eggs' is not one of"):
        read_labelled_tsv(p)
    p.write_bytes(b"ham\tok\nspam\tcaf\xe9 prize\n")  # latin-1, not UTF-8
    with pytest.raises(DatasetError, match="line 2.*latin-1"):
        read_labelled_tsv(p)
    assert read_labelled_tsv(p, encoding="latin-1")[0][1] == "café prize"
    p.write_bytes(b"")
    with pytest.raises(DatasetError, match="no messages"):
        read_labelled_tsv(p)
    with pytest.raises(DatasetError, match="directory"):
        read_labelled_tsv(tmp_path)
    with pytest.raises(FileNotFoundError):
        sms_spam(tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        sms_spam(tmp_path, "validation")


def test_text_dataset_validates():
    with pytest.raises(TypeError, match="decode bytes"):
        TextDataset([b"hi"], [0], class_names=("ham", "spam"))
    with pytest.raises(ValueError, match="labels must lie in"):
        TextDataset(["hi"], [2], class_names=("ham", "spam"))
    with pytest.raises(ValueError, match="lengths differ"):
        TextDataset(["hi", "yo"], [0], class_names=("ham", "spam"))
    ds = TextDataset(["a", "b"], [0, 1], class_names=("ham", "spam"))
    with pytest.raises(ValueError, match="unknown class 'eggs'"):
        ds.of_class("eggs")


# -- the edit budget --------------------------------------------------------------------------


def test_edit_distances():
    assert char_edits("kitten", "sitting") == 3
    assert char_edits("free", "fere") == 1  # a swap of neighbours costs one
    assert char_edits("", "abc") == 3 and char_edits("same", "same") == 0
    assert char_edits("abcdef", "uvwxyz", limit=2) == 3  # bounded work, capped answer
    assert words_changed("win a free prize", "win a fre3 prize") == 1
    assert words_changed("win a free prize", "win free prize") == 1


def test_budget_contains_and_refuses_bad_limits():
    b = EditBudget(max_char_edits=2, max_word_fraction=0.5)
    ok = b.contains(["win a free prize", "win a free prize", "hi"], ["wn a fre prize", "x", "hi"])
    assert ok.tolist() == [True, False, True]
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="max_char_edits must be"):
            EditBudget(max_char_edits=bad)
    with pytest.raises(ValueError, match="max_word_fraction must be <= 1"):
        EditBudget(max_word_fraction=1.5)
    with pytest.raises(TypeError):
        EditBudget(max_words=True)
    with pytest.raises(ValueError, match="at least one limit"):
        EditBudget()
    with pytest.raises(ValueError, match="similarity= function"):
        EditBudget(min_similarity=0.8)
    sim = EditBudget(max_char_edits=5, min_similarity=0.5, similarity=lambda a, b: [0.9, 0.1])
    assert sim.contains(["ab", "cd"], ["ax", "cx"]).tolist() == [True, False]
    with pytest.raises(TypeError, match="decode"):
        b.contains([b"bytes"], ["x"])


def test_huge_message_distance_is_bounded():
    a = "free prize " * 9_091  # ~100,000 characters
    t0 = time.perf_counter()
    assert char_edits(a, a[:50_000] + "x" + a[50_001:]) == 1
    assert char_edits(a, a.upper(), limit=30) == 31
    assert time.perf_counter() - t0 < 5


# -- model adapters ---------------------------------------------------------------------------


def test_callable_adapter_scores_labels_and_errors():
    def by_name(texts):
        return ["spam" if "win" in t else "ham" for t in texts]

    clf = CallableTextClassifier(by_name, ("ham", "spam"))
    assert clf(["win now", "hello", ""]).argmax(1).tolist() == [1, 0, 0]
    assert clf.exposes == {"labels"} and clf.queries == 3
    assert clf([]).shape == (0, 2)
    probs = CallableTextClassifier(lambda t: np.tile([0.3, 0.7], (len(t), 1)), ("ham", "spam"))
    assert probs(["😀 emoji"]).shape == (1, 2) and probs.exposes == {"scores", "labels"}
    with pytest.raises(ValueError, match="not one of"):
        CallableTextClassifier(lambda t: ["eggs"] * len(t), ("ham", "spam"))(["x"])
    with pytest.raises(ValueError, match="non-finite"):
        CallableTextClassifier(lambda t: [[float("nan"), 0.0]] * len(t), ("ham", "spam"))(["x"])
    with pytest.raises(ValueError, match="shape"):
        CallableTextClassifier(lambda t: np.zeros((len(t), 3)), ("ham", "spam"))(["x"])
    with pytest.raises(TypeError, match="single str"):
        clf("one string")
    with pytest.raises(TypeError, match="decode"):
        clf([b"\xff\xfe"])
    with pytest.raises(ValueError, match="class_names"):
        as_text_classifier(lambda t: t)


def test_sklearn_adapter_orders_columns_and_skops_refuses_untrusted(tmp_path):
    skio = pytest.importorskip("skops.io")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["win cash now", "free prize win", "see you at 6", "call me later"] * 3
    labels = ["spam", "spam", "ham", "ham"] * 3
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)
    clf = SklearnTextClassifier(pipe, ("ham", "spam"))
    assert clf(["win free cash", "see you later"]).argmax(1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="do not match"):
        SklearnTextClassifier(pipe, ("ham", "eggs"))
    path = tmp_path / "m.skops"
    skio.dump(pipe, path)
    assert SklearnTextClassifier(load_skops(path), ("ham", "spam"))(["win"]).shape == (1, 2)
    from fractions import Fraction

    skio.dump({"model": pipe, "extra": Fraction(1, 3)}, tmp_path / "odd.skops")
    with pytest.raises(ModelLoadError, match=r"not trusted: \['fractions.Fraction'\]"):
        load_skops(tmp_path / "odd.skops")
    assert load_skops(tmp_path / "odd.skops", trusted=["fractions.Fraction"])["extra"] == Fraction(
        1, 3
    )
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError):
        load_skops(tmp_path / "junk.skops")


def test_tokenizers_round_trip(tmp_path):
    w = WordTokenizer.fit(["Win £100 now!", "win a prize"], min_count=1)
    assert w.tokens("WIN £100!") == ["win", "£", "100", "!"]
    assert load_tokenizer(w.save(tmp_path / "w.json")).vocab == w.vocab
    c = CharTokenizer.fit(["abcab"], min_count=1, max_length=4)
    assert c.encode(["abz", "abcabc"]).tolist() == [[2, 3, 1, 0], [2, 3, 4, 2]]
    (tmp_path / "bad.json").write_text('{"type": "pickle"}')
    with pytest.raises(ModelLoadError):
        load_tokenizer(tmp_path / "bad.json")


# -- zoo text models --------------------------------------------------------------------------


def test_sms_spam_cnn_meets_its_bar_and_is_padding_invariant(sms_spam_cnn, sms_root):
    test = sms_spam(sms_root, "test")
    pred = sms_spam_cnn(list(test.texts)).argmax(1)
    acc = float((pred == test.y).float().mean())
    recall = float((pred[test.y == 1] == 1).float().mean())
    assert acc >= 0.97 and recall >= 0.90, (acc, recall)
    assert abs(acc - sms_spam_cnn.card["accuracy"]) < 1e-6
    assert sms_spam_cnn.exposes == {"gradients", "scores", "labels"}
    texts = list(test.texts[:16])
    batched = sms_spam_cnn(texts)
    single = torch.cat([sms_spam_cnn([t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)
    odd = ["", "😀😀😀", "x" * 100_000, "\x00\ufffd"]
    assert sms_spam_cnn(odd).shape == (4, 2)


def test_spam_tfidf_is_a_skops_black_box(sms_root):
    pytest.importorskip("skops")
    from advex import zoo

    model = zoo.load("sms-spam-tfidf", data_root=sms_root, progress=False)
    assert model.exposes == {"scores", "labels"}
    assert model.card["accuracy"] >= 0.95
    assert model(["WINNER! claim your free prize, call now", "ok see you"]).argmax(1).tolist() == [
        1,
        0,
    ]


@settings(max_examples=300, deadline=None)
@given(
    a=st.text(alphabet="abcé ", max_size=14),
    b=st.text(alphabet="abcé ", max_size=14),
    limit=st.one_of(st.none(), st.integers(1, 6)),
)
def test_compiled_edit_distance_equals_the_python_one(a, b, limit):
    """The compiled OSA (rapidfuzz, [text] extra) and the pure-Python fallback give the same
    distance, capped the same way, on characters and on word lists."""
    from advex.threats import text as tt

    assert tt._osa(a, b, limit) == tt._osa_python(a, b, limit)
    wa, wb = a.split(), b.split()
    assert tt._osa(wa, wb, limit) == tt._osa_python(wa, wb, limit)


def test_edit_distance_without_rapidfuzz(monkeypatch):
    from advex.threats import text as tt

    monkeypatch.setattr(tt, "_RF_OSA", None)
    assert char_edits("kitten", "sitting") == 3 and char_edits("free", "fere") == 1
    assert char_edits("abcdef", "uvwxyz", limit=2) == 3
    # unbounded, the band must cover the longer string (it used to stop at the shorter one)
    assert char_edits(" a ", "a") == 2 and words_changed("free prize now call", "free") == 3

"""Spam that passes the filter: spam → ham on the SMS Spam Collection's test spam.

    OMP_NUM_THREADS=1 python benchmarks/text_attacks.py [--quick] [--data-root PATH]
        [--out benchmarks/results/2026-11-29-text-attacks.json]

Every test spam message the model classifies as spam is attacked toward ham (targeted), in one
run, against:

- ``sms-spam-cnn`` (word-level CNN, white box): DeepWordBug with ≤ 30 character edits (the
  issue's target: ≥ 90% success, median queries ≤ 50), HotFlip (word flips, ≤ 5 words; greedy
  and beam 3), and a baseline of 5 random word flips (the same budget as HotFlip);
- ``sms-spam-charcnn`` (character-level CNN, white box): DeepWordBug (≤ 30 edits) and HotFlip
  (character flips, ≤ 10 edits);
- ``sms-spam-tfidf`` (TF-IDF + logistic regression, black box): DeepWordBug (≤ 30 edits).

Per row: success rate (among spam the model gets right), median / mean character edits and
words changed of the successful adversarials, median queries per example, wall time.
``--quick``: the first 20 spam, ``sms-spam-cnn`` only (the smoke test).

Peers: TextAttack's DeepWordBug recipe is compared in benchmarks/textattack_compare.py (text
engineer B); this script measures advex alone.
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import time

import torch

from advex import zoo
from advex._io import write_json
from advex.attacks.text import DeepWordBug, HotFlip
from advex.data import sms_spam


def _row(name: str, model_name: str, res, wall: float) -> dict:
    s = res.summary()
    return {
        "model": model_name,
        "attack": name,
        "n": len(res),
        "success_rate": s["success_rate"],
        "char_edits_median": (s["char_edits"] or {}).get("median"),
        "char_edits_mean": (s["char_edits"] or {}).get("mean"),
        "words_changed_median": (s["words_changed"] or {}).get("median"),
        "word_fraction_mean": (s["word_fraction"] or {}).get("mean"),
        "queries_median": s["queries"]["median"],
        "queries_mean": s["queries"]["mean"],
        "gradients_total": s["gradients_total"],
        "time_s": round(wall, 2),
    }


def _random_word_flips(model, texts: list[str], k: int, seed: int = 0) -> float:
    """Share of ``texts`` sent to ham by replacing ``k`` random words with random vocabulary
    words (the budget of HotFlip with ``max_words=k``)."""
    rng = random.Random(seed)
    vocab = [w for w in model.tokenizer.vocab if w.isalnum()]
    out = []
    for t in texts:
        spans = [m.span() for m in re.finditer(r"[^\W_]+", t)]
        for a, b in sorted(rng.sample(spans, min(k, len(spans))), reverse=True):
            t = t[:a] + rng.choice(vocab) + t[b:]
        out.append(t)
    return float((model(out).argmax(1) == 0).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="20 spam, sms-spam-cnn only")
    ap.add_argument("--data-root", default=None, help="folder holding SMSSpamCollection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spam_all = list(sms_spam(args.data_root, "test").of_class("spam").texts)
    if args.quick:
        spam_all = spam_all[:20]
    plan = [
        (
            "sms-spam-cnn",
            [
                ("deepwordbug (<=30 chars)", DeepWordBug(max_char_edits=30)),
                ("hotflip (<=5 words)", HotFlip(max_char_edits=None, max_words=5)),
                (
                    "hotflip beam 3 (<=5 words)",
                    HotFlip(max_char_edits=None, max_words=5, beam_width=3),
                ),
            ],
        ),
    ]
    if not args.quick:
        plan += [
            (
                "sms-spam-charcnn",
                [
                    ("deepwordbug (<=30 chars)", DeepWordBug(max_char_edits=30)),
                    ("hotflip (<=10 chars)", HotFlip(max_char_edits=10, max_words=None)),
                ],
            ),
            ("sms-spam-tfidf", [("deepwordbug (<=30 chars)", DeepWordBug(max_char_edits=30))]),
        ]
    rows, models = [], {}
    for model_name, attacks in plan:
        t0 = time.perf_counter()
        model = zoo.load(model_name, data_root=args.data_root, progress=False)
        load_s = time.perf_counter() - t0
        texts = [t for t in spam_all if int(model([t]).argmax(1)) == 1]
        models[model_name] = {
            "test_accuracy": model.card.get("accuracy"),
            "spam_recall": model.card.get("spam_recall"),
            "spam_attacked": len(texts),
            "load_or_train_s": round(load_s, 2),
        }
        for name, atk in attacks:
            t = time.perf_counter()
            res = atk(model, texts, "spam", target="ham")
            rows.append(_row(name, model_name, res, time.perf_counter() - t))
        if model_name == "sms-spam-cnn":
            t = time.perf_counter()
            rate = _random_word_flips(model, texts, 5)
            rows.append(
                {
                    "model": model_name,
                    "attack": "random word flips (5 words)",
                    "n": len(texts),
                    "success_rate": rate,
                    "queries_median": 1,
                    "time_s": round(time.perf_counter() - t, 2),
                }
            )

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"spam -> ham on {len(spam_all)} test spam (those each model gets right are attacked)")
    head = (
        f"{'model':<17} {'attack':<28} {'n':>4} {'success':>8} {'chars':>6} {'words':>6} "
        f"{'queries':>8} {'time s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<17} {r['attack']:<28} {r['n']:>4} {r['success_rate']:>8.1%} "
            f"{fmt(r.get('char_edits_median'), '.0f'):>6} "
            f"{fmt(r.get('words_changed_median'), '.0f'):>6} "
            f"{fmt(r.get('queries_median'), '.0f'):>8} {r['time_s']:>7.1f}"
        )
    print("(chars, words: medians over successful adversarials; queries: median per example)")
    if args.out:
        write_json(
            args.out,
            {
                "benchmark": "text_attacks",
                "config": {
                    "quick": args.quick,
                    "threads": args.threads,
                    "n_spam": len(spam_all),
                    "target": "ham",
                },
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                },
                "models": models,
                "rows": rows,
            },
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

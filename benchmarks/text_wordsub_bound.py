"""How far can word substitutions go against the word CNN at 10 % of the words? TextFooler, and
an upper bound that any word-substitution attack within the same word budget obeys.

    OMP_NUM_THREADS=1 python benchmarks/text_wordsub_bound.py [--quick] [--data-root PATH]
        [--beam 16] [--out benchmarks/results/2026-11-30-text-wordsub-bound.json]

On every test spam of the SMS Spam Collection that ``sms-spam-cnn`` classifies as spam
(``--quick``: the first 8), target ham, in one run:

1. **The unconstrained attacker** (:class:`advex.attacks.text.wordsub.WordSubstitutionSearch`):
   any word may become any alphanumeric word of the CNN's vocabulary, an unknown word, or
   nothing; no synonym list, no similarity constraint; the same word budget as TextFooler
   (``floor(10 % of the whitespace-separated words)``, at least one). One word: exhaustive, so
   its success is exact. More words: a beam search (``--beam`` partial edits kept per step,
   each expanded by every option of every untouched word) — a lower bound on what the
   unconstrained attacker can do, hence an empirical upper bound on any synonym attack (a
   subset of its search space). HotFlip (gradient-ranked word flips, beam 4) at the same
   budget is run too and the union counted.
2. **TextFooler** (MiniLM cosine ≥ 0.8 to the original) at 10 %, 20 % and 30 % of the words:
   success, words changed, similarity, queries, CPU seconds; how many substitutes are unknown
   to the CNN (they act as deletions); the subset check (every TextFooler success at 10 % must
   be an unconstrained success too).

Times are CPU seconds of this process (``time.process_time``; one torch thread), which a busy
shared machine inflates less than wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from advex import zoo
from advex._io import write_json
from advex.attacks.text import HotFlip, TextFooler
from advex.attacks.text.textfooler import minilm_similarity
from advex.attacks.text.wordsub import WordSubstitutionSearch, split_word
from advex.data import sms_spam
from advex.threats.text import EditBudget, split_words

TEXTFOOLER = {"min_similarity": 0.8, "min_cosine": 0.5, "pos_filter": True}


def _cpu(fn):
    t = time.process_time()
    w = time.perf_counter()
    out = fn()
    return out, time.process_time() - t, time.perf_counter() - w


def _substitutions(tok, original: str, adversarial: str) -> list[tuple[str, str]]:
    """(old, new) word pairs of a same-length substitution (TextFooler never deletes)."""
    a, b = split_words(original), split_words(adversarial)
    if len(a) != len(b):
        return []
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def _kind(tok, word: str) -> str:
    """How the CNN reads a substitute: one known token, unknown (masked), or several tokens."""
    core = split_word(word)[1]
    ids = [int(v) for v in tok.encode([core])[0].tolist() if int(v) != tok.PAD]
    if len(ids) > 1:
        return "multi-token"
    return "unknown" if ids == [tok.UNK] else "known"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 8 caught spam (or --n), beam 4")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--beam", type=int, default=16, help="beam width for two or more words")
    ap.add_argument("--n", type=int, default=None, help="only the first N caught spam")
    ap.add_argument("--fractions", default="0.1,0.2,0.3", help="TextFooler word budgets")
    ap.add_argument("--out", default="benchmarks/results/2026-11-30-text-wordsub-bound.json")
    ap.add_argument(
        "--widen",
        type=int,
        default=None,
        metavar="B",
        help="instead of a run: search again with beam B the messages that --out's run did "
        "not flip (same data), and add the outcome to --out as 'widened'",
    )
    ap.add_argument("--widen-n", type=int, default=None, help="with --widen: the first N only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.widen is not None:
        widen(args)
        return
    beam = 4 if args.quick else args.beam
    if beam < 1:
        ap.error("--beam must be >= 1")
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        ap.error("--fractions must be numbers in (0, 1]")
    n = args.n if args.n is not None else (8 if args.quick else None)
    if n is not None and n < 1:
        ap.error("--n must be >= 1")

    model = zoo.load("sms-spam-cnn", data_root=args.data_root)
    tok = model.tokenizer
    spam = list(sms_spam(args.data_root, split="test").of_class("spam").texts)
    pred = model.predict(spam).tolist()
    caught = [t for t, p in zip(spam, pred, strict=True) if p == 1]
    if n is not None:
        caught = caught[:n]
    budget10 = EditBudget(max_word_fraction=0.1)
    words = [len(split_words(t)) for t in caught]
    limits = [budget10.word_limit(t) for t in caught]
    print(f"sms-spam-cnn: {len(spam)} test spam, {len(caught)} caught and attacked (target ham)")
    print(
        f"words per message: median {statistics.median(words)}, min {min(words)}, "
        f"max {max(words)}; word budget at 10 %: "
        + ", ".join(f"{k} word(s): {limits.count(k)}" for k in sorted(set(limits)))
    )

    # 1. the unconstrained attacker -------------------------------------------------------
    search = WordSubstitutionSearch(max_word_fraction=0.1, beam_width=beam)
    res_u, cpu_u, wall_u = _cpu(lambda: search(model, caught, "spam", target="ham"))
    ok_u = res_u.success.tolist()
    used = res_u.words_changed.tolist()
    k1 = [bool(s and w <= 1) for s, w in zip(ok_u, used, strict=True)]
    hot = HotFlip(max_words=None, max_word_fraction=0.1, beam_width=4)
    res_h, cpu_h, wall_h = _cpu(lambda: hot(model, caught, "spam", target="ham"))
    ok_h = res_h.success.tolist()
    union = [a or b for a, b in zip(ok_u, ok_h, strict=True)]
    for name, res in (("search", res_u), ("hotflip", res_h)):
        pairs = zip(res.original, res.adversarial, strict=True)
        assert all(budget10.allows(o, a) for o, a in pairs), name
    by_budget = {}
    for k in sorted(set(limits)):
        idx = [i for i, lim in enumerate(limits) if lim == k]
        by_budget[str(k)] = {
            "messages": len(idx),
            "words_median": statistics.median(words[i] for i in idx),
            "exact_one_word": sum(k1[i] for i in idx),
            "search": sum(ok_u[i] for i in idx),
            "hotflip": sum(ok_h[i] for i in idx),
            "union": sum(union[i] for i in idx),
        }
    m = len(caught)
    bound = {
        "budget": "floor(0.1 x whitespace words), at least 1",
        "beam_width": beam,
        "exact_one_word_success": sum(k1) / m,
        "search_success": sum(ok_u) / m,
        "hotflip_success": sum(ok_h) / m,
        "union_success": sum(union) / m,
        "by_budget": by_budget,
        "cpu_s": {"search": round(cpu_u, 1), "hotflip": round(cpu_h, 1)},
        "wall_s": {"search": round(wall_u, 1), "hotflip": round(wall_h, 1)},
        "queries_median": float(res_u.queries.float().median()),
    }
    print(f"\nunconstrained word substitution at 10 % of the words (beam {beam} past one word):")
    print(f"  {'budget':>7} {'msgs':>5} {'exact 1 word':>13} {'search':>7} {'+hotflip':>9}")
    for k, r in by_budget.items():
        print(
            f"  {k:>7} {r['messages']:>5} {r['exact_one_word']:>13} {r['search']:>7} "
            f"{r['union']:>9}"
        )
    print(
        f"  all     {m:>5} {sum(k1):>13} {sum(ok_u):>7} {sum(union):>9}   -> "
        f"{100 * sum(union) / m:.1f} % at most for any word substitution attack "
        f"(search {cpu_u:.0f} s CPU, HotFlip {cpu_h:.0f} s CPU)"
    )

    # 2. TextFooler at 10 / 20 / 30 % -----------------------------------------------------
    minilm_similarity(["warm up"], ["warm up"])  # load the encoder outside the timings
    rows = []
    per_tf = {}
    for f in fractions:
        tf = TextFooler(max_word_fraction=f, **TEXTFOOLER)
        _ = tf.source  # GloVe + WordNet loaded outside the timing
        res, cpu, wall = _cpu(lambda tf=tf: tf(model, caught, "spam", target="ham"))
        ok = res.success.tolist()
        per_tf[f] = ok
        b = EditBudget(max_word_fraction=f)
        assert all(b.allows(o, a) for o, a in zip(res.original, res.adversarial, strict=True))
        sims = [float(s) for s, o in zip(res.similarity.tolist(), ok, strict=True) if o]
        assert all(s >= 0.8 - 1e-6 for s in sims)
        kinds = {"known": 0, "unknown": 0, "multi-token": 0}
        succ_unknown = 0
        for i in (j for j, o in enumerate(ok) if o):
            subs = _substitutions(tok, res.original[i], res.adversarial[i])
            ks = [_kind(tok, new) for _, new in subs]
            for k in ks:
                kinds[k] += 1
            succ_unknown += "unknown" in ks
        s = res.summary()
        rows.append(
            {
                "max_word_fraction": f,
                "success": sum(ok),
                "n": m,
                "success_rate": sum(ok) / m,
                "words_changed_mean": (s["words_changed"] or {}).get("mean"),
                "similarity_median": statistics.median(sims) if sims else None,
                "queries_median": s["queries"]["median"],
                "cpu_s": round(cpu, 1),
                "wall_s": round(wall, 1),
                "substitutes_of_successes": kinds,
                "successes_using_an_unknown_word": succ_unknown,
            }
        )
    subset_violations = []
    if 0.1 in per_tf:
        subset_violations = [
            i for i, (a, b) in enumerate(zip(per_tf[0.1], union, strict=True)) if a and not b
        ]
    print(f"\nTextFooler ({TEXTFOOLER}), WordNet + GloVe candidates:")
    print(f"  {'words':>6} {'success':>12} {'words':>6} {'sim':>5} {'queries':>8} {'CPU s':>6}")
    for r in rows:
        print(
            f"  {100 * r['max_word_fraction']:>5.0f}% {r['success']:>4}/{m:<3} "
            f"{100 * r['success_rate']:>4.1f}% {r['words_changed_mean'] or 0:>6.2f} "
            f"{r['similarity_median'] or 0:>5.2f} {r['queries_median']:>8.0f} {r['cpu_s']:>6.1f}"
            f"  substitutes {r['substitutes_of_successes']}"
        )
    print(f"  subset check (TextFooler 10 % success but not unconstrained): {subset_violations}")

    doc = {
        "config": {
            "quick": args.quick,
            "model": "sms-spam-cnn",
            "data": "SMS Spam Collection test split (seed 0), spam caught by the model",
            "target": "ham",
            "textfooler": TEXTFOOLER,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "note": "shared 2-core machine; times are CPU seconds of this process",
        },
        "caught": m,
        "spam": len(spam),
        "words": words,
        "word_budget": limits,
        "bound": bound,
        "textfooler": rows,
        "subset_violations": subset_violations,
        "per_message": [
            {
                "words": words[i],
                "budget": limits[i],
                "exact_one_word": k1[i],
                "search": ok_u[i],
                "search_words": int(used[i]) if ok_u[i] else None,
                "hotflip": ok_h[i],
                "textfooler": {str(f): per_tf[f][i] for f in fractions},
                "adversarial": res_u.adversarial[i] if ok_u[i] else None,
            }
            for i in range(m)
        ],
    }
    write_json(args.out, doc)
    print(f"\nwrote {args.out}")


def widen(args) -> None:
    """Does a wider beam flip what the run's beam did not? (saturation of the search)"""
    import json
    from pathlib import Path

    if args.widen < 1:
        raise SystemExit("--widen must be >= 1")
    doc = json.loads(Path(args.out).read_text())
    model = zoo.load("sms-spam-cnn", data_root=args.data_root)
    spam = list(sms_spam(args.data_root, split="test").of_class("spam").texts)
    pred = model.predict(spam).tolist()
    caught = [t for t, p in zip(spam, pred, strict=True) if p == 1][: doc["caught"]]
    per = doc["per_message"]
    if len(per) != len(caught) or [len(split_words(t)) for t in caught] != doc["words"]:
        raise SystemExit(f"{args.out} was not written for these messages")
    # one-word budgets are searched exhaustively already: only the beam's failures
    todo = [i for i, r in enumerate(per) if r["budget"] >= 2 and not (r["search"] or r["hotflip"])]
    failures = len(todo)
    if args.widen_n is not None:
        todo = todo[: max(0, args.widen_n)]
    search = WordSubstitutionSearch(max_word_fraction=0.1, beam_width=args.widen)
    res, cpu, wall = _cpu(lambda: search(model, [caught[i] for i in todo], "spam", target="ham"))
    flipped = [i for i, ok in zip(todo, res.success.tolist(), strict=True) if ok]
    doc["widened"] = {
        "beam_width": args.widen,
        "failures_of_the_run": failures,
        "messages": len(todo),
        "budgets": {
            str(k): [per[i]["budget"] for i in todo].count(k)
            for k in sorted({per[i]["budget"] for i in todo})
        },
        "flipped": len(flipped),
        "flipped_indices": flipped,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
    }
    m = doc["caught"]
    ok = sum(r["search"] or r["hotflip"] for r in per) + len(flipped)
    doc["bound"]["union_success_widened"] = ok / m
    write_json(args.out, doc)
    print(
        f"beam {args.widen} on {len(todo)} of the {failures} messages (budget >= 2) that beam "
        f"{doc['bound']['beam_width']} did not flip: {len(flipped)} flipped ({cpu:.0f} s CPU); "
        f"unconstrained success {ok}/{m} = {100 * ok / m:.1f} %"
    )


if __name__ == "__main__":
    main()

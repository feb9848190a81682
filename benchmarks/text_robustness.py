"""Word substitutions against the SMS spam filters, robustness table, defenses, and TextAttack.

    python benchmarks/text_robustness.py            # all test spam (slow on a shared CPU)
    python benchmarks/text_robustness.py --quick    # 12 spam, a smoke run (CI)

1. TextFooler (10 % of words at most, MiniLM cosine >= 0.8) spam -> ham on the test spam of
   the SMS Spam Collection against ``sms-spam-cnn``: success, words changed, similarity,
   queries, wall time (target: >= 85 % in <= 5 CPU-minutes).
2. The same attack at 10 / 20 / 30 % of words (the budget curve).
3. Robustness table: ``advex.evaluate.text.evaluate_text`` with the black-box ensemble
   (TextFooler 10 %, then DeepWordBug 30 character edits on what is left) on ``sms-spam-tfidf``,
   ``sms-spam-cnn``, ``sms-spam-minilm``, and the defended CNNs: spelling correction in front
   (attacked through it) and adversarial training by augmentation (retrained on the training
   spam that DeepWordBug and TextFooler fooled).
4. TextAttack: its TextFooler / DeepWordBug recipes on the same model and spam, through
   ``benchmarks/textattack_compare.py`` (TextAttack in a throwaway venv, ``--textattack-venv``;
   the full side-by-side comparison with timings and ratios is that script's job).

Results: ``benchmarks/results/2026-11-29-text-robustness.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advex import zoo  # noqa: E402
from advex._io import write_json  # noqa: E402
from advex.attacks.text import TextFooler, build_text_attack  # noqa: E402
from advex.data.text import TextDataset, sms_spam  # noqa: E402
from advex.defenses.text import SpellingCorrection, adversarial_augmentation  # noqa: E402
from advex.evaluate.text import evaluate_text  # noqa: E402


def cpu_time() -> float:
    t = os.times()
    return t.user + t.system


def run_textfooler(model, texts, frac: float) -> dict:
    att = TextFooler(max_word_fraction=frac, min_similarity=0.8)
    att.source  # noqa: B018 - load GloVe/WordNet outside the timing
    w0, c0 = time.perf_counter(), cpu_time()
    r = att(model, texts, "spam", target="ham")
    wall, cpu = time.perf_counter() - w0, cpu_time() - c0
    s = r.summary()
    attacked = r.clean_correct
    return {
        "max_word_fraction": frac,
        "min_similarity": 0.8,
        "n": len(texts),
        "clean_detected": int(attacked.sum()),
        "success_rate": s["success_rate"],
        "words_changed": s["words_changed"],
        "word_fraction": s["word_fraction"],
        "similarity": s["similarity"],
        "queries_median": s["queries"]["median"],
        "queries_mean": s["queries"]["mean"],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "examples": [
            {"original": o, "adversarial": a}
            for o, a, ok in zip(r.original, r.adversarial, r.success.tolist(), strict=True)
            if ok and o != a
        ][:5],
    }


def ensemble():
    return [
        TextFooler(max_word_fraction=0.1, min_similarity=0.8),
        build_text_attack("deepwordbug", params=["max_char_edits=30"]),
    ]


def evaluate_row(name, model, texts, out_dir: Path) -> dict:
    w0, c0 = time.perf_counter(), cpu_time()
    ev = evaluate_text(model, texts, "spam", ensemble(), target="ham", model_name=name)
    ev.save(out_dir / name)
    s = ev.summary()
    return {
        "model": name,
        "n": s["n"],
        "spam_detected": s["clean_accuracy"],
        "robust_accuracy": s["robust_accuracy"],
        "robust_accuracy_ci": s["robust_accuracy_ci"],
        "attacks": {
            k: {kk: v[kk] for kk in ("attacked", "successes", "success_rate", "mean_queries")}
            for k, v in s["attacks"].items()
        },
        "wall_s": round(time.perf_counter() - w0, 1),
        "cpu_s": round(cpu_time() - c0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 test spam only (smoke run)")
    ap.add_argument("--data", default=None, help="SMS Spam Collection folder")
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/2026-11-29-text-robustness.json")
    )
    ap.add_argument("--table-n", type=int, default=None, help="spam per model in the table")
    ap.add_argument("--textattack-venv", default="/work/venvs/ta")
    ap.add_argument("--skip", default="", help="comma list of: curve,table,adv-train,textattack")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    test = sms_spam(args.data, "test")
    train = sms_spam(args.data, "train")
    spam = list(test.of_class("spam").texts)
    n = 12 if args.quick else len(spam)
    texts = spam[:n]
    table_n = args.table_n or (8 if args.quick else 64)
    out_dir = Path(args.out).with_suffix("")
    res: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
        "quick": args.quick,
    }

    cnn = zoo.load("sms-spam-cnn", data_root=args.data)
    print(f"1. TextFooler spam -> ham on {n} test spam vs sms-spam-cnn (<= 10% words, sim >= 0.8)")
    res["textfooler_cnn"] = run_textfooler(cnn, texts, 0.1)
    r = res["textfooler_cnn"]
    print(
        f"   success {r['success_rate']:.1%}, median queries {r['queries_median']}, "
        f"{r['wall_s']} s wall / {r['cpu_s']} s CPU"
    )

    if "curve" not in skip:
        res["budget_curve_cnn"] = []
        for frac in (0.2, 0.3):
            rr = run_textfooler(cnn, texts[: min(n, table_n)], frac)
            res["budget_curve_cnn"].append(rr)
            print(f"2. <= {frac:.0%} words: success {rr['success_rate']:.1%} (n={rr['n']})")

    if "table" not in skip:
        rows = []
        tt = spam[:table_n]
        models = [
            ("sms-spam-tfidf", zoo.load("sms-spam-tfidf", data_root=args.data)),
            ("sms-spam-cnn", cnn),
            ("sms-spam-minilm", zoo.load("sms-spam-minilm", data_root=args.data)),
            ("sms-spam-cnn+spelling", SpellingCorrection(cnn, train.texts)),
        ]
        if "adv-train" not in skip:
            t0 = time.perf_counter()
            spam_train = train.of_class("spam")

            def retrain(t, y):
                return zoo_text_train(TextDataset(t, y, class_names=train.class_names))

            adv_model, log = adversarial_augmentation(
                cnn,
                list(train.texts),
                train.y,
                [
                    build_text_attack("deepwordbug", params=["max_char_edits=30"]),
                    TextFooler(max_word_fraction=0.1, min_similarity=0.8),
                ],
                retrain=retrain,
                target="ham",
                attack_class="spam",
                max_examples=min(len(spam_train), 64 if args.quick else 514),
            )
            log["seconds_total"] = round(time.perf_counter() - t0, 1)
            res["adversarial_training"] = log
            models.append(("sms-spam-cnn+adv-training", adv_model))
        for name, m in models:
            row = evaluate_row(name, m, tt, out_dir)
            rows.append(row)
            print(
                f"3. {name:28s} spam detected {row['spam_detected']:.1%}  robust "
                f"{row['robust_accuracy']:.1%}  ({row['wall_s']} s)"
            )
        res["table"] = rows

    if "textattack" not in skip:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from textattack_compare import run_textattack

        spec = {"src": str(ROOT / "src"), "texts": texts, "label": 1, "data": args.data}
        venv = Path(args.textattack_venv)
        res["textattack"] = {
            task: run_textattack(task, venv, spec, timeout=900)
            for task in ("textfooler-recipe", "deepwordbug")
        }
        print("4. TextAttack:", json.dumps(res["textattack"])[:400])

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, res)
    print(f"wrote {args.out}")


def zoo_text_train(ds):
    from advex.zoo.text import train_text_cnn

    return train_text_cnn(ds)


if __name__ == "__main__":
    main()

"""advex against TextAttack, side by side in one run, offline, on the same model and spam.

    OMP_NUM_THREADS=1 python benchmarks/textattack_compare.py [--quick] [--venv /work/venvs/ta]
        [--out benchmarks/results/2026-11-30-text-textattack.json]

TextAttack is not an advex dependency (it pins flair, datasets, transformers 4, …): it lives in
a throwaway venv (``--venv``; the recipe that builds it is in docs/text-evaluation.md, section
"TextAttack side by side"), and each TextAttack task runs there as a subprocess of this script
(``python benchmarks/textattack_compare.py --worker TASK SPEC``), with advex's ``sms-spam-cnn``
behind a TextAttack ``ModelWrapper``. The parent prepares TextAttack's offline workarounds
(``TA_CACHE_DIR`` holding its post-install marker so that import does not call
``nltk.download``; ``NLTK_DATA`` holding NLTK's English stop-word list; ``HF_*_OFFLINE=1``).

Same spam for every row: the test spam of the SMS Spam Collection that ``sms-spam-cnn``
classifies as spam (spam → ham; with two classes TextAttack's untargeted goal is the same
goal). Rows:

1. ``DeepWordBugGao2018`` (TextAttack's recipe, unchanged: 4 character transformations,
   greedy word-importance search, Levenshtein ≤ 30, stop words frozen) vs advex
   ``DeepWordBug(max_char_edits=30)``.
2. ``TextFoolerJin2019`` (TextAttack's recipe): built offline; what fails is recorded
   verbatim (component by component).
3. Extra row, *not the recipe*: TextAttack's own TextFooler components that run offline —
   ``WordSwapEmbedding`` (50 candidates) over the same local GloVe-6B-50d vectors advex uses
   (100,000 most frequent words; ``WordEmbeddingDistance`` cosine ≥ 0.7 as advex's GloVe
   filter), the recipe's stop words, ``MaxWordsPerturbed(max_percent=0.1)``, a
   ``SentenceEncoder`` constraint (cosine ≥ 0.8 against the original, whole message) with
   advex's local MiniLM as its encoder, ``GreedyWordSwapWIR("delete")`` — vs advex
   ``TextFooler(max_word_fraction=0.1, min_similarity=0.8)``.

Per row and tool: success rate, queries (TextAttack: each result's ``num_queries``; advex: its
per-example count), character edits and words changed of the successes (both measured with
``advex.threats.text``), CPU seconds (``time.process_time`` of the attack loop, in the process
that ran it) and wall seconds, and the ratios advex / TextAttack. ``--quick``: 12 spam.
Without the venv every TextAttack task says "not installed" and advex still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_VENV = "/work/venvs/ta"
TASKS = ("deepwordbug", "textfooler-recipe", "textfooler-offline")

# NLTK's English stop-word list (nltk_data corpora/stopwords/english, 179 words): TextAttack's
# StopwordModification() reads it at import time and nltk.download cannot run offline.
NLTK_ENGLISH_STOPWORDS = """i me my myself we our ours ourselves you you're you've you'll you'd
your yours yourself yourselves he him his himself she she's her hers herself it it's its itself
they them their theirs themselves what which who whom this that that'll these those am is are
was were be been being have has had having do does did doing a an the and but if or because as
until while of at by for with about against between into through during before after above
below to from up down in out on off over under again further then once here there when where
why how all any both each few more most other some such no nor not only own same so than too
very s t can will just don don't should should've now d ll m o re ve y ain aren aren't couldn
couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won
won't wouldn wouldn't""".split()


# --------------------------------------------------------------------------------------------
# parent side (advex's environment)
# --------------------------------------------------------------------------------------------


def offline_env(venv: Path) -> dict:
    """Environment for the TextAttack subprocess: caches inside the venv's folder, the
    post-install marker (TextAttack's first import otherwise runs ``nltk.download(...)``, which
    blocks without a network), NLTK's stop words, and the hubs offline."""
    cache = venv / "ta-cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "post_install_check_3").touch()
    stop = venv / "nltk_data" / "corpora" / "stopwords" / "english"
    if not stop.is_file():
        stop.parent.mkdir(parents=True, exist_ok=True)
        stop.write_text("\n".join(NLTK_ENGLISH_STOPWORDS) + "\n")
    return {
        **os.environ,
        "TA_CACHE_DIR": str(cache),
        "NLTK_DATA": str(venv / "nltk_data"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }


def run_textattack(task: str, venv: Path, spec: dict, timeout: float) -> dict:
    """Run one TextAttack task in the venv; its JSON report, or what went wrong."""
    py = venv / "bin" / "python"
    if not py.is_file():
        return {"status": "not installed", "why": f"no TextAttack venv at {venv}"}
    with tempfile.TemporaryDirectory() as d:
        spec_path = Path(d) / "spec.json"
        out_path = Path(d) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        w0 = time.perf_counter()
        try:
            p = subprocess.run(
                [str(py), str(Path(__file__).resolve()), "--worker", task, str(spec_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=offline_env(venv),
                cwd=d,
            )
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "why": f"{task} ran over {timeout:.0f} s"}
        wall = round(time.perf_counter() - w0, 1)
        if not out_path.is_file():
            return {
                "status": "failed",
                "returncode": p.returncode,
                "stderr_tail": p.stderr[-2000:],
                "process_wall_s": wall,
            }
        res = json.loads(out_path.read_text())
    res.setdefault("status", "ran")
    res["process_wall_s"] = wall
    return res


def summarize(originals, adversarials, success, queries) -> dict:
    """One row of numbers from per-example outcomes, measured the same way for both tools."""
    from advex.threats.text import char_edits, split_words, words_changed

    ok = [i for i, s in enumerate(success) if s]
    ce = [char_edits(originals[i], adversarials[i]) for i in ok]
    wc = [words_changed(originals[i], adversarials[i]) for i in ok]
    wf = [w / max(1, len(split_words(originals[i]))) for w, i in zip(wc, ok, strict=True)]

    def stats(v):
        if not v:
            return None
        return {"median": statistics.median(v), "mean": round(statistics.fmean(v), 3)}

    return {
        "n": len(originals),
        "successes": len(ok),
        "success_rate": len(ok) / max(1, len(originals)),
        "queries_median": statistics.median(queries) if queries else None,
        "queries_mean": round(statistics.fmean(queries), 2) if queries else None,
        "queries_total": int(sum(queries)),
        "char_edits": stats(ce),
        "words_changed": stats(wc),
        "word_fraction": stats(wf),
        "examples": [{"original": originals[i], "adversarial": adversarials[i]} for i in ok[:3]],
    }


def run_advex(attack, model, texts) -> dict:
    import torch

    torch.set_num_threads(1)
    c0, w0 = time.process_time(), time.perf_counter()
    r = attack(model, texts, "spam", target="ham")
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    row = summarize(texts, r.adversarial, r.success.tolist(), r.queries.tolist())
    if r.similarity is not None:
        sim = [
            float(s) for s, ok in zip(r.similarity.tolist(), r.success.tolist(), strict=True) if ok
        ]
        row["similarity_min"] = min(sim) if sim else None
    row.update(cpu_s=round(cpu, 2), wall_s=round(wall, 2))
    return row


def ratios(advex_row: dict, ta: dict) -> dict | None:
    t = ta.get("row")
    if not t:
        return None

    def div(a, b):
        return round(a / b, 4) if a is not None and b else None

    return {
        "success_advex_minus_textattack": round(advex_row["success_rate"] - t["success_rate"], 4),
        "cpu_advex_over_textattack": div(advex_row["cpu_s"], t["cpu_s"]),
        "wall_advex_over_textattack": div(advex_row["wall_s"], t["wall_s"]),
        "queries_median_advex_over_textattack": div(
            advex_row["queries_median"], t["queries_median"]
        ),
        "queries_mean_advex_over_textattack": div(advex_row["queries_mean"], t["queries_mean"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 test spam (smoke run)")
    ap.add_argument("--n", type=int, default=None, help="first N caught test spam")
    ap.add_argument("--data", default=None, help="SMS Spam Collection folder")
    ap.add_argument("--venv", default=DEFAULT_VENV, help="the venv that holds TextAttack")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per TextAttack task")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma list of " + ",".join(TASKS))
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/2026-11-30-text-textattack.json")
    )
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if bad := set(tasks) - set(TASKS):
        ap.error(f"unknown tasks {sorted(bad)}; choose from {TASKS}")

    import platform

    import torch

    from advex import zoo
    from advex._io import write_json
    from advex.attacks.text import DeepWordBug, TextFooler
    from advex.data.text import sms_spam

    torch.set_num_threads(1)
    model = zoo.load("sms-spam-cnn", data_root=args.data)
    spam = list(sms_spam(args.data, "test").of_class("spam").texts)
    caught = [t for t, p in zip(spam, model(spam).argmax(1).tolist(), strict=True) if p == 1]
    n = 12 if args.quick else (args.n or len(caught))
    texts = caught[:n]
    venv = Path(args.venv)
    print(f"{len(caught)}/{len(spam)} test spam caught by sms-spam-cnn; attacking {len(texts)}")
    res: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared by other jobs), 1 thread per process",
        "torch": torch.__version__,
        "model": "sms-spam-cnn",
        "goal": "spam -> ham (2 classes: untargeted == targeted)",
        "n_test_spam": len(spam),
        "n_caught": len(caught),
        "n_attacked": len(texts),
        "quick": args.quick,
        "venv": str(venv),
    }
    spec = {"src": str(ROOT / "src"), "texts": texts, "label": 1, "data": args.data}

    rows = {}
    if "deepwordbug" in tasks:
        a = run_advex(DeepWordBug(max_char_edits=30), model, texts)
        print(f"advex DeepWordBug: {_line(a)}")
        ta = run_textattack("deepwordbug", venv, spec, args.timeout)
        print(f"TextAttack DeepWordBugGao2018: {_line(ta.get('row')) or ta}")
        rows["deepwordbug"] = {
            "budget": "<= 30 character edits (Levenshtein), stop words frozen in TextAttack",
            "advex": a,
            "textattack": ta,
            "ratios": ratios(a, ta),
        }
    if "textfooler-recipe" in tasks:
        ta = run_textattack("textfooler-recipe", venv, spec, min(args.timeout, 900))
        print("TextAttack TextFoolerJin2019 offline:", json.dumps(ta)[:600])
        rows["textfooler_recipe"] = {"textattack": ta}
    if "textfooler-offline" in tasks:
        tf = TextFooler(max_word_fraction=0.1, min_similarity=0.8)
        tf.source  # noqa: B018 - load GloVe/WordNet outside the timing, as TextAttack's build
        a = run_advex(tf, model, texts)
        print(f"advex TextFooler: {_line(a)}")
        ta = run_textattack("textfooler-offline", venv, spec, args.timeout)
        print(f"TextAttack offline TextFooler components: {_line(ta.get('row')) or ta}")
        rows["textfooler_offline_components"] = {
            "budget": "<= 10% of words (at least 1), MiniLM cosine >= 0.8 to the original",
            "note": "NOT TextAttack's TextFoolerJin2019 recipe (which cannot run offline): its "
            "own components over local GloVe-50d and advex's MiniLM; see the docstring",
            "advex": a,
            "textattack": ta,
            "ratios": ratios(a, ta),
        }
    res["rows"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, res)
    for name, r in rows.items():
        if r.get("ratios"):
            print(f"{name}: {json.dumps(r['ratios'])}")
    print(f"wrote {args.out}")


def _line(r: dict | None) -> str:
    if not r:
        return ""
    return (
        f"success {r['success_rate']:.1%} ({r['successes']}/{r['n']}), queries median "
        f"{r['queries_median']} mean {r['queries_mean']}, {r['cpu_s']} CPU s, {r['wall_s']} wall s"
    )


# --------------------------------------------------------------------------------------------
# worker side (TextAttack's venv)
# --------------------------------------------------------------------------------------------


def worker(task: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"task": task}

    def done():
        Path(spec["out"]).write_text(json.dumps(out))

    sys.path.insert(0, spec["src"])
    t0 = time.perf_counter()
    try:
        import textattack  # noqa: F401 - the import is what is timed
        from textattack.models.wrappers import ModelWrapper
    except Exception as e:  # noqa: BLE001 - recorded verbatim
        out.update(
            status="import failed", error=repr(e)[:1000], trace=traceback.format_exc()[-3000:]
        )
        return done()
    import importlib.metadata as md

    out["textattack_version"] = md.version("textattack")
    out["import_s"] = round(time.perf_counter() - t0, 1)
    import torch

    from advex import zoo

    torch.set_num_threads(1)
    model = zoo.load("sms-spam-cnn", data_root=spec["data"])

    class Wrapped(ModelWrapper):
        """advex's model on a list of strings -> (N, 2) probabilities."""

        def __init__(self):
            self.model = model
            self.calls = 0

        def __call__(self, text_input_list):
            self.calls += len(text_input_list)
            with torch.no_grad():
                return model(list(text_input_list)).softmax(1).numpy()

    wrapper = Wrapped()
    if task == "deepwordbug":
        from textattack.attack_recipes import DeepWordBugGao2018

        attack = DeepWordBugGao2018.build(wrapper)
        out["attack"] = str(attack)
        _attack_all(attack, spec, out)
    elif task == "textfooler-recipe":
        _textfooler_recipe(wrapper, out)
    elif task == "textfooler-offline":
        attack = _textfooler_offline(wrapper)
        out["attack"] = str(attack)
        _attack_all(attack, spec, out)
    out["model_calls_texts"] = wrapper.calls
    done()


def _attack_all(attack, spec: dict, out: dict) -> None:
    from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult

    texts = spec["texts"]
    adv, success, queries, kinds = [], [], [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for text in texts:
        r = attack.attack(text, spec["label"])
        success.append(isinstance(r, SuccessfulAttackResult))
        kinds.append(type(r).__name__)
        queries.append(int(r.num_queries))
        adv.append(r.perturbed_result.attacked_text.text if success[-1] else text)
        if isinstance(r, SkippedAttackResult):
            out.setdefault("skipped", 0)
            out["skipped"] += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    row = summarize(texts, adv, success, queries)
    row.update(cpu_s=round(cpu, 2), wall_s=round(wall, 2))
    out["row"] = row
    out["result_kinds"] = {k: kinds.count(k) for k in sorted(set(kinds))}


def _textfooler_recipe(wrapper, out: dict) -> None:
    """Build TextAttack's TextFoolerJin2019 offline, then each of its resources alone, and
    record what fails."""

    def attempt(name, fn):
        t = time.perf_counter()
        try:
            fn()
            out[name] = {"ok": True, "seconds": round(time.perf_counter() - t, 1)}
        except BaseException as e:  # noqa: BLE001 - recorded verbatim
            out[name] = {
                "ok": False,
                "seconds": round(time.perf_counter() - t, 1),
                "error": f"{type(e).__name__}: {e}"[:1200],
                "trace_tail": traceback.format_exc()[-1500:],
            }

    from textattack.attack_recipes import TextFoolerJin2019

    # 1. the recipe; its first resource is the counter-fitted embedding, fetched from S3
    attempt("build_recipe", lambda: TextFoolerJin2019.build(wrapper))
    # 2. the same build again in the same process: TextAttack's download keeps its file lock
    #    when the download fails, so a retry fails differently
    attempt("build_recipe_retry_same_process", lambda: TextFoolerJin2019.build(wrapper))

    # 3. the recipe's other resources, each alone
    def use():
        from textattack.constraints.semantics.sentence_encoders import UniversalSentenceEncoder

        enc = UniversalSentenceEncoder(threshold=0.840845057, metric="angular", window_size=15)
        enc.encode(["a test sentence"])

    def pos():
        from textattack.constraints.grammaticality import PartOfSpeech

        PartOfSpeech(allow_verb_noun_swap=True)._get_pos(["win", "a"], "free", ["prize"])

    attempt("universal_sentence_encoder", use)
    attempt("part_of_speech_nltk", pos)
    out["status"] = "built" if out["build_recipe"]["ok"] else "cannot build offline"


def _textfooler_offline(wrapper):
    """TextAttack's TextFooler components that need no download (see the module docstring)."""
    import numpy as np
    import torch
    from textattack import Attack
    from textattack.attack_recipes import TextFoolerJin2019  # noqa: F401 - the recipe's module
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.constraints.pre_transformation import (
        RepeatModification,
        StopwordModification,
    )
    from textattack.constraints.semantics import WordEmbeddingDistance
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.shared import WordEmbedding
    from textattack.transformations import WordSwapEmbedding

    from advex.attacks.text.synonyms import load_glove
    from advex.models.minilm import load_minilm

    class Embedding(WordEmbedding):
        """TextAttack's WordEmbedding over local vectors. Its ``nearest_neighbours`` without a
        precomputed ``nn_matrix`` crashes in 0.3.11 (``dist.topk(...)[1:].tolist()`` on the
        (values, indices) tuple); the same search, with the indices taken."""

        def nearest_neighbours(self, index, topn):
            if isinstance(index, str):
                index = self._word2index[index]
            if index not in self._nn_cache:
                m = torch.as_tensor(self.embedding_matrix)
                dist = torch.norm(m - m[index], dim=1)
                self._nn_cache[index] = dist.topk(topn + 1, largest=False)[1][1:].tolist()
            return self._nn_cache[index]

    g = load_glove()
    k = g.vocab_size
    words = list(g.words[:k])
    emb = Embedding(
        np.ascontiguousarray(g.unit[:k]),
        {w: i for i, w in enumerate(words)},
        dict(enumerate(words)),
    )
    enc = load_minilm()

    class MiniLM(SentenceEncoder):
        """TextAttack's sentence-encoder constraint with advex's local MiniLM as encoder, on
        the whole message. (TextAttack turns ``window_size=None`` into an infinite window
        around the changed word, the whole message too, but that path raises StopIteration
        when a candidate has no ``newly_modified_indices``; ``None`` takes its whole-text path.)
        """

        def __init__(self, **kw):
            super().__init__(**kw)
            self.window_size = None

        def encode(self, sentences):
            return enc.encode(list(sentences)).numpy()

    # the recipe's stop words (read from its source, so they are exactly the recipe's)
    import inspect
    import re

    src = inspect.getsource(TextFoolerJin2019.build)
    stop = set(re.findall(r'"([^"]+)"', src.split("stopwords = set(")[1].split(")")[0]))
    constraints = [
        RepeatModification(),
        StopwordModification(stopwords=stop),
        MaxWordsPerturbed(max_percent=0.1),
        WordEmbeddingDistance(embedding=emb, min_cos_sim=0.7),
        MiniLM(threshold=0.8, metric="cosine", compare_against_original=True, window_size=None),
    ]
    return Attack(
        UntargetedClassification(wrapper),
        constraints,
        WordSwapEmbedding(max_candidates=50, embedding=emb),
        GreedyWordSwapWIR(wir_method="delete"),
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()

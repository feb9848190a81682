"""Text examples for people: word-level diffs with the changes highlighted, and a
self-contained HTML page of a text robustness evaluation.

The page has inline CSS only (no script, nothing fetched), like :mod:`advex.report.html`.

>>> highlight_changes("win a free prize", "win a gratis prize")
('win a <del>free</del> prize', 'win a <ins>gratis</ins> prize')
"""

from __future__ import annotations

import difflib
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write

__all__ = ["highlight_changes", "render_text_html", "save_text_html"]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f6f8fa;
color:#1f2328}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;background:#fff;width:100%;margin:8px 0}
td,th{border:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f0f3f6}
.num{text-align:right;font-variant-numeric:tabular-nums}
del{background:#ffebe9;color:#82071e;text-decoration:line-through}
ins{background:#dafbe1;color:#116329;text-decoration:none;font-weight:600}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.meta{color:#57606a;font-size:12px}
"""


def highlight_changes(original: str, adversarial: str) -> tuple[str, str]:
    """HTML of both texts (escaped), words removed from the original in ``<del>`` and words
    new in the adversarial in ``<ins>`` (a word-level diff over whitespace-separated words)."""
    a, b = original.split(), adversarial.split()
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    left: list[str] = []
    right: list[str] = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        ea = [html.escape(w) for w in a[i1:i2]]
        eb = [html.escape(w) for w in b[j1:j2]]
        if op == "equal":
            left += ea
            right += eb
        else:
            left += [f"<del>{w}</del>" for w in ea]
            right += [f"<ins>{w}</ins>" for w in eb]
    return " ".join(left), " ".join(right)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(float(v))


def render_text_html(summary: dict[str, Any], examples: Sequence[dict[str, Any]]) -> str:
    """The page: the summary numbers, the per-attack table, then the examples side by side.

    Args:
        summary: a text evaluation's ``summary()`` (``model``, ``n``, ``clean_accuracy``,
            ``robust_accuracy``, ``robust_accuracy_ci``, ``attacks``: name → stats).
        examples: records with ``original``, ``adversarial``, ``label``,
            ``adversarial_prediction``, ``attack``, ``words_changed``, ``char_edits``,
            ``similarity``, ``queries``.
    """
    e = html.escape
    ci = summary.get("robust_accuracy_ci") or (None, None)
    rows = []
    for name, st in summary.get("attacks", {}).items():
        rows.append(
            f"<tr><td>{e(name)}</td><td>{e(str(st.get('threat', '')))}</td>"
            f"<td class=num>{st.get('attacked', 0)}</td>"
            f"<td class=num>{st.get('successes', 0)}</td>"
            f"<td class=num>{_pct(st.get('success_rate'))}</td>"
            f"<td class=num>{_num(st.get('mean_words_changed'), '{:.2f}')}</td>"
            f"<td class=num>{_num(st.get('mean_char_edits'), '{:.1f}')}</td>"
            f"<td class=num>{_num(st.get('mean_queries'), '{:.1f}')}</td>"
            f"<td class=num>{_num(st.get('seconds'), '{:.1f}')}</td></tr>"
        )
    ex_rows = []
    for r in examples:
        left, right = highlight_changes(r["original"], r["adversarial"])
        ok = r.get("adversarial_prediction") != r.get("label")
        verdict = (
            f"<span class={'bad' if ok else 'ok'}>{e(str(r.get('adversarial_prediction')))}</span>"
        )
        sim = r.get("similarity")
        ex_rows.append(
            f"<tr><td>{left}</td><td>{right}</td><td>{e(str(r.get('label')))} → {verdict}"
            f"<div class=meta>{e(str(r.get('attack') or ''))}; words {r.get('words_changed')}, "
            f"chars {r.get('char_edits')}, sim {_num(sim, '{:.3f}')}, "
            f"queries {r.get('queries')}</div></td></tr>"
        )
    title = f"Text robustness: {summary.get('model', 'model')}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{_CSS}</style></head><body><main>
<h1>{e(title)}</h1>
<table><tr><th>examples</th><th>clean accuracy</th><th>robust accuracy</th><th>95% CI</th>
<th>target</th></tr>
<tr><td class=num>{summary.get("n", 0)}</td><td class=num>{_pct(summary.get("clean_accuracy"))}</td>
<td class=num>{_pct(summary.get("robust_accuracy"))}</td>
<td class=num>{_pct(ci[0])} – {_pct(ci[1])}</td><td>{e(str(summary.get("target") or "any"))}</td>
</tr></table>
<h2>Attacks (each run only on the examples still robust)</h2>
<table><tr><th>attack</th><th>budget</th><th>attacked</th><th>fooled</th><th>success</th>
<th>words changed</th><th>char edits</th><th>queries</th><th>seconds</th></tr>
{"".join(rows)}</table>
<h2>Examples ({len(examples)})</h2>
<table><tr><th>original</th><th>adversarial</th><th>label → prediction</th></tr>
{"".join(ex_rows)}</table>
<p class=meta>advex text evaluation; words removed <del>like this</del>, words added
<ins>like this</ins>.</p>
</main></body></html>
"""


def save_text_html(
    path: str | os.PathLike, summary: dict[str, Any], examples: Sequence[dict[str, Any]]
) -> Path:
    """Write :func:`render_text_html` to ``path`` atomically; returns the path."""
    p = Path(path)
    atomic_write(p, render_text_html(summary, examples))
    return p

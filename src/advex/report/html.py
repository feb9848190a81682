"""A self-contained HTML report of an :class:`advex.evaluate.Evaluation`.

One file: inline CSS, every figure a base64 PNG data URI, no script and nothing fetched from
the network, so it can be mailed or archived as is. Sections: summary (clean and robust
accuracy with its confidence interval, verdict badge), per-attack contribution (table and bar
chart), robust accuracy against ε, adversarial triptychs, norm histogram of the worst-case
perturbations, gradient-masking checks with evidence and recommendations, adaptations
(BPDA / EOT), run metadata.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from .._io import atomic_write  # noqa: E402
from .table import verdict_text  # noqa: E402

__all__ = ["save_html", "render_html", "figures", "render_page", "figure_data_uri"]

_GREEN, _RED, _BLUE, _GREY = "#1a7f37", "#cf222e", "#0969da", "#57606a"
_SYM = {"linf": "∞", "l2": "2", "l1": "1"}
#: the badge says what the verdict judges: the evaluation, not the model
_BADGE_TEXT = {"PASS": "trustworthy", "SUSPECT": "suspect", "UNCHECKED": "unchecked"}

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f6f8fa;
color:#1f2328}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;min-width:150px}
.card .k{font-size:12px;color:#57606a;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:24px;font-weight:600}.card .s{font-size:12px;color:#57606a}
.badge{display:inline-block;padding:3px 12px;border-radius:14px;color:#fff;font-weight:700}
.pass{background:#1a7f37}.suspect{background:#cf222e}.unchecked{background:#57606a}
table{border-collapse:collapse;background:#fff;width:100%;font-size:14px}
th,td{border:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eaeef2}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
img{max-width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px}
.figs{display:flex;flex-wrap:wrap;gap:16px}.figs figure{margin:0}
figcaption{font-size:12px;color:#57606a;max-width:520px}
code{background:#eaeef2;padding:1px 4px;border-radius:4px;font-size:13px}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.2f}%"


def _stage_chart(ev) -> str:
    names = ["clean"] + [s.name for s in ev.per_attack]
    vals = [ev.clean_accuracy] + [s.robust_accuracy for s in ev.per_attack]
    fig, ax = plt.subplots(figsize=(6.2, 0.5 + 0.45 * len(names)))
    colors = [_GREY] + [_RED if s.black_box else _BLUE for s in ev.per_attack]
    ax.barh(range(len(names)), [100 * v for v in vals], color=colors)
    for i, v in enumerate(vals):
        ax.text(100 * v + 1, i, f"{100 * v:.1f}%", va="center", fontsize=9)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("accuracy after the stage (%)")
    ax.set_title("robust accuracy after each attack (cumulative worst case)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _curve_chart(ev) -> str | None:
    c = ev.curve
    if not c or not c.get("eps"):
        return None
    eps, acc = [0.0] + list(c["eps"]), [None] + list(c["robust_accuracy"])
    # ε = 0 is the clean accuracy of the probe points, unknown here: use the evaluation's
    acc[0] = ev.clean_accuracy
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(eps, [100 * a for a in acc], "o-", color=_BLUE, label=c.get("attack", "probe"))
    e = ev.threat.get("eps")
    ax.plot([e], [100 * ev.robust_accuracy], "s", color=_RED, ms=9, label="ensemble at ε")
    ax.set_xlabel(f"ε (L{_SYM.get(ev.threat.get('norm'), '')})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _norm_hist(ev) -> str | None:
    import torch

    broken = (ev.broken_by >= 0) & ~torch.isnan(ev.norms)
    if not bool(broken.any()):
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    eps = ev.threat.get("eps") or float(ev.norms[broken].max())
    bins = [eps * i / 20 for i in range(21)]
    data, labels = [], []
    for j, s in enumerate(ev.per_attack):
        sel = broken & (ev.broken_by == j)
        if bool(sel.any()):
            # float64 before clamping: a float32 norm of exactly ε (0.30000001) would
            # otherwise fall past the last bin edge (0.3) and vanish from the plot
            data.append(ev.norms[sel].double().clamp(max=eps).numpy())
            labels.append(f"{s.name} ({int(sel.sum())})")
    ax.hist(data, bins=bins, stacked=True, label=labels)
    ax.axvline(eps, color=_RED, ls="--", lw=1)
    ax.set_xlabel(f"‖δ‖{_SYM.get(ev.threat.get('norm'), '')} of the worst-case adversarial")
    ax.set_ylabel("points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _triptych(ev, rows: int) -> str | None:
    from .figures import save_triptych

    ex = ev.examples
    if ex is None or len(ex) == 0:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        p = save_triptych(ex, Path(tmp) / "t.png", max_rows=rows)
        data = p.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _query_chart(ev) -> str | None:
    from .figures import query_curve_figure

    curves = getattr(ev, "query_curves", None)
    if not curves:
        return None
    return _png(query_curve_figure(curves, norm=ev.threat.get("norm")))


def figures(ev, triptych_rows: int = 6) -> dict[str, str | None]:
    """The report's figures as PNG data URIs (None where there is nothing to draw)."""
    return {
        "stages": _stage_chart(ev),
        "curve": _curve_chart(ev),
        "norms": _norm_hist(ev),
        "triptych": _triptych(ev, triptych_rows),
        "queries": _query_chart(ev),
    }


def render_html(ev, *, title: str | None = None, meta: dict[str, Any] | None = None) -> str:
    """The report as one HTML string."""
    figs = figures(ev)
    t = ev.threat
    sym = _SYM.get(t.get("norm"), t.get("norm"))
    lo, hi = ev.robust_accuracy_ci
    badge = {"PASS": "pass", "SUSPECT": "suspect"}.get(ev.verdict, "unchecked")
    title = title or "advex robustness evaluation"
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f"<div class='sub'>L{_esc(sym)} ε = {_esc(t.get('eps'))} · preset "
        f"<b>{_esc(ev.preset.get('name'))}</b> · {ev.n} points"
        + (f" of {_esc(ev.data_name)}" if ev.data_name else "")
        + "</div>",
        "<h2>Summary</h2><div class='cards'>",
        f"<div class='card'><div class='k'>clean accuracy</div><div class='v'>"
        f"{_pct(ev.clean_accuracy)}</div><div class='s'>{ev.n_correct} / {ev.n}</div></div>",
        f"<div class='card'><div class='k'>robust accuracy</div><div class='v'>"
        f"{_pct(ev.robust_accuracy)}</div><div class='s'>95% CI [{_pct(lo)}, {_pct(hi)}] "
        f"({_esc(ev.ci_method)})</div></div>",
        f"<div class='card'><div class='k'>evaluation</div><div class='v'><span class='badge "
        f"{badge}'>{_esc(_BADGE_TEXT.get(ev.verdict, ev.verdict))}</span></div>"
        f"<div class='s'>{_esc(verdict_text(ev.verdict))}; "
        f"{sum(not c.passed for c in ev.checks)} of {len(ev.checks)} masking checks fired"
        "</div></div>",
        f"<div class='card'><div class='k'>passes</div><div class='v'>"
        f"{ev.gradients_total:,}</div><div class='s'>gradients; {ev.queries_total:,} forward "
        f"passes</div></div>",
        f"<div class='card'><div class='k'>wall time</div><div class='v'>"
        f"{ev.wall_time_s:.1f} s</div><div class='s'>checks {ev.checks_time_s:.1f} s"
        + (f"; {ev.resumed_batches} batch(es) resumed" if ev.resumed_batches else "")
        + "</div></div></div>",
    ]
    # per-attack contribution
    out.append("<h2>Per-attack contribution</h2>")
    out.append(
        "<p>Attacks run in this order, each only on the points still robust after the earlier "
        "ones; a point is robust only if it survives all of them (per-point worst case).</p>"
    )
    out.append(
        "<table><tr><th>stage</th><th>attack</th><th>parameters</th><th>robust after</th>"
        "<th>broke</th><th>attacked</th><th>gradients</th><th>forward passes</th>"
        "<th>time</th></tr>"
    )
    for s in ev.per_attack:
        params = ", ".join(
            f"{k}={v}"
            for k, v in s.params.items()
            if k not in ("norm", "eps", "bounds", "masked", "seed")
        )
        kind = " (black-box)" if s.black_box else ""
        out.append(
            f"<tr><td>{_esc(s.name)}</td><td>{_esc(s.attack)}{kind}</td>"
            f"<td><code>{_esc(params)}</code></td><td class='n'>{_pct(s.robust_accuracy)}</td>"
            f"<td class='n'>{s.n_broken}</td><td class='n'>{s.n_attacked}</td>"
            f"<td class='n'>{s.gradients:,}</td><td class='n'>{s.queries:,}</td>"
            f"<td class='n'>{s.time_s:.1f} s</td></tr>"
        )
    out.append("</table>")
    amp = getattr(ev, "amp", None)
    if amp:  # evaluate(amp=...): advex.evaluate.amp
        out.append(
            f"<p>Precision: {_esc(', '.join(amp['stages']))} ran under {_esc(amp['dtype'])} "
            f"autocast; the {amp['rechecks']:,} break(s) it claimed were re-checked in fp32 and "
            f"{amp['reversed']:,} reversed (not counted broken, attacked by the later stages). "
            "Every other stage, the clean pass and the checks ran in fp32.</p>"
        )
    out.append(f"<div class='figs'><figure><img alt='per-attack' src='{figs['stages']}'>")
    out.append("<figcaption>grey: clean; blue: white-box; red: black-box.</figcaption>")
    out.append("</figure></div>")
    # curve + norms
    out.append("<h2>Robust accuracy vs ε and perturbation norms</h2><div class='figs'>")
    if figs["curve"]:
        out.append(
            f"<figure><img alt='curve' src='{figs['curve']}'><figcaption>"
            f"{_esc(ev.curve.get('attack'))} on {ev.curve.get('n')} probe points at fractions of "
            "ε (ε = 0: clean accuracy); the square is the full ensemble at ε."
            "</figcaption></figure>"
        )
    if figs["norms"]:
        out.append(
            f"<figure><img alt='norms' src='{figs['norms']}'><figcaption>norm of the "
            "adversarial that first broke each point, by attack; the dashed line is ε."
            "</figcaption></figure>"
        )
    if not (figs["curve"] or figs["norms"]):
        out.append("<p>Nothing to draw (no masking-check curve, no broken point).</p>")
    out.append("</div>")
    if figs["queries"]:  # decision-based stages: what each extra query bought
        out.append("<h2>Queries vs distance (decision-based attacks)</h2><div class='figs'>")
        out.append(
            f"<figure><img alt='queries' src='{figs['queries']}'><figcaption>per stage, over "
            "the points it attacked: the median distance of the best adversarial found (left) "
            "and the share of points with one within ε (right) after each number of queries "
            "per point (the clean pass included)."
            "</figcaption></figure></div>"
        )
    # triptychs
    out.append("<h2>Adversarial examples</h2>")
    if figs["triptych"]:
        out.append(
            f"<figure><img alt='triptych' src='{figs['triptych']}'><figcaption>original | "
            "perturbation (amplified, grey = unchanged) | adversarial; broken points first."
            "</figcaption></figure>"
        )
    else:
        out.append("<p>No examples kept.</p>")
    # checks
    out.append("<h2>Gradient-masking checks</h2>")
    if ev.checks:
        out.append(
            "<table><tr><th>check</th><th>result</th><th>evidence</th><th>recommendation</th></tr>"
        )
        for c in ev.checks:
            res = "<span class='ok'>pass</span>" if c.passed else "<span class='bad'>FIRED</span>"
            out.append(
                f"<tr><td>{_esc(c.name)}</td><td>{res}</td><td>{_esc(c.evidence)}</td>"
                f"<td>{_esc(c.recommendation) or '–'}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>The checks were not run (checks=False).</p>")
    # adaptations
    ad = ev.adaptations
    out.append("<h2>Adaptations</h2>")
    out.append(f"<p>{_esc(ad.get('description'))}</p>")
    # metadata
    from .jsonio import metadata

    md = metadata(seed=ev.seed, threat=ev.threat)
    md.update(meta or {})
    out.append("<h2>Run metadata</h2><table>")
    for k, v in md.items():
        out.append(f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>")
    out.append("</table></main></body></html>")
    return "\n".join(out)


def save_html(
    ev, path: str | os.PathLike, *, title: str | None = None, meta: dict[str, Any] | None = None
) -> Path:
    """Write the self-contained report of ``ev`` (an :class:`advex.evaluate.Evaluation`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(ev, title=title, meta=meta)
    atomic_write(path, text)
    return path


# ----------------------------------------------------------------------------------------------
# A generic page in the same style (used by the poisoning reports)
# ----------------------------------------------------------------------------------------------


def figure_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    return _png(fig)


def render_page(
    title: str,
    sections: list[tuple[str, str]],
    *,
    cards: list[tuple[str, str, str]] | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """A self-contained page in the report's style: ``cards`` (label, value, note), then
    ``sections`` (heading, HTML body already escaped by the caller), then run metadata."""
    from .jsonio import metadata

    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if cards:
        out.append("<div class='cards'>")
        for k, v, s in cards:
            out.append(
                f"<div class='card'><div class='k'>{_esc(k)}</div><div class='v'>{_esc(v)}"
                f"</div><div class='s'>{_esc(s)}</div></div>"
            )
        out.append("</div>")
    for heading, body in sections:
        out.append(f"<h2>{_esc(heading)}</h2>{body}")
    md = metadata()
    md.update(meta or {})
    out.append("<h2>Run metadata</h2><table>")
    for k, v in md.items():
        out.append(f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>")
    out.append("</table></main></body></html>")
    return "\n".join(out)

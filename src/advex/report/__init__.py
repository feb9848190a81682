"""Reports: JSON results with their metadata, PNG figures and plain-text tables.

>>> from advex.report import to_json, save_triptych, save_curve
>>> to_json(result, "out/results.json", seed=0)
>>> save_triptych(result.examples, "out/triptych.png")
>>> save_curve(curve, "out/curve.png")
>>> save_html(evaluation, "out/report.html")   # self-contained report of advex.evaluate.evaluate
"""

from .examples import ExampleKeeper, Examples
from .figures import auto_amplify, query_curve_figure, save_curve, save_query_curve, save_triptych
from .html import figure_data_uri, render_html, render_page, save_html
from .jsonio import SCHEMA, jsonable, metadata, read_json, to_json
from .table import format_curve, format_table

__all__ = [
    "SCHEMA",
    "ExampleKeeper",
    "Examples",
    "auto_amplify",
    "figure_data_uri",
    "format_curve",
    "format_table",
    "jsonable",
    "metadata",
    "read_json",
    "render_html",
    "render_page",
    "save_curve",
    "save_html",
    "save_query_curve",
    "query_curve_figure",
    "save_triptych",
    "to_json",
]

"""Kept for compatibility: :class:`Examples` lives in :mod:`advex.report.examples`."""

from ..report.examples import ExampleKeeper, Examples

__all__ = ["Examples", "ExampleKeeper"]

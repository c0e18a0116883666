"""Plots and the HTML report, built from run directories (matplotlib needed: ``normctl[plots]``)."""

from .html import build_report
from .runs import Run, load_run

__all__ = ["build_report", "load_run", "Run"]

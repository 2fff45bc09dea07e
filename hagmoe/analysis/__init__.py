"""Routing analysis of a model over text (or of server responses with `return_routing`):
statistics, figures and a self-contained HTML report (`hagmoe analyze`, docs/analysis.md)."""

from __future__ import annotations

from hagmoe.analysis.records import LayerRecords, RoutingRecords, collect_from_model
from hagmoe.analysis.report import render_report
from hagmoe.analysis.responses import collect_from_responses
from hagmoe.analysis.statistics import Statistics, compute_statistics

__all__ = [
    "LayerRecords",
    "RoutingRecords",
    "Statistics",
    "collect_from_model",
    "collect_from_responses",
    "compute_statistics",
    "render_report",
]

"""Evaluation of a model over text: bits per byte, perplexity and top-1 token accuracy."""

from __future__ import annotations

from hagmoe.evaluation.scoring import EvalReport, FileScore, evaluate_files, score_documents
from hagmoe.evaluation.text_data import Window, load_documents, strided_windows

__all__ = [
    "EvalReport",
    "FileScore",
    "Window",
    "evaluate_files",
    "load_documents",
    "score_documents",
    "strided_windows",
]

"""The analysis figures as PNGs (matplotlib, Agg backend): one file per statistic, every layer
in it. Figures whose statistic is not applicable (Statistics.not_applicable) are not drawn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hagmoe.analysis.statistics import PositionCurve, Statistics
from hagmoe.errors import HagMoEError

DPI = 100


class PlotError(HagMoEError):
    """matplotlib is missing."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the dev and bench extras
        raise PlotError("hagmoe analyze needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(ax: Any, values: np.ndarray, xlabel: str, title: str, fmt: str) -> Any:
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_yticks(range(values.shape[0]))
    ax.set_xticks(range(values.shape[1]))
    ax.set_title(title)
    if values.size <= 400:
        top = float(values.max()) if values.size else 0.0
        for (row, col), v in np.ndenumerate(values):
            color = "black" if v > 0.6 * top else "white"
            ax.text(col, row, format(v, fmt), ha="center", va="center", fontsize=7, color=color)
    return image


def expert_load(stats: Statistics, plt: Any) -> Any:
    shares = np.array([layer.expert_share for layer in stats.layers]) * 100  # [layers, N]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * stats.num_experts + 2), 1 + 0.6 * len(shares)))
    image = _heatmap(ax, shares, "expert", "share of token-expert assignments (%)", ".1f")
    m = stats.num_experts // stats.num_groups if stats.num_groups else 0
    for g in range(1, stats.num_groups):
        ax.axvline(g * m - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax)
    return fig


def group_load(stats: Statistics, plt: Any) -> Any:
    shares = np.array([layer.group_share for layer in stats.layers]) * 100  # [layers, G]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * stats.num_groups + 2), 1 + 0.6 * len(shares)))
    image = _heatmap(ax, shares, "group", "share of tokens choosing the group (%)", ".1f")
    fig.colorbar(image, ax=ax)
    return fig


def load_cv(stats: Statistics, plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(stats.num_layers)
    width = 0.4 if stats.num_groups else 0.8
    ax.bar(x, [layer.load_cv for layer in stats.layers], width, label="experts")
    if "groups" not in stats.not_applicable:
        cvs = [layer.group_cv or 0.0 for layer in stats.layers]
        ax.bar(x + width, cvs, width, label="groups")
    ax.set_xticks(x + (width / 2 if stats.num_groups else 0), [str(i) for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel("CV = std / mean of tokens")
    ax.set_title("load-balance coefficient of variation (0 = even)")
    ax.legend()
    return fig


def k_histogram(stats: Statistics, plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = stats.layers
    width = 0.8 / len(layers)
    for i, layer in enumerate(layers):
        hist = layer.k_histogram or {}
        ks = np.array([int(k) for k in hist])
        share = np.array(list(hist.values())) / max(stats.tokens, 1) * 100
        ax.bar(ks + (i - (len(layers) - 1) / 2) * width, share, width, label=f"layer {i}")
    ax.set_xticks(range(stats.k_range[0], stats.k_range[1] + 1))
    ax.set_xlabel("K (experts per token)")
    ax.set_ylabel("tokens (%)")
    ax.set_title("K histogram")
    ax.legend()
    return fig


def _curves(ax: Any, curves: list[PositionCurve | None], ylabel: str, title: str) -> None:
    for i, curve in enumerate(curves):
        if curve is None:
            continue
        x = [
            s + (curve.width - 1) / 2
            for s, m in zip(curve.starts, curve.mean, strict=True)
            if m is not None
        ]
        y = [m for m in curve.mean if m is not None]
        ax.plot(x, y, marker=".", label=f"layer {i}")
    ax.set_xlabel("position in the sequence")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def k_by_position(stats: Statistics, plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    curves = [layer.k_by_position for layer in stats.layers]
    _curves(ax, curves, "mean K", "mean K against position")
    return fig


def entropy_by_position(stats: Statistics, plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    curves = [layer.entropy_by_position for layer in stats.layers]
    _curves(ax, curves, "mean normalised entropy Hn", "normalised coarse entropy against position")
    return fig


def divergence_by_position(stats: Statistics, plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    curves = [
        layer.divergence.js_by_position if layer.divergence else None for layer in stats.layers
    ]
    _curves(
        ax, curves, "mean JS(a_c, a_f) (nats)", "coarse-vs-fine head divergence against position"
    )
    return fig


def coactivation(stats: Statistics, plt: Any) -> Any:
    cols = min(4, stats.num_layers)
    rows = -(-stats.num_layers // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols + 1, 3.4 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[stats.num_layers :]:
        ax.axis("off")
    for layer, ax in zip(stats.layers, axes.flat, strict=False):
        given = np.array(layer.coactivation_given)  # [N, N]
        np.fill_diagonal(given, np.nan)
        image = ax.imshow(given, cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"layer {layer.layer}: P(b | a)")
        ax.set_xlabel("b")
        ax.set_ylabel("a")
    fig.colorbar(image, ax=axes.ravel().tolist())
    return fig


FIGURES: dict[str, tuple[Callable[[Statistics, Any], Any], str | None]] = {
    # name -> (draw, the not_applicable section that turns it off)
    "expert_load": (expert_load, None),
    "group_load": (group_load, "groups"),
    "load_cv": (load_cv, None),
    "k_histogram": (k_histogram, "k"),
    "k_by_position": (k_by_position, "k"),
    "entropy_by_position": (entropy_by_position, "entropy"),
    "divergence_by_position": (divergence_by_position, "divergence"),
    "coactivation": (coactivation, None),
}


def write_plots(stats: Statistics, out: str | Path) -> dict[str, Path]:
    """Draws every applicable figure of FIGURES into out/NAME.png; returns name -> path in
    FIGURES order. PlotError when matplotlib is missing."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, (draw, section) in FIGURES.items():
        if section is not None and section in stats.not_applicable:
            continue
        fig = draw(stats, plt)
        if name != "coactivation":  # its colorbar spans the axes; tight_layout would warn
            fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written[name] = path
    return written

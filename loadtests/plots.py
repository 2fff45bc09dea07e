"""PNG plots of a comparison (matplotlib, Agg backend): throughput against concurrency for every
system, and the server's TTFT and ITL percentiles against the request rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def plot_throughput(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Output tokens/s against concurrency (static batch size for the baselines), log2 x."""
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    levels = sorted({int(r["concurrency"]) for r in rows})
    for system in dict.fromkeys(r["system"] for r in rows):
        points = sorted(
            (int(r["concurrency"]), float(r["tokens_per_second"]))
            for r in rows
            if r["system"] == system
        )
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency (requests in flight; static batch size for baselines)")
    ax.set_ylabel("output tokens / s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(reports: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Median and p99 TTFT (left) and ITL (right), in ms, against the Poisson request rate."""
    ordered = sorted(reports, key=lambda r: float(r["config"]["request_rate"]))
    rates = [float(r["config"]["request_rate"]) for r in ordered]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for ax, metric, label in zip(
        axes, ("ttft", "itl"), ("TTFT", "inter-token latency"), strict=True
    ):
        for stat in ("median", "p99"):
            values = [float(r[f"{stat}_{metric}_ms"]) for r in ordered]
            ax.plot(rates, values, marker="o", label=f"{stat}")
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel(f"{label} (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

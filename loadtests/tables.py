"""Markdown tables of a comparison: throughput per system and concurrency, and the server's
latency per request rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def throughput_table(rows: Sequence[dict[str, Any]]) -> str:
    """| system | c=1 | c=8 | ... | in output tokens/s ("-" where a system did not run)."""
    levels = sorted({int(r["concurrency"]) for r in rows})
    cell = {(r["system"], int(r["concurrency"])): float(r["tokens_per_second"]) for r in rows}
    head = "| system | " + " | ".join(f"concurrency {c}" for c in levels) + " |"
    lines = [head, "| --- |" + " ---: |" * len(levels)]
    for system in dict.fromkeys(r["system"] for r in rows):
        values = [cell.get((system, c)) for c in levels]
        shown = [f"{v:,.1f} tok/s" if v is not None else "-" for v in values]
        lines.append(f"| {system} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def latency_table(reports: Sequence[dict[str, Any]]) -> str:
    """One row per request rate: achieved throughput, TTFT / ITL / TPOT / E2EL, failures."""
    lines = [
        "| rate (req/s) | done / failed | req/s | output tok/s | TTFT median / p99 (ms) "
        "| ITL median / p99 (ms) | TPOT median (ms) | E2EL median / p99 (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(reports, key=lambda r: float(r["config"]["request_rate"])):
        lines.append(
            f"| {r['config']['request_rate']} | {r['completed']} / {r['failed']} "
            f"| {r['request_throughput']:.2f} | {r['output_throughput']:.1f} "
            f"| {r['median_ttft_ms']:.0f} / {r['p99_ttft_ms']:.0f} "
            f"| {r['median_itl_ms']:.1f} / {r['p99_itl_ms']:.1f} | {r['median_tpot_ms']:.1f} "
            f"| {r['median_e2el_ms']:.0f} / {r['p99_e2el_ms']:.0f} |"
        )
    return "\n".join(lines)


def ratio_lines(rows: Sequence[dict[str, Any]], numerator: str, denominators: Sequence[str]) -> str:
    """ "- at concurrency 8: hagmoe server = 3.1x HF ..., 0.9x offline ..." lines."""
    tps = {(r["system"], int(r["concurrency"])): float(r["tokens_per_second"]) for r in rows}
    lines = []
    for c in sorted({int(r["concurrency"]) for r in rows}):
        base = tps.get((numerator, c))
        parts = [
            f"{base / tps[(d, c)]:.2f}x {d}"
            for d in denominators
            if base is not None and tps.get((d, c))
        ]
        if parts:
            lines.append(f"- concurrency {c}: {numerator} = " + ", ".join(parts))
    return "\n".join(lines)


def floor_table(rows: Sequence[dict[str, Any]], floor: dict[str, Any]) -> str:
    """| system | format | tok/s at 1 stream | floor tok/s | fraction | decode's fraction | for
    the systems that ran one stream (floor: loadtests/bandwidth.py)."""
    lines = [
        f"Bandwidth floor at 1 stream (read bandwidth {floor['bandwidth_gbs']:.1f} GB/s with "
        f"{floor['threads']} threads; floor = bandwidth / weight bytes one decode step reads; "
        "the decode's fraction leaves out each request's prefill):",
        "",
        "| system | format | bytes / token | tok/s at 1 stream | floor tok/s | fraction of floor "
        "| decode's fraction |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if int(r["concurrency"]) != 1 or "floor_fraction" not in r:
            continue
        fmt = r["format"]
        decode = r.get("decode_floor_fraction")
        lines.append(
            f"| {r['system']} | {fmt} | {floor['bytes_per_token'][fmt] / 1e6:.2f} MB "
            f"| {float(r['tokens_per_second']):,.1f} | {floor['floor_tps'][fmt]:,.1f} "
            f"| {float(r['floor_fraction']):.2f} | {'' if decode is None else f'{decode:.2f}'} |"
        )
    return "\n".join(lines)

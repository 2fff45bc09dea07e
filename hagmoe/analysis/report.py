"""The analysis as one self-contained HTML page: every figure embedded as a base64 PNG, next to
the numbers it shows; not-applicable sections say why."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from hagmoe.analysis.plots import FIGURES
from hagmoe.analysis.statistics import DIV_CAP, LayerStats, PositionCurve, Statistics

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.tok { text-align: left; font-family: monospace; }
img { max-width: 100%; border: 1px solid #eee; } .na { color: #a33; font-style: italic; }
.def { color: #555; } details { margin: 6px 0; } summary { cursor: pointer; }
"""

DEFINITIONS = {
    "expert_load": "Share of token-expert assignments each expert received (a token with K "
    "experts counts K times). White lines separate groups.",
    "group_load": "Share of tokens whose chosen group g* is each group.",
    "load_cv": "Coefficient of variation CV = std / mean of the tokens per expert (per group); "
    "0 is perfectly even, sqrt(N - 1) is every token on one expert.",
    "k_histogram": "How many experts each token used (dynamic K from the coarse entropy).",
    "k_by_position": "Mean K of the tokens at each position of their sequence (binned).",
    "entropy_by_position": "Mean normalised coarse-head entropy Hn[i] = H[i] / log(i + 1).",
    "divergence_by_position": "Jensen-Shannon divergence between the coarse-head mean attention "
    "row a_c[i] and the fine-head one a_f[i], in nats (0 = identical, ln 2 = 0.693 = disjoint).",
    "coactivation": "P(b | a): share of the tokens routed to expert a that were also routed to "
    "expert b (diagonal blank).",
}


def _fmt(v: float | int | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], token_cols: int = 0) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [
            f'<td class="tok">{c}</td>' if i < token_cols else f"<td>{c}</td>"
            for i, c in enumerate(row)
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _summary(stats: Statistics) -> str:
    header = ["layer", "load CV", "busiest expert", "idlest expert", "max / mean", "group CV"]
    header += ["mean K", "mean Hn", "mean JS", "mean KL", f"KL ≥ {DIV_CAP:g} nat"]
    rows = []
    for s in stats.layers:
        div = s.divergence
        rows.append(
            [
                str(s.layer),
                _fmt(s.load_cv),
                f"{s.busiest} ({s.expert_share[s.busiest]:.1%})",
                f"{s.idlest} ({s.expert_share[s.idlest]:.1%})",
                _fmt(s.max_over_mean, 2),
                _fmt(s.group_cv),
                _fmt(s.mean_k),
                _fmt(s.mean_entropy),
                _fmt(div.mean_js if div else None, 4),
                _fmt(div.mean_kl if div else None),
                f"{div.share_at_cap:.1%}" if div else "n/a",
            ]
        )
    return _table(header, rows)


def _counts_table(stats: Statistics, name: str) -> str:
    if name == "expert_load":
        cols = [f"e{n}" for n in range(stats.num_experts)]
        rows = [[str(s.layer), *(_fmt(c) for c in s.expert_tokens)] for s in stats.layers]
    else:
        cols = [f"g{g}" for g in range(stats.num_groups)]
        rows = [[str(s.layer), *(_fmt(c) for c in s.group_tokens or [])] for s in stats.layers]
    return _table(["layer", *cols], rows)


def _k_table(stats: Statistics) -> str:
    ks = list((stats.layers[0].k_histogram or {}).keys())
    rows = []
    for s in stats.layers:
        hist = s.k_histogram or {}
        rows.append([str(s.layer), *(_fmt(hist.get(k, 0)) for k in ks), _fmt(s.mean_k)])
    return _table(["layer", *(f"K={k}" for k in ks), "mean K"], rows)


def _curve_table(curves: list[PositionCurve | None], digits: int = 3) -> str:
    first = next(c for c in curves if c is not None)
    rows = []
    for b, start in enumerate(first.starts):
        end = start + first.width - 1
        label = str(start) if first.width == 1 else f"{start}–{end}"
        values = [_fmt(c.mean[b], digits) if c is not None else "n/a" for c in curves]
        rows.append([label, _fmt(first.count[b]), *values])
    header = ["positions", "tokens / layer", *(f"layer {i}" for i in range(len(curves)))]
    return "<details><summary>numbers</summary>" + _table(header, rows) + "</details>"


def _pairs_table(stats: Statistics) -> str:
    rows = []
    for s in stats.layers:
        for p in s.top_pairs[:5]:
            a, b = p["experts"]
            rows.append([str(s.layer), f"{a} + {b}", _fmt(p["tokens"]), _fmt(p["lift"], 2)])
    if not rows:
        return '<p class="na">no token used two experts</p>'
    return _table(["layer", "experts", "tokens on both", "lift vs independent"], rows)


def _numbers(stats: Statistics, name: str) -> str:
    layers = stats.layers
    if name in ("expert_load", "group_load"):
        return _counts_table(stats, name)
    if name == "k_histogram":
        return _k_table(stats)
    if name == "k_by_position":
        return _curve_table([s.k_by_position for s in layers])
    if name == "entropy_by_position":
        return _curve_table([s.entropy_by_position for s in layers])
    if name == "divergence_by_position":
        return _curve_table(
            [s.divergence.js_by_position if s.divergence else None for s in layers], 4
        )
    if name == "coactivation":
        return _pairs_table(stats)
    return ""


def _token_cell(layer: LayerStats, expert: int, top: int) -> str:
    lifts = (layer.top_tokens or [[]])[expert][:top]
    if not lifts:
        return "–"
    return " · ".join(
        f"{html.escape(repr(t.token)[1:-1])} <small>×{t.lift:.1f} ({t.routed}/{t.count})</small>"
        for t in lifts
    )


def _tokens_section(stats: Statistics, top: int = 20) -> str:
    parts = []
    for s in stats.layers:
        rows = [
            [str(e), f"{s.expert_share[e]:.1%}", _token_cell(s, e, top)]
            for e in range(stats.num_experts)
        ]
        table = _table(["expert", "load", "tokens by lift (×lift, routed / seen)"], rows)
        parts.append(
            f"<details{' open' if s.layer == 0 else ''}><summary>layer {s.layer}</summary>"
            f"{table}</details>"
        )
    return "".join(parts)


def _section(name: str, stats: Statistics, images: dict[str, Path], section: str | None) -> str:
    title = name.replace("_", " ")
    if section is not None and section in stats.not_applicable:
        why = html.escape(stats.not_applicable[section])
        return f'<h2>{title}</h2><p class="na">n/a: {why}</p>'
    body = _image(images[name]) if name in images else ""
    return (
        f'<h2>{title}</h2><p class="def">{html.escape(DEFINITIONS[name])}</p>'
        f"{body}{_numbers(stats, name)}"
    )


def _header(stats: Statistics, title: str) -> str:
    source = stats.source
    files = ", ".join(html.escape(Path(f).name) for f in source.get("files", []))
    k = stats.k_range
    k_text = f"K {k[0]}–{k[1]}" if stats.router == "attention" else f"top_k {k[0]}"
    facts = [
        f"router <b>{html.escape(stats.router)}</b>",
        f"{stats.num_layers} layers",
        f"N = {stats.num_experts} experts",
        f"G = {stats.num_groups} groups" if stats.num_groups else "no groups",
        k_text,
        f"<b>{stats.tokens:,}</b> tokens from {html.escape(str(source.get('kind', '?')))}: {files}",
    ]
    return f"<h1>{html.escape(title)}</h1><p>{' · '.join(facts)}</p>"


def render_report(
    stats: Statistics, images: dict[str, Path], title: str = "routing analysis"
) -> str:
    """The HTML page of `stats` with the PNGs of `images` (name -> path, from write_plots)
    embedded; sections listed in stats.not_applicable say n/a and why."""
    sections = [_section(name, stats, images, section) for name, (_, section) in FIGURES.items()]
    if "top_tokens" in stats.not_applicable:
        why = html.escape(stats.not_applicable["top_tokens"])
        tokens = f'<p class="na">n/a: {why}</p>'
    else:
        tokens = _tokens_section(stats)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"{_header(stats, title)}<h2>summary per layer</h2>{_summary(stats)}"
        f"{''.join(sections)}"
        '<h2>tokens each expert prefers</h2><p class="def">lift = P(expert | token) / '
        "P(expert); tokens seen fewer times than the minimum count are left out.</p>"
        f"{tokens}</body></html>\n"
    )

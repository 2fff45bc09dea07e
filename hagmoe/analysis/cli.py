"""`hagmoe analyze MODEL --data FILE... --out DIR` (or `--responses FILE.jsonl`): routing
statistics as JSON, PNG figures and one self-contained HTML page (docs/analysis.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hagmoe.evaluation.text_data import EvalDataError


def add_analyze_parser(subparsers: Any) -> None:
    """Register `analyze` on the `hagmoe` command's subparsers."""
    p = subparsers.add_parser(
        "analyze", help="routing statistics, figures and an HTML report over text or responses"
    )
    p.add_argument(
        "model", type=Path, nargs="?", default=None, help="model folder (optional with --responses)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", type=Path, help=".txt or .jsonl text files")
    src.add_argument(
        "--responses", nargs="+", type=Path, help="JSONL of server responses with return_routing"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON, PNGs and HTML")
    p.add_argument("--context", type=int, default=None, help="window tokens (max_position)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None, help="analyse at most this many")
    p.add_argument("--position-bins", type=int, default=32)
    p.add_argument("--top", type=int, default=20, help="tokens listed per expert")
    p.add_argument("--min-count", type=int, default=5, help="fewest occurrences for token lift")
    p.set_defaults(func=cmd_analyze)


def _records(args: argparse.Namespace) -> Any:
    from hagmoe.analysis.records import collect_from_model
    from hagmoe.analysis.responses import collect_from_responses

    if args.responses is not None:
        config = None
        if args.model is not None:
            from hagmoe.model.checkpoint import load_config

            config = load_config(args.model)
        return collect_from_responses(args.responses, config)
    if args.model is None:
        raise EvalDataError("--data needs a MODEL folder to run")
    from hagmoe.model.checkpoint import load_model
    from hagmoe.model.tokenizer import Tokenizer

    model = load_model(args.model)
    tokenizer = Tokenizer.load(args.model, vocab_size=model.config.vocab_size)
    return collect_from_model(
        model, tokenizer, args.data, args.context, args.batch_size, args.max_tokens
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from hagmoe.analysis.plots import write_plots
    from hagmoe.analysis.report import render_report
    from hagmoe.analysis.statistics import compute_statistics

    records = _records(args)
    stats = compute_statistics(records, args.position_bins, args.top, args.min_count)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "statistics.json").write_text(json.dumps(stats.as_dict(), indent=1) + "\n")
    images = write_plots(stats, args.out)
    title = f"routing analysis: {args.model if args.model else 'server responses'}"
    (args.out / "report.html").write_text(render_report(stats, images, title), encoding="utf-8")
    print(f"{stats.tokens:,} tokens, {stats.num_layers} layers ({stats.router} router)")
    for s in stats.layers:
        k = f"  mean K {s.mean_k:.3f}" if s.mean_k is not None else ""
        print(f"layer {s.layer}: load CV {s.load_cv:.3f}{k}")
    for name in stats.not_applicable:
        print(f"n/a: {name}: {stats.not_applicable[name]}")
    print(f"wrote {args.out / 'statistics.json'}, {len(images)} PNGs, {args.out / 'report.html'}")
    return 0

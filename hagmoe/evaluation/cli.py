"""`hagmoe eval MODEL --data FILE...`: bits per byte, perplexity and token accuracy as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hagmoe.evaluation.scoring import BACKENDS, evaluate_files


def add_eval_parser(subparsers: Any) -> None:
    """Register `eval` on the `hagmoe` command's subparsers."""
    p = subparsers.add_parser("eval", help="bits per byte, perplexity, token accuracy over text")
    p.add_argument("model", type=Path, help="model folder")
    p.add_argument("--data", nargs="+", required=True, type=Path, help=".txt or .jsonl files")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    p.add_argument("--context", type=int, default=None, help="window tokens (max_position)")
    p.add_argument("--stride", type=int, default=None, help="window step (context // 2)")
    p.add_argument("--backend", choices=BACKENDS, default="full")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from hagmoe.model.checkpoint import load_model
    from hagmoe.model.tokenizer import Tokenizer

    model = load_model(args.model)
    tokenizer = Tokenizer.load(args.model, vocab_size=model.config.vocab_size)
    report = evaluate_files(
        model,
        tokenizer,
        args.data,
        context=args.context,
        stride=args.stride,
        batch_size=args.batch_size,
        backend=args.backend,
        progress=not args.no_progress,
    )
    text = json.dumps(report.as_dict(), indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0

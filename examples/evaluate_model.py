"""Bits per byte, perplexity and token accuracy of a model over text files, from Python
(the same as `hagmoe eval`; docs/evaluation.md).

    python examples/evaluate_model.py FILE... [--model DIR] [--context 257 --stride 256]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hagmoe.evaluation import evaluate_files
from hagmoe.model.checkpoint import load_model
from hagmoe.model.tokenizer import Tokenizer

BUNDLED = Path(__file__).resolve().parents[1] / "hagmoe" / "assets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help=".txt or .jsonl files")
    parser.add_argument("--model", type=Path, default=BUNDLED, help="model folder")
    parser.add_argument("--context", type=int, default=257)
    parser.add_argument("--stride", type=int, default=256)
    args = parser.parse_args()
    model = load_model(args.model)
    tokenizer = Tokenizer.load(args.model, vocab_size=model.config.vocab_size)
    report = evaluate_files(model, tokenizer, args.files, args.context, args.stride)
    for row in [*report.files, report.total]:
        d = row.as_dict()
        print(
            f"{d['name']}: {d['tokens']} tokens, {d['bpb']:.4f} bits per byte, "
            f"perplexity {d['perplexity']:.2f}, accuracy {d['token_accuracy']:.3f}"
        )
    print(json.dumps(report.total.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

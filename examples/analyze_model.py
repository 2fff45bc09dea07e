"""How a model routes: per layer load, K, entropy, divergence and expert preferences over text
files, written as statistics.json, PNGs and report.html (the same as `hagmoe analyze`;
docs/analysis.md).

    python examples/analyze_model.py FILE... [--model DIR] [--out DIR] [--context 256]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hagmoe.analysis import collect_from_model, compute_statistics, render_report
from hagmoe.analysis.plots import write_plots
from hagmoe.model.checkpoint import load_model
from hagmoe.model.tokenizer import Tokenizer

BUNDLED = Path(__file__).resolve().parents[1] / "hagmoe" / "assets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help=".txt or .jsonl files")
    parser.add_argument("--model", type=Path, default=BUNDLED, help="model folder")
    parser.add_argument("--out", type=Path, default=Path("analysis"), help="output folder")
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    model = load_model(args.model)
    tokenizer = Tokenizer.load(args.model, vocab_size=model.config.vocab_size)
    records = collect_from_model(model, tokenizer, args.files, context=args.context)
    stats = compute_statistics(records)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "statistics.json").write_text(json.dumps(stats.as_dict()) + "\n")
    images = write_plots(stats, args.out)
    (args.out / "report.html").write_text(render_report(stats, images), encoding="utf-8")
    for s in stats.layers:
        mean_k = f"{s.mean_k:.2f}" if s.mean_k is not None else "n/a"
        print(
            f"layer {s.layer}: load CV {s.load_cv:.3f}, busiest expert {s.busiest} "
            f"({s.expert_share[s.busiest]:.1%}), mean K {mean_k}"
        )
    print(f"{stats.tokens} tokens; wrote {len(images)} PNGs and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `hagmoe` command: serve, generate, bench, train, import-hf, export-onnx."""

from __future__ import annotations

import hagmoe.huge_pages  # noqa: F401 (before torch, which reads its setting on import)

# isort: split
import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hagmoe.analysis.cli import add_analyze_parser
from hagmoe.engine.config import DTYPES, engine_config
from hagmoe.engine.memory import DEFAULT_MEMORY_UTILIZATION
from hagmoe.evaluation.cli import add_eval_parser
from hagmoe.model.hf_import.cli import add_import_parser
from hagmoe.onnx.cli import add_export_parser
from hagmoe.quantization.cli import add_quantize_parser
from hagmoe.quantization.format import QUANTIZATIONS
from hagmoe.training.cli import add_train_parser


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    g.add_argument(
        "--quantization",
        default="none",
        choices=list(QUANTIZATIONS),
        help="CPU weight format, quantised at load (weight-only; activations float32)",
    )
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--num-blocks", type=int, default=None, help="KV cache size in blocks")
    g.add_argument("--kv-cache-bytes", type=int, default=None, help="KV cache size in bytes")
    g.add_argument(
        "--memory-utilization",
        type=float,
        default=DEFAULT_MEMORY_UTILIZATION,
        help="share of the memory free after the weights that the KV cache may take",
    )
    g.add_argument(
        "--available-memory-bytes",
        type=int,
        default=None,
        help="bytes free after the weights, instead of measuring them",
    )
    g.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    g.add_argument("--max-num-seqs", type=int, default=64, help="bench: the concurrency")
    g.add_argument("--max-num-batched-tokens", type=int, default=512)
    g.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def cmd_bench(args: argparse.Namespace) -> int:
    from hagmoe.bench.offline import Workload, bench
    from hagmoe.model import random_model
    from hagmoe.model.checkpoint import load_model

    config = engine_config(args)
    if args.model:
        model = load_model(args.model, device=args.device, dtype=config.torch_dtype)
    else:
        model = random_model(
            args.config, seed=args.seed, dtype=config.torch_dtype, device=args.device
        )
    if config.quantization != "none":
        from hagmoe.quantization.format import WeightFormat
        from hagmoe.quantization.serving import pack_for_serving

        pack_for_serving(model, WeightFormat.named(config.quantization))
    lo, hi = args.output_len if len(args.output_len) == 2 else args.output_len * 2
    rows: list[dict[str, object]] = []
    print(
        f"model: {args.model or args.config}  router={model.config.router}  "
        f"cache bytes/token={config.bytes_per_token(model.config)} "
        f"({model.config.cache_values_per_token} values x {model.config.num_layers} layers)  "
        f"threads={torch.get_num_threads()}  device={args.device}  dtype={args.dtype}"
    )
    print(
        f"{'system':<18}{'conc':>5}{'reqs':>6}{'out tok':>9}{'secs':>8}{'tok/s':>10}"
        f"{'ttft p50':>10}{'e2e p50':>9}"
    )
    for concurrency in args.concurrency:
        work = Workload.random(
            args.num_requests or 4 * concurrency,
            args.input_len,
            lo,
            hi,
            model.config.vocab_size,
            args.seed,
        )
        results = bench(
            model,
            work,
            concurrency,
            engine_config(args, max_num_seqs=concurrency),
            naive_requests=args.naive_requests,
            baselines=not args.no_baselines,
            repeats=args.repeats,
        )
        for r in results:
            ttft = f"{r.ttft_median * 1e3:.0f}ms" if r.ttft_median is not None else "-"
            e2e = f"{r.latency_median:.2f}s" if r.latency_median is not None else "-"
            print(
                f"{r.system:<18}{r.concurrency:>5}{r.num_requests:>6}{r.output_tokens:>9}"
                f"{r.seconds:>8.2f}{r.tokens_per_second:>10.1f}{ttft:>10}{e2e:>9}"
            )
            rows.append(r.as_dict())
        engine_tps = results[0].tokens_per_second
        for r in results[1:]:
            print(f"  engine / {r.system}: {engine_tps / r.tokens_per_second:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from hagmoe.engine.llm import LLM
    from hagmoe.engine.sampling_params import SamplingParams

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    if args.backend == "onnxruntime":
        from hagmoe.onnx.cli import generate_onnx

        return generate_onnx(args, params)
    llm = LLM(args.model, config=engine_config(args))
    for completion in llm.generate(args.prompt, params):
        print(completion.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hagmoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="offline throughput against the naive and static baselines")
    b.add_argument("--config", default="bench", help="named config of a random-weight model")
    b.add_argument("--model", default=None, help="a model folder instead of --config")
    b.add_argument("--concurrency", type=int, nargs="+", default=[32])
    b.add_argument("--num-requests", type=int, default=None, help="default: 4 x concurrency")
    b.add_argument("--input-len", type=int, default=64)
    b.add_argument(
        "--output-len",
        type=int,
        nargs="+",
        default=[16, 128],
        help="N, or MIN MAX drawn uniformly with --seed",
    )
    b.add_argument(
        "--naive-requests",
        type=int,
        default=None,
        help="requests for the (slow) naive baseline; default: one batch",
    )
    b.add_argument("--no-baselines", action="store_true")
    b.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the engine and static batching this many times, alternating; report medians",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", default=None, help="write the results here")
    _engine_args(b)
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser("generate", help="generate text offline from a model folder")
    g.add_argument("--model", required=True)
    g.add_argument("prompt", nargs="+")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: --model is an export-onnx folder (needs hagmoe[onnx])",
    )
    _engine_args(g)
    g.set_defaults(func=cmd_generate)

    # The command line is the one place the library reaches the server package.
    from server.cli import add_serve_parser

    for add_parser in (
        add_serve_parser,
        add_train_parser,
        add_import_parser,
        add_export_parser,
        add_eval_parser,
        add_analyze_parser,
        add_quantize_parser,
    ):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime against the PyTorch engine at batch 1: `python -m hagmoe.onnx.bench`.

One random-weight model (a named config), one random prompt, greedy decoding with ignore_eos,
both backends in this process on the CPU with the same thread count, runs alternated; reports
the median tokens/s (new tokens over the whole request, prefill included) of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.factory import random_model
from hagmoe.onnx.exporter import export_onnx
from hagmoe.onnx.generator import OnnxGenerator


@dataclass(slots=True)
class BenchResult:
    """Median tokens/s of each backend and whether their greedy tokens agreed."""

    onnxruntime: float
    torch: float
    runs: int
    threads: int
    same_tokens: bool


def compare(
    config: str = "bench",
    prompt_len: int = 64,
    new_tokens: int = 64,
    runs: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> BenchResult:
    """Export, warm both backends up once, then time `runs` alternated runs of each."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = random_model(config, seed=seed)
    prompt = np.random.default_rng(seed).integers(0, model.config.vocab_size, prompt_len).tolist()
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    blocks = -(-(prompt_len + new_tokens) // 16)
    engine = EngineConfig(max_num_seqs=1, num_blocks=blocks, enable_prefix_caching=False)
    llm = LLM(model, config=engine)  # no prefix cache: every run prefills, as ORT does
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(model, folder)
        ort = OnnxGenerator(folder, providers=["CPUExecutionProvider"], threads=threads)
    runners: dict[str, Callable[[], list[int]]] = {
        "onnxruntime": lambda: ort.generate([prompt], params)[0].token_ids,
        "torch": lambda: llm.generate([prompt], params)[0].token_ids,
    }
    tokens = {name: run() for name, run in runners.items()}  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            rates[name].append(new_tokens / (time.perf_counter() - start))
    return BenchResult(
        onnxruntime=statistics.median(rates["onnxruntime"]),
        torch=statistics.median(rates["torch"]),
        runs=runs,
        threads=threads,
        same_tokens=tokens["onnxruntime"] == tokens["torch"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hagmoe.onnx.bench", description=__doc__)
    p.add_argument("--config", default="bench")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    r = compare(args.config, args.prompt_len, args.new_tokens, args.runs, args.threads)
    print(
        f"config={args.config} prompt={args.prompt_len} new={args.new_tokens} batch=1 "
        f"threads={r.threads} runs={r.runs} same greedy tokens={r.same_tokens}"
    )
    print(f"onnxruntime CPU  {r.onnxruntime:8.1f} tok/s (median)")
    print(f"torch engine     {r.torch:8.1f} tok/s (median)")
    print(f"onnxruntime / torch: {r.onnxruntime / r.torch:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

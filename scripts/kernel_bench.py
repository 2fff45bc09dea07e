"""The CPU kernels against torch (MKL) on the `bench` shape, side by side in one process.

    python scripts/kernel_bench.py [--config bench] [--repeats 7]

MoE: one layer's experts with random routing of 1..k_max experts a token, over the layers'
weights in turn (so they do not sit in cache), at several token counts. Linear: the q/k/v/o
shape [d, d] and the output head [V, d] at several row counts. Prints the median time per call
and GFLOP/s of each path.
"""

from __future__ import annotations

import hagmoe.huge_pages  # noqa: F401 (before torch, which reads its setting on import)

# isort: split
import argparse
from typing import cast

import torch
import torch.nn.functional as F

from hagmoe.kernels import cpu
from hagmoe.kernels.torch_experts import grouped_swiglu
from hagmoe.kernels.tuning import median_seconds
from hagmoe.model import random_model
from hagmoe.model.layer import DecoderLayer
from hagmoe.model.model import HagMoEModel


def moe_rows(model: HagMoEModel, tokens: int, repeats: int) -> str:
    cfg = model.config
    layers = [cast(DecoderLayer, layer).experts for layer in model.layers]
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, cfg.hidden_size, generator=g)
    chosen = torch.stack([torch.randperm(cfg.num_experts, generator=g)[: cfg.k_max] for _ in x])
    k = torch.randint(cfg.k_min, cfg.k_max + 1, (tokens,), generator=g)
    chosen[torch.arange(cfg.k_max)[None, :] >= k[:, None]] = -1
    scores = torch.rand(tokens, cfg.k_max, generator=g) * (chosen >= 0)
    pairs = int((chosen >= 0).sum())
    flops = 2 * pairs * 3 * cfg.hidden_size * cfg.ffn_size
    panels = [cpu.expert_panels(e.w1, e.w2, e.w3) for e in layers]
    paths = (  # the kernel, then the torch path Experts falls back to, at every size
        lambda: [cpu.moe_swiglu(x, chosen, scores, *p) for p in panels],
        lambda: [grouped_swiglu(x, chosen, scores, e.w1, e.w2, e.w3) for e in layers],
    )
    kernel, torch_path = (median_seconds(path, repeats, 3) / len(layers) for path in paths)
    return (
        f"| {tokens} | {pairs} | {kernel * 1e3:.2f} ms ({flops / kernel / 1e9:.0f}) "
        f"| {torch_path * 1e3:.2f} ms ({flops / torch_path / 1e9:.0f}) "
        f"| {torch_path / kernel:.2f}x |"
    )


def linear_rows(n: int, k: int, rows: int, repeats: int) -> str:
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(n, k, generator=g)
    x = torch.randn(rows, k, generator=g)
    panels = cpu.pack_linear(weight)
    kernel = median_seconds(lambda: cpu.linear(x, panels, n), repeats, 20)
    mkl = median_seconds(lambda: F.linear(x, weight), repeats, 20)
    flops = 2 * rows * n * k
    return (
        f"| [{n}, {k}] | {rows} | {kernel * 1e6:.0f} us ({flops / kernel / 1e9:.0f}) "
        f"| {mkl * 1e6:.0f} us ({flops / mkl / 1e9:.0f}) | {mkl / kernel:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="bench")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = random_model(args.config, seed=0)
    d, v = model.config.hidden_size, model.config.vocab_size
    with torch.inference_mode():
        print("| tokens | routed pairs | kernel (GFLOP/s) | torch (GFLOP/s) | speed-up |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for tokens in (1, 8, 32, 96, 192, 512, 1024, 2048, 4096):
            print(moe_rows(model, tokens, args.repeats), flush=True)
        print("\n| weight | rows | kernel (GFLOP/s) | MKL (GFLOP/s) | speed-up |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for n in (d, v):
            for rows in (1, 8, 32, 96, 128, 256):
                print(linear_rows(n, d, rows, args.repeats), flush=True)


if __name__ == "__main__":
    main()

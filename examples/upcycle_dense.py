"""Upcycle a dense Llama into a HAG-MoE (`hagmoe upcycle`), then compare first forwards.

A tiny random Llama is made with transformers (nothing is downloaded); with --noise 0 every
expert is an exact copy of the dense FFN and the routers start at zero, so the upcycled model's
logits equal the dense model's.

    python examples/upcycle_dense.py --out /tmp/upcycled [--noise 0.01]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

from hagmoe.model import load_model
from hagmoe.model.hf_import.upcycle import UpcycleOptions, upcycle


def tiny_dense_llama(folder: Path) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("upcycled"))
    parser.add_argument("--noise", type=float, default=0.0)
    args = parser.parse_args()
    dense = tiny_dense_llama(args.out / "dense")
    opts = UpcycleOptions(num_groups=2, experts_per_group=4, noise=args.noise)
    result = upcycle(args.out / "dense", args.out / "moe", opts)
    moe = load_model(args.out / "moe")
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = dense(ids).logits
        got = moe.forward_full(ids).logits
    diff = float((got - want).abs().max() / want.abs().max())
    cfg = result.config
    print(f"upcycled {result.source_model_type} -> {cfg.router} router, "
          f"{cfg.num_groups} groups x {cfg.experts_per_group} experts")  # fmt: skip
    print(f"max relative logit difference vs dense: {diff:.2e}")


if __name__ == "__main__":
    main()

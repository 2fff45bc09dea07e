"""The `hagmoe upcycle SRC DST` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hagmoe.errors import HagMoEError
from hagmoe.model.hf_import.upcycle import UpcycleOptions, upcycle


def add_upcycle_parser(sub: Any) -> None:
    """Register `upcycle` on the `hagmoe` command's subparsers."""
    p = sub.add_parser("upcycle", help="turn a dense Llama / Qwen2 folder into a HAG-MoE folder")
    p.add_argument("src", help="dense Hugging Face folder")
    p.add_argument("dst", help="HAG-MoE folder to write")
    p.add_argument("--router", choices=("attention", "linear"), default="attention")
    p.add_argument("--num-groups", type=int, default=2)
    p.add_argument("--experts-per-group", type=int, default=4)
    p.add_argument("--k-min", type=int, default=1)
    p.add_argument("--k-max", type=int, default=1)
    p.add_argument("--top-k", type=int, default=1, help="linear router")
    p.add_argument("--noise", type=float, default=0.01, help="relative expert noise std")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_upcycle)


def cmd_upcycle(args: argparse.Namespace) -> int:
    opts = UpcycleOptions(
        args.router,
        args.num_groups,
        args.experts_per_group,
        args.k_min,
        args.k_max,
        args.top_k,
        args.noise,
        args.seed,
    )
    try:
        result = upcycle(args.src, args.dst, opts)
    except HagMoEError as exc:
        print(f"hagmoe upcycle: error: {exc}", file=sys.stderr)
        return 2
    cfg = result.config
    print(f"upcycled {result.source_model_type} -> {args.dst}: {cfg.num_experts} experts")
    return 0

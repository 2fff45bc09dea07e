"""The `hagmoe quantize SRC DST` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hagmoe.errors import HagMoEError
from hagmoe.quantization.format import DEFAULT_GROUP_SIZE, GROUP_SIZES, SCALE_DTYPES, WeightFormat


def add_quantize_parser(sub: Any) -> None:
    """Register `quantize` on the `hagmoe` command's subparsers."""
    p = sub.add_parser("quantize", help="write a model folder with bf16 or int8 weights")
    p.add_argument("src", help="model folder (float weights)")
    p.add_argument("dst", help="folder to write")
    p.add_argument("--format", choices=["int8", "bf16"], default="int8")
    p.add_argument(
        "--group-size",
        type=int,
        choices=GROUP_SIZES,
        default=DEFAULT_GROUP_SIZE,
        help="int8: inputs per scale (0: one scale per output channel)",
    )
    p.add_argument("--scale-dtype", choices=list(SCALE_DTYPES), default="float32")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from hagmoe.quantization.checkpoint import quantize_folder

    try:
        fmt = WeightFormat.named(args.format, args.group_size, args.scale_dtype)
        quantize_folder(args.src, args.dst, fmt)
    except HagMoEError as exc:
        print(f"hagmoe quantize: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({fmt.to_dict()})")
    return 0

"""The `hagmoe import-hf SRC DST` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from hagmoe.errors import HagMoEError
from hagmoe.model.hf_import.convert import import_hf
from hagmoe.model.hf_import.registry import SUPPORTED_MODEL_TYPES
from hagmoe.model.hf_import.upcycle_cli import add_upcycle_parser

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_import_parser(sub: Any) -> None:
    """Register `import-hf` on the `hagmoe` command's subparsers."""
    p = sub.add_parser(
        "import-hf",
        help=f"convert a Hugging Face checkpoint ({', '.join(SUPPORTED_MODEL_TYPES)}) "
        "into a HAG-MoE folder",
    )
    p.add_argument("src", help="Hugging Face folder: config.json, safetensors, tokenizer files")
    p.add_argument("dst", help="native folder to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: as stored")
    p.add_argument("--max-shard-bytes", type=int, default=None, help="shard the weights")
    p.set_defaults(func=cmd_import_hf)
    add_upcycle_parser(sub)


def cmd_import_hf(args: argparse.Namespace) -> int:
    try:
        result = import_hf(
            args.src,
            args.dst,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            max_shard_bytes=args.max_shard_bytes,
        )
    except HagMoEError as exc:
        print(f"hagmoe import-hf: error: {exc}", file=sys.stderr)
        return 2
    cfg = result.config
    print(
        f"imported {result.source_model_type} -> {args.dst}: {cfg.num_layers} layers, "
        f"{cfg.num_experts} experts (top {cfg.top_k}), vocab {cfg.vocab_size}"
    )
    files = ", ".join(result.tokenizer_files) or "none (the folder will be byte-level)"
    print(f"tokenizer files: {files}")
    return 0

"""The ONNX parts of the `hagmoe` command: `export-onnx` and `generate --backend onnxruntime`."""

from __future__ import annotations

import argparse

from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.onnx.exporter import DEFAULT_OPSET


def add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `hagmoe export-onnx MODEL_DIR OUT_DIR`."""
    p = sub.add_parser(
        "export-onnx", help="export a model folder to ONNX prefill and decode graphs"
    )
    p.add_argument("model_dir", help="a checkpoint folder (config.json, model.safetensors)")
    p.add_argument("out_dir", help="where prefill.onnx, decode.onnx and manifest.json go")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from hagmoe.onnx.exporter import export_onnx

    manifest = export_onnx(args.model_dir, args.out_dir, opset=args.opset)
    print(
        f"wrote {manifest.prefill.file}, {manifest.decode.file} and manifest.json to "
        f"{args.out_dir} (opset {manifest.opset}, {manifest.config.num_layers} layers, "
        f"router={manifest.config.router})"
    )
    return 0


def generate_onnx(args: argparse.Namespace, params: SamplingParams) -> int:
    """`hagmoe generate --backend onnxruntime --model ONNX_DIR PROMPT...`: print each completion."""
    from hagmoe.onnx.generator import OnnxGenerator

    generator = OnnxGenerator(args.model, threads=args.threads, seed=args.seed)
    for completion in generator.generate(args.prompt, params):
        print(completion.text)
    return 0

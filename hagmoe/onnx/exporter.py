"""`export_onnx`: a model (or checkpoint folder) -> prefill.onnx, decode.onnx, manifest.json.

Uses torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): on torch 2.13
it needs no package beyond onnx, and its traced Shape ops keep batch and sequence dynamic.
Graphs are float32 on the CPU whatever the model's dtype and device.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from hagmoe.model.checkpoint import load_model
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from hagmoe.onnx.deps import require
from hagmoe.onnx.errors import OnnxExportError
from hagmoe.onnx.graphs import DecodeGraph, PrefillGraph, cache_parts
from hagmoe.onnx.manifest import GraphSpec, Manifest, graph_specs

DEFAULT_OPSET = 17  # LayerNormalization needs 17
EXPORTER = "torch.onnx.export (TorchScript, dynamo=False)"
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 5, 3  # distinct sizes so no axis is baked in


def export_onnx(
    model: HagMoEModel | str | Path, out_dir: str | Path, *, opset: int = DEFAULT_OPSET
) -> Manifest:
    """Write both graphs and the manifest into out_dir (created), check each graph with
    onnx.checker, and copy the tokenizer files of a checkpoint folder; returns the manifest."""
    require("onnx")
    if isinstance(model, HagMoEModel):
        source, net = None, _float32_cpu(model)
    else:
        source = Path(model)
        net = load_model(source, dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefill, decode = graph_specs(net.config, cache_parts(net))
    with torch.no_grad():
        _export(PrefillGraph(net), _prefill_inputs(net), prefill, out, opset)
        _export(DecodeGraph(net), _decode_inputs(net, decode), decode, out, opset)
    manifest = Manifest(
        net.config, opset, f"{EXPORTER}, torch {torch.__version__}", prefill, decode
    )
    manifest.save(out)
    if source is not None and source.resolve() != out.resolve():
        for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
    return manifest


def _float32_cpu(model: HagMoEModel) -> HagMoEModel:
    if model.dtype == torch.float32 and model.device.type == "cpu":
        return model.eval()
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _prefill_inputs(model: HagMoEModel) -> tuple[Tensor, ...]:
    ids = torch.randint(0, model.config.vocab_size, (_TRACE_BATCH, _TRACE_SEQ))  # [B, T]
    return ids, torch.tensor([_TRACE_SEQ, _TRACE_SEQ - 2])


def _decode_inputs(model: HagMoEModel, spec: GraphSpec) -> tuple[Tensor, ...]:
    ids = torch.randint(0, model.config.vocab_size, (_TRACE_BATCH, 1))  # [B, 1]
    lengths = torch.tensor([_TRACE_PAST, _TRACE_PAST - 2])
    sizes = {"batch": _TRACE_BATCH, "past_seq": _TRACE_PAST}
    past = [
        torch.randn([sizes[d] if isinstance(d, str) else d for d in t.shape])
        for t in spec.inputs[2:]
    ]
    return (ids, lengths, *past)


def _export(
    graph: nn.Module, args: tuple[Tensor, ...], spec: GraphSpec, out: Path, opset: int
) -> None:
    onnx = require("onnx")
    path = out / spec.file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph.eval(),
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise OnnxExportError(f"exporting {spec.file} failed: {exc}") from exc
    onnx.checker.check_model(str(path))

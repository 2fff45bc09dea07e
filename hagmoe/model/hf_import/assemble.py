"""Check a tensor plan against the checkpoint (every tensor present, used, floating and of the
shape the native model expects) and build the native tensors from it.

Legend: N experts, F expert FFN size, d hidden size.
"""

from __future__ import annotations

import torch

from hagmoe.errors import CheckpointError
from hagmoe.model.hf_import.tensor_plan import COPY, GATE_HALF, STACK, Plan, Source
from hagmoe.model.hf_import.weight_files import WeightFiles

FLOAT_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers versions saved
_MAX_LISTED = 8


def check_plan(
    plan: Plan, files: WeightFiles, expected: dict[str, tuple[int, ...]], tied: bool
) -> None:
    """CheckpointError listing every missing, unexpected, non-float or misshapen tensor."""
    present = files.names()
    used = {name for source in plan.values() for name in source.names}
    problems = [
        f"missing tensor {name!r} (needed for {native})"
        for native, source in plan.items()
        for name in source.names
        if name not in present
    ]
    ignored = {n for n in present if n.endswith(IGNORED_SUFFIXES)}
    if tied:
        ignored.add("lm_head.weight")
    problems += [
        f"unexpected tensor {name!r} (nothing in the native model takes it: unsupported feature?)"
        for name in sorted(present - used - ignored)
    ]
    if not problems:
        problems = _dtype_problems(used, files) + _shape_problems(plan, files, expected)
    if problems:
        more = len(problems) - _MAX_LISTED
        listed = "; ".join(problems[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise CheckpointError(f"cannot import {files.folder}: {listed}")


def stored_dtype(files: WeightFiles) -> torch.dtype:
    """The dtype the checkpoint stores its embedding in."""
    return FLOAT_DTYPES[files.dtype("model.embed_tokens.weight")]


def build_tensor(
    source: Source, files: WeightFiles, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The native tensor of `source`, in fresh memory on `device` in `dtype`."""
    if source.how == COPY:
        return files.get(source.names[0]).to(device=device, dtype=dtype, copy=True)
    if source.how == STACK:
        return torch.stack([files.get(n).to(device=device, dtype=dtype) for n in source.names])
    fused = files.get(source.names[0])  # [N, 2F, d]
    f = fused.shape[1] // 2
    half = fused[:, :f] if source.how == GATE_HALF else fused[:, f:]
    return half.to(device=device, dtype=dtype).contiguous()


def _dtype_problems(used: set[str], files: WeightFiles) -> list[str]:
    return [
        f"tensor {name!r} has dtype {files.dtype(name)}; expected a floating dtype"
        for name in sorted(used)
        if files.dtype(name) not in FLOAT_DTYPES
    ]


def _shape_problems(
    plan: Plan, files: WeightFiles, expected: dict[str, tuple[int, ...]]
) -> list[str]:
    problems = []
    for native, source in plan.items():
        got = _planned_shape(source, files)
        if got != expected[native]:
            names = source.names[0] + (" ..." if len(source.names) > 1 else "")
            problems.append(
                f"{names} gives {native} shape {_text(got)}; expected {_text(expected[native])}"
            )
    return problems


def _planned_shape(source: Source, files: WeightFiles) -> tuple[int, ...] | None:
    """The shape `source` builds (None when its tensors do not fit together)."""
    shapes = [files.shape(n) for n in source.names]
    if source.how == COPY:
        return shapes[0]
    if source.how == STACK:
        return (len(shapes), *shapes[0]) if len(set(shapes)) == 1 else None
    if len(shapes[0]) != 3 or shapes[0][1] % 2:
        return None
    n, two_f, d = shapes[0]
    return (n, two_f // 2, d)


def _text(shape: tuple[int, ...] | None) -> str:
    return "(inconsistent)" if shape is None else "[" + ", ".join(map(str, shape)) + "]"

"""Quantised checkpoint folders (docs/model_keys.md, "Quantised checkpoints"): config.json with
a "quantization" entry, and the quantised weights stored row-major in their format (int8 or
bf16) beside `<name>_scale` tensors of the int8 scales; every other tensor as in MODEL.md.

Legend: n, k a weight's rows and inner size, ng = ceil(k / group), N experts, F FFN size,
d hidden size, V vocab.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hagmoe.errors import CheckpointError
from hagmoe.kernels.packed import PackedExperts, PackedLinear
from hagmoe.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    _layout,
    _read_headers,
    load_config,
    load_model,
)
from hagmoe.model.experts import Experts
from hagmoe.model.linear import Linear
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer
from hagmoe.quantization.format import CONFIG_KEY, WeightFormat
from hagmoe.quantization.serving import FLOAT32_MODULES, pack_for_serving

SCALE_SUFFIX = "_scale"
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int8: "I8"}
_FROM_NAMES = {v: k for k, v in _DTYPE_NAMES.items()}


def _quantised(model: HagMoEModel) -> dict[str, tuple[torch.nn.Module | None, tuple[int, ...]]]:
    """Tensor name -> (module, its weight shape [n, k] or [N, F|d, d|F]) of every weight the
    format stores quantised: linears (not FLOAT32_MODULES), experts the kernels take, the head."""
    out: dict[str, tuple[torch.nn.Module | None, tuple[int, ...]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear) and not name.endswith(FLOAT32_MODULES):
            out[f"{name}.weight"] = (module, (module.out_features, module.in_features))
        elif isinstance(module, Experts) and PackedExperts.fits(*module.w1.shape[1:]):
            for w in ("w1", "w2", "w3"):
                out[f"{name}.{w}"] = (module, tuple(getattr(module, w).shape))
    head = "embed.weight" if model.lm_head is None else "lm_head.weight"
    out[head] = (None, (model.config.vocab_size, model.config.hidden_size))
    return out


def expected_tensors(
    model: HagMoEModel, fmt: WeightFormat
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype) of every tensor a folder of `fmt` holds."""
    plain = {n: (tuple(t.shape), "F32") for n, t in model.state_dict().items()}
    for name, (_, shape) in _quantised(model).items():
        plain[name] = (shape, _DTYPE_NAMES[fmt.torch_dtype])
        if fmt.dtype == "int8":
            groups = -(-shape[-1] // fmt.group_for(shape[-1]))
            plain[name + SCALE_SUFFIX] = (
                (*shape[:-1], groups),
                _DTYPE_NAMES[fmt.torch_scale_dtype],
            )
    return plain


def quantize_folder(
    src: str | Path, dst: str | Path, fmt: WeightFormat, tokenizer: bool = True
) -> None:
    """Write `src`'s model quantised in `fmt` to the folder `dst` (one model.safetensors)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"quantize destination {dst} is the source folder; choose another")
    model = load_model(src, dtype=torch.float32)
    names = _quantised(model)
    tensors = {n: t.detach().contiguous() for n, t in model.state_dict().items()}
    pack_for_serving(model, fmt)
    for name, (module, _) in names.items():
        if module is None:
            assert model.head_packed is not None
            values, scales = model.head_packed.stored()
        elif isinstance(module.packed, PackedLinear):
            values, scales = module.packed.stored()
        else:
            assert isinstance(module.packed, PackedExperts)
            every, every_scale = module.packed.stored()
            i = ("w1", "w2", "w3").index(name.rsplit(".", 1)[1])
            values, scales = every[i], None if every_scale is None else every_scale[i]
        tensors[name] = values.contiguous()
        if scales is not None:
            tensors[name + SCALE_SUFFIX] = scales.contiguous()
    config = model.config.replace(**{CONFIG_KEY: fmt.to_dict()})
    try:
        dst.mkdir(parents=True, exist_ok=True)
        config.save(dst / CONFIG_FILE)
        save_file(tensors, str(dst / WEIGHTS_FILE), metadata={"format": "pt"})
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {dst}: {exc}") from exc
    if tokenizer and (src / "tokenizer.json").is_file():
        Tokenizer.load(src).save(dst)


def is_quantized(folder: str | Path) -> bool:
    """Whether `folder` holds a native config.json with a "quantization" entry."""
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and CONFIG_KEY in load_config(folder).extra


def load_quantized(folder: str | Path) -> HagMoEModel:
    """A quantised folder's model on the CPU, packed for serving. Names, shapes and dtypes are
    checked against the config before any tensor is read (CheckpointError listing them)."""
    folder = Path(folder)
    config = load_config(folder)
    fmt = WeightFormat.from_dict(config.extra[CONFIG_KEY])
    with torch.device("meta"):
        model = HagMoEModel(config)
    expected = expected_tensors(model, fmt)
    entries = _read_headers(_layout(folder))
    problems = [
        f"missing tensor {n!r} {list(s)} {d}" for n, (s, d) in expected.items() if n not in entries
    ]
    problems += [f"unexpected tensor {n!r}" for n in entries if n not in expected]
    problems += [
        f"tensor {n!r}: expected {list(s)} {d}, found {list(entries[n].shape)} {entries[n].dtype}"
        for n, (s, d) in expected.items()
        if n in entries and (entries[n].shape, entries[n].dtype) != (s, d)
    ]
    if problems:
        raise CheckpointError(f"quantised checkpoint {folder}: " + "; ".join(problems[:8]))
    state: dict[str, torch.Tensor] = {}
    for path in dict.fromkeys(e.path for e in entries.values()):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if name in expected:
                    state[name] = handle.get_tensor(name).clone()
    quantised = _quantised(model)
    plain = {n: t for n, t in state.items() if n not in quantised and not n.endswith(SCALE_SUFFIX)}
    model.load_state_dict(plain, strict=False, assign=True)
    for name, (module, _) in quantised.items():
        scales = state.get(name + SCALE_SUFFIX)
        k = state[name].shape[-1]
        if module is None:
            model.head_packed = PackedLinear.from_stored(fmt, state[name], scales, _group(fmt, k))
            if model.lm_head is None:
                model.embed.weight = None  # type: ignore[assignment]
            else:
                model.lm_head.weight = None  # type: ignore[assignment]
        elif isinstance(module, Linear):
            module.packed = PackedLinear.from_stored(fmt, state[name], scales, _group(fmt, k))
            module.weight = None  # type: ignore[assignment]
        elif isinstance(module, Experts) and name.endswith(".w1"):
            base = name[: -len("w1")]
            ws = [state[base + w] for w in ("w1", "w2", "w3")]
            ss = [state.get(base + w + SCALE_SUFFIX) for w in ("w1", "w2", "w3")]
            groups = (_group(fmt, ws[0].shape[-1]), _group(fmt, ws[2].shape[-1]))
            module.packed = PackedExperts.from_stored(
                fmt, ws, None if ss[0] is None else ss, groups
            )
            module.w1 = module.w2 = module.w3 = None  # type: ignore[assignment]
    model = pack_for_serving(model.eval(), WeightFormat())  # the float32 rest, in place
    return model


def _group(fmt: WeightFormat, inner: int) -> int:
    return fmt.group_for(inner) if fmt.dtype == "int8" else 0

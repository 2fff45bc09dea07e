"""Converting a loaded model for CPU serving, in place: every linear, the experts and the output
head keep only their packed form (float32, bf16 or int8), so serving holds the weights once.
The router gates (their values feed argmax and top-k), the feedback projection and the shared
expert stay float32; the attention router's routing values are computed in float32 as before.
"""

from __future__ import annotations

import logging

import torch

from hagmoe.errors import ConfigError
from hagmoe.kernels.packed import PackedLinear
from hagmoe.model.experts import Experts
from hagmoe.model.linear import Linear
from hagmoe.model.model import HagMoEModel
from hagmoe.quantization.format import WeightFormat

logger = logging.getLogger(__name__)

FLOAT32_MODULES = ("router.gate", "feedback.proj", "shared_expert.gate")  # names ending so
FLOAT32 = WeightFormat()


def pack_for_serving(model: HagMoEModel, fmt: WeightFormat) -> HagMoEModel:
    """Pack `model` in place for the CPU kernels in `fmt` (the unpacked parameters are dropped;
    the model still runs every path, unpacking where the kernels cannot run), with q/k/v fused
    and the top-k family's one-call decode layers and step (HagMoEModel.fuse_for_decode). Returns model.
    ConfigError when the model is not float32 on the CPU."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ConfigError(
            f"quantization {fmt.dtype!r} needs a float32 model on the CPU, got "
            f"{model.dtype} on {model.device}"
        )
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Linear):
                module.pack_in_place(FLOAT32 if name.endswith(FLOAT32_MODULES) else fmt)
            elif isinstance(module, Experts) and not module.pack_in_place(fmt):
                logger.warning(
                    "experts %s keep float32 weights: sizes the kernels do not take", name
                )
        if model.head_packed is None:
            head = model.embed.weight if model.lm_head is None else model.lm_head.weight
            model.head_packed = PackedLinear.from_weight(head, fmt)
            if model.lm_head is None:
                model.embed.weight = None  # type: ignore[assignment]
            else:
                model.lm_head.weight = None  # type: ignore[assignment]
        model.fuse_for_decode()
    return model


def weight_bytes(model: HagMoEModel) -> int:
    """Bytes of the model's parameters, buffers and packed weights."""
    tensors = [*model.parameters(), *model.buffers()]
    total = sum(t.nbytes for t in tensors)
    for module in model.modules():
        packed = getattr(module, "packed", None) or getattr(module, "head_packed", None)
        total += packed.nbytes if packed is not None else 0
    return total

"""The HAG-MoE language model: embeddings, decoder layers, final norm and head.

Legend: B sequences, T tokens per sequence (or flat tokens of a step), d hidden size, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.decode_layer import DecodeModel
from hagmoe.kernels.packed import PackedLinear
from hagmoe.model.config import ModelConfig
from hagmoe.model.experts import Experts
from hagmoe.model.forward_context import ForwardContext, TrainingOptions
from hagmoe.model.layer import DecoderLayer
from hagmoe.model.linear import Linear, linear
from hagmoe.model.norms import make_norm
from hagmoe.model.routing import LayerRouting


@dataclass(slots=True)
class FullOutput:
    """The full-sequence forward's result."""

    logits: Tensor  # [B, T, V]
    routing: list[LayerRouting]  # one per layer over the B*T flat tokens (when asked)


class HagMoEModel(nn.Module):
    """Parameter names follow MODEL.md's checkpoint table exactly. Packed for serving
    (hagmoe.quantization.serving), `head_packed` holds the output head's weight and the head's
    parameter (with tie_embeddings, embed.weight, looked up from the packed head) is None."""

    head_packed: PackedLinear | None = None
    decode_kernel: DecodeModel | None = None  # the one-call decode step (fuse_for_decode)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_embed = (
            nn.Embedding(config.max_position, config.hidden_size)
            if config.position == "learned"
            else None
        )
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(self, input_ids: Tensor, ctx: ForwardContext) -> Tensor:
        """Flat token ids [T] of one step -> final hidden states [T, d] (before final_norm)."""
        x = self._embed(input_ids, ctx)
        for layer in self.layers:
            x = layer(x, ctx)
        return x

    def _embed(self, input_ids: Tensor, ctx: ForwardContext) -> Tensor:
        if self.embed.weight is None and self.head_packed is not None:
            x = self.head_packed.rows(input_ids)
        else:
            x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(ctx.positions)
        return x

    def fuse_for_decode(self) -> None:
        """Once packed for serving: each layer's fusions (DecoderLayer.fuse_for_decode) and,
        where every layer runs in one call and the head is packed, the whole decode step in
        one call (decode_logits)."""
        for layer in self.layers:
            cast(DecoderLayer, layer).fuse_for_decode()
        kernels = tuple(cast(DecoderLayer, layer).decode_kernel for layer in self.layers)
        if self.head_packed is None or any(k is None for k in kernels):
            return
        pos_embed = None if self.pos_embed is None else self.pos_embed.weight
        self.decode_kernel = DecodeModel.build(
            (self.embed.weight, pos_embed),
            kernels,  # type: ignore[arg-type]
            (self._norm_weight, getattr(self.final_norm, "bias", None)),
            self.head_packed,
            self.config.norm_eps,
        )

    def decode_logits(self, input_ids: Tensor, ctx: ForwardContext) -> Tensor | None:
        """Logits [T, V] of a decode step (one row per sequence, ctx.decode_segment) whose
        every row is sampled, in one call through decode_kernel (every layer's decisions left in
        ctx.decode_routing); None where that does not run (then forward and compute_logits do)."""
        kernel, seg = self.decode_kernel, ctx.decode_segment
        if (
            kernel is None
            or seg is None
            or ctx.training is not None
            or not kernel.takes(input_ids.shape[0])
        ):
            return None
        if not ctx.cached("cpu_kernels", lambda: cpu.enabled_for(self._norm_weight)):
            return None
        assert ctx.kv_caches is not None
        rows = cast(DecoderLayer, self.layers[0]).decode_rows(ctx, seg)
        logits, routing = kernel(input_ids, rows, ctx.kv_caches)
        ctx.decode_routing = routing
        if ctx.keeps_routing:
            for i, layer in enumerate(self.layers):
                cast(DecoderLayer, layer).keep_decided(routing.layer(i), ctx)
        return logits

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """hidden [..., d] -> logits [..., V]."""
        if self.head_packed is not None:
            return self.head_packed(self.final_norm(hidden))
        return linear(self.final_norm(hidden), self._head_weight)

    def pack_cpu_weights(self) -> None:
        """Pack every weight the float32 CPU kernels take (linears, experts, the output head)
        now, so that no request pays for it; a no-op where the kernels do not run."""
        if not cpu.enabled_for(self._norm_weight):
            return
        for module in self.modules():
            if isinstance(module, (Linear, Experts)):
                module.pack_cpu_weights()
        if self.head_packed is None:
            cpu.linear_panels(self._head_weight)

    @property
    def _head_weight(self) -> Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward_full(
        self,
        input_ids: Tensor,
        *,
        return_routing: bool = False,
        training: TrainingOptions | None = None,
    ) -> FullOutput:
        """Full-sequence causal forward of input_ids [B, T] (right-padded rows are fine); with
        `training`, the routing records carry what the training objective needs."""
        b, t = input_ids.shape
        if t > self.config.max_position and self.pos_embed is not None:
            raise ValueError(f"sequence length {t} exceeds max_position {self.config.max_position}")
        ctx = ForwardContext.dense(
            b,
            t,
            input_ids.device,
            return_routing=return_routing,
            training=training,
        )
        hidden = self(input_ids.reshape(-1), ctx)
        return FullOutput(self.compute_logits(hidden).view(b, t, -1), ctx.routing)

    @property
    def _norm_weight(self) -> Tensor:
        """final_norm's weight: a parameter that packing for serving never drops."""
        return cast(Tensor, self.final_norm.weight)

    @property
    def device(self) -> torch.device:
        return self._norm_weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' and cache's dtype (packed weights may be narrower)."""
        return self._norm_weight.dtype

"""One call per decoder layer, or per model, for decode steps (decode_layer.c; the linear or the
attention router, with or without feedback): the packed weights are described once, in C structs
that keep their addresses, and each step passes its rows' positions and cache slots once for
all layers.

Legend: B decode rows (one per sequence), d hidden size, hd head dim, nb blocks per sequence,
K experts per token, L layers, V vocab, G groups, N experts, R feedback size.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedExperts, PackedLinear
from hagmoe.kernels.tuning import tuning

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
FORMAT_CODES = {"float32": 0, "bfloat16": 1, "int8": 2}


class _Weight(ctypes.Structure):
    _fields_ = [
        ("panels", _P), ("scales", _P), ("bias", _P), ("n", _I64), ("k", _I64),
        ("group", _I64), ("fmt", _I32), ("scale_bf16", _I32),
    ]  # fmt: skip


class _Experts(ctypes.Structure):
    _fields_ = [
        ("gate_up", _P), ("gate_up_scales", _P), ("down", _P), ("down_scales", _P),
        ("experts", _I64), ("d", _I64), ("F", _I64), ("group_d", _I64), ("group_F", _I64),
        ("fmt", _I32), ("scale_bf16", _I32),
    ]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm_w", _P), ("attn_norm_b", _P), ("moe_norm_w", _P), ("moe_norm_b", _P),
        ("qkv", _Weight), ("o", _Weight), ("gate", _Weight), ("experts", _Experts),
        ("expert_embed", _P), ("feedback", _Weight),
        ("heads", _I64), ("kv_heads", _I64), ("hd", _I64), ("top_k", _I64), ("window", _I64),
        ("coarse", _I64), ("groups", _I64), ("per_group", _I64), ("k_min", _I64),
        ("norm_eps", _F32), ("alpha", _F32), ("mu", _F32), ("gamma", _F32),
        ("normalize_topk", _I32), ("rope", _I32),
    ]  # fmt: skip


class _Model(ctypes.Structure):
    _fields_ = [
        ("embed", _P), ("pos_embed", _P), ("layers", _P), ("num_layers", _I64), ("norm_w", _P),
        ("norm_b", _P), ("head", _Weight), ("norm_eps", _F32),
    ]  # fmt: skip


class _Routing(ctypes.Structure):
    _fields_ = [("experts", _P), ("scores", _P), ("group", _P), ("k", _P), ("entropy", _P)]


class _Rows(ctypes.Structure):
    _fields_ = [
        ("cos", _P), ("sin", _P), ("slot_mapping", _P), ("block_table", _P), ("query_pos", _P),
        ("batch", _I64), ("blocks_per_seq", _I64), ("block_size", _I64), ("threads", _I32),
    ]  # fmt: skip


def _addr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _scale_bf16(scales: Tensor | None) -> int:
    return int(scales is not None and scales.dtype == torch.bfloat16)


def _weight(w: PackedLinear, bias: Tensor | None) -> _Weight:
    return _Weight(
        _addr(w.panels), _addr(w.scales), _addr(bias), w.n, w.k, w.group,
        FORMAT_CODES[w.fmt.dtype], _scale_bf16(w.scales),
    )  # fmt: skip


def _experts(e: PackedExperts, d: int, ffn: int) -> _Experts:
    gate_up, down = e.panels
    gu_scales, down_scales = e.scales if e.scales is not None else (None, None)
    return _Experts(
        _addr(gate_up), _addr(gu_scales), _addr(down), _addr(down_scales), e.num_experts, d,
        ffn, *e.groups, FORMAT_CODES[e.fmt.dtype], _scale_bf16(gu_scales),
    )  # fmt: skip


@dataclass(slots=True)
class DecodeRows:
    """A decode step's rows for every layer: positions' cos / sin [B, hd] (None without rope),
    slot_mapping [B], block_table [B, nb], query_pos [B] (the tensors stay referenced here)."""

    tensors: tuple[Tensor | None, ...]
    struct: _Rows

    @classmethod
    def build(
        cls,
        rope: tuple[Tensor, Tensor] | None,
        slot_mapping: Tensor,
        block_table: Tensor,
        query_pos: Tensor,
        block_size: int,
    ) -> DecodeRows:
        cos, sin = (t.contiguous() for t in rope) if rope is not None else (None, None)
        tensors = (cos, sin, slot_mapping.contiguous(), block_table.contiguous(),
                   query_pos.reshape(-1).contiguous())  # fmt: skip
        struct = _Rows(
            *(_addr(t) for t in tensors), block_table.shape[0], block_table.shape[1], block_size,
            torch.get_num_threads(),
        )  # fmt: skip
        return cls(tensors, struct)


@dataclass(frozen=True, slots=True)
class AttentionRouting:
    """The attention router's part of a one-call layer: its routing values' weight [G + N, d]
    (float32: W_g / sqrt(d), then every group's W_e), sizes, coarse heads and mu_H."""

    values: PackedLinear
    sizes: cpu.RouterSizes
    coarse_heads: int
    entropy_mean: float


@dataclass(frozen=True, slots=True)
class FeedbackWeights:
    """The expert-identity feedback of a one-call layer: embeddings [N, R], projection [d, R]."""

    expert_embed: Tensor
    proj: PackedLinear
    gamma: float


@dataclass(slots=True)
class DecodeRouting:
    """A one-call decode's decisions, per layer [B, ...] or stacked [L, B, ...]: experts and
    scores [.., K] (-1 / 0 past a row's k); the attention router's group, k and normalised
    entropy [..] (None with the linear router)."""

    experts: Tensor
    scores: Tensor
    group: Tensor | None = None
    k: Tensor | None = None
    entropy: Tensor | None = None

    @classmethod
    def empty(cls, shape: tuple[int, ...], k: int, attention: bool) -> DecodeRouting:
        """Outputs for rows of `shape` ([B] or [L, B]) choosing up to k experts."""
        experts, scores = torch.empty(*shape, k, dtype=torch.int64), torch.empty(*shape, k)
        if not attention:
            return cls(experts, scores)
        per_row = torch.empty(2, *shape, dtype=torch.int64)
        return cls(experts, scores, per_row[0], per_row[1], torch.empty(shape))

    def layer(self, index: int) -> DecodeRouting:
        """Layer `index`'s decisions of stacked ones."""
        rows = (None if t is None else t[index] for t in (self.group, self.k, self.entropy))
        return DecodeRouting(self.experts[index], self.scores[index], *rows)

    def struct(self) -> _Routing:
        fields = (self.experts, self.scores, self.group, self.k, self.entropy)
        return _Routing(*(_addr(t) for t in fields))


@dataclass(slots=True, eq=False)
class DecodeLayer:
    """A decoder layer's weights for hagmoe_decode_layer; it holds the tensors whose addresses
    the struct keeps (norm weights and biases, the packed q/k/v, o, router, experts, feedback)."""

    tensors: tuple[object, ...]
    struct: _Layer
    top_k: int  # K: the linear router's top_k, the attention router's k_max
    attention: bool  # the attention router (it reads and writes the RV cache)
    float32: bool  # the weights' format

    @classmethod
    def build(
        cls,
        norms: tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]],
        projections: tuple[tuple[PackedLinear, Tensor | None], tuple[PackedLinear, Tensor | None]],
        router: PackedLinear | AttentionRouting,
        experts: PackedExperts,
        feedback: FeedbackWeights | None,
        sizes: tuple[int, int, int, int, int],
        norm_eps: float,
        normalize_topk: bool,
        rope: bool,
    ) -> DecodeLayer:
        """norms: (weight, bias or None for RMSNorm) before attention and before the experts;
        projections: the packed q/k/v and o with their biases; router: the linear gate [N, d]
        or the attention router's parts; sizes: heads, kv_heads, head_dim, top_k (ignored with
        the attention router: its k_max), sliding window (0: none)."""
        (attn_w, attn_b), (moe_w, moe_b) = norms
        qkv, o_proj = projections
        heads, kv_heads, hd, top_k, window = sizes
        d, ffn = o_proj[0].n, experts.panels[1].shape[2]
        gate, top_k, routed, (alpha, mu) = _router_fields(router, top_k)
        embed, proj, gamma = (None, _Weight(), 0.0) if feedback is None else (
            feedback.expert_embed, _weight(feedback.proj, None), feedback.gamma,
        )  # fmt: skip
        struct = _Layer(
            _addr(attn_w), _addr(attn_b), _addr(moe_w), _addr(moe_b), _weight(*qkv),
            _weight(*o_proj), _weight(gate, None), _experts(experts, d, ffn), _addr(embed), proj,
            heads, kv_heads, hd, top_k, window, *routed, norm_eps, alpha, mu, gamma,
            int(normalize_topk), int(rope),
        )  # fmt: skip
        tensors = (attn_w, attn_b, moe_w, moe_b, qkv, o_proj, router, experts, feedback)
        return cls(tensors, struct, top_k, routed[0] > 0, qkv[0].fmt.is_float32)

    def takes(self, rows: int) -> bool:
        """Whether a decode step of `rows` rows runs here: any with bf16 / int8 weights; with
        float32 ones up to the rows where MKL beats the linear kernel even on a plain weight
        (tuning's plain_rows). Below that the one call's saving on the layer's other work
        outweighs MKL's lead over the kernel on packed panels (panel_rows): docs/benchmarks.md,
        "the one-call step past panel_rows"."""
        return not self.float32 or rows <= tuning().plain_rows

    def __call__(
        self, x: Tensor, rows: DecodeRows, caches: list[Tensor]
    ) -> tuple[Tensor, DecodeRouting]:
        """x [B, d] -> the layer's output [B, d] (a new tensor) and its decisions; each row's
        K, V written into caches[0] at its slot (its routing values into caches[1] with the
        attention router)."""
        lib = cpu.library()
        assert lib is not None and all(_cache_ok(c) for c in caches)
        x = x.contiguous()
        out = x.new_empty(x.shape)
        routing = DecodeRouting.empty((x.shape[0],), self.top_k, self.attention)
        rv_cache = caches[1].data_ptr() if self.attention else None
        status = lib.hagmoe_decode_layer(
            ctypes.byref(self.struct), ctypes.byref(rows.struct), x.data_ptr(), out.data_ptr(),
            caches[0].data_ptr(), rv_cache, ctypes.byref(routing.struct()),
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"decode layer scratch for {x.shape[0]} rows")
        return out, routing


def _router_fields(
    router: PackedLinear | AttentionRouting, top_k: int
) -> tuple[PackedLinear, int, tuple[int, int, int, int], tuple[float, float]]:
    """The struct's gate weight, K, (coarse heads, groups, experts per group, k_min) and
    (alpha, mu_H) for either router (zeros for the linear one)."""
    if isinstance(router, PackedLinear):
        return router, top_k, (0, 0, 0, 0), (0.0, 0.0)
    r = router.sizes
    counts = (router.coarse_heads, r.num_groups, r.experts_per_group, r.k_min)
    return router.values, r.k_max, counts, (r.entropy_alpha, router.entropy_mean)


def _cache_ok(cache: Tensor) -> bool:
    return cache.is_contiguous() and cache.dtype == torch.float32


@dataclass(slots=True, eq=False)
class DecodeModel:
    """Every layer of a model, its embeddings, final norm and head for hagmoe_decode_model; it
    holds what the struct's addresses point to (the layers' array and the tensors)."""

    layers: tuple[DecodeLayer, ...]
    tensors: tuple[object, ...]
    structs: ctypes.Array[_Layer]
    struct: _Model
    vocab: int

    @classmethod
    def build(
        cls,
        embeddings: tuple[Tensor | None, Tensor | None],
        layers: tuple[DecodeLayer, ...],
        norm: tuple[Tensor, Tensor | None],
        head: PackedLinear,
        norm_eps: float,
    ) -> DecodeModel:
        """embeddings: the token embedding [V, d] (None: tied, read from the packed head) and the
        learned position embedding [max_position, d] (None: none), float32; norm: the final
        norm's weight and bias (None for RMSNorm); head: the packed [V, d]."""
        assert len({(layer.top_k, layer.attention) for layer in layers}) == 1
        embed, pos_embed = (None if t is None else t.detach().contiguous() for t in embeddings)
        structs = (_Layer * len(layers))(*(layer.struct for layer in layers))
        struct = _Model(
            _addr(embed), _addr(pos_embed), ctypes.addressof(structs), len(layers),
            _addr(norm[0]), _addr(norm[1]), _weight(head, None), norm_eps,
        )  # fmt: skip
        return cls(layers, (embed, pos_embed, *norm, head), structs, struct, head.n)

    def takes(self, rows: int) -> bool:
        """Whether a decode step of `rows` rows runs here (DecodeLayer.takes)."""
        return self.layers[0].takes(rows)

    def __call__(
        self, input_ids: Tensor, rows: DecodeRows, caches: list[list[Tensor]]
    ) -> tuple[Tensor, DecodeRouting]:
        """Token ids [B] (int64; each < V at a position < max_position, as the engine checks)
        -> logits [B, V] and every layer's decisions stacked [L, B, ...]; each layer's K, V
        written into its caches[l][0] (its routing values into caches[l][1] with the attention
        router) at the rows' slots."""
        lib = cpu.library()
        first = self.layers[0]
        assert lib is not None and len(caches) == len(self.layers)
        assert all(_cache_ok(c) for parts in caches for c in parts)
        ids = input_ids.contiguous()
        assert ids.dtype == torch.int64 and ids.shape == (rows.struct.batch,)
        b = ids.shape[0]
        logits = torch.empty(b, self.vocab)
        routing = DecodeRouting.empty((len(self.layers), b), first.top_k, first.attention)
        kv = (_P * len(caches))(*(c[0].data_ptr() for c in caches))
        rv = (_P * len(caches))(*(c[1].data_ptr() for c in caches)) if first.attention else None
        status = lib.hagmoe_decode_model(
            ctypes.byref(self.struct), ctypes.byref(rows.struct), ids.data_ptr(), kv, rv,
            logits.data_ptr(), ctypes.byref(routing.struct()),
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"decode model scratch for {b} rows")
        return logits, routing

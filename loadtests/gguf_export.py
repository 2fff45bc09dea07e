"""A hagmoe model as a GGUF file for llama.cpp, at f32, bf16 or q8_0 (loadtests/compare.py's
llama.cpp rows; docs/loadtests.md).

Only the standard top-k family maps: llama.cpp's "llama" architecture with experts, written as
its convert_hf_to_gguf.py writes a Mixtral. The correspondence, hagmoe -> GGUF:

    embed.weight                          token_embd.weight
    layers.N.attn_norm.weight             blk.N.attn_norm.weight        (f32 in every format)
    layers.N.attn.{q,k,v,o}_proj.weight   blk.N.attn_{q,k,v,output}.weight
    layers.N.moe_norm.weight              blk.N.ffn_norm.weight         (f32)
    layers.N.router.gate.weight           blk.N.ffn_gate_inp.weight     (f32, as the converter)
    layers.N.experts.w1 / w2 / w3         blk.N.ffn_gate_exps / ffn_up_exps / ffn_down_exps
    final_norm.weight                     output_norm.weight            (f32)
    lm_head.weight                        output.weight (absent when tied: llama.cpp reuses
                                          token_embd)

hagmoe's rope is the rotate-half (NeoX / HF) convention while the llama architecture rotates
adjacent pairs, so q and k rows are permuted within each head as the converter's
LlamaModel.permute does (row 2i <- i, row 2i+1 <- i + hd/2); q . k is unchanged. llama.cpp's
llama architecture always renormalises the top-k weights (build_moe_ffn(..., norm_w = true)),
which is hagmoe's linear router with normalize_topk = true: softmax over all experts, top k,
divided by their sum (= a softmax over the k chosen logits, Mixtral's gate).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, QuantError
from gguf.quants import quantize

from hagmoe.model import HagMoEModel, ModelConfig, Tokenizer
from loadtests.gguf_vocab import GGUFVocab, gguf_vocab

ARCH = "llama"
FORMATS: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
}
FILE_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}
F32_TENSORS = ("_norm.weight", "ffn_gate_inp.weight")  # kept f32 in every format
# Config keys that make a named shape (bench, tiny, ...) the standard top-k family that maps:
# Mixtral's layout, as hagmoe.model.hf_import's config map gives it.
TOPK_OVERRIDES: dict[str, object] = {
    "router": "linear",
    "normalize_topk": True,
    "feedback_dim": 0,
    "position": "rope",
    "norm": "rmsnorm",
    "attn_bias": False,
    "attn_out_bias": False,
}


class GGUFExportError(ValueError):
    """The model (a config key, or its weights) has no llama.cpp llama-architecture equivalent."""


def check_exportable(config: ModelConfig) -> None:
    """Raise GGUFExportError naming the first config key that llama.cpp's llama architecture
    (top-k experts, Mixtral's layout) cannot express."""
    wanted: list[tuple[str, object, object]] = [
        ("router", config.router, "linear"),
        ("normalize_topk", config.normalize_topk, True),
        ("position", config.position, "rope"),
        ("norm", config.norm, "rmsnorm"),
        ("attn_bias", config.attn_bias, False),
        ("attn_out_bias", config.attn_out_bias, False),
        ("feedback_dim", config.feedback_dim, 0),
        ("shared_expert_size", config.shared_expert_size, 0),
        ("qk_norm_type", config.qk_norm_type, None),
        ("clip_qkv", config.clip_qkv, None),
        ("sliding_window", config.sliding_window, None),
        ("rope_scaling", config.rope_scaling, None),
    ]
    for key, value, needed in wanted:
        if value != needed:
            raise GGUFExportError(
                f"config key {key!r} = {value!r}: llama.cpp's llama architecture needs "
                f"{needed!r} (only the standard top-k family maps to GGUF)"
            )


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows [heads * hd, d] of q or k from rotate-half to adjacent-pair order, per head: the
    converter's LlamaModel.permute (reshape(heads, 2, hd/2, d).swapaxes(1, 2))."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensors(model: HagMoEModel) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in the GGUF row layout) for every tensor of the file."""
    cfg = model.config
    check_exportable(cfg)
    state = {k: v for k, v in model.state_dict().items() if v is not None}

    def get(name: str) -> np.ndarray:
        if name not in state:
            raise GGUFExportError(f"weight {name!r} is missing (packed for serving?)")
        return state[name].detach().to(device="cpu", dtype=torch.float32).numpy()

    yield "token_embd.weight", get("embed.weight")
    for i in range(cfg.num_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        yield b + "attn_norm.weight", get(p + "attn_norm.weight")
        yield b + "attn_q.weight", permute_rope(get(p + "attn.q_proj.weight"), cfg.num_heads)
        yield b + "attn_k.weight", permute_rope(get(p + "attn.k_proj.weight"), cfg.kv_heads)
        yield b + "attn_v.weight", get(p + "attn.v_proj.weight")
        yield b + "attn_output.weight", get(p + "attn.o_proj.weight")
        yield b + "ffn_norm.weight", get(p + "moe_norm.weight")
        yield b + "ffn_gate_inp.weight", get(p + "router.gate.weight")
        yield b + "ffn_gate_exps.weight", get(p + "experts.w1")
        yield b + "ffn_up_exps.weight", get(p + "experts.w2")
        yield b + "ffn_down_exps.weight", get(p + "experts.w3")
    yield "output_norm.weight", get("final_norm.weight")
    if not cfg.tie_embeddings:
        yield "output.weight", get("lm_head.weight")


def tensor_type(name: str, array: np.ndarray, fmt: str) -> GGMLQuantizationType:
    """The GGML type of one tensor in `fmt`: 1-D tensors, norms and the router gate stay f32
    (as convert_hf_to_gguf.py keeps them)."""
    if fmt not in FORMATS:
        raise GGUFExportError(f"unknown GGUF format {fmt!r}; choose one of {sorted(FORMATS)}")
    if array.ndim <= 1 or name.endswith(F32_TENSORS):
        return GGMLQuantizationType.F32
    return FORMATS[fmt]


def encode_tensor(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The array in `qtype` as gguf-py writes it (float32 as is; bf16 and q8_0 as bytes)."""
    return quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def add_metadata(writer: GGUFWriter, config: ModelConfig, fmt: str, name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(int(FILE_TYPES[fmt]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_key_length(config.hd)
    writer.add_value_length(config.hd)
    writer.add_rope_dimension_count(config.hd)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_expert_count(config.num_experts)
    writer.add_expert_used_count(config.top_k)


def add_vocab(writer: GGUFWriter, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for key, value in (
        ("bos", vocab.bos_token_id),
        ("eos", vocab.eos_token_id),
        ("pad", vocab.pad_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(False)  # hagmoe's servers encode prompts without special tokens
    writer.add_add_eos_token(False)


def export_gguf(
    model: HagMoEModel, tokenizer: Tokenizer, path: str | Path, fmt: str, name: str = "hagmoe"
) -> Path:
    """Write `model` with `tokenizer` as a GGUF file in `fmt` (f32, bf16, q8_0); returns the
    path. A q8_0 tensor whose rows are not a multiple of 32 falls back to f32."""
    if fmt not in FORMATS:
        raise GGUFExportError(f"unknown GGUF format {fmt!r}; choose one of {sorted(FORMATS)}")
    check_exportable(model.config)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), ARCH)
    try:
        add_metadata(writer, model.config, fmt, name)
        add_vocab(writer, vocab)
        for tensor_name, array in gguf_tensors(model):
            qtype = tensor_type(tensor_name, array, fmt)
            try:
                data = encode_tensor(array, qtype)
            except QuantError:
                qtype = GGMLQuantizationType.F32
                data = encode_tensor(array, qtype)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path

"""Tiny random transformers MoE models and a tiny BPE tokenizer for the importer's tests.

Import only after `pytest.importorskip("transformers")`. Nothing is downloaded: every model is
built from its config class, every tokenizer trained here on a few sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 160
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]  # ids 0..3
BOS, EOS, PAD = 2, 3, 1
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a mixture of experts routes every token to a few experts",
    "hello world, hello experts! routing tables and gates",
    "sparse models keep most weights idle for each token",
]
PROMPTS = ["the quick brown fox", "hello experts", "a mixture of sparse gates routes tokens well"]

COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    max_position_embeddings=256,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    tie_word_embeddings=False,
)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral": ("Mixtral", dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        "Qwen2Moe",
        dict(
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            intermediate_size=96,
            num_experts=6,
            num_experts_per_tok=2,
        ),
    ),
    "qwen3_moe": (
        "Qwen3Moe",
        dict(moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
    ),
    "olmoe": ("Olmoe", dict(intermediate_size=32, num_experts=8, num_experts_per_tok=2)),
}


def hf_model(family: str, seed: int = 0, **overrides: Any) -> transformers.PreTrainedModel:
    """A float32 eval-mode model of `family` with weights drawn so routing and logits vary."""
    prefix, specific = FAMILIES[family]
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForCausalLM")
    config = config_class(**{**COMMON, **specific, **overrides})
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.15 * torch.randn(param.shape, generator=gen))
    model.generation_config.eos_token_id = None  # greedy runs always make max_new_tokens
    return model


def tokenizer() -> Tokenizer:
    """A BPE tokenizer (Metaspace pre-tokenizer) with fewer than VOCAB ids."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    assert tok.get_vocab_size() <= VOCAB
    return tok


def save_hf_folder(model: transformers.PreTrainedModel, folder: Path, **save: Any) -> Path:
    """save_pretrained (safetensors) plus the tokenizer files transformers writes."""
    model.save_pretrained(folder, safe_serialization=True, **save)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return folder


def hf_logits(model: transformers.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """[T, V] logits of one prompt."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """MODEL.md's measure: max |diff| / max |ref|."""
    return float((got - ref).abs().max() / ref.abs().max())

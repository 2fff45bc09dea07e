"""Upcycling a dense Llama / Qwen2 folder: the first forward equals the dense model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hagmoe.model import load_model  # noqa: E402
from hagmoe.model.hf_import.upcycle import UpcycleOptions, upcycle  # noqa: E402

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _dense(tmp: Path, family: str) -> tuple[Path, transformers.PreTrainedModel]:
    config = getattr(transformers, f"{family}Config")(
        **COMMON, tie_word_embeddings=family == "Qwen2"
    )
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).float().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if name.endswith("norm.weight") else 0.15
            p.copy_(
                (1.0 if name.endswith("norm.weight") else 0.0)
                + scale * torch.randn(p.shape, generator=gen)
            )
    folder = tmp / family
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def _max_diff(hf: transformers.PreTrainedModel, dst: Path) -> float:
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
        got = load_model(dst).forward_full(ids)
    got = got.logits if hasattr(got, "logits") else got
    return float((got.reshape(ref.shape) - ref).abs().max())


@pytest.mark.parametrize("family", ["Llama", "Qwen2"])
@pytest.mark.parametrize("router", ["attention", "linear"])
def test_noise_free_upcycle_matches_dense_logits(tmp_path: Path, family: str, router: str) -> None:
    src, hf = _dense(tmp_path, family)
    upcycle(src, tmp_path / "moe", UpcycleOptions(router=router, noise=0.0))
    assert _max_diff(hf, tmp_path / "moe") <= 1e-4


def test_noisy_upcycle_differs_per_expert_but_stays_close(tmp_path: Path) -> None:
    src, hf = _dense(tmp_path, "Llama")
    upcycle(src, tmp_path / "moe", UpcycleOptions(noise=0.01, seed=3))
    w1 = load_model(tmp_path / "moe").layers[0].experts.w1
    assert not torch.equal(w1[0], w1[1])
    diff = _max_diff(hf, tmp_path / "moe")
    assert 1e-6 < diff < 0.5


def test_cli_writes_a_folder_load_model_accepts(tmp_path: Path) -> None:
    from hagmoe.cli import main

    src, hf = _dense(tmp_path, "Qwen2")
    rc = main(["upcycle", str(src), str(tmp_path / "cli"), "--noise", "0", "--num-groups", "3"])
    assert rc == 0
    assert load_model(tmp_path / "cli").config.num_experts == 12
    assert _max_diff(hf, tmp_path / "cli") <= 1e-4

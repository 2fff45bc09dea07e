"""Validation: mean loss, bits per byte and mean experts per token over the validation split.

bits per byte = total nats / (ln 2 * UTF-8 bytes of the validation text the targets cover).

Legend: B sequences, T tokens per sequence, V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hagmoe.model.model import HagMoEModel
from hagmoe.training.dataset import eval_batches


@dataclass(slots=True)
class EvalResult:
    """One validation pass."""

    loss: float  # mean nats per target token
    bpb: float  # bits per UTF-8 byte of the covered text
    mean_k: float  # mean experts per token, over tokens and layers
    tokens: int
    bytes: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "bpb": self.bpb,
            "mean_k": self.mean_k,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@torch.no_grad()
def evaluate(
    model: HagMoEModel,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_tokens: int = 0,
) -> EvalResult:
    """Score non-overlapping windows of `tokens` (up to max_tokens targets) with dynamic K; the
    model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    nats, count, nbytes, k_sum = 0.0, 0, 0, 0.0
    lengths = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))  # [V]
    for inputs, targets in eval_batches(tokens, seq_len, batch_size, max_tokens):
        out = model.forward_full(inputs.to(model.device), return_routing=True)
        logits = out.logits.float().flatten(0, 1)  # [B*T, V]
        flat = targets.reshape(-1).to(model.device)  # [B*T]
        nats += float(F.cross_entropy(logits, flat, reduction="sum"))
        count += flat.numel()
        nbytes += int(lengths[flat.cpu()].sum())
        k_sum += sum(float(r.k.sum()) for r in out.routing) / len(out.routing)
    model.train(was_training)
    return EvalResult(
        loss=nats / max(count, 1),
        bpb=nats / (math.log(2) * max(nbytes, 1)),
        mean_k=k_sum / max(count, 1),
        tokens=count,
        bytes=nbytes,
    )


def unigram_bits_per_byte(
    train: np.ndarray, val: np.ndarray, token_bytes: np.ndarray, vocab_size: int
) -> float:
    """Bits per byte of the validation targets (val[1:], as `evaluate` scores them) under a
    unigram model of the training tokens with add-one smoothing: the floor a language model
    of the same tokenizer must beat."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size) + 1.0  # [V]
    log2_p = np.log2(counts / counts.sum())  # [V]
    targets = np.asarray(val, dtype=np.int64)[1:]
    return float(-log2_p[targets].sum() / np.asarray(token_bytes)[targets].sum())

"""Token data for training: a corpus split into train / validation, a byte-level BPE trained on the
training split, both splits as token arrays (.npy, memory-mapped), and deterministic batches.

A data folder holds tokenizer.json, train.npy, val.npy and meta.json; meta.json records the data
config it was built from (and the SHA-256 of a given tokenizer), so a folder is rebuilt only when
that changes. Documents are encoded separately and each is followed by `<|endoftext|>`. Fine-tuning
(`--init-from DIR`) encodes with the model folder's tokenizer.json instead of training one.

Legend: B sequences per batch, T tokens per sequence, V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from torch import Tensor

from hagmoe.model.tokenizer import Tokenizer
from hagmoe.training.bpe import EOS_TOKEN, token_byte_lengths, train_bpe
from hagmoe.training.config import DataConfig
from hagmoe.training.corpus import Document, shakespeare_documents, text_documents
from hagmoe.training.errors import DataError

META_FILE = "meta.json"
TRAIN_FILE = "train.npy"
VAL_FILE = "val.npy"
TOKENIZER_FILE = "tokenizer.json"
_PATH_KEYS = ("data_dir", "download_dir")


@dataclass(slots=True)
class TokenData:
    """Both splits' tokens, the tokenizer and each token's byte length."""

    folder: Path
    train: np.ndarray  # [N_train] token ids
    val: np.ndarray  # [N_val] token ids
    token_bytes: np.ndarray  # [V] UTF-8 bytes each token stands for
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def prepare_data(
    config: DataConfig, folder: str | Path, tokenizer_file: Path | None = None
) -> TokenData:
    """The data in folder, built there first when absent or built from a different data config
    (or tokenizer). tokenizer_file: encode with this tokenizer.json instead of training a BPE."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None or meta.get("data") != _fingerprint(config, tokenizer_file):
        build_data(config, folder, tokenizer_file)
    return load_data(folder)


def build_data(config: DataConfig, folder: Path, tokenizer_file: Path | None = None) -> None:
    """Read the corpus, split it, train the tokenizer on the training split (or read
    tokenizer_file), write the shards."""
    train_texts, val_texts, val_names = split_corpus(config)
    hf = _tokenizer(train_texts, config, tokenizer_file)
    eos = hf.token_to_id(EOS_TOKEN)
    if eos is None:
        raise DataError(f"tokenizer {tokenizer_file} has no {EOS_TOKEN} token to end documents")
    dtype = np.uint16 if hf.get_vocab_size(with_added_tokens=True) <= 1 << 16 else np.int32
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    counts = {}
    for file, texts in ((TRAIN_FILE, train_texts), (VAL_FILE, val_texts)):
        ids = [np.append(np.asarray(e.ids, dtype=np.int64), eos) for e in hf.encode_batch(texts)]
        tokens = np.concatenate(ids).astype(dtype)
        np.save(folder / file, tokens)
        counts[file] = int(tokens.size)
    hf.save(str(folder / TOKENIZER_FILE))
    meta = {
        "data": _fingerprint(config, tokenizer_file),
        "vocab_size": hf.get_vocab_size(with_added_tokens=True),
        "eos_token_id": eos,
        "train_tokens": counts[TRAIN_FILE],
        "val_tokens": counts[VAL_FILE],
        "train_chars": sum(len(t) for t in train_texts),
        "val_bytes": sum(len(t.encode("utf-8")) for t in val_texts),
        "val_documents": val_names,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_data(folder: str | Path) -> TokenData:
    """A data folder written by build_data (arrays memory-mapped, read-only)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None:
        raise DataError(f"data folder {folder} has no {META_FILE}; build it with prepare_data")
    try:
        hf = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        train = np.load(folder / TRAIN_FILE, mmap_mode="r")
        val = np.load(folder / VAL_FILE, mmap_mode="r")
    except Exception as exc:  # tokenizers raises plain Exception for bad files
        raise DataError(f"cannot read data folder {folder}: {exc}") from exc
    return TokenData(
        folder=folder,
        train=train,
        val=val,
        token_bytes=token_byte_lengths(hf),
        tokenizer=Tokenizer.from_hf(hf),
        meta=meta,
    )


def split_corpus(config: DataConfig) -> tuple[list[str], list[str], list[str]]:
    """(training texts, validation texts, validation document names) of the configured corpus."""
    if config.source == "text":
        (doc,) = text_documents(config.path)
        cut = _line_cut(doc.text, 1.0 - config.val_fraction)
        train, val = [doc.text[:cut]], [doc.text[cut:]]
        names = [f"{doc.name}[{cut}:]"]
    else:
        docs = shakespeare_documents(config.download_dir or None)
        train, val, names = _hold_out(docs, config.val_documents)
    train, val = _cap(train, config.max_chars), _cap(val, config.max_val_chars)
    if not "".join(train) or not "".join(val):
        raise DataError("the training or validation split is empty; check the data config")
    return train, val, names


def sample_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int
) -> tuple[Tensor, Tensor]:
    """Inputs and targets [B, T]: windows of T + 1 tokens at offsets drawn from (seed, step) alone,
    so a run's batches depend on nothing but its seed and the step (exact resume for free)."""
    if tokens.size < seq_len + 1:
        raise DataError(f"{tokens.size} tokens cannot fill a window of {seq_len + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, tokens.size - seq_len, size=batch_size)
    windows = torch.from_numpy(
        np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    )
    return windows[:, :-1], windows[:, 1:]


def eval_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Non-overlapping windows from the start of tokens, so targets cover tokens 1.. once each:
    inputs and targets [B, T], up to max_tokens targets in all (0: every full window; a split
    shorter than one window gives one shorter window)."""
    seq_len = min(seq_len, tokens.size - 1)
    if seq_len < 1:
        raise DataError("the validation split needs at least 2 tokens")
    count = (tokens.size - 1) // seq_len
    if max_tokens > 0:
        count = min(count, max(1, max_tokens // seq_len))
    for first in range(0, count, batch_size):
        rows = range(first, min(count, first + batch_size))
        stacked = np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in rows])
        windows = torch.from_numpy(stacked.astype(np.int64))
        yield windows[:, :-1], windows[:, 1:]


def _hold_out(docs: list[Document], names: list[str]) -> tuple[list[str], list[str], list[str]]:
    known = {d.name for d in docs}
    missing = sorted(set(names) - known)
    if missing:
        raise DataError(
            f"validation documents {missing} are not in the corpus; have {sorted(known)}"
        )
    train = [d.text for d in docs if d.name not in names]
    val = [d.text for d in docs if d.name in names]
    return train, val, [d.name for d in docs if d.name in names]


def _line_cut(text: str, fraction: float) -> int:
    """The start of the line holding character fraction * len(text) (never 0 or len(text))."""
    at = int(len(text) * fraction)
    cut = text.rfind("\n", 0, at) + 1
    return cut if 0 < cut < len(text) else max(1, min(at, len(text) - 1))


def _cap(texts: list[str], limit: int) -> list[str]:
    if limit <= 0:
        return texts
    out: list[str] = []
    for text in texts:
        left = limit - sum(len(t) for t in out)
        if left <= 0:
            break
        out.append(text[:left])
    return out


def _tokenizer(
    texts: list[str], config: DataConfig, tokenizer_file: Path | None
) -> tokenizers.Tokenizer:
    if tokenizer_file is None:
        return train_bpe(texts, config.vocab_size)
    try:
        return tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises plain Exception for bad files
        raise DataError(f"cannot read tokenizer {tokenizer_file}: {exc}") from exc


def _fingerprint(config: DataConfig, tokenizer_file: Path | None = None) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    for key in _PATH_KEYS:
        data.pop(key)
    if tokenizer_file is not None:
        data["tokenizer_sha256"] = hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()
    return data


def _read_meta(folder: Path) -> dict[str, Any] | None:
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None

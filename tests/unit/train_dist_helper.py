"""Writes a tiny training config for tests/unit/test_training_distributed.py (importable helper)."""

from __future__ import annotations

from pathlib import Path

from hagmoe.training.config import (
    DataConfig,
    ObjectiveConfig,
    OptimizerConfig,
    Phase,
    ScheduleConfig,
    TrainConfig,
)

CORPUS = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    "And by opposing end them. To die, to sleep,\nNo more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\nThat flesh is heir to.\n"
) * 3


def tiny_config(tmp: Path, name: str, **changes: object) -> TrainConfig:
    """5 steps of a 2-layer model on 4 sequences of 16 tokens; data shared under tmp/data."""
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    base = TrainConfig(
        steps=5,
        batch_size=4,
        out_dir=str(tmp / name),
        progress=False,
        eval_interval=0,
        eval_tokens=64,
        threads=1,
        model={"name": "tiny", "hidden_size": 32, "ffn_size": 32, "max_position": 32},
        data=DataConfig(
            source="text", path=str(corpus), vocab_size=300, val_fraction=0.2,
            data_dir=str(tmp / "data"),
        ),
        optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1),
        objective=ObjectiveConfig(ramp_steps=2),
        schedule=ScheduleConfig(k_warmup_steps=2),
        curriculum=[Phase(until_step=0, seq_len=16)],
    )  # fmt: skip
    return base.replace(**changes) if changes else base

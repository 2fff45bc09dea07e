"""The trainer end to end on a tiny model and corpus: the loss falls, resume is exact, the saved
folder serves, the CLI runs, and the router comparison runs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hagmoe.cli import main
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import load_model
from hagmoe.training.config import (
    DataConfig,
    ObjectiveConfig,
    OptimizerConfig,
    Phase,
    ScheduleConfig,
    TrainConfig,
)
from hagmoe.training.errors import ResumeError
from hagmoe.training.experiment import compare_routers, format_results, variant_config
from hagmoe.training.trainer import CONFIG_FILE, LOG_FILE, Trainer

CORPUS = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die—to sleep,
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to: 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep, perchance to dream—ay, there's the rub:
For in that sleep of death what dreams may come,
When we have shuffled off this mortal coil,
Must give us pause—there's the respect
That makes calamity of so long life.
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: fast on a shared 2-core machine, and the same kernels in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(tmp_path: Path, name: str = "run", **changes: object) -> TrainConfig:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    base = TrainConfig(
        steps=20,
        batch_size=4,
        seed=0,
        out_dir=str(tmp_path / name),
        progress=False,
        eval_interval=0,
        eval_tokens=256,
        model={"name": "tiny", "hidden_size": 32, "ffn_size": 32, "max_position": 64},
        data=DataConfig(
            source="text",
            path=str(corpus),
            vocab_size=300,
            val_fraction=0.2,
            data_dir=str(tmp_path / "data"),
        ),
        optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2),
        objective=ObjectiveConfig(ramp_steps=4),
        schedule=ScheduleConfig(k_warmup_steps=3),
        curriculum=[Phase(until_step=6, seq_len=16), Phase(until_step=20, seq_len=32)],
    )
    return base.replace(**changes) if changes else base


def _records(out_dir: Path, event: str) -> list[dict[str, object]]:
    lines = (out_dir / LOG_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_twenty_steps_lower_the_loss_and_save_a_serving_folder(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, eval_interval=10)
    trainer = Trainer(cfg)
    before = trainer.validate()
    result = trainer.train()
    losses = [result.losses[s] for s in range(20)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert sorted(result.evals) == [10, 20]
    assert result.evals[20].loss < before.loss - 0.3
    assert result.evals[20].bpb == pytest.approx(
        result.evals[20].loss * result.evals[20].tokens / (math.log(2) * result.evals[20].bytes)
    )
    out = Path(cfg.out_dir)
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert TrainConfig.from_file(out / CONFIG_FILE) == cfg
    train_records = _records(out, "train")
    assert [r["step"] for r in train_records] == list(range(20))
    assert [r["k_override"] for r in train_records[:4]] == [1, 1, 1, None]
    assert all(r["mean_k"] == 1.0 for r in train_records[:3])
    assert [r["seq_len"] for r in train_records[5:7]] == [16, 32]
    mu = [float(layer.router.entropy_mean) for layer in trainer.model.layers]
    assert all(0.0 < m <= 1.0 for m in mu) and mu == train_records[-1]["mu_h"]

    loaded = load_model(out / "model")
    assert [float(layer.router.entropy_mean) for layer in loaded.layers] == mu
    assert loaded.config.eos_token_id == trainer.data.tokenizer.eos_token_id
    ids = torch.from_numpy(trainer.data.val[:12].astype("int64"))[None]
    with torch.no_grad():
        expected = trainer.model.eval().forward_full(ids).logits
        assert torch.equal(loaded.forward_full(ids).logits, expected)
    completion = LLM(out / "model").generate(
        ["To be"], SamplingParams(max_new_tokens=8, temperature=0.0)
    )[0]
    assert completion.finish_reason in ("length", "stop")
    assert 1 <= len(completion.token_ids) <= 8
    assert isinstance(completion.text, str)


def test_resume_repeats_the_uninterrupted_loss_sequence_exactly(tmp_path: Path) -> None:
    full_cfg = tiny_config(tmp_path, "full", steps=10, checkpoint_interval=5, eval_interval=5)
    full = Trainer(full_cfg).train()
    cut_cfg = tiny_config(tmp_path, "cut", steps=10, checkpoint_interval=5, eval_interval=5)
    first = Trainer(cut_cfg).train(until_step=5)
    assert first.model_dir is None and sorted(first.losses) == [0, 1, 2, 3, 4]
    resumed_trainer = Trainer.resume(Path(cut_cfg.out_dir))
    assert resumed_trainer.step == 5
    second = resumed_trainer.train()
    assert sorted(second.losses) == [5, 6, 7, 8, 9]
    assert {**first.losses, **second.losses} == full.losses  # exact float equality
    assert second.evals[10].loss == full.evals[10].loss
    for name, tensor in Trainer.resume(Path(full_cfg.out_dir)).model.state_dict().items():
        assert torch.equal(resumed_trainer.model.state_dict()[name], tensor), name
    steps = [r["step"] for r in _records(Path(cut_cfg.out_dir), "train")]
    assert steps == list(range(10))
    assert len(_records(Path(cut_cfg.out_dir), "resume")) == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="checkpoint"):
        Trainer.resume(tmp_path)


def test_cli_trains_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path, steps=4, eval_interval=2)
    path = tmp_path / "train.toml"
    path.write_text(cfg.to_toml())
    assert main(["train", "--config", str(path), "--until-step", "2", "--no-progress"]) == 0
    assert "resume with --resume" in capsys.readouterr().out
    assert main(["train", "--resume", cfg.out_dir, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step 4: val loss" in out and "model:" in out
    assert (Path(cfg.out_dir) / "model" / "model.safetensors").is_file()


def test_router_comparison_runs_on_a_tiny_config(tmp_path: Path) -> None:
    base = tiny_config(tmp_path, "cmp", steps=3, eval_tokens=64)
    fixed = variant_config(base, "fixed_k", 2)
    linear = variant_config(base, "linear", 2)
    assert (fixed.model["k_min"], fixed.model["k_max"]) == (2, 2)
    assert (linear.model["router"], linear.model["top_k"]) == ("linear", 2)
    assert fixed.data.data_dir == linear.data.data_dir == base.data.data_dir
    results = compare_routers(base)
    assert [r.name for r in results] == ["hagmoe", "fixed_k", "linear"]
    assert [r.router for r in results] == ["attention", "attention", "linear"]
    full = results[0]
    assert 1.0 <= full.mean_k <= 3.0
    k = min(3, max(1, round(full.mean_k)))
    assert results[1].mean_k == k and results[2].mean_k == k
    assert all(math.isfinite(r.val_bpb) and r.val_bpb > 0 for r in results)
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())[0]["name"] == "hagmoe"
    assert "val bpb" in format_results(results)

"""Data-parallel training under torchrun (gloo, 2 CPU processes): DDP and FSDP2 give the loss
sequence of one process on the same global batch, a 2-rank checkpoint resumes in 1 process,
TensorBoard holds the named scalars, and --init-from fine-tunes a serving folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hagmoe.model import load_model
from hagmoe.training.errors import InitFromError
from hagmoe.training.tracking import TENSORBOARD_DIR
from hagmoe.training.trainer import LOG_FILE, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train_dist_helper import tiny_config

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
STEPS = 5
TOL = 1e-5


def _torchrun(config: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "hagmoe.cli", "train",
           "--config", str(config), "--device", "cpu", "--no-progress", *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _losses(out_dir: Path) -> dict[int, float]:
    lines = (out_dir / LOG_FILE).read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one single-process run of STEPS steps in one/."""
    tmp = tmp_path_factory.mktemp("dist")
    Trainer(tiny_config(tmp, "one")).train()
    return tmp


def _close(got: dict[int, float], want: dict[int, float], steps: list[int]) -> None:
    assert sorted(got) == steps
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=TOL, abs=TOL), (step, got, want)


def test_ddp_two_ranks_repeat_the_one_process_losses(work: Path) -> None:
    config = work / "ddp.toml"
    config.write_text(tiny_config(work, "ddp").to_toml())
    _torchrun(config, "--parallel", "ddp")
    _close(_losses(work / "ddp"), _losses(work / "one"), list(range(STEPS)))
    model = load_model(work / "ddp" / "model")  # the serving format, written by rank 0
    assert model.config.num_layers == 2


def test_fsdp_two_ranks_then_resume_in_one_process(work: Path) -> None:
    config = work / "fsdp.toml"
    config.write_text(tiny_config(work, "fsdp").to_toml())
    _torchrun(config, "--parallel", "fsdp", "--until-step", "3")
    want = _losses(work / "one")
    _close(_losses(work / "fsdp"), want, [0, 1, 2])
    resumed = Trainer.resume(work / "fsdp")  # a 2-rank checkpoint, 1 process
    assert resumed.step == 3
    result = resumed.train()
    _close(result.losses, want, [3, 4])
    assert result.model_dir is not None and (result.model_dir / "model.safetensors").is_file()


def test_tensorboard_files_hold_the_named_scalars(work: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(work / "one" / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    names = {"loss/total", "loss/lm", "loss/group", "loss/expert", "loss/div", "loss/gamma",
             "loss/z", "router/mean_k", "router/entropy", "router/load_cv", "router/gamma",
             "router/mu_h", "lr", "throughput/tokens_per_s", "optim/grad_norm", "eval/loss",
             "eval/bpb"}  # fmt: skip
    assert names <= tags
    total = events.Scalars("loss/total")
    assert [e.step for e in total] == list(range(STEPS))
    assert [e.value for e in total] == pytest.approx(list(_losses(work / "one").values()))


def test_init_from_fine_tunes_a_model_folder_and_refuses_other_shapes(work: Path) -> None:
    folder = work / "one" / "model"
    tuned = Trainer(tiny_config(work, "tuned", init_from=str(folder), model={}, steps=2))
    before = load_model(folder)
    assert tuned.model.config == before.config
    for name, tensor in before.state_dict().items():
        assert tuned.model.state_dict()[name].equal(tensor), name
    assert tuned.train().model_dir is not None
    with pytest.raises(InitFromError, match=r"--init-from .*hidden_size = 48"):
        tiny_config(work, "bad", init_from=str(folder), model={"hidden_size": 48})

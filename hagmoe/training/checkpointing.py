"""Training checkpoints for exact resume: model (with every layer's mu_H buffer), optimizer, the
step to run next, tokens seen, torch's RNG state and the training config, in one torch file per
checkpoint folder `<out_dir>/checkpoints/step_XXXXXXXX/trainer_state.pt`.

Batches are a function of (seed, step), so the step is the data position.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hagmoe.training.errors import ResumeError

STATE_FILE = "trainer_state.pt"
CHECKPOINTS_DIR = "checkpoints"
PREFIX = "step_"


@dataclass(slots=True)
class TrainerState:
    """What a resumed run needs to continue exactly."""

    step: int  # the next step to run
    tokens_seen: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    config: dict[str, Any]


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"{PREFIX}{step:08d}"


def save_state(out_dir: Path, state: TrainerState, keep: int) -> Path:
    """Write the state into its step's folder (atomically: a temp file renamed), then delete all
    but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    folder = checkpoint_dir(out_dir, state.step)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    payload = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "model": state.model,
        "optimizer": state.optimizer,
        "torch_rng": state.torch_rng,
        "config": state.config,
    }
    torch.save(payload, tmp)
    tmp.replace(folder / STATE_FILE)
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a run folder's newest checkpoint."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise ResumeError(
            f"{path} is neither a checkpoint folder nor a run folder with checkpoints"
        )
    return found[-1]


def load_state(path: str | Path) -> TrainerState:
    """The state in a checkpoint folder (or a run folder's newest)."""
    folder = find_checkpoint(path)
    try:
        data = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        return TrainerState(
            step=int(data["step"]),
            tokens_seen=int(data["tokens_seen"]),
            model=data["model"],
            optimizer=data["optimizer"],
            torch_rng=data["torch_rng"],
            config=data["config"],
        )
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        raise ResumeError(f"cannot read training checkpoint {folder}: {exc}") from exc

"""Watching a run: router statistics of a step, and trackers that receive each step's scalars
(TensorBoard event files under <out_dir>/tensorboard/, and MLflow when it is installed).

Only rank 0 tracks. A tracker whose package is missing is skipped with one log line. The scalar
names (docs/training.md lists them):
```
loss/total loss/lm loss/group loss/expert loss/div loss/gamma loss/z
router/mean_k router/entropy router/load_cv router/gamma router/mu_h
lr throughput/tokens_per_s optim/grad_norm            (train steps)
eval/loss eval/bpb eval/mean_k                        (validations)
```
Legend: T a rank's flat tokens, N experts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from hagmoe.model.layer import DecoderLayer
from hagmoe.model.model import HagMoEModel
from hagmoe.model.routing import LayerRouting
from hagmoe.training.reduce import LOCAL, BatchReduce

TENSORBOARD_DIR = "tensorboard"
LOSS_TERMS = ("lm", "group", "expert", "div", "gamma", "z")
_TRAIN_KEYS = {
    "loss": "loss/total",
    **{term: f"loss/{term}" for term in LOSS_TERMS},
    "mean_k": "router/mean_k",
    "entropy": "router/entropy",
    "load_cv": "router/load_cv",
    "gamma_mean": "router/gamma",
    "lr": "lr",
    "tokens_per_s": "throughput/tokens_per_s",
    "grad_norm": "optim/grad_norm",
}
_EVAL_KEYS = {"loss": "eval/loss", "bpb": "eval/bpb", "mean_k": "eval/mean_k"}
log = logging.getLogger(__name__)


@torch.no_grad()
def router_stats(
    model: HagMoEModel, routing: list[LayerRouting], scored: Tensor, reduce: BatchReduce = LOCAL
) -> dict[str, float]:
    """Means over layers, over the global batch: experts per token (mean_k), normalised coarse
    entropy Hn over the scored positions [T] (entropy; attention-routed layers), the coefficient
    of variation std/mean of the experts' assignment counts (load_cv; 0 = perfectly even), and
    the feedback gamma (gamma_mean; 0 without feedback)."""
    n = model.config.num_experts
    mean_k, entropy, load_cv = [], [], []
    for r in routing:
        mean_k.append(float(reduce.global_mean(r.k.float())))
        if r.group_logits is not None:
            entropy.append(float(reduce.global_mean(r.entropy[scored].float())))
        chosen = r.experts[r.experts >= 0]
        counts = reduce.total(torch.bincount(chosen, minlength=n).float())  # [N]
        load_cv.append(float(counts.std(correction=0) / counts.mean().clamp_min(1e-9)))
    gammas = [
        _full(layer.feedback.gamma)
        for layer in model.layers
        if isinstance(layer, DecoderLayer) and layer.feedback is not None
    ]
    return {
        "mean_k": _mean(mean_k),
        "entropy": _mean(entropy),
        "load_cv": _mean(load_cv),
        "gamma_mean": _mean([float(g.float().mean()) for g in gammas]),
    }


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The tracked scalars of one train_log record (train or eval; others give none)."""
    keys = {"train": _TRAIN_KEYS, "eval": _EVAL_KEYS}.get(str(record.get("event")), {})
    out = {name: float(record[key]) for key, name in keys.items() if record.get(key) is not None}
    mu = record.get("mu_h")
    if record.get("event") == "train" and isinstance(mu, list) and mu:
        out["router/mu_h"] = sum(mu) / len(mu)
    return out


class Tracker(Protocol):
    """Receives scalars by step; closed at the end of a train() call."""

    def log(self, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in a folder (torch.utils.tensorboard; needs the tensorboard package)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowTracker:
    """An MLflow run (tracking URI from MLFLOW_TRACKING_URI, else <out_dir>/mlruns)."""

    def __init__(self, out_dir: Path, params: Mapping[str, Any]) -> None:
        import mlflow

        self.mlflow: Any = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((out_dir / "mlruns").resolve().as_uri())
        mlflow.start_run(run_name=out_dir.name)
        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


@dataclass(slots=True)
class Trackers:
    """Every open tracker of a run (none on ranks > 0)."""

    active: list[Tracker] = field(default_factory=list)

    def log_record(self, record: Mapping[str, Any]) -> None:
        values = scalars(record)
        if values:
            for tracker in self.active:
                tracker.log(int(record["step"]), values)

    def close(self) -> None:
        for tracker in self.active:
            tracker.close()
        self.active = []


def open_trackers(
    names: Sequence[str], out_dir: Path, params: Mapping[str, Any], step: int, enabled: bool
) -> Trackers:
    """The named trackers that can run here (enabled: this is rank 0); on resume (step > 0)
    TensorBoard drops events at steps >= step left by the interrupted run."""
    if not enabled:
        return Trackers()
    active: list[Tracker] = []
    for name in names:
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        if importlib.util.find_spec(module) is None:
            log.info("tracking: %s is not installed; not logging to it", module)
            continue
        if name == "tensorboard":
            purge = step if step > 0 else None
            active.append(TensorBoardTracker(out_dir / TENSORBOARD_DIR, purge))
        else:
            active.append(MLflowTracker(out_dir, params))
    return Trackers(active)


def _full(t: Tensor) -> Tensor:
    full = getattr(t, "full_tensor", None)  # a DTensor under FSDP
    return full() if full is not None else t


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0

"""Data-parallel training under `torchrun`: the process group, the wrapped model, the rank's
slice of each batch, and full (world-size independent) state for checkpoints.

`hagmoe train --parallel {none,ddp,fsdp}`:
- none: one process (torchrun with WORLD_SIZE > 1 is refused: every rank would train alone);
- ddp: DistributedDataParallel, every rank holds the whole model, gradients are all-reduced;
- fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`): each layer's attention, router, experts
  (and shared expert) are their own shard units, then the root holds the rest (embeddings, norms,
  the feedback paths: gamma is read outside the layers' forward by the objective's gamma^2 term,
  so it must stay gathered between forward and backward as the root's parameters do).

Ranks come from torchrun's RANK / WORLD_SIZE / LOCAL_RANK; the backend is NCCL on CUDA and gloo
on the CPU. Every rank draws the same global batch (a function of seed and step) and keeps rows
[rank * B/W, (rank + 1) * B/W), so with the objective's BatchReduce the ranks' mean loss and mean
gradient equal one process's over the same global batch.

Checkpoints hold the full model and the optimizer state in the one-process layout, gathered on
rank 0 (get_model_state_dict / get_optimizer_state_dict with full_state_dict), so they resume at
any world size, and model/ is always the serving format.

Legend: B global batch rows, W world size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hagmoe.errors import ConfigError
from hagmoe.model.forward_context import TrainingOptions
from hagmoe.model.model import FullOutput, HagMoEModel
from hagmoe.training.config import DEVICES, PARALLEL_MODES
from hagmoe.training.optim import optimizer_param_names
from hagmoe.training.reduce import BatchReduce

Forward = Callable[[Tensor, TrainingOptions], FullOutput]


class _TrainForward(nn.Module):
    """model.forward_full as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, model: HagMoEModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, training: TrainingOptions) -> FullOutput:
        return self.model.forward_full(inputs, training=training)


@dataclass(slots=True)
class Runtime:
    """Where this process stands: the parallel mode, its rank among world_size, its device."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @classmethod
    def start(cls, mode: str = "none", device: str = "auto") -> Runtime:
        """The runtime of this process: reads torchrun's environment and, for ddp / fsdp, joins
        the process group (NCCL on CUDA, gloo on the CPU). ConfigError naming --parallel or
        --device when they cannot work."""
        if mode not in PARALLEL_MODES:
            raise ConfigError(f"--parallel {mode!r}: choose one of {PARALLEL_MODES}")
        if device not in DEVICES:
            raise ConfigError(f"--device {device!r}: choose one of {DEVICES}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if mode == "none" and world > 1:
            raise ConfigError(
                f"--parallel none under torchrun (WORLD_SIZE={world}): use --parallel ddp or fsdp"
            )
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA device")
        where = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(where)
        owns = False
        if mode != "none" and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            owns = True
        if mode != "none":
            rank, world = dist.get_rank(), dist.get_world_size()
        return cls(mode, rank, world, local, where, owns)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, trackers, checkpoints and the model folder."""
        return self.rank == 0

    @property
    def reduce(self) -> BatchReduce:
        return BatchReduce(self.world_size)

    def check_batch(self, batch_size: int, where: str) -> None:
        """ConfigError unless batch_size rows split evenly over the ranks."""
        if batch_size % self.world_size != 0:
            raise ConfigError(
                f"training config key {where!r} = {batch_size}: must be a multiple of the "
                f"world size {self.world_size} (each rank takes an equal slice of the batch)"
            )

    def shard(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's rows of a global batch [B, T] (all of them with one rank), on its device."""
        per = inputs.shape[0] // self.world_size
        rows = slice(self.rank * per, (self.rank + 1) * per)
        return inputs[rows].to(self.device), targets[rows].to(self.device)

    def wrap(self, model: HagMoEModel) -> Forward:
        """Move the model to the device and wrap it for the mode (in place for fsdp); returns the
        training forward. Build the optimizer after this (fsdp replaces the parameters)."""
        model.to(self.device)
        if self.mode == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(_TrainForward(model), device_ids=ids, forward_sync_buffers=False)
        if self.mode == "fsdp":
            _fully_shard(model, self.device, self.world_size)
            return lambda inputs, training: model.forward_full(inputs, training=training)
        return lambda inputs, training: model.forward_full(inputs, training=training)

    def model_state(self, model: HagMoEModel) -> dict[str, Tensor]:
        """The full model state dict on the CPU (collective under fsdp; empty on ranks > 0)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            full: dict[str, Tensor] = get_model_state_dict(model, options=_full_options())  # type: ignore[assignment]
            return full
        if not self.is_main:
            return {}
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def optimizer_state(self, model: HagMoEModel, optimizer: torch.optim.Optimizer) -> Any:
        """The optimizer state in the one-process layout (parameters numbered in
        build_optimizer's order), on the CPU; collective under fsdp, empty on ranks > 0."""
        if self.mode != "fsdp":
            return optimizer.state_dict() if self.is_main else {}
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        named = get_optimizer_state_dict(model, optimizer, options=_full_options())
        if not self.is_main:
            return {}
        index = {name: i for i, name in enumerate(optimizer_param_names(model))}
        return _renumber(named, index)

    def load_optimizer_state(
        self, model: HagMoEModel, optimizer: torch.optim.Optimizer, state: Any
    ) -> None:
        """Load a one-process-layout optimizer state (any world size saved it)."""
        if self.mode != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = dict(enumerate(optimizer_param_names(model)))
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, _renumber(state, names), options=options)

    def barrier(self) -> None:
        if self.mode != "none":
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this runtime joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def DDP(module: nn.Module, **kwargs: Any) -> Forward:
    """DistributedDataParallel around module (a function so the import stays lazy)."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped: Forward = DistributedDataParallel(module, **kwargs)
    return wrapped


def _fully_shard(model: HagMoEModel, device: torch.device, world: int) -> None:
    """FSDP2 units: every layer's attention, router, experts and shared expert, then the root;
    forward_full runs inside the root's hooks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world,))
    for layer in model.layers:
        for name in ("attn", "router", "experts", "shared_expert"):
            part = getattr(layer, name, None)
            if isinstance(part, nn.Module):
                fully_shard(part, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)  # gamma is read after forward
    register_fsdp_forward_method(model, "forward_full")


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _renumber(state: dict[str, Any], key: dict[Any, Any]) -> dict[str, Any]:
    """An optimizer state dict with its parameter keys mapped through `key` (names <-> ids)."""
    return {
        "state": {key[k]: v for k, v in state["state"].items()},
        "param_groups": [
            {**group, "params": [key[k] for k in group["params"]]}
            for group in state["param_groups"]
        ],
    }

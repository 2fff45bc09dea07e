"""Batch-level statistics of a batch split across ranks.

Under data parallelism every rank holds a disjoint slice of the global batch. A statistic that is
a mean over the batch's tokens (the LM loss, L_div, L_z, the P terms of the balance losses, the
step's mean of Hn) is computed on each rank as `world * local_sum / global_count`, so the mean of
the ranks' values, and of their gradients (what DDP and FSDP average), is the one-process value
over the global batch. Counts that carry no gradient (how many tokens chose each group or expert,
the f terms) are summed over the ranks (all-reduce) first.

With one process (`LOCAL`) every method is the plain local computation, bit for bit.

Legend: T a rank's flat tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(slots=True, frozen=True)
class BatchReduce:
    """How one rank's share of a batch becomes the global batch's statistics."""

    world_size: int = 1

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def total(self, value: Tensor) -> Tensor:
        """The sum of a no-gradient tensor (counts) over the ranks; value itself with one rank."""
        if not self.sharded:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def count(self, n: int, like: Tensor) -> Tensor:
        """The global number of rows when this rank has n, as a tensor like `like`."""
        return self.total(torch.tensor(float(n), dtype=like.dtype, device=like.device))

    def mean_rows(self, values: Tensor) -> Tensor:
        """Mean over dim 0 of values [T, ...] as this rank's share of the global mean: the mean of
        the ranks' results is the mean over every rank's rows (differentiable)."""
        if not self.sharded:
            return values.mean(0)
        return values.sum(0) * self.world_size / self.count(values.shape[0], values)

    def global_mean(self, values: Tensor) -> Tensor:
        """The mean over dim 0 of every rank's rows of values [T, ...], the same on each rank
        (no gradient: running means and logged statistics)."""
        if not self.sharded:
            return values.mean(0)
        return self.total(values.detach().sum(0)) / self.count(values.shape[0], values)

    def scaled(self, local_sum: Tensor, global_count: Tensor) -> Tensor:
        """local_sum / global_count as this rank's share (world * local_sum / global_count)."""
        if not self.sharded:
            return local_sum / global_count
        return local_sum * self.world_size / global_count

    def average(self, value: Tensor) -> Tensor:
        """The mean of a no-gradient value over the ranks (logging: each rank's loss -> the
        global batch's loss)."""
        if not self.sharded:
            return value
        return self.total(value) / self.world_size


LOCAL = BatchReduce()

"""Scheduling policies: "fcfs" keeps arrival order; "priority" runs the lowest (priority,
arrival) first and preempts the highest, whatever order the requests came in."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.errors import ConfigError
from hagmoe.model import HagMoEModel, named_config, random_model

PARAMS = SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny"), seed=0, dtype=torch.float32)


def _finish_order(core: EngineCore) -> list[str]:
    order = []
    while core.has_unfinished_requests():
        order.extend(o.request_id for o in core.step() if o.finished)
    return order


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(priorities=st.lists(st.integers(-3, 3), min_size=1, max_size=6))
def test_priority_policy_runs_requests_by_priority_then_arrival(
    model: HagMoEModel, priorities: list[int]
) -> None:
    core = EngineCore(model, None, EngineConfig(max_num_seqs=1, scheduling_policy="priority"))
    for i, priority in enumerate(priorities):
        core.add_request(f"r{i}", [1, 2, 3], PARAMS, priority=priority)
    want = [f"r{i}" for i in sorted(range(len(priorities)), key=lambda i: (priorities[i], i))]
    assert _finish_order(core) == want


def test_fcfs_refuses_a_priority_by_name(model: HagMoEModel) -> None:
    """As vLLM: a priority the policy would ignore is an error, not a silent no-op."""
    core = EngineCore(model, None, EngineConfig(max_num_seqs=1))
    with pytest.raises(InvalidRequestError, match="priority"):
        core.add_request("r0", [1, 2, 3], PARAMS, priority=3)
    for i in range(3):
        core.add_request(f"r{i}", [1, 2, 3], PARAMS, priority=0)
    assert _finish_order(core) == ["r0", "r1", "r2"]


def test_priority_policy_preempts_the_lowest_priority_request(model: HagMoEModel) -> None:
    config = EngineConfig(block_size=4, num_blocks=6, scheduling_policy="priority")
    core = EngineCore(model, None, config)
    long = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    relaxed = core.add_request("relaxed", [7] * 6, long, priority=5)  # fcfs would keep it
    urgent = core.add_request("urgent", [5] * 6, long, priority=-1)
    _finish_order(core)
    assert relaxed.num_preemptions > 0 and urgent.num_preemptions == 0
    assert core.kv_cache.usage == 0.0


def test_an_unknown_policy_is_refused_by_name(model: HagMoEModel) -> None:
    with pytest.raises(ConfigError, match="scheduling_policy"):
        EngineCore(model, None, EngineConfig(scheduling_policy="lifo"))

"""The KV cache is sized from the memory left after the weights (issue #18): the rule with an
injected budget, the /proc/meminfo and cgroup readings, an engine on a scaled-down budget, and
`hagmoe serve`'s start-up error when the cache cannot fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.llm import LLM
from hagmoe.engine.memory import (
    MemoryFiles,
    available_memory,
    cgroup_available,
    host_available,
    meminfo_available,
    size_cache,
)
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.errors import ConfigError
from hagmoe.model import HagMoEModel, Tokenizer, named_config, random_model, save_model
from hagmoe.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny", vocab_size=300), seed=0)


def _sized(available: int, **options: object) -> EngineConfig:
    config = EngineConfig(available_memory_bytes=available, **options)  # type: ignore[arg-type]
    return config.resolve(named_config("tiny"))


# --- the rule ---------------------------------------------------------------------------


def test_large_budget_gives_max_num_seqs_full_sequences() -> None:
    config = _sized(100 * GIB, block_size=16, max_num_seqs=8)
    assert config.max_model_len == 512
    assert config.num_blocks == 8 * 512 // 16
    assert config.cache_size is not None and config.cache_size.source == "full"
    assert config.cache_size.full_sequences == 8


def test_small_budget_shrinks_the_cache_to_fit() -> None:
    model = named_config("tiny")
    per_block = EngineConfig(block_size=16).bytes_per_block(model)
    available = 10 * 32 * per_block  # 0.9 of it: 288 blocks, 9 sequences of 512 tokens
    config = _sized(available, block_size=16, max_num_seqs=64)
    assert config.num_blocks == int(0.9 * available) // per_block == 288
    assert config.num_blocks * per_block <= 0.9 * available
    assert config.cache_size is not None and config.cache_size.source == "memory"
    assert config.cache_size.full_sequences == 9
    half = _sized(available, block_size=16, max_num_seqs=64, memory_utilization=0.45)
    assert half.num_blocks == int(0.45 * available) // per_block


def test_budget_under_one_sequence_is_an_error_naming_the_flags() -> None:
    model = named_config("tiny")
    per_block = EngineConfig(block_size=16).bytes_per_block(model)
    with pytest.raises(ConfigError) as caught:
        _sized(32 * per_block, block_size=16)  # 0.9 x one sequence's 32 blocks
    message = str(caught.value)
    for flag in ("--max-model-len", "--memory-utilization", "--kv-cache-bytes", "--num-blocks"):
        assert flag in message
    assert "max_model_len = 512" in message
    # a shorter max_model_len then fits the same memory
    assert _sized(32 * per_block, block_size=16, max_model_len=256).num_blocks == 28


def test_explicit_size_over_the_budget_is_an_error_naming_its_flag() -> None:
    model = named_config("tiny")
    per_block = EngineConfig(block_size=16).bytes_per_block(model)
    with pytest.raises(ConfigError, match="--kv-cache-bytes 10000000 "):
        _sized(100 * per_block, kv_cache_bytes=10_000_000)
    with pytest.raises(ConfigError, match="--num-blocks 500 "):
        _sized(100 * per_block, num_blocks=500)
    assert _sized(100 * per_block, num_blocks=90).num_blocks == 90
    fits = _sized(100 * per_block, kv_cache_bytes=50 * per_block)
    assert fits.num_blocks == 50 and fits.cache_size is not None
    assert fits.cache_size.source == "kv_cache_bytes"
    # explicit sizes smaller than a sequence stay allowed (the scheduler preempts)
    assert _sized(100 * GIB, num_blocks=3).num_blocks == 3


def test_bad_memory_utilization_is_an_error() -> None:
    for value in (0.0, 1.5):
        with pytest.raises(ConfigError, match="--memory-utilization"):
            _sized(GIB, memory_utilization=value)


def test_unmeasurable_memory_keeps_the_full_size() -> None:
    size = size_cache(
        bytes_per_block=1000,
        block_size=16,
        max_num_seqs=4,
        max_model_len=100,
        num_blocks=None,
        kv_cache_bytes=None,
        available_bytes=None,
        memory_utilization=0.9,
    )
    assert (size.num_blocks, size.source) == (4 * 7, "unbounded")


def test_24_gb_machine_serves_a_1_4b_model_with_the_defaults() -> None:
    """The issue's case, scaled by arithmetic: a 1.4B-parameter model (5.6 GB in float32) of
    4096 positions on a 24 GB machine. max_num_seqs x max_model_len would take ~26 GB; the
    default now takes 0.9 of what the weights leave and still holds many full sequences."""
    cfg = ModelConfig.from_dict(
        {
            "model_type": "hagmoe",
            **named_config("medium").to_dict(),
            "num_kv_heads": 8,
            "max_position": 4096,
        }
    )
    engine = EngineConfig()
    old_rule = 64 * 4096 * engine.bytes_per_token(cfg)
    assert old_rule > 24e9  # what got the process OOM-killed
    available = int(24e9 - 1.4e9 * 4 - 1.5e9)  # minus the weights and the rest of the host
    config = EngineConfig(available_memory_bytes=available).resolve(cfg)
    assert config.cache_size is not None
    assert config.cache_size.num_bytes <= 0.9 * available
    assert 1 <= config.cache_size.full_sequences < 64
    assert config.max_model_len == 4096


# --- measuring the memory -----------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_meminfo_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    _write(meminfo, "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    assert meminfo_available(meminfo) == 20_000_000 * 1024
    _write(meminfo, "MemTotal:       24000000 kB\n")
    assert meminfo_available(meminfo) is None
    assert meminfo_available(tmp_path / "missing") is None


def test_cgroup_v2_limit_minus_working_set(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(tmp_path / "self", "0::/kubepods/pod1/ctr\n")
    _write(root / "kubepods/pod1/ctr/memory.max", "max\n")
    _write(root / "kubepods/pod1/memory.max", f"{8 * GIB}\n")
    _write(root / "kubepods/pod1/memory.current", f"{3 * GIB}\n")
    _write(root / "kubepods/pod1/memory.stat", f"anon 1\ninactive_file {GIB}\n")
    files = MemoryFiles(tmp_path / "meminfo", tmp_path / "self", root)
    assert cgroup_available(files) == 8 * GIB - (3 * GIB - GIB)
    _write(tmp_path / "meminfo", f"MemAvailable: {20 * GIB // 1024} kB\n")
    assert host_available(files) == 6 * GIB  # the cgroup is tighter than the host
    _write(tmp_path / "meminfo", f"MemAvailable: {GIB // 1024} kB\n")
    assert host_available(files) == GIB  # the host is tighter than the cgroup


def test_cgroup_v2_namespaced_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(tmp_path / "self", "0::/\n")
    _write(root / "memory.max", f"{4 * GIB}\n")
    _write(root / "memory.current", f"{GIB}\n")
    assert cgroup_available(MemoryFiles(tmp_path / "m", tmp_path / "self", root)) == 3 * GIB


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(tmp_path / "self", "4:memory:/docker/abc\n3:cpu:/\n0::/\n")
    group = root / "memory/docker/abc"
    _write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n")
    _write(group / "memory.limit_in_bytes", f"{2 * GIB}\n")
    _write(group / "memory.usage_in_bytes", f"{GIB}\n")
    _write(group / "memory.stat", f"cache 5\ntotal_inactive_file {GIB // 2}\n")
    files = MemoryFiles(tmp_path / "meminfo", tmp_path / "self", root)
    assert cgroup_available(files) == 2 * GIB - GIB // 2
    _write(group / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_available(files) is None
    assert host_available(files) is None  # no meminfo either: unknown


def test_this_machine_reports_some_memory() -> None:
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo")
    measured = available_memory("cpu")
    assert measured is not None and measured > 0


# --- engines ------------------------------------------------------------------------------


def test_engine_on_a_scaled_down_budget_generates(model: HagMoEModel) -> None:
    per_block = EngineConfig(block_size=8).bytes_per_block(model.config)
    # room for 2.5 sequences of max_model_len 64 (8 blocks each) while 6 are asked for
    config = EngineConfig(
        block_size=8,
        max_num_seqs=6,
        max_model_len=64,
        available_memory_bytes=int(20 * per_block / 0.9) + 1,
    )
    llm = LLM(model, config=config)
    assert llm.engine.config.num_blocks == 20 < 6 * 8
    assert llm.engine.kv_cache.num_blocks == 20
    assert llm.engine.runner.kv_caches[0][0].shape[0] == 20 * 8
    info_bytes = llm.engine.config.kv_cache_size_bytes
    assert info_bytes == 20 * per_block
    params = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
    outs = llm.generate([[i + 1] * 20 for i in range(6)], params)
    assert [len(o.token_ids) for o in outs] == [40] * 6


def test_model_info_reports_the_cache_bytes(model: HagMoEModel) -> None:
    from hagmoe.engine.client import ModelInfo

    core = EngineCore(model, None, EngineConfig(block_size=4, max_num_seqs=2))
    info = ModelInfo.from_core(core)
    assert info.num_blocks == 2 * 512 // 4
    assert info.kv_cache_bytes == info.num_blocks * 4 * info.kv_cache_bytes_per_token


def test_engine_that_cannot_fit_fails_at_start(model: HagMoEModel) -> None:
    with pytest.raises(ConfigError, match="--memory-utilization"):
        EngineCore(model, None, EngineConfig(available_memory_bytes=1000))


def test_serve_exits_with_the_error_when_the_cache_cannot_fit(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    save_model(
        random_model(named_config("tiny", vocab_size=300), seed=0),
        folder,
        tokenizer=Tokenizer.byte_level(300),
    )
    env = {**os.environ, "HAGMOE_AVAILABLE_MEMORY_BYTES": "100000", "HAGMOE_THREADS": "1"}
    cmd = [sys.executable, "-m", "hagmoe.cli", "serve", "--model", str(folder), "--port", "0"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr[-2000:]
    logs = done.stdout + done.stderr
    assert "--memory-utilization" in logs and "--max-model-len" in logs
    assert "max_model_len = 512" in logs

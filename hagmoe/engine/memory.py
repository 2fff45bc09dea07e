"""How large the KV cache may be: the memory available once the weights are loaded, and the
sizing rule of EngineConfig.resolve.

Available memory, measured after the weights are loaded (so they already count as used):

- CPU: the smaller of the kernel's `MemAvailable` (/proc/meminfo) and, for every cgroup the
  process sits in that sets a memory limit (itself and its ancestors; cgroup v2 `memory.max` /
  `memory.current`, v1 `memory.limit_in_bytes` / `memory.usage_in_bytes`), the limit minus the
  working set (usage minus the inactive file cache of `memory.stat`, what the kernel reclaims
  before it kills). Unknown (None) where neither can be read.
- CUDA: the free bytes of `torch.cuda.mem_get_info` on the engine's device.

The cache's budget is `memory_utilization` (default 0.9) times that. With neither `num_blocks`
nor `kv_cache_bytes` given the cache gets `min(max_num_seqs full max_model_len sequences,
budget // bytes per block)` blocks, and a budget that cannot hold one max_model_len sequence is
a ConfigError; an explicit size over the budget is a ConfigError too. Each error names the
flags that change the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hagmoe.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_UTILIZATION = 0.9
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
FLAGS_HINT = (
    "lower --max-model-len, raise --memory-utilization, free memory, size the cache with "
    "--num-blocks / --kv-cache-bytes, or set --available-memory-bytes where the measurement "
    "is wrong"
)


@dataclass(slots=True, frozen=True)
class MemoryFiles:
    """Where the CPU measurement reads (tests point these into tmp_path)."""

    meminfo: Path = Path("/proc/meminfo")
    self_cgroup: Path = Path("/proc/self/cgroup")
    cgroup_root: Path = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    """The integer a cgroup file holds; None when absent, unreadable or "max"."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _stat_value(path: Path, *keys: str) -> int:
    """The first of `keys` found in a memory.stat file; 0 when none is there."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return next((values[k] for k in keys if k in values), 0)


def meminfo_available(path: Path) -> int | None:
    """MemAvailable of a /proc/meminfo file, in bytes; None when it is not there."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "MemAvailable":
            fields = rest.split()
            if not fields or not fields[0].isdigit():
                return None
            unit = fields[1].lower() if len(fields) > 1 else ""
            return int(fields[0]) * (1024 if unit == "kb" else 1)
    return None


def _cgroup_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's cgroup v2 path and v1 memory-controller path (either may be None)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    v2 = v1 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """base/path, then each parent up to base itself (what exists of them)."""
    dirs = [base]
    if path:
        current = base
        for part in [p for p in path.split("/") if p and p != ".."]:
            current = current / part
            dirs.append(current)
    return [d for d in reversed(dirs) if d.is_dir()]


def _headroom(
    directory: Path, limit_name: str, usage_name: str, inactive: tuple[str, ...]
) -> int | None:
    limit = _read_int(directory / limit_name)
    if limit is None or limit >= UNLIMITED:
        return None
    usage = _read_int(directory / usage_name) or 0
    working_set = max(0, usage - _stat_value(directory / "memory.stat", *inactive))
    return max(0, limit - working_set)


def cgroup_available(files: MemoryFiles) -> int | None:
    """The least (limit - working set) over the limited cgroups the process sits in (v2, then
    v1); None when no limit applies or the files are not there."""
    v2, v1 = _cgroup_paths(files.self_cgroup)
    headrooms: list[int] = []
    if v2 is not None or (files.cgroup_root / "memory.max").is_file():
        for d in _ancestors(files.cgroup_root, v2):
            room = _headroom(d, "memory.max", "memory.current", ("inactive_file",))
            if room is not None:
                headrooms.append(room)
    v1_root = files.cgroup_root / "memory"
    if not headrooms and v1_root.is_dir():
        for d in _ancestors(v1_root, v1):
            room = _headroom(
                d,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                ("total_inactive_file", "inactive_file"),
            )
            if room is not None:
                headrooms.append(room)
    return min(headrooms) if headrooms else None


def host_available(files: MemoryFiles | None = None) -> int | None:
    """min(MemAvailable, cgroup headroom) in bytes; None when neither is known."""
    files = files or MemoryFiles()
    known = [
        v for v in (meminfo_available(files.meminfo), cgroup_available(files)) if v is not None
    ]
    return min(known) if known else None


def available_memory(device: str | torch.device, files: MemoryFiles | None = None) -> int | None:
    """Bytes free for the KV cache on `device` now (call it after the weights are loaded);
    None where it cannot be measured (then the cache is not bounded by memory)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type == "cpu":
        return host_available(files)
    return None


@dataclass(slots=True, frozen=True)
class CacheSize:
    """The KV cache EngineConfig.resolve chose, and why."""

    num_blocks: int
    bytes_per_block: int
    block_size: int
    max_model_len: int
    source: str  # "memory", "full" (max_num_seqs sequences fit), "num_blocks", "kv_cache_bytes", "unbounded"
    available_bytes: int | None
    budget_bytes: int | None

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def full_sequences(self) -> int:
        """How many sequences of max_model_len tokens fit at once."""
        return self.num_blocks // blocks_for(self.max_model_len, self.block_size)


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def _human(n: int) -> str:
    """Bytes for people: 1.50 GiB, 12.0 MiB, 900 B."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def size_cache(
    *,
    bytes_per_block: int,
    block_size: int,
    max_num_seqs: int,
    max_model_len: int,
    num_blocks: int | None,
    kv_cache_bytes: int | None,
    available_bytes: int | None,
    memory_utilization: float,
) -> CacheSize:
    """The sizing rule (module docstring). ConfigError, naming the flags, when it cannot fit."""
    if not 0.0 < memory_utilization <= 1.0:
        raise ConfigError(f"--memory-utilization {memory_utilization}: must lie in (0, 1]")
    budget = None if available_bytes is None else int(memory_utilization * available_bytes)
    where = (
        ""
        if budget is None or available_bytes is None
        else f"the KV cache budget of {budget} bytes ({_human(budget)}: --memory-utilization "
        f"{memory_utilization} x {available_bytes} bytes available after the weights)"
    )

    def sized(blocks: int, source: str) -> CacheSize:
        return CacheSize(
            blocks, bytes_per_block, block_size, max_model_len, source, available_bytes, budget
        )

    if kv_cache_bytes is not None or num_blocks is not None:
        if kv_cache_bytes is not None:
            flag, blocks = "--kv-cache-bytes", kv_cache_bytes // bytes_per_block
            asked = kv_cache_bytes
            if blocks < 1:
                raise ConfigError(
                    f"--kv-cache-bytes {kv_cache_bytes} holds no block of {bytes_per_block} "
                    "bytes; raise --kv-cache-bytes"
                )
        else:
            assert num_blocks is not None
            flag, blocks, asked = "--num-blocks", num_blocks, num_blocks * bytes_per_block
            if blocks < 1:
                raise ConfigError(f"--num-blocks {num_blocks}: must be >= 1")
        if budget is not None and asked > budget:
            value = kv_cache_bytes if kv_cache_bytes is not None else num_blocks
            raise ConfigError(
                f"{flag} {value} asks for a KV cache of {asked} bytes ({_human(asked)}), more "
                f"than {where}; lower {flag}, or raise --memory-utilization (or set "
                "--available-memory-bytes where the measurement is wrong)"
            )
        return sized(blocks, flag.removeprefix("--").replace("-", "_"))
    per_seq = blocks_for(max_model_len, block_size)
    full = max_num_seqs * per_seq
    if budget is None:
        return sized(full, "unbounded")
    fit = budget // bytes_per_block
    if fit < per_seq:
        need = per_seq * bytes_per_block
        raise ConfigError(
            f"the KV cache cannot hold one sequence of max_model_len = {max_model_len} tokens "
            f"({per_seq} blocks of {bytes_per_block} bytes = {need} bytes, {_human(need)}) in "
            f"{where}; {FLAGS_HINT}"
        )
    return sized(full, "full") if fit >= full else sized(fit, "memory")


def log_cache_size(size: CacheSize, max_num_seqs: int) -> None:
    budget = "unknown" if size.budget_bytes is None else str(size.budget_bytes)
    logger.info(
        "KV cache: %d blocks x %d tokens = %d tokens, %d bytes (%s); %d full sequences of "
        "max_model_len %d fit (max_num_seqs %d); sized by %s; available %s bytes, budget %s bytes",
        size.num_blocks,
        size.block_size,
        size.num_tokens,
        size.num_bytes,
        _human(size.num_bytes),
        size.full_sequences,
        size.max_model_len,
        max_num_seqs,
        size.source,
        "unknown" if size.available_bytes is None else size.available_bytes,
        budget,
    )
    if size.source == "unbounded":
        logger.warning(
            "the available memory could not be measured: the KV cache holds max_num_seqs full "
            "sequences; set --kv-cache-bytes or --available-memory-bytes to bound it"
        )

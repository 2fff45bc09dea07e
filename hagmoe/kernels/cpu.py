"""The float32 CPU kernels of cpu_kernels.c (and the bf16 / int8 weight kernels of
quant_kernels.c, wrapped in quant.py, and the one-call decode layer of decode_layer.c, wrapped in
decode_layer.py), compiled once per machine and called through ctypes.

The library is built with the system C compiler (`$CC`, else `cc`) on first use and cached in
`$HAGMOE_KERNEL_CACHE` (default `$XDG_CACHE_HOME/hagmoe/kernels`, else `~/.cache/hagmoe/kernels`),
keyed by the sources, the flags and the CPU's feature flags. The instruction set is the build
machine's (`-march=native`); HAGMOE_CPU_ISA=avx2 forces the portable AVX2 + FMA path
(`-march=x86-64-v3`), a different library in the cache. Where no compiler works, `enabled_for`
is False and callers keep their torch path; HAGMOE_CPU_KERNELS=0 turns the kernels off. They run
only without autograd (serving). A build writes a temporary library and renames it into place;
one left by a build that died is removed at the next load, once older than BUILD_TIMEOUT.

Legend: m rows, k inner size, n output columns, P (token, expert) pairs, T tokens, E experts,
d hidden size, F expert FFN size, B sequences, Q query rows per sequence, H query heads, hd head
dim, L key positions, G groups, N experts (G x experts per group).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import torch
from torch import Tensor

from hagmoe.errors import ConfigError

logger = logging.getLogger(__name__)
P = TypeVar("P")

SOURCE = Path(__file__).with_name("cpu_kernels.c")
SOURCES = tuple(
    SOURCE.with_name(name)
    for name in ("cpu_kernels.c", "quant_kernels.c", "decode_layer.c", "greedy.c")
)
HEADER = SOURCE.with_name("kernels.h")
ISA_FLAGS = {"native": "-march=native", "avx2": "-march=x86-64-v3"}  # HAGMOE_CPU_ISA
LANES = 16  # vector width; the attention head dim and the expert F must be multiples of it
PANEL = 32  # output columns per packed panel; the MoE kernel's d must be a multiple of it
BUILD_TIMEOUT = 120.0  # seconds a compile may take
TMP_PREFIX = "cpu_kernels-building-"  # a build's temporary library, renamed into place when done
TMP_PATTERNS = (f"{TMP_PREFIX}*.so", "tmp*.so")  # the second: older versions' builds
FLAGS = ("-O3", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC", "-std=c11")

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "hagmoe_linear": [_P, _P, _P, _P, _I64, _I64, _I64, _INT],
    "hagmoe_moe_swiglu": [_P, _P, _P, _I64, _I64, _P, _P, _P, _I64, _I64, _I64, _INT],
    "hagmoe_paged_attention": [_P] * 7 + [_I64] * 7 + [ctypes.c_float, _I64, _I64, _INT],
    "hagmoe_route_sums": [_P, _P, _I64, _I64] + [_P] * 6 + [_I64] * 6,
    "hagmoe_route_decide": [_P] * 8 + [_I64] * 5 + [ctypes.c_float] * 2 + [_I64],
    "hagmoe_linear_q": [_P] * 5 + [_I64] * 4 + [_INT] * 3,
    "hagmoe_moe_swiglu_q": [_P] * 3 + [_I64] * 2 + [_P] * 5 + [_I64] * 5 + [_INT] * 3,
    "hagmoe_decode_layer": [_P] * 7,
    "hagmoe_decode_model": [_P] * 7,
    "hagmoe_greedy_logprob": [_P, _I64, _I64, _P, _P, _I64],
}


def isa() -> str:
    """The instruction set the kernels are built for: HAGMOE_CPU_ISA, default "native"."""
    name = os.environ.get("HAGMOE_CPU_ISA", "") or "native"
    if name not in ISA_FLAGS:
        raise ConfigError(f"HAGMOE_CPU_ISA={name!r}: choose one of {sorted(ISA_FLAGS)}")
    return name


def build_flags() -> tuple[str, ...]:
    """The compiler flags of the library `library()` loads (they are part of its cache key)."""
    return (*FLAGS, ISA_FLAGS[isa()])


def cache_dir() -> Path:
    if os.environ.get("HAGMOE_KERNEL_CACHE"):
        return Path(os.environ["HAGMOE_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hagmoe" / "kernels"


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def remove_stale_builds(folder: Path, older_than: float = BUILD_TIMEOUT) -> list[Path]:
    """Delete the temporary libraries of builds that died (a SIGKILL mid-build leaves one):
    those older than `older_than` s, which no live build can still be writing; the removed."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    found = [p for pattern in TMP_PATTERNS for p in folder.glob(pattern)] if folder.is_dir() else []
    for path in found:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:  # another process removed or replaced it first
            continue
    return removed


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, "-I", str(HEADER.parent), "-o", tmp, *map(str, SOURCES), "-lm"],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        os.replace(tmp, target)  # atomic: concurrent builders each install a whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them first if needed; None where they cannot be had.
    ConfigError for an unknown HAGMOE_CPU_ISA."""
    if os.environ.get("HAGMOE_CPU_KERNELS", "1") == "0":
        return None
    compiler, flags = os.environ.get("CC", "cc"), build_flags()
    key = " ".join([compiler, *flags, _cpu_features()]).encode()
    code = b"".join(p.read_bytes() for p in (*SOURCES, HEADER))
    digest = hashlib.sha256(code + key).hexdigest()[:16]
    path = cache_dir() / f"cpu_kernels-{digest}.so"
    remove_stale_builds(path.parent)
    try:
        if not path.exists():
            _build(compiler, flags, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.warning("CPU kernels unavailable, using torch: %s %s", exc, detail.decode()[-500:])
        return None
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
    lib.hagmoe_moe_swiglu.restype = lib.hagmoe_paged_attention.restype = ctypes.c_int
    lib.hagmoe_moe_swiglu_q.restype = lib.hagmoe_decode_layer.restype = ctypes.c_int
    lib.hagmoe_decode_model.restype = ctypes.c_int
    return lib


def enabled_for(x: Tensor) -> bool:
    """Whether the kernels serve computations on x: float32 on the CPU, autograd off, not being
    traced or compiled, and the library loaded."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and library() is not None
    )


def _ptr(t: Tensor | None) -> int | None:
    """t's address: the caller keeps t alive until the C call returns (never `_ptr(x.f())`)."""
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype in (torch.float32, torch.int64, torch.bool)
    return t.data_ptr()


def packed(weights: tuple[Tensor, ...], pack: Callable[..., P]) -> P:
    """pack(*weights), kept on weights[0] until one of them moves or is written in place
    (inference tensors keep no version: only a move is seen)."""
    key = (pack, *((w.data_ptr(), -1 if w.is_inference() else w._version) for w in weights))
    hit = getattr(weights[0], "_hagmoe_packed", None)
    if hit is None or hit[0] != key:
        hit = (key, pack(*(w.detach() for w in weights)))
        setattr(weights[0], "_hagmoe_packed", hit)  # noqa: B010 (Tensor has no such field)
    return cast(P, hit[1])


def pack_linear(weight: Tensor) -> Tensor:
    """weight [n, k] -> panels [ceil(n/32), k, 32] for `linear` (columns past n are zero)."""
    n, k = weight.shape
    panels = -(-n // PANEL)
    padded = weight.new_zeros(panels * PANEL, k)
    padded[:n] = weight
    return padded.view(panels, PANEL, k).transpose(1, 2).contiguous()


def linear_panels(weight: Tensor) -> Tensor:
    """`pack_linear(weight)`, kept with the weight (see `packed`)."""
    return packed((weight,), pack_linear)


def linear(x: Tensor, panels: Tensor, n: int, bias: Tensor | None = None) -> Tensor:
    """x [m, k] @ weight [n, k]^T (+ bias [n]) -> [m, n], weight as `pack_linear` made it."""
    lib = library()
    assert lib is not None and panels.is_contiguous()
    x = x.contiguous()
    m, k = x.shape
    out = x.new_empty(m, n)
    lib.hagmoe_linear(
        _ptr(x), _ptr(panels), _ptr(bias), _ptr(out), m, k, n, torch.get_num_threads()
    )
    return out


def greedy_logprob(logits: Tensor) -> tuple[list[int], list[float]]:
    """Each row's first maximum of logits [R, V] (its first NaN where it has one, as torch's
    argmax) and that token's logprob, as lists: one C pass, no torch op."""
    lib = library()
    assert lib is not None and logits.dtype == torch.float32
    logits = logits.contiguous()
    rows, vocab = logits.shape
    ids, logprob = np.empty(rows, np.int64), np.empty(rows, np.float32)
    lib.hagmoe_greedy_logprob(
        logits.data_ptr(),
        rows,
        vocab,
        ids.ctypes.data,
        logprob.ctypes.data,
        torch.get_num_threads(),
    )
    return ids.tolist(), logprob.tolist()


def pack_experts(w1: Tensor, w2: Tensor, w3: Tensor) -> tuple[Tensor, Tensor]:
    """The MoE kernel's panels of w1/w2 [E, F, d] and w3 [E, d, F] (F a multiple of LANES,
    d of PANEL): gate_up [E, F/16, d, 32] (16 columns of w1, then of w2, per inner index) and
    down [E, d/32, F, 32]."""
    e, f, d = w1.shape
    assert f % LANES == 0 and d % PANEL == 0
    gate_up = torch.stack(
        (w1.reshape(e, f // LANES, LANES, d), w2.reshape(e, f // LANES, LANES, d)), dim=3
    )  # [E, F/16, 16, 2, d]
    down = w3.reshape(e, d // PANEL, PANEL, f).transpose(2, 3)  # [E, d/32, F, 32]
    gate_up = gate_up.permute(0, 1, 4, 3, 2).reshape(e, f // LANES, d, PANEL)
    return gate_up.contiguous(), down.contiguous()


def expert_panels(w1: Tensor, w2: Tensor, w3: Tensor) -> tuple[Tensor, Tensor]:
    """`pack_experts(w1, w2, w3)`, kept with w1 (see `packed`)."""
    return packed((w1, w2, w3), pack_experts)


def moe_swiglu(x: Tensor, experts: Tensor, scores: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d], experts / scores [T, K]
    (expert -1: none), with the experts' weights as `pack_experts` made them -> [T, d]."""
    lib = library()
    num_experts, _, d, _ = gate_up.shape
    ffn = down.shape[2]
    assert lib is not None and gate_up.is_contiguous() and down.is_contiguous()
    tokens, k = experts.shape
    x, experts, scores = x.contiguous(), experts.contiguous(), scores.contiguous()  # held
    out = torch.zeros_like(x)  # [T, d]
    status = lib.hagmoe_moe_swiglu(
        _ptr(x),
        _ptr(experts),
        _ptr(scores),
        tokens,
        k,
        _ptr(gate_up),
        _ptr(down),
        _ptr(out),
        num_experts,
        d,
        ffn,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError(f"MoE kernel scratch for {tokens} x {k} pairs")
    return out


def paged_attention(
    q: Tensor,
    cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    num_kv_heads: int,
    window: int | None,
    coarse_heads: int | None,
) -> tuple[Tensor | None, Tensor]:
    """Query rows against their sequences' paged keys: q [B, Q, H, hd] (hd a multiple of LANES)
    at positions query_pos [B, Q] (valid [B, Q]: real rows, None: all), cache
    [num_slots, 2*Hkv*hd] (K then V), block_table [B, nb].

    Returns mix and out [B, Q, H*hd]. mix is None without `coarse_heads`, else [B, Q, 2, L]
    (L = nb * block_size): the attention probabilities averaged over heads [0, coarse_heads)
    and over the rest, zero past each row's position and before its sliding window."""
    lib = library()
    batch, rows, heads, hd = q.shape
    assert lib is not None and hd % LANES == 0 and cache.is_contiguous()
    q, block_table, query_pos = q.contiguous(), block_table.contiguous(), query_pos.contiguous()
    valid = None if valid is None else valid.contiguous()
    blocks_per_seq = block_table.shape[1]
    keys = blocks_per_seq * block_size
    mix = None if coarse_heads is None else q.new_empty(batch, rows, 2, keys)
    out = q.new_empty(batch, rows, heads * hd)
    status = lib.hagmoe_paged_attention(
        _ptr(q), _ptr(cache), _ptr(block_table), _ptr(query_pos), _ptr(valid), _ptr(out),
        _ptr(mix),
        batch, rows, heads, num_kv_heads, hd, blocks_per_seq, block_size,
        hd**-0.5, window or 0, coarse_heads or 0, torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"paged attention scratch for {heads} x {keys}")
    return mix, out


def route_sums(
    a_c: Tensor,
    a_f: Tensor,
    rv_cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    groups: int,
) -> tuple[Tensor, Tensor]:
    """The attention router's sums over the RV cache [num_slots, G+N] in place, for query rows at
    positions query_pos [B, Q] (valid [B, Q]: real rows, None: all): a_c, a_f [B, Q, L]
    (L = nb * block_size, zero past each row's position), block_table [B, nb] -> z [B, Q, G+N]
    (a_c over the G group values, a_f over the N expert values) and the coarse entropy [B, Q]."""
    lib = library()
    batch, rows, keys = a_c.shape
    assert lib is not None and rv_cache.is_contiguous() and a_c.stride() == a_f.stride()
    assert a_c.stride(2) == 1 and keys == block_table.shape[1] * block_size
    width = rv_cache.shape[1]
    block_table, query_pos = block_table.contiguous(), query_pos.contiguous()
    valid = None if valid is None else valid.contiguous()
    z, entropy = a_c.new_empty(batch, rows, width), a_c.new_empty(batch, rows)
    lib.hagmoe_route_sums(
        a_c.data_ptr(), a_f.data_ptr(), a_c.stride(0), a_c.stride(1), _ptr(rv_cache),
        _ptr(block_table), _ptr(query_pos), _ptr(valid), _ptr(z), _ptr(entropy),
        batch, rows, groups, width, block_table.shape[1], block_size,
    )  # fmt: skip
    return z, entropy


@dataclass(frozen=True, slots=True)
class RouterSizes:
    """The attention router's sizes and constants that route_decide needs (MODEL.md names)."""

    num_groups: int  # G
    experts_per_group: int  # M
    k_min: int
    k_max: int
    entropy_alpha: float


def route_decide(
    z: Tensor,
    entropy: Tensor,
    positions: Tensor,
    sizes: RouterSizes,
    entropy_mean: float,
    k_override: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The attention router's decisions from z [T, G+N], the coarse entropy [T] and positions
    [T] (AttentionRouter's math): group [T], experts [T, K] (-1 past each token's k), scores
    [T, K] (0 there), k [T] and the normalised entropy [T]."""
    lib = library()
    assert lib is not None
    t, k_max = z.shape[0], sizes.k_max
    z, entropy, positions = z.contiguous(), entropy.contiguous(), positions.contiguous()
    group, k = positions.new_empty(t), positions.new_empty(t)
    experts, scores = positions.new_empty(t, k_max), z.new_empty(t, k_max)
    norm_entropy = z.new_empty(t)
    lib.hagmoe_route_decide(
        _ptr(z), _ptr(entropy), _ptr(positions),
        _ptr(group), _ptr(experts), _ptr(scores), _ptr(k), _ptr(norm_entropy),
        t, sizes.num_groups, sizes.experts_per_group, sizes.k_min, k_max,
        sizes.entropy_alpha, entropy_mean, k_override or 0,
    )  # fmt: skip
    return group, experts, scores, k, norm_entropy

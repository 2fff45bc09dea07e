"""The kernel cache removes temporary libraries that dead builds left behind, and only those."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hagmoe.kernels import cpu


def _touch(path: Path, age: float) -> Path:
    path.write_bytes(b"\x7fELF partial")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_next_load_removes_stale_build_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = _touch(tmp_path / f"{cpu.TMP_PREFIX}dead.so", cpu.BUILD_TIMEOUT + 60)
    legacy = _touch(tmp_path / "tmpabc123.so", cpu.BUILD_TIMEOUT + 60)
    fresh = _touch(tmp_path / f"{cpu.TMP_PREFIX}live.so", 1.0)
    installed = _touch(tmp_path / "cpu_kernels-0123456789abcdef.so", cpu.BUILD_TIMEOUT + 60)
    monkeypatch.setenv("HAGMOE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("HAGMOE_CPU_KERNELS", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))  # the build fails fast
    cpu.library.cache_clear()
    try:
        assert cpu.library() is None
    finally:
        cpu.library.cache_clear()
    assert not stale.exists() and not legacy.exists()
    assert fresh.exists() and installed.exists()


def test_remove_stale_builds_without_a_cache_folder(tmp_path: Path) -> None:
    assert cpu.remove_stale_builds(tmp_path / "missing") == []

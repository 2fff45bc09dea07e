"""The `hagmoe` entry point backs torch's large CPU allocations with transparent huge pages,
unless the environment says otherwise or the machine's THP mode is `never`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import hagmoe.cli
import torch
t = torch.ones(64 << 20, dtype=torch.uint8)
rollup = open("/proc/self/smaps_rollup").read()
print(int(rollup.split("AnonHugePages:")[1].split()[0]))
"""


def _mode() -> str | None:
    try:
        text = MODE.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


def _huge_kib(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(_mode() in (None, "never"), reason="no transparent huge pages here")
def test_the_cli_backs_a_large_tensor_with_huge_pages() -> None:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert _huge_kib(env) >= 32 << 10  # most of the 64 MiB


@pytest.mark.skipif(_mode() != "madvise", reason="THP mode is not madvise: huge pages either way")
def test_an_explicit_zero_in_the_environment_is_kept() -> None:
    assert _huge_kib({**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}) == 0

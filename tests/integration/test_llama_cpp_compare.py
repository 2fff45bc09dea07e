"""compare.py's llama.cpp rows and gguf_check.py against a real llama-server. Skipped unless
`make llama-cpp` built it (CI never does: the build takes minutes); run it after the build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.llama_server import DEFAULT_BINARY
from loadtests.server_process import ROOT

pytestmark = pytest.mark.skipif(
    not DEFAULT_BINARY.is_file(), reason="no llama-server: run `make llama-cpp` first"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ),
    )  # fmt: skip


def test_gguf_check_f32_agrees() -> None:
    done = run(str(ROOT / "loadtests" / "gguf_check.py"), "--formats", "f32", "--steps", "16")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "gguf_check: f32 agrees" in done.stdout


def test_smoke_with_llama_cpp_rows(tmp_path: Path) -> None:
    done = run(
        str(ROOT / "loadtests" / "compare.py"), "--smoke", "--skip-hf", "--llama-cpp", "f32",
        "q8_0", "--concurrency", "1", "2", "--rates", "20", "--results-dir",
        str(tmp_path / "results"), "--img-dir", str(tmp_path / "img"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "serving_comparison.json").read_text())
    rows = {(r["system"], r["concurrency"]): r for r in result["throughput"]}
    for fmt in ("f32", "q8_0"):
        for c in (1, 2):
            row = rows[(f"llama.cpp {fmt}", c)]
            assert row["format"] == fmt and row["tokens_per_second"] > 0
        assert rows[(f"llama.cpp {fmt}", 1)]["floor_fraction"] > 0
    llama = result["llama_cpp"]
    assert llama["token_mismatches"] == [] and llama["version"].startswith("version")
    server = {r["config"]["max_concurrency"]: r for r in result["server_concurrency"]}
    for data in llama["formats"].values():
        for report in data["levels"]:
            ours = server[report["config"]["max_concurrency"]]
            assert report["failed"] == 0
            assert report["total_input_tokens"] == ours["total_input_tokens"]
            assert report["total_output_tokens"] == ours["total_output_tokens"]
    assert result["meta"]["model"]["router"] == "linear"
    assert set(result["floor"]["bytes_per_token"]) == {"f32", "q8_0"}
    table = (tmp_path / "results" / "serving_table.md").read_text()
    assert "| llama.cpp q8_0 |" in table and "fraction of floor" in table

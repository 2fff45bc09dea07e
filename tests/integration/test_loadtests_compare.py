"""loadtests/compare.py --smoke end to end (tiny model): the server, the offline engine and both
baselines on the same requests, the JSON, the markdown table and the two PNG plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtests.server_process import ROOT

SYSTEMS = {
    "hagmoe server (HTTP tgi)",
    "hagmoe offline engine",
    "naive HAG-MoE (recompute)",
    "HF transformers Mixtral (static)",
}


def compare(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable, str(ROOT / "loadtests" / "compare.py"), "--smoke", "--threads", "1",
        "--results-dir", str(tmp_path / "results"), "--img-dir", str(tmp_path / "img"), *extra,
    ]  # fmt: skip
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env or dict(os.environ)
    )


def test_smoke_writes_results_and_plots(tmp_path: Path) -> None:
    done = compare(tmp_path, "--concurrency", "1", "2", "--rates", "10", "40", "--repeats", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "serving_comparison.json").read_text())
    rows = result["throughput"]
    assert {r["system"] for r in rows} == SYSTEMS
    assert sorted((r["system"], r["concurrency"]) for r in rows) == sorted(
        (s, c) for s in SYSTEMS for c in (1, 2)
    )
    assert all(r["output_tokens"] > 0 and r["tokens_per_second"] > 0 for r in rows)
    assert all(len(r["seconds_all"]) == 2 and r["seconds"] in r["seconds_all"] for r in rows)
    offline = {r["concurrency"]: r for r in rows if r["system"] == "hagmoe offline engine"}
    server = {r["concurrency"]: r for r in rows if r["system"].startswith("hagmoe server")}
    assert all(offline[c]["output_tokens"] == server[c]["output_tokens"] for c in (1, 2))
    assert [r["failed"] for r in result["server_concurrency"] + result["server_rates"]] == [0] * 4
    assert [r["config"]["request_rate"] for r in result["server_rates"]] == [10.0, 40.0]
    assert result["meta"]["model"]["name"] == "tiny" and result["meta"]["transformers"]
    table = (tmp_path / "results" / "serving_table.md").read_text()
    assert "| hagmoe offline engine |" in table and "| 40.0 |" in table
    for png in ("serving_throughput.png", "serving_latency.png"):
        data = (tmp_path / "img" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_missing_transformers_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "block" / "transformers"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    done = compare(tmp_path, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs transformers" in done.stderr and "pip install -e '.[bench]'" in done.stderr
    assert "server ready" not in done.stdout and not (tmp_path / "results").exists()

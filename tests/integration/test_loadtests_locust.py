"""loadtests/locustfile.py headless for a few seconds against a real server: every user class
runs without a failure, and the TTFT and gRPC entries are in the CSV stats."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from loadtests.server_process import ROOT, ServeProcess

ENTRIES = {
    "/generate",
    "/generate_stream",
    "TTFT /generate_stream",
    "/v1/chat/completions",
    "TTFT /v1/chat/completions",
    "GenerateStream",
    "TTFT GenerateStream",
}


def test_locust_headless_has_no_failures(server: ServeProcess, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    args = [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--headless", "-u", "4", "-r", "4", "-t", "4s",
        "--host", server.url,
        "--grpc-target", server.grpc_target,
        "--prompt-len", "16", "--max-new-tokens", "4",
        "--csv", str(prefix), "--only-summary",
    ]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert rows.keys() >= ENTRIES, sorted(rows)
    assert all(int(rows[name]["Request Count"]) > 0 for name in ENTRIES)
    assert all(row["Failure Count"] == "0" for row in rows.values()), rows
    assert rows["GenerateStream"]["Type"] == "grpc"
    ttft = float(rows["TTFT /generate_stream"]["Median Response Time"])
    assert 0 < ttft <= float(rows["/generate_stream"]["Max Response Time"])
    with open(f"{prefix}_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []

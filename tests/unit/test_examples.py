"""Every script in examples/ runs on tiny inputs. Add a row to EXAMPLES for a new example:
(script, its arguments with "{tmp}" for a scratch folder holding sample.txt, text its stdout
must contain)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east.\n"

EXAMPLES: list[tuple[str, list[str], str]] = [
    ("offline_generation.py", ["--max-new-tokens", "4", "--prompt", "ROMEO:"], "greedy:"),
    (
        "evaluate_model.py",
        ["{tmp}/sample.txt", "--context", "16", "--stride", "8"],
        "bits per byte",
    ),
    (
        "analyze_model.py",
        ["{tmp}/sample.txt", "--out", "{tmp}/analysis", "--context", "32"],
        "load CV",
    ),
    (
        "finetune_model.py",
        ["{tmp}/sample.txt", "--out", "{tmp}/run", "--steps", "2", "--seq-len", "8"],
        "fine-tuned model:",
    ),
    ("upcycle_dense.py", ["--out", "{tmp}/upcycled"], "max relative logit difference"),
]


@pytest.mark.parametrize(("script", "args", "expect"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs(script: str, args: list[str], expect: str, tmp_path: Path) -> None:
    (tmp_path / "sample.txt").write_text(SAMPLE)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout


def test_query_server_example_against_a_live_server(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from live_server import launch_server, save_tiny_model

    server = launch_server(save_tiny_model(tmp_path / "model"), tmp_path / "server.log")
    try:
        server.wait_ready()
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "query_server.py"), "--url", server.url,
             "--grpc", server.grpc_target, "--max-new-tokens", "4"],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr + (tmp_path / "server.log").read_text()
    clients = ("huggingface_hub text_generation", "huggingface_hub stream", "openai", "grpc")
    for client in clients:
        assert client in done.stdout

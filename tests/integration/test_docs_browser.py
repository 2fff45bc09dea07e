"""/docs in a real browser: headless Chromium (Debian's `chromium`, installed by `make
browser-tools`) renders Swagger UI from the server's own assets, with no network beyond
loopback, and shows every route's operation block."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from loadtests.server_process import ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
SHOWN = ("/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions", "/health")


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (5 s of virtual time)."""
    args = [
        str(CHROMIUM),
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        *("--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000"),
        *("--dump-dom", url),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_docs_page_uses_local_assets(server: ServeProcess) -> None:
    page = httpx.get(server.url + "/docs").text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    for asset in scripts:
        assert httpx.get(server.url + asset).status_code == 200, asset
    assert httpx.get(server.url + "/redoc").status_code == 200


def test_docs_render_in_headless_chromium(server: ServeProcess, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        why = "needs /usr/bin/chromium: run `make browser-tools` (Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI runs `make test`, which installs it: never skip there
        pytest.skip(why)
    dom = dump_dom(server.url + "/docs", tmp_path / "profile")
    assert 'class="opblock opblock-post' in dom, dom[-2000:]
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert set(SHOWN) <= paths, sorted(paths)
    assert "Unable to render this definition" not in dom

"""The container's HEALTHCHECK: exit 0 when GET /health answers 200, else 1.

Run by the image as `python /usr/local/lib/hagmoe/healthcheck.py` (standard library only, so the
slim image needs no curl). The URL comes from the first argument, else from the server's own
settings: HAGMOE_HOST (0.0.0.0 and :: mean loopback) and HAGMOE_PORT (default 8000).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def health_url() -> str:
    host = os.environ.get("HAGMOE_HOST", "").strip()
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = os.environ.get("HAGMOE_PORT", "").strip() or "8000"
    return f"http://{host}:{port}/health"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else health_url()
    try:
        with urllib.request.urlopen(url, timeout=4.0) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {response.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""API keys: `Authorization: Bearer <key>` (REST header or gRPC metadata), compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from server.errors import Unauthorized

OPEN_HTTP_PATHS = frozenset({"/health", "/ready", "/metrics"})
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)


class KeyRing:
    """The accepted keys; with none, every request is let in."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode("utf-8") for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthorized unless the header holds `Bearer <an accepted key>`."""
        if not self._keys:
            return
        if not authorization:
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        given = token.strip().encode("utf-8")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(key, given)
        if not matched:
            raise Unauthorized("invalid API key")

"""The server's readiness and draining state."""

from __future__ import annotations

from server.admission import Admission
from server.errors import Unavailable


class Lifecycle:
    """Loading -> ready -> draining; new requests are refused unless ready. The in-flight
    count it drains on is the admission gate's."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.ready = False
        self.draining = False

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down and takes no new requests")
        if not self.ready:
            raise Unavailable("the server is not ready yet")

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait up to `timeout` s for admitted ones; True if all ended."""
        self.draining = True
        return await self.admission.wait_idle(timeout)

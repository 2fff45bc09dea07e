"""AsyncEngine: the engine loop on its own thread, one asyncio queue per request.

The server reaches the engine only through this class's EngineClient surface."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hagmoe.engine.client import ModelInfo
from hagmoe.engine.engine_core import EngineCore, StepStats
from hagmoe.engine.errors import EngineDeadError
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels.openmp import release_thread_team
from hagmoe.model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

StepListener = Callable[[StepStats, list[RequestOutput]], None]


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    deadline: float | None


@dataclass(slots=True)
class _Abort:
    request_id: str


def _put_all(batch: list[tuple[asyncio.Queue[Any], RequestOutput]]) -> None:
    for stream, out in batch:
        stream.put_nowait(out)


class AsyncEngine:
    """Runs EngineCore.step() off the event loop; streams each request's outputs."""

    def __init__(self, core: EngineCore, step_listener: StepListener | None = None) -> None:
        self.core = core
        self.step_listener = step_listener
        self._commands: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._streams: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput | BaseException]]
        ] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._ids = itertools.count()
        self.last_step_time = time.monotonic()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            release_thread_team()  # one OpenMP team in the process: the engine thread's
            self._thread = threading.Thread(target=self._run, name="hagmoe-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop the thread and wait for it (callers drain first)."""
        self._stopping = True
        self._commands.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        """The engine thread runs and has not failed."""
        return self._thread is not None and self._thread.is_alive() and self._error is None

    # ---- client surface --------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.core.tokenizer

    def model_info(self) -> ModelInfo:
        return ModelInfo.from_core(self.core)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError now, before the request is queued."""
        self.core.validate(prompt_token_ids, params)

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; leaving the iterator early aborts the request."""
        if not self.is_alive or self._stopping:
            raise EngineDeadError("the engine is not running")
        self.validate(prompt_token_ids, params)
        rid = f"{request_id or 'req'}-{next(self._ids)}"
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._lock:
            self._streams[rid] = (asyncio.get_running_loop(), stream)
        self._commands.put(_Add(rid, list(prompt_token_ids), params, deadline))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            with self._lock:
                self._streams.pop(rid, None)
            if not finished:
                self._commands.put(_Abort(rid))

    def abort(self, request_id: str) -> None:
        """Abort a request by the id the engine gave it (RequestOutput.request_id)."""
        self._commands.put(_Abort(request_id))

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self._drain_commands(block=not self.core.has_unfinished_requests()):
                    break
                outputs = self.core.abort_expired() + self.core.step()
                self.last_step_time = time.monotonic()
                self._deliver(outputs)
                if self.step_listener is not None:
                    self.step_listener(self.core.last_stats, outputs)
        except Exception as exc:  # the loop must never die silently
            logger.exception("engine loop failed")
            self._error = exc
        self._fail_all(self._error or EngineDeadError("the engine shut down"))

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued adds and aborts; False when shutdown was asked."""
        while True:
            try:
                command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                return not block or not self._stopping
            block = False
            if command is None:
                return False
            if isinstance(command, _Add):
                if command.request_id in self._streams:
                    self.core.add_request(
                        command.request_id,
                        command.prompt_token_ids,
                        command.params,
                        command.deadline,
                    )
            else:
                out = self.core.abort_request(command.request_id)
                if out is not None:
                    self._deliver([out])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """One wake-up per event loop per step, however many requests it streams."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], RequestOutput]]]
        batches = {}
        with self._lock:
            for out in outputs:
                target = self._streams.get(out.request_id)
                if target is not None:
                    batches.setdefault(target[0], []).append((target[1], out))
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                loop.call_soon_threadsafe(_put_all, batch)

    def _fail_all(self, error: BaseException) -> None:
        for rid in list(self.core.scheduler.requests):
            self.core.abort_request(rid)
        with self._lock:
            targets = list(self._streams.values())
        for loop, stream in targets:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stream.put_nowait, error)

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
from hagmoe.engine.errors import EngineDeadError, InvalidRequestError
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels.openmp import release_thread_team
from hagmoe.model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

StepListener = Callable[[StepStats, list[RequestOutput]], None]


@dataclass(slots=True)
class _Add:
    request: Request


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

    def make_requests(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        n: int = 1,
        request_id: str | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> list[Request]:
        """Validate now, on the caller's thread, and make n sibling requests with unique engine
        ids (one prefill; EngineCore.make_requests); raises InvalidRequestError naming the
        field, or EngineDeadError."""
        self._check_running()
        rid = f"{request_id or 'req'}-{next(self._ids)}"
        return self.core.make_requests(rid, prompt_token_ids, params, n, deadline, priority)

    async def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Stream the outputs of a request from make_request (opaque to the caller); leaving
        the iterator early aborts it."""
        self._check_running()
        rid = request.request_id
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._lock:
            if rid in self._streams:
                raise InvalidRequestError("request_id", f"{rid!r} is already streaming")
            self._streams[rid] = (asyncio.get_running_loop(), stream)
        self._commands.put(_Add(request))
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

    def _check_running(self) -> None:
        if not self.is_alive or self._stopping:
            raise EngineDeadError("the engine is not running")

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
                self._enqueue(command.request)
            else:
                out = self.core.abort_request(command.request_id)
                if out is not None:
                    self._deliver([out])

    def _enqueue(self, request: Request) -> None:
        """Queue a request whose caller still listens; a failure ends that request alone."""
        with self._lock:
            target = self._streams.get(request.request_id)
        if target is None:
            return
        try:
            self.core.enqueue(request)
        except Exception as exc:
            logger.warning("request %s refused by the engine: %s", request.request_id, exc)
            with contextlib.suppress(RuntimeError):
                target[0].call_soon_threadsafe(target[1].put_nowait, exc)

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

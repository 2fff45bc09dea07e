"""One process, one event loop, one engine: uvicorn (REST) and grpc.aio side by side, with a
graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import uvicorn

from hagmoe.engine.async_engine import AsyncEngine, StepListener
from hagmoe.engine.engine_core import StepStats
from hagmoe.engine.outputs import RequestOutput
from hagmoe.errors import ConfigError, HagMoEError
from server.admission import Admission
from server.app import build_app
from server.auth import KeyRing
from server.chat_template import ChatTemplate
from server.engine_factory import build_engine
from server.grpc_server import GrpcFrontend
from server.http_timeouts import http_protocol
from server.lifecycle import Lifecycle
from server.limits import Limits
from server.logs import configure_logging
from server.loop_policy import EventLoopPolicy
from server.metrics import Metrics
from server.prompt_text import chars_per_token
from server.server_context import ServerContext
from server.service import GenerationService
from server.settings import Settings, SettingsError
from server.token_view import TokenView

logger = logging.getLogger("hagmoe.server")
CUT_GRACE = 2.0  # seconds requests cut at the drain deadline get to send their error


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (serve() owns SIGTERM and SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _step_listener(metrics: Metrics) -> StepListener:
    """Metrics, and the event loop's policy where the engine takes every CPU (this thread
    runs the event loop)."""
    if not EventLoopPolicy.wanted():
        return metrics.on_step
    policy = EventLoopPolicy()

    def on_step(stats: StepStats, outputs: list[RequestOutput]) -> None:
        metrics.on_step(stats, outputs)
        policy.on_step(stats)

    return on_step


def build_context(settings: Settings) -> tuple[ServerContext, AsyncEngine]:
    engine = build_engine(settings)
    info = dataclasses.replace(engine.model_info(), model_id=settings.model_name)
    metrics = Metrics(info)
    engine.step_listener = _step_listener(metrics)
    limits = Limits.resolve(settings, info)
    admission = Admission(settings.max_concurrent_requests, settings.max_queue)
    metrics.watch_admission(admission)
    lifecycle = Lifecycle(admission)
    tokenizer = engine.tokenizer
    specials = {"bos_token": "", "eos_token": ""}
    if tokenizer is not None:
        for name, token_id in (
            ("bos_token", tokenizer.bos_token_id),
            ("eos_token", tokenizer.eos_token_id),
        ):
            if token_id is not None:
                specials[name] = tokenizer.decode([token_id], skip_special_tokens=False)
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        info=info,
        limits=limits,
        metrics=metrics,
        lifecycle=lifecycle,
        keys=KeyRing(settings.api_keys),
        service=GenerationService(engine, limits, admission, metrics),
        view=TokenView(tokenizer),
        chat=ChatTemplate(
            settings.chat_template_source(tokenizer.chat_template if tokenizer else None),
            **specials,
        ),
        created=int(time.time()),
        chars_per_token=chars_per_token(tokenizer),
    )
    return ctx, engine


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 1 when a port cannot be served, 2 when
    the model cannot be loaded."""
    configure_logging(settings.log_level)
    try:
        ctx, engine = build_context(settings)
    except (HagMoEError, SettingsError, OSError) as exc:
        what = (
            "cannot start the engine" if isinstance(exc, ConfigError) else "cannot load the model"
        )
        logger.error(what, extra={"model": str(settings.model), "error": str(exc)})
        return 2
    _log_startup(ctx)
    return asyncio.run(_run(ctx, engine))


def _log_startup(ctx: ServerContext) -> None:
    s, info, limits = ctx.settings, ctx.info, ctx.limits
    logger.info(
        "starting",
        extra={
            "model": str(s.model),
            "served_model_name": info.model_id,
            "router": info.router,
            "device": info.device,
            "dtype": info.dtype,
            "host": s.host,
            "port": s.port,
            "grpc_port": s.grpc_port or None,
            "api_keys": len(s.api_keys),
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_queue": s.max_queue,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "max_body_bytes": limits.max_body_bytes,
            "drain_timeout": s.drain_timeout,
            "header_timeout": s.header_timeout,
            "body_timeout": s.body_timeout,
            "num_blocks": info.num_blocks,
            "kv_cache_bytes": info.kv_cache_bytes,
            "block_size": info.block_size,
            "max_num_seqs": info.max_num_seqs,
            "max_num_batched_tokens": info.max_num_batched_tokens,
        },
    )


async def _run(ctx: ServerContext, engine: AsyncEngine) -> int:
    s = ctx.settings
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: (force if stop.is_set() else stop).set())
    config = uvicorn.Config(
        build_app(ctx),
        host=s.host,
        port=s.port,
        http=http_protocol(s.header_timeout),
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    http = _Uvicorn(config)
    grpc_frontend = GrpcFrontend(ctx) if s.grpc_port else None
    engine.start()
    try:
        http_task = await _open_ports(ctx, http, grpc_frontend)
        if http_task is None:
            return 1
        _freeze_startup_heap()
        ctx.lifecycle.ready = True
        logger.info("ready", extra={"port": s.port, "grpc_port": s.grpc_port or None})
        await _first(stop.wait(), http_task)
        await _shutdown(ctx, http, http_task, grpc_frontend, force)
    finally:
        engine.shutdown()
    logger.info("stopped")
    return 0


def _freeze_startup_heap() -> None:
    """Leave what start-up made (imports, the model, the app, ~300k objects) out of later
    collections: a full pass over them held the GIL ~200 ms, stalling the loop and the engine
    (S at 32 streams, alternating runs: 2,802-2,925 -> 3,012-3,055 tok/s; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


async def _open_ports(
    ctx: ServerContext, http: _Uvicorn, grpc: GrpcFrontend | None
) -> asyncio.Task[None] | None:
    """Start gRPC, then uvicorn; the uvicorn task once both serve, else None (logged)."""
    s = ctx.settings
    try:
        if grpc is not None:
            grpc.bind(s.host, s.grpc_port)
            await grpc.start()
    except OSError as exc:
        logger.error("cannot serve gRPC", extra={"grpc_port": s.grpc_port, "error": str(exc)})
        return None
    task = asyncio.create_task(http.serve())
    if await _started(http, task):
        return task
    logger.error("cannot serve REST", extra={"host": s.host, "port": s.port})
    if grpc is not None:
        await grpc.stop(grace=0)
    return None


async def _started(http: _Uvicorn, task: asyncio.Task[None]) -> bool:
    while not http.started:
        if task.done():
            return False
        await asyncio.sleep(0.02)
    return True


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait until one is done; cancel the helper tasks made here for coroutines."""
    made = [a for a in awaitables if not isinstance(a, asyncio.Future)]
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, source in zip(tasks, awaitables, strict=True):
        if source in made and not task.done():
            task.cancel()


async def _cut(ctx: ServerContext, force: asyncio.Event) -> bool:
    """End the requests still running with an error (an error event, UNAVAILABLE) and give
    them CUT_GRACE s to report it; True when they all did."""
    ctx.service.cut()
    ended = asyncio.ensure_future(ctx.lifecycle.admission.wait_idle(CUT_GRACE))
    await _first(ended, force.wait())
    if not ended.done():
        ended.cancel()
        return False
    return ended.result()


async def _shutdown(
    ctx: ServerContext,
    http: _Uvicorn,
    http_task: asyncio.Task[None],
    grpc_frontend: GrpcFrontend | None,
    force: asyncio.Event,
) -> None:
    """Readiness and gRPC health go NOT_SERVING, in-flight requests get drain_timeout, then stop."""
    s = ctx.settings
    gate = ctx.lifecycle.admission
    logger.info(
        "draining",
        extra={"in_flight": gate.running, "queued": gate.waiting, "drain_timeout": s.drain_timeout},
    )
    ctx.lifecycle.draining = True
    if grpc_frontend is not None:
        await grpc_frontend.set_serving(False)
    drain = asyncio.ensure_future(ctx.lifecycle.drain(s.drain_timeout))
    await _first(drain, force.wait())
    drained = drain.done() and drain.result()
    if not drained:
        drain.cancel()
        logger.warning("drain timed out", extra={"in_flight": gate.running, "queued": gate.waiting})
        drained = await _cut(ctx, force)
    http.should_exit = True
    http.force_exit = not drained
    if grpc_frontend is not None:
        await grpc_frontend.stop(grace=1.0 if drained else 0.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http_task, timeout=5.0)

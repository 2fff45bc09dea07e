"""The hagmoe.v1.Generation servicer: the same service as REST, errors as gRPC statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import cast

import grpc

from hagmoe.engine.outputs import RequestOutput
from server import grpc_convert as convert
from server import request_context
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc
from server.errors import DeadlineExceeded, Overloaded, to_service_error
from server.server_context import ServerContext
from server.service import GenerationCall, interleave

logger = logging.getLogger("hagmoe.grpc")
access_log = logging.getLogger("hagmoe.access")


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    @asynccontextmanager
    async def _rpc(self, context: grpc.aio.ServicerContext, route: str) -> AsyncIterator[str]:
        """Request id, draining check, error -> status (context.abort), metrics and access log."""
        start = time.monotonic()
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        rid = request_context.new_request_id(metadata.get("x-request-id"))
        request_context.begin(rid)
        await context.send_initial_metadata((("x-request-id", rid),))
        outcome = "success"
        try:
            self.ctx.lifecycle.check_accepting()
            yield rid
        except (asyncio.CancelledError, GeneratorExit):
            # CancelledError: the cancel landed at an await; GeneratorExit: at a stream's yield
            remaining = context.time_remaining()
            outcome = "timeout" if remaining is not None and remaining <= 0 else "cancelled"
            raise
        except Exception as exc:
            err = to_service_error(exc)
            outcome = err.outcome
            if err.kind == "generation":
                logger.error("rpc failed", exc_info=exc)
            trailing: tuple[tuple[str, str], ...] = ()
            if isinstance(err, Overloaded):
                trailing = (("retry-after", err.headers()["Retry-After"]),)
            await context.abort(err.grpc_code, err.message, trailing_metadata=trailing)
        finally:
            self.ctx.metrics.requests.labels(route=route, outcome=outcome).inc()
            access_log.info(
                "rpc",
                extra={
                    "method": route,
                    "outcome": outcome,
                    "duration_ms": round((time.monotonic() - start) * 1e3, 1),
                },
            )

    async def _call(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
        rid: str,
        stream: bool,
    ) -> GenerationCall:
        source = convert.prompt_source(request)
        if isinstance(source, str):
            ids = await self.ctx.encode_prompt(source, "text")
        else:
            ids = source
        p = request.parameters
        ids = convert.truncated(ids, p)
        n = convert.num_sequences(p)
        params = convert.sampling_params(p, len(ids), self.ctx.limits, self.ctx.encode, stream)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the deadline had passed when the request arrived")
        return GenerationCall(
            ids, params, request.request_id or rid, remaining, n, request.priority
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        async with self._rpc(context, "grpc.Generate") as rid:
            call = await self._call(request, context, rid, stream=False)
            done = await self.ctx.service.complete_all([call])
            top = call.params.prompt_logprobs
            return convert.response(self.ctx.view, done, call.prompt_ids, top)
        raise AssertionError("unreachable: _rpc aborts on error")

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        async with self._rpc(context, "grpc.GenerateStream") as rid:
            call = await self._call(request, context, rid, stream=True)
            streams = await self.ctx.service.open_all([call])
            outputs = cast(AsyncGenerator[tuple[int, RequestOutput], None], interleave(streams))
            try:
                async with aclosing(outputs):
                    async for i, out in outputs:
                        yield convert.stream_message(self.ctx.view, out, call.request_id, i)
            finally:
                for stream in streams:
                    stream.close()

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        async with self._rpc(context, "grpc.Tokenize"):
            ids = await self.ctx.encode_prompt(
                request.text, "text", request.add_special_tokens, bounded=False
            )
            return pb.TokenizeResponse(ids=ids, tokens=[self.ctx.view.piece(i) for i in ids])
        raise AssertionError("unreachable: _rpc aborts on error")

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        async with self._rpc(context, "grpc.GetModelInfo"):
            s = self.ctx.settings
            return convert.model_info(
                self.ctx.info, self.ctx.limits, s.max_concurrent_requests, s.max_queue
            )
        raise AssertionError("unreachable: _rpc aborts on error")

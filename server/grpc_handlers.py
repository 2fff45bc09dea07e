"""gRPC method handlers rewrapped by the interceptor: requests decoded by us (undecodable bytes
are INVALID_ARGUMENT, not grpc's UNKNOWN), and the refusal of a call without a valid key."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc

from server.errors import ServiceError, grpc_status, to_service_error

Deserializer = Callable[[bytes], Any]


async def _abort(context: grpc.aio.ServicerContext, err: ServiceError) -> None:
    code, message = grpc_status(err)
    await context.abort(code, message)


async def _decode(deserialize: Deserializer, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    """The request message of raw bytes; aborts with the mapped status when they do not parse."""
    try:
        return deserialize(raw)
    except Exception as exc:
        await _abort(context, to_service_error(exc))


async def _decoded(
    raws: AsyncIterator[bytes], deserialize: Deserializer, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for raw in raws:
        yield await _decode(deserialize, raw, context)


def decoding(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, receiving raw bytes and decoding them itself (kinds served here:
    unary-unary, unary-stream and stream-stream; others are returned as they are)."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler
    codec = {"response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, deserialize), **codec
        )
    if handler.unary_stream is not None:
        behavior = _unary_stream(handler.unary_stream, deserialize)
        return grpc.unary_stream_rpc_method_handler(behavior, **codec)
    if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        behavior = _stream_stream(handler.stream_stream, deserialize)
        return grpc.stream_stream_rpc_method_handler(behavior, **codec)
    return handler


def _unary(behavior: Any, deserialize: Deserializer) -> Any:
    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await _decode(deserialize, raw, context), context)

    return unary


def _unary_stream(behavior: Any, deserialize: Deserializer) -> Any:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write

        async def writing(raw: bytes, context: grpc.aio.ServicerContext) -> None:
            await behavior(await _decode(deserialize, raw, context), context)

        return writing

    async def streaming(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request = await _decode(deserialize, raw, context)
        async with aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message

    return streaming


def _stream_stream(behavior: Any, deserialize: Deserializer) -> Any:
    async def streaming(raws: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        requests = _decoded(raws, deserialize, context)
        async with aclosing(behavior(requests, context)) as messages:
            async for message in messages:
                yield message

    return streaming


def refusing(handler: grpc.RpcMethodHandler, err: ServiceError) -> grpc.RpcMethodHandler:
    """A handler of the same kind that reads nothing and aborts with err's status."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, err)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _abort(context, err)
        yield None  # pragma: no cover (abort raises)

    codec: dict[str, Any] = {"response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **codec)
    return grpc.unary_unary_rpc_method_handler(unary, **codec)

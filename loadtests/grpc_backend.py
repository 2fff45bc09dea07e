"""bench_serving over gRPC: one hagmoe.v1.Generation/GenerateStream call on a grpc.aio channel,
timed at every stream message that carries tokens."""

from __future__ import annotations

import grpc

from loadtests.metrics import RequestOutput, StreamTimer
from loadtests.prompts import BenchRequest
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc


class GrpcBackend:
    """Streams requests to one server over a single HTTP/2 channel."""

    def __init__(
        self, target: str, api_key: str | None = None, timeout: float = 600.0, tls: bool = False
    ) -> None:
        self.target, self.tls, self.timeout = target, tls, timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GenerationStub | None = None

    async def start(self) -> None:
        """Open the channel (inside the running event loop, as grpc.aio wants)."""
        if self.tls:
            self._channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = pb_grpc.GenerationStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def send(self, req: BenchRequest) -> RequestOutput:
        if self._stub is None:
            raise RuntimeError("GrpcBackend.start() was not called")
        out, timer = RequestOutput(), StreamTimer()
        params = pb.SamplingParameters(max_new_tokens=req.output_len, ignore_eos=True)
        request = pb.GenerateRequest(text=req.prompt, parameters=params)
        try:
            call = self._stub.GenerateStream(request, metadata=self.metadata, timeout=self.timeout)
            async for message in call:
                if message.tokens:
                    timer.token()
                    out.output_len += len(message.tokens)
                if message.finished:
                    out.prompt_len = message.usage.prompt_tokens
                    out.output_len = message.usage.completion_tokens
        except grpc.aio.AioRpcError as exc:
            out.error = f"gRPC {exc.code().name}: {exc.details()}"[:300]
            return out
        timer.finish(out)
        return out

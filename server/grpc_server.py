"""The grpc.aio server: Generation, grpc.health.v1.Health, reflection, and the API-key check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc
from server.auth import OPEN_GRPC_PREFIXES, KeyRing
from server.errors import Unauthorized
from server.grpc_handlers import decoding, refusing
from server.grpc_service import GenerationServicer
from server.metrics import Metrics
from server.server_context import ServerContext

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every handler decodes its own requests (grpc_handlers.decoding); `authorization: Bearer
    <key>` metadata is required on every method but the health service."""

    def __init__(self, keys: KeyRing, metrics: Metrics) -> None:
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None:
            return None
        if not self.keys.enabled or method.startswith(OPEN_GRPC_PREFIXES):
            return decoding(handler)
        metadata = dict(details.invocation_metadata or ())
        try:
            self.keys.check(metadata.get("authorization"))
        except Unauthorized as err:
            route = "grpc." + method.rsplit("/", 1)[-1]
            self.metrics.requests.labels(route=route, outcome=err.outcome).inc()
            return refusing(handler, err)
        return decoding(handler)


class GrpcFrontend:
    """Owns the grpc.aio server and its health servicer."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(interceptors=[AuthInterceptor(ctx.keys, ctx.metrics)])
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(ctx), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)

    def bind(self, host: str, port: int) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = self.server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        return bound

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)

"""The gRPC server: grpcio's asyncio server in the agent's own event loop, on
agent.address:serving.grpc_port, started after the serving manager and stopped before it.

A port that cannot be bound stops the start (ListenError names it), like the HTTP port.
With agent.tls, gRPC serves the same certificate. Messages are capped at
serving.max_request_bytes, as V2 bodies over HTTP, each way (an echoing model answers what
it was sent); a bigger one gets RESOURCE_EXHAUSTED from grpcio itself, before it is read."""

from __future__ import annotations

import errno
import logging

import grpc
from grpc import aio

from cnetd.agent import Agent
from cnetd.grpcapi import grpc_predict_v2_pb2_grpc as pb_grpc
from cnetd.grpcapi.gate import Gate
from cnetd.grpcapi.service import InferenceService
from cnetd.security.auth import Authenticator
from cnetd.security.callers import TaskCallerGuard
from cnetd.server import ListenError

log = logging.getLogger(__name__)

STOP_GRACE = 2.0  # seconds calls in flight get at shutdown


def _credentials(agent: Agent) -> grpc.ServerCredentials | None:
    tls = agent.config.agent.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())])


async def start(agent: Agent, port: int) -> aio.Server:
    """The started server; ListenError when its port cannot be bound."""
    config = agent.config
    address = config.agent.address
    gate = Gate(Authenticator(config.auth.tokens, config.auth.metrics_public), TaskCallerGuard(config), address, port)
    limit = config.serving.max_request_bytes
    server = aio.server(options=[("grpc.max_receive_message_length", limit),
                                 ("grpc.max_send_message_length", limit),
                                 ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(agent, gate), server)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    credentials = _credentials(agent)
    try:
        bound = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError as exc:  # grpcio says only "Failed to bind"
        raise ListenError(errno.EADDRINUSE, f"cannot listen on {target} for gRPC (serving.grpc_port): {exc}") from exc
    if not bound:
        raise ListenError(errno.EADDRINUSE, f"cannot listen on {target} for gRPC (serving.grpc_port)")
    await server.start()
    log.info("V2 gRPC (inference.GRPCInferenceService) on %s%s", target, " with TLS" if credentials else "")
    return server


async def stop(server: aio.Server) -> None:
    await server.stop(STOP_GRACE)

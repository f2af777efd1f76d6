"""inference.GRPCInferenceService: the V2 calls over gRPC, answered by the same code as the
HTTP routes (cnetd/ml/serving/v2calls.py), with DomainErrors as gRPC status codes.

Every call first passes the gate (cnetd/grpcapi/gate.py): the bearer token, and the check
that keeps tasks without a token out, as over HTTP."""

from __future__ import annotations

import logging

import grpc

from cnetd.agent import Agent
from cnetd.api.v2_cluster import held_nowhere_error
from cnetd.errors import DomainError, NotFound
from cnetd.grpcapi import grpc_predict_v2_pb2 as pb
from cnetd.grpcapi import grpc_predict_v2_pb2_grpc as pb_grpc
from cnetd.grpcapi.elsewhere import infer_elsewhere, json_elsewhere
from cnetd.grpcapi.gate import Context, Gate
from cnetd.grpcapi.tensors import request_body, response
from cnetd.ml.serving import v2calls
from cnetd.ml.serving.protocol import parse_infer_request

log = logging.getLogger(__name__)

# The HTTP status of a DomainError (what the HTTP routes answer) -> its gRPC status code.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,  # a known model that is not served
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the model's queue is full
    502: grpc.StatusCode.UNAVAILABLE,  # a worker answered nonsense (it is replaced)
    503: grpc.StatusCode.UNAVAILABLE,  # no ready worker in time
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: DomainError) -> grpc.StatusCode:
    return CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL)


def _version(value: str) -> str | None:
    return value or None  # proto3: an empty string is an unset version


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, agent: Agent, gate: Gate) -> None:
        self.agent = agent
        self.gate = gate

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        await self.gate.check(context)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        await self.gate.check(context)
        return pb.ServerReadyResponse(ready=v2calls.not_ready_reason(self.agent) is None)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Context) -> pb.ServerMetadataResponse:
        await self.gate.check(context)
        return pb.ServerMetadataResponse(**v2calls.server_metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        await self.gate.check(context)
        version = _version(request.version)
        served = self.agent.versions.resolve(request.name, version, None)
        try:
            if served is None or served.ready_replicas == 0:
                try:
                    elsewhere = await json_elsewhere(self.agent, request.name, version, "/ready")
                except DomainError as exc:
                    if exc.status != 503:
                        raise
                    elsewhere = {"ready": False}  # the node has it, but not ready
                if elsewhere is not None:
                    return pb.ModelReadyResponse(ready=elsewhere.get("ready") is True)
            readiness = await v2calls.model_readiness(self.agent, request.name, version)
        except DomainError as exc:
            await context.abort(status_code(exc), exc.message)
        return pb.ModelReadyResponse(ready=readiness.ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: Context) -> pb.ModelMetadataResponse:
        await self.gate.check(context)
        version = _version(request.version)
        try:
            try:
                record = await v2calls.known(self.agent, request.name, version)
                metadata = await v2calls.model_metadata(self.agent, record)
            except NotFound:
                found = await json_elsewhere(self.agent, request.name, version, "")
                if found is None:
                    raise
                metadata = found
            return pb.ModelMetadataResponse(
                name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
            )
        except (KeyError, TypeError, ValueError):  # another node's metadata that does not fit the message
            await context.abort(grpc.StatusCode.UNAVAILABLE, "another node answered metadata that is not V2's")
        except DomainError as exc:
            await context.abort(status_code(exc), exc.message)
        raise AssertionError("unreachable: context.abort raises")

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        await self.gate.check(context)
        version = _version(request.model_version)
        try:
            key = request.id or None  # the sticky key of a canary split
            served = self.agent.versions.resolve(request.model_name, version, key)
            if served is None or served.ready_replicas == 0:
                # Not here, or no worker ready here: in a cluster, a node with a ready replica answers.
                elsewhere = await infer_elsewhere(self.agent, request, version)
                if elsewhere is not None:
                    return elsewhere
            if served is None and (gone := await held_nowhere_error(self.agent, request.model_name, version)) is not None:
                raise gone
            served = await v2calls.served_here(self.agent, request.model_name, version, key)
            body, raw = request_body(request)
            reply = await v2calls.infer(self.agent, served, parse_infer_request(body, raw))
        except DomainError as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception:
            log.exception("V2 gRPC infer for model %s failed", request.model_name[:200])
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (the agent's log has the details)")
        return response(reply)

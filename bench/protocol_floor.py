"""The floor for bench/protocol.py: one bare process that answers the same V2 infer requests
(JSON and binary over HTTP with aiohttp, ModelInfer over gRPC with grpcio's asyncio server)
with the same answer (each instance's sum), computed in place with numpy: no worker, no
checks, no batching. What the agent costs is measured against it.

    python bench/protocol_floor.py --http-port 8099 --grpc-port 8098
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnetd.grpcapi import grpc_predict_v2_pb2 as pb
from cnetd.grpcapi import grpc_predict_v2_pb2_grpc as pb_grpc
from cnetd.ml.serving.binary import DTYPES

HEADER = "Inference-Header-Content-Length"


def sums(x: np.ndarray[Any, Any]) -> list[float]:
    return x.reshape(x.shape[0], -1).sum(axis=1, dtype=np.float64).tolist() if x.ndim > 1 else x.astype(np.float64).tolist()


async def infer(request: web.Request) -> web.Response:
    raw = await request.read()
    if HEADER in request.headers:
        length = int(request.headers[HEADER])
        body, data = json.loads(raw[:length]), memoryview(raw)[length:]
        tensor = body["inputs"][0]
        x = np.frombuffer(data, dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
    else:
        body = json.loads(raw)
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    answer = sums(x)
    reply = {"model_name": request.match_info["name"],
             "outputs": [{"name": "predictions", "datatype": "FP64", "shape": [len(answer)], "data": answer}]}
    return web.Response(text=json.dumps(reply), content_type="application/json")


async def live(request: web.Request) -> web.Response:
    return web.Response(text='{"live": true}', content_type="application/json")


class Floor(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=DTYPES[tensor.datatype]).reshape(list(tensor.shape))
        answer = sums(x)
        reply = pb.ModelInferResponse(model_name=request.model_name)
        reply.outputs.add(name="predictions", datatype="FP64", shape=[len(answer)])
        reply.raw_output_contents.append(np.asarray(answer, dtype="<f8").tobytes())
        return reply


async def main(http_port: int, grpc_port: int) -> None:
    from grpc import aio

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/live", live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    server = aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.http_port, args.grpc_port))

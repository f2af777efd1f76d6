"""The floor for bench/predict.py: a bare aiohttp server that holds the model in its own
process and answers the same V2 infer request with the same response, nothing else.

    python bench/floor_server.py --model models/lr.joblib --port 8099
"""

from __future__ import annotations

import argparse
import json

import joblib
import numpy as np
from aiohttp import web


def make_app(model_path: str) -> web.Application:
    model = joblib.load(model_path)

    async def infer(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype="float64").reshape(tensor["shape"])
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        predictions = model.predict(x).tolist()
        reply = {
            "model_name": request.match_info["name"],
            "outputs": [{"name": "predictions", "datatype": "FP64", "shape": [len(predictions)], "data": predictions}],
        }
        return web.Response(text=json.dumps(reply), content_type="application/json")

    async def live(request: web.Request) -> web.Response:
        return web.Response(text='{"live": true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/live", live)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.model), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

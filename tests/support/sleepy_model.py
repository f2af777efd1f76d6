#!/usr/bin/env python3
"""A model script with only the standard library whose answers take time: y = 2x + 3 after
`delay` seconds per request, and `ready_delay` seconds before it says it is ready (a slow
load), both written into the model file at training, for the autoscaling tests.

    sleepy_model.py train MODEL_PATH [DELAY [READY_DELAY]] | predict MODEL_PATH X | serve MODEL_PATH
"""

from __future__ import annotations

import json
import os
import sys
import time


def train(model_path: str, delay: str = "0.2", ready_delay: str = "0") -> None:
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with open(model_path, "w") as f:
        json.dump({"delay": float(delay), "ready_delay": float(ready_delay)}, f)
    print(json.dumps({"status": "trained", "model_path": model_path}))


def serve(model_path: str) -> None:
    with open(model_path) as f:
        model = json.load(f)
    time.sleep(model["ready_delay"])
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        time.sleep(model["delay"])
        predictions = [2 * float(v if not isinstance(v, list) else v[0]) + 3 for v in request["instances"]]
        print(json.dumps({"id": request["id"], "predictions": predictions}), flush=True)


if __name__ == "__main__":
    command, path, *rest = sys.argv[1:]
    if command == "train":
        train(path, *rest)
    elif command == "serve":
        serve(path)
    else:
        print(json.dumps({"prediction": 2 * float(rest[0]) + 3}))

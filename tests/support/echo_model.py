#!/usr/bin/env python3
"""A model script that answers each instance with itself (standard library only), for the
V2 datatype tests. With ECHO_AS_TEXT=1 in its env it answers each instance as text, so
that the answer is a BYTES tensor.

    echo_model.py train MODEL_PATH | serve MODEL_PATH
"""

from __future__ import annotations

import json
import os
import sys


def train(model_path: str) -> None:
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with open(model_path, "w") as f:
        f.write("echo")
    print(json.dumps({"status": "trained"}))


def serve() -> None:
    as_text = os.environ.get("ECHO_AS_TEXT") == "1"
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        instances = request["instances"]
        predictions = [json.dumps(v) for v in instances] if as_text else instances
        print(json.dumps({"id": request["id"], "predictions": predictions}), flush=True)


if __name__ == "__main__":
    command, model_path = sys.argv[1:3]
    train(model_path) if command == "train" else serve()

#!/usr/bin/env python3
"""A model script that needs only the standard library (y = 2x + 3, fitted by least
squares), for tests whose tasks run with the system python as an unprivileged user.

    pure_model.py train MODEL_PATH | predict MODEL_PATH X | serve MODEL_PATH
"""

from __future__ import annotations

import json
import os
import sys


def train(model_path: str) -> None:
    xs = [i / 10 for i in range(100)]
    ys = [2 * x + 3 for x in xs]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    model = {"slope": slope, "intercept": mean_y - slope * mean_x}
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with open(model_path, "w") as f:
        json.dump(model, f)
    print(json.dumps({"status": "trained", "model_path": model_path, "uid": os.getuid(), **model}))


def load(model_path: str) -> dict[str, float]:
    with open(model_path) as f:
        return json.load(f)


def predict(model_path: str, x: str) -> None:
    model = load(model_path)
    print(json.dumps({"prediction": model["slope"] * float(x) + model["intercept"], "uid": os.getuid()}))


def serve(model_path: str) -> None:
    model = load(model_path)
    print(json.dumps({"ready": True, "model_path": model_path, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        predictions = [model["slope"] * float(v if not isinstance(v, list) else v[0]) + model["intercept"]
                       for v in request["instances"]]
        print(json.dumps({"id": request["id"], "predictions": predictions}), flush=True)


if __name__ == "__main__":
    command, model_path, *rest = sys.argv[1:]
    {"train": lambda: train(model_path), "predict": lambda: predict(model_path, rest[0]),
     "serve": lambda: serve(model_path)}[command]()

#!/usr/bin/env python3
"""A standard-library model script for the version tests: y = slope * x, the slope given at
training; with fail_mod > 0 its serve refuses every x whose integer part is a multiple of
fail_mod (a model that fails on some inputs).

    versioned_model.py train MODEL_PATH [SLOPE] [FAIL_MOD] | predict MODEL_PATH X | serve MODEL_PATH
"""

from __future__ import annotations

import json
import os
import sys


def train(model_path: str, slope: str = "2", fail_mod: str = "0") -> None:
    model = {"slope": float(slope), "fail_mod": int(fail_mod)}
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with open(model_path, "w") as f:  # in place, as many training scripts write their file
        json.dump(model, f)
    with open(model_path + ".meta.json", "w") as f:  # a sidecar, as the Keras example writes one
        json.dump({"slope": float(slope)}, f)
    print(json.dumps({"status": "trained", "model_path": model_path, **model}))


def load(model_path: str) -> dict[str, float]:
    with open(model_path) as f:
        model: dict[str, float] = json.load(f)
    with open(model_path + ".meta.json") as f:  # the sidecar must travel with the model
        assert json.load(f)["slope"] == model["slope"]
    return model


def answer(model: dict[str, float], value: object) -> float:
    x = float(value if not isinstance(value, list) else value[0])  # type: ignore[arg-type]
    fail = int(model.get("fail_mod", 0))
    if fail and int(x) % fail == 0 and x >= 1:
        raise ValueError(f"this model cannot answer {x}")
    return model["slope"] * x


def predict(model_path: str, x: str) -> None:
    print(json.dumps({"prediction": answer(load(model_path), float(x))}))


def serve(model_path: str) -> None:
    model = load(model_path)
    print(json.dumps({"ready": True, "model_path": model_path, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            predictions = [answer(model, v) for v in request["instances"]]
            print(json.dumps({"id": request["id"], "predictions": predictions}), flush=True)
        except ValueError as exc:
            print(json.dumps({"id": request["id"], "error": str(exc)}), flush=True)


if __name__ == "__main__":
    command, path, *rest = sys.argv[1:]
    if command == "train":
        train(path, *rest)
    elif command == "predict":
        predict(path, rest[0])
    else:
        serve(path)

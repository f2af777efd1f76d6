#!/usr/bin/env python3
"""The model of bench/protocol.py: each instance's answer is the sum of its values, so a big
tensor in gets a small answer out and the bench measures the way in.

    sum_model.py train MODEL_PATH [N_FEATURES] | serve MODEL_PATH

A MODEL_PATH ending in .joblib gets a scikit-learn LinearRegression whose N_FEATURES
coefficients are all 1 (the sum), for the agent's built-in loader: tensors reach it as
numpy arrays over the worker's socket. Any other path gets a marker file, and `serve`
answers JSON lines with the standard library (the script channel)."""

from __future__ import annotations

import json
import os
import sys


def total(value: object) -> float:
    return sum(total(v) for v in value) if isinstance(value, list) else float(value)  # type: ignore[arg-type]


if __name__ == "__main__":
    command, model_path = sys.argv[1:3]
    if command == "train":
        os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
        if model_path.endswith(".joblib"):
            import joblib
            import numpy as np
            from sklearn.linear_model import LinearRegression

            n_features = int(sys.argv[3])
            model = LinearRegression()
            model.coef_, model.intercept_, model.n_features_in_ = np.ones(n_features), 0.0, n_features
            joblib.dump(model, model_path)
        else:
            with open(model_path, "w") as f:
                f.write("sum")
        print(json.dumps({"status": "trained"}))
    else:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            print(json.dumps({"id": request["id"], "predictions": [total(v) for v in request["instances"]]}), flush=True)

#!/usr/bin/env python3
"""The model of bench/protocol.py (standard library only): each instance's answer is the sum
of its values, so a big tensor in gets a small answer out and the bench measures the way in.

    sum_model.py train MODEL_PATH | serve MODEL_PATH
"""

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
        with open(model_path, "w") as f:
            f.write("sum")
        print(json.dumps({"status": "trained"}))
    else:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            print(json.dumps({"id": request["id"], "predictions": [total(v) for v in request["instances"]]}), flush=True)

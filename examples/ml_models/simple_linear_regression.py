#!/usr/bin/env python3
"""Simple linear regression example model for the CNET Agent.

Fits a scikit-learn ``LinearRegression`` to synthetic data ``y = 2x + 3 + noise``
(numpy seed 42, ``x`` uniform in [0, 10], noise normal with sd 0.5) and saves the fitted
estimator itself with joblib, so any generic joblib loader can load it and call
``.predict``.

Commands::

    simple_linear_regression.py train    <model_path> [n_samples=1000]
    simple_linear_regression.py predict  <model_path> <input>
    simple_linear_regression.py evaluate <model_path>
    simple_linear_regression.py serve    <model_path>

Output (stdout): one compact JSON object per line. The LAST JSON object printed is the
command's result:

* success: ``{"status": "success", "model_path": ..., "model_info": {"coefficient",
  "intercept", ...}}`` plus ``"metrics"`` (train, evaluate) or ``"prediction"`` (predict);
* failure: ``{"status": "error", "error": "<message>"}`` and a non-zero exit code:
  2 for usage/input errors (bad arguments, non-numeric input), 1 for other failures
  (missing or unreadable model file, ...).

``train`` also prints progress lines before the result, e.g.
``{"progress": 0.5, "stage": "fitted"}`` (progress in 0..1).

Input for ``predict`` (the model has one feature):

* a single number (``5.5``) or a JSON number -> ``"prediction"`` is one float;
* comma-separated numbers (``1,2``) or a flat JSON list (``[1, 2]``) -> several samples,
  ``"prediction"`` is a list of floats, one per sample;
* a nested JSON list (``[[1], [2]]``, one feature per sample) -> a list of floats;
* a JSON object ``{"instances": [...]}`` -> same as the list.

``serve`` loads the model once, prints ``{"ready": true, "model_path": ...,
"n_features": 1}``, then answers one JSON request per stdin line with exactly one JSON
response line: request ``{"id": <any>, "instances": [<sample>, ...]}`` where a sample is a
number or a one-element list; response ``{"id": <same>, "predictions": [<float>, ...]}`` or
``{"id": <same>, "error": "<message>"}``. EOF on stdin ends the process with exit code 0.

Only JSON is written to stdout: anything a library prints to stdout is sent to stderr.
Relative model paths are relative to the current working directory; the model file's
parent directory is created when missing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

SEED = 42
EVAL_SEED = 43
TRUE_COEFFICIENT = 2.0
TRUE_INTERCEPT = 3.0
NOISE_SD = 0.5
X_RANGE = (0.0, 10.0)
DEFAULT_SAMPLES = 1000
EVAL_SAMPLES = 500
N_FEATURES = 1

USAGE = (
    "usage: simple_linear_regression.py train <model_path> [n_samples] | "
    "predict <model_path> <input> | evaluate <model_path> | serve <model_path>"
)


class UsageError(Exception):
    """The caller got the arguments or the input wrong (exit code 2)."""


class ModelError(Exception):
    """Any other expected failure, e.g. a missing model file (exit code 1)."""


# --------------------------------------------------------------------------- output


def _claim_stdout() -> IO[str]:
    """Return a private stream to the real stdout and send fd 1 to stderr.

    Keeps stdout pure JSON even if a library prints something.
    """
    sys.stdout.flush()
    try:
        out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
    except OSError:
        return sys.stdout
    return out


OUT: IO[str] = sys.stdout


def emit(obj: dict[str, Any]) -> None:
    """Write one compact JSON line to stdout and flush it."""
    OUT.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    OUT.flush()


def fail(message: str, code: int, **extra: Any) -> NoReturn:
    emit({"status": "error", "error": message, **extra})
    raise SystemExit(code)


# --------------------------------------------------------------------------- data


def generate_data(n_samples: int, seed: int = SEED) -> tuple[Any, Any]:
    """Return ``(X, y)`` with X of shape (n, 1) for y = 2x + 3 + noise."""
    import numpy as np

    rng = np.random.RandomState(seed)
    x = rng.uniform(X_RANGE[0], X_RANGE[1], size=(n_samples, 1))
    noise = rng.normal(0.0, NOISE_SD, size=n_samples)
    y = TRUE_COEFFICIENT * x[:, 0] + TRUE_INTERCEPT + noise
    return x, y


# --------------------------------------------------------------------------- input parsing


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"not a number: {json.dumps(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"not a finite number: {value}")
    return number


def _sample_value(sample: Any) -> float:
    """One sample: a number or a one-element list of a number."""
    if isinstance(sample, list):
        if len(sample) != N_FEATURES:
            raise UsageError(
                f"expected {N_FEATURES} feature per sample, got {len(sample)}"
            )
        return _to_float(sample[0])
    return _to_float(sample)


def samples_from_value(value: Any) -> tuple[list[float], bool]:
    """Turn a decoded input into ``(samples, single)``; single means one scalar input."""
    if isinstance(value, dict):
        if "instances" not in value:
            raise UsageError('a JSON object input must have an "instances" list')
        value = value["instances"]
        if not isinstance(value, list):
            raise UsageError('"instances" must be a list')
    if isinstance(value, list):
        if not value:
            raise UsageError("input list is empty")
        return [_sample_value(item) for item in value], False
    return [_to_float(value)], True


def parse_input(text: str) -> tuple[list[float], bool]:
    """Parse the predict argument (number, ``a,b``, or JSON)."""
    text = text.strip()
    if not text:
        raise UsageError("input is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = _parse_comma_list(text)
    return samples_from_value(value)


def _parse_comma_list(text: str) -> list[float]:
    parts = [part.strip() for part in text.split(",")]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise UsageError(
            f"input is not a number, a comma-separated list of numbers or JSON: {text!r}"
        ) from None


# --------------------------------------------------------------------------- model io


def resolve_model_path(raw: str) -> Path:
    if not raw.strip():
        raise UsageError("model_path is empty")
    return Path(raw)


def load_model(path: Path) -> Any:
    import joblib

    if not path.is_file():
        raise ModelError(f"model file not found: {path} (run 'train' first)")
    try:
        model = joblib.load(path)
    except Exception as exc:  # corrupt or foreign file
        raise ModelError(f"cannot load model file {path}: {exc}") from None
    if not hasattr(model, "predict") or not hasattr(model, "coef_"):
        raise ModelError(f"{path} does not hold a fitted LinearRegression")
    return model


def model_info(model: Any) -> dict[str, Any]:
    return {
        "model_type": "linear_regression",
        "coefficient": float(model.coef_[0]),
        "intercept": float(model.intercept_),
        "n_features": N_FEATURES,
    }


def predict_values(model: Any, samples: list[float]) -> list[float]:
    import numpy as np

    x = np.asarray(samples, dtype=float).reshape(-1, 1)
    return [float(v) for v in model.predict(x)]


# --------------------------------------------------------------------------- commands


def input_stats(x: Any) -> dict[str, Any]:
    """Per-feature mean and std of the training inputs: the agent compares served inputs
    with them (input drift, docs/serving.md)."""
    return {
        "features": [f"x{i}" for i in range(x.shape[1])],
        "mean": [float(v) for v in x.mean(axis=0)],
        "std": [float(v) for v in x.std(axis=0)],
    }


def parse_positive_int(text: str, name: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def cmd_train(model_path: Path, args: list[str]) -> dict[str, Any]:
    if len(args) > 1:
        raise UsageError("train takes <model_path> [n_samples]")
    n_samples = parse_positive_int(args[0], "n_samples", 2) if args else DEFAULT_SAMPLES

    import joblib
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    x, y = generate_data(n_samples)
    emit({"progress": 0.0, "stage": "data_generated", "n_samples": n_samples})
    model = LinearRegression().fit(x, y)
    fitted = model.predict(x)
    emit({"progress": 0.5, "stage": "fitted"})
    model_path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_path)
    emit({"progress": 1.0, "stage": "saved"})
    metrics = {
        "r2": float(r2_score(y, fitted)),
        "mse": float(mean_squared_error(y, fitted)),
        "n_samples": n_samples,
    }
    return {"metrics": metrics, "model_info": model_info(model), "input_stats": input_stats(x)}


def cmd_predict(model_path: Path, args: list[str]) -> dict[str, Any]:
    if len(args) != 1:
        raise UsageError("predict takes <model_path> <input>")
    samples, single = parse_input(args[0])
    model = load_model(model_path)
    predictions = predict_values(model, samples)
    prediction: float | list[float] = predictions[0] if single else predictions
    return {"prediction": prediction, "model_info": model_info(model)}


def cmd_evaluate(model_path: Path, args: list[str]) -> dict[str, Any]:
    if args:
        raise UsageError("evaluate takes only <model_path>")
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    model = load_model(model_path)
    x, y = generate_data(EVAL_SAMPLES, seed=EVAL_SEED)
    predicted = model.predict(x)
    metrics = {
        "r2": float(r2_score(y, predicted)),
        "mse": float(mean_squared_error(y, predicted)),
        "mae": float(mean_absolute_error(y, predicted)),
        "n_samples": EVAL_SAMPLES,
    }
    return {"metrics": metrics, "model_info": model_info(model)}


def answer_request(model: Any, line: str) -> dict[str, Any]:
    """Answer one serve request line; never raises for a bad request."""
    request_id: Any = None
    if not line.strip():
        return {"id": None, "error": "empty request line"}
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise UsageError("request must be a JSON object")
        request_id = request.get("id")
        instances = request.get("instances")
        if not isinstance(instances, list):
            raise UsageError('request needs an "instances" list')
        samples = [_sample_value(item) for item in instances]
        predictions = predict_values(model, samples) if samples else []
        return {"id": request_id, "predictions": predictions}
    except json.JSONDecodeError as exc:
        return {"id": None, "error": f"request is not valid JSON: {exc}"}
    except UsageError as exc:
        return {"id": request_id, "error": str(exc)}
    except Exception as exc:  # keep serving whatever happens
        return {"id": request_id, "error": f"prediction failed: {exc}"}


def cmd_serve(model_path: Path, args: list[str]) -> NoReturn:
    if args:
        raise UsageError("serve takes only <model_path>")
    model = load_model(model_path)
    predict_values(model, [0.0])  # warm up
    emit({"ready": True, "model_path": str(model_path), "n_features": N_FEATURES})
    for line in sys.stdin:
        emit(answer_request(model, line))
    raise SystemExit(0)


COMMANDS = {
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "serve": cmd_serve,
}


def main(argv: list[str]) -> int:
    global OUT
    OUT = _claim_stdout()
    if len(argv) < 2 or argv[0] not in COMMANDS:
        fail(USAGE, 2)
    command, raw_path, rest = argv[0], argv[1], argv[2:]
    try:
        model_path = resolve_model_path(raw_path)
        result = COMMANDS[command](model_path, rest)
    except UsageError as exc:
        fail(str(exc), 2, model_path=raw_path)
    except ModelError as exc:
        fail(str(exc), 1, model_path=raw_path)
    except Exception as exc:  # unexpected: still answer in JSON
        fail(f"{command} failed: {type(exc).__name__}: {exc}", 1, model_path=raw_path)
    emit({"status": "success", "model_path": raw_path, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Neural network example model for the CNET Agent (Keras on TensorFlow CPU).

A small fully connected regression network with 2 input features, trained on seeded
synthetic data ``y = a*b + sin(a)`` with ``a, b`` uniform in [0, 5] (seed 42, 80/20
train/validation split).

Commands::

    neural_network.py train    <model_path> [n_samples=1000] [epochs=50]
    neural_network.py predict  <model_path> <input>
    neural_network.py evaluate <model_path>
    neural_network.py serve    <model_path>

``model_path`` must end in ``.h5`` / ``.hdf5`` (legacy HDF5) or ``.keras``.

Files written by ``train``:

* ``<model_path>`` - the Keras model. Input standardization is part of the model: its
  first layer is a ``Normalization`` layer adapted to the training inputs (mean/variance
  stored as layer weights), so any generic Keras loader gets correct predictions from raw
  inputs without a separate scaler;
* ``<model_path>.meta.json`` - informational metadata (features, the data formula, the
  normalization mean/std already applied inside the model, training metrics). Only
  ``predict`` reads it (``n_features``) to reject malformed input before loading
  TensorFlow; everything works without it.

Output (stdout): one compact JSON object per line. The LAST JSON object printed is the
command's result:

* success: ``{"status": "success", "model_path": ..., "model_info": {...}}`` plus
  ``"metrics"`` (train, evaluate) or ``"prediction"`` (predict);
* failure: ``{"status": "error", "error": "<message>"}`` and a non-zero exit code:
  2 for usage/input errors (bad arguments, non-numeric input, wrong number of features),
  1 for other failures (missing or unreadable model file, ...).

``train`` prints one progress line per epoch before the result, e.g.
``{"progress": 0.42, "epoch": 21, "epochs": 50, "loss": 0.0123, "val_loss": 0.0131}``
(progress = epoch / epochs, in 0..1).

Input for ``predict`` (2 features per sample):

* comma-separated numbers (``1.0,2.0``) or a flat JSON list (``[1.0, 2.0]``) -> ONE
  sample, ``"prediction"`` is one float;
* a nested JSON list (``[[1, 2], [3, 4]]``) -> a batch, ``"prediction"`` is a list of
  floats, one per sample;
* a JSON object ``{"instances": [[1, 2], ...]}`` -> same as the nested list.
A single number is rejected (the model needs 2 features).

``serve`` loads the model once, prints ``{"ready": true, "model_path": ...,
"n_features": 2}``, then answers one JSON request per stdin line with exactly one JSON
response line: request ``{"id": <any>, "instances": [[a, b], ...]}``; response
``{"id": <same>, "predictions": [<float>, ...]}`` or ``{"id": <same>, "error":
"<message>"}``. EOF on stdin ends the process with exit code 0.

Only JSON is written to stdout: anything a library prints to stdout is sent to stderr
(TensorFlow's own log lines go to stderr). Relative model paths are relative to the
current working directory; the model file's parent directory is created when missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # quieter and reproducible
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SEED = 42
EVAL_SEED = 43
FEATURE_RANGE = (0.0, 5.0)
N_FEATURES = 2
DEFAULT_SAMPLES = 1000
DEFAULT_EPOCHS = 50
EVAL_SAMPLES = 500
MIN_SAMPLES = 10
VALIDATION_FRACTION = 0.2
HIDDEN_UNITS = (32, 32)
BATCH_SIZE = 32
LEARNING_RATE = 0.01
MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")
DATA_FORMULA = "y = a*b + sin(a), a and b uniform in [0, 5]"

USAGE = (
    "usage: neural_network.py train <model_path> [n_samples] [epochs] | "
    "predict <model_path> <input> | evaluate <model_path> | serve <model_path>"
)


class UsageError(Exception):
    """The caller got the arguments or the input wrong (exit code 2)."""


class ModelError(Exception):
    """Any other expected failure, e.g. a missing model file (exit code 1)."""


# --------------------------------------------------------------------------- output


def _claim_stdout() -> IO[str]:
    """Return a private stream to the real stdout and send fd 1 to stderr.

    Keeps stdout pure JSON even if TensorFlow or Keras print something.
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
    """Return ``(X, y)`` float32 arrays, X of shape (n, 2), y of shape (n,)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    x = rng.uniform(FEATURE_RANGE[0], FEATURE_RANGE[1], size=(n_samples, N_FEATURES))
    y = x[:, 0] * x[:, 1] + np.sin(x[:, 0])
    return x.astype("float32"), y.astype("float32")


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    import numpy as np

    error = np.asarray(y_pred, dtype="float64").ravel() - np.asarray(y_true, dtype="float64")
    mse = float(np.mean(error**2))
    variance = float(np.var(np.asarray(y_true, dtype="float64")))
    return {
        "mse": mse,
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - mse / variance if variance > 0 else 0.0,
    }


# --------------------------------------------------------------------------- input parsing


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"not a number: {json.dumps(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"not a finite number: {value}")
    return number


def _sample(value: Any, n_features: int) -> list[float]:
    """One sample: a list of exactly ``n_features`` numbers."""
    if not isinstance(value, list):
        raise UsageError(
            f"each sample must be a list of {n_features} numbers, got {json.dumps(value)}"
        )
    if len(value) != n_features:
        raise UsageError(f"expected {n_features} features per sample, got {len(value)}")
    return [_to_float(item) for item in value]


def samples_from_value(value: Any, n_features: int) -> tuple[list[list[float]], bool]:
    """Turn a decoded input into ``(samples, single)``; single means one flat sample."""
    if isinstance(value, dict):
        if "instances" not in value:
            raise UsageError('a JSON object input must have an "instances" list')
        instances = value["instances"]
        if not isinstance(instances, list) or not instances:
            raise UsageError('"instances" must be a non-empty list')
        return [_sample(item, n_features) for item in instances], False
    if not isinstance(value, list):
        raise UsageError(
            f"expected {n_features} features per sample (e.g. 1.0,2.0), got a single value"
        )
    if not value:
        raise UsageError("input list is empty")
    if all(isinstance(item, list) for item in value):
        return [_sample(item, n_features) for item in value], False
    return [_sample(value, n_features)], True


def decode_input(text: str) -> Any:
    """Decode the predict argument (``a,b`` or JSON) without checking its shape."""
    text = text.strip()
    if not text:
        raise UsageError("input is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _parse_comma_list(text)


def _parse_comma_list(text: str) -> list[float]:
    parts = [part.strip() for part in text.split(",")]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise UsageError(
            f"input is not a comma-separated list of numbers or JSON: {text!r}"
        ) from None


# --------------------------------------------------------------------------- model


def check_model_suffix(path: Path) -> None:
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(
            f"model_path must end in one of {', '.join(MODEL_SUFFIXES)}, got {str(path)!r}"
        )


def meta_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".meta.json")


def recorded_n_features(model_path: Path) -> int | None:
    """n_features from the metadata written at train time, if it is there and readable."""
    try:
        meta = json.loads(meta_path(model_path).read_text(encoding="utf-8"))
        value = meta["n_features"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def build_model(x_train: Any) -> Any:
    import keras

    normalization = keras.layers.Normalization(axis=-1, name="standardize")
    normalization.adapt(x_train)
    layers: list[Any] = [keras.Input(shape=(N_FEATURES,)), normalization]
    layers += [keras.layers.Dense(units, activation="relu") for units in HIDDEN_UNITS]
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers, name="cnet_neural_network")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def progress_callback(epochs: int) -> Any:
    import keras

    class JsonProgress(keras.callbacks.Callback):
        """Prints one JSON progress line per finished epoch."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            line: dict[str, Any] = {
                "progress": round((epoch + 1) / epochs, 4),
                "epoch": epoch + 1,
                "epochs": epochs,
            }
            for key in ("loss", "val_loss"):
                if key in logs:
                    line[key] = float(logs[key])
            emit(line)

    return JsonProgress()


def load_model(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"model file not found: {path} (run 'train' first)")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # corrupt, foreign or unsupported file
        raise ModelError(f"cannot load Keras model {path}: {exc}") from None


def n_features_of(model: Any) -> int:
    shape = model.input_shape
    return int(shape[-1]) if shape and shape[-1] is not None else N_FEATURES


def model_info(model: Any) -> dict[str, Any]:
    return {
        "model_type": "neural_network",
        "framework": "keras",
        "n_features": n_features_of(model),
        "layers": [layer.__class__.__name__ for layer in model.layers],
        "n_params": int(model.count_params()),
    }


def make_predictor(model: Any) -> Callable[[list[list[float]]], list[float]]:
    """Return a fast batch predictor (a traced tf.function, no per-call retracing)."""
    import numpy as np
    import tensorflow as tf

    n_features = n_features_of(model)
    spec = tf.TensorSpec([None, n_features], tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def predict(samples: list[list[float]]) -> list[float]:
        batch = np.asarray(samples, dtype="float32").reshape(-1, n_features)
        return [float(v) for v in forward(batch).numpy().ravel()]

    return predict


# --------------------------------------------------------------------------- commands


def parse_int(text: str, name: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def cmd_train(model_path: Path, args: list[str]) -> dict[str, Any]:
    if len(args) > 2:
        raise UsageError("train takes <model_path> [n_samples] [epochs]")
    check_model_suffix(model_path)
    n_samples = parse_int(args[0], "n_samples", MIN_SAMPLES) if args else DEFAULT_SAMPLES
    epochs = parse_int(args[1], "epochs", 1) if len(args) > 1 else DEFAULT_EPOCHS

    import keras

    keras.utils.set_random_seed(SEED)
    x, y = generate_data(n_samples)
    n_val = max(1, int(n_samples * VALIDATION_FRACTION))
    x_train, y_train, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    model = build_model(x_train)
    started = time.monotonic()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        verbose=0,
        callbacks=[progress_callback(epochs)],
    )
    train_seconds = time.monotonic() - started
    predict = make_predictor(model)
    val_metrics = regression_metrics(y_val, predict(x_val.tolist()))
    metrics = {
        "loss": float(history.history["loss"][-1]),
        "val_loss": float(history.history["val_loss"][-1]),
        "val_r2": val_metrics["r2"],
        "val_mae": val_metrics["mae"],
        "n_samples": n_samples,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 3),
    }
    save_model(model, model_path, metrics)
    stats = {  # of the training inputs: the agent compares served inputs with them (input drift)
        "features": [f"x{i}" for i in range(x.shape[1])],
        "mean": [float(v) for v in x_train.mean(axis=0)],
        "std": [float(v) for v in x_train.std(axis=0)],
    }
    return {"metrics": metrics, "model_info": model_info(model), "input_stats": stats}


def save_model(model: Any, model_path: Path, metrics: dict[str, Any]) -> None:
    import numpy as np

    model_path.parent.mkdir(parents=True, exist_ok=True)
    absl_logger = logging.getLogger("absl")  # Keras warns that .h5 is "legacy": the seed uses it
    previous_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        model.save(model_path)
    finally:
        absl_logger.setLevel(previous_level)
    normalization = model.get_layer("standardize")
    mean, variance = (np.asarray(w).ravel() for w in normalization.get_weights()[:2])
    meta = {
        "model_type": "neural_network",
        "model_file": model_path.name,
        "n_features": N_FEATURES,
        "data": DATA_FORMULA,
        "normalization": {
            "applied_inside_model": True,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in np.sqrt(variance)],
        },
        "metrics": metrics,
    }
    meta_path(model_path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def cmd_predict(model_path: Path, args: list[str]) -> dict[str, Any]:
    if len(args) != 1:
        raise UsageError("predict takes <model_path> <input>")
    value = decode_input(args[0])
    expected = recorded_n_features(model_path)
    if expected is not None:  # fail fast on bad input, before loading TensorFlow
        samples_from_value(value, expected)
    model = load_model(model_path)
    samples, single = samples_from_value(value, n_features_of(model))
    predictions = make_predictor(model)(samples)
    prediction: float | list[float] = predictions[0] if single else predictions
    return {"prediction": prediction, "model_info": model_info(model)}


def cmd_evaluate(model_path: Path, args: list[str]) -> dict[str, Any]:
    if args:
        raise UsageError("evaluate takes only <model_path>")
    model = load_model(model_path)
    x, y = generate_data(EVAL_SAMPLES, seed=EVAL_SEED)
    metrics = regression_metrics(y, make_predictor(model)(x.tolist()))
    return {"metrics": {**metrics, "n_samples": EVAL_SAMPLES}, "model_info": model_info(model)}


def answer_request(
    predict: Callable[[list[list[float]]], list[float]], n_features: int, line: str
) -> dict[str, Any]:
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
        samples = [_sample(item, n_features) for item in instances]
        return {"id": request_id, "predictions": predict(samples) if samples else []}
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
    n_features = n_features_of(model)
    predict = make_predictor(model)
    predict([[0.0] * n_features])  # trace once before announcing readiness
    emit({"ready": True, "model_path": str(model_path), "n_features": n_features})
    for line in sys.stdin:
        emit(answer_request(predict, n_features, line))
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
        if not raw_path.strip():
            raise UsageError("model_path is empty")
        result = COMMANDS[command](Path(raw_path), rest)
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

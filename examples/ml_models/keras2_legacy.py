#!/usr/bin/env python3
"""A model script written for Keras 2 (the TensorFlow <= 2.15 era), left as such a script
is: `from tensorflow import keras`, a model saved as .h5 with string metrics, loaded back
with `keras.models.load_model`.

Under the Keras 3 the agent's environment has, loading it fails
(`Could not deserialize 'keras.metrics.mse'`). Deploy it with its own environment and it
runs unchanged:

    "environment": {"requirements": ["tf-keras~=2.21"]},
    "env": {"TF_USE_LEGACY_KERAS": "1"}

(tf-keras is Keras 2 for current TensorFlow; TF_USE_LEGACY_KERAS=1 makes tensorflow.keras it.)

    keras2_legacy.py train <model_path> [samples] [epochs]
    keras2_legacy.py predict <model_path> <x>
    keras2_legacy.py serve <model_path>       # one JSON request a line: {"id", "instances"}
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from tensorflow import keras


def keras_version():
    """Keras 3 has keras.__version__; tf-keras' tensorflow.keras has not: its package says."""
    version = getattr(keras, "__version__", None)
    if version is None:
        from importlib.metadata import version as installed

        version = installed("tf-keras")
    return version


def train(path, samples=200, epochs=5):
    rng = np.random.default_rng(0)
    x = rng.random((samples, 1))
    y = 3.0 * x + 2.0

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(json.dumps({"progress": (epoch + 1) / epochs, "loss": float((logs or {}).get("loss", 0))}), flush=True)

    model = keras.Sequential([
        keras.layers.Dense(8, activation="relu", input_shape=(1,)),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse", metrics=["mse"])
    model.fit(x, y, epochs=epochs, verbose=0, callbacks=[Progress()])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    print(json.dumps({"status": "success", "keras": keras_version(), "model_path": path}))


def predict(path, value):
    model = keras.models.load_model(path)
    out = model.predict(np.array([[float(value)]]), verbose=0)
    print(json.dumps({"status": "success", "prediction": float(out[0][0]), "keras": keras_version()}))


def serve(path):
    model = keras.models.load_model(path)
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            rows = [[float(v[0] if isinstance(v, list) else v)] for v in request["instances"]]
            out = model.predict(np.array(rows), verbose=0)
            print(json.dumps({"id": request.get("id"), "predictions": [float(o[0]) for o in out]}), flush=True)
        except (KeyError, TypeError, ValueError) as exc:
            print(json.dumps({"id": request.get("id"), "error": str(exc)}), flush=True)


def main(argv):
    if len(argv) < 3:
        print(json.dumps({"status": "error", "error": "usage: keras2_legacy.py train|predict|serve <model_path> ..."}))
        return 2
    verb, path = argv[1], argv[2]
    if verb == "train":
        train(path, *(int(a) for a in argv[3:5]))
    elif verb == "predict":
        predict(path, argv[3])
    elif verb == "serve":
        serve(path)
    else:
        print(json.dumps({"status": "error", "error": f"unknown verb {verb}"}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

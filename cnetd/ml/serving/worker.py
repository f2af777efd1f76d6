#!/usr/bin/env python3
"""cnetd serving worker: holds one model in memory and answers batches on a Unix socket.

The agent runs this file as a task of kind ``serve`` with the MODEL's interpreter, so it is
a standalone script: the standard library, plus numpy/joblib/keras only when the built-in
loader needs them. It never imports cnetd.

    python3 worker.py --socket PATH --model MODEL_PATH [--script SCRIPT] [--loader auto|script|builtin]

Loaders:

* ``script``: run ``<this python> SCRIPT serve MODEL_PATH`` as a child and bridge lines. The
  script's serve contract: one ``{"ready": true, ...}`` line once the model is loaded, then
  one JSON response line per JSON request line, in order.
* ``builtin``: load the file here. ``.h5``/``.hdf5``/``.keras`` with Keras; anything else with
  joblib (which reads plain pickles too); the loaded object must have ``.predict``.
* ``auto`` (default): the script's serve when a script is given, else (or when it exits
  before it is ready, e.g. because it has no serve command) the built-in loader.

The socket is bound only once the model is loaded, so a successful connect means ready.
Nothing ties the worker to the agent: the agent connects to it, and after an agent restart
it connects again. On a connection the worker first sends a hello line:

    {"hello": {"pid", "loader", "channel", "n_features", "model", "model_stamp", "loaded_at", "fresh"}}

("model_stamp": [mtime_ns, size] of the model file as it was when loading began; "loaded_at":
the wall-clock time the model was loaded, in seconds since the epoch.)

channel "socket" (built-in loader): requests and answers then flow on the connection,
newline-delimited JSON, answers in request order:

    agent  -> worker: {"id": <int>, "instances": [<sample>, ...]}
    worker -> agent:  {"id": <int>, "predictions": [...]} | {"id": <int>, "error": "..."}

channel "pipes" (script loader): the hello carries (SCM_RIGHTS) the write end of the
script's stdin and the read end of its stdout, and the agent speaks the same lines to the
script directly, with no relay through this process. The worker keeps its own copies of
both ends open, so the script sees no EOF (and no SIGPIPE) when an agent goes away; the
connection stays open only so that each side sees the other end. When the script exits,
so does the worker. A later agent may find answers meant for the one before it in the
script's stdout (the hello says "fresh": false): it first sends
{"id": "cnet-sync-<hex>", "instances": []} and skips every line before that answer.

stdout and stderr are the task's log: a ``{"ready": true, ...}`` line when serving, one JSON
line per problem. SIGTERM ends the worker (and its script child) with exit code 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; longer paths are bound through /proc/self/fd


class InputError(Exception):
    """The request's instances are wrong; the message goes back to the caller."""


class LoadError(Exception):
    """The model could not be loaded; the worker exits with the message in its log."""


def log(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- predictors


class ScriptPredictor:
    """The model script's own `serve`, as a child whose pipes are handed to the agent."""

    loader = "script"
    channel = "pipes"

    def __init__(self, script: str, model: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, "serve", model],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's stderr: the task's log
            bufsize=0,  # unbuffered: nothing past the ready line may be read here
        )
        self.n_features: int | None = None
        self.closing = False
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fds = [self.proc.stdin.fileno(), self.proc.stdout.fileno()]
        while True:
            line = self.proc.stdout.readline()  # raw: one byte at a time, up to the newline
            if not line:
                code = self.proc.wait()
                raise LoadError(f"{script} serve exited with code {code} before it was ready")
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("ready") is True:
                n = message.get("n_features")
                self.n_features = n if isinstance(n, int) and not isinstance(n, bool) else None
                return
            sys.stderr.buffer.write(line)  # what the script said before it was ready
            sys.stderr.flush()

    def watch(self) -> None:
        """The worker lives as long as the script: when it exits, so does the worker."""

        def wait() -> None:
            code = self.proc.wait()
            if self.closing:
                return  # the worker is ending it
            log(status="error", error=f"the script's serve process exited with code {code}")
            os._exit(3)

        threading.Thread(target=wait, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _check_numbers(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _check_numbers(item)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"not a number: {json.dumps(value)}")
    if not math.isfinite(value):
        raise InputError(f"not a finite number: {value}")


class BuiltinPredictor:
    """A joblib/pickle estimator with .predict, or a Keras model file."""

    def __init__(self, model_path: str) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise LoadError(f"model file not found: {model_path}")
        self.keras = path.suffix.lower() in KERAS_SUFFIXES
        self.channel = "socket"
        self.fds: list[int] = []
        self.loader = "builtin-keras" if self.keras else "builtin-joblib"
        self.feature_shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()
        import numpy as np

        self._np = np
        if self.keras:
            self._forward = self._load_keras(path)
        else:
            self._forward = self._load_joblib(path)
        self.n_features = self.feature_shape[0] if self.feature_shape and len(self.feature_shape) == 1 else None

    def _load_joblib(self, path: Path) -> Callable[[Any], Any]:
        import joblib

        try:
            model = joblib.load(path)
        except Exception as exc:
            raise LoadError(f"cannot load {path} with joblib: {type(exc).__name__}: {exc}") from None
        if not callable(getattr(model, "predict", None)):
            raise LoadError(f"{path} holds a {type(model).__name__}, which has no predict()")
        n = getattr(model, "n_features_in_", None)
        if isinstance(n, int):
            self.feature_shape = (n,)
        self._dtype = "float64"
        return model.predict  # type: ignore[no-any-return]

    def _load_keras(self, path: Path) -> Callable[[Any], Any]:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        try:
            import keras
        except ImportError as exc:
            raise LoadError(f"{path} is a Keras model but keras is not installed: {exc}") from None
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise LoadError(f"cannot load Keras model {path}: {type(exc).__name__}: {exc}") from None
        shape = model.input_shape
        if isinstance(shape, tuple) and all(d is not None for d in shape[1:]):
            self.feature_shape = tuple(int(d) for d in shape[1:])
        self._dtype = "float32"
        forward: Callable[[Any], Any] = lambda x: model(x, training=False)  # noqa: E731
        try:
            import tensorflow as tf

            if self.feature_shape is not None:
                spec = tf.TensorSpec([None, *self.feature_shape], tf.float32)
                traced = tf.function(forward, input_signature=[spec])
                forward = traced
        except ImportError:
            pass
        return lambda x: self._np.asarray(forward(x))

    def _matrix(self, instances: list[Any]) -> Any:
        np = self._np
        _check_numbers(instances)
        shape = self.feature_shape
        rows = [v if isinstance(v, list) else [v] for v in instances] if shape == (1,) else instances
        try:
            x = np.asarray(rows, dtype=self._dtype)
        except ValueError:
            raise InputError("samples must all have the same shape") from None
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if shape is not None and tuple(x.shape[1:]) != shape:
            if len(shape) == 1:
                got = x.shape[1] if x.ndim == 2 else f"shape {list(x.shape[1:])}"
                raise InputError(f"expected {shape[0]} feature{'' if shape[0] == 1 else 's'} per sample, got {got}")
            raise InputError(f"expected samples of shape {list(shape)}, got {list(x.shape[1:])}")
        return x

    def predict(self, instances: list[Any]) -> list[Any]:
        if not instances:
            return []
        x = self._matrix(instances)
        with self._lock:
            try:
                y = self._np.asarray(self._forward(x))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"prediction failed: {type(exc).__name__}: {exc}") from None
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        return y.tolist()  # type: ignore[no-any-return]

    def answer_line(self, line: bytes) -> bytes:
        request_id: Any = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise InputError("request must be a JSON object")
            request_id = request.get("id")
            instances = request.get("instances")
            if not isinstance(instances, list):
                raise InputError('request needs an "instances" list')
            reply: dict[str, Any] = {"id": request_id, "predictions": self.predict(instances)}
        except ValueError as exc:
            reply = {"id": request_id, "error": f"request is not valid JSON: {exc}"}
        except InputError as exc:
            reply = {"id": request_id, "error": str(exc)}
        return (json.dumps(reply) + "\n").encode()

    def close(self) -> None:
        pass


def load(args: argparse.Namespace) -> ScriptPredictor | BuiltinPredictor:
    if args.loader in ("auto", "script") and args.script:
        try:
            return ScriptPredictor(args.script, args.model)
        except (LoadError, OSError) as exc:
            if args.loader == "script":
                raise LoadError(str(exc)) from None
            log(event="fallback", message=f"{exc}; using the built-in loader")
    elif args.loader == "script":
        raise LoadError("loader 'script' needs --script")
    return BuiltinPredictor(args.model)


# --------------------------------------------------------------------------- socket


def bind(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_PATH)
    try:
        address = path if len(path.encode()) <= MAX_SOCKET_PATH else f"/proc/self/fd/{dir_fd}/{name}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        old = os.umask(0o077)
        try:
            sock.bind(address)
        finally:
            os.umask(old)
    finally:
        os.close(dir_fd)
    sock.listen(16)
    return sock


def file_stamp(path: str) -> list[int] | None:
    """[mtime_ns, size] of the model file, None when it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


class Worker:
    def __init__(self, predictor: ScriptPredictor | BuiltinPredictor, model: str, stamp: list[int] | None) -> None:
        """stamp: the model file's, taken before loading it (a file replaced while it
        loads then shows as changed, and the agent reloads again, rather than the other
        way round)."""
        self.predictor = predictor
        self.lock = threading.Lock()  # one request at a time reaches the model
        self.hello = {
            "pid": os.getpid(),
            "loader": predictor.loader,
            "channel": predictor.channel,
            "n_features": predictor.n_features,
            "model": model,
            "model_stamp": stamp,
            "loaded_at": time.time(),
        }

    def serve_connection(self, conn: socket.socket, fresh: bool) -> None:
        # The first agent finds the script's pipes clean; a later one may find answers
        # meant for the one before it, and syncs first.
        hello = json.dumps({"hello": {**self.hello, "fresh": fresh}}).encode() + b"\n"
        try:
            if self.predictor.fds:
                socket.send_fds(conn, [hello], self.predictor.fds)
                while conn.recv(4096):  # the agent speaks to the script; wait for it to go
                    pass
                return
            conn.sendall(hello)
            assert isinstance(self.predictor, BuiltinPredictor)
            for line in conn.makefile("rb"):
                if line.strip():
                    with self.lock:
                        reply = self.predictor.answer_line(line)
                    conn.sendall(reply)
        except OSError:
            pass  # the agent went away; it connects again when it is back
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="cnetd serving worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--script")
    parser.add_argument("--loader", choices=("auto", "script", "builtin"), default="auto")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    predictor = None
    listener = None
    try:
        stamp = file_stamp(args.model)
        try:
            predictor = load(args)
        except LoadError as exc:
            log(status="error", error=str(exc))
            return 1
        listener = bind(args.socket)
        worker = Worker(predictor, args.model, stamp)
        if isinstance(predictor, ScriptPredictor):
            predictor.watch()
        log(ready=True, loader=predictor.loader, n_features=predictor.n_features, socket=args.socket, pid=os.getpid())
        fresh = True
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=worker.serve_connection, args=(conn, fresh), daemon=True).start()
            fresh = False
    finally:
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
        if predictor is not None:
            predictor.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""cnetd serving worker: holds one model in memory and answers batches on a Unix socket.

The agent runs this file as a task of kind ``serve`` with the MODEL's interpreter, so it is
a standalone script: the standard library, plus numpy/joblib/keras only when the built-in
loader needs them. It never imports cnetd.

    python3 worker.py --socket PATH --model MODEL_PATH [--script SCRIPT] [--loader auto|script|builtin]
                      [--busy-poll-us N]

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

    {"hello": {"pid", "loader", "channel", "n_features", "model", "model_stamp", "loaded_at", "fresh",
               "busy_poll"}}

("model_stamp": [mtime_ns, size] of the model file as it was when loading began; "loaded_at":
the wall-clock time the model was loaded, in seconds since the epoch; "busy_poll": true, the
worker takes requests with FLAG_POLL, see "frames".)

channel "socket" (built-in loader): requests and answers then flow on the connection as
length-prefixed frames (see "frames" below), answers in request order:

    agent  -> worker: ARRAY "instances" (the samples along the first dimension, raw bytes)
                      | JSON "instances" (a list of samples: what is not one numeric array)
    worker -> agent:  ARRAY "predictions" | JSON "predictions" (not numbers) | ERROR "<message>"

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
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- frames
#
# Channel "socket" after the hello: length-prefixed frames both ways, no JSON for tensors.
# A frame is PREFIX (kind, datatype code, number of dimensions, name length, request id,
# payload length), then the name (UTF-8), one little-endian u64 per dimension, then the
# payload: for ARRAY the array's raw little-endian bytes (C order), for JSON a JSON value
# (a list of instances or predictions that are not one numeric array: ragged, strings...),
# for ERROR the message in UTF-8. Both ends check every field against the bytes there
# before anything is built from it: what comes from the other end may be hostile.
# A request's kind may carry FLAG_POLL: the agent sent it alone to an idle worker, so the
# worker polls for the next request after answering it (PollingReader); answers carry no flag.

FRAME_ARRAY, FRAME_JSON, FRAME_ERROR = 1, 2, 3
FRAME_KINDS = (FRAME_ARRAY, FRAME_JSON, FRAME_ERROR)
FLAG_POLL = 0x80
PREFIX = struct.Struct("<BBBBIQ")
MAX_PAYLOAD = 256 * 1024 * 1024  # what one frame may carry (a 10M-element FP64 tensor is 80 MB)
MAX_NAME = 64
MAX_DIMS = 8
SMALL_FRAME = 64 * 1024  # a payload up to this size is written together with its head
# V2 datatype -> (code on the wire, numpy dtype string)
DATATYPES: dict[str, tuple[int, str]] = {
    "BOOL": (1, "|b1"), "INT8": (2, "|i1"), "INT16": (3, "<i2"), "INT32": (4, "<i4"), "INT64": (5, "<i8"),
    "UINT8": (6, "|u1"), "UINT16": (7, "<u2"), "UINT32": (8, "<u4"), "UINT64": (9, "<u8"),
    "FP16": (10, "<f2"), "FP32": (11, "<f4"), "FP64": (12, "<f8"),
}
DATATYPE_OF_CODE = {code: name for name, (code, _) in DATATYPES.items()}
_DTYPE_TO_DATATYPE = {dtype: name for name, (_, dtype) in DATATYPES.items()}


class FrameError(Exception):
    """A frame that is not the protocol; the message says what is wrong with it."""


@dataclass(frozen=True)
class FrameHead:
    kind: int
    datatype: str | None  # ARRAY only
    shape: tuple[int, ...]  # ARRAY only
    name: str
    request_id: int
    size: int  # payload bytes
    length: int  # bytes of prefix + name + dimensions
    poll: bool = False  # FLAG_POLL (requests only)


def _numpy() -> Any:
    import numpy

    return numpy


def datatype_of(array: Any) -> str | None:
    """The V2 datatype an array goes as (little-endian), None when it has none (strings,
    objects, complex numbers...): then it goes as JSON."""
    dtype = array.dtype
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        dtype = dtype.newbyteorder("<")
    return _DTYPE_TO_DATATYPE.get(dtype.str)


def encode_frame(kind: int, request_id: int, payload: Any = b"", name: str = "",
                 datatype: str | None = None, shape: tuple[int, ...] = (), flags: int = 0) -> list[Any]:
    """The frame as buffers to write one after the other (the payload is not copied)."""
    raw_name = name.encode()
    code = DATATYPES[datatype][0] if datatype is not None else 0
    size = memoryview(payload).nbytes
    head = PREFIX.pack(kind | flags, code, len(shape), len(raw_name), request_id & 0xFFFFFFFF, size) + raw_name
    if shape:
        head += struct.pack(f"<{len(shape)}Q", *shape)
    return [head, payload] if size else [head]


def encode_array(request_id: int, name: str, array: Any, flags: int = 0) -> list[Any]:
    """An array (numeric or BOOL) as an ARRAY frame; the bytes are the array's own when it is
    already little-endian and contiguous."""
    np = _numpy()
    datatype = datatype_of(array)
    if datatype is None:
        raise FrameError(f"{array.dtype} has no V2 datatype")
    array = np.ascontiguousarray(array, dtype=np.dtype(DATATYPES[datatype][1]))
    return encode_frame(FRAME_ARRAY, request_id, array.reshape(-1).view("u1").data if array.size else b"",
                        name, datatype, tuple(array.shape), flags)


def encode_values(request_id: int, name: str, values: Any, flags: int = 0) -> list[Any]:
    """An array as an ARRAY frame when it has a V2 datatype; anything else as JSON."""
    if hasattr(values, "dtype") and hasattr(values, "shape") and datatype_of(values) is not None:
        return encode_array(request_id, name, values, flags)
    if hasattr(values, "tolist"):
        values = values.tolist()
    return encode_frame(FRAME_JSON, request_id, json.dumps(values).encode(), name, flags=flags)


def parse_prefix(data: Any, max_payload: int = MAX_PAYLOAD, request: bool = False) -> tuple[int, int, int, int, int, int]:
    """The fixed prefix, checked: (kind, code, ndim, name length, request id, payload size);
    request: a request's kind may carry FLAG_POLL (left out of the kind returned)."""
    kind, code, ndim, name_len, request_id, size = PREFIX.unpack_from(data)
    if request:
        kind &= ~FLAG_POLL
    if kind not in FRAME_KINDS:
        raise FrameError(f"unknown frame kind {data[0]}")
    if size > max_payload:
        raise FrameError(f"a frame of {size} bytes, more than {max_payload}")
    if name_len > MAX_NAME:
        raise FrameError(f"a tensor name of {name_len} bytes, more than {MAX_NAME}")
    if ndim > MAX_DIMS:
        raise FrameError(f"{ndim} dimensions, more than {MAX_DIMS}")
    if kind == FRAME_ARRAY:
        if code not in DATATYPE_OF_CODE:
            raise FrameError(f"unknown datatype code {code}")
    elif code or ndim:
        raise FrameError("a datatype or shape on a frame that is not an array")
    return kind, code, ndim, name_len, request_id, size


def head_length(ndim: int, name_len: int) -> int:
    return PREFIX.size + name_len + 8 * ndim


def parse_head(data: Any, max_payload: int = MAX_PAYLOAD, request: bool = False) -> FrameHead:
    """The whole head (prefix, name, dimensions) from `data`, which holds at least
    head_length() bytes; the shape is checked against the payload size. request: as for
    parse_prefix."""
    kind, code, ndim, name_len, request_id, size = parse_prefix(data, max_payload, request)
    offset = PREFIX.size
    try:
        name = bytes(data[offset:offset + name_len]).decode()
    except UnicodeDecodeError:
        raise FrameError("a tensor name that is not UTF-8") from None
    offset += name_len
    shape = struct.unpack_from(f"<{ndim}Q", data, offset) if ndim else ()
    datatype = None
    if kind == FRAME_ARRAY:
        datatype = DATATYPE_OF_CODE[code]
        itemsize = int(DATATYPES[datatype][1][2:])
        count = 1
        for d in shape:
            if d > max_payload:  # (beside a 0 any other dimension fits no bytes: bounded all the same)
                raise FrameError(f"shape {list(shape)} has a dimension over {max_payload}")
            count *= d
        if count * itemsize != size:
            raise FrameError(f"shape {list(shape)} of {datatype} takes {count * itemsize} bytes, the frame has {size}")
    return FrameHead(kind, datatype, tuple(shape), name, request_id, size, offset + 8 * ndim,
                     request and bool(data[0] & FLAG_POLL))


def decode_payload(head: FrameHead, payload: Any) -> Any:
    """ARRAY: a numpy array over the payload (no copy; BOOL bytes must be 0 or 1);
    JSON: the value; ERROR: the message."""
    if head.kind == FRAME_ERROR:
        return bytes(payload).decode("utf-8", "replace")
    if head.kind == FRAME_JSON:
        try:
            return json.loads(bytes(payload))
        except (ValueError, RecursionError) as exc:
            raise FrameError(f"a JSON frame that is not JSON: {exc}") from None
    np = _numpy()
    assert head.datatype is not None
    if head.datatype == "BOOL":
        raw = np.frombuffer(payload, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise FrameError("BOOL bytes must each be 0 or 1")
    return np.frombuffer(payload, dtype=np.dtype(DATATYPES[head.datatype][1])).reshape(head.shape)


class FrameReceiver:
    """Request frames from a blocking byte source (a socket's recv_into): one call usually
    brings a whole small frame into the reused buffer; a payload bigger than the buffer is
    read straight into a buffer of its own."""

    def __init__(self, read_into: Callable[[memoryview], int], max_payload: int = MAX_PAYLOAD,
                 buffer_size: int = 256 * 1024) -> None:
        self._read_into = read_into
        self.max_payload = max_payload
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._start = 0  # the unparsed bytes are _buffer[_start:_end]
        self._end = 0

    def _fill(self, need: int, where: str, first: bool = False) -> bool:
        """At least `need` unparsed bytes in the buffer (need <= its size); False at a clean
        end before the first byte of a frame (`first`)."""
        if self._start == self._end:
            self._start = self._end = 0
        while self._end - self._start < need:
            if self._start + need > len(self._buffer):
                rest = self._end - self._start
                self._buffer[:rest] = self._buffer[self._start:self._end]
                self._start, self._end = 0, rest
            n = self._read_into(self._view[self._end:])
            if not n:
                if first and self._end == self._start:
                    return False
                raise FrameError(f"the connection ended {where}")
            self._end += n
        return True

    def next(self) -> tuple[FrameHead, bytearray] | None:
        """The next frame (None at a clean end); the payload is the frame's own copy."""
        if not self._fill(PREFIX.size, "inside a frame's prefix", first=True):
            return None
        view, start = self._view, self._start
        _kind, _code, ndim, name_len, _id, size = parse_prefix(view[start:start + PREFIX.size], self.max_payload,
                                                               request=True)
        length = head_length(ndim, name_len)
        self._fill(length, "inside a frame's head")
        start = self._start
        head = parse_head(self._view[start:start + length], self.max_payload, request=True)
        self._start = start = start + length
        if size <= len(self._buffer):  # (_fill moves what is left of the buffer to its start)
            self._fill(size, "before a frame's payload was complete")
            start = self._start
            self._start = start + size
            return head, bytearray(self._view[start:start + size])  # (writable: a model may scale its input in place)
        have = self._end - start  # (less than size: the buffer is smaller)
        payload = bytearray(size)
        payload[:have] = self._view[start:self._end]
        self._start = self._end
        got, target = have, memoryview(payload)
        while got < size:
            n = self._read_into(target[got:])
            if not n:
                raise FrameError(f"the connection ended {size - got} bytes short of a frame")
            got += n
        return head, payload


class PollingReader:
    """A connection's recv_into that, right after answering a request the agent sent alone
    to this idle worker (FLAG_POLL), polls for the next request for up to `poll` seconds
    before it blocks, while the request before came within that time (so a worker that
    gets a request now and then never polls, nor one kept busy by batches). Why: a blocked
    worker is woken by the kernel, and where idle CPUs halt (a virtual machine without guest
    halt polling) that wake-up costs more than a small prediction. The agent polls for the
    answer the same way (client.py)."""

    def __init__(self, conn: socket.socket, poll: float) -> None:
        self.conn = conn
        self.poll = poll
        self.answered_at: float | None = None  # set by answered(); the next read measures the gap
        self.last_gap = 0.0  # seconds from an answer to the next request

    def answered(self, poll: bool) -> None:
        """After each answer; poll: the request carried FLAG_POLL."""
        self.answered_at = time.monotonic() if poll and self.poll else None

    def read_into(self, view: memoryview) -> int:
        answered_at, self.answered_at = self.answered_at, None
        if answered_at is None:  # (inside a frame, or the first read: block)
            return self.conn.recv_into(view)
        if self.last_gap <= self.poll:
            deadline = answered_at + self.poll
            while True:
                try:
                    n = self.conn.recv_into(view, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        os.sched_yield()  # whatever else wants this CPU runs first
                        continue
                    break
                self.last_gap = time.monotonic() - answered_at
                return n
        n = self.conn.recv_into(view)
        self.last_gap = time.monotonic() - answered_at
        return n


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
        predict: Callable[[Any], Any] = model.predict
        sklearn = sys.modules.get("sklearn")
        set_config = getattr(sklearn, "set_config", None)
        if not callable(set_config):
            return predict
        # Every sample was checked finite before it gets here, so scikit-learn need not check
        # again (about a fifth of a small prediction). Its settings are per thread: set them in
        # each thread that predicts.
        local = threading.local()

        def forward(x: Any) -> Any:
            if not getattr(local, "configured", False):
                with contextlib.suppress(Exception):  # an old or odd scikit-learn: predict as it is
                    set_config(assume_finite=True)
                local.configured = True
            return predict(x)

        return forward

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
        return self._shaped(x)

    def _array_matrix(self, x: Any) -> Any:
        """An ARRAY frame's samples (already one regular array) with the same checks as a list's."""
        np = self._np
        if x.dtype.kind not in "iuf":
            raise InputError(f"not a number: {json.dumps(x.reshape(-1)[0].item()) if x.size else x.dtype}")
        if x.dtype.kind == "f" and x.size:
            finite = np.isfinite(x)
            if not finite.all():
                raise InputError(f"not a finite number: {float(x[~finite][0])}")
        return self._shaped(x.astype(self._dtype, copy=False))

    def _shaped(self, x: Any) -> Any:
        shape = self.feature_shape
        if x.ndim <= 1:
            x = x.reshape(-1, 1)
        if shape is not None and tuple(x.shape[1:]) != shape:
            if len(shape) == 1:
                got = x.shape[1] if x.ndim == 2 else f"shape {list(x.shape[1:])}"
                raise InputError(f"expected {shape[0]} feature{'' if shape[0] == 1 else 's'} per sample, got {got}")
            raise InputError(f"expected samples of shape {list(shape)}, got {list(x.shape[1:])}")
        return x

    def predict(self, instances: Any) -> Any:
        """Predictions for a list of samples or one array of them: an array (one row per
        sample), or [] for no samples."""
        if len(instances) == 0:
            return []
        x = self._matrix(instances) if isinstance(instances, list) else self._array_matrix(instances)
        with self._lock:
            try:
                y = self._np.asarray(self._forward(x))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"prediction failed: {type(exc).__name__}: {exc}") from None
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        return y

    def answer_frame(self, head: FrameHead, payload: bytearray) -> list[Any]:
        """The answer to one request frame: an ARRAY frame of predictions when they are
        numbers, else a JSON frame, or an ERROR frame saying what is wrong with the input."""
        try:
            if head.kind == FRAME_ARRAY:
                predictions = self.predict(decode_payload(head, payload))
            elif head.kind == FRAME_JSON:
                try:
                    instances = decode_payload(head, payload)
                except FrameError as exc:
                    raise InputError(f"request is not valid JSON: {exc}") from None
                if not isinstance(instances, list):
                    raise InputError('request needs an "instances" list')
                predictions = self.predict(instances)
            else:
                raise InputError("expected a request, got an error frame")
            try:
                return encode_values(head.request_id, "predictions", predictions)
            except (TypeError, ValueError) as exc:
                raise InputError(f"prediction failed: the predictions cannot be sent: {exc}") from None
        except (InputError, FrameError) as exc:
            return encode_frame(FRAME_ERROR, head.request_id, str(exc).encode("utf-8", "replace"), "error")

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


def send_frame(conn: socket.socket, buffers: list[Any]) -> None:
    """One frame: small ones in one write (one wake-up on the other side), a big payload
    from its own buffer."""
    if len(buffers) == 1 or memoryview(buffers[1]).nbytes <= SMALL_FRAME:
        conn.sendall(b"".join(buffers))
    else:
        for buffer in buffers:
            conn.sendall(buffer)


def file_stamp(path: str) -> list[int] | None:
    """[mtime_ns, size] of the model file, None when it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


class Worker:
    def __init__(self, predictor: ScriptPredictor | BuiltinPredictor, model: str, stamp: list[int] | None,
                 busy_poll: float = 0.0) -> None:
        """stamp: the model file's, taken before loading it (a file replaced while it
        loads then shows as changed, and the agent reloads again, rather than the other
        way round). busy_poll: seconds to poll for the next request (PollingReader)."""
        self.predictor = predictor
        self.busy_poll = busy_poll
        self.lock = threading.Lock()  # one request at a time reaches the model
        self.hello = {
            "pid": os.getpid(),
            "loader": predictor.loader,
            "channel": predictor.channel,
            "n_features": predictor.n_features,
            "model": model,
            "model_stamp": stamp,
            "loaded_at": time.time(),
            "busy_poll": True,  # takes FLAG_POLL
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
            reader = PollingReader(conn, self.busy_poll)
            frames = FrameReceiver(reader.read_into)
            while (frame := frames.next()) is not None:
                with self.lock:
                    reply = self.predictor.answer_frame(*frame)
                send_frame(conn, reply)
                reader.answered(frame[0].poll)
        except FrameError as exc:
            log(status="error", error=f"the agent sent a frame that is not the protocol: {exc}")
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
    parser.add_argument("--busy-poll-us", type=int, default=0, help="poll this long for the next request (0: block)")
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
        worker = Worker(predictor, args.model, stamp, max(0, args.busy_poll_us) / 1e6)
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

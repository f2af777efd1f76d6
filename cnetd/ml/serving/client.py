"""The agent's end of a worker: several batches in flight, answers in request order. The
worker's Unix socket is the worker's, so the agent can die and connect again (see worker.py
for the protocol).

Channel "socket" (built-in loader): requests and answers on the connection as
length-prefixed frames (worker.py's codec): an array of samples goes as its raw bytes and
the predictions come back the same way, read straight into their own buffer (a
BufferedProtocol); samples that are not one numeric array go as a JSON frame. What the
worker writes is hostile: every frame is checked before anything is built from it, a frame
that breaks the stream drops the channel (the batches in flight fail as a bad answer), and
a well-formed answer that cannot be read fails only its own batch. Channel
"pipes" (the script's serve): the hello hands over the script's stdin and stdout, and the
agent speaks to the script directly, one process hop instead of two; the connection then
only tells the agent when the worker is gone. When an agent before this one used the
pipes, the answers it left behind are skipped by a sync request first.

An asyncio Protocol rather than streams: answers are handled in data_received itself, one
turn of the event loop sooner than a reader task would see them.

Busy polling (serving.busy_poll_us), for a request the batcher sends alone to an idle
worker (`lone`), the latency-bound case: while it is out and this worker's answers have
come within busy_poll, the event loop polls (a callback that schedules itself, yielding the
CPU each time, keeps it from sleeping) until the answer is read or busy_poll has passed;
other requests are served as usual meanwhile. The frame carries FLAG_POLL, so the worker
polls for the next request after answering it (worker.py, PollingReader). Why: where idle
CPUs halt (a virtual machine without guest halt polling), each wake-up of a sleeping
process costs more than a small prediction, and the hop would add two. Batches sent under
load are not polled for: there the worker and the agent rarely sleep, and polling would
take CPU from the work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnetd.background import resolve
from cnetd.ml.serving.worker import (
    FLAG_POLL,
    FRAME_ARRAY,
    FRAME_ERROR,
    FRAME_JSON,
    PREFIX,
    SMALL_FRAME,
    FrameError,
    FrameHead,
    decode_payload,
    encode_values,
    head_length,
    parse_head,
    parse_prefix,
)

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; longer paths are reached through /proc/self/fd
MAX_LINE = 64 * 1024 * 1024
MAX_ANSWER = 64 * 1024 * 1024  # the largest answer frame taken from a worker
MAX_ERROR = 4000  # characters of a worker's error message passed on
READ_BUFFER = 256 * 1024  # frames up to about this size are read into one reused buffer
HELLO_TIMEOUT = 10.0
SYNC_RETRIES = 3

Values = list[Any] | np.ndarray[Any, Any]  # samples or predictions: a list, or one array along the batch dimension
Done = Callable[[Values | None, Exception | None], None]
PeerCheck = Callable[[int, int], str | None]  # (pid, uid) of the listener -> None, or why it is not the worker


class WorkerLost(Exception):
    """The connection ended with this batch unanswered."""


class WorkerRejected(Exception):
    """The worker answered the batch with an error (usually: the input is wrong)."""


class ProtocolError(Exception):
    """The worker said something that is not the protocol."""


@dataclass(frozen=True)
class Hello:
    pid: int
    loader: str
    channel: str  # "socket" or "pipes"
    n_features: int | None
    model_stamp: tuple[int, int] | None  # [mtime_ns, size] of the model file it loaded
    fresh: bool = True  # no agent spoke to this worker before
    loaded_at: float | None = None  # when it loaded the model (epoch seconds; None: an older worker)
    busy_poll: bool = False  # it takes FLAG_POLL (an older worker does not)


async def _recv_hello(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The hello line and the file descriptors that came with it."""
    loop = asyncio.get_running_loop()
    data, fds = b"", []
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            while b"\n" not in data:
                try:
                    chunk, got, _, _ = socket.recv_fds(sock, 65536, 4)
                except BlockingIOError:
                    readable = loop.create_future()
                    loop.add_reader(sock.fileno(), resolve, readable)
                    try:
                        await readable
                    finally:
                        loop.remove_reader(sock.fileno())
                    continue
                fds += got
                if not chunk:
                    raise ProtocolError("the worker closed the connection before its hello")
                data += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    line, rest = data.split(b"\n", 1)
    if rest:
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"the worker said more than its hello: {rest[:200]!r}")
    return line, fds


class _WatchEnd(asyncio.Protocol):
    """The other transports of a client (the connection, the script's stdin): when one of
    them ends, the worker is gone."""

    def __init__(self, client: WorkerClient, what: str) -> None:
        self.client = client
        self.what = what

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lose(f"{self.what} closed" + (f": {exc}" if exc else ""))


class _FrameReader(asyncio.BufferedProtocol):
    """Frames from a worker's connection: heads and small payloads are read into one reused
    buffer; a bigger payload is read straight into a buffer of its own, which the answer's
    array then views."""

    def __init__(self, client: WorkerClient, max_payload: int = MAX_ANSWER) -> None:
        self.client = client
        self.max_payload = max_payload
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._head: FrameHead | None = None  # the frame whose payload is being read into _payload
        self._payload: bytearray | None = None
        self._payload_filled = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._payload_filled:]
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.client.closed.is_set():
            return  # read before the channel was dropped: no one waits for it any more
        try:
            if self._payload is not None:
                self._payload_filled += nbytes
                if self._payload_filled < len(self._payload):
                    return
                head, payload = self._head, self._payload
                self._head, self._payload = None, None
                assert head is not None
                self.client._frame(head, payload)
                return
            self._filled += nbytes
            self._parse()
        except FrameError as exc:
            log.error("worker %s broke the protocol: %s", self.client.label, exc)
            self.client.abort(f"a frame that is not the protocol: {exc}", ProtocolError)

    def _parse(self) -> None:
        view, start = self._view, 0
        while not self.client.closed.is_set():
            available = self._filled - start
            if available < PREFIX.size:
                break
            _kind, _code, ndim, name_len, _id, size = parse_prefix(view[start:start + PREFIX.size], self.max_payload)
            length = head_length(ndim, name_len)
            if available < length:
                break
            head = parse_head(view[start:start + length], self.max_payload)
            start += length
            have = min(self._filled - start, size)
            if have == size:
                payload = bytes(view[start:start + size])
                start += size
                self.client._frame(head, payload)
                continue
            self._head, self._payload = head, bytearray(size)
            self._payload[:have] = view[start:start + have]
            self._payload_filled = have
            start += have
            break
        rest = self._filled - start
        if start and rest:
            self._buffer[:rest] = self._buffer[start:self._filled]  # same length: no resize while the loop holds a view
        self._filled = rest

    def eof_received(self) -> bool | None:
        self.client._lose("the worker closed its end")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lose(f"connection failed: {exc}" if exc else "the worker closed its end")


class WorkerClient(asyncio.Protocol):
    """The protocol of the answer stream: the connection, or the script's stdout."""

    def __init__(self, label: str, hello: Hello, busy_poll: float = 0.0) -> None:
        self.label = label
        self.hello = hello
        self.busy_poll = busy_poll  # seconds (the module's docstring)
        self.last_round_trip = 0.0  # seconds from sending the latest answered batch to its answer
        self._poll_until = 0.0
        self._polling = False
        self.closed = asyncio.Event()
        self.lost_reason = ""
        self._transports: list[asyncio.BaseTransport] = []
        self._out: asyncio.WriteTransport | None = None
        self._buffer = b""
        self._pending: deque[tuple[int, Done, float]] = deque()
        self._idle = asyncio.Event()  # set while no batch is in flight
        self._idle.set()
        self._next_id = 0
        self._sync_id: str | None = None
        self._sync_sent = 0
        self._synced: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, path: str, label: str, peer_check: PeerCheck | None = None,
                      busy_poll: float = 0.0) -> WorkerClient:
        """Connect, check who listens (SO_PEERCRED: the worker task's uid, a pid in its
        cgroup), read the hello, set up the channel; OSError or ProtocolError when the worker
        is not there (yet) or something else answers. busy_poll: seconds (the module's
        docstring)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        client: WorkerClient | None = None
        try:
            address, dir_fd = path, None
            if len(path.encode()) > MAX_SOCKET_PATH:
                directory, name = os.path.split(path)
                dir_fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
                address = f"/proc/self/fd/{dir_fd}/{name}"
            try:
                await loop.sock_connect(sock, address)
            finally:
                if dir_fd is not None:
                    os.close(dir_fd)
            if peer_check is not None:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _gid = struct.unpack("3i", creds)
                problem = peer_check(pid, uid)
                if problem is not None:
                    log.error("worker %s: refusing %s: %s", label, path, problem)
                    raise ProtocolError(f"the process listening at {path} is not the worker: {problem}")
            line, fds = await _recv_hello(sock)
            try:
                hello = _parse_hello(line)
            except ProtocolError:
                for fd in fds:
                    os.close(fd)
                raise
            client = cls(label, hello, busy_poll)
            if hello.channel == "pipes":
                if len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    raise ProtocolError(f"expected the script's two pipes with the hello, got {len(fds)} descriptors")
                to_script = os.fdopen(fds[0], "wb", buffering=0)
                from_script = os.fdopen(fds[1], "rb", buffering=0)
                out, _ = await loop.connect_write_pipe(lambda: _WatchEnd(client, "the script's stdin"), to_script)
                client._add(out)
                client._out = out
                if not hello.fresh:
                    client._start_sync()  # before the first line can arrive
                reader, _ = await loop.connect_read_pipe(lambda: client, from_script)
                client._add(reader)
                watch, _ = await loop.create_unix_connection(lambda: _WatchEnd(client, "the worker's connection"), sock=sock)
                client._add(watch)
                if client._synced is not None:
                    await asyncio.wait_for(client._synced, HELLO_TIMEOUT)
            else:
                for fd in fds:
                    os.close(fd)
                transport, _ = await loop.create_unix_connection(lambda: _FrameReader(client), sock=sock)
                client._add(transport)
                client._out = transport
        except BaseException:
            if client is not None:
                client.abort("setting up the channel failed")
            sock.close()
            raise
        return client

    def _add(self, transport: asyncio.BaseTransport) -> None:
        self._transports.append(transport)

    def _start_sync(self) -> None:
        """Skip answers a previous agent left in the script's stdout: ask a question no one
        else asked and drop every line before its answer."""
        self._sync_id = f"cnet-sync-{uuid.uuid4().hex}"
        self._synced = asyncio.get_running_loop().create_future()
        self._send_sync()

    def _send_sync(self) -> None:
        self._sync_sent += 1
        assert self._out is not None
        self._out.write(json.dumps({"id": self._sync_id, "instances": []}).encode() + b"\n")

    @property
    def polling(self) -> bool:
        """Whether the event loop is kept polling for this worker's answer now."""
        return self._polling

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def drained(self) -> None:
        """Return once no batch is in flight (answered, or failed by the channel ending)."""
        await self._idle.wait()

    def oldest_age(self) -> float | None:
        """Seconds the oldest unanswered batch has waited, None when there is none."""
        return time.monotonic() - self._pending[0][2] if self._pending else None

    def send(self, instances: Values, done: Done, lone: bool = False) -> None:
        """Send one batch (a list of samples, or an array of them along its first
        dimension); `done(predictions, None)` or `done(None, error)` is called once, straight
        from the read callback, with WorkerRejected, WorkerLost or ProtocolError. On the
        socket channel predictions are an array when the model answered numbers. lone: a
        request sent alone to this idle worker (busy polling, the module's docstring)."""
        if self.closed.is_set() or self._out is None:
            done(None, WorkerLost(self.lost_reason or "connection closed"))
            return
        self._next_id += 1
        request_id = self._next_id & 0xFFFFFFFF  # the frame's id field; answers come in order anyway
        now = time.monotonic()
        self._pending.append((request_id, done, now))
        self._idle.clear()
        poll = lone and self.busy_poll > 0 and len(self._pending) == 1
        if poll and self.last_round_trip <= self.busy_poll:
            self._poll_until = now + self.busy_poll
            if not self._polling:
                self._polling = True
                asyncio.get_running_loop().call_soon(self._poll)
        if self.hello.channel == "pipes":  # the script's serve speaks JSON lines
            listed = instances.tolist() if isinstance(instances, np.ndarray) else instances
            self._out.write(json.dumps({"id": request_id, "instances": listed}).encode() + b"\n")
            return
        buffers = encode_values(request_id, "instances", instances, FLAG_POLL if poll and self.hello.busy_poll else 0)
        if len(buffers) == 1 or memoryview(buffers[1]).nbytes <= SMALL_FRAME:
            self._out.write(b"".join(buffers))  # one write: one wake-up of the worker
        else:
            for buffer in buffers:
                self._out.write(buffer)

    def _poll(self) -> None:
        if self._pending and not self.closed.is_set() and time.monotonic() < self._poll_until:
            os.sched_yield()  # whatever else wants this CPU runs first
            asyncio.get_running_loop().call_soon(self._poll)
        else:
            self._polling = False

    def _answered(self) -> tuple[int, Done]:
        """The oldest batch in flight, taken off as answered."""
        request_id, done, sent = self._pending.popleft()
        self.last_round_trip = time.monotonic() - sent
        return request_id, done

    def _frame(self, head: FrameHead, payload: bytes | bytearray) -> None:
        """One answer frame from the socket channel (its head already checked)."""
        if not self._pending:
            raise FrameError(f"an answer to no request (id {head.request_id})")
        request_id = self._pending[0][0]
        if head.request_id != request_id:
            raise FrameError(f"expected the answer to request {request_id}, got one to {head.request_id}")
        _, done = self._answered()
        try:
            try:
                value = decode_payload(head, payload)
            except FrameError as exc:
                done(None, ProtocolError(f"an answer that cannot be read: {exc}"))
                return
            if head.kind == FRAME_ERROR:
                done(None, WorkerRejected(value if len(value) <= MAX_ERROR else value[:MAX_ERROR] + "..."))
            elif (head.kind == FRAME_ARRAY and value.ndim >= 1) or (head.kind == FRAME_JSON and isinstance(value, list)):
                done(value, None)
            else:
                done(None, ProtocolError(f"an answer that is not a list of predictions ({describe(head)})"))
        finally:
            if not self._pending:  # (done may have sent again: a batch retried one by one)
                self._idle.set()

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed.is_set():
            return  # read before the channel was dropped: no one waits for it any more
        buffer = self._buffer + data if self._buffer else data
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", start)
                if end < 0:
                    break
                self._line(buffer[start:end])
                start = end + 1
        except ProtocolError as exc:
            log.error("worker %s broke the protocol: %s", self.label, exc)
            self.abort(str(exc))
            return
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_LINE:
            self.abort(f"an answer longer than {MAX_LINE} bytes")

    def eof_received(self) -> bool | None:
        self._lose("the worker closed its end")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection failed: {exc}" if exc else "the worker closed its end")

    # ---- lines ---------------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            raise ProtocolError(f"not JSON: {line[:200]!r}") from None
        if self._sync_id is not None:
            if isinstance(reply, dict) and reply.get("id") == self._sync_id:
                self._sync_id = None
                if self._synced is not None and not self._synced.done():
                    self._synced.set_result(None)
            elif isinstance(reply, dict) and reply.get("id") is None and self._sync_sent < SYNC_RETRIES:
                self._send_sync()  # a torn line from a dead agent swallowed the question
            return
        if not self._pending:
            raise ProtocolError(f"an answer to no request: {line[:200]!r}")
        request_id = self._pending[0][0]
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            raise ProtocolError(f"expected the answer to request {request_id}, got {line[:200]!r}")
        _, done = self._answered()
        try:
            if "error" in reply:
                done(None, WorkerRejected(str(reply["error"])))
            elif isinstance(reply.get("predictions"), list):
                done(reply["predictions"], None)
            else:
                done(None, ProtocolError(f"answer without predictions: {line[:200]!r}"))
        finally:
            if not self._pending:  # (done may have sent again: a batch retried one by one)
                self._idle.set()

    def _lose(self, reason: str, error: type[Exception] = WorkerLost) -> None:
        if self.closed.is_set():
            return
        self.lost_reason = reason
        self.closed.set()
        if self._synced is not None and not self._synced.done():
            self._synced.set_exception(ProtocolError(f"lost before the sync answer: {reason}"))
            self._synced.exception()  # retrieved: connect() may no longer be waiting
        while self._pending:
            _, done, _ = self._pending.popleft()
            done(None, error(reason))
        self._idle.set()

    def abort(self, reason: str, error: type[Exception] = WorkerLost) -> None:
        """Drop the channel now; everything in flight fails with error(reason) (WorkerLost,
        or ProtocolError when the worker broke the protocol)."""
        self._lose(reason, error)
        transports, self._transports = self._transports, []
        for transport in transports:
            # A read pipe has no abort() (asyncio's) or refuses it (uvloop's): its close()
            # drops what was not read anyway.
            try:
                transport.abort()  # type: ignore[attr-defined]
            except (AttributeError, NotImplementedError):
                transport.close()

    async def close(self) -> None:
        """Let go of the worker at once: whatever was not yet written is dropped."""
        self.abort("the agent closed the connection")
        await asyncio.sleep(0)  # the transports close their descriptors on the next turn


def describe(head: FrameHead) -> str:
    kinds = {FRAME_ARRAY: "array", FRAME_JSON: "JSON", FRAME_ERROR: "error"}
    if head.kind == FRAME_ARRAY:
        return f"an array of shape {list(head.shape)}"
    return f"a {kinds.get(head.kind, '?')} frame"


def _parse_hello(line: bytes) -> Hello:
    try:
        data = json.loads(line)["hello"]
        pid = int(data["pid"])
    except (ValueError, KeyError, TypeError):
        raise ProtocolError(f"expected a hello from the worker, got {line[:200]!r}") from None
    n = data.get("n_features")
    stamp = data.get("model_stamp")
    loaded_at = data.get("loaded_at")
    channel = data.get("channel", "socket")
    if channel not in ("socket", "pipes"):
        raise ProtocolError(f"unknown channel {channel!r} in the worker's hello")
    return Hello(
        pid=pid,
        loader=str(data.get("loader", "")),
        channel=channel,
        n_features=n if isinstance(n, int) and not isinstance(n, bool) else None,
        model_stamp=(
            (int(stamp[0]), int(stamp[1]))
            if isinstance(stamp, list) and len(stamp) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in stamp)
            else None
        ),
        fresh=data.get("fresh") is not False,
        loaded_at=float(loaded_at) if isinstance(loaded_at, (int, float)) and not isinstance(loaded_at, bool) else None,
        busy_poll=data.get("busy_poll") is True,
    )

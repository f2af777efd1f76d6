"""The agent -> worker frame codec (cnetd/ml/serving/worker.py) on its own: every datatype
round-trips through the bytes, and hostile frames (an oversize length, a truncated frame, a
datatype that does not exist, a shape that does not fit the bytes...) are refused with a
message saying what is wrong, both by the worker's blocking reader and by the agent's
buffered reader, which is fed the bytes in pieces as a socket would."""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import numpy as np
import pytest

from cnetd.ml.serving.client import Hello, ProtocolError, Values, WorkerClient, WorkerRejected, _FrameReader
from cnetd.ml.serving.worker import (
    DATATYPES,
    FLAG_POLL,
    FRAME_ARRAY,
    FRAME_ERROR,
    FRAME_JSON,
    MAX_PAYLOAD,
    PREFIX,
    FrameError,
    FrameReceiver,
    decode_payload,
    encode_array,
    encode_frame,
    encode_values,
)


def wire(buffers: list[Any]) -> bytes:
    return b"".join(bytes(memoryview(b)) for b in buffers)


def read_back(data: bytes, max_payload: int = MAX_PAYLOAD) -> Any:
    frame = FrameReceiver(io.BytesIO(data).readinto, max_payload).next()
    assert frame is not None
    head, payload = frame
    return head, decode_payload(head, payload)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    dtype = np.dtype(DATATYPES[datatype][1])
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind == "f":
        values = np.linspace(-1e3, 1e3, count).astype(dtype)
        if count > 2:
            values[1], values[2] = np.finfo(dtype).max, np.finfo(dtype).tiny
        return values.reshape(shape)
    info = np.iinfo(dtype)
    values = np.arange(count, dtype=np.int64).astype(dtype)
    if count > 2:
        values[1], values[2] = info.min, info.max
    return values.reshape(shape)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 4), (0, 7)])
def test_every_datatype_round_trips(datatype: str, shape: tuple[int, ...]) -> None:
    array = sample(datatype, shape)
    data = wire(encode_array(41, "instances", array))
    # The exact bytes: the prefix, the name, one u64 per dimension, then the array's own.
    code = DATATYPES[datatype][0]
    size = array.nbytes
    assert data[:PREFIX.size] == struct.pack("<BBBBIQ", FRAME_ARRAY, code, len(shape), 9, 41, size)
    assert data[PREFIX.size:PREFIX.size + 9] == b"instances"
    assert data[PREFIX.size + 9:PREFIX.size + 9 + 8 * len(shape)] == struct.pack(f"<{len(shape)}Q", *shape)
    assert data[PREFIX.size + 9 + 8 * len(shape):] == array.astype(array.dtype.newbyteorder("<")).tobytes()
    head, back = read_back(data)
    assert (head.kind, head.datatype, head.shape, head.name, head.request_id) == (FRAME_ARRAY, datatype, shape, "instances", 41)
    assert back.dtype == np.dtype(DATATYPES[datatype][1]) and back.shape == shape
    assert np.array_equal(back, array)


def test_big_endian_and_strided_arrays_go_as_little_endian_c_order() -> None:
    array = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    head, back = read_back(wire(encode_array(1, "x", array)))
    assert head.datatype == "FP64" and back.dtype == np.dtype("<f8") and np.array_equal(back, array)


def test_what_is_not_one_numeric_array_goes_as_json() -> None:
    # Strings (Chinese text too), ragged lists and object arrays keep a path: a JSON frame.
    for values in (["你好", "世界"], [[1.0, 2.0], [3.0]], np.array(["猫", "dog"]), np.array([{"a": 1}], dtype=object)):
        head, back = read_back(wire(encode_values(5, "predictions", values)))
        expected = values.tolist() if isinstance(values, np.ndarray) else values
        assert head.kind == FRAME_JSON and back == expected
    head, back = read_back(wire(encode_frame(FRAME_ERROR, 6, "输入错误: bad".encode(), "error")))
    assert head.kind == FRAME_ERROR and back == "输入错误: bad"


def prefix(kind: int = FRAME_ARRAY, code: int = 12, ndim: int = 1, name_len: int = 0, request_id: int = 1,
           size: int = 8) -> bytes:
    return PREFIX.pack(kind, code, ndim, name_len, request_id, size)


HOSTILE = [
    (prefix(size=MAX_PAYLOAD + 1) + struct.pack("<Q", 1), "more than"),
    (prefix(kind=9), "unknown frame kind 9"),
    (prefix(code=99) + struct.pack("<Q", 1) + b"\0" * 8, "unknown datatype code 99"),
    (prefix(code=0) + struct.pack("<Q", 1) + b"\0" * 8, "unknown datatype code 0"),
    (prefix(size=16) + struct.pack("<Q", 3) + b"\0" * 16, "shape [3] of FP64 takes 24 bytes, the frame has 16"),
    (prefix(ndim=2, size=0) + struct.pack("<2Q", 0, 2**63), "has a dimension over"),
    (prefix(ndim=9), "9 dimensions, more than 8"),
    (prefix(name_len=200), "a tensor name of 200 bytes"),
    (prefix(ndim=0, name_len=2, size=8) + b"\xff\xfe" + b"\0" * 8, "not UTF-8"),
    (prefix(kind=FRAME_JSON, code=12, ndim=0), "a datatype or shape on a frame that is not an array"),
    (prefix(kind=9 | FLAG_POLL), "unknown frame kind 137"),
]


@pytest.mark.parametrize(("data", "message"), HOSTILE, ids=[m for _, m in HOSTILE])
def test_hostile_frames_are_refused_by_the_worker(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=re.escape(message)):
        read_back(data)


@pytest.mark.parametrize("cut", [3, PREFIX.size + 4, PREFIX.size + 8 + 5])
def test_a_truncated_frame_is_refused(cut: int) -> None:
    data = wire(encode_array(1, "", np.arange(4.0)))
    with pytest.raises(FrameError, match="ended"):
        read_back(data[:cut])
    assert FrameReceiver(io.BytesIO(b"").readinto).next() is None  # a clean end


@pytest.mark.parametrize("piece", [1, 7, 100, 10_000])
def test_the_worker_reads_frames_in_any_pieces(piece: int) -> None:
    """A socket hands over what it has: frames split anywhere, several in one read, and
    payloads bigger than the receiver's buffer, which get a buffer of their own."""
    arrays = [np.arange(3.0), np.arange(500, dtype=np.int32).reshape(50, 10), np.array([True, False]),
              np.arange(40.0).reshape(4, 10)]
    data = io.BytesIO(b"".join(wire(encode_array(i, "x", a)) for i, a in enumerate(arrays)))

    def read_into(view: memoryview) -> int:
        return data.readinto(view[:piece])

    frames = FrameReceiver(read_into, buffer_size=256)
    for i, expected in enumerate(arrays):
        frame = frames.next()
        assert frame is not None
        head, payload = frame
        assert head.request_id == i
        got = decode_payload(head, payload)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
        got.reshape(-1)[:1] = 0  # the model's own copy: writable, and no later frame changes it
    assert frames.next() is None


def test_a_request_may_ask_the_worker_to_poll_for_the_next() -> None:
    for flags, poll in ((FLAG_POLL, True), (0, False)):
        head, value = read_back(wire(encode_values(7, "instances", np.array([[1.5]]), flags)))
        assert (head.kind, head.poll, head.request_id, value.tolist()) == (FRAME_ARRAY, poll, 7, [[1.5]])
        head, value = read_back(wire(encode_values(8, "instances", ["text"], flags)))
        assert (head.kind, head.poll, value) == (FRAME_JSON, poll, ["text"])


def test_bool_bytes_other_than_0_and_1_and_json_that_is_not_json() -> None:
    bad_bool = prefix(code=DATATYPES["BOOL"][0], size=2) + struct.pack("<Q", 2) + b"\x01\x02"
    with pytest.raises(FrameError, match="BOOL bytes must each be 0 or 1"):
        read_back(bad_bool)
    with pytest.raises(FrameError, match="not JSON"):
        read_back(wire(encode_frame(FRAME_JSON, 1, b"[1, 2", "x")))


# ---- the agent's reader: bytes in pieces, as they come from a socket ----------------------


class Answers:
    """A client with requests 1..n in flight and the reader of its socket, fed by hand."""

    def __init__(self, n: int, max_payload: int = MAX_PAYLOAD) -> None:
        self.client = WorkerClient("test", Hello(pid=1, loader="builtin-joblib", channel="socket", n_features=None,
                                                 model_stamp=None))
        self.got: list[tuple[Values | None, Exception | None]] = []
        for request_id in range(1, n + 1):
            self.client._next_id = request_id
            self.client._pending.append((request_id, lambda p, e: self.got.append((p, e)), 0.0))
        self.reader = _FrameReader(self.client, max_payload)

    def feed(self, data: bytes, piece: int) -> None:
        for start in range(0, len(data), piece):
            chunk = data[start:start + piece]
            while chunk:
                buffer = self.reader.get_buffer(-1)
                n = min(len(buffer), len(chunk))
                buffer[:n] = chunk[:n]
                self.reader.buffer_updated(n)
                chunk = chunk[n:]


@pytest.mark.parametrize("piece", [1, 7, 4096, 10**7])
async def test_the_agent_reads_answers_in_any_pieces(piece: int) -> None:
    big = np.arange(300_000, dtype="<f4").reshape(1000, 300)  # bigger than the reusable buffer
    frames = [encode_array(1, "predictions", np.array([1.5, 2.5])), encode_values(2, "predictions", ["你好"]),
              encode_frame(FRAME_ERROR, 3, b"expected 4 features per sample, got 3", "error"),
              encode_array(4, "predictions", big), encode_array(5, "predictions", np.array([True, False]))]
    answers = Answers(5)
    answers.feed(b"".join(wire(f) for f in frames), piece)
    assert len(answers.got) == 5 and not answers.client.closed.is_set()
    (a, _), (b, _), (_, c), (d, _), (e, _) = answers.got
    assert isinstance(a, np.ndarray) and a.tolist() == [1.5, 2.5]
    assert b == ["你好"]
    assert isinstance(c, WorkerRejected) and str(c) == "expected 4 features per sample, got 3"
    assert isinstance(d, np.ndarray) and np.array_equal(d, big)
    assert isinstance(e, np.ndarray) and e.tolist() == [True, False]
    await answers.client.close()


BREAKING = [*HOSTILE, (wire(encode_array(9, "", np.arange(2.0))), "expected the answer to request 1, got one to 9"),
            (wire(encode_array(1, "", np.arange(2.0), FLAG_POLL)), "unknown frame kind 129")]  # (requests only)


@pytest.mark.parametrize(("data", "message"), BREAKING, ids=[m for _, m in BREAKING])
async def test_a_frame_that_breaks_the_stream_drops_the_channel(data: bytes, message: str) -> None:
    answers = Answers(2)
    answers.feed(data + b"\0" * 64, 5)
    assert answers.client.closed.is_set()
    assert [type(e) for _, e in answers.got] == [ProtocolError, ProtocolError]
    assert message in str(answers.got[0][1])
    await answers.client.close()


async def test_an_answer_that_cannot_be_read_fails_only_its_batch() -> None:
    answers = Answers(3)
    bad_bool = prefix(code=DATATYPES["BOOL"][0], size=2) + struct.pack("<Q", 2) + b"\x01\x02"
    scalar = wire(encode_frame(FRAME_ARRAY, 2, np.float64(1.0).tobytes(), "p", "FP64", ()))
    answers.feed(bad_bool + scalar + wire(encode_values(3, "p", np.array([4.0]))), 3)
    assert not answers.client.closed.is_set()
    (_, first), (_, second), (third, error) = answers.got
    assert isinstance(first, ProtocolError) and "BOOL bytes must each be 0 or 1" in str(first)
    assert isinstance(second, ProtocolError) and "not a list of predictions" in str(second)
    assert error is None and isinstance(third, np.ndarray) and third.tolist() == [4.0]
    await answers.client.close()


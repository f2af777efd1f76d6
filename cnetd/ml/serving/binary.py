"""The KServe V2 binary tensor data extension: a JSON header of Inference-Header-Content-Length
bytes, then each binary tensor's raw bytes in the order of its tensor (little-endian; a BYTES
element is a 4-byte little-endian length, then its bytes).

These bytes are hostile: every size (the header's length, each binary_data_size, each BYTES
length) is checked against the bytes actually there before anything is built from it, and
arrays are views of the body (np.frombuffer), never allocations sized by a claim.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnetd.errors import DomainError, Invalid

HEADER = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")


def header_length(value: str, body_size: int) -> int:
    """Inference-Header-Content-Length as a number of bytes within the body, or a 400."""
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise Invalid(HEADER, f"must be a whole number of bytes, got {value[:30]!r}")
    length = int(value)
    if length == 0:
        raise Invalid(HEADER, "must be more than 0: the JSON header comes first")
    if length > body_size:
        raise Invalid(HEADER, f"says {length} bytes of JSON header but the body has only {body_size}")
    return length


def binary_size(tensor: Mapping[str, Any], where: str) -> int | None:
    """The tensor's parameters.binary_data_size (None when it has none), checked as a size."""
    parameters = tensor.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, Mapping):
        raise Invalid(f"{where}.parameters", "must be an object")
    if "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Invalid(f"{where}.parameters.binary_data_size", f"must be a whole number >= 0, got {json.dumps(size)[:50]}")
    return size


def split_inputs(inputs: list[Any], tail: memoryview) -> list[memoryview | None]:
    """Each input's slice of the bytes after the header (None for an input sent as JSON
    "data"), taken in order; a 400 naming the input whose size runs past the end, or the
    body when bytes are left over."""
    slices: list[memoryview | None] = []
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        size = binary_size(tensor, where) if isinstance(tensor, Mapping) else None
        if size is None:
            slices.append(None)
            continue
        if "data" in tensor:
            raise Invalid(where, "has both \"data\" and parameters.binary_data_size; send one")
        if size > len(tail) - offset:
            raise Invalid(f"{where}.parameters.binary_data_size",
                          f"is {size} bytes but only {len(tail) - offset} are left in the body")
        slices.append(tail[offset:offset + size])
        offset += size
    if offset != len(tail):
        raise DomainError(f"body: {len(tail) - offset} bytes after the header and the binary inputs belong to no input")
    return slices


def decode_tensor(data: memoryview, datatype: str, shape: list[int], where: str) -> np.ndarray[Any, Any]:
    """The tensor in `data` as a numpy array of `shape` (a read-only view for numbers; for
    BYTES an object array of bytes). `shape` must already be bounded by the caller."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes(data, count, where).reshape(shape)
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise Invalid(f"{where}.datatype", f"{datatype} is not supported as binary data (numpy has no {datatype})")
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise Invalid(f"{where}.parameters.binary_data_size",
                      f"is {len(data)} bytes but shape {shape} of {datatype} takes {expected} ({count} x {dtype.itemsize})")
    if datatype == "BOOL":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise Invalid(f"{where}.data", "BOOL bytes must each be 0 or 1")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_bytes(data: memoryview, count: int, where: str) -> np.ndarray[Any, Any]:
    """`count` BYTES elements, each a 4-byte little-endian length then that many bytes,
    filling `data` exactly."""
    if count > len(data) // _LENGTH.size:
        raise Invalid(f"{where}.parameters.binary_data_size",
                      f"is {len(data)} bytes, too few for {count} BYTES elements of 4 bytes each at least")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if len(data) - offset < _LENGTH.size:
            raise Invalid(f"{where}.data[{i}]", "its 4-byte length runs past the input's bytes")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if length > len(data) - offset:
            raise Invalid(f"{where}.data[{i}]", f"says {length} bytes but only {len(data) - offset} are left in the input")
        out[i] = bytes(data[offset:offset + length])
        offset += length
    if offset != len(data):
        raise Invalid(f"{where}.parameters.binary_data_size", f"{len(data) - offset} bytes are left after {count} BYTES elements")
    return out


def bytes_to_text(value: bytes) -> str:
    """A BYTES element as text; bytes that are not UTF-8 survive (surrogateescape) and
    text_to_bytes gives them back unchanged."""
    return value.decode("utf-8", "surrogateescape")


def text_to_bytes(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate sent as a JSON escape (not from bytes_to_text)
        return value.encode("utf-8", "surrogatepass")


def encode_tensor(values: list[Any] | np.ndarray[Any, Any], datatype: str) -> bytes:
    """A tensor's values (a flat list, or an array of any shape, read in C order) as the
    extension's bytes."""
    if datatype == "BYTES":
        parts = []
        for value in (values.reshape(-1).tolist() if isinstance(values, np.ndarray) else values):
            raw = value if isinstance(value, bytes) else text_to_bytes(str(value))
            parts.append(_LENGTH.pack(len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()


def binary_body(header: dict[str, Any], tensors: list[bytes]) -> tuple[bytes, int]:
    """The whole body and its header's length (for Inference-Header-Content-Length)."""
    head = json.dumps(header).encode()
    return head + b"".join(tensors), len(head)

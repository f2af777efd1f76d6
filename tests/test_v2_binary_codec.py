"""The V2 binary tensor codec on its own (cnetd/ml/serving/binary.py): every datatype the
extension defines decodes from bytes built by hand with struct and encodes back to them, and
hostile sizes (claims past the bytes there, leftovers, BYTES lengths that lie) are 400s
naming the input."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from cnetd.errors import DomainError
from cnetd.ml.serving.binary import decode_bytes, decode_tensor, encode_tensor, header_length, split_inputs

NUMERIC = [
    ("BOOL", "?", [True, False, True, True]),
    ("INT8", "b", [-128, 0, 1, 127]),
    ("INT16", "h", [-32768, 0, 1, 32767]),
    ("INT32", "i", [-(2**31), 0, 1, 2**31 - 1]),
    ("INT64", "q", [-(2**63), 0, 1, 2**63 - 1]),
    ("UINT8", "B", [0, 1, 200, 255]),
    ("UINT16", "H", [0, 1, 40000, 65535]),
    ("UINT32", "I", [0, 1, 2**31, 2**32 - 1]),
    ("UINT64", "Q", [0, 1, 2**63, 2**64 - 1]),
    ("FP16", "e", [0.5, -1.0, 65504.0, 0.0]),
    ("FP32", "f", [0.5, -1.25, 3.0, 1e-3]),
    ("FP64", "d", [0.5, -1.25, 1e300, 2.0**-1000]),
]


def le(fmt: str, values: list[Any]) -> bytes:
    return struct.pack(f"<{len(values)}{fmt}", *values)


@pytest.mark.parametrize(("datatype", "fmt", "values"), NUMERIC)
def test_every_numeric_datatype_decodes_and_encodes_little_endian(datatype: str, fmt: str, values: list[Any]) -> None:
    raw = le(fmt, values)
    array = decode_tensor(memoryview(raw), datatype, [2, 2], "inputs[0]")
    assert array.shape == (2, 2)
    expected = [struct.unpack(f"<{fmt}", struct.pack(f"<{fmt}", v))[0] for v in values]  # FP16/FP32 rounding
    assert array.reshape(-1).tolist() == expected
    assert encode_tensor(array.reshape(-1).tolist(), datatype) == raw


@pytest.mark.parametrize(("datatype", "fmt", "values"), NUMERIC)
def test_a_size_that_does_not_match_the_shape_is_a_400_naming_the_input(datatype: str, fmt: str, values: list[Any]) -> None:
    raw = le(fmt, values)
    for wrong in (raw[:-1], raw + b"\x00", b""):
        with pytest.raises(DomainError) as caught:
            decode_tensor(memoryview(wrong), datatype, [2, 2], "inputs[3]")
        assert caught.value.status == 400
        assert caught.value.message.startswith("inputs[3].parameters.binary_data_size:"), caught.value.message


def test_bool_bytes_other_than_0_and_1_are_refused() -> None:
    with pytest.raises(DomainError, match=r"inputs\[0\].data: BOOL bytes must each be 0 or 1"):
        decode_tensor(memoryview(b"\x00\x02"), "BOOL", [2], "inputs[0]")


def test_bf16_is_a_clear_400() -> None:
    with pytest.raises(DomainError, match=r"inputs\[0\].datatype: BF16 is not supported as binary data"):
        decode_tensor(memoryview(b"\x00\x00"), "BF16", [1], "inputs[0]")


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_bytes_elements_are_length_prefixed_both_ways() -> None:
    items = [b"", b"a", "héllo".encode(), b"\x00\xff" * 10]
    raw = bytes_elements(*items)
    decoded = decode_tensor(memoryview(raw), "BYTES", [2, 2], "inputs[0]")
    assert decoded.shape == (2, 2) and decoded.reshape(-1).tolist() == items
    assert encode_tensor(items, "BYTES") == raw
    assert encode_tensor(["héllo", "x"], "BYTES") == bytes_elements("héllo".encode(), b"x")


@pytest.mark.parametrize(("raw", "count", "problem"), [
    (struct.pack("<I", 2**32 - 1) + b"ab", 1, r"inputs\[0\].data\[0\]: says 4294967295 bytes but only 2"),
    (bytes_elements(b"ab") + b"\x01", 1, r"1 bytes are left after 1 BYTES elements"),
    (bytes_elements(b"ab") + b"\x01\x00", 2, r"inputs\[0\].data\[1\]: its 4-byte length runs past"),
    (b"\x00" * 7, 2, r"too few for 2 BYTES elements"),
    (b"\x00" * 16, 10_000_000, r"too few for 10000000 BYTES elements"),  # no 10M-slot array first
])
def test_bytes_lengths_that_lie_are_400s(raw: bytes, count: int, problem: str) -> None:
    with pytest.raises(DomainError, match=problem):
        decode_bytes(memoryview(raw), count, "inputs[0]")


def test_inputs_take_their_bytes_in_order_and_leftovers_or_shortfalls_are_named() -> None:
    tail = memoryview(b"aaaabbcccccc")
    inputs: list[Any] = [{"parameters": {"binary_data_size": 4}}, {"data": [1]}, {"parameters": {"binary_data_size": 2}},
                         {"parameters": {"binary_data_size": 6}}]
    slices = split_inputs(inputs, tail)
    assert [None if s is None else bytes(s) for s in slices] == [b"aaaa", None, b"bb", b"cccccc"]
    with pytest.raises(DomainError, match=r"^body: 1 bytes after the header"):
        split_inputs(inputs, memoryview(b"aaaabbcccccc!"))
    with pytest.raises(DomainError, match=r"^inputs\[3\].parameters.binary_data_size: is 6 bytes but only 5"):
        split_inputs(inputs, memoryview(b"aaaabbccccc"))
    for bad in (-1, 1.5, True, "4", 2**70):
        with pytest.raises(DomainError, match=r"^inputs\[0\].parameters.binary_data_size"):
            split_inputs([{"parameters": {"binary_data_size": bad}}], tail)
    with pytest.raises(DomainError, match=r"^inputs\[0\]: has both"):
        split_inputs([{"data": [1], "parameters": {"binary_data_size": 0}}], memoryview(b""))


@pytest.mark.parametrize(("value", "problem"), [
    ("0", "must be more than 0"), ("-1", "whole number"), ("1e3", "whole number"), ("", "whole number"),
    ("١٢", "whole number"), ("9" * 40, "whole number"), ("101", "body has only 100"),
])
def test_header_length_is_bounded_by_the_body(value: str, problem: str) -> None:
    with pytest.raises(DomainError, match=f"^Inference-Header-Content-Length: .*{problem}"):
        header_length(value, 100)
    assert header_length("100", 100) == 100


def test_numbers_are_views_of_the_body_not_copies_sized_by_a_claim() -> None:
    raw = le("d", [1.0, 2.0])
    array = decode_tensor(memoryview(raw), "FP64", [2], "inputs[0]")
    assert not array.flags.owndata and not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(raw, dtype="<f8"))

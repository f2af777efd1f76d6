"""The datatype of a V2 answer holds the model's answer exactly: whole numbers above INT64's
range (a UINT64 input echoed) are UINT64, beyond every integer type text, never an overflow
that turns a good answer into a 500."""

from __future__ import annotations

from cnetd.ml.serving.binary import encode_tensor
from cnetd.ml.serving.protocol import output_tensor


def test_whole_numbers_get_the_integer_type_that_holds_them() -> None:
    assert output_tensor("y", [-(2**63), 2**63 - 1])["datatype"] == "INT64"
    unsigned = output_tensor("y", [[0, 2**64 - 1]])
    assert unsigned["datatype"] == "UINT64" and unsigned["shape"] == [1, 2]
    assert encode_tensor(unsigned["data"], "UINT64") == b"\x00" * 8 + b"\xff" * 8
    beyond = output_tensor("y", [-1, 2**64])
    assert beyond["datatype"] == "BYTES" and beyond["data"] == ["-1", str(2**64)]
    assert output_tensor("y", [1, 2.5])["datatype"] == "FP64" and output_tensor("y", [True])["datatype"] == "BOOL"

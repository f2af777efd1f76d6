"""ModelInferRequest to the V2 request body the shared parser reads, and the V2 answer to a
ModelInferResponse.

Raw inputs (raw_input_contents) become the binary tensor data extension's form: each input
gets parameters.binary_data_size, and the bytes follow in the order of the inputs, so the
same checks as over HTTP decode them (cnetd/ml/serving/protocol.py, binary.py). Their sizes
are checked here first, so that a wrong size names the raw contents and the input.
Typed inputs (InferTensorContents) become JSON-like "data". Answers always travel as
raw_output_contents, as Triton's own server sends them."""

from __future__ import annotations

import math
from typing import Any

from cnetd.errors import Invalid
from cnetd.grpcapi import grpc_predict_v2_pb2 as pb
from cnetd.ml.serving.binary import DTYPES, bytes_to_text, encode_tensor
from cnetd.ml.serving.protocol import MAX_DIMENSIONS, MAX_ELEMENTS

# datatype -> the InferTensorContents field that carries it (FP16 and BF16 travel raw only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parameter(value: pb.InferParameter) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def _parameters(holder: Any) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in holder.parameters.items()}


def _raw_size(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes, i: int) -> None:
    """A raw input's size against its shape and datatype, before anything else reads it."""
    where = f"raw_input_contents[{i}] (input {tensor.name!r})"
    dtype = DTYPES.get(tensor.datatype)
    shape = list(tensor.shape)
    if dtype is None or len(shape) > MAX_DIMENSIONS or not all(0 <= d <= MAX_ELEMENTS for d in shape):
        return  # the shared parser names the datatype or the shape
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise Invalid(where, f"is {len(raw)} bytes but shape {shape} of {tensor.datatype} takes "
                             f"{count * dtype.itemsize} ({count} x {dtype.itemsize})")


def request_body(request: pb.ModelInferRequest) -> tuple[dict[str, Any], memoryview | None]:
    """The request as the V2 JSON body, and the raw inputs' bytes after it (None: no raw inputs)."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise Invalid("raw_input_contents", f"has {len(raws)} entries for {len(request.inputs)} inputs: "
                                            "give one per input, in the order of inputs, or none")
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        parameters = _parameters(tensor)
        if raws:
            if tensor.HasField("contents"):
                raise Invalid(f"inputs[{i}].contents", "must not be set when raw_input_contents are used")
            _raw_size(tensor, raws[i], i)
            parameters["binary_data_size"] = len(raws[i])
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if (field is None and tensor.datatype in DTYPES) or tensor.datatype == "BF16":
                raise Invalid(f"inputs[{i}].contents", f"{tensor.datatype} has no typed contents: send it in raw_input_contents")
            values = list(getattr(tensor.contents, field)) if field is not None else []
            entry["data"] = [bytes_to_text(v) for v in values] if tensor.datatype == "BYTES" else values
        if parameters:
            entry["parameters"] = parameters
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": output.name} for output in request.outputs]
    return body, memoryview(b"".join(raws)) if raws else None


def response(reply: dict[str, Any]) -> pb.ModelInferResponse:
    """The V2 answer (outputs with flat "data") with each output's bytes in raw_output_contents."""
    message = pb.ModelInferResponse(model_name=reply["model_name"], model_version=reply["model_version"],
                                    id=reply.get("id", ""))
    for output in reply["outputs"]:
        message.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        message.raw_output_contents.append(encode_tensor(output["data"], output["datatype"]))
    return message

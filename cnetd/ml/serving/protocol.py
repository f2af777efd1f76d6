"""Request shapes for served models: the Open Inference Protocol (KServe V2) tensors, and
the seed's `input_data`, both turned into the worker's list of instances."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnetd.bodies.jsonvalue import json_type
from cnetd.errors import Invalid
from cnetd.ml.serving.binary import DTYPES, HEADER, OCTET_STREAM, binary_size, bytes_to_text, decode_tensor, split_inputs

INT_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
FLOAT_TYPES = ("FP16", "FP32", "FP64", "BF16")
NUMERIC_TYPES = (*FLOAT_TYPES, *INT_RANGES)
ALL_TYPES = (*NUMERIC_TYPES, "BOOL", "BYTES")
OUTPUT_NAME = "predictions"
ARRAY_DATATYPES = {dtype.str: name for name, dtype in DTYPES.items()}  # "<f4" -> "FP32", "|b1" -> "BOOL"
MAX_ELEMENTS = 10_000_000
MAX_DIMENSIONS = 8


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    input_name: str
    instances: list[Any] | np.ndarray[Any, Any]  # an array (a view of the body) for binary input
    output_name: str
    binary_output: bool = False


def _flatten(data: Any, out: list[Any]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    """Rows of the tensor along its first (batch) dimension."""
    if len(shape) <= 1:
        return flat
    step = 1
    for d in shape[1:]:
        step *= d
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _shape(shape: Any, where: str) -> list[int]:
    """A tensor's shape, checked before anything is built from it: few dimensions, each at
    most MAX_ELEMENTS, and only the batch (first) dimension may be 0 (an empty batch):
    [3000000, 0] would otherwise make 3,000,000 empty instances out of no data."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise Invalid(where, f"must be an array of whole numbers, got {json.dumps(shape)[:100]}")
    if len(shape) > MAX_DIMENSIONS:
        raise Invalid(where, f"has {len(shape)} dimensions, at most {MAX_DIMENSIONS}")
    for i, d in enumerate(shape):
        low = 0 if i == 0 else 1
        if not low <= d <= MAX_ELEMENTS:
            raise Invalid(f"{where}[{i}]", f"must be between {low} and {MAX_ELEMENTS}, got {str(d)[:30]}")
    return shape


def _check_values(values: list[Any], datatype: str, where: str) -> None:
    if datatype == "BOOL":
        for i, value in enumerate(values):
            if not isinstance(value, bool):
                raise Invalid(f"{where}.data[{i}]", f"not true or false: {json.dumps(value)[:100]} (datatype BOOL)")
        return
    if datatype == "BYTES":
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise Invalid(f"{where}.data[{i}]", f"not a string: {json.dumps(value)[:100]} (datatype BYTES)")
        return
    ints = INT_RANGES.get(datatype)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{where}.data[{i}]", f"not a number: {json.dumps(value)[:100]} (datatype {datatype})")
        if ints is not None:
            if isinstance(value, float):
                if not value.is_integer():
                    raise Invalid(f"{where}.data[{i}]", f"{value!r} is not an integer (datatype {datatype})")
                value = int(value)
            if not ints[0] <= value <= ints[1]:
                raise Invalid(f"{where}.data[{i}]", f"{value} is out of range for {datatype}")
        elif not math.isfinite(value):
            raise Invalid(f"{where}.data[{i}]", f"not a finite number: {value}")


def _check_finite(array: np.ndarray[Any, Any], datatype: str, where: str) -> None:
    """What _check_values says of a decoded binary tensor: its floats must be finite (its
    integers are in range by their width)."""
    if array.dtype.kind != "f" or not array.size:
        return
    flat = array.reshape(-1)
    finite = np.isfinite(flat)
    if not finite.all():
        i = int(np.argmin(finite))
        raise Invalid(f"{where}.data[{i}]", f"not a finite number: {float(flat[i])}")


def _flag(holder: Mapping[str, Any], key: str, where: str) -> bool:
    parameters = holder.get("parameters")
    if parameters is None:
        return False
    if not isinstance(parameters, Mapping):
        raise Invalid(f"{where}.parameters", f"must be an object, got {json_type(parameters)}")
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise Invalid(f"{where}.parameters.{key}", f"must be true or false, got {json_type(value)}")
    return value


def parse_infer_request(body: Any, binary: memoryview | None = None) -> InferRequest:
    """`binary` is the bytes after the header of a binary-extension request (None for JSON)."""
    if not isinstance(body, Mapping):
        raise Invalid("body", f"must be a JSON object, got {json_type(body)}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise Invalid("id", f"must be a string, got {json_type(request_id)}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Invalid("inputs", "is required: a non-empty array of tensors {name, shape, datatype, data}")
    slices = split_inputs(inputs, binary) if binary is not None else [None] * len(inputs)
    if len(inputs) != 1:
        raise Invalid("inputs", f"this model takes one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    where = "inputs[0]"
    if not isinstance(tensor, Mapping):
        raise Invalid(where, f"must be an object, got {json_type(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"{where}.name", "is required and must be a non-empty string")
    shape = _shape(tensor.get("shape"), f"{where}.shape")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in ALL_TYPES:
        raise Invalid(f"{where}.datatype", f"must be one of {', '.join(ALL_TYPES)}, got {json.dumps(datatype)[:100]}")
    if binary is None and binary_size(tensor, where) is not None:
        raise Invalid(f"{where}.parameters.binary_data_size",
                      f"binary tensor data needs Content-Type {OCTET_STREAM} and the {HEADER} header")
    count = math.prod(shape)  # exact: each dimension is at most MAX_ELEMENTS, and there are few
    if count > MAX_ELEMENTS:
        raise Invalid(f"{where}.shape", f"{shape} holds {count} values, more than {MAX_ELEMENTS}")
    instances: list[Any] | np.ndarray[Any, Any]
    if slices[0] is not None:
        # Binary: the samples stay one array (a view of the body) all the way to the worker.
        array = decode_tensor(slices[0], datatype, shape, where)
        if datatype == "BYTES":  # as the JSON form has them: text (bytes that are not UTF-8 kept by surrogateescape)
            texts = [bytes_to_text(b) for b in array.reshape(-1)]
            instances = texts if not shape else _nest(texts, shape)
        else:
            _check_finite(array, datatype, where)
            instances = array.reshape(1) if not shape else array
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise Invalid(f"{where}.data", f"is required: an array of values (flat or nested), got {json_type(data)}")
        flat: list[Any] = []
        _flatten(data, flat)  # no bigger than the body, which is capped
        if len(flat) != count:
            raise Invalid(f"{where}.shape", f"{shape} holds {count} values but data has {len(flat)}")
        _check_values(flat, datatype, where)
        instances = [flat[0]] if not shape else _nest(flat, shape)
    output_name = OUTPUT_NAME
    binary_output = _flag(body, "binary_data_output", "body")
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise Invalid("outputs", "must be an array of objects {name}")
        for i, output in enumerate(outputs):
            if output.get("name") != OUTPUT_NAME:
                shown = json.dumps(output.get("name"))[:100]
                raise Invalid(f"outputs[{i}].name", f"unknown output {shown} (this model has: {OUTPUT_NAME})")
            binary_output = _flag(output, "binary_data", f"outputs[{i}]") or binary_output
    return InferRequest(id=request_id, input_name=name, instances=instances, output_name=output_name,
                        binary_output=binary_output)


def _shape_of(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def output_tensor(name: str, predictions: list[Any] | np.ndarray[Any, Any]) -> dict[str, Any]:
    """Predictions (one per instance, each a scalar or nested list) as a V2 output tensor.
    An array with a V2 datatype stays an array in "data" (its dtype names the datatype), so
    that binary answers are its bytes; json_data() turns it into the JSON form's list."""
    if isinstance(predictions, np.ndarray):
        array_type = ARRAY_DATATYPES.get(predictions.dtype.newbyteorder("<").str)
        if array_type is not None and predictions.ndim >= 1:
            return {"name": name, "datatype": array_type, "shape": list(predictions.shape), "data": predictions}
        predictions = predictions.tolist()
    shape = [len(predictions), *(_shape_of(predictions[0]) if predictions else [])]
    flat: list[Any] = []
    _flatten(predictions, flat)
    if all(isinstance(v, bool) for v in flat) and flat:
        datatype = "BOOL"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in flat) and flat:
        low, high = min(flat), max(flat)
        if INT_RANGES["INT64"][0] <= low and high <= INT_RANGES["INT64"][1]:
            datatype = "INT64"
        elif low >= 0 and high <= INT_RANGES["UINT64"][1]:
            datatype = "UINT64"  # (a UINT64 input echoed: above INT64's range)
        else:
            datatype, flat = "BYTES", [str(v) for v in flat]  # no V2 integer type holds it
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        datatype = "FP64"
    else:
        datatype = "BYTES"
        flat = [v if isinstance(v, str) else json.dumps(v) for v in flat]
    return {"name": name, "datatype": datatype, "shape": shape, "data": flat}


def json_data(data: list[Any] | np.ndarray[Any, Any]) -> list[Any]:
    """An output tensor's "data" as the flat list of JSON values."""
    return data.reshape(-1).tolist() if isinstance(data, np.ndarray) else data


def instances_from_input_data(value: Any, n_features: int | None) -> tuple[list[Any], bool]:
    """The seed's `input_data` as instances, read the way the example scripts' predict
    reads its argument; `single` means the answer is one prediction, not a list.

    A number is one sample. A string is parsed as JSON, else as comma-separated numbers.
    A flat list is one sample of several features, or several one-feature samples when the
    model takes one feature. A list of lists is a batch, and so is {"instances": [...]}.
    """
    if value is None:
        raise Invalid("input_data", "is required")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise Invalid("input_data", "must not be empty")
        try:
            value = json.loads(text)
        except ValueError:
            parts = [p.strip() for p in text.split(",")]
            try:
                value = [float(p) for p in parts] if len(parts) > 1 else float(parts[0])
            except ValueError:
                value = text  # the worker says what is wrong with it
    if isinstance(value, Mapping):
        instances = value.get("instances")
        if not isinstance(instances, list) or not instances:
            raise Invalid("input_data", 'an object must have a non-empty "instances" list')
        return instances, False
    if isinstance(value, list):
        if not value:
            raise Invalid("input_data", "must not be an empty list")
        if all(isinstance(v, list) for v in value) or n_features == 1:
            return value, False
        return [value], True
    return [value], True

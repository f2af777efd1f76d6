"""The request bodies' typed declarations: every refusal names its field with a dotted path
in the agent's own words, what the seed guide sends is accepted as it is, hostile bodies get
a clean Invalid, and the OpenAPI schema of each body agrees with what the code accepts.

In-process: the declarations are pure functions of the decoded JSON value; the HTTP side
(the same checks behind a real agent) is in test_api_errors.py and test_openapi.py.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from cnetd.api.openapi import DOCUMENT
from cnetd.bodies.decode import decode_body
from cnetd.errors import Invalid
from cnetd.limits import ResourceLimits
from cnetd.ml.bodies import DeploymentBody, PredictRequestBody
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.tasks.request import parse_new_task
from tests.test_ml_api import LINEAR_BODY, NETWORK_BODY

TASK = {"name": "x", "command": "true"}
MODEL_DEFAULTS = ResourceLimits(1.0, 536870912, 1073741824, 0)


def refused(parse: Any, body: Any) -> Invalid:
    with pytest.raises(Invalid) as caught:
        parse(body)
    return caught.value


def deployment(body: Any) -> Any:
    return decode_body(body, DeploymentBody).to_deployment(MODEL_DEFAULTS)


@pytest.mark.parametrize(("patch", "field", "words"), [
    ({"name": None}, "name", "is required"),
    ({"command": None}, "command", "is required"),
    ({"command": 5}, "command", "must be a non-empty string of at most 4096 characters with no NUL, got number"),
    ({"command": "   "}, "command", "must not be empty"),
    ({"command": "tr\x00ue"}, "command", "with no NUL"),
    ({"args": "a b"}, "args", "must be an array of strings"),
    ({"args": ["a", "b", "c", 4]}, "args[3]", "must be a string"),
    ({"args": ["a", "b\x00"]}, "args[1]", "with no NUL"),
    ({"args": ["a"] * 257}, "args", "at most 256 items"),
    ({"args": ["x" * 8193]}, "args[0]", "at most 8192 characters"),
    ({"env": {"FOO": 1}}, "env.FOO", "must be a string with no NUL, got number"),
    ({"env": {"FOO": "a\x00b"}}, "env.FOO", "with no NUL"),
    ({"env": {"A=B": "1"}}, "env.A=B", "is not a valid environment variable name"),
    ({"env": {"": "1"}}, "env.", "is not a valid environment variable name"),
    ({"env": {"N\x00UL": "1"}}, "env.N\x00UL", "is not a valid environment variable name"),
    ({"env": {f"V{i}": "1" for i in range(257)}}, "env", "at most 256 entries"),
    ({"env": ["A=1"]}, "env", "must be an object of string values"),
    ({"resources": {"memory_limit": "lots"}}, "resources.memory_limit", "must be a size"),
    ({"resources": {"memory_limit": 0}}, "resources.memory_limit", "> 0"),
    ({"resources": {"memory_limit": 2.5}}, "resources.memory_limit", "whole number of bytes"),
    ({"resources": {"memory_limit": True}}, "resources.memory_limit", "got boolean"),
    ({"resources": {"disk_limit": "0.0001KB"}}, "resources.disk_limit", "must be > 0 bytes"),
    ({"resources": {"cpu_limit": 0}}, "resources.cpu_limit", "must be a number of cores > 0 and at most 1024, got 0"),
    ({"resources": {"cpu_limit": float("nan")}}, "resources.cpu_limit", "must be a number of cores"),
    ({"resources": {"cpu_limit": 10**400}}, "resources.cpu_limit", "must be a number of cores"),
    ({"resources": {"gpu_limit": 1.5}}, "resources.gpu_limit", "must be a whole number >= 0"),
    ({"resources": {"memory_limt": 5}}, "resources.memory_limt",
     "unknown field (allowed: cpu_limit, disk_limit, gpu_limit, gpu_memory, max_pids, memory_limit)"),
    ({"resources": [1]}, "resources", "must be a JSON object, got array"),
    ({"timeout": "soon"}, "timeout", "must be a duration"),
    ({"timeout": 0}, "timeout", "> 0"),
    ({"timeout": "0s"}, "timeout", "must be > 0"),
    ({"timeout": float("inf")}, "timeout", "must be a duration"),
    ({"working_dir": "a" * 256}, "working_dir", "longer than 255 bytes"),
    ({"working_dir": "ok/" + "é" * 128}, "working_dir", "longer than 255 bytes"),  # 256 bytes, 128 characters
    ({"type": "container"}, "type", 'must be "process" here'),
    ({"type": None}, "type", 'must be "process" here'),
    ({"name": ""}, "name", "is required and must be a non-empty string"),
    ({"name": "  "}, "name", "is required and must be a non-empty string"),
    ({"name": "<script>"}, "name", "must be 1-128 characters"),
    ({"name": "x" * 129}, "name", "must be 1-128 characters"),
    ({"colour": "red"}, "colour",
     "unknown field (allowed: args, command, env, environment, name, node_id, placement, resources, timeout, type, working_dir)"),
])
def test_task_body_refusals_name_the_field(patch: dict[str, Any], field: str, words: str) -> None:
    body = {k: v for k, v in {**TASK, **patch}.items() if v is not None or k == "type"}
    error = refused(parse_new_task, body)
    assert error.field == field, error.message
    assert error.message.startswith(f"{field}: ") and words in error.message, error.message
    assert error.details == {"field": field}


def test_task_body_accepts_what_the_api_always_took() -> None:
    task = parse_new_task({
        **TASK, "type": "process", "args": ["-c", "x"], "env": {"A": "1", "B": ""}, "working_dir": "sub",
        "resources": {"cpu_limit": 2, "memory_limit": "1GiB", "disk_limit": 5e8, "gpu_limit": 0}, "timeout": "1m30s",
    })
    assert task.resources == ResourceLimits(2.0, 2**30, 500_000_000, 0)
    assert (task.timeout, task.args, task.env, task.working_dir) == (90.0, ["-c", "x"], {"A": "1", "B": ""}, "sub")
    decimal = parse_new_task({**TASK, "resources": {"memory_limit": "512MB"}, "timeout": 30})
    assert decimal.resources.memory_limit == 512 * 10**6
    assert parse_new_task({**TASK, "timeout": 2.5}).timeout == 2.5
    # null is the same as leaving the field out
    nulls = parse_new_task({**TASK, "args": None, "env": None, "working_dir": None, "resources": None, "timeout": None})
    assert nulls == parse_new_task(TASK)
    assert (nulls.working_dir, nulls.resources, nulls.timeout) == (".", ResourceLimits(), None)


def test_body_that_is_not_an_object() -> None:
    for body in ([1, 2], "x", 5, None, True):
        error = refused(parse_new_task, body)
        assert error.field == "body" and error.message.startswith("body: must be a JSON object"), error.message


def test_the_seed_deploy_bodies_are_accepted_verbatim() -> None:
    linear = deployment(copy.deepcopy(LINEAR_BODY))
    assert linear.task.args == LINEAR_BODY["args"] and linear.task.kind == "train"
    assert linear.task.resources == ResourceLimits(1.0, 512000000, 1000000000, 0)  # gpu_limit from the defaults
    assert linear.task.env == {"PYTHONPATH": "examples/ml_models", "MODEL_PATH": LINEAR_BODY["model_path"],
                               "MODEL_TYPE": "linear_regression"}
    network = deployment(copy.deepcopy(NETWORK_BODY))
    assert network.task.resources.memory_limit == 1024000000 and network.model_type == "neural_network"
    assert network.serving is None


def test_deploy_defaults_and_what_null_means_in_resources() -> None:
    minimal = deployment({"name": "m", "model_path": "m.joblib", "script_path": "s.py"})
    assert minimal.task.args == ["s.py", "train", "m.joblib"] and minimal.task.command == "python3"
    assert minimal.model_type == "custom" and minimal.task.resources == MODEL_DEFAULTS
    assert minimal.task.identity_owner is not None and minimal.task.type == "ml_model"
    # a limit left out takes the default; a limit sent as null removes it
    partial = deployment({"name": "m", "model_path": "m", "script_path": "s.py",
                          "resources": {"cpu_limit": None, "memory_limit": "1GB"}})
    assert partial.task.resources == ResourceLimits(None, 10**9, 1073741824, 0)
    served = deployment({"name": "m", "model_path": "m", "script_path": "s.py", "serving": {"replicas": 2}})
    assert served.serving == ServingSpec(replicas=2)


@pytest.mark.parametrize(("patch", "field", "words"), [
    ({"model_path": None}, "model_path", "is required"),
    ({"model_path": "  "}, "model_path", "must not be empty"),
    ({"model_path": "m" * 256}, "model_path", "longer than 255 bytes"),
    ({"model_path": "m\x00.joblib"}, "model_path", "with no NUL"),
    ({"script_path": "0" * 5000}, "script_path", "at most 4096 characters"),
    ({"model_type": "t" * 65}, "model_type", "at most 64 characters"),
    ({"args": [1, 2]}, "args[0]", "must be a string"),
    ({"resources": {"cpu_limit": "two"}}, "resources.cpu_limit", "must be a number of cores"),
    ({"serving": {"replicas": 65}}, "serving.replicas", "between 1 and 64, got 65"),
    ({"serving": {"replicas": None}}, "serving.replicas", "got null"),
    ({"serving": {"replicas": 2.5}}, "serving.replicas", "whole number"),
    ({"serving": {"loader": "docker"}}, "serving.loader", "must be one of auto, script, builtin, got 'docker'"),
    ({"serving": {"colour": 1}}, "serving.colour", "unknown field (allowed: cache_size, cold_start_timeout"),
    ({"serving": [1]}, "serving", "must be a JSON object, got array"),
    ({"input_data": 1}, "input_data", "unknown field (allowed: args, command, env, environment, model_path, model_type, name"),
])
def test_deploy_body_refusals_name_the_field(patch: dict[str, Any], field: str, words: str) -> None:
    body = {k: v for k, v in {**LINEAR_BODY, **patch}.items() if v is not None or k == "serving"}
    error = refused(deployment, body)
    assert error.field == field and words in error.message, error.message


def test_serving_settings_keep_what_was_left_out() -> None:
    base = ServingSpec(replicas=3, cache_size=10)
    assert parse_spec({"max_batch_size": 8.0}, base=base) == ServingSpec(replicas=3, cache_size=10, max_batch_size=8)
    assert isinstance(parse_spec({"max_batch_size": 8.0}).max_batch_size, int)
    assert parse_spec({}, base=base) == base and parse_spec(None) == ServingSpec()


def test_predict_body() -> None:
    assert decode_body({"input_data": None}, PredictRequestBody).input_data is None  # input checks say why later
    assert refused(lambda b: decode_body(b, PredictRequestBody), {}).message == "input_data: is required"
    error = refused(lambda b: decode_body(b, PredictRequestBody), {"input": 5.5})
    assert error.message == "input: unknown field (allowed: input_data)"


# ---- an attacker's bodies ------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    # a field name that imitates msgspec's "- at `$.path`" must not move the blame elsewhere
    {**TASK, "x` - at `$.resources": 1},
    {**TASK, "resources": {"a` - at `$.args[0]": 1}},
    {**TASK, "x` - at `$.env[...]": 1}, {**TASK, "x` - at `key` in `$.env": 1},
    # names that mean something to Python objects
    {**TASK, "__class__": "str"}, {**TASK, "__init__": 1}, {**TASK, "__struct_fields__": []},
    {**TASK, "to_new_task": "x"}, {**TASK, "__proto__": {"admin": True}},
])
def test_hostile_field_names_are_unknown_fields(body: dict[str, Any]) -> None:
    error = refused(parse_new_task, body)
    assert "unknown field (allowed:" in error.message, error.message
    unknown = sorted(set(body) - {"name", "command", "resources"})
    assert error.field in (unknown[0] if unknown else "", *(f"resources.{k}" for k in body.get("resources", {})))


def test_hostile_values_get_a_short_clean_refusal() -> None:
    deep = ["x"]
    for _ in range(60):
        deep = [deep]
    for patch, field in [({"args": deep}, "args[0]"), ({"env": {"A": {"B": {"C": "D"}}}}, "env.A"),
                         ({"resources": {"memory_limit": "9" * 4000}}, "resources.memory_limit"),
                         ({"name": "x" * 1_000_000}, "name")]:
        error = refused(parse_new_task, {**TASK, **patch})
        assert error.field == field and len(error.message) < 300, error.message


# ---- the schemas in the OpenAPI document say what the code accepts --------------------------


def validator(component: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/components/schemas/{component}", "components": DOCUMENT["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_seed_bodies_fit_the_documented_schemas() -> None:
    served = {"name": "m", "model_path": "m", "script_path": "s.py", "serving": {"replicas": 2}}
    for body in (LINEAR_BODY, NETWORK_BODY, served):
        validator("Deployment").validate(body)
        deployment(copy.deepcopy(body))
    for body in (TASK, {**TASK, "resources": {"memory_limit": "512MB", "cpu_limit": 0.5}, "timeout": "30s"}):
        validator("NewTask").validate(body)
        parse_new_task(body)
    validator("PredictRequest").validate({"input_data": [1.0, 2.0]})


@pytest.mark.parametrize("patch", [
    {"command": 5}, {"args": "a b"}, {"args": ["a", 2]}, {"env": {"A": 1}}, {"env": ["A=1"]},
    {"env": {"A=B": "1"}}, {"resources": {"cpu_limit": -1}}, {"resources": {"memory_limt": 5}},
    {"colour": "red"}, {"type": "container"}, {"name": "<script>"}, {"command": "a\x00b"},
    {"resources": {"memory_limit": 2.5}}, {"timeout": 0}, {"args": ["a"] * 257},
])
def test_what_the_schema_refuses_the_code_refuses(patch: dict[str, Any]) -> None:
    body = {**TASK, **patch}
    assert not validator("NewTask").is_valid(body)
    refused(parse_new_task, body)


def test_a_name_ending_in_a_newline_is_refused() -> None:
    """Python's $ matches before a final newline: the name pattern must not."""
    from cnetd.tasks.fields import NAME_PATTERN

    assert NAME_PATTERN.search("model-1") and not NAME_PATTERN.search("model-1\n")

"""What a client sends to /api/ml/models: the deploy body (the seed guide's, verbatim, plus
timeout and serving) and the predict body, as typed declarations; Deployment is what a
checked deploy body becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from cnetd.bodies.describe import NO_NUL
from cnetd.limits import ResourceLimits
from cnetd.ml.envs.spec import EnvironmentBody
from cnetd.ml.serving.spec import ServingSpec, ServingSpecBody
from cnetd.security.identity import model_owner
from cnetd.tasks.fields import (
    Args,
    Duration,
    Env,
    Name,
    NodeId,
    PathText,
    PlacementField,
    RequiredPathText,
    ResourcesBody,
    Text,
    not_blank,
    resource_limits,
    seconds,
    short_components,
)
from cnetd.tasks.model import ML_KINDS
from cnetd.tasks.request import NewTask

MODEL_TYPE_MAX = 64
DEFAULT_MODEL_TYPE = "custom"
DEFAULT_COMMAND = "python3"


@dataclass(frozen=True)
class Deployment:
    task: NewTask
    model_type: str
    model_path: str
    script_path: str
    serving: ServingSpec | None = None  # serve the model once training completes
    promote: str = "auto"  # auto: the version becomes the default once warm; manual: only when promoted


class DeploymentBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Deploy a model script: creates its training task (the seed guide's body). A field
    sent as null is left out."""

    name: Name
    model_type: Annotated[str, Meta(
        max_length=MODEL_TYPE_MAX, pattern=NO_NUL, description=f"free text (default {DEFAULT_MODEL_TYPE})",
    )] | None = None
    model_path: Annotated[RequiredPathText, Meta(description="the model file, relative to working_dir")]
    script_path: Annotated[RequiredPathText, Meta(description="the model script, relative to working_dir")]
    command: Annotated[Text, Meta(description=f"what runs the script (default {DEFAULT_COMMAND})")] | None = None
    args: Annotated[Args, Meta(description="default: [script_path, \"train\", model_path]")] | None = None
    working_dir: Annotated[PathText, Meta(description="relative to the agent's directory (default .)")] | None = None
    env: Annotated[Env, Meta(description="MODEL_PATH and MODEL_TYPE are added")] | None = None
    resources: ResourcesBody | None = None
    timeout: Duration | None = None
    serving: ServingSpecBody | None = None
    node_id: NodeId | None = None
    placement: PlacementField | None = None
    environment: EnvironmentBody | None = None
    promote: Annotated[Literal["auto", "manual"], Meta(
        description="auto (default): this version becomes the model's default once it is trained and warm; "
                    "manual: only when promoted (POST /api/ml/models/{name}/promote)",
    )] | None = None

    def to_deployment(self, default_limits: ResourceLimits) -> Deployment:
        """What this body deploys; the paths are checked against the file system later."""
        model_type = DEFAULT_MODEL_TYPE if self.model_type is None else self.model_type
        model_path = short_components("model_path", not_blank("model_path", self.model_path))
        script_path = short_components("script_path", not_blank("script_path", self.script_path))
        args = list(self.args or []) or [script_path, "train", model_path]
        env = {**(self.env or {}), "MODEL_PATH": model_path, "MODEL_TYPE": model_type}
        task = NewTask(
            name=self.name,
            command=DEFAULT_COMMAND if self.command is None else self.command,
            args=args,
            env=env,
            working_dir=short_components("working_dir", "." if self.working_dir is None else self.working_dir),
            resources=resource_limits(self.resources, default_limits),
            timeout=seconds("timeout", self.timeout),
            type="ml_model",
            kind=kind_from_args(args),
            identity_owner=model_owner(self.name),
            environment_request=self.environment,
        )
        serving = None if self.serving is None else self.serving.apply(prefix="serving.")
        return Deployment(task=task, model_type=model_type, model_path=model_path, script_path=script_path,
                          serving=serving, promote=self.promote or "auto")


class PredictRequestBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Predict with a model: a prediction task, or with wait=true the prediction itself."""

    input_data: Annotated[Any, Meta(description="a number, a list of numbers, a string, or any JSON")]


def kind_from_args(args: list[str]) -> str:
    """The script verb (train/predict/evaluate/serve) the deploy args name, else "run"."""
    for arg in args[:2]:
        if arg in ML_KINDS:
            return arg
    return "run"

"""Bodies of the version routes: register an artifact, promote, roll out."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from cnetd.errors import Invalid
from cnetd.tasks.fields import Duration, RequiredPathText, seconds

MAX_ROLLOUT_SECONDS = 7 * 24 * 3600
VersionNumber = Annotated[int, Meta(ge=1, le=1_000_000_000, description="a version number of the model")]


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Register an existing model file as the model's next version (no training)."""

    artifact: Annotated[RequiredPathText, Meta(
        description="the model file, relative to the working_dir of the model's newest version; inside a model root",
    )]
    promote: Annotated[str, Meta(pattern="^(auto|manual)$", description="auto (default): default once warm")] = "auto"


class PromoteBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Make a version the default at once (it is warmed first when the model is served)."""

    version: VersionNumber


class RolloutBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Give a version a sticky share of the traffic for a while, then promote it or roll it back."""

    version: VersionNumber
    canary_percent: Annotated[float, Meta(gt=0, le=100, description="the canary's share of requests, in %")] = 10
    duration: Annotated[Duration, Meta(description="how long the canary runs: \"5m\", \"30s\" or seconds")] = "5m"
    max_error_rate: Annotated[float, Meta(ge=0, le=1, description="the canary's largest error rate (0.01 = 1 %)")] = 0.01
    max_p99_ratio: Annotated[float, Meta(gt=0, le=1000, description="canary p99 / default p99, at most")] = 1.5
    min_requests: Annotated[int, Meta(ge=0, le=100_000_000, description="requests the canary must answer")] = 200

    def duration_seconds(self) -> float:
        value = seconds("duration", self.duration)
        if value is None or value <= 0 or value > MAX_ROLLOUT_SECONDS:
            raise Invalid("duration", f"must be more than 0 and at most {MAX_ROLLOUT_SECONDS // 86400} days")
        return value

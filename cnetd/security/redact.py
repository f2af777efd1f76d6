"""Secrets stay out of responses and pages: env values whose name looks secret."""

from __future__ import annotations

import re
from collections.abc import Mapping

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|KEY|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {name: REDACTED if SECRET_NAME.search(name) else value for name, value in env.items()}

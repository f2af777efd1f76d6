"""Secrets stay out of responses and pages: the one redaction every view of a task's env
goes through (API JSON, UI pages and their live fragments).

A value is hidden whole when its name looks secret; in any other value, a password in a
URL (`postgres://user:pass@host/db`) and a secret-named query parameter (`?token=...`)
are hidden. Over-redacting is the safe mistake: a name that merely contains KEY or AUTH
is hidden too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "<redacted>"
SECRET_WORDS = r"TOKEN|SECRET|PASS|PWD|KEY|CREDENTIAL|DSN|AUTH|COOKIE|SESSION|PRIVATE|SIGNATURE|CERT"
SECRET_NAME = re.compile(SECRET_WORDS, re.IGNORECASE)
# The working directory, not a password: shells set these.
NOT_SECRET = frozenset({"PWD", "OLDPWD"})
# scheme://user:<secret>@: the secret runs to the last "@" before whitespace, since a raw
# "@" or "/" in a password is common and showing part of one is the worse mistake.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/?#@]*:)[^\s]*@", re.IGNORECASE)
QUERY_SECRET = re.compile(rf"(?P<head>[?&;][^=&;\s#]*(?:{SECRET_WORDS})[^=&;\s#]*=)[^&;\s#]*", re.IGNORECASE)


def secret_name(name: str) -> bool:
    return name.upper() not in NOT_SECRET and SECRET_NAME.search(name) is not None


def redact_value(value: str) -> str:
    """A value with the secrets inside it (URL passwords, secret query parameters) hidden."""
    value = URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", value)
    return QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", value)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {name: REDACTED if secret_name(name) else redact_value(value) for name, value in env.items()}

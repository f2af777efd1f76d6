"""The one redaction every view of a task's env goes through: which names are hidden
whole, and which secrets inside other values (URL passwords, query tokens) are hidden."""

from __future__ import annotations

import pytest

from cnetd.security.redact import REDACTED, redact_env, redact_value, secret_name

R = REDACTED


@pytest.mark.parametrize("name", [
    "API_TOKEN", "GITHUB_TOKEN", "SECRET", "aws_secret_access_key", "DB_PASSWORD", "DB_PASSWD",
    "DB_PASS", "PGPASS", "MYSQL_PWD", "ORACLE_PWD", "DATABASE_DSN", "SENTRY_DSN", "AUTH",
    "BASIC_AUTH", "AUTHORIZATION", "COOKIE", "SESSION", "SESSION_ID", "PRIVATE", "PRIVATE_KEY",
    "SSH_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "api-key", "Db_Pass",
])
def test_secret_names_are_hidden_whole(name: str) -> None:
    assert secret_name(name)
    assert redact_env({name: "hunter2"}) == {name: R}


@pytest.mark.parametrize("name", ["PATH", "HOME", "LANG", "PYTHONPATH", "MODEL_PATH", "MODEL_TYPE", "PWD", "OLDPWD", "TZ"])
def test_ordinary_names_are_shown(name: str) -> None:
    assert not secret_name(name)
    assert redact_env({name: "/some/where"}) == {name: "/some/where"}


@pytest.mark.parametrize(("value", "shown"), [
    ("postgres://user:pass@host/db", f"postgres://user:{R}@host/db"),
    ("postgresql://app:s3cr3t@db.internal:5432/prod?sslmode=require",
     f"postgresql://app:{R}@db.internal:5432/prod?sslmode=require"),
    ("redis://:onlypass@cache:6379/0", f"redis://:{R}@cache:6379/0"),
    ("HTTPS://u:p@example.com/", f"HTTPS://u:{R}@example.com/"),
    # a raw "@" or "/" in the password: all of it is hidden, never a part
    ("mysql://root:p@ss/w0rd@db/x", f"mysql://root:{R}@db/x"),
    ("see amqp://guest:guest@rabbit/ and more", f"see amqp://guest:{R}@rabbit/ and more"),
    ("a=redis://x:one@h1 b=redis://y:two@h2", f"a=redis://x:{R}@h1 b=redis://y:{R}@h2"),
    ("https://api.example/v1?user=me&access_token=abc123&x=1", f"https://api.example/v1?user=me&access_token={R}&x=1"),
    ("https://s3.example/o?X-Amz-Signature=deadbeef", f"https://s3.example/o?X-Amz-Signature={R}"),
    # nothing secret in these
    ("https://example.com:8443/path", "https://example.com:8443/path"),
    ("postgres://user@host/db", "postgres://user@host/db"),
    ("user@example.com", "user@example.com"),
    ("plain text", "plain text"),
    ("", ""),
])
def test_secrets_inside_values_are_hidden_whatever_the_name(value: str, shown: str) -> None:
    assert redact_value(value) == shown
    assert redact_env({"ANY_NAME": value}) == {"ANY_NAME": shown}

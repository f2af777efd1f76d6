"""Timestamps as the API shows them: RFC 3339 UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_since(text: str) -> float:
    return (datetime.now(UTC) - parse_time(text)).total_seconds()

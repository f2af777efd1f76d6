"""Domain errors: services raise these, the API turns them into 4xx responses."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    retry_after: int | None = None  # seconds: sent as Retry-After

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class Invalid(DomainError):
    """The caller sent a value that is wrong; `field` names it."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", {"field": field})
        self.field = field


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class UnsupportedMediaType(DomainError):
    status = 415


class Unavailable(DomainError):
    status = 503

    def __init__(self, message: str, details: dict[str, Any] | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class TooMany(DomainError):
    """A bounded queue is full; the caller may retry later."""

    status = 429


class BadGateway(DomainError):
    """A process the agent relies on answered with something unusable."""

    status = 502


class TimedOut(DomainError):
    status = 504

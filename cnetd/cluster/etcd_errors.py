"""What can go wrong talking to etcd, as exceptions a caller can act on.

EtcdUnavailable: no endpoint answered (retry later; the message names every endpoint tried).
EtcdOutcomeUnknown: a txn was sent but no answer came: read back before acting on it.
EtcdRequestError: etcd answered and refused the request (its gRPC code and message).
EtcdAuthError: the credentials were refused, or are missing where etcd wants them.
LeaseLost: the lease expired or was revoked: grant a new one, rewrite what hung on it.
WatchCompacted: the watch asked for history etcd has compacted: list again, watch anew.
"""

from __future__ import annotations

from collections.abc import Sequence


class EtcdError(Exception):
    """Base of every error this client raises."""


class EtcdUnavailable(EtcdError):
    """No endpoint gave an answer within the call's time."""

    def __init__(self, failures: Sequence[tuple[str, str]], what: str = "etcd unavailable") -> None:
        self.failures = tuple(failures)  # (endpoint, why) for each endpoint tried
        self.endpoints = tuple(endpoint for endpoint, _ in self.failures)
        tried = "; ".join(f"{endpoint}: {why}" for endpoint, why in self.failures) or "no endpoint tried"
        super().__init__(f"{what}: {tried}")


class EtcdOutcomeUnknown(EtcdUnavailable):
    """A txn reached (or may have reached) an endpoint, but its answer did not come back.

    Unlike a put or a range, a txn is not retried on another endpoint: its compares may
    already have been applied, and a second try would report them failed."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        super().__init__(failures, "etcd txn outcome unknown (read back before retrying)")


class EtcdRequestError(EtcdError):
    """etcd answered with an error: the request itself was refused."""

    def __init__(self, endpoint: str, http_status: int, code: int | None, message: str) -> None:
        self.endpoint = endpoint
        self.http_status = http_status
        self.code = code  # the gRPC status code etcd gave, when it gave one
        self.message = message
        super().__init__(f"etcd {endpoint} refused the request: {message} (HTTP {http_status}"
                         + (f", gRPC code {code})" if code is not None else ")"))


class EtcdAuthError(EtcdRequestError):
    """Authentication failed, is required but not configured, or permission was denied."""


class LeaseLost(EtcdError):
    """The lease no longer exists: it expired or was revoked."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        super().__init__(f"etcd lease {lease_id:x} is lost (expired or revoked)")


class WatchCompacted(EtcdError):
    """The watch started below etcd's compacted revision: list again, then watch from there."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd watch: revisions before {compact_revision} are compacted; list again")

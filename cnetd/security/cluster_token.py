"""The cluster token: the secret the agents of one cluster share (cluster.token_file) and
present to each other in one header, X-CNET-Cluster-Token.

- A request that carries the header must carry the right token, whatever it asks for: a
  wrong one is a 401 that says so (and a warning in the log naming the client, never the
  token). The right one makes the request a peer's: the API token check is skipped, since
  the agent that passed it on checked its caller already.
- `/api/cluster/...` is for peers only: without the header it is a 401 too. On an agent
  without a cluster section those paths are a 404, and the header is refused.

Tokens are compared in constant time. A task never sees the token file (it is one of the
secret files hidden from tasks), and the guard against local task callers runs first.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from cnetd.api.errors import error_response

log = logging.getLogger(__name__)

HEADER = "X-CNET-Cluster-Token"
CLUSTER_ONLY_PREFIX = "/api/cluster/"
PEER = "cnet.cluster_peer"  # request key: set once the request carried the right token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClusterToken:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._token)

    def headers(self) -> dict[str, str]:
        """What an agent sends with a call to another agent of its cluster."""
        return {HEADER: self._token.decode()}

    def __repr__(self) -> str:
        return "ClusterToken(<redacted>)"


def is_peer(request: web.Request) -> bool:
    return bool(request.get(PEER))


def _refused(message: str) -> web.Response:
    response = error_response(401, message)
    response.headers["WWW-Authenticate"] = f'{HEADER} realm="cnet-cluster"'
    return response


def cluster_token_refusal(token: ClusterToken | None, request: web.Request) -> web.Response | None:
    """The refusal of a request whose cluster token is missing (cluster-only path) or
    wrong, or None; the right token marks the request a peer's (is_peer)."""
    presented = request.headers.get(HEADER)
    cluster_only = request.path.startswith(CLUSTER_ONLY_PREFIX)
    if presented is None and not cluster_only:
        return None
    if token is None:
        if cluster_only:
            return error_response(404, "this agent is not part of a cluster (its config has no cluster section)")
        return _refused(f"this agent is not part of a cluster: it accepts no {HEADER}")
    if presented is None:
        return _refused(f"cluster-only endpoint: send the cluster's token (cluster.token_file) in {HEADER}")
    if not token.matches(presented):
        log.warning("refused a request with a wrong %s from %s: %s %s", HEADER, request.remote,
                    request.method, request.path)
        return _refused(f"wrong cluster token in {HEADER}: this agent's cluster.token_file holds another")
    request[PEER] = True
    return None

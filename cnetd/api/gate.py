"""The gate: one middleware that every request passes, doing in one coroutine what eight
middlewares did one inside the other (issue 14: on a small request the eight frames, and
the awaits between them, cost more than the checks themselves). The checks are plain
functions of their own modules, run in the order the middlewares had, so every route gets
each of them:

1. errors: a DomainError, an HTTP error or a full disk becomes the JSON envelope
   (api/errors.answer_error) — around everything below;
2. Host: a name that is not this agent's is a 421 (security/hosts.py, DNS rebinding);
3. task callers: a task's connection without a token is a 403 (security/callers.py);
4. cluster token: a peer's header must be right, /api/cluster/ needs it (security/cluster_token.py);
5. auth: the API token or a UI session (security/auth.py);
6. JSON only: a body on /api or /v2 must be JSON, or V2 binary on infer (api/jsonbody.py, 415);
7. inference bodies: read under serving.max_request_bytes, 413 past it (api/bodylimit.py);
8. owner: in a cluster, a task or model another node has is answered there (api/cluster.py).

Security headers are set on every response as it is prepared (security/headers.py), so
they reach what the gate answers itself, errors and streams alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cnetd.api.bodylimit import is_inference, read_inference_body
from cnetd.api.cluster import answered_here_or_by_owner
from cnetd.api.errors import ANSWERED, answer_error
from cnetd.api.jsonbody import media_problem
from cnetd.security.auth import Authenticator, auth_refusal
from cnetd.security.callers import TaskCallerGuard, caller_refusal
from cnetd.security.cluster_token import ClusterToken, cluster_token_refusal
from cnetd.security.hosts import AllowedHosts, host_refusal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Respond = Callable[[web.Request, int, str], web.StreamResponse]


def gate_middleware(hosts: AllowedHosts, guard: TaskCallerGuard, auth: Authenticator, cluster_token: ClusterToken | None,
                    max_request_bytes: int, respond: Respond) -> Any:
    """`respond` builds the 415/413/400 of steps 6 and 7 in the route's protocol's shape
    (the error envelope, or V2's {"error"})."""
    guarded = guard.enabled

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            refused: web.StreamResponse | None = host_refusal(hosts, request)
            if refused is None and guarded:
                refused = await caller_refusal(guard, auth, request)
            if refused is None:
                refused = cluster_token_refusal(cluster_token, request)
            if refused is None:
                refused = auth_refusal(auth, request)  # (a page without a session: the login redirect is raised)
            if refused is not None:
                return refused
            problem = media_problem(request)
            if problem is not None:
                return respond(request, 415, problem)
            if request.body_exists and is_inference(request):
                refused = await read_inference_body(request, max_request_bytes, respond)
                if refused is not None:
                    return refused
            return await answered_here_or_by_owner(request, handler)
        except ANSWERED as exc:
            return answer_error(request, exc)

    return gate

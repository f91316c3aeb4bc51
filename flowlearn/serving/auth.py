"""Who may call the predictor, and over what: bearer tokens and TLS (docs/predictor.md,
"Authentication and TLS").

When ``predictor.auth_required``, every route but the health probes (:data:`OPEN_ROUTES`)
needs ``Authorization: Bearer TOKEN`` with a token of ``predictor.tokens_file`` or
``predictor.tokens`` (:func:`flowlearn.conf.tokens.read_tokens`); the admin routes
(:data:`ADMIN_ROUTES`) need an ``admin`` one. A request without a token, or with an unknown
one, is answered 401 with ``WWW-Authenticate: Bearer``; a ``read`` token on an admin route
403. ``POST /v1/admin/reload`` and SIGHUP read the tokens again (rotation without a restart).
gRPC (flowlearn.serving.v2_grpc) asks :meth:`Guard.check` the same, with the call's
``authorization`` metadata.

The guard keeps SHA-256 digests, never the tokens: comparing digests of one length with
:func:`hmac.compare_digest`, against every known token each time, takes the same time
whichever token (or none) matches. No token reaches a log line, an answer or a metric.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import NamedTuple

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler

from flowlearn.conf import ConfigError, PredictorConf
from flowlearn.conf.tokens import ADMIN, read_tokens

log = logging.getLogger("flowlearn.serving.auth")

#: Routes that never ask for a token: the liveness and readiness probes (kubelets, load
#: balancers and Docker health checks carry none).
OPEN_ROUTES = frozenset({"/healthz", "/v2/health/live", "/v2/health/ready"})
#: Routes that need an ``admin`` token: the metrics (Prometheus) and the token reload.
ADMIN_ROUTES = frozenset({"/metrics", "/v1/admin/reload"})
REALM = 'Bearer realm="flowlearn-predictor"'


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Guard:
    """The tokens the predictor takes, as digests with their scopes; ``refused`` counts the
    requests turned away, by reason (``missing``, ``invalid``, ``scope``)."""

    def __init__(self, conf: PredictorConf, refused: prometheus_client.Counter) -> None:
        self.conf = conf
        self.required = conf.auth_required
        self._refused = {r: refused.labels(r) for r in ("missing", "invalid", "scope")}
        self._known: tuple[tuple[bytes, str], ...] = ()
        self.reload()

    def reload(self) -> dict[str, int]:
        """Read the tokens again: how many of each scope are loaded now. On a ConfigError
        (a bad entry, an unreadable file, none left while required) the old ones stay."""
        tokens = read_tokens(self.conf)
        if self.required and not tokens:
            raise ConfigError(
                "predictor.tokens_file and predictor.tokens hold no token, and the predictor "
                "asks for one (predictor.auth)"
            )
        self._known = tuple((_digest(t.value), t.scope) for t in tokens)  # one swap
        loaded = dict(sorted(Counter(t.scope for t in tokens).items()))
        log.info(
            "bearer tokens %s; loaded: %s",
            "required" if self.required else "not required",
            ", ".join(f"{n} {scope}" for scope, n in loaded.items()) or "none",
        )
        return loaded

    def scope_of(self, token: str) -> str | None:
        """The scope of ``token``, or None for a token not configured."""
        presented = _digest(token)
        scope = None
        for known, known_scope in self._known:  # no early exit: the same time for each
            if hmac.compare_digest(presented, known):
                scope = known_scope
        return scope

    def check(self, authorization: str, admin_route: str | None = None) -> Refusal | None:
        """Why a request whose ``Authorization`` value (HTTP header or gRPC metadata) is
        ``authorization`` may not call a route that needs a token (``admin_route``: the
        admin route it calls, which needs an admin one), counted; None when it may. Both
        transports ask here."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            refusal = Refusal(
                "missing", 401, "this route needs an Authorization: Bearer token", REALM
            )
        elif (scope := self.scope_of(token)) is None:
            refusal = Refusal(
                "invalid", 401, "the bearer token is not valid", f'{REALM}, error="invalid_token"'
            )
        elif admin_route is not None and scope != ADMIN:
            refusal = Refusal(
                "scope",
                403,
                f"{admin_route} needs an admin token",
                f'{REALM}, error="insufficient_scope", scope="{ADMIN}"',
            )
        else:
            return None
        self._refused[refusal.reason].inc()
        return refusal


class Refusal(NamedTuple):
    """A request turned away: the reason counted, the HTTP status, the message and the
    ``WWW-Authenticate`` challenge."""

    reason: str
    status: int
    message: str
    challenge: str


GUARD = web.AppKey("guard", Guard)


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 401/403 before the handler when the request's token does not open its route.
    The app has this middleware only when its guard requires tokens."""
    guard = request.app[GUARD]
    # The route that matched (None: no route did), not the raw path: "/v2/health/../x"
    # cannot pass for an open route.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in OPEN_ROUTES:
        return await handler(request)
    refusal = guard.check(
        request.headers.get("Authorization", ""), route if route in ADMIN_ROUTES else None
    )
    if refusal is not None:
        return web.json_response(
            {"error": refusal.message},
            status=refusal.status,
            headers={"WWW-Authenticate": refusal.challenge},
        )
    return await handler(request)


async def reload_tokens(request: web.Request) -> web.Response:
    """``POST /v1/admin/reload``: read the tokens again; answers the count of each scope
    loaded (never a token). 500 if the new tokens cannot be taken: the old ones stay."""
    guard = request.app[GUARD]
    try:
        loaded = guard.reload()
    except ConfigError as exc:
        log.error("bearer tokens not reloaded, the previous ones stay: %s", exc)
        return web.json_response({"error": f"{exc}; the previous tokens stay in force"}, status=500)
    return web.json_response({"required": guard.required, "tokens": loaded})


def _reload_on_signal(guard: Guard) -> None:
    try:
        guard.reload()
    except ConfigError as exc:
        log.error("bearer tokens not reloaded on SIGHUP, the previous ones stay: %s", exc)


async def reload_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: SIGHUP reloads the tokens while the app runs (where the loop can
    take signals: the main thread, not Windows)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, app[GUARD])
        installed = True
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        installed = False
    if installed:
        # A rotation signalled before the handler was there (a worker still starting,
        # which ignores SIGHUP until now) is not lost: the file is read once more.
        _reload_on_signal(app[GUARD])
    yield
    if installed:
        loop.remove_signal_handler(signal.SIGHUP)


def server_ssl_context(conf: PredictorConf) -> ssl.SSLContext | None:
    """The TLS context of ``predictor.tls_cert_file`` and ``tls_key_file`` (TLS 1.2 and
    up), or None to serve plain HTTP."""
    if not conf.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(conf.tls_cert_file, conf.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"predictor.tls_cert_file {conf.tls_cert_file} and predictor.tls_key_file "
            f"{conf.tls_key_file}: cannot serve TLS with them ({exc})"
        ) from None
    return context

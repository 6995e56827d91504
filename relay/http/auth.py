"""Authentication: static bearer tokens (constant-time) and JWTs (PyJWT), from a header or a cookie.

EventSource cannot set headers, so browsers authenticate with the web app's own session
cookie (``auth.jwt.cookie``). Tokens in query strings are refused: they end up in proxy logs.

An open stream keeps the :class:`Credential` that let it in: the fan-out ends the stream when
the credential's ``expires`` passes (a JWT's ``exp`` plus the leeway) and whenever a reload
replaces the rules and :meth:`Authenticator.recheck` no longer accepts it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from aiohttp import web

from relay.config import AuthConfig, JwtConfig
from relay.http import api
from relay.logs import get_logger

log = get_logger("relay.http.auth")

QUERY_TOKEN_NAMES = ("token", "access_token", "jwt", "auth", "bearer")
REALM = 'Bearer realm="stability-relay"'


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request is refused: 401 no or bad token, 403 role not allowed, 400 token in URL."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request that passed presented, kept by its stream to be checked again.

    ``token``: None when none was needed (no ``auth`` then); ``cookie``: the cookie's name
    when it came in one (None: the ``Authorization`` header); ``expires``: when it stops
    being valid (a JWT's ``exp`` plus ``leeway``, seconds since the epoch; None: never on
    its own). About the token's length per open stream.
    """

    token: str | None
    cookie: str | None = None
    expires: float | None = None


OPEN = Credential(None)  # no auth configured: nothing was presented, nothing expires


class Authenticator:
    """Decides whether a request may read the protected routes. ``replace()`` on SIGHUP."""

    def __init__(self, settings: AuthConfig | None) -> None:
        self._settings = settings
        self._followers: list[Callable[[], None]] = []

    def replace(self, settings: AuthConfig | None) -> None:
        """New rules (a reload); then every follower is told (open streams are checked again)."""
        self._settings = settings
        for follower in self._followers:
            follower()

    def follow(self, follower: Callable[[], None]) -> None:
        """Call ``follower`` after every :meth:`replace`."""
        self._followers.append(follower)

    @property
    def public_badge(self) -> bool:
        """``auth.public_badge``: the badges serve without a credential (the current rules,
        so a reload that turns it off makes them private again at once)."""
        return self._settings is not None and self._settings.public_badge

    def check(self, request: web.Request) -> Denial | Credential:
        """A :class:`Denial`, or the :class:`Credential` the request may pass with."""
        settings = self._settings
        if settings is None:
            return OPEN
        if refused := _query_token(request):
            return refused
        bearer = _bearer(request)
        if bearer is not None:
            return _judge(Credential(bearer), settings)
        cookie = settings.jwt.cookie if settings.jwt is not None else None
        token = request.cookies.get(cookie) if cookie is not None else None
        if not token:
            return Denial(401, "authentication required")
        return _judge(Credential(token, cookie), settings)

    def recheck(self, credential: Credential) -> Denial | Credential:
        """Whether the current rules still accept what an open stream was let in with (with
        its new expiry), as they would the same request now."""
        settings = self._settings
        if settings is None:
            return OPEN
        if credential.token is None:
            return Denial(401, "authentication required")
        if credential.cookie is not None and (
            settings.jwt is None or settings.jwt.cookie != credential.cookie
        ):
            return Denial(401, "authentication required")  # that cookie is no longer read
        return _judge(credential, settings)

    def check_metrics(self, request: web.Request) -> Denial | None:
        """``/metrics`` needs ``auth.metrics_token`` when one is set; it is open otherwise."""
        settings = self._settings
        if settings is None or settings.metrics_token is None:
            return None
        if refused := _query_token(request):
            return refused
        token = _bearer(request)
        if token is not None and _matches_any(token, (settings.metrics_token,)):
            return None
        return Denial(401, "metrics token required")


def unauthorized(denial: Denial) -> web.Response:
    return api.error(
        denial.status, denial.reason, {"WWW-Authenticate": REALM} if denial.status == 401 else None
    )


def _query_token(request: web.Request) -> Denial | None:
    if any(name in request.query for name in QUERY_TOKEN_NAMES):
        return Denial(
            400,
            "tokens in query strings are refused (they end up in logs); "
            "send an Authorization header or a cookie",
        )
    return None


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _judge(credential: Credential, settings: AuthConfig) -> Denial | Credential:
    token = credential.token
    assert token is not None
    if _matches_any(token, settings.bearer_tokens):
        return Credential(token, credential.cookie)  # a static token never expires
    if settings.jwt is not None:
        verdict = _check_jwt(token, settings.jwt)
        if isinstance(verdict, Denial):
            return verdict
        return Credential(token, credential.cookie, verdict)
    return Denial(401, "invalid token")


def _matches_any(token: str, allowed: tuple[str, ...]) -> bool:
    # Compare against every token, without stopping early, each in constant time.
    # surrogateescape: a header with undecodable bytes is just a wrong token, not a crash.
    presented = token.encode("utf-8", "surrogateescape")
    matched = False
    for candidate in allowed:
        matched |= hmac.compare_digest(presented, candidate.encode())
    return matched


def _check_jwt(token: str, settings: JwtConfig) -> Denial | float:
    """A denial, or when the token stops being valid (``exp`` plus the leeway)."""
    key = settings.secret if settings.secret is not None else settings.public_key
    assert key is not None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=settings.allowed_algorithms,
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway,
            options={"require": ["exp"], "verify_aud": settings.audience is not None},
        )
    except jwt.ExpiredSignatureError:
        return Denial(401, "token expired")
    except (jwt.PyJWTError, ValueError):  # ValueError: undecodable bytes in the token
        return Denial(401, "invalid token")
    if settings.roles:
        role = claims.get(settings.role_claim)
        if isinstance(role, str):
            roles = {role}
        elif isinstance(role, list):
            roles = {r for r in role if isinstance(r, str)}
        else:
            # Signed by the issuer, yet not a role: an object, a number, null, missing.
            if role is not None:
                log.warning(
                    "jwt_role_claim_malformed",
                    claim=settings.role_claim,
                    type=type(role).__name__,
                    note="expected a string or a list of strings; refused with 403",
                )
            roles = set()
        if not roles & set(settings.roles):
            return Denial(403, "role not allowed")
    # PyJWT checked that exp is a number (not NaN nor infinite).
    return float(claims["exp"]) + settings.leeway

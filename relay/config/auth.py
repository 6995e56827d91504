"""Who may read the relay (``auth``): bearer tokens, JWTs (an HMAC secret or a public key),
the metrics token and the public badge."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, model_validator

from relay.config.fields import Duration, Section


def _non_empty_secret(value: str) -> str:
    if len(value) < 16:
        raise ValueError("too short (or its environment variable is empty): use 16+ characters")
    return value


Secret = Annotated[str, AfterValidator(_non_empty_secret)]


def _hmac_key(value: str) -> str:
    if len(value.encode()) < 32:
        raise ValueError("too short: an HMAC key needs at least 32 bytes (RFC 7518 3.2)")
    return value


class JwtConfig(Section):
    secret: Annotated[str, AfterValidator(_hmac_key)] | None = None
    public_key: str | None = None
    algorithms: tuple[str, ...] = ()
    cookie: str | None = None
    audience: str | None = None
    issuer: str | None = None
    roles: tuple[str, ...] = ()
    role_claim: str = "role"
    leeway: Duration = 30.0

    @model_validator(mode="after")
    def _one_key(self) -> JwtConfig:
        if (self.secret is None) == (self.public_key is None):
            raise ValueError("set exactly one of secret (HS256/384/512) or public_key (RS*/ES*)")
        allowed = HMAC_ALGORITHMS if self.secret is not None else KEY_ALGORITHMS
        wrong = [a for a in self.algorithms if a not in allowed]
        if wrong:
            raise ValueError(f"algorithms {wrong} do not fit the key; use some of {allowed}")
        return self

    @property
    def allowed_algorithms(self) -> list[str]:
        default = HMAC_ALGORITHMS if self.secret is not None else KEY_ALGORITHMS
        return list(self.algorithms or default)


HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


class AuthConfig(Section):
    bearer_tokens: tuple[Secret, ...] = ()
    jwt: JwtConfig | None = None
    metrics_token: Secret | None = None
    # The badges (/api/system-status/badge and badge.svg) without a credential, for READMEs
    # and wikis, while every other route stays private. They say what the snapshot's state
    # says, and no more (no labels, no details).
    public_badge: bool = False

    @model_validator(mode="after")
    def _something_to_check(self) -> AuthConfig:
        if not self.bearer_tokens and self.jwt is None:
            raise ValueError("configure bearer_tokens or jwt (or remove the auth section)")
        return self

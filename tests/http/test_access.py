"""Authentication, CORS, per-address limits and HTTP hygiene, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import Config
from tests.support import base_url, relay_config, running_relay

TOKEN = "static-token-0123456789"
METRICS_TOKEN = "metrics-token-0123456789"
JWT_SECRET = "jwt-secret-0123456789abcdef-0123456789"
PROTECTED = ["/api/system-status", "/api/system-status/details", "/api/system-status/live"]


def auth_config(dsn: str, **auth: Any) -> Config:
    return relay_config(
        dsn,
        auth={"bearer_tokens": [TOKEN], "metrics_token": METRICS_TOKEN, **auth},
        cors={"allow_origins": ["https://app.example"]},
    )


def hs256(**claims: Any) -> str:
    return jwt.encode({"exp": time.time() + 60, **claims}, JWT_SECRET, algorithm="HS256")


async def status(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: Any
) -> aiohttp.ClientResponse:
    """The answer's status and headers; a live stream that opened is left unread."""
    async with http.request(method, url, **kwargs) as response:
        if not (url.endswith("/live") and response.status == 200):
            await response.read()
        return response


async def test_protected_routes_need_a_token_and_health_stays_open(db_dsn: str) -> None:
    async with running_relay(auth_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        for path in PROTECTED:
            refused = await status(http, url + path)
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = await status(http, url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401, path
            allowed = await status(http, url + path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status in (200, 503), path
        for path in ("/healthz", "/", "/static/system-status.js"):
            assert (await status(http, url + path)).status != 401, path


async def test_undecodable_tokens_are_refused_not_a_crash(db_dsn: str) -> None:
    config = auth_config(db_dsn, jwt={"secret": JWT_SECRET, "cookie": "statbus", "roles": ["a"]})
    async with running_relay(config) as relay:
        url = base_url(relay) + "/api/system-status"
        for header in (b"Authorization: Bearer \xff\xfe", b"Cookie: statbus=\xff\xfe"):
            answer = await asyncio.to_thread(_raw_get, relay.port, header)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:60]
        async with aiohttp.ClientSession() as http:
            token = hs256(role=[["nested"], "x"])
            refused = await status(http, url, headers={"Authorization": f"Bearer {token}"})
            assert refused.status == 403


def _raw_get(port: int, header: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /api/system-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        return sock.recv(4096)


async def test_tokens_in_query_strings_are_refused(db_dsn: str) -> None:
    async with running_relay(auth_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        response = await status(http, base_url(relay) + f"/api/system-status?token={TOKEN}")
        assert response.status == 400


async def test_jwt_from_the_session_cookie(db_dsn: str) -> None:
    config = auth_config(
        db_dsn,
        jwt={
            "secret": JWT_SECRET,
            "cookie": "statbus",
            "audience": "statbus",
            "roles": ["admin_user"],
        },
    )
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/api/system-status"

        async def with_cookie(token: str) -> int:
            response = await status(http, url, headers={"Cookie": f"statbus={token}"})
            return response.status

        assert await with_cookie(hs256(aud="statbus", role="admin_user")) == 200
        assert await with_cookie(hs256(aud="statbus", role="viewer")) == 403
        assert await with_cookie(hs256(aud="other", role="admin_user")) == 401
        expired = jwt.encode(
            {"exp": time.time() - 3600, "aud": "statbus", "role": "admin_user"},
            JWT_SECRET,
            algorithm="HS256",
        )
        assert await with_cookie(expired) == 401
        no_exp = jwt.encode({"aud": "statbus", "role": "admin_user"}, JWT_SECRET, algorithm="HS256")
        assert await with_cookie(no_exp) == 401
        forged = jwt.encode(
            {"exp": time.time() + 60, "aud": "statbus", "role": "admin_user"},
            "another-secret-0123456789-0123456789",
            algorithm="HS256",
        )
        assert await with_cookie(forged) == 401
        header = await status(
            http,
            url,
            headers={"Authorization": f"Bearer {hs256(aud='statbus', role='admin_user')}"},
        )
        assert header.status == 200


async def test_jwt_with_an_ec_public_key(db_dsn: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config = auth_config(db_dsn, jwt={"public_key": public_pem})
    token = jwt.encode({"exp": time.time() + 60}, private, algorithm="ES256")
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/api/system-status"
        ok = await status(http, url, headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200
        # The classic confusion attack: HS256 "signed" with the public key as the HMAC secret.
        confused = _hmac_token({"exp": time.time() + 60}, public_pem.encode())
        refused = await status(http, url, headers={"Authorization": f"Bearer {confused}"})
        assert refused.status == 401


def _hmac_token(claims: dict[str, Any], key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


async def test_metrics_need_their_own_token(db_dsn: str) -> None:
    async with running_relay(auth_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/metrics"
        assert (await status(http, url)).status == 401
        assert (await status(http, url, headers={"Authorization": f"Bearer {TOKEN}"})).status == 401
        ok = await status(http, url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status == 200


async def test_cors_only_for_listed_origins_with_credentials(db_dsn: str) -> None:
    async with running_relay(auth_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/api/system-status"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        listed = await status(http, url, headers={**auth, "Origin": "https://app.example"})
        assert listed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert listed.headers["Access-Control-Allow-Credentials"] == "true"
        live = base_url(relay) + "/api/system-status/live"
        async with http.get(live, headers={**auth, "Origin": "https://app.example"}) as stream:
            assert stream.status == 200
            assert stream.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert stream.headers["Access-Control-Allow-Credentials"] == "true"
        other = await status(http, url, headers={**auth, "Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = await status(
            http,
            url,
            "OPTIONS",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status == 204
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        denied = await status(http, url, "OPTIONS", headers={"Origin": "https://evil.example"})
        assert denied.status == 403


async def test_per_address_limit_uses_the_trusted_proxy_forwarded_for(db_dsn: str) -> None:
    config = relay_config(
        db_dsn, http={"max_clients_per_address": 2, "trusted_proxies": ["127.0.0.1/32"]}
    )
    async with running_relay(config) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay) + "/api/system-status/live"
        streams = []
        try:
            for _ in range(2):
                response = await http.get(url, headers={"X-Forwarded-For": "203.0.113.7"})
                assert response.status == 200
                streams.append(response)
            third = await http.get(url, headers={"X-Forwarded-For": "203.0.113.7"})
            assert third.status == 429
            assert third.headers["Retry-After"]
            third.release()
            other = await http.get(url, headers={"X-Forwarded-For": "203.0.113.8"})
            assert other.status == 200
            streams.append(other)
        finally:
            for response in streams:
                response.close()


async def test_only_get_and_head_on_read_routes(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        for path in [*PROTECTED, "/healthz", "/metrics"]:
            response = await status(http, base_url(relay) + path, "POST", data=b"x")
            assert response.status == 405, path
        head = await status(http, base_url(relay) + "/api/system-status", "HEAD")
        assert head.status == 200


async def test_oversized_headers_are_refused_cleanly(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        response = await status(
            http, base_url(relay) + "/api/system-status", headers={"X-Big": "a" * 20_000}
        )
        assert response.status in (400, 431)


async def test_page_sends_security_headers(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        response = await status(http, base_url(relay) + "/")
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"bearer_tokens": ["short"]}, "auth.bearer_tokens[0]: too short"),
        ({}, "configure bearer_tokens or jwt"),
        ({"jwt": {"cookie": "x"}}, "set exactly one of secret"),
        ({"jwt": {"secret": "x" * 20}}, "auth.jwt.secret: too short: an HMAC key needs"),
        ({"jwt": {"secret": JWT_SECRET, "algorithms": ["RS256"]}}, "do not fit the key"),
    ],
)
def test_bad_auth_configs(auth: dict[str, Any], message: str) -> None:
    from relay.config import load_config
    from relay.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={"auth": auth}, environ={})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems

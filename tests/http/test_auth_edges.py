"""Issue 18, authentication edges: a validly signed JWT whose role claim is not a role gets a
clean 403, over real HTTP, never a 500 with a traceback."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
import structlog

from tests.support import base_url, events, relay_config, running_relay

JWT_SECRET = "jwt-secret-0123456789abcdef-0123456789"
SNAPSHOT = "/api/system-status"


def signed(**claims: Any) -> str:
    return jwt.encode({"exp": time.time() + 60, **claims}, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "role",
    [{"name": "admin_user"}, [{"name": "admin_user"}], 7, 1.5, True, None, [], {}],
    ids=["object", "list-of-objects", "int", "float", "bool", "null", "empty-list", "empty-object"],
)
async def test_a_signed_jwt_whose_role_is_not_a_role_is_refused_with_403(
    role: object, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = relay_config(
        db_dsn, auth={"jwt": {"secret": JWT_SECRET, "roles": ["admin_user"], "cookie": "app"}}
    )
    token = signed(role=role)
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.WARNING):
        async with running_relay(config) as relay, aiohttp.ClientSession() as http:
            url = base_url(relay) + SNAPSHOT
            for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"app={token}"}):
                async with http.get(url, headers=headers) as response:
                    assert response.status == 403, await response.text()
                    assert response.content_type == "application/json"
                    assert await response.json() == {"error": "role not allowed"}
                    assert response.headers["Cache-Control"] == "no-store"
            # The same relay still lets a proper role in.
            good = {"Authorization": f"Bearer {signed(role='admin_user')}"}
            async with http.get(url, headers=good) as response:
                assert response.status == 200
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert not [entry for entry in logs if entry.get("log_level") in ("error", "critical")]
    assert not [entry for entry in logs if "exc_info" in entry or "exception" in entry]
    malformed = events(logs, "jwt_role_claim_malformed")
    if role is None or isinstance(role, list):
        assert not malformed  # no role, or a list whose strings are its roles: no news
    else:
        # One line per refused request, naming the claim and its type, never the token.
        assert malformed and all(entry["claim"] == "role" for entry in malformed)
        assert all(token not in str(entry) for entry in logs)

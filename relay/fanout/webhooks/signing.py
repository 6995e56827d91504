"""Standard Webhooks signing (https://www.standardwebhooks.com/).

``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the
base64-decoded part of the ``whsec_`` secret. The id stays the same across retries of one
delivery (receivers deduplicate on it); the timestamp and signature are fresh per attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 32 random hex digits."""
    return f"msg_{uuid.uuid4().hex}"


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    key: bytes | None, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """``webhook-id`` and ``webhook-timestamp`` always; ``webhook-signature`` with a key."""
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, message_id, timestamp, body)
    return headers

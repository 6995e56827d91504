"""Standard Webhooks signatures: the spec's published vector, and an independent verifier."""

from __future__ import annotations

import re

from relay.fanout.webhooks.signing import new_message_id, sign, signature_headers
from tests.webhook_receiver import SECRET, verify_signature

# The published test vector (Standard Webhooks reference libraries, e.g. svix's tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _key(secret: str) -> bytes:
    import base64

    return base64.b64decode(secret.removeprefix("whsec_"))


def test_signature_matches_the_published_test_vector() -> None:
    signature = sign(_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert signature == VECTOR_SIGNATURE


def test_the_independent_verifier_accepts_the_vector_and_rejects_tampering() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert verify_signature(VECTOR_SECRET, headers, VECTOR_BODY)
    assert not verify_signature(VECTOR_SECRET, headers, b'{"test": 2432232315}')
    assert not verify_signature(SECRET, headers, VECTOR_BODY)


def test_headers_carry_id_and_timestamp_always_and_a_signature_with_a_key() -> None:
    body = b'{"type":"system.stability.changed"}'
    signed = signature_headers(_key(SECRET), "msg_1", 1700000000, body)
    assert signed["webhook-id"] == "msg_1"
    assert signed["webhook-timestamp"] == "1700000000"
    assert verify_signature(SECRET, signed, body)
    unsigned = signature_headers(None, "msg_1", 1700000000, body)
    assert "webhook-signature" not in unsigned


def test_message_ids_are_unique_and_spec_shaped() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)

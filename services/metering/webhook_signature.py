"""Signatures of what metering POSTs (budget alerts, CloudEvents batches), after the Standard Webhooks
specification (standardwebhooks.com): `webhook-id`, `webhook-timestamp`, and `webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. A secret written `whsec_<base64>` is used decoded, as
that specification's libraries do; any other secret is used as its UTF-8 bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    secret = secret.strip()
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }


def verify(key: bytes, found: dict[str, str], body: bytes) -> bool:
    """Whether any v1 signature in the headers is this body's (constant-time compare)."""
    want = signature(key, found["webhook-id"], int(found["webhook-timestamp"]), body)
    return any(hmac.compare_digest(want, given) for given in found["webhook-signature"].split())

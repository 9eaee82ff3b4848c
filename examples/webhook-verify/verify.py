"""Verifies an Outlast webhook (Standard Webhooks, v1 HMAC-SHA256 signatures). Stdlib only.

    from verify import verify, VerificationError
    event = verify(["whsec_..."], request.headers, raw_body)   # raises VerificationError

Pass the raw body bytes exactly as received: re-serialized JSON does not verify. List every
secret you accept (old and new during a rotation): any one matching signature verifies.
Use the `webhook-id` header as your idempotency key: a retry carries the same id and body.
"""

import base64
import hashlib
import hmac
import json
import time

TOLERANCE_S = 5 * 60


class VerificationError(Exception):
    """The webhook is not authentic or not fresh."""


def _key(secret):
    if not secret.startswith("whsec_"):
        raise ValueError("a secret starts with whsec_")
    return base64.b64decode(secret[len("whsec_"):], validate=True)


def verify(secrets, headers, body, now=None, tolerance_s=TOLERANCE_S):
    """Returns the parsed JSON body when a `v1` signature of `body` matches one of `secrets`
    and `webhook-timestamp` is within `tolerance_s` of `now` (seconds); raises otherwise."""
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isdigit():
        raise VerificationError("webhook-timestamp is not a number")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        raise VerificationError("webhook-timestamp is outside the tolerance")
    if isinstance(body, str):
        body = body.encode()
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = [hmac.new(_key(s), signed, hashlib.sha256).digest() for s in secrets]
    for part in signatures.split(" "):
        version, _, value = part.partition(",")
        if version != "v1" or not value:
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        # compare_digest is constant-time and simply false for another length (an empty or
        # truncated signature never matches a prefix).
        if any(hmac.compare_digest(given, e) for e in expected):
            return json.loads(body)
    raise VerificationError("no matching signature")

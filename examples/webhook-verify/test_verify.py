"""Tests of verify.py: run `python3 -m unittest -v` in this folder."""

import base64
import hashlib
import hmac
import unittest

from verify import VerificationError, verify

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
BODY = b'{"type":"job.completed","data":{"job_id":"job_1","seq":7}}'
NOW = 1_800_000_000


def sign(secret, msg_id, ts, body):
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(signature, ts=NOW, msg_id="msg_1"):
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(ts), "Webhook-Signature": signature}


class VerifyTest(unittest.TestCase):
    def test_valid(self):
        event = verify([OLD], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, now=NOW)
        self.assertEqual(event["data"]["seq"], 7)

    def test_empty_signature(self):
        for sig in ["v1,", "", "v1", " "]:
            with self.assertRaises(VerificationError, msg=repr(sig)):
                verify([OLD], headers(sig), BODY, now=NOW)

    def test_truncated_signature(self):
        good = sign(OLD, "msg_1", NOW, BODY)
        for cut in [good[:-2], good[:10], good[:4]]:
            with self.assertRaises(VerificationError, msg=cut):
                verify([OLD], headers(cut), BODY, now=NOW)

    def test_wrong_secret(self):
        with self.assertRaises(VerificationError):
            verify([NEW], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, now=NOW)

    def test_changed_body_or_id(self):
        sig = sign(OLD, "msg_1", NOW, BODY)
        with self.assertRaises(VerificationError):
            verify([OLD], headers(sig), BODY.replace(b"7", b"8"), now=NOW)
        with self.assertRaises(VerificationError):
            verify([OLD], headers(sig, msg_id="msg_2"), BODY, now=NOW)

    def test_timestamp_outside_five_minutes(self):
        for ts in [NOW - 301, NOW + 301]:
            sig = sign(OLD, "msg_1", ts, BODY)
            with self.assertRaises(VerificationError, msg=str(ts)):
                verify([OLD], headers(sig, ts=ts), BODY, now=NOW)
        for ts in [NOW - 300, NOW + 300]:
            verify([OLD], headers(sign(OLD, "msg_1", ts, BODY), ts=ts), BODY, now=NOW)

    def test_rotation_either_secret_verifies(self):
        both = sign(OLD, "msg_1", NOW, BODY) + " " + sign(NEW, "msg_1", NOW, BODY)
        verify([OLD], headers(both), BODY, now=NOW)
        verify([NEW], headers(both), BODY, now=NOW)
        verify([NEW, OLD], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, now=NOW)
        with self.assertRaises(VerificationError):
            other = "whsec_" + base64.b64encode(b"x" * 32).decode()
            verify([other], headers(both), BODY, now=NOW)


if __name__ == "__main__":
    unittest.main()

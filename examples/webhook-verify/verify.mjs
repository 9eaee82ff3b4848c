// Verifies an Outlast webhook (Standard Webhooks, v1 HMAC-SHA256 signatures). Node's stdlib only.
//
//   import { verify } from "./verify.mjs";
//   const event = verify(["whsec_..."], req.headers, rawBody); // throws VerificationError
//
// Pass the raw body exactly as received: re-serialized JSON does not verify. List every secret
// you accept (old and new during a rotation): any one matching signature verifies. Use the
// `webhook-id` header as your idempotency key: a retry carries the same id and body.

import { createHmac, timingSafeEqual } from "node:crypto";

export const TOLERANCE_S = 5 * 60;

export class VerificationError extends Error {}

function key(secret) {
  if (!secret.startsWith("whsec_")) throw new TypeError("a secret starts with whsec_");
  return Buffer.from(secret.slice("whsec_".length), "base64");
}

function header(headers, name) {
  if (typeof headers.get === "function") return headers.get(name) ?? undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() === name) return Array.isArray(v) ? v[0] : v;
  }
  return undefined;
}

/** The parsed JSON body when a `v1` signature of `body` matches one of `secrets` and
 * `webhook-timestamp` is within `toleranceS` of `nowS`; throws VerificationError otherwise. */
export function verify(secrets, headers, body, { nowS = Date.now() / 1000, toleranceS = TOLERANCE_S } = {}) {
  const id = header(headers, "webhook-id");
  const ts = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !ts || !signatures) {
    throw new VerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  }
  if (!/^[0-9]+$/.test(ts)) throw new VerificationError("webhook-timestamp is not a number");
  if (Math.abs(nowS - Number(ts)) > toleranceS) {
    throw new VerificationError("webhook-timestamp is outside the tolerance");
  }
  const bytes = typeof body === "string" ? Buffer.from(body) : Buffer.from(body);
  const signed = Buffer.concat([Buffer.from(`${id}.${ts}.`), bytes]);
  const expected = secrets.map((s) => createHmac("sha256", key(s)).update(signed).digest());
  for (const part of signatures.split(" ")) {
    const comma = part.indexOf(",");
    if (comma < 0 || part.slice(0, comma) !== "v1") continue;
    const given = Buffer.from(part.slice(comma + 1), "base64");
    // timingSafeEqual throws on a length mismatch: check it first (an empty or truncated
    // signature is simply no match, never an exception and never a prefix match).
    if (expected.some((e) => e.length === given.length && timingSafeEqual(e, given))) {
      return JSON.parse(bytes.toString("utf8"));
    }
  }
  throw new VerificationError("no matching signature");
}

// Tests of verify.mjs: `node --test` in this folder.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";

import { verify, VerificationError } from "./verify.mjs";

const secret = (byte) => "whsec_" + Buffer.alloc(32, byte).toString("base64");
const OLD = secret("o");
const NEW = secret("n");
const BODY = '{"type":"job.completed","data":{"job_id":"job_1","seq":7}}';
const NOW = 1_800_000_000;

function sign(s, id, ts, body) {
  const key = Buffer.from(s.slice(6), "base64");
  return "v1," + createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest("base64");
}
const headers = (sig, ts = NOW, id = "msg_1") => ({
  "Webhook-Id": id,
  "Webhook-Timestamp": String(ts),
  "Webhook-Signature": sig,
});
const opts = { nowS: NOW };

test("valid", () => {
  const event = verify([OLD], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, opts);
  assert.equal(event.data.seq, 7);
  // A fetch-style Headers object works too.
  verify([OLD], new Headers(headers(sign(OLD, "msg_1", NOW, BODY))), Buffer.from(BODY), opts);
});

test("empty signature", () => {
  for (const sig of ["v1,", "", "v1", " "]) {
    assert.throws(() => verify([OLD], headers(sig), BODY, opts), VerificationError, JSON.stringify(sig));
  }
});

test("truncated signature", () => {
  const good = sign(OLD, "msg_1", NOW, BODY);
  for (const cut of [good.slice(0, -2), good.slice(0, 10), good.slice(0, 4)]) {
    assert.throws(() => verify([OLD], headers(cut), BODY, opts), VerificationError, cut);
  }
});

test("wrong secret", () => {
  assert.throws(() => verify([NEW], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, opts), VerificationError);
});

test("changed body or id", () => {
  const sig = sign(OLD, "msg_1", NOW, BODY);
  assert.throws(() => verify([OLD], headers(sig), BODY.replace("7", "8"), opts), VerificationError);
  assert.throws(() => verify([OLD], headers(sig, NOW, "msg_2"), BODY, opts), VerificationError);
});

test("timestamp outside five minutes", () => {
  for (const ts of [NOW - 301, NOW + 301]) {
    assert.throws(() => verify([OLD], headers(sign(OLD, "msg_1", ts, BODY), ts), BODY, opts), VerificationError);
  }
  for (const ts of [NOW - 300, NOW + 300]) {
    verify([OLD], headers(sign(OLD, "msg_1", ts, BODY), ts), BODY, opts);
  }
});

test("rotation: either secret verifies", () => {
  const both = sign(OLD, "msg_1", NOW, BODY) + " " + sign(NEW, "msg_1", NOW, BODY);
  verify([OLD], headers(both), BODY, opts);
  verify([NEW], headers(both), BODY, opts);
  verify([NEW, OLD], headers(sign(OLD, "msg_1", NOW, BODY)), BODY, opts);
  assert.throws(() => verify([secret("x")], headers(both), BODY, opts), VerificationError);
});

// Browser tests of the client's recovery paths: long-poll when WebSockets and SSE are both
// refused, dead-link detection when the proxy black-holes the socket, a gateway kill -9 and
// restart mid-job, the canvas fallback without WebAssembly, and offline/online mid-upload.
// Headless Chromium -> cf-proxy -> the real gateway (run.sh).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, until, makeOrientedJpeg, inspectJpeg, colour, cardEvents } from "./harness.mjs";

let s;
before(async () => {
  s = await startStack();
});
after(async () => {
  await s?.stop();
});

/** The demo page, with every client `state` recorded from the first one on. */
async function openDemo(init) {
  const page = await s.newPage();
  if (init) await page.addInitScript(init);
  await page.addInitScript(() => {
    window.states = [];
    const add = EventTarget.prototype.addEventListener;
    // Record client states as the page's own listener sees them (the client is made at load).
    EventTarget.prototype.addEventListener = function (type, fn, opts) {
      if (type === "state" && this.constructor?.name === "Outlast" && !this.recorded) {
        this.recorded = true;
        add.call(this, "state", (e) => window.states.push({ state: e.detail.state, at: Date.now() }));
      }
      return add.call(this, type, fn, opts);
    };
  });
  await page.goto(s.base + "/");
  await until(() => page.evaluate(() => document.body.dataset.restored === "1"), 10000, "restore() done");
  return page;
}
const state = (page) => page.locator("#conn").getAttribute("data-state");
const states = (page) => page.evaluate(() => window.states.map((s) => s.state));
/** When the page's client first entered `name` at or after `since` (ms since the epoch). */
const enteredAt = async (page, name, since) => (await page.evaluate(() => window.states)).find((s) => s.state === name && s.at >= since)?.at;
async function setDemo(page, steps, stepMs) {
  await page.fill("#steps", String(steps));
  await page.fill("#stepms", String(stepMs));
}
/** Browser-made network errors ("WebSocket connection failed", "Failed to load resource") are expected while links are down. */
const pageErrors = (page) => page.errors.filter((e) => !/WebSocket connection to|Failed to load resource|net::ERR_/.test(e));

/** The job's events on its card: in order, each once, no gap; progress 1..steps once. */
async function assertEveryEventOnce(card, steps) {
  const evs = await cardEvents(card);
  const seqs = evs.map((e) => e.seq);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), "every seq once, in order, no gap: " + seqs);
  assert.deepEqual(evs.filter((e) => e.type === "progress").map((e) => Number(e.value)), Array.from({ length: steps }, (_, i) => i + 1));
  assert.equal(evs.filter((e) => e.type === "completed").length, 1);
}

test("WebSockets and SSE both refused: the page long-polls (state `polling`) and the job completes", async () => {
  await s.proxy("/refuse_ws?on=1");
  await s.proxy("/refuse_sse?on=1");
  try {
    const page = await openDemo();
    const polls = [];
    page.on("request", (r) => r.url().includes("/poll?") && polls.push(r.url()));
    await until(async () => (await state(page)) === "sse", 20000, "fallback to SSE");
    await setDemo(page, 12, 300);
    const b64 = await makeOrientedJpeg(page, 800, 600, 6);
    await page.setInputFiles("#files", { name: "small.jpg", mimeType: "image/jpeg", buffer: Buffer.from(b64, "base64") });
    await page.click("#submit");
    const card = page.locator("#jobs article").first();
    await until(async () => (await state(page)) === "polling", 30000, "SSE refused: long-polling");
    await until(async () => (await card.getAttribute("data-state")) === "completed", 60000, "job completed over long-poll");
    await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image shown");
    await assertEveryEventOnce(card, 12);
    const st = await s.proxy("/stats");
    assert.ok(st.ws_refused >= 3, "WebSockets were refused");
    assert.ok(st.sse_refused >= 3, "SSE was refused: " + st.sse_refused);
    assert.ok(polls.length >= 1, "events came by long-poll");
    const seen = await states(page);
    assert.ok(seen.indexOf("sse") < seen.indexOf("polling"), "sse, then polling: " + seen);
    assert.deepEqual(pageErrors(page), []);
    await page.close();
  } finally {
    await s.proxy("/refuse_ws?on=0");
    await s.proxy("/refuse_sse?on=0");
  }
});

test("the proxy stops forwarding mid-job without closing: missing heartbeats are noticed and the page reconnects within the documented time", async (t) => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  const hb = await page.evaluate(() => window.outlast.welcome.heartbeat_ms);
  await setDemo(page, 24, 400);
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  await until(async () => (await cardEvents(card)).filter((e) => e.type === "progress").length >= 3, 20000, "progress before the stall");
  const before = await s.proxy("/stats");
  const t0 = Date.now();
  const r = await s.proxy("/stall");
  assert.ok(r.receivers >= 1, "a WebSocket was stalled");
  const noticedAt = await until(() => enteredAt(page, "reconnecting", t0), 20000, "dead link noticed");
  await until(async () => (await s.proxy("/stats")).ws_total > before.ws_total && (await state(page)) === "open", 20000, "reconnected");
  const noticed = noticedAt - t0;
  const back = (await enteredAt(page, "open", noticedAt)) - t0;
  // Documented (web/README.md): no message for two heartbeat intervals (+2 s) closes the socket;
  // then the first reconnect comes after at most backoffMin * 2 = 1 s.
  const limit = 2 * hb + 2000;
  t.diagnostic(`heartbeat ${hb} ms: dead link noticed after ${noticed} ms, open again after ${back} ms (documented ${limit} ms)`);
  assert.ok(noticed >= 2 * hb, `not before two heartbeats were missed (${noticed} ms)`);
  assert.ok(noticed <= limit + 1000, `noticed in ${noticed} ms, documented ${limit} ms`);
  assert.ok(back <= limit + 1000 + 2000, `open again after ${back} ms`);
  assert.equal((await s.proxy("/stats")).ws_stalled, before.ws_stalled + 1);
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
  await assertEveryEventOnce(card, 24);
  assert.equal(await card.locator("[data-role=outputs] a").count(), 1, "the result once");
  assert.deepEqual(pageErrors(page), []);
  await page.close();
});

test("gateway kill -9 and restart mid-job: the page re-attaches and the result appears once", async () => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  await setDemo(page, 16, 400);
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  const jobId = await until(() => card.getAttribute("data-job-id"), 10000, "job submitted");
  await until(async () => (await cardEvents(card)).filter((e) => e.type === "progress").length >= 4, 20000, "progress before the crash");
  await s.restartGateway();
  await until(async () => (await card.getAttribute("data-state")) === "completed", 60000, "job completed after the restart");
  await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image shown");
  const snap = await (await fetch(`${s.gateway}/v1/jobs/${jobId}`)).json();
  assert.equal(snap.state, "completed");
  assert.equal(snap.attempt, 2, "the job ran again after the crash");
  assert.equal(await s.metric("outlast_jobs_submitted_total"), 0, "a fresh gateway process: nothing submitted to it (the job was not sent again)");
  const evs = await cardEvents(card);
  const seqs = evs.map((e) => e.seq);
  assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "each event once, in order");
  assert.equal(evs.filter((e) => e.type === "completed").length, 1, "completed once");
  assert.equal(evs.filter((e) => e.type === "output").length, 1, "one output event");
  assert.equal(await card.locator("[data-role=outputs] a").count(), 1, "the result link once");
  assert.equal(await card.locator("img[data-role=result]").count(), 1, "the result image once");
  assert.equal(await page.locator("#jobs article").count(), 1, "one job card");
  assert.deepEqual(pageErrors(page), []);
  await page.close();
});

test("without WebAssembly the canvas fallback prepares the photo: stored upright, downscaled, without EXIF", async () => {
  const page = await openDemo(() => {
    delete globalThis.WebAssembly;
  });
  assert.equal(await page.evaluate(() => typeof WebAssembly), "undefined");
  const b64 = await makeOrientedJpeg(page, 4000, 3000, 6);
  const original = Buffer.from(b64, "base64");
  await setDemo(page, 3, 100);
  await page.setInputFiles("#files", { name: "photo.jpg", mimeType: "image/jpeg", buffer: original });
  const up = page.locator("#uploads article").first();
  await until(async () => (await up.getAttribute("data-state")) === "complete", 60000, "upload stored");
  assert.match(await up.locator(".meta").first().textContent(), /standard · prepared \(canvas\)/);
  const stored = s.uploadBytes(await up.getAttribute("data-upload-id"));
  assert.ok(stored.length < original.length, `prepared ${stored.length} < original ${original.length}`);
  assert.equal(stored.indexOf(Buffer.from("Exif\0\0")), -1, "no EXIF in the stored upload");
  const img = await inspectJpeg(page, stored);
  assert.deepEqual([img.width, img.height], [1536, 2048], "upright (portrait), 2048 px long edge");
  assert.deepEqual([img.tl, img.tr, img.bl, img.br].map(colour), ["blue", "red", "white", "green"], "rotated once, not twice");
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("offline mid-upload pauses (state `offline`); online again resumes without re-sending acknowledged bytes", async (t) => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  await s.proxy("/throttle?up=200000&down=0");
  try {
    const data = Buffer.alloc(1_500_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2246822519) >>> 24;
    await page.selectOption("#preset", "original");
    await page.setInputFiles("#files", { name: "take.wav", mimeType: "audio/wav", buffer: data });
    const up = page.locator("#uploads article").first();
    await until(async () => {
      const v = await up.locator("progress").evaluate((p) => p.value / p.max);
      return v > 0.15 && v < 0.5;
    }, 30000, "upload under way");
    const id = await page.evaluate(() => [...window.outlast.uploads][0].id);
    await s.context.setOffline(true);
    await until(async () => (await state(page)) === "offline", 5000, "state offline");
    // What was in flight drains within about a second (the paced window); then nothing moves.
    await new Promise((r) => setTimeout(r, 2500));
    const a = await s.uploadInfo(id);
    await new Promise((r) => setTimeout(r, 2500));
    const b = await s.uploadInfo(id);
    assert.equal(b.offset, a.offset, "paused while offline");
    assert.ok(b.offset < data.length, "not finished while offline");
    assert.notEqual(await up.getAttribute("data-state"), "complete");
    await s.context.setOffline(false);
    await until(async () => (await up.getAttribute("data-state")) === "complete", 30000, "upload finished after going online");
    const info = await s.uploadInfo(id);
    assert.equal(info.length, data.length);
    assert.equal(info.bytes_written, data.length, "the server received no byte twice");
    assert.ok(s.uploadBytes(id).equals(data), "same bytes");
    const seen = await states(page);
    t.diagnostic("states: " + seen.join(" "));
    assert.ok(seen.lastIndexOf("offline") < seen.lastIndexOf("open"), "offline, then open again: " + seen);
    assert.deepEqual(pageErrors(page), []);
  } finally {
    await s.context.setOffline(false);
    await s.proxy("/throttle?up=0&down=0");
  }
  await page.close();
});

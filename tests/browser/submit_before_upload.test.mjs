// Browser test of "submit before the upload finishes" (issue 10, item 5): over a throttled
// uplink the job reaches the gateway while its upload is still running, waits queued with the
// reason "waiting for input upl_…", and starts once the upload completes. The library paces
// chunk frames by acknowledged bytes, so the submit does not wait behind the whole upload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startStack, until, cardEvents } from "./harness.mjs";

let s;
before(async () => {
  s = await startStack();
});
after(async () => {
  await s?.stop();
});

const RATE = 200_000; // bytes/s up, through the proxy
const SIZE = 1_500_000; // 7.5 s of link time

test("a job submitted while its upload is still running waits for it (reason shown) and starts when it completes", async (t) => {
  const page = await s.newPage();
  await page.goto(s.base + "/");
  await until(async () => (await page.locator("#conn").getAttribute("data-state")) === "open", 10000, "connected");
  // In the page: the upload's acknowledged offset at every job event (public API only).
  await page.evaluate(() => {
    const ol = window.outlast;
    const submit = ol.submit.bind(ol);
    window.seen = [];
    ol.submit = (spec, opts) => {
      const job = submit(spec, opts);
      const up = spec.inputs?.image;
      job.addEventListener("event", (e) => window.seen.push({ type: e.detail.type, reason: e.detail.reason || null, acked: up?.offset, total: up?.total }));
      return job;
    };
  });
  await s.proxy(`/throttle?up=${RATE}&down=0`);
  const data = Buffer.alloc(SIZE);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24; // does not compress
  await page.fill("#steps", "3");
  await page.fill("#stepms", "100");
  await page.selectOption("#preset", "original");
  const t0 = Date.now();
  await page.setInputFiles("#files", { name: "photo.jpg", mimeType: "image/jpeg", buffer: data });
  const up = page.locator("#uploads article").first();
  // Submit once the upload is well under way (the chunk pipeline is full by then).
  await until(async () => (await up.locator("progress").evaluate((p) => p.value / p.max)) >= 0.15, 20000, "upload under way");
  const clicked = Date.now();
  await page.click("#submit");
  const card = page.locator("#jobs article").first();

  // The gateway has the job, queued and waiting for the upload, while the upload is still short:
  // the submit did not wait behind the rest of the upload's chunks.
  const jobId = await until(() => card.getAttribute("data-job-id"), 10000, "job accepted");
  const latency = Date.now() - clicked;
  const waiting = await until(async () => {
    const log = await (await fetch(`${s.gateway}/v1/jobs/${jobId}/poll?after=0&timeout_ms=0`)).json();
    return (log.events || []).find((e) => e.type === "queued" && /^waiting for input upl_[0-9a-f]{32}$/.test(e.reason || ""));
  }, 10000, "the job queued with the waiting reason");
  const uploadId = waiting.reason.split(" ").pop();
  // Not started at T1, upload incomplete at T2 > T1: so at T1 it waited for an incomplete upload.
  const snap = await (await fetch(`${s.gateway}/v1/jobs/${jobId}`)).json();
  assert.equal(snap.state, "queued", "still queued while the upload runs");
  const info = await s.uploadInfo(uploadId);
  assert.equal(info.length, SIZE);
  assert.ok(info.offset < SIZE * 0.6, `the server holds ${info.offset} of ${SIZE} bytes while the job already waits`);
  t.diagnostic(`submit answered ${latency} ms after the click, mid-upload`);
  assert.ok(latency < 3000, `the submit was answered ${latency} ms after the click (pace 1 s)`);
  // The page saw the same: the waiting `queued` event arrived with the acknowledged offset < total.
  const early = await until(async () => (await page.evaluate(() => window.seen)).find((e) => e.type === "queued" && e.reason), 10000, "the page got the waiting queued event");
  assert.equal(early.reason, waiting.reason);
  assert.ok(early.acked < early.total, `acknowledged ${early.acked} < ${early.total} when the job was queued`);

  await until(async () => (await up.getAttribute("data-state")) === "complete", 30000, "upload complete");
  const took = (Date.now() - t0) / 1000;
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
  await s.proxy("/throttle?up=0&down=0");
  const evs = await cardEvents(card);
  assert.ok(evs.findIndex((e) => e.type === "started") > evs.findIndex((e) => e.type === "queued"));
  assert.equal(evs.filter((e) => e.type === "completed").length, 1);
  const stored = s.uploadBytes(uploadId);
  assert.ok(stored.equals(data), "the stored bytes are the file");
  // Pacing must not cost much: the link's own time is SIZE / RATE.
  const ideal = SIZE / RATE;
  t.diagnostic(`upload of ${SIZE} B at ${RATE} B/s took ${took.toFixed(2)} s from pick to stored (link time ${ideal.toFixed(2)} s)`);
  assert.ok(took < ideal * 1.6 + 2, `paced upload took ${took.toFixed(2)} s, link time ${ideal} s`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

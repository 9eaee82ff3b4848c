// Browser suite of the client library and the demo page: headless Chromium -> cf-proxy -> the
// real gateway. Run by run.sh (which builds and starts what it needs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startStack, until, makeOrientedJpeg, inspectJpeg, colour, cardEvents, ARTIFACTS } from "./harness.mjs";

let s;
before(async () => {
  s = await startStack();
});
after(async () => {
  await s?.stop();
});

async function openDemo(query = "") {
  const page = await s.newPage();
  await page.goto(s.base + "/" + query);
  await until(() => page.evaluate(() => document.body.dataset.restored === "1"), 10000, "restore() done");
  return page;
}
const state = (page) => page.locator("#conn").getAttribute("data-state");
async function setDemo(page, steps, stepMs) {
  await page.fill("#steps", String(steps));
  await page.fill("#stepms", String(stepMs));
}

test("a 12 MP JPEG with EXIF orientation 6: stored upright, downscaled, no EXIF; the job completes and the result is shown", async () => {
  const page = await openDemo();
  const b64 = await makeOrientedJpeg(page, 4000, 3000, 6);
  const original = Buffer.from(b64, "base64");
  await setDemo(page, 3, 100);
  await page.setInputFiles("#files", { name: "photo.jpg", mimeType: "image/jpeg", buffer: original });
  const up = page.locator("#uploads article").first();
  await until(async () => (await up.getAttribute("data-state")) === "complete", 60000, "upload stored");
  const id = await up.getAttribute("data-upload-id");
  const stored = s.uploadBytes(id);
  assert.ok(stored.length < original.length, `prepared ${stored.length} < original ${original.length}`);
  assert.equal(stored.indexOf(Buffer.from("Exif\0\0")), -1, "no EXIF in the stored upload");
  const img = await inspectJpeg(page, stored);
  assert.deepEqual([img.width, img.height], [1536, 2048], "upright (portrait) and downscaled to 2048 px");
  // Orientation 6 = rotate 90° clockwise: stored BL (blue) is upright TL, stored TL (red) TR.
  assert.deepEqual([img.tl, img.tr, img.bl, img.br].map(colour), ["blue", "red", "white", "green"]);
  assert.match(await up.locator(".meta").first().textContent(), /standard · prepared \((simd|nosimd)\)/);
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
  await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image shown");
  assert.deepEqual(page.errors, [], "no console errors, nothing from another origin");
  await page.close();
});

test("three WebSocket cuts mid-job: the page reconnects and shows every progress step and the result once", async () => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  await setDemo(page, 16, 400);
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  for (const [i, mode] of [["1", "abrupt"], ["2", "1001"], ["3", "abrupt"]]) {
    await until(async () => (await cardEvents(card)).filter((e) => e.type === "progress").length >= Number(i) * 4, 20000, "progress before cut " + i);
    const before = (await s.proxy("/stats")).ws_total;
    const r = await s.proxy("/cut?mode=" + mode);
    assert.ok(r.receivers >= 1, "a WebSocket was cut");
    await until(async () => (await s.proxy("/stats")).ws_total > before && (await state(page)) === "open", 20000, "reconnected after cut " + i);
  }
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
  const evs = await cardEvents(card);
  const seqs = evs.map((e) => e.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in order");
  assert.equal(new Set(seqs).size, seqs.length, "each event once");
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), "no gap");
  assert.deepEqual(evs.filter((e) => e.type === "progress").map((e) => Number(e.value)), Array.from({ length: 16 }, (_, i) => i + 1));
  assert.equal(evs.filter((e) => e.type === "completed").length, 1);
  assert.equal(await card.locator("[data-role=outputs] a").count(), 1, "the result once");
  await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image shown");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("reload mid-upload over a throttled link: the upload continues from its offset (no byte twice) and the job is re-attached, not resubmitted", async () => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  // A job submitted before the reload (long enough to outlive it).
  await setDemo(page, 20, 400);
  await page.click("#submit");
  const job = page.locator("#jobs article").first();
  await until(() => job.getAttribute("data-job-id"), 10000, "job submitted");
  const jobId = await job.getAttribute("data-job-id");
  const submitted = await s.metric("outlast_jobs_submitted_total");
  // 1.5 MB that does not shrink, over 300 kB/s up.
  await s.proxy("/throttle?up=300000&down=0");
  const data = Buffer.alloc(1_500_000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  await page.selectOption("#preset", "original");
  await page.setInputFiles("#files", { name: "take.wav", mimeType: "audio/wav", buffer: data });
  const up = page.locator("#uploads article").first();
  await until(async () => {
    const v = await up.locator("progress").evaluate((p) => p.value / p.max);
    return v > 0.2 && v < 0.8;
  }, 30000, "upload under way");
  await page.reload();
  await until(() => page.evaluate(() => document.body.dataset.restored === "1"), 10000, "restored");
  const up2 = page.locator("#uploads article").first();
  await until(async () => (await up2.getAttribute("data-state")) === "complete", 60000, "upload finished after reload");
  await s.proxy("/throttle?up=0&down=0");
  const id = await up2.getAttribute("data-upload-id");
  const info = await s.uploadInfo(id);
  assert.equal(info.length, data.length);
  assert.equal(info.bytes_written, data.length, "the server received no byte twice");
  assert.ok(s.uploadBytes(id).equals(data), "same bytes");
  const job2 = page.locator(`#jobs article[data-job-id="${jobId}"]`);
  await until(async () => (await job2.getAttribute("data-state")) === "completed", 30000, "re-attached job completed");
  assert.equal(await s.metric("outlast_jobs_submitted_total"), submitted, "the job was not submitted again");
  assert.deepEqual(page.errors, []);
  await page.close();
});

async function photoJobCompletes(page) {
  const b64 = await makeOrientedJpeg(page, 800, 600, 6);
  await setDemo(page, 4, 100);
  await page.setInputFiles("#files", { name: "small.jpg", mimeType: "image/jpeg", buffer: Buffer.from(b64, "base64") });
  await page.click("#submit");
  const card = page.locator("#jobs article").first();
  await until(async () => (await card.getAttribute("data-state")) === "completed", 60000, "job completed over the fallback");
  await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image shown");
}

test("WebSockets refused from the start: the page falls back (SSE, tus) and completes", async () => {
  await s.proxy("/refuse_ws?on=1");
  try {
    const page = await openDemo();
    await until(async () => ["sse", "polling"].includes(await state(page)), 20000, "fallback");
    await photoJobCompletes(page);
    assert.ok((await s.proxy("/stats")).ws_refused >= 3);
    await page.close();
  } finally {
    await s.proxy("/refuse_ws?on=0");
  }
});

test("WebSockets refused after a good first connection: the page falls back and completes", async () => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  await s.proxy("/refuse_ws?on=1");
  try {
    await s.proxy("/cut?mode=1001");
    await until(async () => ["sse", "polling"].includes(await state(page)), 30000, "fallback after the cut");
    await photoJobCompletes(page);
  } finally {
    await s.proxy("/refuse_ws?on=0");
  }
  await page.close();
});

test("the wasm module loads and prepares with and without SIMD", async () => {
  for (const v of ["simd", "nosimd"]) {
    const page = await openDemo("?wasm=" + v);
    const out = await page.evaluate(async () => {
      const c = new OffscreenCanvas(1600, 1200);
      const g = c.getContext("2d");
      const img = g.createImageData(1600, 1200);
      let r = 7;
      for (let i = 0; i < img.data.length; i += 4) { r = (r * 1103515245 + 12345) & 0x7fffffff; img.data[i] = (i >> 6) & 255; img.data[i + 1] = (r >> 16) & 255; img.data[i + 2] = 128; img.data[i + 3] = 255; }
      g.putImageData(img, 0, 0);
      const blob = await c.convertToBlob({ type: "image/jpeg", quality: 1 });
      const u = window.outlast.upload(new File([blob], "p.jpg", { type: "image/jpeg" }), { prepare: "eco" });
      await new Promise((r) => u.addEventListener("prepared", r, { once: true }));
      await u.done;
      return { variant: await window.outlast.wasmVariant(), prepared: u.prepared };
    });
    assert.equal(out.variant, v);
    assert.equal(out.prepared.variant, v);
    assert.equal(out.prepared.kept, false);
    assert.deepEqual([out.prepared.width, out.prepared.height], [1280, 960]);
    assert.deepEqual(page.errors, []);
    await page.close();
  }
  const page = await openDemo();
  assert.equal(await page.evaluate(() => window.outlast.wasmVariant()), "simd", "Chromium has wasm SIMD: auto picks it");
  await page.close();
});

test("screenshots at desktop and phone width", async () => {
  for (const [name, vp] of [["desktop", { width: 1280, height: 900 }], ["phone", { width: 390, height: 844 }]]) {
    const page = await s.newPage(vp);
    await page.goto(s.base + "/");
    await until(async () => (await state(page)) === "open", 10000, "connected");
    const b64 = await makeOrientedJpeg(page, 1200, 900, 6);
    await setDemo(page, 3, 100);
    await page.setInputFiles("#files", { name: "photo.jpg", mimeType: "image/jpeg", buffer: Buffer.from(b64, "base64") });
    await page.click("#submit");
    const card = page.locator("#jobs article").first();
    await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job completed");
    await until(() => card.locator("img[data-role=result]").evaluate((i) => i.complete && i.naturalWidth > 0), 10000, "result image");
    const file = join(ARTIFACTS, "demo-" + name + ".png");
    writeFileSync(file, await page.screenshot({ fullPage: true }));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    assert.equal(overflow, false, name + ": no horizontal scrolling");
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});

test("the demo page by keyboard alone, every control labelled", async () => {
  const page = await openDemo();
  await until(async () => (await state(page)) === "open", 10000, "connected");
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea, button")]
      .filter((e) => e.getAttribute("aria-hidden") !== "true")
      .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || e.getAttribute("aria-labelledby") || (e.tagName === "BUTTON" && e.textContent.trim())))
      .map((e) => e.id || e.outerHTML));
  assert.deepEqual(unnamed, [], "controls without an accessible name");
  await setDemo(page, 3, 100);
  await page.click("h1"); // sequential focus navigation starts at the top
  // Tab from the top reaches every control in order; Enter on Submit submits.
  const order = [];
  for (let i = 0; i < 40 && order[order.length - 1] !== "submit"; i++) {
    await page.keyboard.press("Tab");
    order.push(await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName));
  }
  const want = ["files", "camera-btn", "preset", "backend", "example", "steps", "stepms", "workflow", "submit"];
  assert.deepEqual(order.filter((id) => want.includes(id)), want, "tab order: " + order);
  assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById("submit")).outlineStyle), "solid", "a visible focus ring");
  await page.keyboard.press("Enter");
  const card = page.locator("#jobs article").first();
  await until(async () => (await card.getAttribute("data-state")) === "completed", 30000, "job submitted by keyboard completed");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("the page guard sees console errors and requests to another origin (so the checks above can fail)", async () => {
  const page = await openDemo();
  await page.evaluate(() => {
    console.error("boom");
    document.body.append(Object.assign(new Image(), { src: "http://127.0.0.1:1/elsewhere.png" }));
  });
  await until(() => page.errors.some((e) => e.startsWith("foreign request http://127.0.0.1:1/elsewhere.png")), 5000, "foreign request seen");
  assert.ok(page.errors.includes("boom"), "console error seen: " + page.errors);
  await page.close();
});

// Test harness of the browser suite: starts the real gateway (OUTLAST_BIN), the cf-proxy
// (CF_PROXY_BIN) in front of it and headless Debian Chromium (playwright-core, no download).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ARTIFACTS = process.env.BROWSER_ARTIFACTS || join(process.cwd(), "../../target/browser-artifacts");
mkdirSync(ARTIFACTS, { recursive: true });

/** Starts `bin args`, resolves with the first stdout match of `re` (bounded by a deadline). */
function startProcess(bin, args, env, re, what) {
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err = (err + d).slice(-4000)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(what + " did not start within 60 s: " + err)), 60000);
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(re);
      if (m) {
        clearTimeout(timer);
        resolve({ child, m });
      }
    });
    child.on("exit", (code) => reject(new Error(what + " exited (" + code + "): " + err)));
  });
}

const GATEWAY_ENV = { OUTLAST_PING_INTERVAL: "2s", OUTLAST_PONG_TIMEOUT: "4s", RUST_LOG: "warn" };
const startGateway = (listen, dataDir) =>
  startProcess(process.env.OUTLAST_BIN, ["--listen", listen, "--data-dir", dataDir], GATEWAY_ENV, /listening on http:\/\/([0-9.:]+)\//, "gateway");

/**
 * Serves these from web/ (or OUTLAST_WEB_DIR) on disk instead of the gateway's embedded copies
 * (OUTLAST_WEB_FROM_DISK=1, for quick edits of the library). Not the page itself: a page that
 * did not come from the network counts as public to Chrome's local-network checks.
 */
const FROM_DISK = { "/client/outlast.js": "client/outlast.js", "/client/image-worker.js": "client/image-worker.js" };

export async function startStack() {
  const dataDir = mkdtempSync(join(tmpdir(), "outlast-browser-"));
  let gw = await startGateway("127.0.0.1:0", dataDir);
  const gwAddr = gw.m[1];
  const px = await startProcess(process.env.CF_PROXY_BIN, ["--upstream", gwAddr], {}, /listening on http:\/\/([0-9.:]+)\/ control http:\/\/([0-9.:]+)\//, "cf-proxy");
  const base = "http://" + px.m[1];
  const control = "http://" + px.m[2];
  const gateway = "http://" + gwAddr;
  const profile = mkdtempSync(join(tmpdir(), "outlast-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  if (process.env.OUTLAST_WEB_FROM_DISK === "1") {
    const web = process.env.OUTLAST_WEB_DIR || fileURLToPath(new URL("../../web/", import.meta.url));
    await context.route((u) => u.host === new URL(base).host && u.pathname in FROM_DISK, (route) =>
      route.fulfill({ path: join(web, FROM_DISK[new URL(route.request().url()).pathname]), contentType: "text/javascript" }));
  }
  const proxy = async (path) => (await fetch(control + path)).json();
  const stack = {
    dataDir, base, gateway, context, proxy,
    async metric(name) {
      const text = await (await fetch(gateway + "/metrics")).text();
      let sum = 0;
      for (const line of text.split("\n")) if (line.startsWith(name + "{") || line.startsWith(name + " ")) sum += Number(line.split(" ").pop());
      return sum;
    },
    async uploadInfo(id) {
      return (await fetch(gateway + "/v1/uploads/" + id)).json();
    },
    uploadBytes(id) {
      return readFileSync(join(dataDir, "uploads", id + ".bin"));
    },
    async newPage(viewport = { width: 1280, height: 900 }) {
      const page = await context.newPage();
      await page.setViewportSize(viewport);
      page.errors = [];
      page.on("console", (m) => m.type() === "error" && page.errors.push(m.text()));
      page.on("pageerror", (e) => page.errors.push(String(e)));
      page.on("request", (r) => {
        const u = new URL(r.url());
        if (!["data:", "blob:"].includes(u.protocol) && u.host !== new URL(base).host) page.errors.push("foreign request " + r.url());
      });
      return page;
    },
    /** `kill -9` the gateway, then start it again on the same address and data directory. */
    async restartGateway() {
      const dead = new Promise((r) => gw.child.once("exit", r));
      gw.child.kill("SIGKILL");
      await dead;
      const end = Date.now() + 10000;
      for (;;) {
        try {
          gw = await startGateway(gwAddr, dataDir);
          return;
        } catch (e) {
          if (Date.now() > end) throw e;
          await new Promise((r) => setTimeout(r, 100)); // the port may still be taken
        }
      }
    },
    async stop() {
      await context.close().catch(() => {});
      px.child.kill("SIGTERM");
      gw.child.kill("SIGTERM");
    },
  };
  return stack;
}

/** Waits until `fn()` is truthy (polled), failing after `ms` with `what`. */
export async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * In the page: a w×h JPEG whose stored pixels have four coloured quadrants (TL red, TR green,
 * BL blue, BR white), with an EXIF APP1 segment saying orientation `o`. Returns base64.
 */
export async function makeOrientedJpeg(page, w, h, o) {
  return page.evaluate(async ({ w, h, o }) => {
    const c = new OffscreenCanvas(w, h);
    const g = c.getContext("2d");
    const q = [["#ff0000", 0, 0], ["#00ff00", w / 2, 0], ["#0000ff", 0, h / 2], ["#ffffff", w / 2, h / 2]];
    for (const [col, x, y] of q) { g.fillStyle = col; g.fillRect(x, y, w / 2, h / 2); }
    // grain so the file is photo-sized rather than a few KB
    const img = g.getImageData(0, 0, w, h);
    let s = 1;
    for (let i = 0; i < img.data.length; i += 4) { s = (s * 1103515245 + 12345) & 0x7fffffff; const n = (s >> 16) % 25 - 12; img.data[i] = Math.max(0, Math.min(255, img.data[i] + n)); img.data[i + 1] = Math.max(0, Math.min(255, img.data[i + 1] + n)); img.data[i + 2] = Math.max(0, Math.min(255, img.data[i + 2] + n)); }
    g.putImageData(img, 0, 0);
    const jpeg = new Uint8Array(await (await c.convertToBlob({ type: "image/jpeg", quality: 0.92 })).arrayBuffer());
    const exif = [0xff, 0xe1, 0x00, 0x22, 0x45, 0x78, 0x69, 0x66, 0, 0, 0x4d, 0x4d, 0, 0x2a, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, o, 0, 0, 0, 0, 0, 0];
    const out = new Uint8Array(jpeg.length + exif.length);
    out.set(jpeg.subarray(0, 2), 0);
    out.set(exif, 2);
    out.set(jpeg.subarray(2), 2 + exif.length);
    let bin = "";
    for (let i = 0; i < out.length; i += 0x8000) bin += String.fromCharCode(...out.subarray(i, i + 0x8000));
    return btoa(bin);
  }, { w, h, o });
}

/** In the page: decodes JPEG bytes (no orientation applied) and samples the quadrant centres. */
export async function inspectJpeg(page, bytes) {
  return page.evaluate(async (b64) => {
    const bin = atob(b64);
    const u8 = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const bmp = await createImageBitmap(new Blob([u8], { type: "image/jpeg" }), { imageOrientation: "none" });
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const g = c.getContext("2d");
    g.drawImage(bmp, 0, 0);
    const at = (fx, fy) => Array.from(g.getImageData(Math.floor(bmp.width * fx), Math.floor(bmp.height * fy), 1, 1).data.slice(0, 3));
    return { width: bmp.width, height: bmp.height, tl: at(0.25, 0.25), tr: at(0.75, 0.25), bl: at(0.25, 0.75), br: at(0.75, 0.75) };
  }, Buffer.from(bytes).toString("base64"));
}

/** Which of red/green/blue/white an RGB sample is. */
export function colour([r, g, b]) {
  if (r > 200 && g > 200 && b > 200) return "white";
  if (r > 180 && g < 80 && b < 80) return "red";
  if (g > 180 && r < 80 && b < 80) return "green";
  if (b > 180 && r < 80 && g < 80) return "blue";
  return "other(" + [r, g, b] + ")";
}

/** The events shown on the page's job card (the hidden per-card event list). */
export async function cardEvents(card) {
  return card.locator("ol.events li").evaluateAll((lis) => lis.map((li) => ({ seq: Number(li.dataset.seq), type: li.dataset.type, value: li.dataset.value })));
}

//! Outlast's browser client: one ES module, no build step. Uploads (photos prepared in
//! WebAssembly), jobs and their event streams over one WebSocket, with SSE / long-poll / tus
//! fallbacks, state kept in IndexedDB so a reload loses nothing. API: web/README.md.

// ---------------------------------------------------------------------------------------------
// Pure parts (exported for the unit tests)
// ---------------------------------------------------------------------------------------------

/** Full-jitter backoff with the protocol crate's numbers (client::Backoff: 0.5 s .. 20 s). */
export class Backoff {
  constructor(minMs = 500, maxMs = 20000) {
    this.minMs = minMs;
    this.maxMs = maxMs;
    this.attempt = 0;
  }
  /** The next delay in ms; `unitRandom` in [0, 1). */
  next(unitRandom = Math.random()) {
    const exp = this.minMs * 2 ** Math.min(this.attempt, 20);
    const span = Math.min(exp, this.maxMs);
    this.attempt += 1;
    const r = Math.min(Math.max(unitRandom, 0), 1);
    return Math.min(this.minMs + span * r, this.maxMs);
  }
  reset() {
    this.attempt = 0;
  }
}

/** Chunk size from the measured rate (protocol crate's upload::ChunkSizer rules). */
export class ChunkSizer {
  constructor(min, max, targetMs) {
    this.min = Math.max(1, min);
    this.max = Math.max(this.min, max);
    this.targetMs = targetMs;
    this.current = this.min;
  }
  next() {
    return this.current;
  }
  /** `bytes` took `elapsedMs`: aim for `targetMs` per chunk, at most doubling per step. */
  record(bytes, elapsedMs) {
    const secs = Math.max(elapsedMs, 1) / 1000;
    const ideal = Math.floor((bytes / secs) * (this.targetMs / 1000));
    const capped = Math.min(ideal, this.current * 2);
    this.current = Math.min(Math.max(capped, this.min), this.max);
  }
}

/**
 * How many unacknowledged bytes a WebSocket upload may have in flight: about `paceMs` worth
 * at the measured acknowledgement rate, at least one chunk, at most the server's window.
 * Chunk frames queue in buffers the page cannot see (the browser's, the kernel's, a proxy's),
 * and a control message (a submit, a subscribe) sent meanwhile waits behind all of them; so
 * the bytes in flight are kept to what the link carries in about `paceMs`.
 */
export class AckPacer {
  constructor(paceMs = 1000, maxWindow = 16 << 20, spanMs = 3000) {
    this.paceMs = paceMs;
    this.maxWindow = maxWindow;
    this.spanMs = spanMs;
    this.samples = []; // [[ms, acknowledged offset]], oldest first
    this.seeded = 0;
  }
  /** Sending starts (again) at `offset`; `rate` (bytes/s) is a guess from before, if any. */
  start(offset, now, rate = 0) {
    this.samples = [[now, offset]];
    this.startOffset = offset;
    this.seeded = rate > 0 ? rate : 0;
  }
  /** The server acknowledged `offset` at `now` (ms). */
  ack(offset, now) {
    const last = this.samples[this.samples.length - 1];
    if (last && offset <= last[1]) return;
    this.samples.push([now, offset]);
    // Keep the span, but at least two samples so there is always a rate.
    while (this.samples.length > 2 && now - this.samples[1][0] >= this.spanMs) this.samples.shift();
  }
  /** Acknowledged bytes per second over the recent span (the seed before the first ack). */
  rate() {
    const n = this.samples.length;
    if (n < 2) return this.seeded;
    const [t0, o0] = this.samples[0];
    const [t1, o1] = this.samples[n - 1];
    return ((o1 - o0) / Math.max(t1 - t0, 1)) * 1000;
  }
  /**
   * Bytes that may be unacknowledged, with chunks of `chunk` bytes. Unless seeded, the window
   * also grows no faster than twice what this run has had acknowledged (like TCP's slow
   * start), so one early sample that came through too fast cannot fill every buffer.
   */
  window(chunk) {
    let w = Math.floor((this.rate() * this.paceMs) / 1000);
    const n = this.samples.length;
    if (!this.seeded && n) w = Math.min(w, 2 * (this.samples[n - 1][1] - this.startOffset));
    return Math.min(Math.max(w, chunk, 1), Math.max(this.maxWindow, 1));
  }
}

/** Per-job sequence tracking: every event once, in order; gaps only where history coalesced. */
export class StreamTracker {
  constructor() {
    this.last = new Map();
  }
  lastSeq(jobId) {
    return this.last.get(jobId) ?? 0;
  }
  set(jobId, seq) {
    if (seq > this.lastSeq(jobId)) this.last.set(jobId, seq);
  }
  /** True when the event is new (and records it); false for a repeat. */
  accept(ev) {
    if (ev.seq <= this.lastSeq(ev.job_id)) return false;
    this.last.set(ev.job_id, ev.seq);
    return true;
  }
  /** True when a heartbeat says the server sent more than we have (a frame was lost). */
  behind(heartbeatJobs) {
    const out = [];
    for (const [id, seq] of Object.entries(heartbeatJobs || {})) {
      if (this.last.has(id) && seq > this.lastSeq(id)) out.push(id);
    }
    return out;
  }
}

/**
 * Each job's queue place from every source: the stored `queued` event (on entering the queue),
 * live `position` messages (WebSocket, SSE), long-poll answers and snapshots. A place is not an
 * event (no seq): only the newest counts, and one arriving after the job left the queue
 * (`started`, a terminal event) is stale. Each method returns the new place `{position,
 * reason}` when it changed, `null` when the job left the queue, `undefined` when nothing changed.
 */
export class QueuePlaces {
  constructor() {
    this.places = new Map();
    this.left = new Set();
  }
  get(jobId) {
    return this.places.get(jobId) ?? null;
  }
  set(jobId, position, reason) {
    this.left.delete(jobId);
    const now = this.places.get(jobId);
    const next = { position, reason: reason ?? null };
    if (now && now.position === next.position && now.reason === next.reason) return undefined;
    this.places.set(jobId, next);
    return next;
  }
  leave(jobId) {
    this.left.add(jobId);
    if (!this.places.has(jobId)) return undefined;
    this.places.delete(jobId);
    return null;
  }
  /** A stored event, accepted once and in order. */
  onEvent(ev) {
    if (ev.type === "queued") return this.set(ev.job_id, ev.position, ev.reason);
    if (ev.type === "started" || TERMINAL.has(ev.type)) return this.leave(ev.job_id);
    return undefined;
  }
  /** A live `position` message (or a long-poll answer's place). */
  onPosition(m) {
    if (this.left.has(m.job_id) || typeof m.position !== "number") return undefined;
    return this.set(m.job_id, m.position, m.reason);
  }
  /** A snapshot: its place while queued (`position`, `queue_reason`). */
  onSnapshot(snap) {
    if (snap.state !== "queued") return this.leave(snap.job_id);
    if (typeof snap.position !== "number") return undefined;
    return this.set(snap.job_id, snap.position, snap.queue_reason);
  }
}

export const TERMINAL = new Set(["completed", "failed", "canceled"]);
export const EVENT_TYPES = ["queued", "started", "progress", "preview", "output", "completed", "failed", "canceled"];

/** The 25-byte header of a chunk frame: 0xC1, upload id (16 bytes), offset (u64 BE). */
export function chunkHeader(uploadId, offset) {
  const hex = uploadId.replace(/^upl_/, "");
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new Error("not an upload id: " + uploadId);
  const h = new Uint8Array(25);
  h[0] = 0xc1;
  for (let i = 0; i < 16; i++) h[1 + i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  new DataView(h.buffer).setBigUint64(17, BigInt(offset), false);
  return h;
}

/** Incremental SHA-256 (used where crypto.subtle is missing: plain-http origins). */
export class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.total = 0;
    this.w = new Uint32Array(64);
  }
  update(data) {
    let i = 0;
    this.total += data.length;
    if (this.bufLen) {
      const n = Math.min(64 - this.bufLen, data.length);
      this.buf.set(data.subarray(0, n), this.bufLen);
      this.bufLen += n;
      i = n;
      if (this.bufLen < 64) return this;
      this.block(this.buf, 0);
      this.bufLen = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    if (i < data.length) {
      this.buf.set(data.subarray(i), 0);
      this.bufLen = data.length - i;
    }
    return this;
  }
  block(d, o) {
    const w = this.w;
    for (let t = 0; t < 16; t++) w[t] = (d[o + 4 * t] << 24) | (d[o + 4 * t + 1] << 16) | (d[o + 4 * t + 2] << 8) | d[o + 4 * t + 3];
    for (let t = 16; t < 64; t++) {
      const a = w[t - 15], b = w[t - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    let [a, b, c, e, f, g, hh, dd] = [this.h[0], this.h[1], this.h[2], this.h[4], this.h[5], this.h[6], this.h[7], this.h[3]];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g; g = f; f = e; e = (dd + t1) | 0; dd = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    const h = this.h;
    h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  hex() {
    const bits = this.total * 8;
    const pad = new Uint8Array(((this.bufLen < 56 ? 56 : 120) - this.bufLen) + 8);
    pad[0] = 0x80;
    const dv = new DataView(pad.buffer);
    dv.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32), false);
    dv.setUint32(pad.length - 4, bits >>> 0, false);
    this.update(pad);
    return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
  }
}
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** sha256 (hex) of a Blob: WebCrypto when available, else the incremental JS digest. */
export async function sha256Blob(blob) {
  if (globalThis.crypto?.subtle && blob.size <= 512 * 1024 * 1024) {
    const d = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
    return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const h = new Sha256();
  const step = 4 << 20;
  for (let o = 0; o < blob.size; o += step) h.update(new Uint8Array(await blob.slice(o, o + step).arrayBuffer()));
  return h.hex();
}

/** tus `Upload-Metadata`: comma-separated `key base64(value)`. */
export function tusMetadata(meta) {
  return Object.entries(meta)
    .map(([k, v]) => k + " " + btoa(String.fromCharCode(...new TextEncoder().encode(String(v)))))
    .join(",");
}

/** A random idempotency key (printable ASCII, no spaces). */
export function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return "ol-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Images the WebAssembly module prepares; anything else is uploaded as it is. */
export function isPreparable(type) {
  return type === "image/jpeg" || type === "image/png" || type === "image/webp";
}

// ---------------------------------------------------------------------------------------------
// Storage: IndexedDB (uploads with their prepared blob keyed by content hash, jobs by key)
// ---------------------------------------------------------------------------------------------

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** Upload and job records in IndexedDB (or in memory when IndexedDB is unavailable). */
export class Store {
  constructor(name = "outlast", idb = globalThis.indexedDB) {
    this.name = name;
    this.idb = idb;
    this.mem = { uploads: new Map(), jobs: new Map() };
    this.db = null;
  }
  async open() {
    if (this.db || !this.idb) return this;
    try {
      const r = this.idb.open(this.name, 1);
      r.onupgradeneeded = () => {
        const db = r.result;
        if (!db.objectStoreNames.contains("uploads")) db.createObjectStore("uploads", { keyPath: "hash" });
        if (!db.objectStoreNames.contains("jobs")) db.createObjectStore("jobs", { keyPath: "key" });
      };
      this.db = await req(r);
    } catch {
      this.db = null; // private mode or blocked: keep state in memory
    }
    return this;
  }
  async put(store, value) {
    await this.open();
    if (!this.db) return void this.mem[store].set(store === "uploads" ? value.hash : value.key, value);
    const tx = this.db.transaction(store, "readwrite");
    tx.objectStore(store).put(value);
    await new Promise((ok, err) => {
      tx.oncomplete = ok;
      tx.onerror = () => err(tx.error);
      tx.onabort = () => err(tx.error);
    });
  }
  async get(store, key) {
    await this.open();
    if (!this.db) return this.mem[store].get(key);
    return req(this.db.transaction(store).objectStore(store).get(key));
  }
  async all(store) {
    await this.open();
    if (!this.db) return [...this.mem[store].values()];
    return req(this.db.transaction(store).objectStore(store).getAll());
  }
  async delete(store, key) {
    await this.open();
    if (!this.db) return void this.mem[store].delete(key);
    const tx = this.db.transaction(store, "readwrite");
    tx.objectStore(store).delete(key);
    await new Promise((ok, err) => {
      tx.oncomplete = ok;
      tx.onerror = () => err(tx.error);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

class HttpError extends Error {
  constructor(status, code, message) {
    super(message || code || "HTTP " + status);
    this.status = status;
    this.code = code || "http_" + status;
  }
}

function deferred() {
  let resolve, reject;
  const promise = new Promise((a, b) => ((resolve = a), (reject = b)));
  promise.catch(() => {}); // a rejected `done` nobody awaits is not an unhandled rejection
  return { promise, resolve, reject };
}

// ---------------------------------------------------------------------------------------------
// Image preparation (WebAssembly in a worker; canvas only without WebAssembly)
// ---------------------------------------------------------------------------------------------

class Preparer {
  constructor(wasm) {
    this.wasm = wasm; // "auto" | "simd" | "nosimd"
    this.worker = null;
    this.next = 1;
    this.pending = new Map();
  }
  available() {
    return typeof WebAssembly === "object" && typeof Worker === "function";
  }
  ensure() {
    if (this.worker) return this.worker;
    const url = new URL("./image-worker.js", import.meta.url);
    if (this.wasm !== "auto") url.searchParams.set("wasm", this.wasm);
    this.worker = new Worker(url, { type: "module" });
    this.worker.onmessage = (e) => {
      const p = this.pending.get(e.data.id);
      if (!p) return;
      this.pending.delete(e.data.id);
      if (e.data.ok) p.resolve(e.data);
      else p.reject(Object.assign(new Error(e.data.message), { code: e.data.code }));
    };
    this.worker.onerror = (e) => {
      for (const p of this.pending.values()) p.reject(new Error("image worker failed: " + (e.message || "error")));
      this.pending.clear();
      this.worker = null;
    };
    return this.worker;
  }
  /** Prepares `blob` per preset; resolves with {blob, width, height, variant, ...} */
  async prepare(blob, preset) {
    if (this.available()) {
      const bytes = await blob.arrayBuffer();
      const id = this.next++;
      const w = this.ensure();
      const out = await new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        w.postMessage({ id, bytes, preset }, [bytes]);
      });
      return { ...out, blob: new Blob([out.bytes], { type: out.mime }) };
    }
    return canvasPrepare(blob, preset);
  }
  /** Which wasm build the worker runs ("simd" or "nosimd"). */
  async variant() {
    const id = this.next++;
    const w = this.ensure();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: (d) => resolve(d.variant), reject });
      w.postMessage({ id, probe: true });
    });
  }
}

const PRESETS = { eco: [1280, 0.7], standard: [2048, 0.8], high: [3072, 0.88] };
/** iOS draws nothing on canvases above this many pixels. */
const CANVAS_MAX_PIXELS = 16777216;

async function canvasPrepare(blob, preset) {
  const [edge, q] = PRESETS[preset] || PRESETS.standard;
  // `from-image` applies EXIF orientation once; drawing an ImageBitmap never rotates again.
  const bmp = await createImageBitmap(blob, { imageOrientation: "from-image" });
  let scale = Math.min(1, edge / Math.max(bmp.width, bmp.height));
  scale = Math.min(scale, Math.sqrt(CANVAS_MAX_PIXELS / (bmp.width * bmp.height)));
  const w = Math.max(1, Math.round(bmp.width * scale)), h = Math.max(1, Math.round(bmp.height * scale));
  const c = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(w, h) : Object.assign(document.createElement("canvas"), { width: w, height: h });
  c.getContext("2d").drawImage(bmp, 0, 0, w, h);
  bmp.close?.();
  const out = c.convertToBlob ? await c.convertToBlob({ type: "image/jpeg", quality: q }) : await new Promise((r) => c.toBlob(r, "image/jpeg", q));
  return { blob: out, width: w, height: h, mime: "image/jpeg", variant: "canvas" };
}

// ---------------------------------------------------------------------------------------------
// Upload handle
// ---------------------------------------------------------------------------------------------

/** One upload; dispatches `prepared`, `progress` ({sent, total, rate}), `done`, `error`. */
export class Upload extends EventTarget {
  constructor(client, file, opts = {}) {
    super();
    this.client = client;
    this.file = file;
    this.name = file?.name || opts.name || "upload";
    this.preset = opts.prepare || "standard";
    this.original = file ? { size: file.size, type: file.type, name: this.name } : null;
    this.prepared = null; // {size, type, width, height, variant, kept}
    this.blob = null;
    this.hash = null;
    this.id = null;
    this.offset = 0;
    this.total = 0;
    this.rate = 0;
    this.state = "preparing"; // preparing | uploading | complete | failed | canceled
    this.canceled = false;
    this.wake = null;
    this._done = deferred();
    this.done = this._done.promise;
    this._created = deferred();
    /** Resolves with the upload id as soon as the server created it (before the bytes). */
    this.created = this._created.promise;
  }

  async run(record) {
    try {
      if (record) {
        Object.assign(this, { blob: record.blob, hash: record.hash, id: record.id || null, name: record.name, preset: record.preset });
        this.original = record.original;
        this.prepared = record.prepared;
        this.total = record.blob.size;
      } else {
        await this.prepare();
        this.hash = await sha256Blob(this.blob);
        this.total = this.blob.size;
        const known = await this.client.store.get("uploads", this.hash);
        if (known?.id) this.id = known.id;
        await this.save();
      }
      this.state = "uploading";
      if (this.id) this._created.resolve(this.id);
      await this.client.transfer(this);
      this.state = "complete";
      this.offset = this.total;
      this.emitProgress();
      await this.client.store.delete("uploads", this.hash).catch(() => {});
      this._created.resolve(this.id);
      this._done.resolve(this.id);
      this.dispatchEvent(new CustomEvent("done", { detail: { uploadId: this.id } }));
    } catch (e) {
      this.state = this.canceled ? "canceled" : "failed";
      this._created.reject(e);
      this._done.reject(e);
      this.dispatchEvent(new CustomEvent("error", { detail: { error: e } }));
    } finally {
      this.client.uploads.delete(this);
    }
  }

  async prepare() {
    const f = this.file;
    let out = null;
    if (this.preset !== "original" && isPreparable(f.type)) {
      try {
        out = await this.client.preparer.prepare(f, this.preset);
      } catch (e) {
        this.client.log("image preparation failed, sending the original: " + (e.code || e.message));
      }
    }
    const kept = !out || out.blob.size >= f.size;
    this.blob = kept ? f : out.blob;
    this.prepared = {
      size: this.blob.size,
      type: this.blob.type || f.type,
      width: out?.width,
      height: out?.height,
      variant: out?.variant,
      kept,
    };
    this.dispatchEvent(new CustomEvent("prepared", { detail: { original: this.original, prepared: this.prepared } }));
  }

  save() {
    return this.client.store.put("uploads", {
      hash: this.hash,
      blob: this.blob,
      id: this.id,
      name: this.name,
      preset: this.preset,
      original: this.original,
      prepared: this.prepared,
      savedAt: Date.now(),
    });
  }

  setId(id) {
    if (this.id === id) return;
    this.id = id;
    this._created.resolve(id);
    this.save().catch(() => {});
  }

  emitProgress() {
    this.dispatchEvent(new CustomEvent("progress", { detail: { sent: this.offset, total: this.total, rate: this.rate } }));
  }

  /** Stops sending and forgets the upload (the server expires the partial upload). */
  cancel() {
    this.canceled = true;
    this.wake?.();
    this.client.store.delete("uploads", this.hash).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Job handle
// ---------------------------------------------------------------------------------------------

/**
 * One job; dispatches `event` (each job event once, in order), `position` (its queue place
 * whenever it changes, live), `snapshot`, `submitted`, `done`.
 */
export class Job extends EventTarget {
  constructor(client, spec, opts = {}) {
    super();
    this.client = client;
    this.key = spec.idempotency_key || newKey();
    this.spec = { ...spec, idempotency_key: this.key };
    this.early = opts.early ?? true;
    this.id = null;
    this.state = "submitting";
    this.snapshot = null;
    /** While queued: jobs ahead of it (0 = next) and why it waits; null otherwise. */
    this.position = null;
    this.reason = null;
    this._done = deferred();
    this.done = this._done.promise;
    this.finished = false;
    this.canceling = false;
  }
  get lastSeq() {
    return this.id ? this.client.tracker.lastSeq(this.id) : 0;
  }
  save() {
    const inputs = {};
    for (const [k, v] of Object.entries(this.spec.inputs || {})) {
      inputs[k] = v instanceof Upload ? (v.state === "complete" ? v.id : { $upload: v.hash }) : v;
    }
    return this.client.store.put("jobs", {
      key: this.key,
      spec: { ...this.spec, inputs: this.spec.inputs ? inputs : undefined },
      id: this.id,
      lastSeq: this.lastSeq,
      savedAt: Date.now(),
    });
  }
  /** Asks the server to cancel the job. */
  async cancel() {
    this.canceling = true;
    const id = this.id || (await this.client.whenSubmitted(this));
    return this.client.cancel(id);
  }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/**
 * The client. Options: `url` (gateway base, default this origin), `token`, and tuning knobs
 * documented in web/README.md. Dispatches `state` ({state}), `log` ({message}), `upload_progress`.
 */
export class Outlast extends EventTarget {
  constructor(opts = {}) {
    super();
    const base = opts.url || globalThis.location?.origin || "http://127.0.0.1:8080";
    this.base = new URL(base, globalThis.location?.href).href.replace(/\/$/, "");
    this.token = opts.token || null;
    this.opts = {
      connectTimeoutMs: 5000,
      backoffMinMs: 500,
      backoffMaxMs: 20000,
      wsFailuresBeforeFallback: 3,
      wsRetryMs: 30000,
      sseFailuresBeforePoll: 3,
      uploadStallMs: 30000,
      uploadPaceMs: 1000,
      wasm: "auto",
      storeName: "outlast",
      ...opts,
    };
    this.store = new Store(this.opts.storeName, opts.indexedDB ?? globalThis.indexedDB);
    this.preparer = new Preparer(this.opts.wasm);
    this.tracker = new StreamTracker();
    this.places = new QueuePlaces();
    this.backoff = new Backoff(this.opts.backoffMinMs, this.opts.backoffMaxMs);
    this.jobs = new Map(); // key -> Job
    this.byId = new Map(); // job id -> Job
    this.uploads = new Set();
    this.pendingReq = new Map(); // req -> {resolve, reject, msg}
    this.reqSeq = 1;
    this.mode = "ws"; // ws | sse | poll
    this.state = null;
    this.ws = null;
    this.welcome = null;
    this.wsFailures = 0;
    this.sseFailures = 0;
    this.httpStreams = new Map(); // job id -> {close()}
    this.limits = null;
    this.uploadWaiters = new Map(); // upload id -> {onStatus, onAck, onError}
    this.stateWaiters = [];
    this.closed = false;
    this.timers = { reconnect: null, connect: null, watchdog: null, wsRetry: null };
    this.onLifecycle = this.onLifecycle.bind(this);
    if (globalThis.addEventListener) {
      for (const ev of ["online", "offline", "pageshow", "focus"]) globalThis.addEventListener(ev, this.onLifecycle);
      globalThis.document?.addEventListener("visibilitychange", this.onLifecycle);
      globalThis.document?.addEventListener("resume", this.onLifecycle);
    }
    this.connect();
  }

  // ---- public API ----

  /** Uploads a File/Blob (images prepared per `prepare`); returns an Upload handle. */
  upload(file, opts = {}) {
    const u = new Upload(this, file, opts);
    this.uploads.add(u);
    u.run(null);
    return u;
  }

  /**
   * Submits a job; `spec.inputs` values may be Upload handles. Returns a Job handle. With
   * `early` (default true) a job naming a running upload is submitted as soon as the upload
   * exists; a server answering `input_not_ready` makes it wait for the upload instead.
   */
  submit(spec, opts = {}) {
    const job = new Job(this, spec, opts);
    this.jobs.set(job.key, job);
    this.runJob(job, false);
    return job;
  }

  /** Re-attaches the uploads and jobs this browser had in flight before a reload. */
  async restore() {
    const uploads = [];
    const jobs = [];
    const byHash = new Map();
    for (const rec of await this.store.all("uploads")) {
      if (!rec.blob) continue;
      let u = [...this.uploads].find((x) => x.hash === rec.hash);
      if (!u) {
        u = new Upload(this, null, {});
        this.uploads.add(u);
        u.restored = true;
        u.run(rec);
      }
      byHash.set(rec.hash, u);
      uploads.push(u);
    }
    for (const rec of await this.store.all("jobs")) {
      if (this.jobs.has(rec.key)) continue;
      const inputs = {};
      let missing = false;
      for (const [k, v] of Object.entries(rec.spec.inputs || {})) {
        if (v && typeof v === "object" && v.$upload) {
          const u = byHash.get(v.$upload);
          if (!u) missing = true;
          inputs[k] = u || v;
        } else inputs[k] = v;
      }
      if (missing && !rec.id) {
        await this.store.delete("jobs", rec.key);
        continue;
      }
      const job = new Job(this, { ...rec.spec, inputs: rec.spec.inputs ? inputs : undefined });
      job.restored = true;
      this.jobs.set(job.key, job);
      if (rec.id) {
        job.id = rec.id;
        this.byId.set(rec.id, job);
        this.tracker.set(rec.id, rec.lastSeq || 0);
      }
      jobs.push(job);
      this.runJob(job, true);
    }
    return { uploads, jobs };
  }

  /** The job's snapshot over HTTP, with output URLs. */
  async getJob(id) {
    return this.withOutputUrls(await this.http("GET", "/v1/jobs/" + id));
  }

  /** Cancels a job by id. */
  async cancel(id) {
    return this.http("DELETE", "/v1/jobs/" + id);
  }

  /** The URL of a job output (with a token set, fetch it with `http(..., {raw: true})`, or add a ticket: see `withTicket`). */
  outputUrl(jobId, name) {
    return this.url("/v1/jobs/" + jobId + "/outputs/" + encodeURIComponent(name));
  }

  /** Which wasm build the image worker uses: "simd" or "nosimd". */
  wasmVariant() {
    return this.preparer.variant();
  }

  /** Drops the WebSocket now (a test hook and the demo page's "drop connection" button). */
  dropConnection() {
    if (this.ws) this.ws.close();
  }

  /** Stops everything (listeners, sockets, streams); state stays in IndexedDB. */
  close() {
    this.closed = true;
    for (const t of Object.values(this.timers)) clearTimeout(t);
    for (const ev of ["online", "offline", "pageshow", "focus"]) globalThis.removeEventListener?.(ev, this.onLifecycle);
    globalThis.document?.removeEventListener("visibilitychange", this.onLifecycle);
    this.ws?.close(1000);
    for (const s of this.httpStreams.values()) s.close();
  }

  // ---- logging and state ----

  log(message) {
    this.dispatchEvent(new CustomEvent("log", { detail: { message, at: Date.now() } }));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, mode: this.mode } }));
    const w = this.stateWaiters;
    this.stateWaiters = [];
    for (const f of w) f();
  }

  /** Resolves on the next state change (or after `ms`). */
  changed(ms) {
    return new Promise((resolve) => {
      this.stateWaiters.push(resolve);
      if (ms) setTimeout(resolve, ms);
    });
  }

  online() {
    return globalThis.navigator?.onLine !== false;
  }

  wsOpen() {
    return this.mode === "ws" && this.ws && this.ws.readyState === 1 && this.welcome;
  }

  /** Waits until the client can talk to the server (WebSocket open or an HTTP mode). */
  async ready() {
    while (!this.closed) {
      if (this.online() && (this.wsOpen() || this.mode !== "ws")) return;
      await this.changed(1000);
    }
    throw new Error("client closed");
  }

  /** A delay for retries: backoff, and while offline until `online` fires. */
  async retryPause(backoff) {
    await sleep(backoff.next());
    while (!this.online() && !this.closed) await this.changed(5000);
  }

  onLifecycle(e) {
    if (this.closed) return;
    if (e.type === "offline") {
      this.setState("offline");
      return;
    }
    if (e.type === "visibilitychange" && document.visibilityState !== "visible") return;
    if (e.type === "pageshow" && !e.persisted) return;
    if (e.type === "focus" && this.ws && this.ws.readyState === 1) return;
    // Back online, visible again or restored from the back/forward cache: the socket may be
    // dead without a close event. Probe at once instead of waiting for the watchdog.
    this.log("lifecycle " + e.type + ": reconnecting now");
    if (this.mode === "ws") {
      if (this.ws && this.ws.readyState === 1 && this.welcome && e.type !== "online") {
        this.armWatchdog(Math.min(this.opts.connectTimeoutMs, 3000));
        this.send({ type: "ping", nonce: Date.now() });
      } else {
        this.reconnectNow();
      }
    } else {
      this.setState(this.mode === "sse" ? "sse" : "polling");
      for (const job of this.byId.values()) if (!job.finished) this.follow(job);
      this.tryWebSocketLater(0);
    }
  }

  // ---- WebSocket ----

  url(path) {
    return new URL(this.base + path).href;
  }

  /**
   * Credentials where no header can be set: with a token, `then(auth)` gets a fresh single-use
   * ticket from POST /v1/tickets (the token itself travels only in the Authorization header):
   * `auth.protocols` for a WebSocket (`outlast.ticket.<t>`; the server echoes only
   * `outlast.v1.json`), `auth.url(path)` adds `?ticket=` for EventSource and outputs. Without a
   * token `then` runs at once. A refused token (401/403) is final: state `unauthorized`, an
   * `error` event with the HttpError, no reconnect loop; other failures go to `retry`.
   */
  withTicket(then, retry) {
    const plain = { protocols: ["outlast.v1.json"], url: (path) => this.url(path) };
    if (!this.token) return then(plain);
    this.http("POST", "/v1/tickets").then(
      (t) => then({
        protocols: ["outlast.v1.json", t.protocol],
        url: (path) => {
          const u = new URL(this.base + path);
          u.searchParams.set("ticket", t.ticket);
          return u.href;
        },
      }),
      (e) => {
        if (e.status === 401 || e.status === 403) {
          this.log("credential refused: " + (e.code || e.status) + " " + (e.message || ""));
          this.setState("unauthorized");
          this.dispatchEvent(new CustomEvent("error", { detail: { error: e } }));
        } else retry(e);
      },
    );
  }

  /** Replaces the token; an open WebSocket is refreshed in band (`refresh`), not reconnected. */
  setToken(token) {
    this.token = token || null;
    if (this.token && this.ws && this.welcome) this.ws.send(JSON.stringify({ type: "refresh", token: this.token }));
  }

  connect(auth) {
    if (this.closed) return;
    if (!auth) return this.withTicket((a) => this.connect(a), () => this.wsFailed());
    clearTimeout(this.timers.reconnect);
    if (!this.online()) {
      this.setState("offline");
      this.timers.reconnect = setTimeout(() => this.connect(), 5000);
      return;
    }
    if (this.mode === "ws") this.setState(this.state === null || this.state === "connecting" ? "connecting" : "reconnecting");
    const u = new URL(this.url("/v1/ws"));
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(u.href, auth.protocols);
    } catch (e) {
      this.log("WebSocket failed: " + e.message);
      this.wsFailed();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.welcome = null;
    // No `welcome` within the connect timeout: a hung handshake (iOS airplane mode, a proxy
    // that swallows the upgrade). Give up on this socket.
    clearTimeout(this.timers.connect);
    this.timers.connect = setTimeout(() => {
      if (this.ws === ws && !this.welcome) {
        this.log("connect timeout");
        this.dropSocket(ws);
      }
    }, this.opts.connectTimeoutMs);
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      if (typeof ev.data !== "string") return;
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.armWatchdog();
      this.onMessage(m);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.log("WebSocket closed (" + ev.code + ")");
      this.dropSocket(ws);
    };
    ws.onerror = () => {};
  }

  /** Forgets `ws` and schedules what comes next. */
  dropSocket(ws) {
    if (this.ws !== ws) return;
    this.ws = null;
    const hadWelcome = !!this.welcome;
    this.welcome = null;
    clearTimeout(this.timers.connect);
    clearTimeout(this.timers.watchdog);
    ws.onclose = ws.onmessage = null;
    try {
      ws.close();
    } catch {
      /* already closed */
    }
    for (const w of this.uploadWaiters.values()) w.onError(new Error("connection lost"));
    for (const [req, p] of this.pendingReq) {
      this.pendingReq.delete(req);
      p.reject(Object.assign(new Error("connection lost"), { lost: true }));
    }
    if (this.closed) return;
    if (this.mode !== "ws") {
      this.tryWebSocketLater();
      return;
    }
    if (!hadWelcome) this.wsFailed();
    else this.scheduleReconnect();
  }

  wsFailed() {
    this.wsFailures += 1;
    if (this.mode === "ws" && this.wsFailures >= this.opts.wsFailuresBeforeFallback) {
      this.fallback("sse");
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.closed) return;
    this.setState(this.online() ? "reconnecting" : "offline");
    const d = this.backoff.next();
    this.timers.reconnect = setTimeout(() => this.connect(), d);
  }

  reconnectNow() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.welcome = null;
      ws.onclose = ws.onmessage = null;
      try {
        ws.close();
      } catch {
        /* gone */
      }
      for (const w of this.uploadWaiters.values()) w.onError(new Error("connection lost"));
      for (const [req, p] of this.pendingReq) {
        this.pendingReq.delete(req);
        p.reject(Object.assign(new Error("connection lost"), { lost: true }));
      }
    }
    this.backoff.reset();
    this.connect();
  }

  armWatchdog(ms) {
    clearTimeout(this.timers.watchdog);
    const hb = this.welcome?.heartbeat_ms;
    if (!hb && !ms) return;
    // Two missed heartbeats (plus slack) = a dead link: browsers cannot see pings.
    const limit = ms ?? 2 * hb + 2000;
    const ws = this.ws;
    this.timers.watchdog = setTimeout(() => {
      if (this.ws === ws && ws) {
        this.log("no heartbeat: the link is dead");
        this.dropSocket(ws);
      }
    }, limit);
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Sends a request over the WebSocket; resolves with its answer (rejects on `error`). */
  request(msg) {
    const r = this.reqSeq++;
    return new Promise((resolve, reject) => {
      if (!this.wsOpen()) return reject(Object.assign(new Error("not connected"), { lost: true }));
      this.pendingReq.set(r, { resolve, reject });
      this.send({ ...msg, req: r });
    });
  }

  onMessage(m) {
    if (m.type === "welcome") {
      this.welcome = m;
      clearTimeout(this.timers.connect);
      this.wsFailures = 0;
      this.backoff.reset();
      this.armWatchdog();
      if (this.mode !== "ws") this.leaveFallback();
      this.setState("open");
      this.resubscribeAll();
      return;
    }
    if (m.req !== undefined && m.req !== null && this.pendingReq.has(m.req)) {
      const p = this.pendingReq.get(m.req);
      this.pendingReq.delete(m.req);
      if (m.type === "error") p.reject(Object.assign(new Error(m.message), { code: m.code }));
      else p.resolve(m);
      if (m.type !== "upload_status") return;
    }
    switch (m.type) {
      case "heartbeat":
        for (const id of this.tracker.behind(m.jobs)) {
          const job = this.byId.get(id);
          if (job) this.subscribe(job);
        }
        return;
      case "subscribed": {
        const job = this.byId.get(m.job_id);
        if (job && !m.recovered && m.snapshot) this.onSnapshot(job, m.snapshot);
        return;
      }
      case "position":
        this.onPosition(m);
        return;
      case "upload_ack":
        this.uploadWaiters.get(m.upload_id)?.onAck(m);
        return;
      case "upload_progress":
        this.dispatchEvent(new CustomEvent("upload_progress", { detail: m }));
        return;
      case "error":
        if (m.code === "offset_mismatch") for (const w of this.uploadWaiters.values()) w.onError(Object.assign(new Error(m.message), { code: m.code }));
        else this.log("server error " + m.code + ": " + m.message);
        return;
      case "goaway":
        this.log("server going away: " + m.reason);
        return;
      case "upload_status":
      case "submitted":
      case "unsubscribed":
      case "cancel_result":
      case "snapshot":
      case "pong":
        return;
    }
    if (m.job_id && EVENT_TYPES.includes(m.type)) this.onEvent(m);
  }

  resubscribeAll() {
    for (const job of this.byId.values()) if (!job.finished) this.subscribe(job);
  }

  subscribe(job) {
    const after = this.tracker.lastSeq(job.id);
    const msg = { type: "subscribe", job_id: job.id };
    if (after > 0) msg.after = after;
    this.send(msg);
  }

  // ---- fallbacks ----

  fallback(mode) {
    if (this.mode === mode) return;
    this.log("WebSocket unavailable: falling back to " + (mode === "sse" ? "SSE" : "long-polling"));
    this.mode = mode;
    this.setState(mode === "sse" ? "sse" : "polling");
    for (const job of this.byId.values()) if (!job.finished) this.follow(job);
    this.tryWebSocketLater();
  }

  tryWebSocketLater(ms = this.opts.wsRetryMs) {
    clearTimeout(this.timers.wsRetry);
    if (this.closed) return;
    this.timers.wsRetry = setTimeout(() => {
      if (this.mode !== "ws" && !this.ws) this.connect();
    }, ms);
  }

  leaveFallback() {
    this.log("WebSocket works again");
    this.mode = "ws";
    this.sseFailures = 0;
    clearTimeout(this.timers.wsRetry);
    for (const s of this.httpStreams.values()) s.close();
    this.httpStreams.clear();
  }

  /** Follows a job over SSE or long-poll (HTTP modes). */
  follow(job) {
    if (this.mode === "ws" || job.finished || !job.id) return;
    this.httpStreams.get(job.id)?.close();
    if (this.mode === "sse" && typeof EventSource === "function") this.followSse(job);
    else this.followPoll(job);
  }

  followSse(job, auth) {
    if (!auth) return this.withTicket((a) => this.followSse(job, a), () => setTimeout(() => this.follow(job), this.backoff.next()));
    const after = this.tracker.lastSeq(job.id);
    const es = new EventSource(auth.url("/v1/jobs/" + job.id + "/events" + (after ? "?after=" + after : "")));
    let got = false;
    const stream = { close: () => es.close() };
    this.httpStreams.set(job.id, stream);
    const onData = (e) => {
      got = true;
      this.sseFailures = 0;
      let d;
      try {
        d = JSON.parse(e.data);
      } catch {
        return;
      }
      if (e.type === "snapshot") this.onSnapshot(job, d);
      else if (e.type === "position") this.onPosition(d);
      else this.onEvent(d);
      if (job.finished) {
        es.close();
        this.httpStreams.delete(job.id);
      }
    };
    for (const t of [...EVENT_TYPES, "snapshot", "position"]) es.addEventListener(t, onData);
    es.onerror = () => {
      if (job.finished) return es.close();
      if (!got) this.sseFailures += 1;
      if (es.readyState === 2 || this.sseFailures >= this.opts.sseFailuresBeforePoll) {
        es.close();
        if (this.httpStreams.get(job.id) !== stream) return;
        this.httpStreams.delete(job.id);
        if (this.mode === "sse" && this.sseFailures >= this.opts.sseFailuresBeforePoll) {
          this.log("SSE does not get through: long-polling");
          this.mode = "poll";
          this.setState("polling");
          for (const j of this.byId.values()) if (!j.finished) this.follow(j);
        } else {
          setTimeout(() => this.follow(job), this.backoff.next());
        }
      }
    };
  }

  followPoll(job) {
    const ctl = new AbortController();
    const stream = { close: () => ctl.abort() };
    this.httpStreams.set(job.id, stream);
    const backoff = new Backoff(this.opts.backoffMinMs, this.opts.backoffMaxMs);
    (async () => {
      while (!ctl.signal.aborted && !job.finished && !this.closed) {
        try {
          const after = this.tracker.lastSeq(job.id);
          const r = await this.http("GET", "/v1/jobs/" + job.id + "/poll?after=" + after + "&timeout_ms=25000", undefined, { signal: ctl.signal });
          backoff.reset();
          if (!r.recovered && r.snapshot) this.onSnapshot(job, r.snapshot);
          for (const ev of r.events || []) this.onEvent(ev);
          if (r.state === "queued" && typeof r.position === "number") {
            this.onPosition({ job_id: job.id, position: r.position, reason: r.queue_reason });
          }
          if (r.done && !job.finished) await this.finish(job);
        } catch (e) {
          if (ctl.signal.aborted) break;
          this.log("poll failed: " + e.message);
          await this.retryPause(backoff);
        }
      }
      if (this.httpStreams.get(job.id) === stream) this.httpStreams.delete(job.id);
    })();
  }

  // ---- HTTP ----

  async http(method, path, body, extra = {}) {
    const headers = { ...(extra.headers || {}) };
    if (this.token) headers.Authorization = "Bearer " + this.token;
    if (body !== undefined && !(body instanceof Blob)) headers["Content-Type"] = "application/json";
    const r = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : body instanceof Blob ? body : JSON.stringify(body),
      signal: extra.signal,
      cache: "no-store",
    });
    if (extra.raw) return r;
    if (!r.ok) {
      let code, message;
      try {
        ({ code, message } = await r.json());
      } catch {
        /* not JSON */
      }
      throw new HttpError(r.status, code, message);
    }
    if (r.status === 204) return null;
    return r.json();
  }

  withOutputUrls(snap) {
    if (!snap) return snap;
    return { ...snap, outputs: (snap.outputs || []).map((o) => ({ ...o, url: this.outputUrl(snap.job_id, o.name) })) };
  }

  // ---- jobs ----

  whenSubmitted(job) {
    return new Promise((resolve) => {
      if (job.id) return resolve(job.id);
      job.addEventListener("submitted", () => resolve(job.id), { once: true });
    });
  }

  /** Submits (if needed) then follows the job until its terminal event. */
  async runJob(job, restored) {
    try {
      if (!job.id) {
        await this.submitJob(job);
      } else {
        await this.attach(job);
      }
    } catch (e) {
      job.finished = true;
      job.state = "failed";
      await this.store.delete("jobs", job.key).catch(() => {});
      job._done.reject(e);
      job.dispatchEvent(new CustomEvent("error", { detail: { error: e } }));
      this.log("job " + (job.id || job.key) + ": " + (e.code || e.message));
    }
    void restored;
  }

  async resolveInputs(job, waitAll) {
    const out = {};
    for (const [k, v] of Object.entries(job.spec.inputs || {})) {
      if (v instanceof Upload) out[k] = waitAll ? await v.done : await v.created;
      else out[k] = v;
    }
    return job.spec.inputs ? out : undefined;
  }

  async submitJob(job) {
    let waitAll = !job.early;
    const backoff = new Backoff(this.opts.backoffMinMs, this.opts.backoffMaxMs);
    for (;;) {
      const inputs = await this.resolveInputs(job, waitAll);
      // Saved once the inputs' uploads exist (their content hash is known), so restore()
      // can link the job to the same upload after a reload.
      await job.save();
      const body = { ...job.spec };
      if (inputs) body.inputs = inputs;
      else delete body.inputs;
      try {
        await this.ready();
        let ans;
        if (this.wsOpen()) {
          const m = await this.request({ type: "submit", job: body });
          ans = { job_id: m.job_id, created: m.created };
        } else {
          ans = await this.http("POST", "/v1/jobs", body, { headers: { "Idempotency-Key": job.key } });
        }
        this.onSubmitted(job, ans);
        return;
      } catch (e) {
        if (e.code === "input_not_ready") {
          // The gateway does not (yet) take jobs for running uploads: wait for them.
          this.log("job waits for its upload to finish");
          waitAll = true;
          continue;
        }
        // The answer was lost (connection cut, network error): resubmit with the same key.
        if (e.lost || e instanceof TypeError || (e.status && e.status >= 500) || e.status === 429) {
          await this.retryPause(backoff);
          continue;
        }
        throw e;
      }
    }
  }

  async onSubmitted(job, ans) {
    job.id = ans.job_id;
    job.state = "submitted";
    this.byId.set(job.id, job);
    this.tracker.set(job.id, 0);
    await job.save().catch(() => {});
    job.dispatchEvent(new CustomEvent("submitted", { detail: { jobId: job.id, created: ans.created } }));
    this.attach(job);
  }

  /** Follows a submitted job on the current transport. */
  async attach(job) {
    this.byId.set(job.id, job);
    if (this.wsOpen()) this.subscribe(job);
    else if (this.mode !== "ws") this.follow(job);
    // otherwise `welcome` resubscribes every job
  }

  onSnapshot(job, snap) {
    this.tracker.set(job.id, snap.seq);
    job.snapshot = this.withOutputUrls(snap);
    job.state = snap.state;
    job.dispatchEvent(new CustomEvent("snapshot", { detail: job.snapshot }));
    this.showPlace(job, this.places.onSnapshot(snap));
    job.save().catch(() => {});
    if (TERMINAL.has(snap.state)) this.finish(job);
  }

  onEvent(ev) {
    const job = this.byId.get(ev.job_id);
    if (!job || !this.tracker.accept(ev)) return;
    if (ev.type === "output") ev = { ...ev, url: this.outputUrl(ev.job_id, ev.name) };
    job.state = TERMINAL.has(ev.type) ? ev.type : ev.type === "queued" ? "queued" : "running";
    job.dispatchEvent(new CustomEvent("event", { detail: ev }));
    this.showPlace(job, this.places.onEvent(ev));
    if (TERMINAL.has(ev.type)) this.finish(job);
    else if (ev.type !== "progress" || ev.value === ev.max) job.save().catch(() => {});
    else this.saveLater(job);
  }

  /** A live `position` message (WebSocket, SSE) or a long-poll answer's place. */
  onPosition(m) {
    const job = this.byId.get(m.job_id);
    if (!job || job.finished) return;
    this.showPlace(job, this.places.onPosition(m));
  }

  /** Updates `job.position`/`job.reason`; a new place is dispatched as `position`. */
  showPlace(job, place) {
    if (place === undefined) return;
    job.position = place ? place.position : null;
    job.reason = place ? place.reason : null;
    if (!place) return;
    if (job.state === "submitted" || job.state === "submitting") job.state = "queued";
    job.dispatchEvent(new CustomEvent("position", { detail: { jobId: job.id, position: place.position, reason: place.reason } }));
  }

  saveLater(job) {
    if (job.saveTimer) return;
    job.saveTimer = setTimeout(() => {
      job.saveTimer = null;
      job.save().catch(() => {});
    }, 500);
  }

  async finish(job) {
    if (job.finished) return;
    job.finished = true;
    this.httpStreams.get(job.id)?.close();
    this.httpStreams.delete(job.id);
    const backoff = new Backoff(this.opts.backoffMinMs, this.opts.backoffMaxMs);
    let snap;
    for (let i = 0; !this.closed; i++) {
      try {
        snap = await this.getJob(job.id);
        break;
      } catch (e) {
        if (e.status === 404) break;
        await this.retryPause(backoff);
      }
    }
    clearTimeout(job.saveTimer);
    await this.store.delete("jobs", job.key).catch(() => {});
    job.snapshot = snap || job.snapshot;
    job._done.resolve(job.snapshot);
    job.dispatchEvent(new CustomEvent("done", { detail: job.snapshot }));
  }

  // ---- uploads ----

  /** Sends an upload's bytes until the server has them all; never gives up while wanted. */
  async transfer(u) {
    const backoff = new Backoff(this.opts.backoffMinMs, this.opts.backoffMaxMs);
    while (!u.canceled) {
      try {
        await this.ready();
        const done = this.wsOpen() ? await this.transferWs(u) : await this.transferTus(u);
        if (done) return;
        backoff.reset();
      } catch (e) {
        if (u.canceled) break;
        if (e.fatal) throw e;
        if (e.status === 404 || e.status === 410) {
          // The server forgot the partial upload (expired): start a new one, same bytes.
          this.log("upload " + u.id + " is gone on the server; starting again");
          u.id = null;
          u.offset = 0;
          await u.save().catch(() => {});
        } else if (e.code !== "offset_mismatch") {
          this.log("upload " + (u.id || u.name) + ": " + (e.code || e.message) + "; retrying");
          await Promise.race([this.retryPause(backoff), new Promise((r) => (u.wake = r))]);
        }
      }
    }
    throw Object.assign(new Error("upload canceled"), { code: "canceled" });
  }

  async transferWs(u) {
    let status;
    if (u.id) status = await this.request({ type: "upload_resume", upload_id: u.id });
    else {
      status = await this.request({
        type: "upload_create",
        length: u.total,
        metadata: { filename: u.name, filetype: u.blob.type || "application/octet-stream" },
        sha256: u.hash,
      });
      u.setId(status.upload.upload_id);
    }
    this.limits = status.limits;
    const info = status.upload;
    if (info.state === "failed") throw Object.assign(new Error(info.error || "upload failed on the server"), { fatal: true, code: "upload_failed" });
    u.offset = info.offset;
    u.emitProgress();
    if (status.deduplicated || info.state === "complete") return true;
    const lim = status.limits;
    // Chunks of about a quarter of the pace (so several fit the window), and never more than
    // the server's target duration.
    const paceMs = this.opts.uploadPaceMs;
    const targetMs = Math.min(lim.target_chunk_ms, Math.max(paceMs / 4, 1));
    const sizer = u.wsSizer || (u.wsSizer = new ChunkSizer(64 << 10, lim.max_chunk_bytes - 64, targetMs));
    const pacer = new AckPacer(paceMs, lim.window_bytes);
    pacer.start(u.offset, performance.now(), u.rate);
    const ws = this.ws;
    const id = u.id;
    return new Promise((resolve, reject) => {
      let sent = u.offset;
      let acked = u.offset;
      const inflight = []; // [{end, at}]
      let lastAckAt = performance.now();
      let busy = false;
      const stall = setInterval(() => {
        if (performance.now() - lastAckAt > this.opts.uploadStallMs) finish(new Error("upload stalled"));
      }, 1000);
      const finish = (err, ok) => {
        clearInterval(stall);
        if (this.uploadWaiters.get(id) === waiter) this.uploadWaiters.delete(id);
        if (err) reject(err);
        else resolve(ok);
      };
      const pump = async () => {
        if (busy) return;
        busy = true;
        try {
          while (sent < u.total && this.ws === ws && !u.canceled && this.online()) {
            const n = Math.min(sizer.next(), u.total - sent, lim.window_bytes);
            // A whole chunk fits the paced window, or nothing is in flight.
            if (sent > acked && sent - acked + n > pacer.window(n)) break;
            const data = new Uint8Array(await u.blob.slice(sent, sent + n).arrayBuffer());
            if (this.ws !== ws || ws.readyState !== 1) break;
            const frame = new Uint8Array(25 + data.length);
            frame.set(chunkHeader(id, sent), 0);
            frame.set(data, 25);
            ws.send(frame);
            sent += n;
            inflight.push({ start: sent - n, end: sent, at: performance.now() });
          }
        } catch (e) {
          finish(e);
        } finally {
          busy = false;
        }
        if (u.canceled) finish(new Error("canceled"));
      };
      const waiter = {
        onAck: (m) => {
          const now = performance.now();
          if (m.offset > acked) {
            // Rate from what this ack covers, since the later of the last ack and its send.
            const first = inflight.find((c) => c.end > acked);
            const since = Math.max(lastAckAt, first ? first.at : lastAckAt);
            const bytes = m.offset - acked;
            sizer.record(bytes, now - since);
            const inst = (bytes / Math.max(now - since, 1)) * 1000;
            u.rate = u.rate ? 0.7 * u.rate + 0.3 * inst : inst;
            acked = m.offset;
            lastAckAt = now;
            pacer.ack(acked, now);
            while (inflight.length && inflight[0].end <= acked) inflight.shift();
          }
          u.offset = m.offset;
          u.emitProgress();
          if (m.complete) return finish(null, true);
          pump();
        },
        onError: (e) => finish(e),
      };
      this.uploadWaiters.set(id, waiter);
      pump();
    });
  }

  async transferTus(u) {
    const tus = { "Tus-Resumable": "1.0.0" };
    if (!u.id) {
      const r = await this.http("POST", "/v1/uploads", undefined, {
        raw: true,
        headers: {
          ...tus,
          "Upload-Length": String(u.total),
          "Upload-Metadata": tusMetadata({ filename: u.name, filetype: u.blob.type || "application/octet-stream", sha256: u.hash }),
        },
      });
      if (r.status !== 201) throw new HttpError(r.status, "tus_create_failed");
      const loc = r.headers.get("Location") || "";
      u.setId(loc.slice(loc.lastIndexOf("/") + 1));
      if (r.headers.get("Outlast-Deduplicated") === "1") return true;
      u.offset = Number(r.headers.get("Upload-Offset") || 0);
    } else {
      const r = await this.http("HEAD", "/v1/uploads/" + u.id, undefined, { raw: true, headers: tus });
      if (!r.ok) throw new HttpError(r.status);
      u.offset = Number(r.headers.get("Upload-Offset") || 0);
      if (r.headers.get("Outlast-Upload-State") === "complete") return true;
      if (r.headers.get("Outlast-Upload-State") === "failed") throw Object.assign(new Error("upload failed on the server"), { fatal: true });
    }
    u.emitProgress();
    const max = Number(this.limits?.max_chunk_bytes || 64 << 20);
    const sizer = u.sizer || (u.sizer = new ChunkSizer(64 << 10, max - 64, this.limits?.target_chunk_ms || 5000));
    while (u.offset < u.total && !u.canceled) {
      if (this.wsOpen()) return false; // the WebSocket is back: continue there
      const n = Math.min(sizer.next(), u.total - u.offset);
      const t0 = performance.now();
      const r = await this.http("PATCH", "/v1/uploads/" + u.id, u.blob.slice(u.offset, u.offset + n), {
        raw: true,
        headers: { ...tus, "Upload-Offset": String(u.offset), "Content-Type": "application/offset+octet-stream" },
      });
      if (r.status === 409 || r.status === 423) {
        u.offset = Number(r.headers.get("Upload-Offset") || u.offset);
        await sleep(500);
        continue;
      }
      if (r.status !== 204) throw new HttpError(r.status, r.status === 460 ? "checksum_mismatch" : undefined);
      const el = performance.now() - t0;
      sizer.record(n, el);
      const inst = (n / Math.max(el, 1)) * 1000;
      u.rate = u.rate ? 0.7 * u.rate + 0.3 * inst : inst;
      u.offset = Number(r.headers.get("Upload-Offset"));
      u.emitProgress();
    }
    return u.offset >= u.total;
  }
}

export default Outlast;

// Unit tests of the browser client's pure parts (node --test web/test/): backoff, chunk sizing,
// stream tracking, queue places, chunk frame header, sha256, tus metadata and the IndexedDB
// store (with a small in-memory fake of the IndexedDB API).
import test from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { AckPacer, Backoff, ChunkSizer, Job, Outlast, QueuePlaces, StreamTracker, chunkHeader, Sha256, sha256Blob, tusMetadata, Store, isPreparable, newKey } from "../client/outlast.js";

test("backoff: full jitter between 0.5 s and 20 s, doubling, reset", () => {
  const b = new Backoff();
  assert.equal(b.next(0), 500);
  assert.equal(b.next(1), 1500); // min + span(1000)
  assert.equal(b.next(1), 2500);
  for (let i = 0; i < 40; i++) assert.ok(b.next(1) <= 20000);
  assert.equal(b.next(1), 20000);
  b.reset();
  assert.equal(b.next(0.5), 750); // the protocol crate's own test values
  const spread = new Set(Array.from({ length: 50 }, () => new Backoff().next()));
  assert.ok(spread.size > 40, "jitter spreads reconnects");
});

test("chunk sizer: starts small, at most doubles, shrinks at once, stays in bounds", () => {
  const s = new ChunkSizer(256 << 10, 64 << 20, 5000);
  assert.equal(s.next(), 256 << 10);
  s.record(256 << 10, 10); // very fast: capped at double
  assert.equal(s.next(), 512 << 10);
  s.record(512 << 10, 10);
  assert.equal(s.next(), 1 << 20);
  s.record(1 << 20, 100000); // very slow: shrinks at once to the floor
  assert.equal(s.next(), 256 << 10);
  for (let i = 0; i < 30; i++) s.record(s.next(), 1);
  assert.equal(s.next(), 64 << 20);
  const dsl = new ChunkSizer(64 << 10, 64 << 20, 5000);
  for (let i = 0; i < 20; i++) dsl.record(dsl.next(), (dsl.next() / 100000) * 1000); // 100 kB/s
  assert.ok(Math.abs(dsl.next() - 500000) < 2, "aims at target_ms at the measured rate: " + dsl.next());
});

test("stream tracker: every event once, in order, resumes from the last seq", () => {
  const t = new StreamTracker();
  const ev = (seq, job = "job_a") => ({ job_id: job, seq });
  assert.equal(t.lastSeq("job_a"), 0);
  assert.ok(t.accept(ev(1)));
  assert.ok(t.accept(ev(2)));
  assert.ok(!t.accept(ev(2)), "a repeat after a resubscribe is dropped");
  assert.ok(!t.accept(ev(1)));
  assert.ok(t.accept(ev(5)), "coalesced history may skip");
  assert.ok(t.accept(ev(1, "job_b")), "jobs are independent");
  assert.equal(t.lastSeq("job_a"), 5);
  t.set("job_a", 3);
  assert.equal(t.lastSeq("job_a"), 5, "set never moves backwards");
  t.set("job_c", 9);
  assert.deepEqual(t.behind({ job_a: 7, job_b: 1, job_c: 9, job_x: 4 }), ["job_a"]);
});

test("queue places: stored entry, live moves, snapshots; stale and repeated places change nothing", () => {
  const p = new QueuePlaces();
  const job = "job_a";
  assert.deepEqual(p.onEvent({ job_id: job, seq: 1, type: "queued", position: 4 }), { position: 4, reason: null });
  assert.equal(p.onPosition({ job_id: job, position: 4 }), undefined, "the same place again: no change");
  assert.deepEqual(p.onPosition({ job_id: job, position: 2 }), { position: 2, reason: null });
  assert.deepEqual(p.onPosition({ job_id: job, position: 2, reason: "no ComfyUI server is reachable" }), { position: 2, reason: "no ComfyUI server is reachable" });
  assert.equal(p.onEvent({ job_id: job, seq: 2, type: "progress", value: 1, max: 2 }), undefined);
  assert.equal(p.onEvent({ job_id: job, seq: 3, type: "started", attempt: 1 }), null, "left the queue");
  assert.equal(p.get(job), null);
  assert.equal(p.onPosition({ job_id: job, position: 0 }), undefined, "a place after started is stale");
  // A restart queues it again (stored, with a reason): live places count again.
  assert.deepEqual(p.onEvent({ job_id: job, seq: 4, type: "queued", position: 0, reason: "restarted" }), { position: 0, reason: "restarted" });
  assert.deepEqual(p.onPosition({ job_id: job, position: 1 }), { position: 1, reason: null });
  // Snapshots: the live place while queued, none after.
  const snap = { job_id: "job_b", state: "queued", seq: 1, position: 3, queue_reason: "waiting for input upl_x" };
  assert.deepEqual(p.onSnapshot(snap), { position: 3, reason: "waiting for input upl_x" });
  assert.equal(p.onSnapshot(snap), undefined);
  assert.equal(p.onSnapshot({ ...snap, state: "completed", position: undefined }), null);
  assert.equal(p.onPosition({ job_id: "job_b", position: 9 }), undefined, "finished: stale");
  assert.equal(p.onPosition({ job_id: "job_c", position: "x" }), undefined, "not a position");
});

test("client: live position messages, SSE/poll places and stored queued events reach job.position and its `position` event", () => {
  // The client's message routing without a socket: only what onMessage/onEvent touch.
  const client = Object.create(Outlast.prototype);
  Object.assign(client, {
    byId: new Map(),
    pendingReq: new Map(),
    tracker: new StreamTracker(),
    places: new QueuePlaces(),
    store: { put: async () => {}, delete: async () => {} },
    outputUrl: (id, name) => "/v1/jobs/" + id + "/outputs/" + name,
    log: () => {},
  });
  const job = new Job(client, { backend: "demo" });
  job.id = "job_0123456789abcdef0123456789abcdef";
  job.state = "submitted";
  client.byId.set(job.id, job);
  const seen = [];
  job.addEventListener("position", (e) => seen.push([e.detail.position, e.detail.reason]));
  client.onMessage({ type: "queued", job_id: job.id, seq: 1, at_ms: 1, position: 5 });
  client.onMessage({ type: "position", job_id: job.id, position: 3 });
  client.onMessage({ type: "position", job_id: job.id, position: 3 });
  client.onMessage({ type: "position", job_id: "job_ffffffffffffffffffffffffffffffff", position: 0 });
  client.onPosition({ job_id: job.id, position: 1, reason: "waiting for input upl_y" });
  assert.deepEqual(seen, [[5, null], [3, null], [1, "waiting for input upl_y"]]);
  assert.equal(job.position, 1);
  assert.equal(job.reason, "waiting for input upl_y");
  assert.equal(job.state, "queued");
  assert.equal(client.tracker.lastSeq(job.id), 1, "a place is not an event: the resume point stays");
  client.onMessage({ type: "started", job_id: job.id, seq: 2, at_ms: 2, attempt: 1 });
  assert.equal(job.position, null);
  client.onMessage({ type: "position", job_id: job.id, position: 0 });
  assert.equal(seen.length, 3, "a stale place after started is not shown");
  assert.equal(job.state, "running");
});

test("chunk frame header: 0xC1, 16 id bytes, u64 big-endian offset", () => {
  const h = chunkHeader("upl_000102030405060708090a0b0c0d0e0f", 0x0102030405);
  assert.equal(h.length, 25);
  assert.equal(h[0], 0xc1);
  assert.deepEqual([...h.subarray(1, 17)], [...Array(16).keys()]);
  assert.deepEqual([...h.subarray(17)], [0, 0, 0, 1, 2, 3, 4, 5]);
  assert.throws(() => chunkHeader("job_000102030405060708090a0b0c0d0e0f", 0));
});

test("sha256: the JS digest equals node's for many sizes and split points", async () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 70000]) {
    const data = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 255);
    const want = createHash("sha256").update(data).digest("hex");
    assert.equal(new Sha256().update(data).hex(), want, "size " + n);
    const cut = Math.floor(n / 3);
    assert.equal(new Sha256().update(data.subarray(0, cut)).update(data.subarray(cut)).hex(), want, "split " + n);
    assert.equal(await sha256Blob(new Blob([data])), want);
  }
});

test("tus metadata, keys, preparable types", () => {
  assert.equal(tusMetadata({ filename: "ä.jpg", sha256: "ab" }), "filename " + Buffer.from("ä.jpg").toString("base64") + ",sha256 YWI=");
  const k = newKey();
  assert.match(k, /^ol-[0-9a-f]{32}$/);
  assert.notEqual(k, newKey());
  assert.ok(isPreparable("image/jpeg") && isPreparable("image/png") && isPreparable("image/webp"));
  assert.ok(!isPreparable("image/heic") && !isPreparable("audio/mpeg"));
});

// ---- a minimal in-memory IndexedDB: open/upgrade, transactions, put/get/getAll/delete ----
function fakeIndexedDB() {
  const dbs = new Map();
  const later = (f) => setTimeout(f, 0);
  const request = (fn) => {
    const r = { onsuccess: null, onerror: null };
    later(() => {
      try {
        r.result = fn();
        r.onsuccess?.();
      } catch (e) {
        r.error = e;
        r.onerror?.();
      }
    });
    return r;
  };
  const clone = (v) => structuredClone(v);
  class DB {
    constructor() {
      this.stores = new Map();
      this.objectStoreNames = { contains: (n) => this.stores.has(n) };
    }
    createObjectStore(name, { keyPath }) {
      this.stores.set(name, { keyPath, rows: new Map() });
    }
    transaction(names) {
      const tx = { oncomplete: null, onerror: null, onabort: null, pending: 0 };
      const done = () => later(() => tx.pending === 0 && tx.oncomplete?.());
      tx.objectStore = (n) => {
        const s = this.stores.get(n);
        const op = (fn) => {
          tx.pending++;
          const r = request(() => {
            const v = fn();
            tx.pending--;
            done();
            return v;
          });
          return r;
        };
        return {
          put: (v) => op(() => void s.rows.set(v[s.keyPath], clone(v))),
          get: (k) => op(() => clone(s.rows.get(k))),
          getAll: () => op(() => [...s.rows.values()].map(clone)),
          delete: (k) => op(() => void s.rows.delete(k)),
        };
      };
      void names;
      return tx;
    }
  }
  return {
    open(name) {
      const r = { onsuccess: null, onerror: null, onupgradeneeded: null };
      later(() => {
        let db = dbs.get(name);
        if (!db) {
          db = new DB();
          dbs.set(name, db);
          r.result = db;
          r.onupgradeneeded?.();
        }
        r.result = db;
        r.onsuccess?.();
      });
      return r;
    },
  };
}

test("store: uploads keyed by content hash (blob included) and jobs by key survive a new Store", async () => {
  const idb = fakeIndexedDB();
  const a = new Store("t", idb);
  await a.put("uploads", { hash: "h1", id: "upl_1", blob: new Uint8Array([1, 2, 3]), name: "a.jpg" });
  await a.put("jobs", { key: "k1", id: "job_1", lastSeq: 4, spec: { backend: "demo", inputs: { image: { $upload: "h1" } } } });
  await a.put("jobs", { key: "k1", id: "job_1", lastSeq: 7, spec: { backend: "demo" } });
  const b = new Store("t", idb); // "after a reload"
  assert.deepEqual([...(await b.get("uploads", "h1")).blob], [1, 2, 3]);
  assert.equal((await b.all("jobs")).length, 1);
  assert.equal((await b.get("jobs", "k1")).lastSeq, 7);
  await b.delete("uploads", "h1");
  assert.equal(await b.get("uploads", "h1"), undefined);
  const mem = new Store("m", undefined); // no IndexedDB at all: memory
  await mem.put("jobs", { key: "x", id: "job_x" });
  assert.equal((await mem.get("jobs", "x")).id, "job_x");
});

test("ack pacer: about paceMs of data in flight at the acknowledged rate, one chunk at least, the server's window at most", () => {
  const p = new AckPacer(1000, 16 << 20);
  p.start(0, 0);
  assert.equal(p.rate(), 0);
  assert.equal(p.window(64 << 10), 64 << 10, "before any ack: one chunk");
  // 200 kB/s of acknowledgements.
  for (let t = 100; t <= 2000; t += 100) p.ack(t * 200, t);
  assert.ok(Math.abs(p.rate() - 200000) < 1, "rate " + p.rate());
  assert.equal(p.window(64 << 10), 200000, "one second at 200 kB/s");
  assert.equal(p.window(300000), 300000, "never below one chunk");
  p.ack(400000, 2000); // a repeat or an older offset changes nothing
  assert.ok(Math.abs(p.rate() - 200000) < 1);
  // The link slows to 20 kB/s: the old samples age out of the 3 s span and the window shrinks.
  for (let t = 2100; t <= 8000; t += 100) p.ack(400000 + (t - 2000) * 20, t);
  assert.ok(Math.abs(p.rate() - 20000) < 1, "rate follows the link: " + p.rate());
  assert.equal(p.window(16 << 10), 20000);
  // A fast link is capped by the server's window.
  const f = new AckPacer(1000, 1 << 20);
  f.start(0, 0);
  f.ack(50 << 20, 1000);
  assert.equal(f.window(64 << 10), 1 << 20);
  // A seed from an earlier connection sizes the window before the first ack.
  const s = new AckPacer(500, 16 << 20);
  s.start(1000, 0, 100000);
  assert.equal(s.window(1024), 50000);
});

test("ack pacer: an early fast sample cannot open the window beyond twice what was acknowledged", () => {
  const p = new AckPacer(1000, 16 << 20);
  p.start(1000, 0);
  p.ack(1000 + 65536, 50); // 64 KiB in 50 ms looks like 1.3 MB/s
  assert.equal(p.window(65536), 131072);
  p.ack(1000 + 200000, 1000);
  assert.equal(p.window(65536), 200000, "then the rate decides (200 kB/s over 1 s)");
});

#!/usr/bin/env python3
"""Driver of bench.sh: a throttling TCP proxy, a fresh gateway per side, both uploaders, the ratio."""
import asyncio, glob, json, os, shutil, subprocess, sys, tempfile, time, urllib.request

root, work, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The build the binaries come from (bench.sh sets target/release with BENCH_RELEASE=1).
bins = os.environ.get("BENCH_BIN", os.path.join(root, "target/debug"))
photos = sorted(glob.glob(os.path.join(work, "photos", "*.jpg")))

class Bucket:
    """One token bucket for every connection: the line is shared."""
    def __init__(self, rate):
        self.rate, self.next = rate, time.monotonic()
    async def take(self, n):
        now = time.monotonic()
        start = max(self.next, now - 0.05)
        self.next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)

async def proxy(listen_port, target_port, bucket):
    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            cw.close(); return
        async def up():
            while (data := await cr.read(min(16384, max(1, rate // 20)))):
                await bucket.take(len(data)); sw.write(data); await sw.drain()
            sw.close()
        async def down():
            while (data := await sr.read(65536)):
                cw.write(data); await cw.drain()
            cw.close()
        await asyncio.gather(up(), down(), return_exceptions=True)
    return await asyncio.start_server(handle, "127.0.0.1", listen_port)

def gateway():
    data = tempfile.mkdtemp(prefix="olu-bench-gw-")
    p = subprocess.Popen([os.path.join(bins, "outlast"), "--listen", "127.0.0.1:0",
                          "--data-dir", os.path.join(data, "d"), "--demo-concurrency", "64"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return p, port, data

async def side(name, run):
    gw, port, data = gateway()
    bucket = Bucket(rate)
    server = await proxy(0, port, bucket)
    pport = server.sockets[0].getsockname()[1]
    try:
        t = await run(f"http://127.0.0.1:{pport}")
    finally:
        server.close(); gw.kill(); gw.wait(); shutil.rmtree(data, ignore_errors=True)
    print(f"{name}: last job started after {t:.1f} s", flush=True)
    return t

async def ours(url):
    out = tempfile.mkdtemp(prefix="olu-bench-out-")
    wf = os.path.join(out, "wf.json")
    open(wf, "w").write('{"steps": 1, "step_ms": 0}')
    t0 = time.monotonic()
    p = await asyncio.create_subprocess_exec(os.path.join(bins, "outlast-upload"),
        "--url", url, "--workflow", wf, "--out", out, "--json", "--fresh", "--no-wait",
        *photos, stdout=asyncio.subprocess.PIPE)
    last, sent, submitted = 0.0, 0, set()
    async for line in p.stdout:
        e = json.loads(line)
        if e["event"] in ("upload.failed", "job.done", "connection.retry", "run.done"):
            print("  ", json.dumps(e), flush=True)
        if e["event"] == "job.submitted":
            submitted.add(e["job_id"]); last = time.monotonic() - t0
        if e["event"] == "upload.done":
            sent += e["size"]
    rc = await p.wait()
    assert rc == 0 and len(submitted) == len(photos), (rc, len(submitted))
    # A demo job with one step of 0 ms starts within milliseconds of its submission (64 slots).
    print(f"  outlast-upload sent {sent} bytes for {len(photos)} photos", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return last

async def tus(url):
    store = tempfile.mkdtemp(prefix="olu-bench-tus-")
    t0, last, sent = time.monotonic(), 0.0, 0
    for i, f in enumerate(photos):
        p = await asyncio.create_subprocess_exec("node", os.path.join(root, "tests/clients/tus_upload.mjs"),
            "--endpoint", url + "/v1/uploads", "--file", f, "--store", os.path.join(store, f"s{i}.json"),
            "--chunk", str(8 << 20), stdout=asyncio.subprocess.PIPE)
        outp, _ = await p.communicate()
        words = outp.decode().split()
        assert p.returncode == 0 and words[0] == "DONE", outp
        upload = words[1].rsplit("/", 1)[1]
        body = json.dumps({"backend": "demo", "workflow": {"steps": 1, "step_ms": 0},
                           "inputs": {"image": upload}}).encode()
        req = urllib.request.Request(url + "/v1/jobs", data=body, headers={"content-type": "application/json"})
        await asyncio.to_thread(lambda: urllib.request.urlopen(req).read())
        last = time.monotonic() - t0
        sent += os.path.getsize(f)
    print(f"  tus-js-client sent {sent} bytes (originals)", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    return last

async def main():
    print(f"{len(photos)} photos, {sum(map(os.path.getsize, photos))} bytes, throttle {rate} B/s ({rate*8/1e6:.2f} Mbit/s)", flush=True)
    a = await side("outlast-upload (prepared, standard preset)", ours)
    b = await side("tus-js-client 4.3.1 (originals)", tus)
    print(f"ratio outlast-upload / tus-js-client: {a / b:.3f} ({b / a:.1f}x faster)")

asyncio.run(main())

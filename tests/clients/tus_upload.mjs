// Uploads one file with the unmodified tus-js-client (Node), for outlast's e2e upload tests.
//
// node tus_upload.mjs --endpoint URL --file PATH --store PATH [--chunk BYTES]
//      [--parallel N] [--stop-after BYTES] [--token SECRET] [--retry-fast]
//
// With --stop-after, the upload is aborted once that many bytes are acknowledged and the
// process exits with code 3 ("STOPPED <url>"). Run it again with the same --store to resume
// from the stored upload URL. On success it prints "DONE <url>".
import fs from 'node:fs';
import * as tus from 'tus-js-client';

function args() {
  const out = { chunk: 1024 * 1024, parallel: 1, stopAfter: 0, token: null, retryFast: false };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const k = a[i];
    const v = () => a[++i];
    if (k === '--endpoint') out.endpoint = v();
    else if (k === '--file') out.file = v();
    else if (k === '--store') out.store = v();
    else if (k === '--chunk') out.chunk = Number(v());
    else if (k === '--parallel') out.parallel = Number(v());
    else if (k === '--stop-after') out.stopAfter = Number(v());
    else if (k === '--token') out.token = v();
    else if (k === '--retry-fast') out.retryFast = true;
    else throw new Error(`unknown argument ${k}`);
  }
  for (const k of ['endpoint', 'file', 'store']) {
    if (!out[k]) throw new Error(`--${k} is required`);
  }
  return out;
}

const opts = args();
let stopping = false;
let stopAt = () => {};
const size = fs.statSync(opts.file).size;
let upload;
let finish;
let fail;
const finished = new Promise((resolve, reject) => {
  finish = resolve;
  fail = reject;
  upload = new tus.Upload(fs.createReadStream(opts.file), {
    endpoint: opts.endpoint,
    chunkSize: opts.chunk,
    // tus-js-client refuses uploadSize together with parallelUploads (it reads the size itself).
    uploadSize: opts.parallel > 1 ? null : size,
    parallelUploads: opts.parallel,
    urlStorage: new tus.FileUrlStorage(opts.store),
    metadata: { filename: 'upload.bin' },
    headers: opts.token ? { Authorization: `Bearer ${opts.token}` } : {},
    retryDelays: opts.retryFast ? [0, 100, 200, 400, 800, 1600, 3200] : [0, 1000, 3000, 5000],
    // With parallelUploads, chunk callbacks count per part; progress counts the whole file.
    onChunkComplete: (_chunk, accepted) => {
      if (opts.parallel <= 1) stopAt(accepted);
    },
    onProgress: (sent) => {
      if (opts.parallel > 1) stopAt(sent);
    },
    onError: reject,
    onSuccess: () => resolve('DONE'),
  });
});

stopAt = (bytes) => {
  if (!stopping && opts.stopAfter > 0 && bytes >= opts.stopAfter) {
    stopping = true;
    upload.abort(false).then(() => finish('STOPPED'), fail);
  }
};

const previous = await upload.findPreviousUploads();
if (previous.length > 0) {
  upload.resumeFromPreviousUpload(previous[0]);
}
upload.start();
try {
  const how = await finished;
  console.log(`${how} ${upload.url ?? ''}`);
  process.exit(how === 'DONE' ? 0 : 3);
} catch (e) {
  console.error(`FAILED ${e}`);
  process.exit(1);
}

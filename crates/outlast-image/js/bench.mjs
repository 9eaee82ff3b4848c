// Times the wasm module in Node on one file: node js/bench.mjs IN MAX_EDGE QUALITY RUNS
// Prints the median and minimum in-module time in ms, and the output size.
import { readFileSync, writeFileSync } from 'node:fs';
import { initSync, shrinkImage } from './index.mjs';

initSync({ module: readFileSync(new URL('../pkg/outlast_image_bg.wasm', import.meta.url)) });
const [input, maxEdge, quality, runs, output] = process.argv.slice(2);
const bytes = new Uint8Array(readFileSync(input));
const times = [];
let out;
for (let i = 0; i < Number(runs); i++) {
  const t0 = performance.now();
  out = shrinkImage(bytes, { maxEdge: Number(maxEdge), quality: Number(quality) });
  times.push(performance.now() - t0);
}
if (output) writeFileSync(output, out.bytes);
times.sort((a, b) => a - b);
console.log(`wasm median_ms=${times[times.length >> 1].toFixed(1)} min_ms=${times[0].toFixed(1)} bytes=${out.bytes.length} ${out.width}x${out.height}`);

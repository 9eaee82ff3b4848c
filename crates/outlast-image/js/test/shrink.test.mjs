// Node test of the wasm build: a real JPEG with EXIF orientation 6 comes out
// upright at the requested size. PNG output is decoded here in plain JS
// (node:zlib) so the check does not rely on the module's own decoder.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { inflateSync } from 'node:zlib';
import { initSync, shrinkImage } from '../index.mjs';

initSync({ module: readFileSync(new URL('../../pkg/outlast_image_bg.wasm', import.meta.url)) });

// 120x80 upright (stored 80x120 + orientation 6): red, green / blue, yellow quadrants.
const fixture = new Uint8Array(readFileSync(new URL('./quadrants-o6.jpg', import.meta.url)));
const QUADRANTS = [[220, 20, 20], [20, 200, 20], [20, 20, 220], [230, 230, 30]];

/** Minimal PNG decoder for 8-bit RGB/RGBA, non-interlaced. */
function decodePng(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8, width = 0, height = 0, channels = 0;
  const idat = [];
  while (at < bytes.length) {
    const len = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      assert.equal(data[8], 8, 'bit depth');
      channels = { 2: 3, 6: 4 }[data[9]];
      assert.ok(channels, 'colour type');
      assert.equal(data[12], 0, 'not interlaced');
    } else if (type === 'IDAT') {
      idat.push(data);
    }
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const px = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x];
      const a = x >= channels ? px[y * stride + x - channels] : 0;
      const b = y > 0 ? px[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? px[(y - 1) * stride + x - channels] : 0;
      let p;
      switch (filter) {
        case 0: p = 0; break;
        case 1: p = a; break;
        case 2: p = b; break;
        case 3: p = (a + b) >> 1; break;
        case 4: {
          const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
          p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: throw new Error(`bad filter ${filter}`);
      }
      px[y * stride + x] = (v + p) & 255;
    }
  }
  return { width, height, channels, px };
}

/** Width and height from a JPEG's SOF marker. */
function jpegSize(bytes) {
  let at = 2;
  while (at < bytes.length) {
    assert.equal(bytes[at], 0xff);
    const marker = bytes[at + 1];
    const len = (bytes[at + 2] << 8) | bytes[at + 3];
    if (marker >= 0xc0 && marker <= 0xc2) {
      return { height: (bytes[at + 5] << 8) | bytes[at + 6], width: (bytes[at + 7] << 8) | bytes[at + 8] };
    }
    at += 2 + len;
  }
  throw new Error('no SOF');
}

test('JPEG with orientation 6 comes out upright as PNG', () => {
  const out = shrinkImage(fixture, { maxEdge: 60, format: 'png' });
  assert.equal(out.orientation, 6);
  assert.equal(out.inputWidth, 120);
  assert.equal(out.inputHeight, 80);
  assert.deepEqual([out.width, out.height], [60, 40]);
  const img = decodePng(out.bytes);
  assert.deepEqual([img.width, img.height], [60, 40]);
  const probes = [[15, 10], [45, 10], [15, 30], [45, 30]];
  probes.forEach(([x, y], q) => {
    const at = (y * img.width + x) * img.channels;
    const got = Array.from(img.px.subarray(at, at + 3));
    got.forEach((v, i) => assert.ok(Math.abs(v - QUADRANTS[q][i]) <= 30, `quadrant ${q}: ${got}`));
  });
});

test('JPEG output has the oriented dimensions and no EXIF', () => {
  const out = shrinkImage(fixture, { preset: 'eco', maxEdge: 100 });
  assert.equal(out.format, 'jpeg');
  assert.equal(out.mime, 'image/jpeg');
  assert.equal(out.quality, 70);
  assert.deepEqual(jpegSize(out.bytes), { width: 100, height: 67 });
  assert.deepEqual([out.width, out.height], [100, 67]);
  assert.equal(Buffer.from(out.bytes).indexOf('Exif'), -1);
});

test('never upscales; errors carry a code', () => {
  const out = shrinkImage(fixture, { maxEdge: 5000 });
  assert.deepEqual([out.width, out.height], [120, 80]);
  assert.throws(() => shrinkImage(new Uint8Array([1, 2, 3])), (e) => e.code === 'unsupported_format');
  assert.throws(() => shrinkImage(fixture.subarray(0, 600)), (e) => e.code === 'corrupt_image');
  assert.throws(() => shrinkImage(fixture, { format: 'gif' }), (e) => e.code === 'invalid_option');
});

test('target bytes: met by lowering quality then size, or a typed error', () => {
  const out = shrinkImage(fixture, { targetBytes: 900, quality: 95, minEdge: 40 });
  assert.ok(out.bytes.length <= 900, `${out.bytes.length}`);
  assert.ok(out.attempts > 1);
  assert.throws(() => shrinkImage(fixture, { targetBytes: 200 }), (e) => e.code === 'target_unreachable');
});

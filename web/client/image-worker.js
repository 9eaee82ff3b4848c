//! Outlast's image worker: prepares photos with outlast-image's WebAssembly build (SIMD when the
//! browser has it, else the non-SIMD build), off the page's main thread. Same-origin module
//! worker; messages: {id, bytes, preset} -> {id, ok, bytes, width, height, mime, variant, ...}.
import init, { shrink, ShrinkOptions } from "./outlast_image.js";

// The smallest module using a SIMD instruction (v128.const, i8x16.popcnt): valid only where
// wasm SIMD is supported.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

const forced = new URL(self.location.href).searchParams.get("wasm");
const variant = forced === "simd" || forced === "nosimd" ? forced : WebAssembly.validate(SIMD_PROBE) ? "simd" : "nosimd";
const ready = init({ module_or_path: new URL("./outlast_image_" + variant + ".wasm", import.meta.url) });

self.onmessage = async (e) => {
  const { id, bytes, preset, probe } = e.data;
  try {
    await ready;
    if (probe) return self.postMessage({ id, ok: true, variant });
    const options = new ShrinkOptions(preset || "standard");
    let out;
    try {
      out = shrink(new Uint8Array(bytes), options);
    } finally {
      options.free();
    }
    const result = {
      id,
      ok: true,
      variant,
      bytes: out.bytes,
      width: out.width,
      height: out.height,
      mime: out.mime,
      quality: out.quality,
      orientation: out.orientation,
      inputWidth: out.inputWidth,
      inputHeight: out.inputHeight,
      elapsedMs: out.elapsedMs,
    };
    out.free();
    self.postMessage(result, [result.bytes.buffer]);
  } catch (err) {
    self.postMessage({ id, ok: false, code: err?.code || "prepare_failed", message: String(err?.message || err), variant });
  }
};

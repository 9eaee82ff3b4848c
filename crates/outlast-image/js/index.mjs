// outlast-image for JavaScript: a thin wrapper over the wasm-bindgen glue in ../pkg.
//
// Browser:  import { init, shrinkImage } from './index.mjs'; await init();
// Node:     initSync({ module: readFileSync(new URL('../pkg/outlast_image_bg.wasm', import.meta.url)) });
import init, { initSync, shrink, ShrinkOptions } from '../pkg/outlast_image.js';

export { init, initSync };

/**
 * Orients, downscales and compresses one image.
 * @param {Uint8Array} bytes  JPEG, PNG or WebP file
 * @param {{preset?: 'eco'|'standard'|'high', maxEdge?: number, maxWidth?: number,
 *          maxHeight?: number, quality?: number, format?: 'jpeg'|'png'|'webp',
 *          targetBytes?: number, minQuality?: number, minEdge?: number, exif?: 'strip'|'safe'|'safe-with-gps', keepIcc?: boolean}} [opts]
 * @returns {{bytes: Uint8Array, width: number, height: number, format: string, mime: string,
 *            quality: number|undefined, orientation: number, inputWidth: number,
 *            inputHeight: number, attempts: number, elapsedMs: number}}
 * @throws {Error} with a stable `code` (e.g. "image_too_large", "corrupt_image")
 */
export function shrinkImage(bytes, opts = {}) {
  const options = new ShrinkOptions(opts.preset);
  try {
    if (opts.maxEdge !== undefined) options.maxEdge = opts.maxEdge;
    if (opts.maxWidth !== undefined) options.maxWidth = opts.maxWidth;
    if (opts.maxHeight !== undefined) options.maxHeight = opts.maxHeight;
    if (opts.quality !== undefined) options.quality = opts.quality;
    if (opts.format !== undefined) options.format = opts.format;
    if (opts.targetBytes !== undefined) options.targetBytes = opts.targetBytes;
    if (opts.minQuality !== undefined) options.minQuality = opts.minQuality;
    if (opts.minEdge !== undefined) options.minEdge = opts.minEdge;
    if (opts.exif !== undefined) options.exif = opts.exif;
    if (opts.keepIcc !== undefined) options.keepIcc = opts.keepIcc;
    const out = shrink(bytes, options);
    try {
      return {
        bytes: out.bytes,
        width: out.width,
        height: out.height,
        format: out.format,
        mime: out.mime,
        quality: out.quality,
        orientation: out.orientation,
        inputWidth: out.inputWidth,
        inputHeight: out.inputHeight,
        attempts: out.attempts,
        elapsedMs: out.elapsedMs,
      };
    } finally {
      out.free();
    }
  } finally {
    options.free();
  }
}

#!/usr/bin/env bash
# Builds the WebAssembly module and its JS glue into crates/outlast-image/pkg/
# (wasm-bindgen --target web: an ES module for browsers; Node loads it with
# initSync). Installs what it needs: the wasm32 target and the wasm-bindgen
# CLI at exactly the version in Cargo.lock. Set WASM_OPT=1 to also run
# wasm-opt from the npm package binaryen (pinned) for a smaller module.
set -euo pipefail
crate_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$crate_dir/../.." && pwd)
cd "$root"

wb_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[[ -n "$wb_version" ]] || { echo "wasm-bindgen not found in Cargo.lock" >&2; exit 1; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if [[ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]]; then
    # --locked as asked; if the registry mirror lacks a locked transitive
    # version, fall back to a fresh resolution of the same CLI version.
    cargo install wasm-bindgen-cli --version "$wb_version" --locked \
        || cargo install wasm-bindgen-cli --version "$wb_version"
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
# SIMD128 pays for the resampler (fast_image_resize has wasm32 SIMD paths)
# and the decoders' autovectorised loops. Size: LTO, one codegen unit, no
# debug info, abort on panic; opt-level 3 because speed is the goal.
RUSTFLAGS="-C target-feature=+simd128" \
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_DEBUG=false \
CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo build --release --locked -p outlast-image --lib --target wasm32-unknown-unknown

out="$crate_dir/pkg"
mkdir -p "$out"
wasm-bindgen --target web --out-dir "$out" \
    "$target_dir/wasm32-unknown-unknown/release/outlast_image.wasm"
printf '{ "type": "module" }\n' > "$out/package.json"

if [[ "${WASM_OPT:-0}" == "1" ]]; then
    tools="$crate_dir/.tools"
    if [[ ! -x "$tools/node_modules/.bin/wasm-opt" ]]; then
        npm install --prefix "$tools" --no-save --no-audit --no-fund binaryen@132.0.0 >/dev/null
    fi
    "$tools/node_modules/.bin/wasm-opt" -O3 --enable-simd --enable-bulk-memory \
        --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
        "$out/outlast_image_bg.wasm" -o "$out/outlast_image_bg.wasm"
fi
echo "built $out/outlast_image_bg.wasm ($(wc -c < "$out/outlast_image_bg.wasm") bytes)"

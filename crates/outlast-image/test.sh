#!/usr/bin/env bash
# Test command for outlast-image, run from the repository root (or anywhere):
# native unit/integration tests, then the wasm32 build and the Node test
# that runs the module on a real JPEG with EXIF orientation 6.
# Installs its own tools (wasm32 target, pinned wasm-bindgen CLI); idempotent.
set -euo pipefail
crate_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$crate_dir/../.." && pwd)
cd "$root"

cargo test --locked -p outlast-image

"$crate_dir/build-wasm.sh"

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if (( node_major < 18 )); then
    echo "node >= 18 is required for the wasm test (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi
node --test "$crate_dir/js/test/"

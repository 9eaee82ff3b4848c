#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: installs what the tests need,
# checks formatting and lints, then runs every unit, property and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# Raise the file-descriptor limit for the end-to-end suites (many sockets at once).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== upload test clients (pinned: tests/clients/package-lock.json, requirements.txt)"
(cd tests/clients && npm ci --no-audit --no-fund)
python3 -m pip install --quiet -r tests/clients/requirements.txt \
  || python3 -m pip install --quiet --break-system-packages -r tests/clients/requirements.txt

echo "== deploy checks' tools (tests/deploy.rs installs them too when missing)"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >/dev/null
command -v systemd-analyze >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the end-to-end suites drive the real binary)"
cargo build --workspace --locked --bins
# The suites start this binary; without the variable each test process would run cargo itself.
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
export OUTLAST_BIN="$bin_dir/outlast"
# The stand-in ComfyUI server the comfyui suites drive the gateway against (test support only).
export OUTLAST_STANDIN_BIN="$bin_dir/comfy-standin"
# The Cloudflare-like edge (tests/cfproxy) the stream, upload and ComfyUI suites run behind.
export OUTLAST_CFPROXY_BIN="$bin_dir/cf-proxy"

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "== chaos soak, short (the full size and its figures: docs/operations.md)"
"$bin_dir/outlast-soak" --clients 12 --jobs 60 --uploads 6 --restarts 1 --restart-every-s 4 \
  --deadline-s 180 2> >(grep -v "websocket error" >&2)
# Doc tests (nextest does not run them).
cargo test --workspace --locked --doc

if [ -f crates/outlast-image/test.sh ]; then
  echo "== outlast-image: WebAssembly build and Node test"
  bash crates/outlast-image/test.sh
fi
echo "== webhook verifier examples (Python stdlib, Node stdlib)"
(cd examples/webhook-verify && python3 -B -m unittest -q && node --test)
bash tests/browser/run.sh  # client library unit tests + headless-Chromium browser suite

echo "== fuzz: a short run of every target (cargo-fuzz, installed when missing)"
bash fuzz/run.sh 10
echo "== all tests passed"

#!/usr/bin/env bash
# The browser suite: builds the gateway and cf-proxy, installs Debian's chromium when missing
# and playwright-core (npm ci; no browser download), then runs the Node unit tests of the
# client library and the headless-Chromium tests. Screenshots: target/browser-artifacts/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium
fi
cargo build --locked -p outlast-gateway --bin outlast -p outlast-e2e --bin cf-proxy
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
export OUTLAST_BIN="${OUTLAST_BIN:-$bin_dir/outlast}"
export CF_PROXY_BIN="${CF_PROXY_BIN:-$bin_dir/cf-proxy}"
export BROWSER_ARTIFACTS="${BROWSER_ARTIFACTS:-${CARGO_TARGET_DIR:-$root/target}/browser-artifacts}"
echo "== client library unit tests (node --test web/test/)"
node --test web/test/
echo "== browser tests (headless chromium -> cf-proxy -> outlast)"
cd "$here"
npm ci --no-audit --no-fund
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 node --test --test-concurrency=1 "$@" client.test.mjs submit_before_upload.test.mjs resilience.test.mjs

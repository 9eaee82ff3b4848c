#!/usr/bin/env bash
# Benchmark (prints figures; not a timed test): 20 photo-like 12 MP JPEGs through a 2 Mbit/s
# upstream throttle. Time from start to the last job started: outlast-upload (photos prepared
# with the standard preset, WebSocket upload, batch/fallback submit) vs the originals sent with
# the unmodified tus-js-client 4.3.1 (tests/clients), each followed by a POST /v1/jobs.
# Usage: examples/outlast-upload/bench.sh [PHOTOS] [RATE_BYTES_PER_SEC]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
photos=${1:-20}
rate=${2:-250000}
work=${BENCH_DIR:-/tmp/outlast-upload-bench}
mkdir -p "$work/photos"
# Dev builds by default (the line is the bottleneck). BENCH_RELEASE=1 uses release builds of
# the gateway, the CLI and the photo maker (target/release; the figures in the README).
# BENCH_OPT=1 builds outlast-image at opt-level 3 inside the dev profile instead.
opt=()
[[ ${BENCH_OPT:-0} == 1 ]] && opt=(--config 'profile.dev.package.outlast-image.opt-level=3')
profile=debug
if [[ ${BENCH_RELEASE:-0} == 1 ]]; then
  profile=release
  opt=(--release)
fi
if [[ $profile == release ]]; then
  cargo build -q --release -p outlast-gateway -p outlast-upload --bin outlast --bin outlast-upload
else
  cargo build -q -p outlast-gateway --bin outlast ${opt[@]+"${opt[@]}"}
  cargo build -q -p outlast-upload ${opt[@]+"${opt[@]}"}
fi
cargo build -q -p outlast-image --example bench_tools ${opt[@]+"${opt[@]}"}
export BENCH_BIN=$root/target/$profile
[[ -d tests/clients/node_modules/tus-js-client ]] || (cd tests/clients && npm ci --no-audit --no-fund)
for i in $(seq 1 "$photos"); do
  f=$work/photos/p$(printf %02d "$i").jpg
  # Slightly different sizes, so no two photos are identical (no dedup between them).
  [[ -s $f ]] || target/$profile/examples/bench_tools photo "$f" $((4032 - 2 * i)) 3024 6
done
exec python3 examples/outlast-upload/bench/bench.py "$root" "$work" "$rate"

#!/usr/bin/env bash
# Runs every cargo-fuzz target for a while; exits non-zero on the first crash.
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [--release]
# The test command runs 10 s per target on a debug build (overflow checks on); longer runs
# with --release are documented in docs/operations.md. Installs cargo-fuzz when missing. The
# stable toolchain is enough: RUSTC_BOOTSTRAP lets it take the sanitizer flags cargo-fuzz sets.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
profile="--dev"
[ "${2:-}" = "--release" ] && profile="-O"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
cargo fuzz build $profile
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${seconds}s)"
  # -rss_limit_mb: the gateway's parsers must not need more than this per input.
  log="$(mktemp)"
  if ! cargo fuzz run $profile "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      >"$log" 2>&1; then
    tail -40 "$log"
    if compgen -G "artifacts/$target/*" >/dev/null; then
      echo "== fuzz $target FOUND A CRASH: $(ls artifacts/"$target"/)"
    else
      echo "== fuzz $target did not build or run (see above)"
    fi
    exit 1
  fi
  grep -E "^(#[0-9]+.*DONE|Done )" "$log" || true
  rm -f "$log"
done
echo "== fuzz: every target ran clean"

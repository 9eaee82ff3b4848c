#!/usr/bin/env bash
# Benchmark (prints figures; not a timed test): a 12 MP photo-like JPEG with
# EXIF orientation 6, to a 2048 px long edge at quality 80, through
#   - our pipeline (release build of examples/shrink), and
#   - vipsthumbnail (Debian libvips-tools) at the same settings,
# interleaved, RUNS times each; wall-time ratio (median), output bytes, SSIM
# of both against an f64 Lanczos3 reference downscale, and the wasm module's
# time in Node against native.
set -euo pipefail
crate_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$crate_dir/../.." && pwd)
cd "$root"
runs=${RUNS:-9}
work=${BENCH_DIR:-${TMPDIR:-/tmp}/outlast-image-bench}
mkdir -p "$work"

if ! command -v vipsthumbnail >/dev/null; then
    sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libvips-tools >/dev/null
fi

cargo build --release --locked -q -p outlast-image --example shrink --example bench_tools
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples
photo=$work/photo-12mp-o6.jpg
[[ -s $photo ]] || "$bin/bench_tools" photo "$photo" 4032 3024 6

now_ms() { date +%s%3N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ours_t=(); vips_t=(); ours_in=(); ours_1t=()
for ((i = 0; i < runs; i++)); do
    t0=$(now_ms)
    line=$("$bin/shrink" "$photo" "$work/ours.jpg" --max-edge 2048 --quality 80)
    t1=$(now_ms)
    vipsthumbnail "$photo" --size 2048 -o "$work/vips.jpg[Q=80,strip]"
    t2=$(now_ms)
    ours_t+=($((t1 - t0))); vips_t+=($((t2 - t1)))
    ours_in+=("$(sed -E 's/.* ([0-9.]+) ms$/\1/' <<<"$line")")
    line1=$(RAYON_NUM_THREADS=1 "$bin/shrink" "$photo" "$work/ours1.jpg" --max-edge 2048 --quality 80)
    ours_1t+=("$(sed -E 's/.* ([0-9.]+) ms$/\1/' <<<"$line1")")
done
ours_med=$(printf '%s\n' "${ours_t[@]}" | median)
vips_med=$(printf '%s\n' "${vips_t[@]}" | median)
native_ms=$(printf '%s\n' "${ours_in[@]}" | median)
native1_ms=$(printf '%s\n' "${ours_1t[@]}" | median)
ours_bytes=$(wc -c < "$work/ours.jpg"); vips_bytes=$(wc -c < "$work/vips.jpg")
read -r ow oh < <(vipsheader -f width "$work/ours.jpg" | tr '\n' ' '; vipsheader -f height "$work/ours.jpg")
ssim=$("$bin/bench_tools" ssim "$photo" "$ow" "$oh" "$work/ours.jpg" "$work/vips.jpg")
ssim_ours=$(awk 'NR == 1 { print $2 }' <<<"$ssim"); ssim_vips=$(awk 'NR == 2 { print $2 }' <<<"$ssim")

WASM_OPT=1 "$crate_dir/build-wasm.sh" >/dev/null
wasm_line=$(node "$crate_dir/js/bench.mjs" "$photo" 2048 80 "$runs" "$work/wasm.jpg")
wasm_ms=$(sed -E 's/.*median_ms=([0-9.]+).*/\1/' <<<"$wasm_line")
wasm_size=$(wc -c < "$crate_dir/pkg/outlast_image_bg.wasm")
wasm_gz=$(gzip -9c "$crate_dir/pkg/outlast_image_bg.wasm" | wc -c)

echo "input: $(vipsheader "$photo" | cut -d: -f2-) $(wc -c < "$photo") bytes, EXIF orientation 6"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $runs runs each, medians"
echo "wall time (process):   ours ${ours_med} ms   vips ${vips_med} ms   ratio $(awk -v a="$ours_med" -v b="$vips_med" 'BEGIN { printf "%.2f", a / b }')x"
echo "output bytes:          ours ${ours_bytes}   vips ${vips_bytes}   ratio $(awk -v a="$ours_bytes" -v b="$vips_bytes" 'BEGIN { printf "%.3f", a / b }')"
echo "SSIM vs reference:     ours ${ssim_ours}   vips ${ssim_vips}   (${ow}x${oh})"
echo "in-process time:       native ${native_ms} ms (all cores), ${native1_ms} ms (1 thread)   wasm/Node ${wasm_ms} ms"
echo "wasm vs native:        $(awk -v a="$wasm_ms" -v b="$native_ms" 'BEGIN { printf "%.2f", a / b }')x (all cores)   $(awk -v a="$wasm_ms" -v b="$native1_ms" 'BEGIN { printf "%.2f", a / b }')x (1 thread)"
echo "wasm module:           ${wasm_size} bytes (${wasm_gz} gzip -9)"

#!/usr/bin/env bash
# Benchmark (prints figures; not a timed test): a 12 MP photo-like JPEG with
# EXIF orientation 6, to a 2048 px long edge at quality 80, through
#   - our pipeline (release build of examples/shrink) with --threads 1 and
#     with all cores (the default), and
#   - vipsthumbnail (Debian libvips-tools) at the same settings, with
#     VIPS_CONCURRENCY=1 and with its default thread pool,
# as paired runs: every round runs the four, in a rotating order, each under
# /usr/bin/time (CPU time and peak RSS of the child). Reports medians: wall
# time and its ratio to vips, CPU time, peak memory, output bytes, SSIM of
# both against an f64 Lanczos3 reference downscale; then the wasm module's
# time in Node against the native single-thread time (in-process).
# BASELINE_SHRINK=path/to/an/older/shrink adds that build as a fifth entry
# and says whether its output bytes equal ours.
set -euo pipefail
crate_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$crate_dir/../.." && pwd)
cd "$root"
runs=${RUNS:-9}
work=${BENCH_DIR:-${TMPDIR:-/tmp}/outlast-image-bench}
mkdir -p "$work"
set -f  # the vips output spec "out.jpg[Q=80,strip]" is not a glob

if ! command -v vipsthumbnail >/dev/null; then
    sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libvips-tools >/dev/null
fi
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (Debian package: time)" >&2; exit 1; }

cargo build --release --locked -q -p outlast-image --example shrink --example bench_tools
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples
photo=$work/photo-12mp-o6.jpg
[[ -s $photo ]] || "$bin/bench_tools" photo "$photo" 4032 3024 6

# name → command (output file appended by run_one)
names=(ours_all ours_1 vips_all vips_1)
[[ -n "${BASELINE_SHRINK:-}" ]] && names+=(baseline)
command_for() {
    case $1 in
        ours_all) echo "$bin/shrink $photo $work/ours_all.jpg --max-edge 2048 --quality 80" ;;
        ours_1) echo "$bin/shrink $photo $work/ours_1.jpg --max-edge 2048 --quality 80 --threads 1" ;;
        baseline) echo "$BASELINE_SHRINK $photo $work/baseline.jpg --max-edge 2048 --quality 80" ;;
        vips_all) echo "vipsthumbnail $photo --size 2048 -o $work/vips_all.jpg[Q=80,strip]" ;;
        vips_1) echo "env VIPS_CONCURRENCY=1 vipsthumbnail $photo --size 2048 -o $work/vips_1.jpg[Q=80,strip]" ;;
    esac
}
declare -A wall cpu rss inproc
# One run: wall ms (clock around /usr/bin/time), CPU ms (user + sys), peak RSS KiB.
run_one() {
    local name=$1 t0 t1 out
    # shellcheck disable=SC2046
    t0=$(date +%s%N)
    out=$(/usr/bin/time -f '%U %S %M' -o "$work/time.txt" $(command_for "$name"))
    t1=$(date +%s%N)
    wall[$name]+="$(( (t1 - t0) / 1000 )) "
    read -r u s m < "$work/time.txt"
    cpu[$name]+="$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%d", (u + s) * 1000 }') "
    rss[$name]+="$m "
    if [[ $name == ours_* || $name == baseline ]]; then
        inproc[$name]+="$(sed -E 's/.* ([0-9.]+) ms$/\1/' <<<"$out") "
    fi
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
n=${#names[@]}
for ((i = 0; i < runs; i++)); do
    for ((j = 0; j < n; j++)); do
        run_one "${names[(i + j) % n]}"
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A wall_ms cpu_ms rss_mib
for name in "${names[@]}"; do
    wall_ms[$name]=$(awk -v v="$(median <<<"${wall[$name]}")" 'BEGIN { printf "%.1f", v / 1000 }')
    cpu_ms[$name]=$(median <<<"${cpu[$name]}")
    rss_mib[$name]=$(awk -v v="$(median <<<"${rss[$name]}")" 'BEGIN { printf "%.1f", v / 1024 }')
done
bytes_of() { wc -c < "$work/$1.jpg"; }
read -r ow oh < <(vipsheader -f width "$work/ours_all.jpg" | tr '\n' ' '; vipsheader -f height "$work/ours_all.jpg")
ssim=$("$bin/bench_tools" ssim "$photo" "$ow" "$oh" "$work/ours_all.jpg" "$work/vips_all.jpg")
ssim_ours=$(awk 'NR == 1 { print $2 }' <<<"$ssim"); ssim_vips=$(awk 'NR == 2 { print $2 }' <<<"$ssim")
same_bytes() { cmp -s "$work/$1.jpg" "$work/$2.jpg" && echo identical || echo DIFFERENT; }

native_all=$(median <<<"${inproc[ours_all]}")
native_1=$(median <<<"${inproc[ours_1]}")
if [[ "${SKIP_WASM:-0}" != "1" ]]; then
    WASM_OPT=1 "$crate_dir/build-wasm.sh" >/dev/null
    wasm_line=$(node "$crate_dir/js/bench.mjs" "$photo" 2048 80 "$runs" "$work/wasm.jpg")
    wasm_ms=$(sed -E 's/.*median_ms=([0-9.]+).*/\1/' <<<"$wasm_line")
    wasm_size=$(wc -c < "$crate_dir/pkg/outlast_image_bg.wasm")
    wasm_gz=$(gzip -9c "$crate_dir/pkg/outlast_image_bg.wasm" | wc -c)
fi

echo "input: $(vipsheader "$photo" | cut -d: -f2-) $(wc -c < "$photo") bytes, EXIF orientation 6 -> ${ow}x${oh} q80"
echo "machine: $(nproc) cores, load average before $load_before, after $load_after; $runs paired rounds, medians"
printf '%-10s %10s %10s %10s %12s %10s\n' run wall_ms vs_vips cpu_ms peak_MiB bytes
for name in "${names[@]}"; do
    printf '%-10s %10s %10s %10s %12s %10s\n' "$name" "${wall_ms[$name]}" \
        "$(ratio "${wall_ms[$name]}" "${wall_ms[vips_all]}")x" "${cpu_ms[$name]}" \
        "${rss_mib[$name]}" "$(bytes_of "$name")"
done
echo "ours threads=1 / vips concurrency=1: wall $(ratio "${wall_ms[ours_1]}" "${wall_ms[vips_1]}")x"
echo "CPU ours (all) / vips (all): $(ratio "${cpu_ms[ours_all]}" "${cpu_ms[vips_all]}")x   peak memory ours (all) / vips (all): $(ratio "${rss_mib[ours_all]}" "${rss_mib[vips_all]}")x"
echo "output bytes ours / vips: $(ratio "$(bytes_of ours_all)" "$(bytes_of vips_all)")   threads=1 vs all: $(same_bytes ours_1 ours_all)"
[[ -n "${BASELINE_SHRINK:-}" ]] && echo "ours vs baseline build: $(same_bytes ours_all baseline) bytes"
echo "SSIM vs reference: ours ${ssim_ours}   vips ${ssim_vips}"
echo "in-process: native ${native_all} ms (all cores), ${native_1} ms (threads=1)"
if [[ "${SKIP_WASM:-0}" != "1" ]]; then
    echo "wasm in Node: ${wasm_ms} ms = $(ratio "$wasm_ms" "$native_1")x native threads=1, $(ratio "$wasm_ms" "$native_all")x native all cores; output $(same_bytes wasm ours_all)"
    echo "wasm module: ${wasm_size} bytes (${wasm_gz} gzip -9)"
fi

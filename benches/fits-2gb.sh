#!/usr/bin/env bash
# Does the Raspberry Pi 5 configuration fit a 2 GB Pi 5? Runs `moonwatch ask` as the
# board would, inside a memory cgroup limited to what such a board leaves for moonwatch,
# with the full-shape random files (speed and memory depend on shapes, not values):
#   1. configs/raspberry-pi-5-camera.toml's settings (text Q4_0, projector Q8_0),
#   2. the same with region heads (the 2025-04-14 files, `model.region`),
#   3. a limit too small, which must be refused at load with a plain message, not killed.
# Each is also run without a limit, to show the limited run does not page itself into a
# crawl (the cgroup has no swap, so reclaim can only drop the page cache of the files).
#
# Needs root (a cgroup v1 memory hierarchy or cgroup v2 with the memory controller) and
# the release build, and GNU time (package `time`); benches/engine.rs makes the model
# files, benches/region.rs (or `model synth --reference --size full` and `model convert`
# into bench-models/ref2025) the region heads.
# Usage: benches/fits-2gb.sh [LIMIT_MB] (default 1700: a 2 GB Pi 5's 2,048 MiB is
# 2,147 MB, of which firmware, kernel and CMA keep about 150 MB and Raspberry Pi OS Lite
# with the camera stack about 300 MB).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
limit_mb=${1:-1700}
small_mb=${MOONWATCH_SMALL_MB:-1200}
target=${CARGO_TARGET_DIR:-$here/target}
bin=$target/release/moonwatch
models=${MOONWATCH_BENCH_MODELS:-$HOME/.cache/moonwatch/bench-models}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for f in moondream2-text-model-q4_0.gguf moondream2-mmproj-q8_0.gguf; do
  [ -f "$models/$f" ] || { echo "$models/$f missing: run cargo bench --bench engine first" >&2; exit 1; }
done
ref=$models/ref2025

# A cgroup of our own: v2 where the memory controller is there, else v1.
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  v=2; cg=/sys/fs/cgroup/moonwatch-fits-$$
  mkdir "$cg"
  set_limit() { echo "$1" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true; }
  peak() { cat "$cg/memory.peak" 2>/dev/null || echo 0; }
  reset_peak() { echo 0 > "$cg/memory.peak" 2>/dev/null || true; }
  ooms() { awk '/^oom_kill /{print $2}' "$cg/memory.events"; }
else
  v=1; cg=/sys/fs/cgroup/memory/moonwatch-fits-$$
  mkdir "$cg"
  set_limit() {
    echo "$1" > "$cg/memory.limit_in_bytes"
    [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo "$1" > "$cg/memory.memsw.limit_in_bytes"
    echo 0 > "$cg/memory.swappiness"
  }
  peak() { cat "$cg/memory.max_usage_in_bytes"; }
  reset_peak() { echo 0 > "$cg/memory.max_usage_in_bytes"; }
  ooms() { awk '/^oom_kill /{print $2}' "$cg/memory.oom_control"; }
fi
cleanup() { rmdir "$cg" 2>/dev/null || true; rm -rf "$tmp"; }
tmp=$(mktemp -d)
trap cleanup EXIT

image=$here/tests/data/region-scene.png

# One `moonwatch ask` with the Pi 5 configuration's [model] settings (2 threads here),
# in the cgroup when $1 is a limit in MB, free otherwise. Prints one result line.
run() {
  local label=$1 limit=$2 text=$3 mmproj=$4 region=${5:-} revision=${6:-moondream2-2024}
  local cfg=$tmp/pi.toml
  {
    echo "[model]"
    echo "revision = \"$revision\""
    echo "kv_cache_type = \"q8_0\""
    echo "context_size = 1024"
    echo "batch_size = 128"
    [ -n "$region" ] && echo "region = \"$region\""
  } > "$cfg"
  local start rc out
  start=$(date +%s.%N)
  if [ "$limit" != none ]; then
    set_limit $((limit * 1000000)); reset_peak
    local before; before=$(ooms)
    set +e
    out=$(sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$cg" \
      /usr/bin/time -f "maxrss_kb=%M" "$bin" ask --json --config "$cfg" --threads 2 --max-tokens 16 \
      --model "$text" --mmproj "$mmproj" --image "$image" "Is there a person in the picture?" 2>&1)
    rc=$?
    set -e
    local killed=$(( $(ooms) - before ))
  else
    set +e
    out=$(/usr/bin/time -f "maxrss_kb=%M" "$bin" ask --json --config "$cfg" --threads 2 --max-tokens 16 \
      --model "$text" --mmproj "$mmproj" --image "$image" "Is there a person in the picture?" 2>&1)
    rc=$?
    set -e
    local killed=-
  fi
  local wall; wall=$(awk -v a="$start" -v b="$(date +%s.%N)" "BEGIN{print b - a}")
  local rss; rss=$(echo "$out" | sed -n 's/^maxrss_kb=//p' | tail -1 || true)
  local ttft; ttft=$(echo "$out" | grep -o '"first_token_ms": *[0-9.]*' | head -1 | sed 's/.*: *//' || true)
  [ -n "$ttft" ] && ttft=$(printf '%.0f' "$ttft")
  local cg_peak=-; [ "$limit" != none ] && cg_peak=$(( $(peak) / 1000000 ))
  printf '| %s | %s | exit %s | %s | %s MB | %s MB | %.1f s | %s ms |\n' "$label" \
    "$( [ "$limit" = none ] && echo "no limit" || echo "$limit MB" )" "$rc" "$killed" \
    "$(( ${rss:-0} * 1024 / 1000000 ))" "$cg_peak" "$wall" "${ttft:--}"
  if [ "$rc" != 0 ]; then
    echo "$out" | grep -v "^maxrss_kb=" | grep -iE "error|needs about|killed|signal" | head -3 | sed 's/^/    /' || true
  fi
}

echo "cgroup v$v at $cg; files in $models; $(nproc) cores; $(date -u +%F)"
echo
echo "| run | memory limit | result | OOM kills | peak RSS | cgroup peak (with page cache) | wall | time to first token |"
echo "|---|---|---|---|---|---|---|---|"
pi_text=$models/moondream2-text-model-q4_0.gguf
pi_proj=$models/moondream2-mmproj-q8_0.gguf
run "Pi 5 configuration" none "$pi_text" "$pi_proj"
run "Pi 5 configuration" "$limit_mb" "$pi_text" "$pi_proj"
if [ -f "$ref/moondream2-2025-04-14-region.gguf" ]; then
  region=$ref/moondream2-2025-04-14-region.gguf
  # The names benches/region.rs gives them.
  rtext=$ref/moondream2-2025-04-14-text-model-q4_0.gguf
  [ -f "$rtext" ] || "$bin" model quantize --type q4_0 "$ref/moondream2-2025-04-14-text-model-f16.gguf" "$rtext" > /dev/null
  rproj=$ref/moondream2-2025-04-14-mmproj-q8_0.gguf
  [ -f "$rproj" ] || "$bin" model quantize --mmproj "$ref/moondream2-2025-04-14-mmproj-f16.gguf" "$rproj" > /dev/null
  run "Pi 5 configuration + region heads (2025-04-14)" none "$rtext" "$rproj" "$region" moondream2-2025-04-14
  run "Pi 5 configuration + region heads (2025-04-14)" "$limit_mb" "$rtext" "$rproj" "$region" moondream2-2025-04-14
else
  echo "(no region heads in $ref: cargo bench --bench region makes them)"
fi
run "Pi 5 configuration, limit too small" "$small_mb" "$pi_text" "$pi_proj"

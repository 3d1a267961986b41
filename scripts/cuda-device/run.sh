#!/usr/bin/env bash
# Runs moonwatch itself on a GPU machine from the bundle scripts/cuda-device/prepare.sh
# made (see there): builds the bundled llama.cpp as shared libraries with CUDA for the GPU
# present (and llama-mtmd-cli), then, with every layer and the vision encoder on the GPU,
# the engine tests, the region-head goldens, the known-answer tests, and the engine
# benchmark side by side with llama-mtmd-cli. Results under $OUT (the device tool's) or
# build/cuda-device/out. MOONWATCH_DEVICE_CPU=1 does the same without CUDA (to check the
# bundle on a machine without a GPU).
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/build/cuda-device"
out="${OUT:-$here/out}"
mkdir -p "$out"
work="$here/work"
rm -rf "$work" && mkdir -p "$work"
tar -C "$work" -xJf "$here/bundle.tar.xz" || exit 1
cpu="${MOONWATCH_DEVICE_CPU:-}"
jobs=$(nproc)
log() { echo "$*" | tee -a "$out/summary.txt"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; 
  nvcc --version 2>/dev/null | tail -1; nproc; } > "$out/machine.txt"
log "machine: $(tr '\n' ' ' < "$out/machine.txt")"

t0=$(date +%s)
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
if [ -n "$cpu" ]; then backend=(-DGGML_CUDA=OFF); layers=0; else
  backend=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native); layers=99; fi
cmake -S "$work/llama.cpp" -B "$work/build" "${gen[@]}" "${backend[@]}" -DBUILD_SHARED_LIBS=ON \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
  > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
cmake --build "$work/build" -j "$jobs" --target llama mtmd llama-mtmd-cli > "$out/build.log" 2>&1 ||
  { grep -m5 -B2 -A8 "error" "$out/build.log"; tail -5 "$out/build.log"; exit 1; }
log "llama.cpp (shared, ${backend[*]}) built in $(( $(date +%s) - t0 )) s"
LD_LIBRARY_PATH=$(find "$work/build" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH
ldd "$work/bin/moonwatch" | grep -E "llama|ggml|mtmd|not found" > "$out/ldd.txt"
if grep -q "not found" "$out/ldd.txt"; then log "missing libraries:"; cat "$out/ldd.txt"; exit 1; fi

# The binaries were built at another path: they read tests/data and assets/gpt2 under it
# and run the moonwatch binary at bin_exe. Point those paths here.
. "$work/paths.txt"
if [ "$manifest" != "$repo" ]; then
  if [ -e "$manifest" ] && [ ! -L "$manifest" ]; then log "cannot link $manifest: it exists"; exit 1; fi
  mkdir -p "$(dirname "$manifest")" && ln -sfn "$repo" "$manifest"
fi
if [ ! -e "$bin_exe" ] || [ -L "$bin_exe" ]; then
  mkdir -p "$(dirname "$bin_exe")" && ln -sf "$work/bin/moonwatch" "$bin_exe"
fi

cd "$repo"
export MOONWATCH_TEST_GPU_LAYERS=$layers
status=0
for t in engine region answers; do
  t1=$(date +%s)
  if "$work/tests/$t" > "$out/test-$t.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
  log "tests/$t: $r ($(grep -o '[0-9]* passed; [0-9]* failed' "$out/test-$t.log" | tail -1), $(( $(date +%s) - t1 )) s)"
done
# llama.cpp says where the layers and the encoder went.
"$work/bin/moonwatch" model synth --out "$work/tiny" > /dev/null 2>&1
RUST_LOG=llama-cpp-2=info "$work/bin/moonwatch" -v ask --model "$work/tiny/moondream2-text-model-f16.gguf" \
  --mmproj "$work/tiny/moondream2-mmproj-f16.gguf" --image "$repo/tests/data/region-scene.png" "What is this?" \
  > "$out/offload.log" 2>&1
grep -iE "offload|CUDA0|using device|clip.*(GPU|CUDA)" "$out/offload.log" | head -8 | tee -a "$out/summary.txt"

# The engine benchmark, moonwatch against llama-mtmd-cli on the same GPU.
mkdir -p "$work/peer/build/bin" && cp "$work/build/bin/llama-mtmd-cli" "$work/peer/build/bin/"
t1=$(date +%s)
MOONWATCH_PEER_DIR="$work/peer" MOONWATCH_BENCH_MODELS="$work/models" \
  MOONWATCH_BENCH_GPU_LAYERS=$layers MOONWATCH_BENCH_THREADS="${MOONWATCH_BENCH_THREADS:-8}" \
  MOONWATCH_BENCH_REPS="${MOONWATCH_BENCH_REPS:-3}" MOONWATCH_BENCH_ONLY=peer \
  "$work/tests/bench-engine" > "$out/bench-engine.log" 2>&1 || status=1
log "bench engine: $(( $(date +%s) - t1 )) s"
grep -E "^\|" "$out/bench-engine.log" | tee -a "$out/summary.txt"
exit $status

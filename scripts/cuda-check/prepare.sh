#!/bin/bash
# Prepares target/gpu for a CUDA check of the region-head path on a machine with nvcc,
# cmake and ninja but no Rust (docs/models.md, "CUDA"): the llama.cpp source vendored by
# the pinned llama-cpp-sys-2 (backends other than CPU and CUDA left out), check.cpp, and
# the tiny random 2025-04-14 checkpoint converted by moonwatch (text Q8_0) with the
# goldens' picture. Then, on that machine: bash target/gpu/run.sh (results under $OUT).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${MOONWATCH:-${CARGO_TARGET_DIR:-target}/release/moonwatch}
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.160/llama.cpp | head -1)
G=target/gpu
rm -rf "$G" && mkdir -p "$G/llama.cpp/tools" "$G/m" "$G/ref"
(cd "$SRC" && tar cf - --exclude=./docs --exclude=./examples --exclude=./models --exclude=./tests \
    --exclude=./gguf-py --exclude=./pocs --exclude=./ci --exclude=./tools .) | (cd "$G/llama.cpp" && tar xf -)
cp -r "$SRC/tools/mtmd" "$G/llama.cpp/tools/"
rm -rf "$G"/llama.cpp/ggml/src/ggml-{virtgpu,cann,webgpu,openvino,et,metal,hexagon,sycl,vulkan,opencl}
cp scripts/cuda-check/check.cpp scripts/cuda-check/run.sh "$G/"
"$B" model synth --reference --out "$G/ref" >/dev/null
"$B" model convert "$G/ref/model.safetensors" --out "$G/ref" >/dev/null
"$B" model quantize --type q8_0 "$G/ref/moondream2-2025-04-14-text-model-f16.gguf" "$G/m/text.gguf" >/dev/null
cp "$G/ref/moondream2-2025-04-14-mmproj-f16.gguf" "$G/m/mmproj.gguf"
cp "$G/ref/moondream2-2025-04-14-region.gguf" "$G/m/region.gguf"
rm -rf "$G/ref"
python3 - "$G/m/scene.rgb" <<'PY'
import sys
# tests/data/region-scene.png as raw RGB (the picture is made by a formula; recompute it).
out = bytearray()
for y in range(378):
    for x in range(378):
        out += bytes(((x * 7 + y * 3) % 256, (x * y) % 256, (255 - x + y) % 256))
open(sys.argv[1], "wb").write(out)
PY
du -sh "$G"

#!/usr/bin/env bash
# Prepares a run of moonwatch itself on a lent GPU machine (the `device` tool: CUDA and
# cmake there, but no Rust, and at most 64 MiB carried), as one command:
#
#   scripts/cuda-device/prepare.sh     # here: builds and packs build/cuda-device/bundle.tar.xz
#   then, with the device tool: command "bash scripts/cuda-device/run.sh",
#                               carry ["build/cuda-device"], timeout_s 580
#
# How: a binary built here with a static CUDA runtime and cuBLAS is far over the carry
# limit (cuBLASLt alone is 575 MB), and the machine has no Rust to build one. So moonwatch,
# its engine, region and answer test binaries and the engine benchmark are built here
# against llama.cpp as shared libraries (LLAMA_BUILD_SHARED_LIBS=1, CPU only), and packed
# with the very llama.cpp source they were built from (the pinned llama-cpp-sys-2's). There,
# run.sh builds that source again as shared libraries with CUDA (and llama-mtmd-cli, the
# benchmark's peer) and runs the binaries against them: the same C API, the same version,
# now with the CUDA backend inside libggml.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/setup.sh
moonwatch_setup
export CARGO_TARGET_DIR="$HOME/.cache/moonwatch/target-shared"
export LLAMA_BUILD_SHARED_LIBS=1
out=build/cuda-device
rm -rf "$out" && mkdir -p "$out/stage/bin" "$out/stage/tests"

cargo build --release --locked --bin moonwatch
exes() { # "name path" of the executables cargo reports (benches named bench-NAME)
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["kind"][0] in ("test", "bench"):
        kind = m["target"]["kind"][0]
        name = m["target"]["name"]
        print(("bench-" if kind == "bench" else "") + name, m["executable"])'
}
cargo test --release --locked --no-run --test engine --test region --test answers \
  --message-format=json 2>/dev/null | exes > "$out/tests.txt"
cargo bench --locked --no-run --bench engine --message-format=json 2>/dev/null | exes >> "$out/tests.txt"
cp "$CARGO_TARGET_DIR/release/moonwatch" "$out/stage/bin/"
while read -r name exe; do
  cp "$exe" "$out/stage/tests/$name"
done < "$out/tests.txt"
strip "$out"/stage/bin/* "$out"/stage/tests/*

# The paths the binaries were built with (they read tests/data and assets/gpt2 under the
# manifest directory, and run the moonwatch binary the tests name): run.sh links them.
{
  echo "manifest=$PWD"
  echo "bin_exe=$CARGO_TARGET_DIR/release/moonwatch"
} > "$out/stage/paths.txt"

# The llama.cpp source the binaries were built from; backends other than CPU and CUDA out.
version=$(sed -n 's/^llama-cpp-sys-2 = "=\(.*\)"/\1/p' Cargo.toml)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp | head -1)
mkdir -p "$out/stage/llama.cpp/tools"
(cd "$src" && tar cf - --exclude=./docs --exclude=./examples --exclude=./models --exclude=./tests \
    --exclude=./gguf-py --exclude=./pocs --exclude=./ci --exclude=./tools .) | (cd "$out/stage/llama.cpp" && tar xf -)
cp -r "$src/tools/mtmd" "$out/stage/llama.cpp/tools/"
rm -rf "$out"/stage/llama.cpp/ggml/src/ggml-{virtgpu,cann,webgpu,openvino,et,metal,hexagon,sycl,vulkan,opencl,musa,hip,rpc,zdnn,blas,kompute}
printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(mtmd)\n' \
  > "$out/stage/llama.cpp/tools/CMakeLists.txt"

tar -C "$out/stage" -cJf "$out/bundle.tar.xz" .
rm -rf "$out/stage"
ls -la "$out/bundle.tar.xz"
echo "carry build/cuda-device and run: bash scripts/cuda-device/run.sh"

#!/usr/bin/env bash
# Builds llama.cpp's own `llama-mtmd-cli` from the llama.cpp source vendored in the
# pinned llama-cpp-sys-2 crate, so the benchmark compares moonwatch with the very same
# llama.cpp. Native CPU flags, like moonwatch's own build (.cargo/config.toml).
# Prints the path of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^llama-cpp-sys-2 = "=\(.*\)"/\1/p' "$here/Cargo.toml")
out=${MOONWATCH_PEER_DIR:-$HOME/.cache/moonwatch/llama-mtmd-cli-$version}
bin="$out/build/bin/llama-mtmd-cli"
# Built already (or by scripts/cuda-device/run.sh, on a machine without Rust or crates).
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp 2>/dev/null | head -n1 || true)
[ -d "$src" ] || { (cd "$here" && cargo fetch -q); src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp | head -n1); }
mkdir -p "$out"
rm -rf "$out/src"
cp -r "$src" "$out/src"
# The crate vendors only the mtmd tool; build just that one.
cat > "$out/src/tools/CMakeLists.txt" <<'CMAKE'
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(mtmd)
CMAKE
cmake -S "$out/src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$out/build" --target llama-mtmd-cli -j "$(nproc)" >&2
echo "$bin"

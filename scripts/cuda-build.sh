#!/usr/bin/env bash
# moonwatch with llama.cpp's CUDA backend (`--features cuda`), built and linked on a machine
# without a GPU, so the Jetson build cannot rot unseen.
#
#   scripts/cuda-build.sh            # build, link every test binary, run the tests that need no GPU
#   scripts/cuda-build.sh --no-test  # build and link only
#
# Installs what it needs when missing (as root, Debian/Ubuntu): the CUDA toolkit from
# Debian's non-free component (nvidia-cuda-toolkit, CUDA 11.8 in bookworm; the component is
# added in a sources file of its own), and g++-11, the newest host compiler CUDA 11.8's nvcc
# accepts (Debian's nvcc wrapper picks it). Builds the release profile into a target
# directory of its own (~/.cache/moonwatch/target-cuda; override with
# MOONWATCH_CUDA_TARGET_DIR) for the GPUs in MOONWATCH_CUDA_ARCHS (default "87;90": Jetson
# Orin, and the H100/H200 a lent machine has; "87" with CUDA 11, see below). On two cores
# the first build takes about an hour (llama.cpp's CUDA kernels); see README.md, "CUDA".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup

if ! command -v nvcc >/dev/null 2>&1 || ! command -v g++-11 >/dev/null 2>&1; then
  if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    . /etc/os-release
    cat > /etc/apt/sources.list.d/moonwatch-non-free.sources <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME} ${VERSION_CODENAME}-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  echo "moonwatch: installing the CUDA toolkit (nvidia-cuda-toolkit) and g++-11" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nvidia-cuda-toolkit g++-11 >&2
fi
nvcc --version | tail -1

export CARGO_TARGET_DIR="${MOONWATCH_CUDA_TARGET_DIR:-$HOME/.cache/moonwatch/target-cuda}"
# Read by llama-cpp-sys-2's build script and passed to llama.cpp's CMake (CMAKE_* variables
# from the environment become cache entries): only these GPUs' kernels, not llama.cpp's
# list of every architecture. Hopper (90: H100, H200) needs CUDA 12: the pinned llama.cpp
# calls cudaGridDependencySynchronize in sm_90 code whenever CUDART_VERSION >= 11080, but
# CUDA 11.8's headers do not declare it (checked: Debian's 11.8.89), so with CUDA 11 the
# default is the Orin alone.
cuda_major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
if [ "${cuda_major:-0}" -ge 12 ]; then default_archs="87;90"; else default_archs="87"; fi
export CMAKE_CUDA_ARCHITECTURES="${MOONWATCH_CUDA_ARCHS:-$default_archs}"
echo "moonwatch: CUDA $cuda_major, building for compute capabilities $CMAKE_CUDA_ARCHITECTURES"
# Debian installs the toolkit under /usr (nvcc in /usr/bin, the libraries in the multiarch
# directory), where llama-cpp-sys-2's link step (find_cuda_helper: a root with lib64/) does
# not look: a root of links in the usual layout gives it one.
if [ -z "${CUDA_PATH:-}" ] && [ -x /usr/bin/nvcc ] && [ ! -d /usr/local/cuda ]; then
  root="$CARGO_TARGET_DIR/cuda-root"
  mkdir -p "$root"
  ln -sfn /usr/bin "$root/bin"
  ln -sfn /usr/include "$root/include"
  ln -sfn "/usr/lib/$(gcc -print-multiarch)" "$root/lib64"
  export CUDA_PATH="$root" CUDA_LIBRARY_PATH="$root"
fi

start=$(date +%s)
cargo build --release --locked --features cuda
cargo test --release --locked --features cuda --no-run
echo "moonwatch: CUDA build and test binaries linked in $(($(date +%s) - start)) s ($CARGO_TARGET_DIR/release/moonwatch)"
ldd "$CARGO_TARGET_DIR/release/moonwatch" | grep -E "cuda|cublas" || true

if [ "${1:-}" != "--no-test" ]; then
  # Without a GPU, llama.cpp's CUDA backend finds no device and the CPU runs everything:
  # the tests check that such a build works where no GPU is (a Jetson's GPU busy or absent).
  cargo test --release --locked --features cuda --lib --test engine --test answers
fi

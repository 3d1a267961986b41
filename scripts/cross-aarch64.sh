#!/usr/bin/env bash
# Cross-builds moonwatch for aarch64-unknown-linux-gnu (Raspberry Pi 4/5, Jetson) and runs
# the engine's tiny-model tests under qemu-aarch64, so llama.cpp's Arm (NEON) kernels run
# for real. Usage:
#   scripts/cross-aarch64.sh [pi5|pi4|orin]     (default pi5)
# GGML_CPU_ARM_ARCH picks llama.cpp's kernels for the board's cores:
#   pi5  Cortex-A76   armv8.2-a+dotprod+fp16        (dotprod: the fast int8 dot products)
#   pi4  Cortex-A72   armv8-a                       (NEON only)
#   orin Cortex-A78AE armv8.2-a+dotprod+fp16+i8mm   (CUDA builds add --features cuda)
# GStreamer and the C runtime for arm64 come from Debian's arm64 packages, unpacked into a
# private sysroot (no foreign architecture is added to this machine's dpkg).
set -euo pipefail
cd "$(dirname "$0")/.."
board="${1:-pi5}"
case "$board" in
  pi5) arch=armv8.2-a+dotprod+fp16 cpu=cortex-a76 ;;
  pi4) arch=armv8-a cpu=cortex-a72 ;;
  orin) arch=armv8.2-a+dotprod+fp16+i8mm cpu=max ;;
  *) echo "usage: $0 [pi5|pi4|orin]" >&2; exit 64 ;;
esac
. scripts/setup.sh
MOONWATCH_PACKAGES+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
moonwatch_setup
rustup target add aarch64-unknown-linux-gnu >&2

# The arm64 packages the sysroot is made of: the C and C++ runtimes, OpenMP (llama.cpp's
# CPU backend is built with it) and GStreamer with its dependencies. The sysroot records
# this list; one made from another list (an older version of this script) is made anew.
sysroot_packages=(
  libc6 libstdc++6 libgcc-s1 libgomp1
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base
)
sysroot="${MOONWATCH_ARM64_SYSROOT:-$HOME/.cache/moonwatch/sysroot-arm64}"
stamp="sysroot v2: ${sysroot_packages[*]}"
if [ "$(cat "$sysroot/.complete" 2>/dev/null)" != "$stamp" ]; then
  [ -e "$sysroot" ] && echo "moonwatch: making the arm64 sysroot anew in $sysroot" >&2
  apt_dir="$sysroot.apt"
  rm -rf "$sysroot" "$apt_dir"
  mkdir -p "$apt_dir"/{state/lists/partial,cache/archives/partial} "$sysroot"
  : > "$apt_dir/state/status"
  opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
        -o Dir::State="$apt_dir/state" -o Dir::State::status="$apt_dir/state/status"
        -o Dir::Cache="$apt_dir/cache" -o Debug::NoLocking=1)
  apt-get "${opts[@]}" -qq update
  apt-get "${opts[@]}" -qq install -y --download-only --no-install-recommends "${sysroot_packages[@]}"
  for deb in "$apt_dir"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
  echo "$stamp" > "$sysroot/.complete"
fi

# Every shared library an arm64 program needs, followed through the libraries it loads,
# must be in the sysroot that qemu-aarch64 -L searches; name whatever is not.
check_needed() {
  local missing=() seen=" " queue=("$@") f n found d
  while [ ${#queue[@]} -gt 0 ]; do
    f="${queue[0]}"; queue=("${queue[@]:1}")
    for n in $(aarch64-linux-gnu-readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$seen" in *" $n "*) continue ;; esac
      seen="$seen$n "
      found=""
      for d in "$sysroot/lib/aarch64-linux-gnu" "$sysroot/usr/lib/aarch64-linux-gnu" "$sysroot/lib"; do
        if [ -e "$d/$n" ]; then found="$(readlink -f "$d/$n")"; break; fi
      done
      if [ -n "$found" ]; then queue+=("$found"); else missing+=("$n (needed by $(basename "$f"))"); fi
    done
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "moonwatch: the arm64 sysroot $sysroot lacks: ${missing[*]}" >&2
    echo "moonwatch: add the Debian arm64 package that ships each to sysroot_packages in $0" >&2
    exit 1
  fi
}

lib="$sysroot/usr/lib/aarch64-linux-gnu"
# The C library and its startup files come from the cross toolchain; the sysroot's glibc
# linker scripts name absolute paths that only exist on the board, and its static archives
# would shadow the toolchain's shared C library.
for f in "$lib"/*.so; do
  if head -c 64 "$f" 2>/dev/null | grep -q "GNU ld script"; then rm -f "$f"; fi
done
rm -f "$lib"/*.a "$lib"/*crt*.o
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot -cpu $cpu"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-L $lib -C link-arg=-Wl,-rpath-link,$lib -C link-arg=-Wl,-rpath-link,$sysroot/lib/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_SYSROOT_DIR="$sysroot"
export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$sysroot/usr/share/pkgconfig"
export GGML_CPU_ARM_ARCH="$arch"
# llama-cpp-sys-2 pins armv8-a for aarch64 Linux; this toolchain file restores the board's.
export CMAKE_TOOLCHAIN_FILE_aarch64_unknown_linux_gnu="$PWD/scripts/cmake/aarch64-linux-gnu.cmake"
# Keep the cross build apart from the native one.
export CARGO_TARGET_DIR="$CARGO_TARGET_DIR-aarch64-$board"

cargo build --release --locked --target aarch64-unknown-linux-gnu
# Prove the kernels: the architecture llama.cpp's CPU backend was configured with.
grep -h "^GGML_CPU_ARM_ARCH" "$CARGO_TARGET_DIR"/aarch64-unknown-linux-gnu/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt
bin="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/moonwatch"
file "$bin" 2>/dev/null || true
ls -l "$bin"
# The engine's tests on the tiny model (the region heads' too: Arm kernels against the
# reference's goldens), and the CLI, under emulation of the board's CPU.
tests=$(cargo test --release --locked --target aarch64-unknown-linux-gnu --test engine --test region --no-run \
  --message-format=json | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
check_needed "$bin" $tests
# The reference crops' box-for-box test (two tiled pictures, every object loop) is left to
# the native stage: under emulation the two crops tests took 15 minutes together, the
# image-embeddings one 5 of them (2026-12-07); that one still checks the crops' Arm
# arithmetic here against the reference.
cargo test --release --locked --target aarch64-unknown-linux-gnu --test engine --test region \
  -- --skip reference_crops_detect_point_and_answer
# A known-answer model made by the arm64 binary itself: the CLI must print its answer.
tiny=$(mktemp -d)
trap 'rm -rf "$tiny"' EXIT
run_arm() { qemu-aarch64 -L "$sysroot" -cpu "$cpu" "$bin" "$@"; }
run_arm model synth --size tiny --out "$tiny" --answer " a red square" >/dev/null
img="$CARGO_TARGET_DIR/qemu-check.png"
gst-launch-1.0 -q videotestsrc num-buffers=1 ! video/x-raw,width=320,height=240 ! pngenc ! filesink location="$img"
answer=$(run_arm ask --threads 2 --model "$tiny/moondream2-text-model-f16.gguf" \
  --mmproj "$tiny/moondream2-mmproj-f16.gguf" --image "$img" "What is in the picture?")
echo "aarch64 answer: $answer"
[ "$answer" = "a red square" ] || { echo "moonwatch: wrong answer under qemu-aarch64: $answer" >&2; exit 1; }
echo "aarch64 ($board, GGML_CPU_ARM_ARCH=$arch): built and answered under qemu-aarch64 -cpu $cpu"

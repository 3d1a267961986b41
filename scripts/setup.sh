# Sourced by the other scripts: installs what building moonwatch needs, only what is
# missing, and sets up the Cargo environment. Debian/Ubuntu, as root.

# Build: llama.cpp (cmake, C/C++ compiler, libclang for bindgen), GStreamer and V4L2
# headers. Run and test: GStreamer's base and good plugins (videotestsrc, videoconvert,
# decodebin, jpegenc, avimux), gst-launch for the demo picture; mosquitto for the daemon
# tests and the demo (tests start their own on loopback), openssl for the TLS test,
# systemd for systemd-analyze (the unit's checks; nothing is started); Python for the
# Yocto layer's linter (oelint-adv, in a virtual environment of its own).
MOONWATCH_PACKAGES=(
  pkg-config cmake clang libclang-dev build-essential ca-certificates curl git
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev linux-libc-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  mosquitto mosquitto-clients openssl systemd python3 python3-venv
)

moonwatch_setup() {
  local missing=() p
  for p in "${MOONWATCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "moonwatch: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  # shellcheck disable=SC1091
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null 2>&1; then
    echo "moonwatch: installing the Rust toolchain (rustup)" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
      sh -s -- -y --profile minimal --component clippy,rustfmt >&2
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  # One build directory outside the checkout, so fresh clones reuse a warm llama.cpp build.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/moonwatch/target}"
  mkdir -p "$CARGO_TARGET_DIR"
}

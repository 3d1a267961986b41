#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the integration
# tests run the real llama.cpp path on a tiny random-weight Moondream2 pair they generate).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup
cargo fmt --check
# Everything builds in the release profile: llama.cpp is compiled once (about 5-11 min
# cold on two cores) and shared by the build, clippy and the tests.
cargo clippy --release --locked --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "moonwatch tests: %d passed, %d failed\n", p, f }' "$log"

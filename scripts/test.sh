#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the integration
# tests run the real llama.cpp path on a tiny random-weight Moondream2 pair they generate).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup
cargo fmt --check
# The Yocto layer: oelint-adv (pinned) must find nothing.
venv="$HOME/.cache/moonwatch/venv"
[ -x "$venv/bin/oelint-adv" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "oelint-adv==9.11.*"; }
(cd yocto/meta-moonwatch && "$venv/bin/oelint-adv" --release wrynose --suppress oelint.vars.homepageping \
  --noinfo --quiet $(find . -name '*.bb' -o -name '*.bbappend'))
# Everything builds in the release profile: llama.cpp is compiled once (about 5-11 min
# cold on two cores) and shared by the build, clippy and the tests.
cargo clippy --release --locked --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "moonwatch tests: %d passed, %d failed\n", p, f }' "$log"

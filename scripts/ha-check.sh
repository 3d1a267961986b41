#!/usr/bin/env bash
# moonwatch against a real Home Assistant (pinned below), in a virtualenv of its own:
# entities and their ids, states, a switched-off trigger, tuning and asking from Home
# Assistant, trigger removal, discovery-form switches both ways, an upgrade that left a
# ghost, integration reloads, the notification blueprint, and a log without warnings.
# scripts/ha-check.py has the checks. Not part of scripts/test.sh: installing Home
# Assistant takes minutes and needs Python 3.13 (Debian trixie's python3, or pyenv's).
#
#   scripts/ha-check.sh                   # exit 0 when every check passed
#   scripts/ha-check.sh --previous REV    # the same, upgrading from moonwatch at git REV
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup

HA_VERSION=2025.4.4
venv="${MOONWATCH_HA_VENV:-$HOME/.cache/moonwatch/ha-venv-$HA_VERSION}"
if ! "$venv/bin/python" -c "import homeassistant.const as c, sys; sys.exit(c.__version__ != '$HA_VERSION')" 2>/dev/null; then
  py=""
  for c in python3.13 "$HOME"/.pyenv/versions/3.13*/bin/python3; do
    if command -v "$c" >/dev/null 2>&1; then py="$c"; break; fi
  done
  if [ -z "$py" ]; then
    echo "ha-check: Home Assistant $HA_VERSION needs Python 3.13 (apt-get install python3.13 python3.13-venv on Debian trixie)" >&2
    exit 69
  fi
  echo "ha-check: installing Home Assistant $HA_VERSION into $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "homeassistant==$HA_VERSION" "paho-mqtt==2.1.0" zlib-ng isal
  # Home Assistant always loads its frontend; Home Assistant pins the version.
  frontend=$("$venv/bin/python" -c "import json, homeassistant.components.frontend as f, os; print(json.load(open(os.path.join(os.path.dirname(f.__file__), 'manifest.json')))['requirements'][0])")
  "$venv/bin/pip" install -q "$frontend"
fi
# Home Assistant's camera helpers log an error without libturbojpeg.
if ! dpkg-query -W -f='${Status}' libturbojpeg0 2>/dev/null | grep -q "install ok installed"; then
  apt-get install -y -qq --no-install-recommends libturbojpeg0 >&2
fi

previous=()
if [ "${1:-}" = "--previous" ]; then
  rev=$(git rev-parse --short "$2")
  old="$HOME/.cache/moonwatch/moonwatch-$rev"
  if [ ! -x "$old" ]; then
    tree=$(mktemp -d)
    git worktree add -f "$tree" "$rev" >&2
    (cd "$tree" && cargo build --release --locked)
    cp "$CARGO_TARGET_DIR/release/moonwatch" "$old"
    git worktree remove --force "$tree"
  fi
  previous=(--previous "$old")
fi
cargo build --release --locked
bin="$CARGO_TARGET_DIR/release/moonwatch"
work="${MOONWATCH_HA_WORK:-$HOME/.cache/moonwatch/ha-check}"
mkdir -p "$work"
# A tiny random-weight model whose every answer is " Yes": triggers begin, so events,
# snapshots and the blueprint's notification happen.
model="$work.model"
"$bin" model synth --size tiny --out "$model" --answer " Yes" >/dev/null
exec "$venv/bin/python" scripts/ha-check.py --moonwatch "$bin" --model "$model" --work "$work" "${previous[@]}"

#!/usr/bin/env bash
# A real BitBake over meta-moonwatch, offline, with each kas file exactly as shipped:
#   - parse every recipe (`bitbake -p`),
#   - dry-run moonwatch and the kas target (`bitbake -n moonwatch`, `bitbake -n core-image-base`),
#   - show the flags the board gets (`bitbake -e moonwatch`: GGML_CPU_ARM_ARCH, the CUDA
#     variables, PACKAGECONFIG),
#   - yocto-check-layer on the layer,
# for the Raspberry Pi 5 (kas/raspberrypi5.yml) and the Jetson Orin Nano
# (kas/jetson-orin-nano.yml).
#
# usage: yocto/check-bitbake.sh LAYERS [WORK]
#   (MOONWATCH_YOCTO_BOARDS="raspberrypi5" checks one board; "" only yocto-check-layer)
#   LAYERS  a directory with git clones named as the kas files name their repositories:
#           bitbake, openembedded-core, meta-yocto, meta-openembedded, meta-raspberrypi,
#           meta-tegra (each with the branch the kas files ask for: bitbake 2.18, the
#           others wrynose). kas clones from them instead of the network (KAS_PREMIRRORS).
#   WORK    where kas checks out and builds (default: a new temporary directory).
#
# Needs: kas (pip; installed into ~/.cache/moonwatch/kas-venv when missing), BitBake's host
# tools (Debian: chrpath diffstat gawk lz4 zstd cpio file texinfo locales python3-jinja2
# python3-git python3-pexpect python3-subunit socat), the en_US.UTF-8 locale. BitBake
# refuses to run as root: as root, the script runs it as the user `bbcheck` (created
# when missing). Takes about 10 minutes on two cores. Prints one line per check and ends
# with `yocto check: N passed, M failed`.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
layers="$(cd "${1:?usage: yocto/check-bitbake.sh LAYERS [WORK]}" && pwd)"
work="${2:-$(mktemp -d /tmp/moonwatch-yocto.XXXXXX)}"
mkdir -p "$work"

if [ "$(id -u)" = 0 ]; then
  if ! locale -a 2>/dev/null | grep -qi '^en_US.utf8$'; then
    sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen 2>/dev/null
    grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
    locale-gen >/dev/null
  fi
  id bbcheck >/dev/null 2>&1 || useradd --create-home --shell /bin/bash bbcheck
  # BitBake and kas read the checkout as that user, and kas runs git with a home of its
  # own (where no safe.directory applies): they get a copy of this working tree (tracked
  # and untracked files, not ignored ones), committed in a repository the user owns.
  rm -rf "$work/moonwatch"
  mkdir -p "$work/moonwatch"
  (cd "$here" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/moonwatch")
  # The layer clones too (git refuses repositories of another owner): shared clones (their
  # objects stay where they are) owned by the user.
  mkdir -p "$work/layers"
  for r in bitbake openembedded-core meta-yocto meta-openembedded meta-raspberrypi meta-tegra; do
    [ -d "$work/layers/$r" ] || git clone -q --bare --shared "$layers/$r" "$work/layers/$r" || exit 1
  done
  layers="$work/layers"
  chown -R bbcheck: "$work"
  runuser -u bbcheck -- sh -c "cd '$work/moonwatch' && git init -q && git add -A && \
    git -c user.name=check -c user.email=check@localhost commit -qm 'working tree'" || exit 1
  exec runuser -u bbcheck -- env HOME=/home/bbcheck \
    ${MOONWATCH_YOCTO_BOARDS+MOONWATCH_YOCTO_BOARDS="$MOONWATCH_YOCTO_BOARDS"} \
    "$work/moonwatch/yocto/check-bitbake.sh" "$layers" "$work"
fi

kas="$HOME/.cache/moonwatch/kas-venv/bin/kas"
if ! [ -x "$kas" ]; then
  python3 -m venv "$HOME/.cache/moonwatch/kas-venv" &&
    "$HOME/.cache/moonwatch/kas-venv/bin/pip" install -q "kas==5.5" || exit 1
fi

export KAS_WORK_DIR="$work"
export KAS_PREMIRRORS="https://git.openembedded.org/bitbake $layers/bitbake
https://git.openembedded.org/openembedded-core $layers/openembedded-core
https://git.yoctoproject.org/meta-yocto $layers/meta-yocto
https://git.openembedded.org/meta-openembedded $layers/meta-openembedded
https://github.com/agherzan/meta-raspberrypi $layers/meta-raspberrypi
https://github.com/OE4T/meta-tegra $layers/meta-tegra"
# No network for BitBake either: a recipe that would fetch at parse time fails here.
# (kas wants every file of a configuration in one repository: this one's ignored build/.)
mkdir -p "$here/build"
offline="$here/build/kas-offline.yml"
cat > "$offline" <<'EOF'
header:
  version: 14
local_conf_header:
  offline: |
    BB_NO_NETWORK = "1"
EOF

pass=0
fail=0
check() { # name, command (run in the kas shell)
  local name="$1" log
  log="$work/$(echo "$name" | tr ' /:' '___').log"
  if "$kas" shell "$kasfile:$offline" -c "$2" > "$log" 2>&1; then
    echo "ok   $name"
    pass=$((pass + 1))
  else
    echo "FAIL $name (log: $log)"
    grep -E '^(ERROR|FATAL)|^ERROR:' "$log" | head -5 | sed 's/^/       /'
    fail=$((fail + 1))
  fi
}

for board in ${MOONWATCH_YOCTO_BOARDS-raspberrypi5 jetson-orin-nano}; do
  kasfile="$here/yocto/meta-moonwatch/kas/$board.yml"
  export KAS_BUILD_DIR="$work/build-$board"
  echo "== $board ($(basename "$kasfile"))"
  if ! "$kas" checkout "$kasfile:$offline" > "$work/checkout-$board.log" 2>&1; then
    echo "FAIL $board: kas checkout (log: $work/checkout-$board.log)"
    tail -5 "$work/checkout-$board.log" | sed 's/^/       /'
    fail=$((fail + 1))
    continue
  fi
  check "$board: parse" "bitbake -p"
  check "$board: bitbake -n moonwatch" "bitbake -n moonwatch"
  check "$board: bitbake -n core-image-base" "bitbake -n core-image-base"
  env_log="$work/env-$board.txt"
  check "$board: bitbake -e moonwatch" "bitbake -e moonwatch > '$env_log'"
  grep -E '^(export )?(GGML_CPU_ARM_ARCH|CMAKE_CUDA_ARCHITECTURES|CMAKE_CUDA_COMPILER|CUDACXX|CUDA_PATH|PACKAGECONFIG|CARGO_BUILD_FLAGS|RRECOMMENDS:moonwatch)=' "$env_log" 2>/dev/null |
    sed 's/^/       /'
  case $board in
    raspberrypi5) want='^(export )?GGML_CPU_ARM_ARCH="armv8.2-a\+dotprod\+fp16"' ;;
    *) want='^export CMAKE_CUDA_ARCHITECTURES="87"' ;;
  esac
  if grep -Eq "$want" "$env_log" 2>/dev/null; then
    echo "ok   $board: the board's flags are set"
    pass=$((pass + 1))
  else
    echo "FAIL $board: expected $want in bitbake -e moonwatch"
    fail=$((fail + 1))
  fi
done

# yocto-check-layer: the layer's own checks (README, SECURITY.md, signatures of other
# recipes unchanged by adding the layer, world parses), in the Pi 5 build with every layer
# but this one (the tool adds it itself).
kasfile="$here/yocto/meta-moonwatch/kas/raspberrypi5.yml"
without="$here/build/kas-without-moonwatch.yml"
cat > "$without" <<'EOF'
header:
  version: 14
repos:
  moonwatch:
    layers:
      yocto/meta-moonwatch: disabled
EOF
export KAS_BUILD_DIR="$work/build-check-layer"
offline="$offline:$without"
check "yocto-check-layer meta-moonwatch" \
  "yocto-check-layer --no-auto-dependency -- $here/yocto/meta-moonwatch"

echo "yocto check: $pass passed, $fail failed (logs in $work)"
[ "$fail" = 0 ]

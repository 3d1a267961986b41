#!/usr/bin/env bash
# Installs moonwatch as a systemd service on this machine (Raspberry Pi OS, Ubuntu, Debian,
# Jetson Linux), as root:
#   scripts/install.sh [--board pi-camera|pi-usb|jetson|rtsp] [--no-model]
# Puts the binary in /usr/bin, the unit (and the board's drop-in) under /etc/systemd/system,
# a configuration in /etc/moonwatch/moonwatch.toml (an existing one is kept), and the model
# in /var/lib/moonwatch/models; then enables and starts the service when systemd runs.
set -euo pipefail
cd "$(dirname "$0")/.."
board="" model=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --board) board="$2"; shift 2 ;;
    --no-model) model=no; shift ;;
    *) echo "usage: $0 [--board pi-camera|pi-usb|jetson|rtsp] [--no-model]" >&2; exit 64 ;;
  esac
done
config=configs/moonwatch.toml dropin="" features=""
case "$board" in
  "") ;;
  pi-camera) config=configs/raspberry-pi-5-camera.toml dropin=systemd/raspberry-pi-camera/moonwatch-libcamera.conf ;;
  pi-usb) config=configs/raspberry-pi-usb-webcam.toml ;;
  jetson) config=configs/jetson-orin-nano.toml dropin=systemd/jetson/moonwatch-jetson.conf features="--features cuda" ;;
  rtsp) config=configs/rtsp-camera.toml ;;
  *) echo "unknown board $board" >&2; exit 64 ;;
esac

. scripts/setup.sh
moonwatch_setup
# shellcheck disable=SC2086
cargo build --profile dist --locked $features
install -D -m 0755 "$CARGO_TARGET_DIR/dist/moonwatch" /usr/bin/moonwatch
install -D -m 0644 systemd/moonwatch.service /etc/systemd/system/moonwatch.service
if [ -n "$dropin" ]; then
  install -D -m 0644 "$dropin" /etc/systemd/system/moonwatch.service.d/"$(basename "$dropin")"
fi
install -D -m 0644 docs/mqtt-api.md /usr/share/doc/moonwatch/mqtt-api.md
if [ ! -e /etc/moonwatch/moonwatch.toml ]; then
  install -D -m 0644 "$config" /etc/moonwatch/moonwatch.toml
  echo "installed $config as /etc/moonwatch/moonwatch.toml: edit [mqtt] host and [camera]"
fi
/usr/bin/moonwatch check-config --no-files /etc/moonwatch/moonwatch.toml
if [ "$model" = yes ]; then
  /usr/bin/moonwatch model pull --config /etc/moonwatch/moonwatch.toml
  /usr/bin/moonwatch check-config /etc/moonwatch/moonwatch.toml
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now moonwatch.service
  systemctl --no-pager status moonwatch.service || true
else
  echo "systemd is not running here: start it with 'moonwatch run' or boot with systemd"
fi

#!/usr/bin/env bash
# moonwatch end to end: build, get the model, start a local broker if there is none, show
# a question asked over MQTT, then run the daemon in the foreground (Ctrl-C or SIGTERM
# stops it and leaves `offline` retained).
#
# The configuration is configs/moonwatch.toml, copied to $MOONWATCH_HOME/moonwatch.toml,
# with the V4L2 camera when /dev/video0 exists and the test pattern otherwise. The real
# Moondream2 GGUFs are downloaded when the network allows; otherwise a tiny random-weight
# model with the same architecture is generated into $MOONWATCH_HOME/models/offline-test-model
# (never under the real files' names): the same code path, and every answer it gives says
# that it is the offline test model.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup
cargo build --release --locked
bin="$CARGO_TARGET_DIR/release/moonwatch"
home="${MOONWATCH_HOME:-/var/lib/moonwatch}"
models="$home/models"
port="${MOONWATCH_MQTT_PORT:-1883}"
mkdir -p "$models"

text="$models/moondream2-text-model-f16.gguf"
mmproj="$models/moondream2-mmproj-f16.gguf"
if ! "$bin" model pull --config configs/moonwatch.toml --dir "$models"; then
  test_model="$models/offline-test-model"
  echo
  echo "moonwatch: the real model could not be downloaded (see above)."
  echo "moonwatch: using a generated RANDOM-WEIGHT test model instead ($test_model):"
  echo "moonwatch: Moondream2's architecture and code path, with one known answer to everything."
  echo
  "$bin" model synth --size tiny --out "$test_model" \
    --answer " This is the offline test model, not Moondream2. Run moonwatch model pull with network access for real answers." >/dev/null
  text="$test_model/moondream2-text-model-f16.gguf"
  mmproj="$test_model/moondream2-mmproj-f16.gguf"
fi

config="$home/moonwatch.toml"
camera=v4l2
[ -e /dev/video0 ] || camera=test
sed -e "s|^source = \"v4l2\"|source = \"$camera\"|" \
    -e "s|^text = .*|text = \"$text\"|" \
    -e "s|^mmproj = .*|mmproj = \"$mmproj\"|" \
    -e "s|^state_dir = .*|state_dir = \"$home\"|" \
    -e "s|^port = 1883|port = $port|" \
    configs/moonwatch.toml > "$config"
"$bin" check-config "$config"
echo "moonwatch: camera: $camera$([ "$camera" = test ] && echo ' (no /dev/video0, using the test pattern)')"

# A broker on localhost, unless one already listens there.
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$port" > "$home/mosquitto.conf"
  mosquitto -d -c "$home/mosquitto.conf"
  sleep 0.5
  echo "moonwatch: started mosquitto on 127.0.0.1:$port"
fi

"$bin" run --config "$config" &
daemon=$!
# Stopping this script stops the daemon cleanly (it publishes offline first).
trap 'kill -TERM "$daemon" 2>/dev/null; wait "$daemon"; exit 0' TERM INT
device=$(sed -n 's/^device_id = "\(.*\)"/\1/p' "$config")
[ -n "$device" ] || device=$(tr -c 'A-Za-z0-9_\n-' '_' < /proc/sys/kernel/hostname | tr 'A-Z' 'a-z')
base="moonwatch/$device"
for _ in $(seq 1 120); do
  [ "$(mosquitto_sub -p "$port" -t "$base/availability" -C 1 -W 1 2>/dev/null)" = online ] && break
done

cat <<EOT

moonwatch is running; its topics are under $base/. Ask it something (MQTT v5, the reply
comes back on the response topic with the correlation data):

  mosquitto_sub -p $port -V mqttv5 -t demo/replies -C 1 &
  mosquitto_pub -p $port -V mqttv5 -t $base/request/query -m '{"question":"What is in the picture?"}' \\
    -D publish response-topic demo/replies -D publish correlation-data 42

or with MQTT v3.1.1 (the reply goes to $base/response/query, with your transaction):

  mosquitto_sub -p $port -t $base/response/query -C 1 &
  mosquitto_pub -p $port -t $base/request/query -m '{"question":"What is in the picture?","transaction":"t1"}'

or with moonwatch itself as the client:

  $bin ask --broker 127.0.0.1:$port --device $device "What is in the picture?"

Other requests: caption, yes_no, detect, point, snapshot, trigger_add, trigger_remove,
trigger_list, health_check (docs/mqtt-api.md). Watching everything: mosquitto_sub -p $port -v -t '$base/#'

Asking now:
EOT
mosquitto_sub -p "$port" -t "$base/response/query" -C 1 -W 120 &
sub=$!
sleep 0.5
mosquitto_pub -p "$port" -t "$base/request/query" -m '{"question":"What is in the picture?","transaction":"run.sh"}'
wait "$sub" || true
echo
echo "moonwatch: running in the foreground; Ctrl-C stops it."
wait "$daemon"

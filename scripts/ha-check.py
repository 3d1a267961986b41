"""moonwatch against a real Home Assistant: entities, states, tuning, asking, removal,
discovery-form switches, upgrades and a clean log.

Run by scripts/ha-check.sh with the Python of a virtualenv that holds the pinned Home
Assistant and paho-mqtt. It starts its own mosquitto and Home Assistant on free loopback
ports, onboards Home Assistant through its REST API (as the first user in a browser would),
adds the MQTT integration through its config flow, runs moonwatch with two cameras, and
checks through Home Assistant's REST API what a user sees. Every phase prints what it
checked; the script exits 1 when a check failed, listing each.

    python ha-check.py --moonwatch BIN --model DIR --work DIR [--previous OLD_BIN]

With --previous, Home Assistant first meets an older moonwatch publishing the entity form,
and every later phase runs on what that upgrade left: the path of an upgrading user.
Entities already in Home Assistant's registry keep their ids, so the ids that older
moonwatch named differently stay (listed in UPGRADE_KEEPS).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

FAILED = []


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        FAILED.append(what)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, timeout=60.0, every=0.25):
    """Polls fn until it returns something truthy (events through HA's API; no sleeps
    stand in for them)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(every)
    check(False, f"{what} (waited {timeout:.0f} s; last: {last!r})")
    return None


class Hass:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.token = None

    def call(self, method, path, body=None, form=False, auth=True):
        headers = {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def up(self):
        try:
            self.call("GET", "/api/onboarding", auth=False)
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def onboard(self):
        client = self.base + "/"
        r = self.call("POST", "/api/onboarding/users", {
            "client_id": client, "name": "Check", "username": "check",
            "password": "check-password-1", "language": "en"}, auth=False)
        tok = self.call("POST", "/auth/token", {
            "grant_type": "authorization_code", "code": r["auth_code"],
            "client_id": client}, form=True, auth=False)
        self.token = tok["access_token"]

    def add_mqtt(self, port):
        flow = self.call("POST", "/api/config/config_entries/flow",
                         {"handler": "mqtt", "show_advanced_options": False})
        r = self.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                      {"broker": "127.0.0.1", "port": port})
        if r.get("type") != "create_entry":
            raise SystemExit(f"the MQTT config flow did not finish: {r}")
        return r["result"]["entry_id"]

    def states(self, prefix=""):
        return {s["entity_id"]: s for s in self.call("GET", "/api/states")
                if s["entity_id"].split(".", 1)[1].startswith(prefix)}

    def state(self, entity):
        try:
            return self.call("GET", f"/api/states/{entity}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def service(self, domain, name, data):
        return self.call("POST", f"/api/services/{domain}/{name}", data)


class Broker:
    def __init__(self, work):
        self.port = free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("mosquitto listens", lambda: _connects(self.port), timeout=10)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ha-check")
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.messages = {}
        self.client.on_message = self._on_message

    def _on_message(self, _c, _u, m):
        self.messages[m.topic] = m.payload

    def publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=1)

    def retained(self, filt, settle=1.5):
        """Every retained message under `filt` (a fresh client's view of the broker)."""
        got = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-check-r{time.monotonic_ns()}")
        c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
        c.connect("127.0.0.1", self.port)
        c.subscribe(filt, qos=1)
        c.loop_start()
        time.sleep(settle)  # retained messages come at once; nothing else ends the list
        c.loop_stop()
        c.disconnect()
        return {t: p for t, p in got.items() if p}

    def stop(self):
        self.client.loop_stop()
        self.proc.terminate()
        self.proc.wait()


def _connects(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


CONFIG = """
[model]
text = "{text}"
mmproj = "{mmproj}"
memory_check = false
context_size = 1024

[mqtt]
host = "127.0.0.1"
port = {port}
device_id = "{device}"
discovery_form = "{form}"

[daemon]
state_dir = "{state}"
stats_interval = 5

[[camera]]
name = "porch"
source = "test"
width = 320
height = 240
capture_rate = 1.0

[camera.zones]
steps = [0.0, 0.5, 0.5, 1.0]
path = [0.5, 0.5, 1.0, 1.0]

[[camera.trigger]]
name = "door_open"
question = "Is the door open?"
interval = 5
device_class = "door"

[[camera.trigger]]
name = "parcel"
object = "box"
interval = 5

[[camera]]
name = "drive"
source = "test"
pattern = "ball"
width = 320
height = 240
capture_rate = 1.0

[[camera.trigger]]
name = "car"
object = "car"
interval = 5
zone = [0.0, 0.0, 1.0, 0.5]
"""

DEVICE = "checkhost"

# A camera node without a model that hands its jobs to the pool (step 11).
NODE_CONFIG = """
[model]
text = ""
mmproj = ""
[camera]
source = "test"
width = 160
height = 120
fps = 5
capture_rate = 1.0
[mqtt]
port = {port}
device_id = "fleetnode"
[daemon]
state_dir = "{state}"
[pool]
offload = true
job_timeout = 5
"""


def expected_ids():
    """The entity ids docs/home-assistant.md promises for this configuration."""
    ids = []
    for cam in ("porch", "drive"):
        p = f"moonwatch_{cam}"
        ids += [f"sensor.{p}_caption", f"image.{p}_snapshot", f"image.{p}_annotated",
                f"button.{p}_snapshot_now", f"button.{p}_caption_now",
                f"sensor.{p}_queue_depth", f"sensor.{p}_frames", f"sensor.{p}_camera",
                f"sensor.{p}_last_inference", f"text.{p}_question", f"sensor.{p}_answer"]
    trig = {"porch": ["door_open", "parcel"], "drive": ["car"]}
    for cam, names in trig.items():
        for n in names:
            p = f"moonwatch_{cam}_{n}"
            ids += [f"binary_sensor.{p}", f"switch.{p}_enabled", f"event.{p}_event",
                    f"image.{p}_snapshot", f"sensor.{p}_confidence",
                    f"number.{p}_threshold", f"number.{p}_interval", f"number.{p}_cooldown"]
    ids += ["sensor.moonwatch_porch_parcel_count", "sensor.moonwatch_drive_car_count",
            "sensor.moonwatch_porch_parcel_steps_count",
            "sensor.moonwatch_porch_parcel_path_count"]
    s = f"moonwatch_{DEVICE}_server"
    ids += [f"binary_sensor.{s}_status", f"sensor.{s}_model", f"sensor.{s}_engine",
            f"sensor.{s}_engine_busy", f"sensor.{s}_queue_depth", f"sensor.{s}_version"]
    return sorted(ids)


# Entity ids an older moonwatch (before the second Home Assistant round) gave that the
# documented ids differ from, and which the registry keeps across the upgrade.
UPGRADE_KEEPS = {
    "image.moonwatch_porch_annotated": "image.moonwatch_porch_detections",
    "image.moonwatch_drive_annotated": "image.moonwatch_drive_detections",
    "sensor.moonwatch_porch_parcel_count": "sensor.moonwatch_porch_box_count",
}


class Moonwatch:
    def __init__(self, args, broker, work):
        self.args, self.broker, self.work = args, broker, work
        self.binary = args.moonwatch
        self.proc = None
        self.state = os.path.join(work, "moonwatch-state")
        os.makedirs(self.state, exist_ok=True)

    def start(self, form):
        conf = os.path.join(self.work, "moonwatch.toml")
        with open(conf, "w") as f:
            f.write(CONFIG.format(text=os.path.join(self.args.model, "moondream2-text-model-f16.gguf"),
                                  mmproj=os.path.join(self.args.model, "moondream2-mmproj-f16.gguf"),
                                  port=self.broker.port, device=DEVICE, form=form,
                                  state=self.state))
        log = open(os.path.join(self.work, "moonwatch.log"), "a")
        self.proc = subprocess.Popen([self.binary, "run", "--config", conf],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RUST_LOG": "info"})
        try:
            rc = self.proc.wait(timeout=2)
            raise SystemExit(f"moonwatch exited at once ({rc}); see {self.work}/moonwatch.log")
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
            self.proc = None


def ours(states):
    return {k: v for k, v in states.items() if ".moonwatch_" in k}


def same_ids(hass, want, what, timeout=90):
    got = wait_for(what, lambda: (lambda s: s if sorted(s) == want else None)(
        sorted(ours(hass.states()))), timeout=timeout)
    if got is None:
        have = sorted(ours(hass.states()))
        print("    missing:", sorted(set(want) - set(have)))
        print("    extra:  ", sorted(set(have) - set(want)))
    else:
        check(True, what)
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moonwatch", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--previous", help="an older moonwatch binary to upgrade from")
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    broker = Broker(work)
    hport = free_port()
    cfg = os.path.join(work, "ha")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "configuration.yaml"), "w") as f:
        f.write("""
homeassistant:
  name: moonwatch check
  latitude: 52.0
  longitude: 4.0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: @PORT@
api:
config:
onboarding:
automation: !include automations.yaml
script:
  ha_check_notify:
    alias: what the blueprint sends (recorded for the check)
    fields:
      title: {}
      message: {}
      data: {}
    sequence:
      - action: input_text.set_value
        target:
          entity_id: input_text.ha_check_image
        data:
          value: "{{ data.image }}"
input_text:
  ha_check_image:
    name: image the blueprint sent
    max: 255
logger:
  default: warning
  logs:
    homeassistant.components.mqtt.discovery: info
    homeassistant.components.mqtt.entity: info
    # The two lines above show the migration handshake; at info level the ~50 entities
    # moving between forms trip Home Assistant's log-rate monitor, which says so as a
    # warning of its own.
    homeassistant.util.logging: error
""".replace("@PORT@", str(hport)))
    bp_dir = os.path.join(cfg, "blueprints", "automation", "moonwatch")
    os.makedirs(bp_dir)
    shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                             "blueprints", "moonwatch_trigger_notify.yaml"), bp_dir)
    with open(os.path.join(cfg, "automations.yaml"), "w") as f:
        f.write("""
- id: moonwatch_check_blueprint
  alias: door opened (from the moonwatch blueprint)
  use_blueprint:
    path: moonwatch/moonwatch_trigger_notify.yaml
    input:
      trigger_event: event.moonwatch_porch_door_open_event
      notify_action: script.ha_check_notify
""")
    hlog = os.path.join(work, "home-assistant.log")
    hproc = subprocess.Popen([sys.executable, "-m", "homeassistant", "-c", cfg, "--skip-pip", "--log-file", hlog],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mw = Moonwatch(args, broker, work)
    try:
        run(args, broker, Hass(hport), mw, hlog)
    finally:
        mw.stop()
        hproc.send_signal(signal.SIGTERM)
        try:
            hproc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hproc.kill()
        broker.stop()
    print()
    if FAILED:
        print(f"{len(FAILED)} check(s) failed:")
        for f in FAILED:
            print("  -", f)
        sys.exit(1)
    print("every check passed")


def count_log(hlog, text):
    with open(hlog, errors="replace") as f:
        return sum(text in line for line in f)


def log_problems(hlog, since):
    """WARNING and ERROR records of Home Assistant's log written after byte `since` (when
    moonwatch first started): each record's first line."""
    if not os.path.exists(hlog):
        return []
    out = []
    with open(hlog, errors="replace") as f:
        f.seek(since)
        lines = f.readlines()
    for line in lines:
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line):
            out.append(line.rstrip())
    return out


def run(args, broker, hass, mw, hlog):
    print("Home Assistant: starting")
    wait_for("Home Assistant answers", hass.up, timeout=300, every=1)
    hass.onboard()
    entry = hass.add_mqtt(broker.port)
    print(f"  MQTT integration added (broker 127.0.0.1:{broker.port})")
    want = expected_ids()
    since = os.path.getsize(hlog) if os.path.exists(hlog) else 0
    parcel = lambda e: "_parcel" in e
    if args.previous:
        print("0. an older moonwatch in the entity form")
        mw.binary = args.previous
        mw.start("entity")
        wait_for("the older moonwatch's entities",
                 lambda: len(ours(hass.states())) >= 30 and
                 hass.state("binary_sensor.moonwatch_porch_door_open") is not None, timeout=120)
        print(f"  it made {len(ours(hass.states()))} entities")
        mw.stop()
        mw.binary = args.moonwatch
        want = sorted(UPGRADE_KEEPS.get(e, e) for e in want)
        parcel = lambda e: "_parcel" in e or e == UPGRADE_KEEPS["sensor.moonwatch_porch_parcel_count"]

    print("1. device form, first start" + (" after the upgrade" if args.previous else ""))
    mw.start("device")
    same_ids(hass, want, f"exactly the {len(want)} expected entity ids, none twice")
    st = wait_for("the door trigger has a state", lambda: (lambda s: s if s and s["state"] in ("on", "off") else None)(
        hass.state("binary_sensor.moonwatch_porch_door_open")), timeout=120)
    sent = wait_for("the blueprint's automation notified with the trigger's picture",
                    lambda: (lambda s: s and s["state"].startswith("/api/image_proxy/"))(
                        hass.state("input_text.ha_check_image")), timeout=120)
    if sent:
        img = hass.state("input_text.ha_check_image")["state"]
        check(img == "/api/image_proxy/image.moonwatch_porch_door_open_snapshot", f"its picture: {img}")
        check(hass.state(img.rsplit("/", 1)[1]) is not None, "which is an image entity")
    srv = hass.state(f"binary_sensor.moonwatch_{DEVICE}_server_status")
    check(srv is not None and srv["state"] == "on", "the server's status reads on")
    ver = hass.state(f"sensor.moonwatch_{DEVICE}_server_version")
    check(ver is not None and re.match(r"\d+\.\d+", ver["state"] or ""), f"the server reports its version ({ver and ver['state']})")

    print("2. a trigger switched off reads unavailable; on again it is evaluated at once")
    before = time.time()
    hass.service("switch", "turn_off", {"entity_id": "switch.moonwatch_porch_door_open_enabled"})
    wait_for("door_open unavailable while off",
             lambda: hass.state("binary_sensor.moonwatch_porch_door_open")["state"] == "unavailable")
    check(hass.state("switch.moonwatch_porch_door_open_enabled")["state"] == "off", "its switch reads off")
    hass.service("switch", "turn_on", {"entity_id": "switch.moonwatch_porch_door_open_enabled"})
    wait_for("door_open answered again after switched on",
             lambda: (lambda s: s["state"] not in ("unavailable", "unknown") and (s["attributes"].get("answered_at") or 0) > before)(
                 hass.state("sensor.moonwatch_porch_door_open_confidence")) and
             hass.state("binary_sensor.moonwatch_porch_door_open")["state"] in ("on", "off"), timeout=60)

    print("3. tuning from Home Assistant")
    hass.service("number", "set_value", {"entity_id": "number.moonwatch_porch_door_open_threshold", "value": 0.8})
    wait_for("threshold reads 0.8", lambda: hass.state("number.moonwatch_porch_door_open_threshold")["state"] == "0.8")
    hass.service("number", "set_value", {"entity_id": "number.moonwatch_porch_door_open_interval", "value": 30})
    wait_for("interval reads 30", lambda: hass.state("number.moonwatch_porch_door_open_interval")["state"] in ("30", "30.0"))
    # Out of range from outside Home Assistant: refused, the value stays.
    broker.publish("moonwatch/porch/trigger/door_open/threshold/set", "0.2")
    broker.publish("moonwatch/porch/trigger/door_open/cooldown/set", "12")
    wait_for("cooldown reads 12", lambda: hass.state("number.moonwatch_porch_door_open_cooldown")["state"] in ("12", "12.0"))
    check(hass.state("number.moonwatch_porch_door_open_threshold")["state"] == "0.8",
          "an out-of-range threshold is refused (still 0.8)")

    print("4. asking from Home Assistant")
    hass.service("text", "set_value", {"entity_id": "text.moonwatch_porch_question", "value": "What is in the picture?"})
    ans = wait_for("the answer sensor has the answer",
                   lambda: (lambda s: s if s and s["attributes"].get("question") == "What is in the picture?" else None)(
                       hass.state("sensor.moonwatch_porch_answer")), timeout=120)
    if ans:
        check(bool(ans["state"]) and ans["state"] not in ("unknown", "unavailable"), f"answer: {ans['state'][:60]!r}")
        check(all(k in ans["attributes"] for k in ("frame_seq", "total_ms", "confidence")),
              f"the answer carries frame, timing and confidence ({ans['attributes'].get('confidence')})")

    print("5. restart: tuning kept, same entities")
    mw.stop()
    wait_for("entities unavailable while moonwatch is stopped",
             lambda: hass.state("binary_sensor.moonwatch_porch_door_open")["state"] == "unavailable")
    mw.start("device")
    same_ids(hass, want, "the same entity ids after a restart")
    wait_for("threshold still 0.8", lambda: hass.state("number.moonwatch_porch_door_open_threshold")["state"] == "0.8")

    print("6. removing a trigger removes every entity of it")
    broker.publish("moonwatch/porch/request/trigger_remove", json.dumps({"name": "parcel"}))
    want_np = [e for e in want if not parcel(e)]
    same_ids(hass, want_np, "parcel's entities gone (device form)")

    print("7. switching to the entity form")
    mw.stop()
    mw.start("entity")
    same_ids(hass, want_np, "the same entity ids in the entity form")
    wait_for("door_open has a state again",
             lambda: hass.state("binary_sensor.moonwatch_porch_door_open")["state"] in ("on", "off"), timeout=120)
    left = {t: json.loads(p) for t, p in broker.retained("homeassistant/device/#").items()}
    check(all(not v.get("cmps") for v in left.values()),
          f"the device-form configs left retained have no components ({sorted(left)})")
    check(count_log(hlog, "Rollback to MQTT platform discovery schema started") >= len(want_np),
          "Home Assistant saw the rollback handshake for every entity")

    print("8. a trigger added and removed in the entity form")
    broker.publish("moonwatch/porch/request/trigger_add", json.dumps(
        {"trigger": {"name": "cat", "object": "cat", "interval": 5}}))
    want_cat = sorted(want_np + [f"{d}.moonwatch_porch_cat{s}" for d, s in [
        ("binary_sensor", ""), ("switch", "_enabled"), ("event", "_event"), ("image", "_snapshot"),
        ("sensor", "_confidence"), ("sensor", "_count"), ("sensor", "_steps_count"),
        ("sensor", "_path_count"), ("number", "_threshold"), ("number", "_interval"),
        ("number", "_cooldown")]])
    same_ids(hass, want_cat, "cat's entities added (entity form)")
    broker.publish("moonwatch/porch/request/trigger_remove", json.dumps({"name": "cat"}))
    same_ids(hass, want_np, "cat's entities removed (entity form)")

    print("9. reloading the MQTT integration brings nothing back")
    hass.call("POST", f"/api/config/config_entries/entry/{entry}/reload")
    time.sleep(3)  # what a reload resurrects comes from retained configs at once
    same_ids(hass, want_np, "the same entities after a reload")

    print("10. back to the device form, and an upgrade from a version that left ghosts")
    mw.stop()
    # What an older moonwatch in the entity form may have left: a trigger since removed.
    ghost = {"name": "old thing", "unique_id": "moonwatch_porch_old_thing",
             "state_topic": "moonwatch/porch/trigger/old_thing",
             "device": {"identifiers": ["moonwatch_porch"], "name": "moonwatch porch"}}
    broker.publish("homeassistant/binary_sensor/moonwatch_porch/old_thing/config", json.dumps(ghost), retain=True)
    wait_for("the ghost appears", lambda: hass.state("binary_sensor.moonwatch_porch_old_thing") is not None)
    mw.start("device")
    same_ids(hass, want_np, "the same entity ids in the device form, the ghost gone")
    check(count_log(hlog, "Migration to MQTT device discovery schema started") >= len(want_np),
          "Home Assistant saw the migration handshake for every entity")
    left = broker.retained("homeassistant/+/+/+/config")
    check(not left, f"no entity-form config left retained ({sorted(left)})")
    hass.call("POST", f"/api/config/config_entries/entry/{entry}/reload")
    time.sleep(3)
    same_ids(hass, want_np, "the same entities after another reload")

    print("11. a camera node of a fleet: its pool sensor")
    mw.stop()
    beat = {"online": True, "queue_depth": 0, "max_pending": 4, "served": 0,
            "interval_s": 3600, "slots": 1}
    broker.publish("moonwatch/pool/worker/w9", json.dumps(beat), retain=True)
    node_conf = os.path.join(mw.work, "node.toml")
    node_state = os.path.join(mw.work, "node-state")
    with open(node_conf, "w") as f:
        f.write(NODE_CONFIG.format(port=broker.port, state=node_state))
    node_log = open(os.path.join(mw.work, "node.log"), "a")
    node = subprocess.Popen([args.moonwatch, "run", "--config", node_conf], stdout=node_log,
                            stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
    sensor = "sensor.moonwatch_fleetnode_server_pool_workers"
    try:
        st = wait_for("the pool sensor counts the worker", lambda: (lambda s: s if s and s["state"] == "1" else None)(
            hass.state(sensor)), timeout=120)
        if st:
            a = st["attributes"]
            check(a.get("live") == 1 and a.get("suspect") == [], f"its attributes: live {a.get('live')}, suspect {a.get('suspect')}")
        # The worker reports a full queue: no longer healthy, and Home Assistant hears it
        # at once (not at the next stats interval, a minute away).
        broker.publish("moonwatch/pool/worker/w9", json.dumps({**beat, "queue_depth": 4}), retain=True)
        if wait_for("a full worker is not counted, within seconds", lambda: (lambda s: s and s["state"] == "0")(
                hass.state(sensor)), timeout=10):
            check(True, "a full worker is not counted, within seconds")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        broker.publish("moonwatch/pool/worker/w9", "", retain=True)

    print("12. Home Assistant's log")
    problems = log_problems(hlog, since)
    for p in problems:
        print("    " + p)
    check(not problems, f"no warning or error in Home Assistant's log ({len(problems)})")


if __name__ == "__main__":
    main()

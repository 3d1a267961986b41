use super::entities::{slug, trigger_objects};
use super::*;
use crate::config::MqttConfig;
use crate::mqtt::topics::Topics;
use crate::triggers::TriggerConfig;
use serde_json::{json, Value};

fn trig(v: Value) -> TriggerConfig {
    serde_json::from_value(v).expect("trigger")
}

fn camera(id: &str, triggers: &[&TriggerConfig], zones: &[&str]) -> Node {
    let t = Topics::camera(&MqttConfig::default(), "host", id);
    let zones: Vec<String> = zones.iter().map(|z| (*z).to_owned()).collect();
    camera_node(&t, triggers, &zones)
}

fn find<'n>(node: &'n Node, object: &str) -> &'n EntityConfig {
    &node
        .components
        .iter()
        .find(|c| c.object == object)
        .unwrap_or_else(|| panic!("no {object}"))
        .config
}

#[test]
fn names_give_the_documented_entity_ids_on_every_home_assistant() {
    // Before 2025.10 Home Assistant derives the id from the device's and the entity's
    // names; later it takes default_entity_id. Both must be the same, for every entity,
    // whatever the camera, trigger and zone are called.
    let door = trig(json!({"name":"garage_door","question":"Is it open?","device_class":"door"}));
    let parcel = trig(json!({"name":"parcel","object":"box"}));
    let odd = trig(json!({"name":"a__b2","object":"cat","zone":"left"}));
    for (id, zones) in [
        ("garage", vec!["left", "drive_way"]),
        ("front-door", vec![]),
    ] {
        let node = camera(id, &[&door, &parcel, &odd], &zones);
        let server = server_node(&Topics::new(&MqttConfig::default(), "my-host"), true);
        for n in [&node, &server] {
            for c in &n.components {
                let derived = format!(
                    "{}.{}",
                    c.domain,
                    slug(&format!("{} {}", n.device.name, c.config.name))
                );
                assert_eq!(derived, c.config.default_entity_id, "{}", c.object);
                assert!(c
                    .config
                    .default_entity_id
                    .split('.')
                    .nth(1)
                    .is_some_and(|s| s
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
            }
        }
    }
    let node = camera("garage", &[&door, &parcel], &["left"]);
    let ids: Vec<&str> = node
        .components
        .iter()
        .map(|c| c.config.default_entity_id.as_str())
        .collect();
    for want in [
        "binary_sensor.moonwatch_garage_garage_door",
        "switch.moonwatch_garage_garage_door_enabled",
        "event.moonwatch_garage_garage_door_event",
        "image.moonwatch_garage_garage_door_snapshot",
        "sensor.moonwatch_garage_garage_door_confidence",
        "number.moonwatch_garage_garage_door_threshold",
        "number.moonwatch_garage_garage_door_interval",
        "number.moonwatch_garage_garage_door_cooldown",
        // Named after the trigger, not its object: two triggers on one object differ.
        "sensor.moonwatch_garage_parcel_count",
        "sensor.moonwatch_garage_parcel_left_count",
        "image.moonwatch_garage_annotated",
        "image.moonwatch_garage_snapshot",
        "text.moonwatch_garage_question",
        "sensor.moonwatch_garage_answer",
        "button.moonwatch_garage_caption_now",
    ] {
        assert!(ids.contains(&want), "{want} not in {ids:?}");
    }
    assert!(
        !ids.contains(&"sensor.moonwatch_garage_garage_door_count"),
        "a question has no count"
    );
}

#[test]
fn what_reads_a_triggers_answer_is_unavailable_while_it_is_switched_off() {
    let car = trig(json!({"name":"car","object":"car"}));
    let node = camera("garage", &[&car], &["drive"]);
    let off = |object: &str| {
        find(&node, object).availability.iter().any(|a| {
            a.topic == "moonwatch/garage/trigger/car/enabled" && a.payload_not_available == "OFF"
        })
    };
    for object in ["car", "car_count", "car_confidence", "car_drive_count"] {
        assert!(off(object), "{object}");
        assert_eq!(find(&node, object).availability_mode, "all");
    }
    for object in ["car_enabled", "car_threshold", "car_event", "car_snapshot"] {
        assert!(!off(object), "{object} stays usable");
    }
    let count = find(&node, "car_drive_count");
    assert_eq!(
        count.value_template.as_deref(),
        Some("{{ value_json.details.zones.drive | default(none) }}")
    );
    let threshold = find(&node, "car_threshold");
    assert_eq!(
        threshold.command_topic.as_deref(),
        Some("moonwatch/garage/trigger/car/threshold/set")
    );
    assert_eq!((threshold.min, threshold.max), (Some(0.5), Some(1.0)));
    assert_eq!(
        find(&node, "car_interval").unit_of_measurement.as_deref(),
        Some("s")
    );
    // Every entity a trigger has is in the list its removal uses.
    let t = Topics::camera(&MqttConfig::default(), "host", "garage");
    let objects = trigger_objects(&t, &car, &["drive".to_owned()]);
    let mine: Vec<(&str, String)> = node
        .components
        .iter()
        .filter(|c| c.object.starts_with("car"))
        .map(|c| (c.domain, c.object.clone()))
        .collect();
    assert_eq!(mine.len(), objects.len());
    assert!(mine.iter().all(|m| objects.contains(m)));
}

#[test]
fn cameras_hang_off_the_server_device() {
    let node = camera("garage", &[], &[]);
    assert_eq!(
        node.device.via_device.as_deref(),
        Some("moonwatch_host_server")
    );
    let server = server_node(&Topics::new(&MqttConfig::default(), "host"), false);
    assert!(
        !server.components.iter().any(|c| c.object == "pool_workers"),
        "a node with its own model has no pool sensor"
    );
    assert_eq!(server.id, "moonwatch_host_server");
    assert_eq!(server.device.identifiers, ["moonwatch_host_server"]);
    let status = &server.components[0].config;
    assert_eq!(
        status.state_topic.as_deref(),
        Some("moonwatch/host/availability")
    );
    assert!(
        status.availability.is_empty(),
        "reads off when moonwatch is down"
    );
    let q = find(&node, "question");
    assert_eq!(
        q.command_topic.as_deref(),
        Some("moonwatch/garage/question/set")
    );
}

fn topics(out: &[Publication]) -> Vec<(&str, &[u8], bool)> {
    out.iter()
        .map(|p| (p.topic.as_str(), &p.payload[..], p.retain))
        .collect()
}

const MIGRATE: &[u8] = br#"{"migrate_discovery":true}"#;

#[test]
fn a_fresh_broker_gets_the_config_alone() {
    let door = trig(json!({"name":"door","question":"Q?"}));
    let node = camera("cam", &[&door], &[]);
    let mut held = Held::default();
    let out = publish("ha", &node, &[], DiscoveryForm::Device, &mut held);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "ha/device/moonwatch_cam/config");
    assert!(out[0].retain);
    assert_eq!(held.device.len(), node.components.len());
    // Published again as it is: the same config, nothing to move.
    let again = publish("ha", &node, &[], DiscoveryForm::Device, &mut held);
    assert_eq!(again, out);
    let mut held = Held::default();
    let out = publish("ha", &node, &[], DiscoveryForm::Entity, &mut held);
    assert_eq!(out.len(), node.components.len());
    assert!(out.iter().all(|p| p.retain && !p.payload.is_empty()));
}

#[test]
fn to_the_device_form_old_configs_are_handed_over_and_ghosts_removed() {
    let door = trig(json!({"name":"door","question":"Q?"}));
    let node = camera("cam", &[&door], &[]);
    let mut inv = Inventory::new("ha");
    let nodes = ["moonwatch_cam"];
    assert!(inv.observe(&nodes, "ha/binary_sensor/moonwatch_cam/door/config", b"{}"));
    assert!(inv.observe(&nodes, "ha/sensor/moonwatch_cam/old_count/config", b"{}"));
    assert!(!inv.observe(&nodes, "ha/sensor/moonwatch_other/x/config", b"{}"));
    assert!(!inv.observe(&nodes, "ha/status", b"online"));
    let held = inv.nodes.get_mut("moonwatch_cam").expect("held");
    let out = publish("ha", &node, &[], DiscoveryForm::Device, held);
    let door_t = "ha/binary_sensor/moonwatch_cam/door/config";
    let old_t = "ha/sensor/moonwatch_cam/old_count/config";
    assert_eq!(
        topics(&out)[..3],
        [
            (door_t, MIGRATE, false),
            (door_t, &b""[..], true),
            (old_t, &b""[..], true)
        ]
    );
    assert_eq!(out[3].topic, "ha/device/moonwatch_cam/config");
    assert_eq!(out.len(), 4);
    assert!(held.entities.is_empty());
}

#[test]
fn to_the_entity_form_a_device_config_is_rolled_back_and_left_without_components() {
    let door = trig(json!({"name":"door","question":"Q?"}));
    let node = camera("cam", &[&door], &[]);
    let mut inv = Inventory::new("ha");
    let nodes = ["moonwatch_cam"];
    let old = json!({"dev": {}, "cmps": {
        "door": {"p": "binary_sensor", "name": "door"},
        "gone": {"p": "sensor", "name": "gone"},
        "removed_before": {"p": "sensor"}
    }});
    inv.observe(
        &nodes,
        "ha/device/moonwatch_cam/config",
        &serde_json::to_vec(&old).expect("json"),
    );
    let held = inv.nodes.get_mut("moonwatch_cam").expect("held");
    assert_eq!(held.device.len(), 2, "a removal is no live component");
    let out = publish("ha", &node, &[], DiscoveryForm::Entity, held);
    let dev = "ha/device/moonwatch_cam/config";
    // 1. what moonwatch no longer has is removed (with the kept ones as they are);
    let first: Value = serde_json::from_slice(&out[0].payload).expect("json");
    assert_eq!((out[0].topic.as_str(), out[0].retain), (dev, false));
    assert_eq!(first["cmps"]["gone"], json!({"p": "sensor"}));
    assert_eq!(first["cmps"]["door"]["p"], "binary_sensor");
    assert!(
        first["cmps"].get("door_event").is_none(),
        "nothing new in the old form"
    );
    // 2. the rest handed over, 3. configured per entity, 4. a config without components.
    assert_eq!(topics(&out)[1], (dev, MIGRATE, false));
    let entity = out[2..out.len() - 1].iter();
    assert_eq!(entity.len(), node.components.len());
    let last = out.last().expect("stub");
    assert_eq!((last.topic.as_str(), last.retain), (dev, true));
    let stub: Value = serde_json::from_slice(&last.payload).expect("json");
    assert_eq!(stub["cmps"], json!({}));
    // The stub read back holds nothing: a later start has nothing to move.
    let mut inv2 = Inventory::new("ha");
    inv2.observe(&nodes, dev, &last.payload);
    assert!(inv2.nodes["moonwatch_cam"].device.is_empty());
}

#[test]
fn removed_triggers_are_removed_in_either_form() {
    let door = trig(json!({"name":"door","question":"Q?"}));
    let car = trig(json!({"name":"car","object":"car"}));
    let node = camera("cam", &[&door], &[]);
    let t = Topics::camera(&MqttConfig::default(), "host", "cam");
    let removed = trigger_objects(&t, &car, &[]);
    let mut held = Held::default();
    let out = publish("ha", &node, &removed, DiscoveryForm::Device, &mut held);
    let v: Value = serde_json::from_slice(&out[0].payload).expect("json");
    assert_eq!(v["cmps"]["car_count"], json!({"p": "sensor"}));
    assert_eq!(v["cmps"]["car"], json!({"p": "binary_sensor"}));
    let mut held = Held::default();
    let out = publish("ha", &node, &removed, DiscoveryForm::Entity, &mut held);
    let cleared: Vec<&str> = out
        .iter()
        .filter(|p| p.payload.is_empty())
        .map(|p| p.topic.as_str())
        .collect();
    assert_eq!(cleared.len(), removed.len());
    assert!(cleared.contains(&"ha/sensor/moonwatch_cam/car_count/config"));
}

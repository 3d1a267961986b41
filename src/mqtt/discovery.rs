//! Home Assistant MQTT discovery: each camera is a device with, per trigger, a binary
//! sensor, switch, event and image (and a count sensor for objects), and for the camera a
//! caption sensor, snapshot and annotated images, buttons and diagnostic sensors.
//!
//! Two forms, as `mqtt.discovery_form` says: `device` (one retained config per camera on
//! `{prefix}/device/moonwatch_{id}/config` listing its components under `cmps`; Home
//! Assistant 2024.11 and later), or `entity` (one retained config per entity, for older
//! versions). Both give the same discovery ids (`moonwatch_{id} {object}`), so switching
//! form keeps the entities. A removed component is published as `{"p": platform}` in the
//! device form, as an empty config in the entity form. Pure: returns (topic, payload).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::api::Topics;
use crate::config::DiscoveryForm;
use crate::triggers::TriggerConfig;

/// One entity's discovery config, as Home Assistant's MQTT integration reads it (the keys
/// of <https://www.home-assistant.io/integrations/mqtt/>; unset keys are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct EntityConfig {
    pub name: String,
    pub unique_id: String,
    /// The entity id Home Assistant gives a new entity (`{domain}.{id}`); replaces
    /// `object_id`, deprecated in Home Assistant 2025.10 ("stops working in 2026.4").
    pub default_entity_id: String,
    pub availability: Vec<Availability>,
    pub availability_mode: String,
    pub device: Device,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_off: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_attributes_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_attributes_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_of_measurement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `event` entities: the `event_type` values the state topic carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// `diagnostic` for entities about moonwatch itself rather than the scene.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_category: Option<String>,
    /// `button` entities: where a press is published, and what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_press: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Availability {
    pub topic: String,
    pub payload_available: String,
    pub payload_not_available: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Device {
    pub identifiers: Vec<String>,
    pub name: String,
    pub model: String,
    pub manufacturer: String,
    pub sw_version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    pub name: String,
    pub sw_version: String,
}

fn availability(topic: String) -> Availability {
    Availability {
        topic,
        payload_available: "online".into(),
        payload_not_available: "offline".into(),
    }
}

/// What every entity of this device shares. Entities are unavailable when the daemon is
/// offline or its camera delivers no fresh frames: a dead camera must not leave the last
/// `ON` standing.
fn common(t: &Topics, domain: &str, object: &str, name: &str) -> EntityConfig {
    EntityConfig {
        name: name.to_owned(),
        unique_id: format!("moonwatch_{}_{object}", t.device_id),
        default_entity_id: format!("{domain}.moonwatch_{}_{object}", t.device_id),
        availability: vec![
            availability(t.availability()),
            availability(t.camera_availability()),
        ],
        availability_mode: "all".into(),
        device: Device {
            identifiers: vec![format!("moonwatch_{}", t.device_id)],
            name: format!("moonwatch {}", t.device_id),
            model: "moonwatch (Moondream2)".into(),
            manufacturer: "moonwatch".into(),
            sw_version: env!("CARGO_PKG_VERSION").into(),
        },
        origin: Origin {
            name: "moonwatch".into(),
            sw_version: env!("CARGO_PKG_VERSION").into(),
        },
        ..EntityConfig::default()
    }
}

fn bytes(c: &EntityConfig) -> Vec<u8> {
    serde_json::to_vec(c).unwrap_or_default()
}

fn entity_topic(t: &Topics, domain: &str, object: &str) -> String {
    format!(
        "{}/{domain}/moonwatch_{}/{object}/config",
        t.discovery_prefix, t.device_id
    )
}

/// The topic of a camera's device-form discovery config.
pub fn device_topic(t: &Topics) -> String {
    format!(
        "{}/device/moonwatch_{}/config",
        t.discovery_prefix, t.device_id
    )
}

/// One entity of a camera: its platform, object id (unique within the camera) and config.
#[derive(Debug)]
pub struct Component {
    pub domain: &'static str,
    pub object: String,
    pub config: EntityConfig,
}

impl Component {
    fn new(domain: &'static str, object: String, config: EntityConfig) -> Self {
        Self {
            domain,
            object,
            config,
        }
    }
    fn topic(&self, t: &Topics) -> String {
        entity_topic(t, self.domain, &self.object)
    }
}

/// Every entity a trigger has: a binary sensor (ON while the question is answered yes /
/// the object seen), a switch (evaluated or not), an event entity (`begin` / `end`), an
/// image entity with the frame of its last begin, and for object triggers a sensor with
/// how many were seen in the last evaluation.
pub fn trigger_components(t: &Topics, trigger: &TriggerConfig) -> Vec<Component> {
    let name = &trigger.name;
    let label = name.replace('_', " ");
    let state = EntityConfig {
        state_topic: Some(t.trigger_state(name)),
        payload_on: Some("ON".into()),
        payload_off: Some("OFF".into()),
        json_attributes_topic: Some(t.trigger_attributes(name)),
        device_class: trigger.device_class.clone(),
        ..common(t, "binary_sensor", name, &label)
    };
    let event = EntityConfig {
        state_topic: Some(t.trigger_event(name)),
        event_types: vec!["begin".into(), "end".into()],
        ..common(
            t,
            "event",
            &format!("{name}_event"),
            &format!("{label} event"),
        )
    };
    let snapshot = EntityConfig {
        image_topic: Some(t.trigger_snapshot(name)),
        content_type: Some("image/jpeg".into()),
        ..common(
            t,
            "image",
            &format!("{name}_snapshot"),
            &format!("{label} snapshot"),
        )
    };
    let switch = EntityConfig {
        state_topic: Some(t.trigger_enabled(name)),
        command_topic: Some(format!("{}/trigger/{name}/set", t.base)),
        payload_on: Some("ON".into()),
        payload_off: Some("OFF".into()),
        entity_category: Some("config".into()),
        icon: Some("mdi:eye-check-outline".into()),
        ..common(
            t,
            "switch",
            &format!("{name}_enabled"),
            &format!("{label} enabled"),
        )
    };
    let mut out = vec![
        Component::new("binary_sensor", name.clone(), state),
        Component::new("switch", format!("{name}_enabled"), switch),
        Component::new("event", format!("{name}_event"), event),
        Component::new("image", format!("{name}_snapshot"), snapshot),
    ];
    if let Some(object) = &trigger.object {
        let count = EntityConfig {
            state_topic: Some(t.trigger_attributes(name)),
            value_template: Some("{{ value_json.details.count }}".into()),
            json_attributes_topic: Some(t.trigger_attributes(name)),
            json_attributes_template: Some("{{ value_json.details | tojson }}".into()),
            state_class: Some("measurement".into()),
            unit_of_measurement: Some(object.clone()),
            ..common(
                t,
                "sensor",
                &format!("{name}_count"),
                &format!("{object} count"),
            )
        };
        out.push(Component::new("sensor", format!("{name}_count"), count));
    }
    out
}

/// Every entity a trigger has, in the entity form: (config topic, retained payload).
pub fn trigger_entities(t: &Topics, trigger: &TriggerConfig) -> Vec<(String, Vec<u8>)> {
    trigger_components(t, trigger)
        .into_iter()
        .map(|c| (c.topic(t), bytes(&c.config)))
        .collect()
}

/// The (domain, object) of every entity a trigger may have had (to delete them all).
fn trigger_objects(trigger: &TriggerConfig) -> Vec<(&'static str, String)> {
    let name = &trigger.name;
    vec![
        ("binary_sensor", name.clone()),
        ("event", format!("{name}_event")),
        ("image", format!("{name}_snapshot")),
        ("switch", format!("{name}_enabled")),
        ("sensor", format!("{name}_count")),
    ]
}

/// The entity-form config topics of every entity a trigger may have had.
pub fn trigger_entity_topics(t: &Topics, trigger: &TriggerConfig) -> Vec<String> {
    trigger_objects(trigger)
        .into_iter()
        .map(|(d, o)| entity_topic(t, d, &o))
        .collect()
}

/// A camera's whole discovery: the device's entities and those of `triggers`, and the
/// removal of the entities of `gone` (removed or replaced triggers) that no trigger has
/// any more.
pub fn camera(
    t: &Topics,
    triggers: &[&TriggerConfig],
    gone: &[&TriggerConfig],
    form: DiscoveryForm,
) -> Vec<(String, Vec<u8>)> {
    let mut present = device_components(t);
    for trig in triggers {
        present.extend(trigger_components(t, trig));
    }
    let removed: Vec<(&'static str, String)> = gone
        .iter()
        .flat_map(|g| trigger_objects(g))
        .filter(|(_, o)| present.iter().all(|c| &c.object != o))
        .collect();
    // Configs in the entity form (this form, or left by an older moonwatch) of removed
    // entities are cleared so Home Assistant never brings them back.
    let cleared = removed
        .iter()
        .map(|(d, o)| (entity_topic(t, d, o), Vec::new()));
    match form {
        DiscoveryForm::Entity => present
            .iter()
            .map(|c| (c.topic(t), bytes(&c.config)))
            .chain(cleared)
            .collect(),
        DiscoveryForm::Device => {
            let mut cmps = Map::new();
            for c in present {
                let Ok(Value::Object(mut entity)) = serde_json::to_value(&c.config) else {
                    continue;
                };
                entity.remove("device");
                entity.remove("origin");
                entity.insert("p".into(), c.domain.into());
                cmps.insert(c.object, Value::Object(entity));
            }
            for (domain, object) in &removed {
                cmps.insert(object.clone(), serde_json::json!({ "p": domain }));
            }
            let base = common(t, "device", "", "");
            let payload = serde_json::json!({
                "dev": base.device,
                "o": base.origin,
                "cmps": cmps,
            });
            let device = serde_json::to_vec(&payload).unwrap_or_default();
            std::iter::once((device_topic(t), device))
                .chain(cleared)
                .collect()
        }
    }
}

/// The caption sensor, the snapshot and annotated images, the buttons and the diagnostic
/// sensors of a camera.
pub fn device_components(t: &Topics) -> Vec<Component> {
    let caption = EntityConfig {
        state_topic: Some(t.caption()),
        value_template: Some("{{ value_json.caption[:255] }}".into()),
        json_attributes_topic: Some(t.caption()),
        icon: Some("mdi:text-box-outline".into()),
        ..common(t, "sensor", "caption", "caption")
    };
    let image = |object: &str, name: &str, topic: String| EntityConfig {
        image_topic: Some(topic),
        content_type: Some("image/jpeg".into()),
        ..common(t, "image", object, name)
    };
    let mut out = vec![
        Component::new("sensor", "caption".into(), caption),
        Component::new(
            "image",
            "snapshot".into(),
            image("snapshot", "snapshot", t.snapshot()),
        ),
        Component::new(
            "image",
            "annotated".into(),
            image("annotated", "detections", t.annotated()),
        ),
    ];
    // Buttons: take a snapshot / a caption now (the replies go to the default topics).
    for (object, name, request) in [
        ("snapshot_now", "snapshot now", "snapshot"),
        ("caption_now", "caption now", "caption"),
    ] {
        let button = EntityConfig {
            command_topic: Some(format!("{}/request/{request}", t.base)),
            payload_press: Some("{}".into()),
            ..common(t, "button", object, name)
        };
        out.push(Component::new("button", object.into(), button));
    }
    // Diagnostics from `{base}/stats`; available while the daemon is, camera or not.
    for (object, name, template, unit) in [
        (
            "queue_depth",
            "queue depth",
            "{{ value_json.queue_depth }}",
            None,
        ),
        ("frames", "frames", "{{ value_json.frames }}", None),
        ("camera", "camera", "{{ value_json.camera }}", None),
        (
            "last_inference",
            "last inference",
            "{{ value_json.counters.last_trigger_ms or value_json.counters.last_request_ms }}",
            Some("ms"),
        ),
    ] {
        let mut sensor = EntityConfig {
            state_topic: Some(t.stats()),
            value_template: Some(template.into()),
            entity_category: Some("diagnostic".into()),
            unit_of_measurement: unit.map(str::to_owned),
            ..common(t, "sensor", object, name)
        };
        sensor.availability.truncate(1);
        out.push(Component::new("sensor", object.into(), sensor));
    }
    out
}

/// The device's own entities in the entity form: (config topic, retained payload).
pub fn device_entities(t: &Topics) -> Vec<(String, Vec<u8>)> {
    device_components(t)
        .into_iter()
        .map(|c| (c.topic(t), bytes(&c.config)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;
    use serde_json::{json, Value};

    fn find(all: &[(String, Vec<u8>)], topic: &str) -> Value {
        let (_, payload) = all
            .iter()
            .find(|(t, _)| t == topic)
            .unwrap_or_else(|| panic!("no {topic}"));
        serde_json::from_slice(payload).unwrap()
    }

    #[test]
    fn trigger_entities_follow_home_assistant_conventions() {
        let t = Topics::new(&MqttConfig::default(), "garage");
        let trig: TriggerConfig = serde_json::from_value(
            json!({"name":"door_open","question":"Is the door open?","device_class":"garage_door"}),
        )
        .unwrap();
        let all = trigger_entities(&t, &trig);
        assert_eq!(
            all.len(),
            4,
            "binary sensor, switch, event, image; no count for a question"
        );
        let sw = find(
            &all,
            "homeassistant/switch/moonwatch_garage/door_open_enabled/config",
        );
        assert_eq!(
            sw["command_topic"],
            "moonwatch/garage/trigger/door_open/set"
        );
        assert_eq!(
            sw["state_topic"],
            "moonwatch/garage/trigger/door_open/enabled"
        );
        let v = find(
            &all,
            "homeassistant/binary_sensor/moonwatch_garage/door_open/config",
        );
        assert_eq!(v["state_topic"], "moonwatch/garage/trigger/door_open");
        assert_eq!(v["unique_id"], "moonwatch_garage_door_open");
        assert_eq!(
            v["default_entity_id"],
            "binary_sensor.moonwatch_garage_door_open"
        );
        assert!(v.get("object_id").is_none(), "deprecated since 2025.10");
        assert_eq!(v["device_class"], "garage_door");
        assert_eq!(
            v["availability"][0]["topic"],
            "moonwatch/garage/availability"
        );
        assert_eq!(
            v["availability"][1]["topic"],
            "moonwatch/garage/camera/availability"
        );
        assert_eq!(v["availability_mode"], "all");
        assert_eq!(v["device"]["identifiers"][0], "moonwatch_garage");
        let e = find(
            &all,
            "homeassistant/event/moonwatch_garage/door_open_event/config",
        );
        assert_eq!(e["state_topic"], "moonwatch/garage/trigger/door_open/event");
        assert_eq!(e["event_types"], json!(["begin", "end"]));
        assert_eq!(
            e["default_entity_id"],
            "event.moonwatch_garage_door_open_event"
        );
        let i = find(
            &all,
            "homeassistant/image/moonwatch_garage/door_open_snapshot/config",
        );
        assert_eq!(
            i["image_topic"],
            "moonwatch/garage/trigger/door_open/snapshot"
        );

        let car: TriggerConfig =
            serde_json::from_value(json!({"name":"car","object":"car"})).unwrap();
        let all = trigger_entities(&t, &car);
        let v = find(
            &all,
            "homeassistant/sensor/moonwatch_garage/car_count/config",
        );
        assert_eq!(v["state_topic"], "moonwatch/garage/trigger/car/attributes");
        assert_eq!(v["value_template"], "{{ value_json.details.count }}");
        // Removal covers every entity a trigger can have.
        let topics = trigger_entity_topics(&t, &car);
        assert!(all.iter().all(|(topic, _)| topics.contains(topic)));

        let dev = device_entities(&t);
        find(&dev, "homeassistant/image/moonwatch_garage/snapshot/config");
        let b = find(
            &dev,
            "homeassistant/button/moonwatch_garage/caption_now/config",
        );
        assert_eq!(b["command_topic"], "moonwatch/garage/request/caption");
        let q = find(
            &dev,
            "homeassistant/sensor/moonwatch_garage/queue_depth/config",
        );
        assert_eq!(q["entity_category"], "diagnostic");
        assert_eq!(
            q["availability"].as_array().unwrap().len(),
            1,
            "not the camera's"
        );
    }
}

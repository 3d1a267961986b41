//! Home Assistant MQTT discovery: one device, a binary sensor per trigger, a sensor for the
//! caption, an image entity for the snapshot. Pure: returns (topic, retained payload).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::api::Topics;
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

/// The config topic of a trigger's entity.
pub fn trigger_topic(t: &Topics, trigger: &TriggerConfig) -> String {
    format!(
        "{}/binary_sensor/moonwatch_{}/{}/config",
        t.discovery_prefix, t.device_id, trigger.name
    )
}

/// A binary sensor for a trigger: ON while the question is answered yes / the object seen.
pub fn trigger(t: &Topics, trigger: &TriggerConfig) -> (String, Vec<u8>) {
    let c = EntityConfig {
        state_topic: Some(t.trigger_state(&trigger.name)),
        payload_on: Some("ON".into()),
        payload_off: Some("OFF".into()),
        json_attributes_topic: Some(t.trigger_attributes(&trigger.name)),
        device_class: trigger.device_class.clone(),
        ..common(
            t,
            "binary_sensor",
            &trigger.name,
            &trigger.name.replace('_', " "),
        )
    };
    (trigger_topic(t, trigger), bytes(&c))
}

/// The config topic of an object trigger's count sensor.
pub fn count_topic(t: &Topics, trigger: &TriggerConfig) -> String {
    format!(
        "{}/sensor/moonwatch_{}/{}_count/config",
        t.discovery_prefix, t.device_id, trigger.name
    )
}

/// For an object trigger: a sensor with how many were seen in the last evaluation.
pub fn object_count(t: &Topics, trigger: &TriggerConfig) -> Option<(String, Vec<u8>)> {
    let object = trigger.object.as_ref()?;
    let c = EntityConfig {
        state_topic: Some(t.trigger_attributes(&trigger.name)),
        value_template: Some("{{ value_json.details.count }}".into()),
        json_attributes_topic: Some(t.trigger_attributes(&trigger.name)),
        json_attributes_template: Some("{{ value_json.details | tojson }}".into()),
        state_class: Some("measurement".into()),
        unit_of_measurement: Some(object.clone()),
        ..common(
            t,
            "sensor",
            &format!("{}_count", trigger.name),
            &format!("{object} count"),
        )
    };
    Some((count_topic(t, trigger), bytes(&c)))
}

/// The caption sensor and the snapshot image.
pub fn device_entities(t: &Topics) -> Vec<(String, Vec<u8>)> {
    let caption = EntityConfig {
        state_topic: Some(t.caption()),
        value_template: Some("{{ value_json.caption[:255] }}".into()),
        json_attributes_topic: Some(t.caption()),
        icon: Some("mdi:text-box-outline".into()),
        ..common(t, "sensor", "caption", "caption")
    };
    let snapshot = EntityConfig {
        image_topic: Some(t.snapshot()),
        content_type: Some("image/jpeg".into()),
        ..common(t, "image", "snapshot", "snapshot")
    };
    vec![
        (
            format!(
                "{}/sensor/moonwatch_{}/caption/config",
                t.discovery_prefix, t.device_id
            ),
            bytes(&caption),
        ),
        (
            format!(
                "{}/image/moonwatch_{}/snapshot/config",
                t.discovery_prefix, t.device_id
            ),
            bytes(&snapshot),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;
    use serde_json::{json, Value};

    #[test]
    fn trigger_entities_follow_home_assistant_conventions() {
        let t = Topics::new(&MqttConfig::default(), "garage");
        let trig: TriggerConfig = serde_json::from_value(
            json!({"name":"door_open","question":"Is the door open?","device_class":"garage_door"}),
        )
        .unwrap();
        let (topic, payload) = trigger(&t, &trig);
        assert_eq!(
            topic,
            "homeassistant/binary_sensor/moonwatch_garage/door_open/config"
        );
        let v: Value = serde_json::from_slice(&payload).unwrap();
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
        assert!(object_count(&t, &trig).is_none());
        let car: TriggerConfig =
            serde_json::from_value(json!({"name":"car","object":"car"})).unwrap();
        let (topic, payload) = object_count(&t, &car).unwrap();
        assert_eq!(
            topic,
            "homeassistant/sensor/moonwatch_garage/car_count/config"
        );
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["state_topic"], "moonwatch/garage/trigger/car/attributes");
        assert_eq!(v["value_template"], "{{ value_json.details.count }}");
        let all = device_entities(&t);
        assert!(all
            .iter()
            .any(|(t, _)| t == "homeassistant/image/moonwatch_garage/snapshot/config"));
    }
}

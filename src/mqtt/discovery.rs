//! Home Assistant MQTT discovery: one device, a binary sensor per trigger, a sensor for the
//! caption, an image entity for the snapshot. Pure: returns (topic, retained payload).

use serde_json::{json, Value};

use super::api::Topics;
use crate::triggers::TriggerConfig;

fn device(t: &Topics) -> Value {
    json!({
        "identifiers": [format!("moonwatch_{}", t.device_id)],
        "name": format!("moonwatch {}", t.device_id),
        "model": "moonwatch (Moondream2)",
        "manufacturer": "moonwatch",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

fn common(t: &Topics, object: &str, name: &str) -> Value {
    json!({
        "name": name,
        "unique_id": format!("moonwatch_{}_{object}", t.device_id),
        "object_id": format!("moonwatch_{}_{object}", t.device_id),
        // Unavailable when the daemon is offline or its camera delivers no fresh frames:
        // a dead camera must not leave the last `ON` standing.
        "availability": [
            { "topic": t.availability(), "payload_available": "online", "payload_not_available": "offline" },
            { "topic": t.camera_availability(), "payload_available": "online", "payload_not_available": "offline" },
        ],
        "availability_mode": "all",
        "device": device(t),
        "origin": { "name": "moonwatch", "sw_version": env!("CARGO_PKG_VERSION") },
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
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
    let mut v = merge(
        common(t, &trigger.name, &trigger.name.replace('_', " ")),
        json!({
            "state_topic": t.trigger_state(&trigger.name),
            "payload_on": "ON",
            "payload_off": "OFF",
            "json_attributes_topic": t.trigger_attributes(&trigger.name),
        }),
    );
    if let Some(dc) = &trigger.device_class {
        v["device_class"] = json!(dc);
    }
    (trigger_topic(t, trigger), v.to_string().into_bytes())
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
    let v = merge(
        common(
            t,
            &format!("{}_count", trigger.name),
            &format!("{object} count"),
        ),
        json!({
            "state_topic": t.trigger_attributes(&trigger.name),
            "value_template": "{{ value_json.details.count }}",
            "json_attributes_topic": t.trigger_attributes(&trigger.name),
            "json_attributes_template": "{{ value_json.details | tojson }}",
            "state_class": "measurement",
            "unit_of_measurement": object,
        }),
    );
    Some((count_topic(t, trigger), v.to_string().into_bytes()))
}

/// The caption sensor and the snapshot image.
pub fn device_entities(t: &Topics) -> Vec<(String, Vec<u8>)> {
    let caption = merge(
        common(t, "caption", "caption"),
        json!({
            "state_topic": t.caption(),
            "value_template": "{{ value_json.caption[:255] }}",
            "json_attributes_topic": t.caption(),
            "icon": "mdi:text-box-outline",
        }),
    );
    let snapshot = merge(
        common(t, "snapshot", "snapshot"),
        json!({ "image_topic": t.snapshot(), "content_type": "image/jpeg" }),
    );
    vec![
        (
            format!(
                "{}/sensor/moonwatch_{}/caption/config",
                t.discovery_prefix, t.device_id
            ),
            caption.to_string().into_bytes(),
        ),
        (
            format!(
                "{}/image/moonwatch_{}/snapshot/config",
                t.discovery_prefix, t.device_id
            ),
            snapshot.to_string().into_bytes(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;

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

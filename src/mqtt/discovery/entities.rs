//! What each Home Assistant device of moonwatch holds.
//!
//! - The server (`moonwatch {device_id} server`): its status (the process's availability),
//!   model, engine state and busy share, queue depth and version.
//! - Each camera (`moonwatch {camera}`, attached to the server): caption sensor, snapshot
//!   and annotated images, snapshot and caption buttons, a question to type (`text`) and
//!   its answer (`sensor`), and diagnostics.
//! - Each trigger: its state (`binary_sensor`), switch, `begin`/`end` event, snapshot,
//!   confidence sensor, and number entities for its threshold, interval and cooldown; an
//!   object trigger also counts what it saw, in the frame and, for a trigger over the whole
//!   frame, in each of the camera's zones.
//!
//! Entity names are chosen so that the entity id Home Assistant derives from the device
//! and entity names (before 2025.10) is the `default_entity_id` (2025.10 and later):
//! `{domain}.moonwatch_{camera}_{object}`.

use super::{Availability, Component, Device, EntityConfig, Node, Origin};
use crate::mqtt::topics::Topics;
use crate::triggers::{TriggerConfig, Tunable};

pub(super) fn origin() -> Origin {
    Origin {
        name: "moonwatch".into(),
        sw_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Home Assistant's slugify for the ASCII ids moonwatch uses: lower case, every run of
/// other characters one `_`, none at the ends.
pub(super) fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

fn availability(topic: String, on: &str, off: &str) -> Availability {
    Availability {
        topic,
        payload_available: on.into(),
        payload_not_available: off.into(),
    }
}

/// A node's identity and what every entity of it shares.
struct Base {
    node: String,
    /// `moonwatch_{id}`, slugified: the start of every default entity id.
    entity_prefix: String,
    device: Device,
    availability: Vec<Availability>,
}

impl Base {
    /// An entity called `name` (with the device's name, its entity id on Home Assistant
    /// before 2025.10) whose object id is `object`.
    fn entity(&self, domain: &str, object: &str, name: &str) -> EntityConfig {
        EntityConfig {
            name: name.to_owned(),
            unique_id: format!("{}_{object}", self.node),
            default_entity_id: format!(
                "{domain}.{}",
                slug(&format!("{}_{object}", self.entity_prefix))
            ),
            availability: self.availability.clone(),
            availability_mode: "all".into(),
            device: self.device.clone(),
            origin: origin(),
            ..EntityConfig::default()
        }
    }
}

fn device(id: &str, name: String, via: Option<String>) -> Device {
    Device {
        identifiers: vec![id.to_owned()],
        name,
        model: "moonwatch (Moondream2)".into(),
        manufacturer: "moonwatch".into(),
        sw_version: env!("CARGO_PKG_VERSION").into(),
        via_device: via,
    }
}

/// The node id of the server of process `device_id`.
pub fn server_id(device_id: &str) -> String {
    format!("moonwatch_{device_id}_server")
}

/// The node id of camera `id`.
pub fn camera_id(id: &str) -> String {
    format!("moonwatch_{id}")
}

/// moonwatch itself: `t` are the process's topics (`Topics::new`); `pool`: a camera node
/// that offloads, with a sensor of its workers.
pub fn server_node(t: &Topics, pool: bool) -> Node {
    let id = server_id(&t.device_id);
    let base = Base {
        entity_prefix: slug(&id),
        device: device(&id, format!("moonwatch {} server", t.device_id), None),
        availability: vec![availability(t.availability(), "online", "offline")],
        node: id.clone(),
    };
    // The status reads the availability itself: off (not unavailable) when moonwatch is
    // down.
    let status = EntityConfig {
        state_topic: Some(t.availability()),
        payload_on: Some("online".into()),
        payload_off: Some("offline".into()),
        device_class: Some("connectivity".into()),
        entity_category: Some("diagnostic".into()),
        availability: Vec::new(),
        ..base.entity("binary_sensor", "status", "status")
    };
    let mut components = vec![Component {
        domain: "binary_sensor",
        object: "status".into(),
        config: status,
    }];
    for (object, name, key, unit, diagnostic) in [
        ("model", "model", "model", None, true),
        ("engine", "engine", "engine", None, false),
        (
            "engine_busy",
            "engine busy",
            "engine_busy_pct",
            Some("%"),
            false,
        ),
        ("queue_depth", "queue depth", "queue_depth", None, false),
        ("version", "version", "version", None, true),
    ] {
        let measured = unit.is_some() || key == "queue_depth";
        let sensor = EntityConfig {
            state_topic: Some(t.server()),
            value_template: Some(format!("{{{{ value_json.{key} }}}}")),
            unit_of_measurement: unit.map(str::to_owned),
            state_class: measured.then(|| "measurement".to_owned()),
            entity_category: diagnostic.then(|| "diagnostic".to_owned()),
            ..base.entity("sensor", object, name)
        };
        components.push(Component {
            domain: "sensor",
            object: object.into(),
            config: sensor,
        });
    }
    if pool {
        // Healthy workers, with every figure of the pool (suspects and why) as attributes.
        let sensor = EntityConfig {
            state_topic: Some(t.server()),
            value_template: Some("{{ value_json.pool.healthy }}".into()),
            state_class: Some("measurement".into()),
            json_attributes_topic: Some(t.server()),
            json_attributes_template: Some("{{ value_json.pool | tojson }}".into()),
            ..base.entity("sensor", "pool_workers", "pool workers")
        };
        components.push(Component {
            domain: "sensor",
            object: "pool_workers".into(),
            config: sensor,
        });
    }
    Node {
        id,
        device: base.device,
        components,
    }
}

fn camera_base(t: &Topics) -> Base {
    let id = camera_id(&t.device_id);
    Base {
        entity_prefix: slug(&id),
        device: device(
            &id,
            format!("moonwatch {}", t.device_id),
            Some(server_id(process_id(t))),
        ),
        availability: vec![
            availability(t.availability(), "online", "offline"),
            availability(t.camera_availability(), "online", "offline"),
        ],
        node: id,
    }
}

/// The process's device id, from a camera's topics.
fn process_id(t: &Topics) -> &str {
    t.process_base
        .rsplit_once('/')
        .map_or(t.process_base.as_str(), |(_, id)| id)
}

/// A camera with its triggers; `zones` are the names of the camera's zones.
pub fn camera_node(t: &Topics, triggers: &[&TriggerConfig], zones: &[String]) -> Node {
    let base = camera_base(t);
    let mut components = camera_components(t, &base);
    for trig in triggers {
        components.extend(trigger_components(t, &base, trig, zones));
    }
    Node {
        id: base.node.clone(),
        device: base.device,
        components,
    }
}

fn component(domain: &'static str, object: &str, config: EntityConfig) -> Component {
    Component {
        domain,
        object: object.to_owned(),
        config,
    }
}

/// The caption sensor, the snapshot and annotated images, the buttons, the question and
/// its answer, and the diagnostic sensors of a camera.
fn camera_components(t: &Topics, base: &Base) -> Vec<Component> {
    let caption = EntityConfig {
        state_topic: Some(t.caption()),
        value_template: Some("{{ value_json.caption[:255] }}".into()),
        json_attributes_topic: Some(t.caption()),
        icon: Some("mdi:text-box-outline".into()),
        ..base.entity("sensor", "caption", "caption")
    };
    let image = |object: &str, topic: String| EntityConfig {
        image_topic: Some(topic),
        content_type: Some("image/jpeg".into()),
        ..base.entity("image", object, object)
    };
    // Typed in Home Assistant, sent as plain text; the answer sensor shows the reply.
    let question = EntityConfig {
        command_topic: Some(t.question_set()),
        state_topic: Some(t.question()),
        max: Some(255.0),
        mode: Some("text".into()),
        icon: Some("mdi:comment-question-outline".into()),
        ..base.entity("text", "question", "question")
    };
    let answer = EntityConfig {
        state_topic: Some(t.answer()),
        value_template: Some(
            "{{ ((value_json.error and 'error: ' ~ value_json.error) or value_json.answer)[:255] }}"
                .into(),
        ),
        json_attributes_topic: Some(t.answer()),
        icon: Some("mdi:comment-text-outline".into()),
        ..base.entity("sensor", "answer", "answer")
    };
    let mut out = vec![
        component("sensor", "caption", caption),
        component("image", "snapshot", image("snapshot", t.snapshot())),
        component("image", "annotated", image("annotated", t.annotated())),
        component("text", "question", question),
        component("sensor", "answer", answer),
    ];
    // Buttons: take a snapshot / a caption now (the replies go to the default topics).
    for (object, name, request) in [
        ("snapshot_now", "snapshot now", "snapshot"),
        ("caption_now", "caption now", "caption"),
    ] {
        let button = EntityConfig {
            command_topic: Some(format!("{}/request/{request}", t.base)),
            payload_press: Some("{}".into()),
            ..base.entity("button", object, name)
        };
        out.push(component("button", object, button));
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
            ..base.entity("sensor", object, name)
        };
        sensor.availability.truncate(1);
        out.push(component("sensor", object, sensor));
    }
    out
}

/// Zones an object trigger counts in: the camera's, for a trigger over the whole frame.
fn counted_zones<'z>(trigger: &TriggerConfig, zones: &'z [String]) -> &'z [String] {
    if trigger.object.is_some() && trigger.zone.is_none() {
        zones
    } else {
        &[]
    }
}

/// Every entity a trigger has.
fn trigger_components(
    t: &Topics,
    base: &Base,
    trigger: &TriggerConfig,
    zones: &[String],
) -> Vec<Component> {
    let name = &trigger.name;
    let label = name.replace('_', " ");
    // What reads the trigger's answer is unavailable while the trigger is switched off:
    // an old ON must not stand for a trigger nobody evaluates.
    let mut evaluated = base.availability.clone();
    evaluated.push(availability(t.trigger_enabled(name), "ON", "OFF"));
    let state = EntityConfig {
        state_topic: Some(t.trigger_state(name)),
        payload_on: Some("ON".into()),
        payload_off: Some("OFF".into()),
        json_attributes_topic: Some(t.trigger_attributes(name)),
        device_class: trigger.device_class.clone(),
        availability: evaluated.clone(),
        ..base.entity("binary_sensor", name, &label)
    };
    let event = EntityConfig {
        state_topic: Some(t.trigger_event(name)),
        event_types: vec!["begin".into(), "end".into()],
        ..base.entity("event", &format!("{name}_event"), &format!("{label} event"))
    };
    let snapshot = EntityConfig {
        image_topic: Some(t.trigger_snapshot(name)),
        content_type: Some("image/jpeg".into()),
        ..base.entity(
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
        ..base.entity(
            "switch",
            &format!("{name}_enabled"),
            &format!("{label} enabled"),
        )
    };
    let confidence = EntityConfig {
        state_topic: Some(t.trigger_attributes(name)),
        value_template: Some("{{ (value_json.confidence * 100) | round(1) }}".into()),
        json_attributes_topic: Some(t.trigger_attributes(name)),
        json_attributes_template: Some(
            "{{ {'answer': value_json.answer, 'answered_at': value_json.answered_at, \
             'frame_seq': value_json.frame_seq} | tojson }}"
                .into(),
        ),
        unit_of_measurement: Some("%".into()),
        state_class: Some("measurement".into()),
        icon: Some("mdi:percent-outline".into()),
        availability: evaluated.clone(),
        ..base.entity(
            "sensor",
            &format!("{name}_confidence"),
            &format!("{label} confidence"),
        )
    };
    let mut out = vec![
        component("binary_sensor", name, state),
        component("switch", &format!("{name}_enabled"), switch),
        component("event", &format!("{name}_event"), event),
        component("image", &format!("{name}_snapshot"), snapshot),
        component("sensor", &format!("{name}_confidence"), confidence),
    ];
    for tunable in Tunable::ALL {
        let key = tunable.key();
        let (min, max, step, unit) = tunable.range();
        let number = EntityConfig {
            state_topic: Some(t.trigger_tuning(name, key)),
            command_topic: Some(format!("{}/set", t.trigger_tuning(name, key))),
            min: Some(min),
            max: Some(max),
            step: Some(step),
            mode: Some("box".into()),
            unit_of_measurement: unit.map(str::to_owned),
            entity_category: Some("config".into()),
            ..base.entity(
                "number",
                &format!("{name}_{key}"),
                &format!("{label} {key}"),
            )
        };
        out.push(component("number", &format!("{name}_{key}"), number));
    }
    if trigger.object.is_some() {
        let count = |object: String, name: String, path: String| EntityConfig {
            state_topic: Some(t.trigger_attributes(&trigger.name)),
            // An evaluation that failed has no count: unknown, not 0.
            value_template: Some(format!(
                "{{{{ value_json.details.{path} | default(none) }}}}"
            )),
            state_class: Some("measurement".into()),
            icon: Some("mdi:counter".into()),
            availability: evaluated.clone(),
            ..base.entity("sensor", &object, &name)
        };
        let object = format!("{name}_count");
        let mut c = count(object.clone(), format!("{label} count"), "count".into());
        c.json_attributes_topic = Some(t.trigger_attributes(name));
        c.json_attributes_template = Some("{{ value_json.details | tojson }}".into());
        out.push(component("sensor", &object, c));
        for zone in counted_zones(trigger, zones) {
            let object = format!("{name}_{zone}_count");
            let c = count(
                object.clone(),
                format!("{label} {} count", zone.replace('_', " ")),
                format!("zones.{zone}"),
            );
            out.push(component("sensor", &object, c));
        }
    }
    out
}

/// The (domain, object) of every entity `trigger` of the camera of `t` has with `zones`
/// (what removing it removes): read off the entities themselves, so the two cannot part.
pub fn trigger_objects(
    t: &Topics,
    trigger: &TriggerConfig,
    zones: &[String],
) -> Vec<(&'static str, String)> {
    trigger_components(t, &camera_base(t), trigger, zones)
        .into_iter()
        .map(|c| (c.domain, c.object))
        .collect()
}

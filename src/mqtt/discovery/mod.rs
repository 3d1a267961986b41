//! Home Assistant MQTT discovery: moonwatch as a device of its own (the server: process
//! availability, model, engine, queue, version), and each camera a device attached to it
//! (`via_device`) with its entities and those of its triggers ([`entities`]).
//!
//! Two forms, as `mqtt.discovery_form` says: `device` (one retained config per device on
//! `{prefix}/device/{node}/config` listing its components under `cmps`; Home Assistant
//! 2024.11 and later), or `entity` (one retained config per entity on
//! `{prefix}/{domain}/{node}/{object}/config`). Both give the same discovery ids
//! (`{node} {object}`), which Home Assistant binds to the first topic it saw: a config of
//! the other form for the same id is refused with a warning. So what the broker holds under
//! each node is read first ([`Inventory`], from the retained messages at connect), and
//! [`publish`] moves what the other form holds over with Home Assistant's migration
//! handshake, in the order that leaves its log clean (checked against Home Assistant
//! 2025.4.4 by scripts/ha-check.sh): to the device form, `migrate_discovery` on each old
//! topic, its empty retained payload, then the device config; to the entity form,
//! `migrate_discovery` on the device topic, the entity configs, then a device config
//! without components in place of the old one (an empty payload there would make Home
//! Assistant warn that it has nothing to clean up). Configs of entities moonwatch no longer
//! has are removed in either form. Pure: returns what to publish.

pub mod entities;

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::DiscoveryForm;

pub use entities::{camera_node, server_node};

/// One entity's discovery config, as Home Assistant's MQTT integration reads it (the keys
/// of <https://www.home-assistant.io/integrations/mqtt/>; unset keys are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct EntityConfig {
    /// Together with the device's name, the entity id Home Assistant before 2025.10
    /// derives (`{domain}.{device name}_{name}`, slugified): chosen so that it is the same
    /// as `default_entity_id`.
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
    /// `diagnostic` for entities about moonwatch itself rather than the scene, `config`
    /// for its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_category: Option<String>,
    /// `button`, `switch`, `number` and `text` entities: where Home Assistant publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_press: Option<String>,
    /// `number`: the range and step; `text`: the longest text (`max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// `number`: `box` or `slider`; `text`: `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
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
    /// The device this one is attached to: each camera to the moonwatch server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_device: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    pub name: String,
    pub sw_version: String,
}

/// One entity: its platform, object id (unique within its node) and config.
#[derive(Debug, Clone)]
pub struct Component {
    pub domain: &'static str,
    pub object: String,
    pub config: EntityConfig,
}

/// A Home Assistant device and its entities.
#[derive(Debug, Clone)]
pub struct Node {
    /// `moonwatch_{id}`: the node id of entity-form topics, the object id of the device
    /// topic, and the first half of every discovery id.
    pub id: String,
    pub device: Device,
    pub components: Vec<Component>,
}

impl Node {
    fn has(&self, domain: &str, object: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.domain == domain && c.object == object)
    }
}

/// The topic of a node's entity-form config for (domain, object).
pub fn entity_topic(prefix: &str, node: &str, domain: &str, object: &str) -> String {
    format!("{prefix}/{domain}/{node}/{object}/config")
}

/// The topic of a node's device-form config.
pub fn device_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/device/{node}/config")
}

/// A subscription that receives every retained discovery config of `node`, in both forms.
pub fn node_filter(prefix: &str, node: &str) -> String {
    format!("{prefix}/+/{node}/#")
}

/// What the broker holds for one node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// (domain, object) of each entity-form config.
    pub entities: BTreeSet<(String, String)>,
    /// The device-form config's live components: object -> platform (a config without
    /// components, or one that only removes, holds none).
    pub device: BTreeMap<String, String>,
}

/// What the broker holds under each node, learned from the retained configs at connect and
/// kept up to date with what moonwatch publishes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub prefix: String,
    pub nodes: BTreeMap<String, Held>,
}

impl Inventory {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            nodes: BTreeMap::new(),
        }
    }

    /// Takes in one retained message under a node's filter; false when `topic` is not a
    /// discovery config of a node in `nodes`.
    pub fn observe(&mut self, nodes: &[&str], topic: &str, payload: &[u8]) -> bool {
        let Some(config) = self.config_of(nodes, topic) else {
            return false;
        };
        match config {
            Config::Device(node) => {
                let held = self.nodes.entry(node.to_owned()).or_default();
                held.device = live_components(payload);
            }
            Config::Entity(domain, node, object) => {
                let held = self.nodes.entry(node.to_owned()).or_default();
                let key = (domain.to_owned(), object.to_owned());
                if payload.is_empty() {
                    held.entities.remove(&key);
                } else {
                    held.entities.insert(key);
                }
            }
        }
        true
    }

    /// Whether `topic` is a discovery config (either form) of a node in `nodes`.
    pub fn is_config(&self, nodes: &[&str], topic: &str) -> bool {
        self.config_of(nodes, topic).is_some()
    }

    fn config_of<'t>(&self, nodes: &[&str], topic: &'t str) -> Option<Config<'t>> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?
            .strip_suffix("/config")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts[..] {
            ["device", node] if nodes.contains(&node) => Some(Config::Device(node)),
            [domain, node, object] if nodes.contains(&node) && domain != "device" => {
                Some(Config::Entity(domain, node, object))
            }
            _ => None,
        }
    }
}

/// The components of a device-form payload that configure an entity (more than `p`).
fn live_components(payload: &[u8]) -> BTreeMap<String, String> {
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(payload) else {
        return BTreeMap::new();
    };
    let Some(Value::Object(cmps)) = v.get("cmps").or_else(|| v.get("components")) else {
        return BTreeMap::new();
    };
    cmps.iter()
        .filter_map(|(object, c)| {
            let c = c.as_object()?;
            let platform = c.get("p").or_else(|| c.get("platform"))?.as_str()?;
            (c.len() > 1).then(|| (object.clone(), platform.to_owned()))
        })
        .collect()
}

/// A discovery config topic: a node's device config, or one (domain, node, object).
enum Config<'t> {
    Device(&'t str),
    Entity(&'t str, &'t str, &'t str),
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Publication {
    fn retained(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload,
            retain: true,
        }
    }
    fn migrate(topic: String) -> Self {
        Self {
            topic,
            payload: br#"{"migrate_discovery":true}"#.to_vec(),
            retain: false,
        }
    }
}

fn bytes(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A node's discovery in `form`: what moves over from the other form first (see the
/// module's comment), the config, and the removal of what `removed` names or the broker
/// holds that the node no longer has. `held` is what the broker holds for the node, and is
/// updated to what it will hold.
pub fn publish(
    prefix: &str,
    node: &Node,
    removed: &[(&'static str, String)],
    form: DiscoveryForm,
    held: &mut Held,
) -> Vec<Publication> {
    let mut out = Vec::new();
    match form {
        DiscoveryForm::Device => {
            for (domain, object) in std::mem::take(&mut held.entities) {
                let topic = entity_topic(prefix, &node.id, &domain, &object);
                if node.has(&domain, &object) {
                    out.push(Publication::migrate(topic.clone()));
                }
                out.push(Publication::retained(topic, Vec::new()));
            }
            // Removed: what moonwatch removed in this run, and what the broker's config
            // lists that the node no longer has.
            let mut gone: BTreeMap<String, String> = removed
                .iter()
                .map(|(d, o)| (o.clone(), (*d).to_owned()))
                .collect();
            gone.extend(std::mem::take(&mut held.device));
            gone.retain(|o, d| !node.has(d, o));
            out.push(Publication::retained(
                device_topic(prefix, &node.id),
                device_payload(node, &gone),
            ));
            held.device = node
                .components
                .iter()
                .map(|c| (c.object.clone(), c.domain.to_owned()))
                .collect();
        }
        DiscoveryForm::Entity => {
            if !held.device.is_empty() {
                let topic = device_topic(prefix, &node.id);
                // Entities the old config has and the node does not are removed with it
                // first, so that the handshake does not keep them in Home Assistant's
                // registry.
                let stale: BTreeMap<String, String> = held
                    .device
                    .iter()
                    .filter(|(o, d)| !node.has(d, o))
                    .map(|(o, d)| (o.clone(), d.clone()))
                    .collect();
                if !stale.is_empty() {
                    let kept = Node {
                        components: node
                            .components
                            .iter()
                            .filter(|c| held.device.get(&c.object).is_some_and(|d| d == c.domain))
                            .cloned()
                            .collect(),
                        ..node.clone()
                    };
                    // Not retained: the stub below replaces the retained config, and
                    // retained messages to one topic are latest-value-wins on the way.
                    out.push(Publication {
                        topic: topic.clone(),
                        payload: device_payload(&kept, &stale),
                        retain: false,
                    });
                }
                out.push(Publication::migrate(topic));
            }
            for c in &node.components {
                out.push(Publication::retained(
                    entity_topic(prefix, &node.id, c.domain, &c.object),
                    bytes(&c.config),
                ));
            }
            let mut clear: BTreeSet<(String, String)> = removed
                .iter()
                .map(|(d, o)| ((*d).to_owned(), o.clone()))
                .collect();
            clear.extend(std::mem::take(&mut held.entities));
            for (domain, object) in clear {
                if !node.has(&domain, &object) {
                    out.push(Publication::retained(
                        entity_topic(prefix, &node.id, &domain, &object),
                        Vec::new(),
                    ));
                }
            }
            if !std::mem::take(&mut held.device).is_empty() {
                let stub = Node {
                    components: Vec::new(),
                    ..node.clone()
                };
                out.push(Publication::retained(
                    device_topic(prefix, &node.id),
                    device_payload(&stub, &BTreeMap::new()),
                ));
            }
            held.entities = node
                .components
                .iter()
                .map(|c| (c.domain.to_owned(), c.object.clone()))
                .collect();
        }
    }
    out
}

/// A device-form config: the node's components, and `removed` (object -> platform) as
/// `{"p": platform}`, which removes an entity.
fn device_payload(node: &Node, removed: &BTreeMap<String, String>) -> Vec<u8> {
    let mut cmps = Map::new();
    for c in &node.components {
        let Ok(Value::Object(mut entity)) = serde_json::to_value(&c.config) else {
            continue;
        };
        entity.remove("device");
        entity.remove("origin");
        entity.insert("p".into(), c.domain.into());
        cmps.insert(c.object.clone(), Value::Object(entity));
    }
    for (object, domain) in removed {
        cmps.insert(object.clone(), json!({ "p": domain }));
    }
    bytes(&json!({
        "dev": node.device,
        "o": entities::origin(),
        "cmps": cmps,
    }))
}

#[cfg(test)]
mod tests;

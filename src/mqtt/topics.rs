//! The topic names of the MQTT API (docs/mqtt-api.md): where each camera's requests,
//! replies, state and settings are, and the process's. Pure.

use crate::config::MqttConfig;

/// All topics of one camera, under `{prefix}/{id}`: the device id for a single camera,
/// the camera's name for `[[camera]]` sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    /// The camera's id in topics and Home Assistant.
    pub device_id: String,
    /// `{prefix}/{mqtt.device_id}`: where the process's availability (its Last Will) is.
    pub process_base: String,
}

impl Topics {
    /// The topics of a single camera addressed by the device id.
    pub fn new(cfg: &MqttConfig, device_id: &str) -> Self {
        Self::camera(cfg, device_id, device_id)
    }
    /// The topics of camera `id` served by the process `device_id`.
    pub fn camera(cfg: &MqttConfig, device_id: &str, id: &str) -> Self {
        Self {
            base: format!("{}/{}", cfg.prefix, id),
            discovery_prefix: cfg.discovery_prefix.clone(),
            device_id: id.to_owned(),
            process_base: format!("{}/{}", cfg.prefix, device_id),
        }
    }
    /// Retained `online` / `offline` of the process (the broker's Last Will says
    /// `offline`); shared by every camera it serves.
    pub fn availability(&self) -> String {
        format!("{}/availability", self.process_base)
    }
    /// Retained JPEG: the picture of the last detect or point asked to be annotated, with
    /// its boxes or points drawn on it.
    pub fn annotated(&self) -> String {
        format!("{}/annotated", self.base)
    }
    /// Retained `online` / `offline`: whether the camera delivers fresh frames.
    pub fn camera_availability(&self) -> String {
        format!("{}/camera/availability", self.base)
    }
    /// Subscription for every request.
    pub fn requests(&self) -> String {
        format!("{}/request/+", self.base)
    }
    /// Where replies go when the request names no reply address.
    pub fn response(&self, name: &str) -> String {
        format!("{}/response/{name}", self.base)
    }
    pub fn caption(&self) -> String {
        format!("{}/caption", self.base)
    }
    pub fn snapshot(&self) -> String {
        format!("{}/snapshot", self.base)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    /// Retained `ON` / `OFF`.
    pub fn trigger_state(&self, name: &str) -> String {
        format!("{}/trigger/{name}", self.base)
    }
    /// Retained JSON: confidence, frame time, details.
    pub fn trigger_attributes(&self, name: &str) -> String {
        format!("{}/trigger/{name}/attributes", self.base)
    }
    /// Retained `ON` / `OFF`: whether the trigger is evaluated (its switch).
    pub fn trigger_enabled(&self, name: &str) -> String {
        format!("{}/trigger/{name}/enabled", self.base)
    }
    /// Subscription for trigger switches: `ON` / `OFF` to `{base}/trigger/{name}/set`.
    pub fn trigger_set_filter(&self) -> String {
        format!("{}/trigger/+/set", self.base)
    }
    /// The trigger a `.../trigger/{name}/set` topic is about.
    pub fn trigger_set_name<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.base)?
            .strip_prefix("/trigger/")?
            .strip_suffix("/set")
            .filter(|n| !n.contains('/'))
    }
    /// Retained value of one of a trigger's tunable settings (`threshold`, `interval`,
    /// `cooldown`): Home Assistant's number entities read it.
    pub fn trigger_tuning(&self, name: &str, key: &str) -> String {
        format!("{}/trigger/{name}/{key}", self.base)
    }
    /// Subscription for tuning: a number to `{base}/trigger/{name}/{setting}/set`.
    pub fn trigger_tuning_filter(&self) -> String {
        format!("{}/trigger/+/+/set", self.base)
    }
    /// The (trigger, setting) a `.../trigger/{name}/{setting}/set` topic is about.
    pub fn trigger_tuning_name<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic
            .strip_prefix(&self.base)?
            .strip_prefix("/trigger/")?
            .strip_suffix("/set")?;
        let (name, key) = rest.split_once('/')?;
        (!key.contains('/')).then_some((name, key))
    }
    /// Plain text (not JSON): a question about the camera's picture, from Home
    /// Assistant's text entity; the answer goes to [`Topics::answer`].
    pub fn question_set(&self) -> String {
        format!("{}/question/set", self.base)
    }
    /// Retained: the last question asked on [`Topics::question_set`].
    pub fn question(&self) -> String {
        format!("{}/question", self.base)
    }
    /// Retained JSON: the last question's answer, with its frame and timing.
    pub fn answer(&self) -> String {
        format!("{}/answer", self.base)
    }
    /// Retained JSON about the process: version, model, engine, queue.
    pub fn server(&self) -> String {
        format!("{}/server", self.process_base)
    }
    /// Retained JPEG of the frame of a trigger's last begin.
    pub fn trigger_snapshot(&self, name: &str) -> String {
        format!("{}/trigger/{name}/snapshot", self.base)
    }
    /// Begin / end events (not retained).
    pub fn trigger_event(&self, name: &str) -> String {
        format!("{}/trigger/{name}/event", self.base)
    }
    /// Home Assistant's birth / last-will topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
    /// The request name from a topic under `{base}/request/`.
    pub fn request_name<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(&self.base)?.strip_prefix("/request/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new(&MqttConfig::default(), "garage")
    }

    #[test]
    fn topic_layout() {
        let t = topics();
        assert_eq!(t.availability(), "moonwatch/garage/availability");
        assert_eq!(t.requests(), "moonwatch/garage/request/+");
        assert_eq!(
            t.request_name("moonwatch/garage/request/query"),
            Some("query")
        );
        assert_eq!(t.request_name("moonwatch/other/request/query"), None);
        assert_eq!(t.trigger_state("door"), "moonwatch/garage/trigger/door");
        assert_eq!(t.ha_status(), "homeassistant/status");
    }

    #[test]
    fn tuning_topics_name_their_trigger_and_setting() {
        let t = topics();
        assert_eq!(
            t.trigger_tuning_name(&format!("{}/set", t.trigger_tuning("door", "threshold"))),
            Some(("door", "threshold"))
        );
        assert_eq!(
            t.trigger_tuning_name(&format!("{}/trigger/door/set", t.base)),
            None
        );
        assert_eq!(
            t.trigger_tuning_name(&format!("{}/trigger/a/b/c/set", t.base)),
            None
        );
        assert_eq!(
            t.trigger_set_name(&format!("{}/trigger/door/threshold/set", t.base)),
            None
        );
    }
}

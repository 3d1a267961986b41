//! moonwatch: an edge vision daemon. Cameras in, Moondream2 on llama.cpp in the middle,
//! MQTT out. See ARCHITECTURE.md for the map of modules.

pub mod annotate;
pub mod backoff;
pub mod camera;
pub mod config;
pub mod daemon;
pub mod frame;
pub mod model;
pub mod mqtt;
pub mod triggers;
pub mod vision;
pub mod zone;

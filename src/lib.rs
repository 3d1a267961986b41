//! moonwatch: an edge vision daemon. Cameras in, Moondream2 on llama.cpp in the middle,
//! MQTT out. See ARCHITECTURE.md for the map of modules.

pub mod camera;
pub mod config;
pub mod frame;
pub mod model;
pub mod vision;

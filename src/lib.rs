//! moonwatch: an edge vision daemon. Cameras in, Moondream2 on llama.cpp in the middle,
//! MQTT out. See ARCHITECTURE.md for the map of modules.
//!
//! `unsafe` lives in two FFI units only: `gguf` (GGUF files and ggml's number formats) and
//! `vision::llama` (what llama-cpp-2 does not wrap); the rest of the crate may not use it.
#![deny(unsafe_code)]

pub mod annotate;
pub mod backoff;
pub mod camera;
pub mod config;
pub mod daemon;
pub mod frame;
#[allow(unsafe_code)]
pub mod gguf;
pub mod model;
pub mod mqtt;
pub mod triggers;
pub mod vision;
pub mod zone;

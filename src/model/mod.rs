//! Model files: fetching the real Moondream2 GGUFs, and making random-weight ones.

pub mod pull;
pub mod synth;

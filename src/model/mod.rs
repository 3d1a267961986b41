//! Model files: fetching the real Moondream2 GGUFs, quantizing them for the boards, and
//! making random-weight ones.

pub mod convert;
pub mod projector;
pub mod pull;
pub mod synth;

use serde::{Deserialize, Serialize};

/// The file name moonwatch gives a vision projector quantized to Q8_0.
pub const MMPROJ_Q8_FILE_NAME: &str = "moondream2-mmproj-q8_0.gguf";

/// A llama.cpp weight type the text model can be quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// 4.8 bits a weight, k-quant with importance on the sensitive tensors.
    #[value(name = "q4_k_m")]
    Q4KM,
    /// 4.5 bits a weight, the type llama.cpp repacks for Arm dotprod/i8mm kernels.
    #[value(name = "q4_0")]
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 8.5 bits a weight, near F16 quality.
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Quant {
    /// The name used in file names and configuration (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4KM => "q4_k_m",
            Quant::Q4_0 => "q4_0",
            Quant::Q8_0 => "q8_0",
        }
    }

    /// The file name moonwatch gives a text model of this type.
    pub fn text_file_name(self) -> String {
        format!("moondream2-text-model-{}.gguf", self.name())
    }

    /// llama.cpp's file type for it.
    pub fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            Quant::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Quant::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            Quant::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
        }
    }
}

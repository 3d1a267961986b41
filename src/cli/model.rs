//! `model`: pull, synthesize, quantize and convert model files.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

use moonwatch::model::{convert, projector, pull, synth, Quant};
use moonwatch::vision::moondream;

use super::ask::find_config;
use super::{exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Download the Moondream2 GGUF pair to where the configuration expects it.
    Pull {
        /// Configuration naming the target paths and the repository.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Download into this directory instead of the configured paths.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Quantize the text model after the verified download (overrides
        /// model.download.quantize); the configuration's model.text names the result.
        #[arg(long, value_enum)]
        quantize: Option<Quant>,
    },
    /// Quantize a text model (--type) or a vision projector (--mmproj, to Q8_0) that is
    /// already on disk.
    Quantize {
        /// The text model type to write.
        #[arg(
            long = "type",
            value_enum,
            required_unless_present = "mmproj",
            conflicts_with = "mmproj"
        )]
        quant: Option<Quant>,
        /// The input is a vision projector: its matrices become Q8_0 where their rows
        /// allow (SigLIP's 4304-wide ffn_down stays F16).
        #[arg(long)]
        mmproj: bool,
        input: PathBuf,
        output: PathBuf,
    },
    /// Write a random-weight pair with Moondream2's exact architecture (tests, benchmarks).
    Synth {
        #[arg(long, value_enum, default_value_t = SynthSize::Tiny)]
        size: SynthSize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also write a quantized copy of the text model.
        #[arg(long, value_enum)]
        quantize: Option<Quant>,
        /// GPT-2 vocabulary directory (encoder.json, vocab.bpe).
        #[arg(long)]
        vocab: Option<PathBuf>,
        /// Make a model with a known answer: whatever it is asked, it answers this text
        /// (then end-of-text), for tests that must tell a right answer from a wrong one.
        #[arg(long, conflicts_with = "reference")]
        answer: Option<String>,
        /// Write a random-weight 2025-04-14 checkpoint in Moondream's own layout
        /// (model.safetensors and config.json) instead, as `model convert` takes it.
        #[arg(long, conflicts_with = "quantize")]
        reference: bool,
        /// With --reference: added to the end-of-text output bias, so that random weights
        /// end the object loop early (the goldens use 0 and 2.5).
        #[arg(
            long,
            default_value_t = 0.0,
            requires = "reference",
            allow_hyphen_values = true
        )]
        eos_bias: f32,
        /// With --reference: the random draw's seed (another checkpoint).
        #[arg(long, requires = "reference")]
        seed: Option<u64>,
        /// With --reference: multiply the text model's attention logits by this (sharper
        /// attention, where rounding K and V to F16 shows).
        #[arg(long, default_value_t = 1.0, requires = "reference")]
        attention: f32,
        /// With --reference: multiply the text model's value weights by this power of two
        /// and divide its attention output by it (the same function in float32; 2^-24 =
        /// 0.000000059604644775390625 puts the values of V below what F16 can hold).
        #[arg(long, default_value_t = 1.0, requires = "reference")]
        values: f32,
        /// With --reference: the text model's width (a multiple of 64) and layers, instead
        /// of the size's.
        #[arg(long, requires = "reference")]
        text_width: Option<usize>,
        #[arg(long, requires = "reference")]
        text_layers: Option<usize>,
    },
    /// Convert Moondream2 2025-04-14's model.safetensors into a text GGUF, a vision GGUF
    /// and the region heads (for real detect and point); prints the three paths.
    Convert {
        /// The release's model.safetensors (head counts from a config.json beside it, if
        /// any).
        weights: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// GPT-2 vocabulary directory (encoder.json, vocab.bpe).
        #[arg(long)]
        vocab: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SynthSize {
    Tiny,
    Full,
}

pub(crate) fn model(command: ModelCommand) -> Result<(), Failure> {
    match command {
        ModelCommand::Pull {
            config,
            dir,
            quantize,
        } => {
            let mut cfg = find_config(config.as_deref())?.unwrap_or_default();
            if quantize.is_some() {
                cfg.model.download.quantize = quantize;
            }
            let d = &cfg.model.download;
            if let Some(dir) = dir {
                cfg.model.text = match d.quantize {
                    Some(q) => dir.join(q.text_file_name()),
                    None => dir.join(&d.text_file),
                };
                cfg.model.mmproj = if d.quantize_mmproj {
                    dir.join(moonwatch::model::MMPROJ_Q8_FILE_NAME)
                } else {
                    dir.join(&d.mmproj_file)
                };
            } else if let Some(q) = d.quantize {
                if cfg.model.text.file_name() == Some(std::ffi::OsStr::new(&d.text_file)) {
                    // The configured name is the download's: put the result beside it.
                    cfg.model.text = cfg.model.text.with_file_name(q.text_file_name());
                    eprintln!(
                        "note: model.text names the download; writing the {} model to {} (set model.text to it)",
                        q.name(),
                        cfg.model.text.display()
                    );
                }
            }
            let done = pull::pull(&cfg.model, true).map_err(|e| Failure::new(exit::IOERR, e))?;
            for p in done {
                let what = if p.downloaded {
                    "downloaded"
                } else {
                    "already present"
                };
                println!(
                    "{} {what} ({} bytes, sha256 {})",
                    p.path.display(),
                    p.size,
                    p.sha256
                );
            }
            Ok(())
        }
        ModelCommand::Quantize {
            quant,
            mmproj,
            input,
            output,
        } => {
            if input == output {
                return Err(Failure::new(
                    exit::USAGE,
                    "the output must be another file than the input",
                ));
            }
            if !input.is_file() {
                return Err(Failure::new(
                    exit::NOINPUT,
                    format!("{}: no such file", input.display()),
                ));
            }
            // Routes llama.cpp's per-tensor log to tracing (shown with -v).
            moondream::backend()?;
            match (quant, mmproj) {
                (_, true) => {
                    let r = projector::quantize_mmproj(&input, &output)
                        .map_err(|e| Failure::new(exit::IOERR, e))?;
                    let widened = if r.ffn.0 == r.ffn.1 {
                        String::new()
                    } else {
                        format!(" (feed-forward {} -> {} units)", r.ffn.0, r.ffn.1)
                    };
                    println!(
                        "{}: {} matrices Q8_0{widened}, {} tensors kept",
                        output.display(),
                        r.quantized,
                        r.kept
                    );
                }
                (Some(q), false) => {
                    synth::quantize(&input, &output, q.ftype())
                        .map_err(|e| Failure::new(exit::IOERR, e))?;
                    println!("{}: {}", output.display(), q.name());
                }
                (None, false) => {
                    return Err(Failure::new(exit::USAGE, "--type or --mmproj is needed"))
                }
            }
            Ok(())
        }
        ModelCommand::Synth {
            size,
            out,
            reference: true,
            eos_bias,
            seed,
            attention,
            values,
            text_width,
            text_layers,
            ..
        } => {
            let mut shape = match size {
                SynthSize::Tiny => convert::RefShape::tiny(),
                SynthSize::Full => convert::RefShape::full(),
            };
            if let Some(w) = text_width {
                if w == 0 || w % 64 != 0 || w > 8192 {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!("--text-width {w}: a multiple of 64 up to 8192"),
                    ));
                }
                shape.text_dim = w;
                shape.text_ff = 2 * w;
            }
            if let Some(l) = text_layers {
                if l == 0 || l > 64 {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!("--text-layers {l}: 1 to 64"),
                    ));
                }
                shape.text_layers = l;
            }
            if !(attention.is_finite() && attention > 0.0) {
                return Err(Failure::new(exit::USAGE, "--attention must be above 0"));
            }
            if !(values.is_finite() && values > 0.0 && values.log2().fract() == 0.0) {
                return Err(Failure::new(
                    exit::USAGE,
                    "--values must be a power of two (it must not change the function)",
                ));
            }
            let fixture = convert::Fixture::Random {
                eos_bias,
                attention,
                values,
            };
            let seed = seed.unwrap_or(convert::REFERENCE_SEED);
            let path = convert::write_reference(&out, &shape, seed, fixture)
                .map_err(|e| Failure::new(exit::IOERR, e))?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::Synth {
            size,
            out,
            quantize,
            vocab,
            answer,
            reference: false,
            ..
        } => {
            let shape = match size {
                SynthSize::Tiny => synth::Shape::tiny(),
                SynthSize::Full => synth::Shape::full(),
            };
            let vocab = vocab.unwrap_or_else(synth::default_vocab_dir);
            let pair = synth::write_pair_answering(
                &out,
                &shape,
                &vocab,
                answer.as_deref().map(|a| (a, true)),
            )
            .map_err(|e| Failure::new(exit::IOERR, e))?;
            println!("{}\n{}", pair.text.display(), pair.mmproj.display());
            if let Some(q) = quantize {
                let dst = out.join(q.text_file_name());
                // Routes llama.cpp's per-tensor log to tracing (shown with -v).
                moondream::backend()?;
                synth::quantize(&pair.text, &dst, q.ftype())
                    .map_err(|e| Failure::new(exit::IOERR, e))?;
                println!("{}", dst.display());
            }
            Ok(())
        }
        ModelCommand::Convert {
            weights,
            out,
            vocab,
        } => {
            let vocab = synth::Vocab::load(&vocab.unwrap_or_else(synth::default_vocab_dir))
                .map_err(|e| Failure::new(exit::IOERR, e))?;
            let done = convert::convert(&weights, &out, &vocab).map_err(|e| match e {
                convert::ConvertError::Write(_) => Failure::new(exit::IOERR, e),
                _ => Failure::new(exit::DATAERR, e),
            })?;
            println!(
                "{}\n{}\n{}",
                done.text.display(),
                done.mmproj.display(),
                done.region.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{exit, status_of};

    #[test]
    fn the_model_commands_say_what_is_wrong_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.gguf");
        let missing = missing.to_str().unwrap();
        let out = dir.path().join("out.gguf");
        let out = out.to_str().unwrap();
        assert_eq!(
            status_of(&["model", "quantize", "--type", "q4_0", missing, out]),
            exit::NOINPUT
        );
        assert_eq!(
            status_of(&["model", "quantize", "--type", "q4_0", out, out]),
            exit::USAGE
        );
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            status_of(&["model", "quantize", empty.to_str().unwrap(), out]),
            exit::USAGE,
            "neither --type nor --mmproj"
        );
        // Not a safetensors file: the data is wrong, not the command line.
        let junk = dir.path().join("model.safetensors");
        std::fs::write(&junk, b"junk").unwrap();
        let conv = dir.path().join("conv");
        assert_eq!(
            status_of(&[
                "model",
                "convert",
                junk.to_str().unwrap(),
                "--out",
                conv.to_str().unwrap()
            ]),
            exit::DATAERR
        );
    }
}

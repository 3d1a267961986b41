//! Moondream2's prompts, one table per model revision, as its reference code builds them.
//!
//! The image prefix is `<|endoftext|>` followed by the 729 image tokens; every skill then
//! follows as a text tail (for a question, `\n\nQuestion: {q}\n\nAnswer:`). Only the tail
//! differs between skills, which is what lets one encoded frame serve many of them.

use serde::{Deserialize, Serialize};

use super::{CaptionLength, Skill};

/// Longest question accepted, in characters (the context also holds 729 image tokens).
pub const MAX_QUESTION_CHARS: usize = 1000;

/// Which Moondream2 revision a GGUF pair holds; each has its own prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum Revision {
    /// The published `moondream/moondream2-gguf` files (a 2024 release from before
    /// 2024-05-20): every skill is a `Question: ... Answer:` turn.
    #[default]
    #[value(name = "moondream2-2024")]
    #[serde(rename = "moondream2-2024")]
    Moondream2024,
    /// `ggml-org/moondream2-20250414-GGUF`: the 2025-04-14 text model, whose captions use
    /// their own templates (`Short caption:`, `Caption:`, `Long caption:`); detection and pointing in that release use
    /// region heads that the GGUF does not carry, so they fall back to prompting.
    #[value(name = "moondream2-2025-04-14")]
    #[serde(rename = "moondream2-2025-04-14")]
    Moondream20250414,
}

/// The prompts of one revision. `{}` in a template is replaced by the user's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prompts {
    /// Caption tails: short, normal, long.
    pub caption: [&'static str; 3],
    /// A free question's tail.
    pub query: &'static str,
    /// The question that asks for a box around an object (the answer is
    /// `[x1, y1, x2, y2]` in 0..1 of the picture the model saw).
    pub bounding_box: &'static str,
    /// Appended to yes/no questions, as Moondream's own yes/no evaluations do.
    pub yes_no_suffix: &'static str,
    /// Generated text that ends an answer (the model starting a new turn).
    pub stops: &'static [&'static str],
}

/// Every revision's prompts, in one place.
pub const fn prompts(revision: Revision) -> Prompts {
    match revision {
        Revision::Moondream2024 => Prompts {
            caption: [
                "\n\nQuestion: Describe this image in one short sentence.\n\nAnswer:",
                "\n\nQuestion: Describe this image.\n\nAnswer:",
                "\n\nQuestion: Describe this image in detail.\n\nAnswer:",
            ],
            query: "\n\nQuestion: {}\n\nAnswer:",
            // Documented by Moondream's author for the 2024-05-20 release: one box per answer.
            bounding_box: "Bounding box: {}",
            // moondream/eval/naturalbench.py appends " Answer yes or no." to each question.
            yes_no_suffix: "Answer yes or no.",
            stops: &["Question:", "<END>"],
        },
        // Token ids from moondream/torch/config.py (TokenizerConfig.templates, 2025-04-13):
        // caption [198,198,16438,8305,25] / [198,198,24334,1159,25] / [198,198,14617,8305,25],
        // query prefix [198,198,24361,25], suffix [198,198,33706,25]; checked in the tests.
        Revision::Moondream20250414 => Prompts {
            caption: ["\n\nShort caption:", "\n\nCaption:", "\n\nLong caption:"],
            query: "\n\nQuestion: {}\n\nAnswer:",
            bounding_box: "Bounding box: {}",
            yes_no_suffix: "Answer yes or no.",
            stops: &["Question:", "<END>"],
        },
    }
}

impl Prompts {
    /// The text that follows the image prefix for `skill`. Detect and point skills get
    /// the bounding-box question; yes/no questions get `yes_no_suffix` appended.
    pub fn tail(&self, skill: &Skill, yes_no_suffix: &str) -> String {
        match skill {
            Skill::Caption { length } => self.caption[*length as usize].to_owned(),
            Skill::Query { question } => self.query.replace("{}", question.trim()),
            Skill::YesNo { question } => self.query.replace("{}", &yes_no(question, yes_no_suffix)),
            Skill::Detect { object } | Skill::Point { object } => {
                let q = self.bounding_box.replace("{}", object.trim());
                self.query.replace("{}", &q)
            }
        }
    }

    /// The yes/no question that asks whether `object` is in the picture.
    pub fn presence_tail(&self, object: &str, yes_no_suffix: &str) -> String {
        self.query
            .replace("{}", &yes_no(&presence_question(object), yes_no_suffix))
    }

    /// True once generated text holds a stop sequence.
    pub fn reached_stop(&self, raw: &str) -> bool {
        self.stops.iter().any(|s| raw.contains(s))
    }

    /// Generated text up to the first stop sequence, trimmed.
    pub fn clean_answer<'a>(&self, raw: &'a str) -> &'a str {
        let end = self
            .stops
            .iter()
            .filter_map(|stop| raw.find(stop))
            .min()
            .unwrap_or(raw.len());
        raw[..end].trim()
    }
}

/// A yes/no question with the suffix appended once.
fn yes_no(question: &str, suffix: &str) -> String {
    let q = question.trim();
    let suffix = suffix.trim();
    if suffix.is_empty() || q.ends_with(suffix) {
        q.to_owned()
    } else {
        format!("{q} {suffix}")
    }
}

/// "Is there a car in this image?", "Is there an owl ...", "Are there any cars ...".
pub fn presence_question(object: &str) -> String {
    let o = object.trim();
    let first = o.split_whitespace().next().unwrap_or("").to_lowercase();
    let determined = [
        "a", "an", "the", "any", "some", "this", "that", "these", "those", "my", "your", "our",
    ]
    .contains(&first.as_str())
        || first.starts_with(|c: char| c.is_ascii_digit());
    let plural = o.ends_with('s') && !o.ends_with("ss") && !o.ends_with("us");
    match (determined, plural) {
        (true, _) => format!("Is there {o} in this image?"),
        (false, true) => format!("Are there any {o} in this image?"),
        (false, false) => {
            let article = if o.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
                "an"
            } else {
                "a"
            };
            format!("Is there {article} {o} in this image?")
        }
    }
}

/// Token budget for a skill's answer, given the configured ceiling for free questions.
pub fn max_tokens(skill: &Skill, configured: u32) -> u32 {
    match skill {
        Skill::Caption {
            length: CaptionLength::Short,
        } => 48,
        Skill::Caption {
            length: CaptionLength::Normal,
        } => configured.max(128),
        Skill::Caption {
            length: CaptionLength::Long,
        } => configured.max(256),
        Skill::Query { .. } => configured,
        // One box for this checkpoint, `[0.25, 0.30, 0.75, 0.90]` is 17 tokens; room for a
        // few more in case a model gives them.
        Skill::Detect { .. } | Skill::Point { .. } => 64,
        // Read from the first answer token's probabilities; nothing is generated.
        Skill::YesNo { .. } => 1,
    }
}

/// Why a skill's text cannot be asked.
pub fn check(skill: &Skill) -> Result<(), String> {
    let (what, text) = match skill {
        Skill::Caption { .. } => return Ok(()),
        Skill::Query { question } | Skill::YesNo { question } => ("question", question),
        Skill::Detect { object } | Skill::Point { object } => ("object", object),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if t.chars().count() > MAX_QUESTION_CHARS {
        return Err(format!(
            "the {what} is {} characters long; at most {MAX_QUESTION_CHARS} are accepted",
            t.chars().count()
        ));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!("the {what} contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Prompts = prompts(Revision::Moondream2024);

    #[test]
    fn tails_follow_moondreams_format() {
        let q = Skill::Query {
            question: "  What is on the table? ".into(),
        };
        assert_eq!(
            P.tail(&q, ""),
            "\n\nQuestion: What is on the table?\n\nAnswer:"
        );
        let d = Skill::Detect {
            object: "car".into(),
        };
        assert_eq!(P.tail(&d, ""), "\n\nQuestion: Bounding box: car\n\nAnswer:");
        let c = Skill::Caption {
            length: CaptionLength::Normal,
        };
        assert_eq!(
            P.tail(&c, ""),
            "\n\nQuestion: Describe this image.\n\nAnswer:"
        );
        let yn = Skill::YesNo {
            question: "Is the door open?".into(),
        };
        assert_eq!(
            P.tail(&yn, P.yes_no_suffix),
            "\n\nQuestion: Is the door open? Answer yes or no.\n\nAnswer:"
        );
        // Already there, or switched off: not appended.
        let yn2 = Skill::YesNo {
            question: "Is it on? Answer yes or no.".into(),
        };
        assert_eq!(
            P.tail(&yn2, P.yes_no_suffix),
            "\n\nQuestion: Is it on? Answer yes or no.\n\nAnswer:"
        );
        assert_eq!(
            P.tail(&yn, ""),
            "\n\nQuestion: Is the door open?\n\nAnswer:"
        );
        let short = prompts(Revision::Moondream20250414).tail(
            &Skill::Caption {
                length: CaptionLength::Short,
            },
            "",
        );
        assert_eq!(short, "\n\nShort caption:");
    }

    #[test]
    fn presence_questions_read_naturally() {
        let cases = [
            ("car", "Is there a car in this image?"),
            ("owl", "Is there an owl in this image?"),
            ("cars", "Are there any cars in this image?"),
            ("glass", "Is there a glass in this image?"),
            ("the garage door", "Is there the garage door in this image?"),
            ("2 dogs", "Is there 2 dogs in this image?"),
        ];
        for (object, want) in cases {
            assert_eq!(presence_question(object), want);
        }
        assert_eq!(
            P.presence_tail("car", "Answer yes or no."),
            "\n\nQuestion: Is there a car in this image? Answer yes or no.\n\nAnswer:"
        );
    }

    #[test]
    fn answers_stop_at_the_next_turn() {
        assert_eq!(
            P.clean_answer(" A red car.\n\nQuestion: what"),
            "A red car."
        );
        assert_eq!(P.clean_answer(" yes<END>"), "yes");
        assert_eq!(P.clean_answer(" plain "), "plain");
        assert!(P.reached_stop("A cat.\n\nQuestion:"));
        assert!(!P.reached_stop("A cat.\n\nQuest"));
        assert!(!P.reached_stop("A cat.  \n"));
        // An answer that starts with a space, as every answer after "Answer:" does, has
        // not stopped after its first word.
        assert!(!P.reached_stop(" a"));
        assert!(!P.reached_stop(" a red"));
    }

    #[test]
    fn bad_questions_are_refused_with_a_reason() {
        assert!(check(&Skill::Query {
            question: "  ".into()
        })
        .unwrap_err()
        .contains("empty"));
        let long = "x".repeat(MAX_QUESTION_CHARS + 1);
        assert!(check(&Skill::YesNo { question: long })
            .unwrap_err()
            .contains("characters long"));
        assert!(check(&Skill::Detect {
            object: "a\u{7}b".into()
        })
        .is_err());
        assert!(check(&Skill::Point {
            object: "person".into()
        })
        .is_ok());
    }

    #[test]
    fn budgets_depend_on_the_skill() {
        let yn = Skill::YesNo {
            question: "q".into(),
        };
        assert_eq!(max_tokens(&yn, 128), 1);
        let q = Skill::Query {
            question: "q".into(),
        };
        assert_eq!(max_tokens(&q, 77), 77);
        let long = Skill::Caption {
            length: CaptionLength::Long,
        };
        assert!(max_tokens(&long, 128) >= 256);
    }
}

//! Moondream2's prompt format, as its reference chat handlers build it.
//!
//! The image prefix is `<|endoftext|>` followed by the 729 image tokens; every question
//! then follows as `\n\nQuestion: {q}\n\nAnswer:`. Only the question tail differs between
//! skills, which is what lets one encoded frame serve many of them.

use super::{CaptionLength, Skill};

/// Longest question accepted, in characters (the context also holds 729 image tokens).
pub const MAX_QUESTION_CHARS: usize = 1000;

/// The text that follows the image prefix for one skill.
pub fn question_tail(skill: &Skill) -> String {
    format!("\n\nQuestion: {}\n\nAnswer:", question(skill))
}

/// The question Moondream is asked for a skill.
pub fn question(skill: &Skill) -> String {
    match skill {
        Skill::Caption { length } => match length {
            CaptionLength::Short => "Describe this image in one short sentence.".into(),
            CaptionLength::Normal => "Describe this image.".into(),
            CaptionLength::Long => "Describe this image in detail.".into(),
        },
        Skill::Query { question } | Skill::YesNo { question } => question.trim().to_owned(),
        // The 2024 GGUF revisions answer this with `[x1, y1, x2, y2]` in 0..1.
        Skill::Detect { object } | Skill::Point { object } => {
            format!("Bounding box: {}", object.trim())
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
        // A handful of boxes; each is about 25 tokens.
        Skill::Detect { .. } | Skill::Point { .. } => 128,
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

/// Cuts generated text at the point where the model starts a new turn, and trims it.
pub fn clean_answer(raw: &str) -> &str {
    let end = ["Question:", "<END>", "<|endoftext|>"]
        .iter()
        .filter_map(|stop| raw.find(stop))
        .min()
        .unwrap_or(raw.len());
    raw[..end].trim()
}

/// True once generated text holds a stop sequence, so decoding can end early.
pub fn reached_stop(raw: &str) -> bool {
    clean_answer(raw).len() < raw.trim_end().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_follow_moondreams_format() {
        let q = Skill::Query {
            question: "  What is on the table? ".into(),
        };
        assert_eq!(
            question_tail(&q),
            "\n\nQuestion: What is on the table?\n\nAnswer:"
        );
        let d = Skill::Detect {
            object: "car".into(),
        };
        assert_eq!(
            question_tail(&d),
            "\n\nQuestion: Bounding box: car\n\nAnswer:"
        );
        let c = Skill::Caption {
            length: CaptionLength::Normal,
        };
        assert_eq!(question(&c), "Describe this image.");
    }

    #[test]
    fn answers_stop_at_the_next_turn() {
        assert_eq!(clean_answer(" A red car.\n\nQuestion: what"), "A red car.");
        assert_eq!(clean_answer(" yes<END>"), "yes");
        assert_eq!(clean_answer(" plain "), "plain");
        assert!(reached_stop("A cat.\n\nQuestion:"));
        assert!(!reached_stop("A cat.\n\nQuest"));
        assert!(!reached_stop("A cat.  \n"));
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
        assert_eq!(
            max_tokens(
                &Skill::YesNo {
                    question: "q".into()
                },
                128
            ),
            1
        );
        assert_eq!(
            max_tokens(
                &Skill::Query {
                    question: "q".into()
                },
                77
            ),
            77
        );
        assert!(
            max_tokens(
                &Skill::Caption {
                    length: CaptionLength::Long
                },
                128
            ) >= 256
        );
    }
}

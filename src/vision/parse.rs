//! Turning model output into typed results: boxes, points and yes/no probabilities.
//!
//! Everything here is a pure function over text or numbers, and must survive any input:
//! the model may say anything, and a random-weight test model says gibberish.

use serde::{Deserialize, Serialize};

/// A box in relative image coordinates, 0..1 from the top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl BBox {
    /// The centre of the box.
    pub fn center(&self) -> Point {
        Point {
            x: (self.x_min + self.x_max) / 2.0,
            y: (self.y_min + self.y_max) / 2.0,
        }
    }
}

/// A point in relative image coordinates, 0..1 from the top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// How far outside 0..1 a coordinate may stray (rounding by the model) before the box
/// is rejected rather than clamped.
const SLACK: f32 = 0.02;

/// Every well-formed `[x1, y1, x2, y2]` group in `text`, in order, without duplicates.
///
/// A group is accepted when it holds exactly four numbers, all within 0..1 (give or take
/// rounding), with a positive width and height. Anything else is skipped, so the caller
/// learns "nothing parsed" from an empty result.
pub fn boxes(text: &str) -> Vec<BBox> {
    let mut out: Vec<BBox> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        // A nested '[' means this group did not close; retry from the inner bracket.
        if let Some(nested) = inner.rfind('[') {
            rest = &after[nested..];
            continue;
        }
        if let Some(b) = parse_group(inner) {
            if !out.contains(&b) {
                out.push(b);
            }
        }
        rest = &after[close + 1..];
    }
    out
}

fn parse_group(inner: &str) -> Option<BBox> {
    let nums: Vec<f32> = inner
        .split(',')
        .map(|s| s.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .ok()?;
    let [x1, y1, x2, y2] = <[f32; 4]>::try_from(nums).ok()?;
    let ok = |v: f32| v.is_finite() && (-SLACK..=1.0 + SLACK).contains(&v);
    if ![x1, y1, x2, y2].into_iter().all(ok) {
        return None;
    }
    let c = |v: f32| v.clamp(0.0, 1.0);
    let b = BBox {
        x_min: c(x1),
        y_min: c(y1),
        x_max: c(x2),
        y_max: c(y2),
    };
    (b.x_max > b.x_min && b.y_max > b.y_min).then_some(b)
}

/// A yes/no decision read from the probabilities of the first answer token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct YesNo {
    /// True when "yes" is more likely than "no"; `None` (uncertain) when the two together
    /// hold less than the minimum share of the probability.
    pub answer: Option<bool>,
    /// Probability of the chosen answer among the two, 0.5..1.
    pub confidence: f32,
    /// Probability mass the model puts on any "yes" token.
    pub p_yes: f32,
    /// Probability mass the model puts on any "no" token.
    pub p_no: f32,
}

/// Softmax over `logits`, summed over the `yes` and `no` token ids.
///
/// Ids outside the vocabulary are ignored. When `p_yes + p_no < min_mass` the answer is
/// uncertain (`None`); when neither side has any mass (all logits -inf), the confidence
/// is 0.5.
pub fn yes_no(logits: &[f32], yes: &[usize], no: &[usize], min_mass: f32) -> YesNo {
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let (p_yes, p_no) = if max.is_finite() {
        let z: f64 = logits
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v - max).exp())
            .sum();
        let mass = |ids: &[usize]| -> f64 {
            ids.iter()
                .filter_map(|&i| logits.get(i))
                .filter(|v| v.is_finite())
                .map(|&v| f64::from(v - max).exp() / z)
                .sum()
        };
        (mass(yes), mass(no))
    } else {
        (0.0, 0.0)
    };
    let both = p_yes + p_no;
    let answer = (both > 0.0 && both >= f64::from(min_mass)).then_some(p_yes > p_no);
    let confidence = if both > 0.0 {
        p_yes.max(p_no) / both
    } else {
        0.5
    };
    YesNo {
        answer,
        confidence: confidence as f32,
        p_yes: p_yes as f32,
        p_no: p_no as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> BBox {
        BBox {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }

    #[test]
    fn box_parsing_table() {
        let cases: &[(&str, Vec<BBox>)] = &[
            ("[0.1, 0.2, 0.5, 0.9]", vec![b(0.1, 0.2, 0.5, 0.9)]),
            (
                " [0.1,0.2,0.5,0.9] and [0.6, 0.1, 0.8, 0.4]<END>",
                vec![b(0.1, 0.2, 0.5, 0.9), b(0.6, 0.1, 0.8, 0.4)],
            ),
            (
                "dup [0.1,0.2,0.5,0.9] [0.1,0.2,0.5,0.9]",
                vec![b(0.1, 0.2, 0.5, 0.9)],
            ),
            (
                "rounding [-0.01, 0.0, 1.01, 1.0]",
                vec![b(0.0, 0.0, 1.0, 1.0)],
            ),
            ("pixels [10, 20, 300, 400]", vec![]),
            ("inverted [0.5, 0.5, 0.1, 0.9]", vec![]),
            ("three [0.1, 0.2, 0.3]", vec![]),
            ("five [0.1, 0.2, 0.3, 0.4, 0.5]", vec![]),
            ("words [a, b, c, d]", vec![]),
            ("nan [NaN, 0.1, 0.2, 0.3]", vec![]),
            ("unclosed [0.1, 0.2, 0.3, 0.4", vec![]),
            ("nested [[0.1, 0.2, 0.3, 0.4]", vec![b(0.1, 0.2, 0.3, 0.4)]),
            ("]][[ ,,, ]", vec![]),
            ("", vec![]),
            (
                "гибберish 😀 [0.25, 0.25, 0.75, 0.75]",
                vec![b(0.25, 0.25, 0.75, 0.75)],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&boxes(text), want, "input {text:?}");
        }
    }

    #[test]
    fn box_parsing_survives_arbitrary_bytes() {
        // Deterministic pseudo-random strings over a bracket-heavy alphabet.
        let alphabet: Vec<char> = "[],.0123456789-e ab\n".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let s: String = (0..40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            for bx in boxes(&s) {
                assert!(bx.x_min < bx.x_max && bx.y_min < bx.y_max, "{s:?}");
                assert!((0.0..=1.0).contains(&bx.x_min) && (0.0..=1.0).contains(&bx.y_max));
            }
        }
    }

    #[test]
    fn centers_are_points() {
        let c = b(0.2, 0.4, 0.6, 0.8).center();
        assert!(
            (c.x - 0.4).abs() < 1e-6 && (c.y - 0.6).abs() < 1e-6,
            "{c:?}"
        );
    }

    #[test]
    fn yes_no_from_logits() {
        // vocab: 0 "yes", 1 "Yes", 2 "no", 3 other
        let r = yes_no(&[2.0, 1.0, 0.0, -1.0], &[0, 1], &[2], 0.5);
        assert_eq!(r.answer, Some(true));
        let e = |x: f64| x.exp();
        let z = e(2.0) + e(1.0) + e(0.0) + e(-1.0);
        assert!((f64::from(r.p_yes) - (e(2.0) + e(1.0)) / z).abs() < 1e-6);
        assert!((f64::from(r.p_no) - 1.0 / z).abs() < 1e-6);
        assert!(
            (f64::from(r.confidence) - (e(2.0) + e(1.0)) / (e(2.0) + e(1.0) + 1.0)).abs() < 1e-6
        );

        let r = yes_no(&[0.0, 0.0, 5.0, 0.0], &[0, 1], &[2], 0.5);
        assert!(r.answer == Some(false) && r.confidence > 0.9);
    }

    #[test]
    fn yes_no_is_uncertain_when_the_model_wants_to_say_something_else() {
        // Token 3 ("other") takes most of the mass: yes and no hold e^0 * 2 / (2 + e^4).
        let logits = [0.0, -30.0, 0.0, 4.0];
        let r = yes_no(&logits, &[0], &[2], 0.5);
        assert_eq!(r.answer, None);
        assert!((r.p_yes + r.p_no) < 0.05);
        // With the check off (min_mass 0) the same logits give a boolean.
        assert!(yes_no(&logits, &[0], &[2], 0.0).answer.is_some());
    }

    #[test]
    fn yes_no_survives_degenerate_logits() {
        let r = yes_no(&[f32::NEG_INFINITY; 4], &[0], &[1], 0.5);
        assert_eq!((r.answer, r.confidence), (None, 0.5));
        let r = yes_no(&[f32::NAN, 1.0, 1.0], &[1, 99], &[2], 0.5);
        assert!((r.confidence - 0.5).abs() < 1e-6);
        let r = yes_no(&[], &[0], &[1], 0.5);
        assert_eq!(r.p_yes, 0.0);
    }
}

//! Answers checked against models whose answers were chosen in advance.
//!
//! Each model here is the tiny random-weight pair with a known-answer text model
//! (`synth::KnownAnswer`): whatever it is asked, its greedy answer is a given token
//! sequence. So these tests fail on a wrong answer, not only on a wrong shape: an answer
//! cut after its first token, a box left in letterbox coordinates, a detection that skips
//! the presence question, a yes/no that reads a confident boolean from a model that said
//! something else.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use moonwatch::model::{projector, synth, synth::Pair};
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::{
    Answer, BBox, CaptionLength, Method, Point, Request, Response, Skill, StopReason,
};

const SQUARE: &str = " a red square";
/// Sixty-odd distinct tokens, longer than the short caption's budget of 48.
const LONG: &str =
    " the quick brown fox jumps over a lazy dog while seven red birds sing above green \
hills near cold rivers under bright summer skies and children play games with small wooden \
boats beside old stone bridges where farmers sell fresh apples bread cheese honey milk eggs \
butter tomatoes carrots onions potatoes beans corn rice wheat barley oats grapes lemons";
const BOX: &str = " Yes [0.25, 0.30, 0.75, 0.90]";

fn engine_for(
    text: &str,
    end_of_text: bool,
    tweak: impl FnOnce(&mut Settings),
) -> moonwatch::vision::Engine {
    let pair = common::answering(text, end_of_text);
    let mut s = common::settings(&pair);
    tweak(&mut s);
    moondream::start(s).unwrap()
}

fn ask(engine: &moonwatch::vision::Engine, skills: Vec<Skill>, w: u32, h: u32) -> Response {
    engine
        .run(Request::new(common::frame(3, w, h), skills))
        .unwrap()
}

fn query(q: &str) -> Skill {
    Skill::Query { question: q.into() }
}

fn text_of(a: &Answer) -> &str {
    match a {
        Answer::Query { answer, .. } => answer,
        Answer::Caption { caption } => caption,
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn a_whole_answer_ends_on_end_of_text() {
    let e = engine_for(SQUARE, true, |_| {});
    let r = ask(&e, vec![query("What is in this picture?")], 64, 48);
    let a = &r.answers[0];
    assert_eq!(text_of(&a.answer), "a red square");
    assert_eq!(a.timing.generated_tokens, 3, "' a', ' red', ' square'");
    assert_eq!(a.timing.stop_reason, Some(StopReason::EndOfText));
    // The answer is what the model is sure of: its confidence says so, and a model of
    // random weights, whose every choice is close to a coin among thousands, is not.
    let Answer::Query { confidence, .. } = a.answer else {
        panic!("a query answer")
    };
    assert!(confidence > 0.9, "{confidence}");
    let pair = common::tiny();
    let random = moondream::start(common::settings(&pair)).unwrap();
    let r = ask(&random, vec![query("What is in this picture?")], 64, 48);
    let Answer::Query { confidence, .. } = r.answers[0].answer else {
        panic!("a query answer")
    };
    assert!(confidence < 0.5, "{confidence}");
}

#[test]
fn an_answer_ends_where_the_model_starts_a_new_question() {
    let e = engine_for(" a red square\n\nQuestion:", false, |_| {});
    let r = ask(&e, vec![query("What is in this picture?")], 64, 48);
    let a = &r.answers[0];
    assert_eq!(text_of(&a.answer), "a red square");
    assert_eq!(a.timing.stop_reason, Some(StopReason::StopSequence));
}

#[test]
fn each_skill_keeps_to_its_token_budget_and_captions_differ_in_length() {
    let e = engine_for(LONG, true, |s| s.model.max_tokens = 10);
    let skills = vec![
        Skill::Caption {
            length: CaptionLength::Short,
        },
        Skill::Caption {
            length: CaptionLength::Normal,
        },
        query("Tell me everything."),
    ];
    let r = ask(&e, skills, 64, 48);
    let whole = LONG.trim();

    let short = &r.answers[0];
    assert_eq!(short.timing.generated_tokens, 48);
    assert_eq!(short.timing.stop_reason, Some(StopReason::Budget));
    let short_text = text_of(&short.answer);
    assert!(whole.starts_with(short_text) && short_text.len() < whole.len());

    let normal = &r.answers[1];
    assert_eq!(
        text_of(&normal.answer),
        whole,
        "the normal caption's budget holds it all"
    );
    assert_eq!(normal.timing.stop_reason, Some(StopReason::EndOfText));

    let q = &r.answers[2];
    assert_eq!(
        q.timing.generated_tokens, 10,
        "model.max_tokens bounds a free question"
    );
    assert_eq!(q.timing.stop_reason, Some(StopReason::Budget));
    assert!(whole.starts_with(text_of(&q.answer)));
}

#[test]
fn detection_asks_for_presence_first_and_boxes_come_back_in_frame_coordinates() {
    let e = engine_for(BOX, true, |_| {});
    // A 640x480 frame: letterboxed, the model would have seen 47 px bars top and bottom,
    // and the box would need mapping; stretched as the reference does, 0..1 of what the
    // model saw is 0..1 of the frame.
    let r = ask(
        &e,
        vec![
            Skill::Detect {
                object: "car".into(),
            },
            Skill::Point {
                object: "car".into(),
            },
        ],
        640,
        480,
    );
    assert_eq!((r.prefix.input_width, r.prefix.input_height), (378, 378));
    assert_eq!(r.prefix.tokens, 730);
    let want = BBox {
        x_min: 0.25,
        y_min: 0.30,
        x_max: 0.75,
        y_max: 0.90,
    };
    match &r.answers[0].answer {
        Answer::Detect {
            present,
            confidence,
            objects,
            method,
            parsed,
            ..
        } => {
            assert_eq!(*present, Some(true));
            assert!(*confidence > 0.99, "{confidence}");
            assert_eq!(objects, &vec![want]);
            assert_eq!(*method, Method::PromptedBoxes);
            assert!(parsed);
        }
        other => panic!("expected a detection, got {other:?}"),
    }
    match &r.answers[1].answer {
        Answer::Point {
            present, points, ..
        } => {
            assert_eq!(*present, Some(true));
            assert_eq!(points.len(), 1);
            let Point { x, y } = points[0];
            assert!((x - 0.5).abs() < 1e-6 && (y - 0.6).abs() < 1e-6, "{x} {y}");
        }
        other => panic!("expected points, got {other:?}"),
    }
    assert_eq!(r.answers[0].timing.stop_reason, Some(StopReason::EndOfText));
}

#[test]
fn an_absent_object_gets_no_box_and_no_box_question() {
    let e = engine_for(" No", true, |_| {});
    let r = ask(
        &e,
        vec![Skill::Detect {
            object: "bicycle".into(),
        }],
        320,
        240,
    );
    let a = &r.answers[0];
    match &a.answer {
        Answer::Detect {
            present, objects, ..
        } => {
            assert_eq!(*present, Some(false));
            assert!(objects.is_empty());
        }
        other => panic!("expected a detection, got {other:?}"),
    }
    assert_eq!(
        a.timing.generated_tokens, 0,
        "the box question was not asked"
    );
    assert_eq!(a.timing.stop_reason, None);
}

#[test]
fn yes_no_answers_and_an_uncertain_one() {
    let yn = |q: &str| Skill::YesNo { question: q.into() };
    let yes = engine_for(" Yes", true, |_| {});
    let r = ask(&yes, vec![yn("Is the door open?")], 64, 48);
    match r.answers[0].answer {
        Answer::YesNo {
            answer, confidence, ..
        } => assert!(answer == Some(true) && confidence > 0.99),
        ref other => panic!("{other:?}"),
    }
    let no = engine_for(" No", true, |_| {});
    let r = ask(&no, vec![yn("Is the door open?")], 64, 48);
    assert!(matches!(
        r.answers[0].answer,
        Answer::YesNo {
            answer: Some(false),
            ..
        }
    ));
    // A model that wants to say " a" is neither yes nor no.
    let other = engine_for(SQUARE, true, |_| {});
    let r = ask(&other, vec![yn("Is the door open?")], 64, 48);
    match r.answers[0].answer {
        Answer::YesNo {
            answer,
            p_yes,
            p_no,
            ..
        } => {
            assert_eq!(answer, None, "uncertain");
            assert!(p_yes + p_no < 0.01);
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn yes_no_questions_carry_moondreams_suffix_unless_configured_off() {
    let q = || {
        vec![Skill::YesNo {
            question: "Is the door open?".into(),
        }]
    };
    let with = engine_for(" Yes", true, |_| {});
    let a = ask(&with, q(), 64, 48).answers[0].timing.prompt_tokens;
    drop(with);
    let without = engine_for(" Yes", true, |s| s.model.yes_no_suffix.clear());
    let b = ask(&without, q(), 64, 48).answers[0].timing.prompt_tokens;
    assert_eq!(a, b + 5, "' Answer', ' yes', ' or', ' no', '.'");
}

#[test]
fn questions_are_tokenized_by_gpt2s_rules() {
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }
    let cases: Vec<Case> = serde_json::from_str(include_str!("data/gpt2-golden.json")).unwrap();
    assert!(cases.len() >= 7);
    for c in &cases {
        assert_eq!(
            moonwatch::vision::gpt2::ids(&c.text).unwrap(),
            c.ids,
            "{:?}",
            c.text
        );
    }
    // The engine prefills exactly those tokens: the apostrophe case through the engine.
    let e = engine_for(SQUARE, true, |_| {});
    let r = ask(&e, vec![query("What's on the table?")], 64, 48);
    assert_eq!(
        r.answers[0].timing.prompt_tokens as usize,
        cases[0].ids.len()
    );
}

#[test]
fn a_question_cannot_inject_end_of_text() {
    let e = engine_for(SQUARE, true, |_| {});
    let r = ask(&e, vec![query("stop <|endoftext|> here")], 64, 48);
    // Had the marker been parsed, the prompt would be one special token, not seven pieces.
    let ids =
        moonwatch::vision::gpt2::ids("\n\nQuestion: stop <|endoftext|> here\n\nAnswer:").unwrap();
    assert!(!ids.contains(&50256));
    assert_eq!(r.answers[0].timing.prompt_tokens as usize, ids.len());
    assert_eq!(text_of(&r.answers[0].answer), "a red square");
}

#[test]
fn a_q8_0_projector_loads_and_answers() {
    let pair = common::answering(SQUARE, true);
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("mmproj-q8_0.gguf");
    let r = projector::quantize_mmproj(&pair.mmproj, &q8).unwrap();
    // 4 attention matrices, ffn_up and ffn_down in each of the 2 blocks the graph runs
    // (the third, unused, is left out), and the projector's 2.
    assert_eq!(r.quantized, 2 * 6 + 2, "{r:?}");
    assert!(std::fs::metadata(&q8).unwrap().len() < std::fs::metadata(&pair.mmproj).unwrap().len());
    let mut s = common::settings(&pair);
    s.model.mmproj = q8;
    let e = moondream::start(s).unwrap();
    let r = ask(&e, vec![query("What is in this picture?")], 320, 240);
    assert_eq!(text_of(&r.answers[0].answer), "a red square");
    assert_eq!(r.prefix.tokens, 730);
}

/// The yes/no probabilities of "Is it red?" on two different frames, with `mmproj` as the
/// projector of `pair`: they depend on every image embedding.
fn probe(pair: &Pair, mmproj: &std::path::Path) -> [(f32, f32); 2] {
    let mut s = common::settings(pair);
    s.model.mmproj = mmproj.to_owned();
    let e = moondream::start(s).unwrap();
    [3, 9].map(|seed| {
        let q = vec![Skill::YesNo {
            question: "Is it red?".into(),
        }];
        let r = e
            .run(Request::new(common::frame(seed, 320, 240), q))
            .unwrap();
        match r.answers[0].answer {
            Answer::YesNo { p_yes, p_no, .. } => (p_yes, p_no),
            ref other => panic!("{other:?}"),
        }
    })
}

#[test]
fn leaving_out_the_unused_vision_block_changes_nothing_the_model_sees() {
    // The plain random model.
    let pair = common::tiny();
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = (
        dir.path().join("with.gguf"),
        dir.path().join("without.gguf"),
    );
    let keep = projector::Options {
        keep_unused_block: true,
        ..Default::default()
    };
    projector::rewrite(&pair.mmproj, &with, keep).unwrap();
    projector::quantize_mmproj(&pair.mmproj, &without).unwrap();
    assert!(std::fs::metadata(&without).unwrap().len() < std::fs::metadata(&with).unwrap().len());
    let (a, b) = (probe(&pair, &with), probe(&pair, &without));
    assert_eq!(a, b, "the same blocks must run");
    // And the picture matters: the two frames give different probabilities.
    assert_ne!(a[0], a[1]);
}

#[test]
fn zero_units_widen_the_feed_forward_layers_without_changing_what_the_model_sees() {
    // SigLIP's 4304 units are not whole Q8_0 blocks; 120 is not either.
    let dir = tempfile::tempdir().unwrap();
    let shape = synth::Shape {
        vision_ff: 120,
        ..synth::Shape::tiny()
    };
    let pair = synth::write_pair(dir.path(), &shape, &synth::default_vocab_dir()).unwrap();
    let file = |name: &str| dir.path().join(name);
    let f16 = |pad_ffn| projector::Options {
        quantize: false,
        pad_ffn,
        keep_unused_block: false,
    };
    let plain = projector::rewrite(&pair.mmproj, &file("plain.gguf"), f16(false)).unwrap();
    let widened = projector::rewrite(&pair.mmproj, &file("widened.gguf"), f16(true)).unwrap();
    assert_eq!(plain.ffn, (120, 120));
    // ffn_up's weight and bias and ffn_down's weight in each of the 2 blocks that run.
    assert_eq!((widened.ffn, widened.padded), ((120, 128), 6));
    let q8 = projector::quantize_mmproj(&pair.mmproj, &file("q8.gguf")).unwrap();
    let q8_narrow = projector::Options {
        pad_ffn: false,
        ..Default::default()
    };
    let narrow = projector::rewrite(&pair.mmproj, &file("q8-narrow.gguf"), q8_narrow).unwrap();
    // Widened, ffn_down becomes Q8_0 too: 2 blocks more than without.
    assert_eq!(q8.quantized, narrow.quantized + 2, "{q8:?} {narrow:?}");

    let reference = probe(&pair, &file("plain.gguf"));
    assert_ne!(reference[0], reference[1], "the picture must matter");
    // Zero units add nothing, to the bit (a fill of 0.05 moves these by 0.2%).
    let w = probe(&pair, &file("widened.gguf"));
    assert_eq!(reference, w);
    // Q8_0 stays near F16 (0.5% here), and the widened Q8_0 file loads and runs.
    let close = |a: [(f32, f32); 2], b: [(f32, f32); 2], tol: f32| {
        a.iter().zip(&b).all(|(x, y)| {
            (x.0 - y.0).abs() <= tol * x.0.abs() && (x.1 - y.1).abs() <= tol * x.1.abs()
        })
    };
    let q = probe(&pair, &file("q8.gguf"));
    assert!(close(reference, q, 2e-2), "{reference:?} {q:?}");
    assert_ne!(reference, q, "Q8_0 must have run");

    // A projector quantized before widening existed (what `model pull` wrote earlier) is
    // widened in place, with no F16 file at hand: the same model as quantizing afresh.
    assert!(projector::needs_widening(&file("q8-narrow.gguf")));
    assert!(!projector::needs_widening(&file("q8.gguf")));
    let upgraded = projector::quantize_mmproj(&file("q8-narrow.gguf"), &file("up.gguf")).unwrap();
    assert_eq!(upgraded.ffn, (120, 128));
    assert!(!projector::needs_widening(&file("up.gguf")));
    assert_eq!(probe(&pair, &file("up.gguf")), q);
}

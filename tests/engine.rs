//! The real llama.cpp path on the tiny random-weight Moondream pair.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use moonwatch::vision::moondream;
use moonwatch::vision::{Answer, CaptionLength, EngineError, Method, Request, Skill};

fn query(q: &str) -> Skill {
    Skill::Query { question: q.into() }
}

#[test]
fn tokenizer_matches_moondream_prompt_format() {
    let pair = common::tiny();
    let backend = moondream::backend().unwrap();
    let params = llama_cpp_2::model::params::LlamaModelParams::default();
    let model =
        llama_cpp_2::model::LlamaModel::load_from_file(backend, &pair.text, &params).unwrap();
    use moonwatch::vision::prompt::prompts;
    use moonwatch::vision::Revision;
    let tail = prompts(Revision::Moondream2024).tail(
        &Skill::Caption {
            length: CaptionLength::Normal,
        },
        "",
    );
    let ids: Vec<i32> = model
        .vocab()
        .tokenize(tail.as_bytes(), false, false)
        .iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        ids,
        [198, 198, 24361, 25, 39373, 4892, 428, 2939, 13, 198, 198, 33706, 25]
    );
    assert_eq!(model.vocab().bos().0, 50256);
    // Our GPT-2 tokenizer agrees on the template.
    assert_eq!(
        moonwatch::vision::gpt2::ids(&tail).unwrap(),
        ids.iter().map(|&i| i as u32).collect::<Vec<_>>()
    );
    // The 2025-04-14 caption templates are the reference's token ids.
    let p25 = prompts(Revision::Moondream20250414);
    let want: [&[u32]; 3] = [
        &[198, 198, 16438, 8305, 25],
        &[198, 198, 24334, 1159, 25],
        &[198, 198, 14617, 8305, 25],
    ];
    for (length, want) in [
        CaptionLength::Short,
        CaptionLength::Normal,
        CaptionLength::Long,
    ]
    .into_iter()
    .zip(want)
    {
        let tail = p25.tail(&Skill::Caption { length }, "");
        assert_eq!(
            moonwatch::vision::gpt2::ids(&tail).unwrap(),
            want,
            "{tail:?}"
        );
    }
}

#[test]
fn second_question_on_a_frame_reuses_the_prefix_and_matches_a_cold_run() {
    let pair = common::tiny();
    let engine = moondream::start(common::settings(&pair)).unwrap();
    let f = common::frame(3, 320, 240);
    let g = common::frame(9, 200, 300);

    let first = engine
        .run(Request::new(f.clone(), vec![query("What is this?")]))
        .unwrap();
    assert!(!first.prefix.reused);
    assert_eq!(first.prefix.tokens, 730, "BOS + 729 image tokens");
    assert!(first.prefix.image_encode_ms > 0.0 && first.prefix.image_prefill_ms > 0.0);

    // Same frame again, a different question: no encode, no prefill.
    let warm = engine
        .run(Request::new(f.clone(), vec![query("What colour is it?")]))
        .unwrap();
    assert!(warm.prefix.reused);
    assert_eq!(
        (warm.prefix.image_encode_ms, warm.prefix.image_prefill_ms),
        (0.0, 0.0)
    );

    // A different frame evicts the prefix; coming back encodes again.
    let other = engine
        .run(Request::new(g, vec![query("What colour is it?")]))
        .unwrap();
    assert!(!other.prefix.reused);
    let cold = engine
        .run(Request::new(f.clone(), vec![query("What colour is it?")]))
        .unwrap();
    assert!(!cold.prefix.reused);
    assert_eq!(
        warm.answers[0].answer, cold.answers[0].answer,
        "warm and cold answers differ"
    );
    assert_ne!(other.frame_key, cold.frame_key);

    // Several skills in one request share one prefix and equal their separate answers.
    let batch = engine
        .run(Request::new(
            f.clone(),
            vec![query("What is this?"), query("What colour is it?")],
        ))
        .unwrap();
    assert!(batch.prefix.reused);
    assert_eq!(batch.answers[0].answer, first.answers[0].answer);
    assert_eq!(batch.answers[1].answer, cold.answers[0].answer);
    let t = &batch.answers[1].timing;
    assert!(t.prompt_tokens > 5 && t.generated_tokens <= 24);
}

#[test]
fn every_skill_runs_and_parses_whatever_the_model_says() {
    let pair = common::tiny();
    let engine = moondream::start(common::settings(&pair)).unwrap();
    let skills = vec![
        Skill::Caption {
            length: CaptionLength::Short,
        },
        Skill::Detect {
            object: "car".into(),
        },
        Skill::Point {
            object: "car".into(),
        },
        Skill::YesNo {
            question: "Is there a car?".into(),
        },
    ];
    let r = engine
        .run(Request::new(common::frame(5, 64, 64), skills))
        .unwrap();
    assert_eq!(r.answers.len(), 4);
    match &r.answers[0].answer {
        Answer::Caption { caption } => assert!(!caption.contains("Question:")),
        other => panic!("expected a caption, got {other:?}"),
    }
    match &r.answers[1].answer {
        Answer::Detect {
            present,
            objects,
            method,
            raw,
            parsed,
            ..
        } => {
            assert_eq!(*method, Method::PromptedBoxes);
            assert_eq!(objects, &moonwatch::vision::parse::boxes(raw));
            if *present != Some(true) {
                assert!(objects.is_empty() && raw.is_empty() && *parsed);
            }
        }
        other => panic!("expected a detection, got {other:?}"),
    }
    match &r.answers[2].answer {
        Answer::Point {
            method,
            points,
            parsed,
            ..
        } => {
            assert_eq!(*method, Method::BoxCenters);
            assert!(*parsed || points.is_empty());
        }
        other => panic!("expected points, got {other:?}"),
    }
    match &r.answers[3].answer {
        Answer::YesNo {
            confidence,
            p_yes,
            p_no,
            answer,
        } => {
            assert!((0.5..=1.0).contains(confidence), "{confidence}");
            assert!(*p_yes >= 0.0 && *p_no >= 0.0 && p_yes + p_no <= 1.0 + 1e-5);
            if let Some(a) = answer {
                assert_eq!(*a, p_yes > p_no);
            }
            assert_eq!(
                r.answers[3].timing.generated_tokens, 0,
                "yes/no reads logits only"
            );
        }
        other => panic!("expected yes/no, got {other:?}"),
    }
}

#[test]
fn odd_image_sizes_are_taken() {
    let pair = common::tiny();
    let engine = moondream::start(common::settings(&pair)).unwrap();
    for (w, h) in [(1, 1), (1000, 3), (3, 700)] {
        let r = engine.run(Request::new(
            common::frame(1, w, h),
            vec![Skill::YesNo {
                question: "Is it dark?".into(),
            }],
        ));
        assert!(r.is_ok(), "{w}x{h}: {r:?}");
    }
}

#[test]
fn bad_model_files_fail_to_load_with_the_path_named() {
    let pair = common::tiny();
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&pair.text).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let text_file = dir.path().join("notes.gguf");
    std::fs::write(&text_file, "just some text, not a model").unwrap();
    let truncated_mmproj = dir.path().join("mmproj-truncated.gguf");
    let mbytes = std::fs::read(&pair.mmproj).unwrap();
    std::fs::write(&truncated_mmproj, &mbytes[..mbytes.len() / 2]).unwrap();
    let header_only = dir.path().join("mmproj-header.gguf");
    std::fs::write(&header_only, &mbytes[..64]).unwrap();

    let base = common::settings(&pair);
    let cases = [
        (truncated.clone(), pair.mmproj.clone(), "truncated.gguf"),
        (
            dir.path().join("missing.gguf"),
            pair.mmproj.clone(),
            "missing.gguf",
        ),
        (
            pair.text.clone(),
            dir.path().join("missing-mmproj.gguf"),
            "missing-mmproj.gguf",
        ),
        (pair.text.clone(), text_file.clone(), "not a GGUF file"),
        (pair.mmproj.clone(), pair.text.clone(), "swapped"),
        (
            pair.text.clone(),
            truncated_mmproj.clone(),
            "mmproj-truncated.gguf",
        ),
        (pair.text.clone(), header_only.clone(), "mmproj-header.gguf"),
    ];
    for (text, mmproj, want) in cases {
        let mut s = base.clone();
        s.model.text = text;
        s.model.mmproj = mmproj;
        match moondream::start(s) {
            Err(EngineError::Load(msg)) => assert!(msg.contains(want), "{want}: {msg}"),
            other => panic!("{want}: expected a load error, got {other:?}"),
        }
    }
}

#[test]
fn shutdown_cancels_and_later_requests_are_refused() {
    let pair = common::tiny();
    let engine = moondream::start(common::settings(&pair)).unwrap();
    let ticket = engine
        .submit(Request::new(common::frame(2, 64, 64), vec![query("Why?")]))
        .unwrap();
    engine.shutdown();
    // The request either finished before the stop or was cancelled by it; it is never lost.
    match ticket.blocking_recv().unwrap() {
        Ok(r) => assert_eq!(r.answers.len(), 1),
        Err(e) => assert!(
            matches!(e, EngineError::Cancelled | EngineError::Stopped),
            "{e}"
        ),
    }
}

#[test]
fn ignore_eos_generates_the_whole_budget() {
    let pair = common::tiny();
    let mut s = common::settings(&pair);
    s.ignore_eos = true;
    s.model.max_tokens = 20;
    let engine = moondream::start(s).unwrap();
    let r = engine
        .run(Request::new(
            common::frame(7, 64, 64),
            vec![query("Count to ten.")],
        ))
        .unwrap();
    let t = &r.answers[0].timing;
    assert_eq!((t.generated_tokens, t.decode_steps), (20, 19));
    assert!(t.decode_ms > 0.0);
}

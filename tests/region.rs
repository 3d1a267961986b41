//! Real detect and point: Moondream2 2025-04-14's region heads on llama.cpp, compared with
//! Moondream's own code (goldens made by scripts/region-goldens.py from the reference at
//! vikhyat/moondream f660ccb, on the same random weights) and with known-answer models
//! whose objects were chosen by construction.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use moonwatch::config::{CropMode, FlashAttention, KvCacheKind};
use moonwatch::frame::Frame;
use moonwatch::model::convert::{self, Ends, Fixture, RefShape};
use moonwatch::model::synth;
use moonwatch::vision::crops;
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::parse::{BBox, Point};
use moonwatch::vision::region;
use moonwatch::vision::{Answer, Engine, EngineError, Method, Request, Skill, StopReason};
use serde::Deserialize;

/// A reference decision whose winner leads by less than this (in logits) is a near tie:
/// float32 torch and llama.cpp's arithmetic may legitimately pick differently there, and
/// everything after it may then differ.
const NEAR_TIE: f32 = 1e-3;

/// The end-of-text biases the committed goldens were made with.
const GOLDENS: [(f32, &str); 2] = [
    (0.0, "tests/data/region-goldens-eos0.json"),
    (2.5, "tests/data/region-goldens-eos2.5.json"),
];

#[derive(Debug, Clone)]
struct Files {
    text: PathBuf,
    mmproj: PathBuf,
    region: PathBuf,
}

/// Writes (once per build directory) a reference-layout checkpoint and converts it with
/// `model convert`, as a user converts the release.
fn converted(name: &str, fixture: Fixture) -> Files {
    converted_with(name, RefShape::tiny(), convert::REFERENCE_SEED, fixture)
}

/// [`converted`] for a checkpoint of another shape and seed.
fn converted_with(name: &str, shape: RefShape, seed: u64, fixture: Fixture) -> Files {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_writer = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::scratch(&format!("region-{name}"));
    let out = dir.join("gguf");
    let files = Files {
        text: out.join(convert::TEXT_FILE),
        mmproj: out.join(convert::MMPROJ_FILE),
        region: out.join(convert::REGION_FILE),
    };
    if files.region.is_file() {
        return files;
    }
    let weights = convert::write_reference(&dir, &shape, seed, fixture).unwrap();
    let vocab = synth::Vocab::load(&synth::default_vocab_dir()).unwrap();
    let done = convert::convert(&weights, &out, &vocab).unwrap();
    assert_eq!(done.region, files.region);
    files
}

fn settings(f: &Files) -> Settings {
    let mut s = Settings::for_files(&f.text, &f.mmproj, 2);
    s.model.region = Some(f.region.clone());
    s.model.revision = moonwatch::vision::Revision::Moondream20250414;
    common::gpu(&mut s);
    s
}

fn engine(f: &Files) -> Engine {
    moondream::start(settings(f)).unwrap()
}

/// The 378x378 picture the goldens were made from.
fn scene() -> Arc<Frame> {
    picture("tests/data/region-scene.png")
}

fn picture(path: &str) -> Arc<Frame> {
    let img = image::open(path).unwrap().to_rgb8();
    Arc::new(Frame::from_rgb(img.width(), img.height(), img.into_raw()).unwrap())
}

fn detect(object: &str) -> Skill {
    Skill::Detect {
        object: object.into(),
    }
}

fn point(object: &str) -> Skill {
    Skill::Point {
        object: object.into(),
    }
}

/// Boxes (detect) or points (point) from one answer, with its stop reason.
fn located(e: &Engine, frame: &Arc<Frame>, skill: Skill) -> (Vec<BBox>, Vec<Point>, StopReason) {
    let r = e.run(Request::new(frame.clone(), vec![skill])).unwrap();
    let a = &r.answers[0];
    let stop = a.timing.stop_reason.unwrap();
    match &a.answer {
        Answer::Detect {
            objects,
            method,
            present,
            ..
        } => {
            assert_eq!(*method, Method::RegionHeads);
            assert_eq!(*present, Some(!objects.is_empty()));
            (objects.clone(), Vec::new(), stop)
        }
        Answer::Point {
            points,
            method,
            present,
            ..
        } => {
            assert_eq!(*method, Method::RegionHeads);
            assert_eq!(*present, Some(!points.is_empty()));
            (Vec::new(), points.clone(), stop)
        }
        other => panic!("{other:?}"),
    }
}

#[derive(Debug, Deserialize)]
struct Goldens {
    /// The reference's projector on [g, g] against the folded one (one-crop pictures).
    fold_max_abs_diff: Option<f32>,
    /// The reference's grid of local crops (rows, cols).
    #[serde(default)]
    tiling: Option<[u32; 2]>,
    image_embedding_rows: BTreeMap<String, Vec<f32>>,
    requests: Vec<GoldenRequest>,
}

#[derive(Debug, Deserialize)]
struct GoldenRequest {
    skill: String,
    object: String,
    prompt: Vec<i32>,
    steps: Vec<serde_json::Value>,
    result: serde_json::Value,
}

impl GoldenRequest {
    /// Index of the first decision that is a near tie, if any.
    fn first_near_tie(&self) -> Option<usize> {
        self.steps.iter().position(|s| {
            let margins: Vec<f32> = match s.get("margins") {
                Some(m) => serde_json::from_value(m.clone()).unwrap(),
                None => vec![serde_json::from_value(s["margin"].clone()).unwrap()],
            };
            margins.iter().any(|&m| m < NEAR_TIE)
        })
    }

    /// The reference's objects as (x_min, y_min, x_max, y_max) or (x, y).
    fn objects(&self) -> Vec<Vec<f64>> {
        let (key, fields): (&str, &[&str]) = if self.skill == "detect" {
            ("objects", &["x_min", "y_min", "x_max", "y_max"])
        } else {
            ("points", &["x", "y"])
        };
        self.result[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| fields.iter().map(|f| o[*f].as_f64().unwrap()).collect())
            .collect()
    }
}

fn load_goldens(path: &str) -> Goldens {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Compares every request of `goldens` with what `e` finds on the scene, decision for
/// decision up to the reference's first near tie (which must leave at least `min_sure`
/// objects certain); `Err` names the first difference.
fn compare(goldens: &Goldens, path: &str, e: &Engine, min_sure: usize) -> Result<(), String> {
    compare_on(goldens, path, e, &scene(), min_sure)
}

/// [`compare`] on another picture.
fn compare_on(
    goldens: &Goldens,
    path: &str,
    e: &Engine,
    frame: &Arc<Frame>,
    min_sure: usize,
) -> Result<(), String> {
    // The reference's own projector on [g, g] equals the folded one we convert to.
    if let Some(fold) = goldens.fold_max_abs_diff {
        assert!(fold < 1e-5, "{path}");
    }
    for g in &goldens.requests {
        if g.skill == "query" {
            compare_query(g, path, e, frame)?;
            continue;
        }
        // The prompt the reference prefilled is the one moonwatch builds.
        let object_ids: Vec<i32> = moonwatch::vision::gpt2::ids(&format!(" {}", g.object))
            .unwrap()
            .into_iter()
            .map(|i| i as i32)
            .collect();
        let prefix = if g.skill == "detect" {
            region::DETECT_PREFIX
        } else {
            region::POINT_PREFIX
        };
        let want_prompt = [&prefix[..], &object_ids, &region::SUFFIX].concat();
        assert_eq!(g.prompt, want_prompt, "{path}: {} {}", g.skill, g.object);

        let skill = if g.skill == "detect" {
            detect(&g.object)
        } else {
            point(&g.object)
        };
        let (boxes, points, stop) = located(e, frame, skill);
        let ours: Vec<Vec<f64>> = if g.skill == "detect" {
            boxes
                .iter()
                .map(|b| vec![b.x_min, b.y_min, b.x_max, b.y_max])
                .map(|v| v.into_iter().map(f64::from).collect())
                .collect()
        } else {
            points
                .iter()
                .map(|p| vec![f64::from(p.x), f64::from(p.y)])
                .collect()
        };
        let theirs = g.objects();
        let what = format!("{path}: {} {}", g.skill, g.object);
        // Steps: the first end-of-text decision, then per object coord, token, coord,
        // token (and size, token for boxes).
        let per = if g.skill == "detect" { 6 } else { 4 };
        let sure = match g.first_near_tie() {
            None => {
                let want_stop = if theirs.len() == region::MAX_OBJECTS {
                    StopReason::Budget
                } else {
                    StopReason::EndOfText
                };
                if ours.len() != theirs.len() || stop != want_stop {
                    return Err(format!(
                        "{what}: {} objects ({stop:?}), the reference {} ({want_stop:?})",
                        ours.len(),
                        theirs.len()
                    ));
                }
                theirs.len()
            }
            Some(i) => (i.saturating_sub(1) / per).min(theirs.len()),
        };
        assert!(
            sure >= theirs.len().min(min_sure),
            "{what}: only {sure} objects before a near tie; make goldens from decisive weights"
        );
        if ours.len() < sure {
            return Err(format!(
                "{what}: {} objects, the reference's first {sure} are certain: {ours:?}",
                ours.len()
            ));
        }
        for k in 0..sure {
            if ours[k]
                .iter()
                .zip(&theirs[k])
                .any(|(a, b)| (a - b).abs() >= 1e-6)
            {
                return Err(format!(
                    "{what} object {k}: ours {:?}, reference {:?}",
                    ours[k], theirs[k]
                ));
            }
        }
    }
    Ok(())
}

/// The tokens the engine answers this node's queries with (`Settings` `max_tokens`).
const QUERY_TOKENS: usize = 32;

/// A greedy answer against the reference's, token for token up to its first near tie.
fn compare_query(
    g: &GoldenRequest,
    path: &str,
    e: &Engine,
    frame: &Arc<Frame>,
) -> Result<(), String> {
    let what = format!("{path}: query {:?}", g.object);
    // The reference's prompt (`\n\nQuestion:` + " question" + `\n\nAnswer:` ids) is what
    // moonwatch's template tokenizes to.
    let tail = format!("\n\nQuestion: {}\n\nAnswer:", g.object);
    let ours_prompt: Vec<i32> = moonwatch::vision::gpt2::ids(&tail)
        .unwrap()
        .into_iter()
        .map(|i| i as i32)
        .collect();
    assert_eq!(g.prompt, ours_prompt, "{what}");
    let tokens: Vec<u32> = serde_json::from_value(g.result["tokens"].clone()).unwrap();
    let sure = g.first_near_tie().unwrap_or(tokens.len()).min(QUERY_TOKENS);
    assert!(sure >= 8, "{what}: only {sure} tokens before a near tie");
    let want = moonwatch::vision::gpt2::bpe()
        .unwrap()
        .decode(&tokens[..sure])
        .unwrap();
    let skill = Skill::Query {
        question: g.object.clone(),
    };
    let r = e.run(Request::new(frame.clone(), vec![skill])).unwrap();
    let Answer::Query { answer, .. } = &r.answers[0].answer else {
        panic!("{what}: {:?}", r.answers[0]);
    };
    if answer.trim_start().starts_with(want.trim()) {
        Ok(())
    } else {
        Err(format!(
            "{what}: ours {answer:?}, the reference's first {sure} tokens {want:?}"
        ))
    }
}

#[test]
fn detect_and_point_match_moondreams_own_code() {
    for (eos_bias, path) in GOLDENS {
        let goldens = load_goldens(path);
        let files = converted(
            &format!("eos{eos_bias}"),
            Fixture::Random {
                eos_bias,
                attention: 1.0,
                values: 1.0,
            },
        );
        let e = engine(&files);
        if let Err(e) = compare(&goldens, path, &e, 5) {
            panic!("{e}");
        }
        e.shutdown();
    }
}

/// Goldens of a second checkpoint: another seed and shape (text 192 wide, 3 layers) and
/// attention logits 64 times as sharp, made as the module's header says from
/// `moonwatch model synth --reference --eos-bias 0 --seed 7 --attention 64 --text-width 192
/// --text-layers 3` (objects " cat" and " dog").
const STRONG: &str = "tests/data/region-goldens-strong.json";

/// How much sharper than drawn the strong checkpoint's attention logits are.
const SHARPER: f32 = 64.0;

fn strong() -> Files {
    let shape = RefShape {
        text_dim: 192,
        text_ff: 384,
        text_layers: 3,
        ..RefShape::tiny()
    };
    let fixture = Fixture::Random {
        eos_bias: 0.0,
        attention: SHARPER,
        values: 1.0,
    };
    converted_with(&format!("strong-{SHARPER}"), shape, 7, fixture)
}

#[test]
fn a_second_sharper_checkpoint_matches_moondreams_own_code_as_shipped() {
    // Data the goldens above were not made from: another seed and shape, attention 64
    // times as sharp. As shipped (flash attention `auto`: off with region heads).
    let goldens = load_goldens(STRONG);
    let e = engine(&strong());
    // Its random box sizes reach a near tie at the fifth box: four are certain.
    if let Err(e) = compare(&goldens, STRONG, &e, 4) {
        panic!("{e}");
    }
    e.shutdown();
}

#[test]
fn the_image_embeddings_match_the_references() {
    // The converted vision GGUF (patch kernel, split qkv, folded projector) run by mtmd
    // gives the reference's image embeddings for the goldens' picture.
    let goldens = load_goldens(GOLDENS[0].1);
    let files = converted(
        "eos0",
        Fixture::Random {
            eos_bias: 0.0,
            attention: 1.0,
            values: 1.0,
        },
    );
    let model = text_model(&files);
    let mut vision =
        moonwatch::vision::llama::Vision::new(&files.mmproj, &model, false, 2, Some(false), false)
            .unwrap();
    let frame = scene();
    let embd = vision.encode(&frame.rgb, 378).unwrap();
    assert_rows(&goldens, &embd, model.n_embd() as usize, 1e-3);
}

/// The text model of `files`, loaded alone (for the vision context's checks).
fn text_model(files: &Files) -> llama_cpp_2::model::LlamaModel {
    let backend = moondream::backend().unwrap();
    let params = llama_cpp_2::model::params::LlamaModelParams::default();
    llama_cpp_2::model::LlamaModel::load_from_file(backend, &files.text, &params).unwrap()
}

/// The goldens' recorded rows of the image embeddings, against `embd`.
fn assert_rows(goldens: &Goldens, embd: &[f32], width: usize, tolerance: f32) {
    assert_eq!(embd.len(), 729 * width);
    for (row, want) in &goldens.image_embedding_rows {
        let r: usize = row.parse().unwrap();
        let ours = &embd[r * width..(r + 1) * width];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < tolerance * scale,
            "row {r}: off by {worst} (scale {scale})"
        );
    }
}

/// Goldens of pictures larger than a crop, which the reference cuts into a 2x4 grid of
/// overlapping crops plus the whole picture (made from the `eos0` checkpoint as above,
/// with `--image tests/data/crops-scene-WxH.png`).
const CROP_GOLDENS: [(&str, &str); 2] = [
    (
        "tests/data/crops-scene-640x480.png",
        "tests/data/region-goldens-crops-640x480.json",
    ),
    (
        "tests/data/crops-scene-1280x720.png",
        "tests/data/region-goldens-crops-1280x720.json",
    ),
];

fn eos0() -> Files {
    converted(
        "eos0",
        Fixture::Random {
            eos_bias: 0.0,
            attention: 1.0,
            values: 1.0,
        },
    )
}

#[test]
fn reference_crops_give_the_references_image_embeddings() {
    // Each crop's encoder features (read before mtmd's projector), stitched, pooled and
    // projected by the unfolded projector, against the reference's embeddings (a 640x480
    // picture grows to 1176x644 before it is cut, a 1280x720 one shrinks to it).
    let files = eos0();
    let model = text_model(&files);
    let mut vision =
        moonwatch::vision::llama::Vision::new(&files.mmproj, &model, false, 2, Some(false), true)
            .unwrap();
    let projector = moonwatch::vision::llama::CropProjector::load(&files.mmproj, false, 2).unwrap();
    for (image, path) in CROP_GOLDENS {
        let goldens = load_goldens(path);
        let cut = crops::overlap_crops(&picture(image), crops::DEFAULT_MAX_CROPS);
        assert_eq!(
            goldens.tiling,
            Some([cut.tiling.rows, cut.tiling.cols]),
            "{path}"
        );
        let embd = moondream::encode_crops(&mut vision, &projector, &cut).unwrap();
        // The crops are vips' own pixels (src/frame: resized_like_vips), so the path is as
        // close as the one-crop one.
        assert_rows(&goldens, &embd, model.n_embd() as usize, 1e-3);
        // The one-crop path would see something else: the check can fail.
        let one = vision
            .encode(&picture(image).stretched(378, 378), 378)
            .unwrap();
        let moved = one
            .iter()
            .zip(&embd)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-2,
            "{path}: one crop gives the same embeddings ({moved})"
        );
    }
}

#[test]
fn reference_crops_detect_point_and_answer_as_moondreams_own_code_at_full_resolution() {
    let mut s = settings(&eos0());
    s.model.crops = CropMode::Reference;
    s.model.max_tokens = QUERY_TOKENS as u32;
    let e = moondream::start(s).unwrap();
    for (image, path) in CROP_GOLDENS {
        let goldens = load_goldens(path);
        let frame = picture(image);
        // The engine says what it encoded: the whole picture and eight crops.
        let r = e
            .run(Request::new(frame.clone(), vec![detect("cat")]))
            .unwrap();
        assert_eq!((r.prefix.reused, r.prefix.crops), (false, 9), "{path}");
        let min_sure = if goldens.tiling == Some([2, 4]) && path.contains("640x480") {
            1
        } else {
            5
        };
        if let Err(e) = compare_on(&goldens, path, &e, &frame, min_sure) {
            panic!("{e}");
        }
    }
    e.shutdown();
}

fn known(name: &str, ends: Ends) -> Engine {
    engine(&converted(name, Fixture::Known(ends)))
}

fn x_y() -> (f32, f32) {
    (
        region::coord_of_bin(convert::KNOWN_X_BIN),
        region::coord_of_bin(convert::KNOWN_Y_BIN),
    )
}

fn known_box() -> BBox {
    let (x, y) = x_y();
    let [w, h] = convert::KNOWN_SIZE_BINS.map(region::size_of_bin);
    region::bbox(x, y, w, h)
}

#[test]
fn known_answers_no_objects() {
    let e = known("known-none", Ends::AtOnce);
    let f = common::frame(3, 64, 48);
    let (boxes, _, stop) = located(&e, &f, detect("cat"));
    assert!(boxes.is_empty());
    assert_eq!(stop, StopReason::EndOfText);
    let (_, points, _) = located(&e, &f, point("cat"));
    assert!(points.is_empty());
    e.shutdown();
}

#[test]
fn known_answers_one_object() {
    let e = known("known-one", Ends::AfterOne);
    let f = common::frame(4, 64, 48);
    let (boxes, _, stop) = located(&e, &f, detect("garage door"));
    assert_eq!(boxes, [known_box()]);
    assert_eq!(stop, StopReason::EndOfText);
    let (x, y) = x_y();
    let (_, points, _) = located(&e, &f, point("garage door"));
    assert_eq!(points, [Point { x, y }]);
    e.shutdown();
}

#[test]
fn known_answers_stop_at_fifty_objects() {
    let e = known("known-many", Ends::Never);
    let f = common::frame(5, 64, 48);
    let (boxes, _, stop) = located(&e, &f, detect("person"));
    assert_eq!(boxes, vec![known_box(); region::MAX_OBJECTS]);
    assert_eq!(stop, StopReason::Budget);
    // A point's next x is read from the state after its own y was fed back (which
    // carries the coordinate marker): the reference's order of reads, visible here.
    let (x, y) = x_y();
    let (_, points, _) = located(&e, &f, point("person"));
    assert_eq!(points.len(), region::MAX_OBJECTS);
    assert_eq!(points[0], Point { x, y });
    assert!(
        points[1..].iter().all(|p| *p == Point { x: y, y }),
        "{points:?}"
    );
    e.shutdown();
}

#[test]
fn the_frame_prefix_is_reused_and_other_skills_still_answer() {
    let e = known("known-one", Ends::AfterOne);
    let f = common::frame(6, 64, 48);
    let r = e
        .run(Request::new(
            f.clone(),
            vec![
                detect("cat"),
                point("cat"),
                Skill::Query {
                    question: "What is this?".into(),
                },
            ],
        ))
        .unwrap();
    assert!(!r.prefix.reused);
    assert_eq!(r.prefix.tokens, 730);
    assert!(matches!(&r.answers[2].answer, Answer::Query { .. }));
    let again = e.run(Request::new(f, vec![detect("cat")])).unwrap();
    assert!(again.prefix.reused);
    assert_eq!(again.answers[0].answer, r.answers[0].answer);
    e.shutdown();
}

#[test]
fn region_heads_from_another_checkpoint_are_refused_at_load() {
    // The known-answer checkpoint's final norm is not the random one's: the check that
    // the captured hidden state normalizes to llama.cpp's own output catches the pair.
    let random = converted(
        "eos0",
        Fixture::Random {
            eos_bias: 0.0,
            attention: 1.0,
            values: 1.0,
        },
    );
    let other = converted("known-one", Fixture::Known(Ends::AfterOne));
    let mut s = settings(&random);
    s.model.region = Some(other.region);
    let err = moondream::start(s).unwrap_err();
    assert!(
        matches!(&err, EngineError::Load(m) if m.contains("output norm")),
        "{err}"
    );
    // A file that is not a region GGUF says what it is.
    let mut s = settings(&random);
    s.model.region = Some(random.mmproj.clone());
    let err = moondream::start(s).unwrap_err();
    assert!(
        matches!(&err, EngineError::Load(m) if m.contains("architecture") && m.contains("model convert")),
        "{err}"
    );
}

#[test]
fn a_full_context_keeps_the_objects_found_so_far() {
    let mut s = settings(&converted("known-many", Fixture::Known(Ends::Never)));
    s.model.context_size = 800;
    let e = moondream::start(s).unwrap();
    let (boxes, _, stop) = located(&e, &common::frame(7, 64, 48), detect("person"));
    assert_eq!(stop, StopReason::ContextFull);
    // 730 prefix positions and 6 prompt tokens (" person" is one) leave room for 21
    // boxes of 3 positions.
    assert_eq!(boxes, vec![known_box(); (800 - 730 - 6) / 3]);
    e.shutdown();
}

/// The text model's value weights times this (2^-24), its attention output weights divided
/// by it: the `eos0` checkpoint's function exactly in float32 (a power of two), with the
/// values of V (about 3e-8) below F16's smallest subnormal number (6e-8), which float32
/// holds with its full precision.
const SMALL_VALUES: f32 = 1.0 / 16777216.0;

#[test]
fn attention_computes_in_float32_as_shipped_and_f16_k_and_v_move_decisions() {
    // Goldens made from this checkpoint (`model synth --reference --eos-bias 0 --values
    // 0.000000059604644775390625`): the eos0 goldens' decisions up to their near ties, the
    // function being the same.
    let path = "tests/data/region-goldens-small-values.json";
    let goldens = load_goldens(path);
    let files = converted(
        &format!("eos0-values-{SMALL_VALUES}"),
        Fixture::Random {
            eos_bias: 0.0,
            attention: 1.0,
            values: SMALL_VALUES,
        },
    );
    // As shipped: region heads give an F32 KV cache and flash attention off.
    let shipped = engine(&files);
    if let Err(e) = compare(&goldens, path, &shipped, 5) {
        panic!("as shipped: {e}");
    }
    shipped.shutdown();
    // K and V in F16, from the cache or from flash attention's copies: decisions move.
    for (kv, flash) in [
        (KvCacheKind::F16, FlashAttention::Auto),
        (KvCacheKind::F32, FlashAttention::On),
    ] {
        let mut s = settings(&files);
        s.model.kv_cache_type = kv;
        s.model.flash_attention = flash;
        let e = moondream::start(s).unwrap();
        let moved = compare(&goldens, path, &e, 5);
        e.shutdown();
        assert!(
            moved.is_err(),
            "{kv:?} cache, flash {flash:?}: matched the reference"
        );
    }
}

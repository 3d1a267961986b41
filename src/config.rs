//! The configuration file: a TOML contract, parsed strictly and then checked as a whole.
//!
//! Parsing (serde, unknown keys rejected) catches wrong names and types; [`Config::problems`]
//! then lists every semantic problem at once, each with the key it concerns, so a user fixes
//! a file in one pass. `moonwatch check-config` prints those and exits with [`EX_CONFIG`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::triggers::TriggerConfig;
use crate::zone::Zone;

/// sysexits' EX_CONFIG: the exit status for a configuration that cannot be used.
pub const EX_CONFIG: i32 = 78;

/// Where the default configuration lives when none is named.
pub const DEFAULT_PATH: &str = "/etc/moonwatch/moonwatch.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Moondream2 model and how llama.cpp runs it.
    pub model: ModelConfig,
    /// Where pictures come from: one `[camera]`, or named `[[camera]]` sections served by
    /// one engine.
    pub camera: Cameras,
    /// The broker and the topic layout.
    pub mqtt: MqttConfig,
    /// The running daemon: state, periodic work, limits.
    pub daemon: DaemonConfig,
    /// Sharing engines through the broker: camera nodes hand their jobs to workers.
    pub pool: PoolConfig,
    /// Standing triggers of a single `[camera]` (`[[trigger]]` tables); `[[camera]]`
    /// sections hold their own (`[[camera.trigger]]`).
    #[serde(rename = "trigger")]
    pub triggers: Vec<TriggerConfig>,
    /// What the file itself wrote, as opposed to defaults (set by [`Config::parse`]).
    #[serde(skip)]
    pub declared: Declared,
}

/// What a configuration file declared itself, apart from defaults. A reload compares it
/// with the running file's, so a file an editor or a `>` redirect left empty or cut short
/// cannot silently drop the camera, the model or every trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// The file declared a `[camera]` table or `[[camera]]` sections.
    pub camera: bool,
    /// The file declared a `[model]` table.
    pub model: bool,
    /// The file has a `trigger` key (for `[[camera]]`: in at least one camera), even an
    /// empty one (`trigger = []`): "no triggers" said on purpose.
    pub triggers: bool,
}

impl Declared {
    fn of(table: &toml::Table) -> Self {
        let camera_tables: Vec<&toml::Table> = match table.get("camera") {
            Some(toml::Value::Table(t)) => vec![t],
            Some(toml::Value::Array(a)) => a.iter().filter_map(toml::Value::as_table).collect(),
            _ => Vec::new(),
        };
        Self {
            camera: table.contains_key("camera"),
            model: table.contains_key("model"),
            triggers: table.contains_key("trigger")
                || camera_tables.iter().any(|c| c.contains_key("trigger")),
        }
    }
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "v5")]
    V5,
    #[serde(rename = "v3.1.1")]
    V311,
}

/// The `[mqtt]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// This device's id in topics and Home Assistant; empty = the host name.
    pub device_id: String,
    /// MQTT client id; empty = "moonwatch-" + device id.
    pub client_id: String,
    /// Topics live under `{prefix}/{device_id}/`.
    pub prefix: String,
    pub username: String,
    pub password: String,
    /// Read the password from this file instead (keeps it out of the config).
    pub password_file: PathBuf,
    /// Seconds between keepalive pings.
    pub keepalive: u64,
    /// Largest message accepted or sent, in bytes (requests may carry images).
    pub max_payload: usize,
    /// Connect with TLS.
    pub tls: bool,
    /// CA certificate (PEM); empty = the system's roots.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Publish Home Assistant discovery.
    pub discovery: bool,
    pub discovery_prefix: String,
    /// `device`: one config per camera listing its entities (Home Assistant 2024.11 and
    /// later); `entity`: one config per entity, for older versions.
    pub discovery_form: DiscoveryForm,
}

/// How Home Assistant discovery is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryForm {
    #[default]
    Device,
    Entity,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 1883,
            protocol: Protocol::V5,
            device_id: String::new(),
            client_id: String::new(),
            prefix: "moonwatch".into(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            keepalive: 30,
            max_payload: 4 * 1024 * 1024,
            tls: false,
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            discovery_form: DiscoveryForm::Device,
        }
    }
}

/// The `[pool]` section: engines shared through the broker (MQTT v5 shared subscriptions).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Hand this node's engine jobs (each evaluation and request, with its picture) to the
    /// pool's workers; with a model too, a job no worker answers runs here.
    pub offload: bool,
    /// Take jobs from the pool (a worker); needs a model.
    pub serve: bool,
    /// The shared subscription group: `$share/{group}/{prefix}/pool/request/+`.
    pub group: String,
    /// Seconds a worker has for a job before it is sent again.
    pub job_timeout: u64,
    /// Times a job is sent to the pool before it fails (or runs here).
    pub attempts: u32,
    /// Most jobs a camera node keeps out at once; it keeps as many as the healthy
    /// workers have slots (their heartbeats say), up to this.
    pub max_in_flight: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            offload: false,
            serve: false,
            group: "moonwatch".into(),
            job_timeout: 30,
            attempts: 3,
            max_in_flight: 8,
        }
    }
}

impl Config {
    /// Whether this node runs a model of its own.
    pub fn has_model(&self) -> bool {
        !(self.pool.offload && self.model.text.as_os_str().is_empty())
    }
}

/// The `[daemon]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Runtime state (triggers added over MQTT) lives here.
    pub state_dir: PathBuf,
    /// Seconds between captions published on `{base}/caption`; 0 = none.
    pub caption_interval: u64,
    pub caption_length: crate::vision::CaptionLength,
    /// Seconds between `{base}/stats` messages.
    pub stats_interval: u64,
    /// Seconds a request may wait before it is answered with a timeout error.
    pub request_timeout: u64,
    /// Interactive requests that may wait; more are answered `busy`.
    pub max_pending: usize,
    /// Most triggers (configured and added over MQTT together); more are refused.
    pub max_triggers: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/moonwatch"),
            caption_interval: 0,
            caption_length: crate::vision::CaptionLength::Short,
            stats_interval: 60,
            request_timeout: 60,
            max_pending: 8,
            max_triggers: 64,
        }
    }
}

/// What kind of camera feeds the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A V4L2 device read directly (USB webcams, capture cards).
    #[default]
    V4l2,
    /// A V4L2 device read through GStreamer's v4l2src.
    GstV4l2,
    /// Raspberry Pi cameras through libcamerasrc.
    Libcamera,
    /// Jetson CSI cameras through nvarguscamerasrc.
    Nvargus,
    /// An RTSP (or any URI) stream.
    Rtsp,
    /// A video file, played in a loop.
    File,
    /// A still image, or a directory of images shown in turn.
    Image,
    /// GStreamer's test pattern.
    Test,
    /// Any GStreamer pipeline (`camera.pipeline`).
    Gstreamer,
    /// No camera: a worker that only serves the pool (`pool.serve`).
    None,
}

/// Pixel format asked of a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormatChoice {
    /// The best the camera offers: MJPEG, then YUYV, RGB, BGR, NV12.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
    Rgb,
    Bgr,
    Nv12,
}

/// The `[camera]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    pub source: SourceKind,
    /// V4L2 device: `/dev/video0` or a stable `/dev/v4l/by-id/...` name.
    pub device: PathBuf,
    /// GStreamer pipeline for `source = "gstreamer"`; an RGB appsink is appended when it
    /// has none.
    pub pipeline: String,
    /// Stream address for `source = "rtsp"`.
    pub url: String,
    /// File or directory for `source = "file"` and `source = "image"`.
    pub path: PathBuf,
    /// Size asked of the camera.
    pub width: u32,
    pub height: u32,
    /// Frames per second asked of the camera.
    pub fps: u32,
    /// V4L2 pixel format.
    pub pixel_format: PixelFormatChoice,
    /// Frames per second handed to the engine; the rest are never converted.
    pub capture_rate: f64,
    /// Camera index for `source = "nvargus"`.
    pub sensor_id: u32,
    /// videotestsrc pattern for `source = "test"` (smpte, ball, snow, ...).
    pub pattern: String,
    /// `[[camera]]` sections: the camera's name in topics (`{prefix}/{name}/...`) and in
    /// Home Assistant. A single `[camera]` is addressed by `mqtt.device_id` instead.
    pub name: String,
    /// Named regions of the frame (`door = [x_min, y_min, x_max, y_max]`, relative), for
    /// triggers and requests to look at instead of the whole picture.
    pub zones: BTreeMap<String, Zone>,
    /// This camera's triggers (`[[camera.trigger]]`).
    #[serde(rename = "trigger")]
    pub triggers: Vec<TriggerConfig>,
}

impl CameraConfig {
    /// Whether `other` captures the same way (name, zones and triggers aside): a change
    /// here restarts the camera.
    pub fn same_source(&self, other: &Self) -> bool {
        let strip = |c: &Self| Self {
            name: String::new(),
            zones: BTreeMap::new(),
            triggers: Vec::new(),
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

/// The `camera` key: one `[camera]` table, or `[[camera]]` sections.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cameras {
    One(CameraConfig),
    Many(Vec<CameraConfig>),
}

impl Default for Cameras {
    fn default() -> Self {
        Self::One(CameraConfig::default())
    }
}

// By hand rather than `untagged`, so that a mistake inside a camera section is reported
// with its key instead of "did not match any variant".
impl<'de> Deserialize<'de> for Cameras {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Cameras;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a [camera] table or [[camera]] sections")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Cameras, A::Error> {
                CameraConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Cameras::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Cameras, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Cameras::Many)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Cameras {
    pub fn as_slice(&self) -> &[CameraConfig] {
        match self {
            Self::One(c) => std::slice::from_ref(c),
            Self::Many(v) => v,
        }
    }
    fn as_mut_slice(&mut self) -> &mut [CameraConfig] {
        match self {
            Self::One(c) => std::slice::from_mut(c),
            Self::Many(v) => v,
        }
    }
}

/// One camera as the daemon serves it: its topic id, capture settings, zones and
/// configured triggers.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraSpec {
    /// `{prefix}/{id}/...` in topics: `mqtt.device_id` for a single `[camera]`, the name
    /// of a `[[camera]]` section.
    pub id: String,
    pub config: CameraConfig,
    /// Runtime triggers of this camera live in `{state_dir}/{store}`.
    pub store: String,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::V4l2,
            device: PathBuf::from("/dev/video0"),
            pipeline: String::new(),
            url: String::new(),
            path: PathBuf::new(),
            width: 640,
            height: 480,
            fps: 15,
            pixel_format: PixelFormatChoice::Auto,
            capture_rate: 1.0,
            sensor_id: 0,
            pattern: "smpte".into(),
            name: String::new(),
            zones: BTreeMap::new(),
            triggers: Vec::new(),
        }
    }
}

/// The `[model]` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The text model GGUF (architecture phi2). Relative paths are taken from the
    /// directory of the configuration file.
    pub text: PathBuf,
    /// The vision projector GGUF (architecture clip).
    pub mmproj: PathBuf,
    /// The region heads GGUF written by `moonwatch model convert` from the 2025-04-14
    /// release: `detect` and `point` then use Moondream's own region heads instead of
    /// parsing boxes from text. Needs `revision = "moondream2-2025-04-14"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<PathBuf>,
    /// CPU threads for llama.cpp; 0 means one per available core.
    pub threads: u32,
    /// Context size in tokens: holds the 729 image tokens, the question and the answer.
    pub context_size: u32,
    /// Logical batch size for prefill (llama.cpp n_batch).
    pub batch_size: u32,
    /// Layers offloaded to the GPU (CUDA builds); 0 runs everything on the CPU.
    pub gpu_layers: u32,
    /// Run the vision encoder on the GPU when llama.cpp was built with one.
    pub vision_on_gpu: bool,
    /// Map the text model file instead of reading it. Off by default: llama.cpp repacks
    /// quantized weights for the CPU into memory of its own, and with a mapping the file's
    /// pages for those weights stay resident too (about 0.45 GB twice for Moondream2 Q4_K_M).
    pub mmap: bool,
    /// Refuse to load, with the figures and what to change, when the files, KV cache and
    /// compute buffers will not fit in the memory the machine or the service's cgroup has
    /// free (skipped with GPU layers). Off to try anyway.
    pub memory_check: bool,
    /// Upper bound on generated tokens for a free question.
    pub max_tokens: u32,
    /// Requests waiting for the engine before new ones are refused as busy.
    pub queue_depth: u32,
    /// Type of the KV cache: `auto` (`f32` with region heads, whose reference keeps K and
    /// V in float32: twice F16's memory, 24 layers x 2048 wide x 2 x context_size
    /// positions x 4 bytes; `f16` otherwise), `f16` (llama.cpp's default), `f32`, or `q8_0`
    /// (half F16's memory).
    pub kv_cache_type: KvCacheKind,
    /// Flash attention in the text model and the vision encoder: `on`, `off`, or `auto`:
    /// off with region heads or an F32 KV cache (flash attention computes with K and V in
    /// F16, which moves the region heads' decisions away from the reference's), on with a
    /// Q8_0 KV cache (llama.cpp needs it there), else llama.cpp's choice.
    pub flash_attention: FlashAttention,
    /// How a picture becomes the 729 image tokens: `one` stretches it to one 378x378
    /// crop; `reference` does what Moondream 2025's own code does with a picture larger
    /// than a crop: up to `max_crops` overlapping 378x378 crops at (nearly) full
    /// resolution plus the whole picture, the crops' features stitched and pooled and fed
    /// to the projector beside the whole picture's (one encode per crop; needs a
    /// projector converted by `moonwatch model convert`, revision 2025-04-14).
    pub crops: CropMode,
    /// The most local crops `crops = "reference"` cuts a picture into (the reference's
    /// `max_crops`, 12), 1..16. A 1280x720 or 640x480 picture takes 8 (2x4), 1920x1080
    /// too; fewer here give coarser grids.
    pub max_crops: u32,
    /// Which Moondream2 revision the files hold; picks its prompts
    /// (`moondream2-2024` or `moondream2-2025-04-14`).
    pub revision: crate::vision::Revision,
    /// Appended to every yes/no question (trigger questions too), as Moondream's own
    /// yes/no evaluation does; empty to ask questions as they are.
    pub yes_no_suffix: String,
    /// A yes/no answer is `uncertain` when the probabilities of the yes and no tokens
    /// add up to less than this (the model wanted to say something else), 0..1.
    pub yes_no_min_mass: f32,
    /// Where `moonwatch model pull` fetches the model from.
    pub download: DownloadConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            text: PathBuf::from("/var/lib/moonwatch/models/moondream2-text-model-f16.gguf"),
            mmproj: PathBuf::from("/var/lib/moonwatch/models/moondream2-mmproj-f16.gguf"),
            region: None,
            threads: 0,
            context_size: 2048,
            batch_size: 512,
            gpu_layers: 0,
            vision_on_gpu: true,
            mmap: false,
            memory_check: true,
            max_tokens: 128,
            queue_depth: 16,
            kv_cache_type: KvCacheKind::Auto,
            flash_attention: FlashAttention::Auto,
            crops: CropMode::One,
            max_crops: crate::vision::crops::DEFAULT_MAX_CROPS,
            revision: crate::vision::Revision::default(),
            yes_no_suffix: crate::vision::prompt::prompts(crate::vision::Revision::Moondream2024)
                .yes_no_suffix
                .into(),
            yes_no_min_mass: 0.5,
            download: DownloadConfig::default(),
        }
    }
}

/// The element type of llama.cpp's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheKind {
    /// F32 with region heads, F16 otherwise ([`ModelConfig::kv_cache`]).
    Auto,
    F16,
    /// Full precision (twice F16's memory): for checking against a float32 reference.
    /// Attention is F32 only with flash attention off (what `auto` gives): llama.cpp's
    /// flash attention computes from F16 copies of K and V, so with `flash_attention =
    /// "on"` the answers are those of an F16 cache.
    F32,
    #[serde(rename = "q8_0")]
    Q8_0,
}

/// How a picture becomes image tokens (`model.crops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    /// The picture stretched to one 378x378 crop.
    #[default]
    One,
    /// Moondream 2025's overlapping crops, as its reference code makes them.
    Reference,
}

/// When llama.cpp uses flash attention (`model.flash_attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttention {
    #[default]
    Auto,
    On,
    Off,
}

impl ModelConfig {
    /// The KV cache's type for these settings (`auto` resolved: F32 with region heads,
    /// so that attention computes as Moondream's float32 reference does; F16 otherwise).
    pub fn kv_cache(&self) -> KvCacheKind {
        match self.kv_cache_type {
            KvCacheKind::Auto if self.region.is_some() => KvCacheKind::F32,
            KvCacheKind::Auto => KvCacheKind::F16,
            kind => kind,
        }
    }

    /// Whether flash attention is on (`Some`), or llama.cpp decides (`None`), for these
    /// settings; see [`ModelConfig::flash_attention`].
    pub fn flash_attention_on(&self) -> Option<bool> {
        match self.flash_attention {
            FlashAttention::On => Some(true),
            FlashAttention::Off => Some(false),
            FlashAttention::Auto if self.kv_cache() == KvCacheKind::Q8_0 => Some(true),
            FlashAttention::Auto if self.region.is_some() => Some(false),
            FlashAttention::Auto if self.kv_cache() == KvCacheKind::F32 => Some(false),
            FlashAttention::Auto => None,
        }
    }
}

/// The `[model.download]` section: a Hugging Face repository and the two files in it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Repository id on the hub.
    pub repo: String,
    /// A commit hash (preferred: reproducible) or a branch name.
    pub revision: String,
    /// File name of the text model inside the repository.
    pub text_file: String,
    /// File name of the vision projector inside the repository.
    pub mmproj_file: String,
    /// Expected SHA-256 of the text model; when empty the hub's LFS hash is used.
    pub text_sha256: String,
    /// Expected SHA-256 of the vision projector; when empty the hub's LFS hash is used.
    pub mmproj_sha256: String,
    /// The release's own weights (`model.safetensors` of `vikhyatk/moondream2` at
    /// `2025-04-14`) instead of a GGUF pair: `model pull` downloads this file and converts
    /// it into `model.text`, `model.mmproj` and `model.region`. Empty: pull the GGUF pair.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub weights_file: String,
    /// Expected SHA-256 of `weights_file`; when empty the hub's LFS hash is used.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub weights_sha256: String,
    /// Quantize the downloaded text model to this type (`q4_k_m`, `q4_0`, `q8_0`) and
    /// write the result to `model.text`; the download itself is removed afterwards.
    pub quantize: Option<crate::model::Quant>,
    /// Quantize the downloaded vision projector's matrices to Q8_0 and write the result
    /// to `model.mmproj` (about a third smaller; SigLIP's 4304-wide `ffn_down` stays F16).
    pub quantize_mmproj: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            repo: "moondream/moondream2-gguf".into(),
            revision: "66f21bff432b523f311e72d4e34cf1925ae75210".into(),
            text_file: "moondream2-text-model-f16.gguf".into(),
            mmproj_file: "moondream2-mmproj-f16.gguf".into(),
            text_sha256: String::new(),
            mmproj_sha256: String::new(),
            weights_file: String::new(),
            weights_sha256: String::new(),
            quantize: None,
            quantize_mmproj: false,
        }
    }
}

/// One thing wrong with a configuration, tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, such as `model.context_size`.
    pub key: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n{}", .problems.len(), list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The image prefix alone takes this many positions (Moondream2: 27x27 patches).
pub const IMAGE_TOKENS: u32 = 729;

impl Config {
    /// Reads, parses and checks a file; relative model paths are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parses TOML text; the error names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let readable = |e: toml::de::Error| e.to_string().trim_end().replace('\n', "\n  ");
        let table: toml::Table = toml::from_str(text).map_err(readable)?;
        let mut config: Self = toml::from_str(text).map_err(readable)?;
        config.declared = Declared::of(&table);
        Ok(config)
    }

    /// Why a reload to `new` must be refused although `new` is valid: it lost the camera,
    /// the model or every trigger that the running file declared, which is what an empty
    /// or truncated file looks like. A file that still declares them (`trigger = []` for
    /// "no triggers") applies.
    pub fn reload_losses(&self, new: &Config) -> Option<String> {
        let (old, now) = (&self.declared, &new.declared);
        let mut lost = Vec::new();
        if old.camera && !now.camera {
            lost.push("its camera section".to_owned());
        }
        if old.model && !now.model {
            lost.push("its [model] section".to_owned());
        }
        let configured: Vec<String> = self
            .cameras("-")
            .iter()
            .flat_map(|c| c.config.triggers.iter().map(|t| t.name.clone()))
            .collect();
        let kept = new
            .cameras("-")
            .iter()
            .any(|c| !c.config.triggers.is_empty());
        if !configured.is_empty() && !kept && !now.triggers {
            lost.push(format!("every trigger ({})", configured.join(", ")));
        }
        (!lost.is_empty()).then(|| {
            format!(
                "the file lost {} that the running configuration has: an empty or half-written \
                 file? Nothing was changed. (To remove every trigger on purpose, write \
                 `trigger = []`; to drop a camera or the model section, restart moonwatch.)",
                lost.join(" and ")
            )
        })
    }

    /// Model files the configuration names that do not exist (`model pull` fetches
    /// them); nothing for a node without a model.
    pub fn missing_model_files(&self) -> Vec<Problem> {
        if !self.has_model() {
            return Vec::new();
        }
        let m = &self.model;
        [
            ("model.text", Some(&m.text)),
            ("model.mmproj", Some(&m.mmproj)),
            ("model.region", m.region.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, p)| Some((key, p?)))
        .filter(|(_, p)| !p.as_os_str().is_empty() && !p.exists())
        .map(|(key, p)| Problem {
            key: key.into(),
            message: format!(
                "{} does not exist (run `moonwatch model pull` to fetch it)",
                p.display()
            ),
        })
        .collect()
    }

    /// Every semantic problem in the configuration (empty when it is usable).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.into(),
                message,
            })
        };
        let m = &self.model;
        let modelless = !self.has_model();
        if m.text.as_os_str().is_empty() && !modelless {
            bad(
                "model.text",
                "must name the text model GGUF file (or set pool.offload for a node without a model)"
                    .into(),
            );
        }
        if m.mmproj.as_os_str().is_empty() && !modelless {
            bad(
                "model.mmproj",
                "must name the vision projector GGUF file".into(),
            );
        }
        if m.text == m.mmproj && !m.text.as_os_str().is_empty() {
            bad(
                "model.mmproj",
                "is the same file as model.text; Moondream2 needs two files".into(),
            );
        }
        if m.region.is_some() && m.revision != crate::vision::Revision::Moondream20250414 {
            bad(
                "model.region",
                "region heads come with the 2025-04-14 release; set model.revision = \"moondream2-2025-04-14\""
                    .into(),
            );
        }
        if !m.download.weights_file.is_empty() && m.region.is_none() {
            bad(
                "model.region",
                "must name where the region heads go: model.download.weights_file is converted into model.text, model.mmproj and model.region"
                    .into(),
            );
        }
        if m.threads > 1024 {
            bad(
                "model.threads",
                format!(
                    "{} is not a sensible thread count (0 = one per core)",
                    m.threads
                ),
            );
        }
        let min_ctx = IMAGE_TOKENS + 64;
        if m.context_size < min_ctx || m.context_size > 32768 {
            bad(
                "model.context_size",
                format!(
                    "{} must be between {min_ctx} (729 image tokens plus a question) and 32768",
                    m.context_size
                ),
            );
        }
        if m.batch_size < 32 || m.batch_size > m.context_size.max(32) {
            bad(
                "model.batch_size",
                format!(
                    "{} must be at least 32 and at most model.context_size",
                    m.batch_size
                ),
            );
        }
        if m.max_tokens == 0 || m.max_tokens >= m.context_size.saturating_sub(IMAGE_TOKENS) {
            bad(
                "model.max_tokens",
                format!(
                    "{} must be at least 1 and leave room for the image in model.context_size ({})",
                    m.max_tokens, m.context_size
                ),
            );
        }
        if m.queue_depth == 0 || m.queue_depth > 4096 {
            bad(
                "model.queue_depth",
                format!("{} must be between 1 and 4096", m.queue_depth),
            );
        }
        if !(0.0..=1.0).contains(&m.yes_no_min_mass) {
            bad(
                "model.yes_no_min_mass",
                format!("{} must be between 0 and 1", m.yes_no_min_mass),
            );
        }
        if m.yes_no_suffix.chars().count() > 200 || m.yes_no_suffix.chars().any(char::is_control) {
            bad(
                "model.yes_no_suffix",
                "must be one line of at most 200 characters".into(),
            );
        }
        let many = matches!(self.camera, Cameras::Many(_));
        if let Cameras::Many(v) = &self.camera {
            if v.is_empty() {
                bad(
                    "camera",
                    "[[camera]] sections: at least one is needed".into(),
                );
            }
            if !self.triggers.is_empty() {
                bad(
                    "trigger",
                    "with [[camera]] sections, triggers belong to a camera: write \
                     [[camera.trigger]] after the camera's [[camera]] section"
                        .into(),
                );
            }
        }
        let mut camera_names = std::collections::HashSet::new();
        for (i, c) in self.camera.as_slice().iter().enumerate() {
            let at = if many {
                format!("camera[{i}]")
            } else {
                "camera".to_owned()
            };
            let key = |k: &str| format!("{at}.{k}");
            if many {
                if c.name.is_empty() || c.name.len() > 64 || !topic_id(&c.name) {
                    bad(
                        &key("name"),
                        format!(
                            "{:?}: each [[camera]] needs a name of 1-64 letters, digits, - and _",
                            c.name
                        ),
                    );
                } else if !camera_names.insert(c.name.as_str()) {
                    bad(&key("name"), format!("{:?} is used twice", c.name));
                }
            } else if !c.name.is_empty() {
                bad(
                    &key("name"),
                    "a single [camera] is addressed by mqtt.device_id; name cameras in \
                     [[camera]] sections"
                        .into(),
                );
            }
            self.camera_problems(c, &key, &mut bad);
            let mut triggers: Vec<&TriggerConfig> = c.triggers.iter().collect();
            let (tkey, first) = if many {
                (key("trigger"), 0)
            } else {
                // A single camera's triggers may be top-level or in the section.
                triggers.splice(0..0, self.triggers.iter());
                ("trigger".to_owned(), self.triggers.len())
            };
            if triggers.len() > self.daemon.max_triggers {
                bad(
                    &tkey,
                    format!(
                        "{} triggers configured; daemon.max_triggers allows {} per camera",
                        triggers.len(),
                        self.daemon.max_triggers
                    ),
                );
            }
            let mut names = std::collections::HashSet::new();
            for (j, t) in triggers.iter().enumerate() {
                let at = if j < first {
                    format!("trigger[{j}]")
                } else {
                    key(&format!("trigger[{}]", j - first))
                };
                for (k, message) in t.problems() {
                    bad(&format!("{at}.{k}"), message);
                }
                if let Some(z) = &t.zone {
                    if let Err(m) = z.resolve(&c.zones) {
                        bad(&format!("{at}.zone"), m);
                    }
                }
                if !names.insert(t.name.as_str()) {
                    bad(
                        &format!("{at}.name"),
                        format!("{:?} is used twice on this camera", t.name),
                    );
                }
            }
        }
        let q = &self.mqtt;
        if q.host.trim().is_empty() {
            bad("mqtt.host", "must name the broker".into());
        }
        if q.port == 0 {
            bad("mqtt.port", "must not be 0".into());
        }
        if !topic_id(&q.device_id) || q.device_id.len() > 64 {
            bad(
                "mqtt.device_id",
                format!("{:?} may use only letters, digits, - and _", q.device_id),
            );
        }
        if q.prefix.is_empty()
            || q.prefix.contains(['#', '+'])
            || q.prefix.starts_with('/')
            || q.prefix.ends_with('/')
        {
            bad(
                "mqtt.prefix",
                format!(
                    "{:?} must be a topic without wildcards or outer slashes",
                    q.prefix
                ),
            );
        }
        if q.keepalive < 5 || q.keepalive > 3600 {
            bad(
                "mqtt.keepalive",
                format!("{} must be between 5 and 3600 seconds", q.keepalive),
            );
        }
        if q.max_payload < 16 * 1024 || q.max_payload > 256 * 1024 * 1024 {
            bad(
                "mqtt.max_payload",
                format!("{} must be between 16 KiB and 256 MiB", q.max_payload),
            );
        }
        if !q.password.is_empty() && !q.password_file.as_os_str().is_empty() {
            bad(
                "mqtt.password_file",
                "set either mqtt.password or mqtt.password_file".into(),
            );
        }
        if q.client_cert.as_os_str().is_empty() != q.client_key.as_os_str().is_empty() {
            bad(
                "mqtt.client_key",
                "client_cert and client_key go together".into(),
            );
        }
        let pl = &self.pool;
        if (pl.serve || pl.offload) && self.mqtt.protocol != Protocol::V5 {
            bad(
                "mqtt.protocol",
                "the pool needs MQTT v5 (shared subscriptions, response topics)".into(),
            );
        }
        if pl.serve && modelless {
            bad("pool.serve", "a worker needs a model (model.text)".into());
        }
        if !pl.serve && matches!(&self.camera, Cameras::One(c) if c.source == SourceKind::None) {
            bad(
                "camera.source",
                "\"none\" is for workers: set pool.serve = true, or name a camera".into(),
            );
        }
        if pl.group.is_empty() || !topic_id(&pl.group) {
            bad(
                "pool.group",
                format!("{:?} may use only letters, digits, - and _", pl.group),
            );
        }
        if pl.job_timeout == 0 || pl.job_timeout > 3600 {
            bad(
                "pool.job_timeout",
                format!("{} must be between 1 and 3600 seconds", pl.job_timeout),
            );
        }
        if pl.attempts == 0 || pl.attempts > 100 {
            bad(
                "pool.attempts",
                format!("{} must be between 1 and 100", pl.attempts),
            );
        }
        if pl.max_in_flight == 0 || pl.max_in_flight > 256 {
            bad(
                "pool.max_in_flight",
                format!("{} must be between 1 and 256", pl.max_in_flight),
            );
        }
        let dm = &self.daemon;
        if dm.stats_interval == 0 {
            bad("daemon.stats_interval", "must be at least 1 second".into());
        }
        if dm.request_timeout == 0 {
            bad("daemon.request_timeout", "must be at least 1 second".into());
        }
        if dm.max_pending == 0 || dm.max_pending > 1024 {
            bad(
                "daemon.max_pending",
                format!("{} must be between 1 and 1024", dm.max_pending),
            );
        }
        if dm.max_triggers == 0 || dm.max_triggers > 1024 {
            bad(
                "daemon.max_triggers",
                format!("{} must be between 1 and 1024", dm.max_triggers),
            );
        }
        if !(1..=crate::vision::crops::MAX_CROPS).contains(&m.max_crops) {
            bad(
                "model.max_crops",
                format!(
                    "{} must be between 1 and {}",
                    m.max_crops,
                    crate::vision::crops::MAX_CROPS
                ),
            );
        }
        if m.crops == CropMode::Reference
            && m.revision != crate::vision::Revision::Moondream20250414
        {
            bad(
                "model.crops",
                "\"reference\" is Moondream2 2025-04-14's cropping: it needs revision = \"moondream2-2025-04-14\" and a projector converted by `moonwatch model convert` (the 2024 files see one crop)".into(),
            );
        }
        if m.flash_attention == FlashAttention::Off && m.kv_cache_type == KvCacheKind::Q8_0 {
            bad(
                "model.flash_attention",
                "\"off\" cannot go with model.kv_cache_type = \"q8_0\": llama.cpp needs flash attention for a quantized cache (use \"f16\" or \"f32\")".into(),
            );
        }
        let d = &m.download;
        if d.quantize.is_some() && m.text.file_name() == Some(std::ffi::OsStr::new(&d.text_file)) {
            bad(
                "model.download.quantize",
                format!(
                    "model.text must name the quantized file, not the download {:?} (for example moondream2-text-model-{}.gguf)",
                    d.text_file,
                    d.quantize.map_or("", |q| q.name())
                ),
            );
        }
        if d.quantize_mmproj && m.mmproj.file_name() == Some(std::ffi::OsStr::new(&d.mmproj_file)) {
            bad(
                "model.download.quantize_mmproj",
                format!(
                    "model.mmproj must name the quantized file, not the download {:?} (for example moondream2-mmproj-q8_0.gguf)",
                    d.mmproj_file
                ),
            );
        }
        if d.repo.split('/').count() != 2 || d.repo.contains(char::is_whitespace) {
            bad(
                "model.download.repo",
                format!("{:?} must look like owner/name", d.repo),
            );
        }
        if d.revision.trim().is_empty() {
            bad(
                "model.download.revision",
                "must name a commit or branch".into(),
            );
        }
        for (key, value) in [
            ("model.download.text_sha256", &d.text_sha256),
            ("model.download.mmproj_sha256", &d.mmproj_sha256),
            ("model.download.weights_sha256", &d.weights_sha256),
        ] {
            if !value.is_empty() && !is_sha256_hex(value) {
                bad(key, format!("{value:?} is not 64 hexadecimal digits"));
            }
        }
        out
    }

    /// Problems of one camera section's capture settings and zones; `key` makes the
    /// dotted key.
    fn camera_problems(
        &self,
        c: &CameraConfig,
        key: &dyn Fn(&str) -> String,
        bad: &mut dyn FnMut(&str, String),
    ) {
        if c.width == 0
            || c.height == 0
            || c.width > crate::frame::MAX_SIDE
            || c.height > crate::frame::MAX_SIDE
        {
            bad(
                &key("width"),
                format!("{}x{} must be between 1x1 and 8192x8192", c.width, c.height),
            );
        }
        if c.fps == 0 || c.fps > 240 {
            bad(&key("fps"), format!("{} must be between 1 and 240", c.fps));
        }
        if !(c.capture_rate > 0.0 && c.capture_rate <= 60.0) {
            bad(
                &key("capture_rate"),
                format!(
                    "{} must be above 0 and at most 60 frames per second",
                    c.capture_rate
                ),
            );
        }
        match c.source {
            SourceKind::Gstreamer if c.pipeline.trim().is_empty() => bad(
                &key("pipeline"),
                "source \"gstreamer\" needs a pipeline".into(),
            ),
            SourceKind::Rtsp if !c.url.contains("://") => bad(
                &key("url"),
                format!(
                    "{:?} is not a stream address such as rtsp://host/path",
                    c.url
                ),
            ),
            SourceKind::File | SourceKind::Image if c.path.as_os_str().is_empty() => bad(
                &key("path"),
                "source \"file\" and \"image\" need a path".into(),
            ),
            SourceKind::V4l2 | SourceKind::GstV4l2 if c.device.as_os_str().is_empty() => bad(
                &key("device"),
                "must name a V4L2 device such as /dev/video0".into(),
            ),
            _ => {}
        }
        for name in c.zones.keys() {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                bad(
                    &key(&format!("zones.{name}")),
                    format!("{name:?}: zone names are 1-64 of a-z, 0-9 and _"),
                );
            }
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let cameras = self.camera.as_mut_slice().iter_mut().map(|c| &mut c.path);
        for p in [&mut self.model.text, &mut self.model.mmproj]
            .into_iter()
            .chain(self.model.region.as_mut())
            .chain(cameras)
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// The cameras the daemon serves, each with its topic id and its configured triggers
    /// (a single `[camera]` takes the top-level `[[trigger]]`s too); `device_id` is the
    /// resolved `mqtt.device_id`.
    pub fn cameras(&self, device_id: &str) -> Vec<CameraSpec> {
        match &self.camera {
            Cameras::One(c) if c.source == SourceKind::None => Vec::new(),
            Cameras::One(c) => {
                let mut config = c.clone();
                config.triggers.splice(0..0, self.triggers.iter().cloned());
                vec![CameraSpec {
                    id: device_id.to_owned(),
                    config,
                    store: crate::daemon::store::DEFAULT_FILE.into(),
                }]
            }
            Cameras::Many(v) => v
                .iter()
                .map(|c| CameraSpec {
                    id: c.name.clone(),
                    config: c.clone(),
                    store: format!("triggers-{}.json", c.name),
                })
                .collect(),
        }
    }

    /// The first camera's capture settings (what `moonwatch ask --camera` starts from).
    pub fn first_camera(&self) -> CameraConfig {
        self.camera.as_slice().first().cloned().unwrap_or_default()
    }

    /// Thread count for llama.cpp, with 0 meaning every available core.
    pub fn threads(&self) -> u32 {
        match self.model.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }
}

/// Letters, digits, `-` and `_`: what a topic level and an entity id accept.
fn topic_id(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for a 64-digit hexadecimal string (a SHA-256 digest).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_that_validate() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::parse("[model]\ntexxt = \"a.gguf\"\n").unwrap_err();
        assert!(err.contains("texxt"), "{err}");
        let err = Config::parse("[modle]\n").unwrap_err();
        assert!(err.contains("modle"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let err = Config::parse("[model]\nthreads = \"four\"\n").unwrap_err();
        assert!(err.contains("threads"), "{err}");
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let c = Config::parse(
            "[model]\ntext = \"\"\ncontext_size = 100\nqueue_depth = 0\n[model.download]\nrepo = \"nope\"\ntext_sha256 = \"xyz\"\n",
        )
        .unwrap();
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "model.text",
            "model.context_size",
            "model.max_tokens",
            "model.queue_depth",
            "model.download.repo",
            "model.download.text_sha256",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn model_keys_for_answers_and_boards_parse_and_are_checked() {
        let c = Config::parse(
            "[model]\nrevision = \"moondream2-2025-04-14\"\nkv_cache_type = \"q8_0\"\n\
             yes_no_suffix = \"\"\ntext = \"/m/moondream2-text-model-q4_0.gguf\"\n\
             mmproj = \"/m/moondream2-mmproj-q8_0.gguf\"\n\
             [model.download]\nquantize = \"q4_0\"\nquantize_mmproj = true\n",
        )
        .unwrap();
        assert_eq!(c.model.revision, crate::vision::Revision::Moondream20250414);
        assert_eq!(c.model.kv_cache_type, KvCacheKind::Q8_0);
        assert_eq!(c.model.download.quantize, Some(crate::model::Quant::Q4_0));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        // The quantized results need names of their own; and the mass is a probability.
        let c = Config::parse(
            "[model]\nyes_no_min_mass = 1.5\n[model.download]\nquantize = \"q4_k_m\"\nquantize_mmproj = true\n",
        )
        .unwrap();
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "model.yes_no_min_mass",
            "model.download.quantize",
            "model.download.quantize_mmproj",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
        }
        assert!(Config::parse("[model]\nrevision = \"2099\"\n").is_err());
    }

    #[test]
    fn reference_crops_are_checked() {
        let problems = |toml: &str| {
            Config::parse(&format!("[model]\n{toml}"))
                .unwrap()
                .problems()
                .into_iter()
                .map(|p| p.key)
                .collect::<Vec<_>>()
        };
        let ok = "revision = \"moondream2-2025-04-14\"\ncrops = \"reference\"\nmax_crops = 4";
        assert!(!problems(ok).iter().any(|k| k.contains("crops")));
        // The 2024 files have no crops of their own; 0 or 17 crops are out of range.
        assert!(problems("crops = \"reference\"").contains(&"model.crops".to_string()));
        for n in [0, 17] {
            let p = problems(&format!("max_crops = {n}"));
            assert!(p.contains(&"model.max_crops".to_string()), "{n}: {p:?}");
        }
        assert!(Config::parse("[model]\ncrops = \"tiles\"\n").is_err());
    }

    #[test]
    fn flash_attention_follows_what_the_settings_need() {
        let m = |toml: &str| Config::parse(&format!("[model]\n{toml}")).map(|c| c.model);
        // Region heads and an F32 cache: off, as the reference computes; a Q8_0 cache
        // needs it on; otherwise llama.cpp decides.
        assert_eq!(
            m("region = \"r.gguf\"").unwrap().flash_attention_on(),
            Some(false)
        );
        assert_eq!(
            m("kv_cache_type = \"f32\"").unwrap().flash_attention_on(),
            Some(false)
        );
        assert_eq!(
            m("kv_cache_type = \"q8_0\"").unwrap().flash_attention_on(),
            Some(true)
        );
        assert_eq!(m("").unwrap().flash_attention_on(), None);
        // The cache: F32 with region heads (as the reference keeps K and V), else F16,
        // unless set.
        assert_eq!(
            m("region = \"r.gguf\"").unwrap().kv_cache(),
            KvCacheKind::F32
        );
        assert_eq!(m("").unwrap().kv_cache(), KvCacheKind::F16);
        let set = m("region = \"r.gguf\"\nkv_cache_type = \"f16\"").unwrap();
        assert_eq!(set.kv_cache(), KvCacheKind::F16);
        let on = m("region = \"r.gguf\"\nflash_attention = \"on\"").unwrap();
        assert_eq!(on.flash_attention_on(), Some(true));
        let c = Config::parse("[model]\nkv_cache_type = \"q8_0\"\nflash_attention = \"off\"\n")
            .unwrap();
        let p = c.problems();
        assert!(p.iter().any(|p| p.key == "model.flash_attention"), "{p:?}");
    }

    #[test]
    fn camera_sections_parse_and_mistakes_are_named_by_key() {
        let c = Config::parse(
            r#"
[[camera]]
name = "driveway"
source = "rtsp"
url = "rtsp://cam1/stream"
[camera.zones]
gate = [0.5, 0.2, 1.0, 0.9]
[[camera.trigger]]
name = "car"
object = "car"
zone = "gate"

[[camera]]
name = "porch"
source = "rtsp"
url = "rtsp://cam2/stream"
[[camera.trigger]]
name = "car"
question = "Is there a package?"
zone = [0.0, 0.5, 0.5, 1.0]
"#,
        )
        .unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let specs = c.cameras("host");
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["driveway", "porch"]);
        assert_eq!(specs[1].store, "triggers-porch.json");
        assert_eq!(
            specs[0].config.triggers[0].name, "car",
            "names are per camera"
        );

        // A zone with x_max < x_min is refused while parsing, with its reason.
        let e =
            Config::parse("[[camera]]\nname = \"a\"\n[camera.zones]\ng = [0.5, 0.2, 0.4, 0.9]\n")
                .unwrap_err();
        assert!(e.contains("x_min"), "{e}");
        let c = Config::parse(
            r#"
[[trigger]]
name = "top"
question = "Top?"
[[camera]]
name = "a"
source = "rtsp"
url = "nope"
[camera.zones]
Gate = [0.5, 0.2, 0.9, 0.9]
[[camera.trigger]]
name = "car"
object = "car"
zone = "drive"
[[camera]]
name = "a"
"#,
        )
        .unwrap();
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "trigger",
            "camera[0].url",
            "camera[0].zones.Gate",
            "camera[0].trigger[0].zone",
            "camera[1].name",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        // A single [camera] keeps mqtt.device_id and takes top-level triggers.
        let one = Config::parse(
            "[camera]\nsource = \"test\"\n[[trigger]]\nname = \"a\"\nquestion = \"A?\"\n",
        )
        .unwrap();
        let specs = one.cameras("host");
        assert_eq!(
            (specs[0].id.as_str(), specs[0].config.triggers.len()),
            ("host", 1)
        );
        assert_eq!(specs[0].store, "triggers.json");
    }

    #[test]
    fn pool_roles_are_checked() {
        let node =
            Config::parse("[model]\ntext = \"\"\nmmproj = \"\"\n[pool]\noffload = true\n").unwrap();
        assert!(node.problems().is_empty(), "{:?}", node.problems());
        assert!(!node.has_model());
        let bad = Config::parse(
            "[model]\ntext = \"\"\nmmproj = \"\"\n[camera]\nsource = \"none\"\n[mqtt]\nprotocol = \"v3.1.1\"\n[pool]\nserve = true\noffload = true\ngroup = \"a b\"\njob_timeout = 0\n",
        )
        .unwrap();
        let keys: Vec<String> = bad.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "pool.serve",
            "mqtt.protocol",
            "pool.group",
            "pool.job_timeout",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        let idle = Config::parse("[camera]\nsource = \"none\"\n").unwrap();
        let keys: Vec<String> = idle.problems().into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"camera.source".to_owned()), "{keys:?}");
        let worker = Config::parse("[camera]\nsource = \"none\"\n[pool]\nserve = true\n").unwrap();
        assert!(worker.problems().is_empty(), "{:?}", worker.problems());
        assert!(worker.cameras("w").is_empty());
    }

    #[test]
    fn relative_model_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[model]\ntext = \"models/t.gguf\"\nmmproj = \"/abs/m.gguf\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.model.text, dir.path().join("models/t.gguf"));
        assert_eq!(c.model.mmproj, PathBuf::from("/abs/m.gguf"));
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every file in configs/ must parse and validate.
    #[test]
    fn every_shipped_config_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no configs found in {}", dir.display());
    }

    /// The default config spells out the defaults, so editing it starts from the truth.
    #[test]
    fn default_config_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/moonwatch.toml");
        let mut c = Config::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        // It declares the camera and the model (a reload that loses them is refused).
        assert!(c.declared.camera && c.declared.model);
        c.declared = Declared::default();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_reload_that_lost_sections_or_every_trigger_is_refused() {
        let full = "[model]\ntext = \"/m/t.gguf\"\nmmproj = \"/m/p.gguf\"\n\
                    [camera]\nsource = \"test\"\n\
                    [[trigger]]\nname = \"door\"\nquestion = \"Door open?\"\n";
        let running = Config::parse(full).unwrap();
        // (new file, refused because of)
        let cases = [
            ("", Some("camera section")),
            ("# nothing left but a comment\n", Some("[model]")),
            // Cut short after the camera: model kept, triggers gone.
            (
                "[model]\ntext = \"/m/t.gguf\"\nmmproj = \"/m/p.gguf\"\n[camera]\nsource = \"test\"\n",
                Some("every trigger (door)"),
            ),
            // Every trigger removed on purpose.
            (
                "trigger = []\n[model]\ntext = \"/m/t.gguf\"\nmmproj = \"/m/p.gguf\"\n[camera]\nsource = \"test\"\n",
                None,
            ),
            (full, None),
        ];
        for (text, want) in cases {
            let new = Config::parse(text).unwrap();
            let got = running.reload_losses(&new);
            match want {
                Some(needle) => assert!(
                    got.as_deref().is_some_and(|m| m.contains(needle)),
                    "{text:?}: {got:?}"
                ),
                None => assert_eq!(got, None, "{text:?}"),
            }
        }
        // A running configuration made of defaults (no file) refuses nothing.
        assert_eq!(
            Config::default().reload_losses(&Config::parse("").unwrap()),
            None
        );
    }
}

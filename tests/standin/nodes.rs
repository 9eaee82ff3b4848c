//! The node classes the stand-in knows: their `object_info` schema and what executing each
//! one produces. Everything is deterministic and cheap; "models" are just names.

use std::path::Path;
use std::sync::Arc;

use image::{GrayImage, Rgb, RgbImage};
use serde_json::{Value, json};

/// A value flowing along a link.
#[derive(Debug, Clone)]
pub enum Data {
    /// MODEL, CLIP or VAE: the checkpoint name they came from.
    Named(String),
    /// CONDITIONING: the prompt text.
    Cond(String),
    /// LATENT: pixel size, batch and a fingerprint of how it was made.
    Latent(Latent),
    /// IMAGE: a batch of pictures.
    Image(Arc<Vec<RgbImage>>),
    /// MASK: a batch of masks.
    Mask(Arc<Vec<GrayImage>>),
}

/// The stand-in's latent: no tensors, only what `VAEDecode` needs to draw something.
#[derive(Debug, Clone)]
pub struct Latent {
    pub width: u32,
    pub height: u32,
    pub batch: u32,
    pub fingerprint: u64,
}

/// One input of a node class: its name and its ComfyUI config (`["INT", {...}]`, `[[..]]`, `["MODEL"]`).
#[derive(Debug, Clone)]
pub struct InputDef {
    pub name: &'static str,
    pub config: Value,
}

/// A node class.
#[derive(Debug, Clone)]
pub struct NodeDef {
    pub class: &'static str,
    pub display_name: &'static str,
    pub category: &'static str,
    pub inputs: Vec<InputDef>,
    pub outputs: Vec<(&'static str, &'static str)>,
    pub output_node: bool,
}

const MAX_RESOLUTION: i64 = 16384;
pub const CHECKPOINTS: &[&str] = &["standin.safetensors", "sd_xl_base_1.0.safetensors"];
pub const SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];
pub const SCHEDULERS: &[&str] = &[
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
];

fn input(name: &'static str, config: Value) -> InputDef {
    InputDef { name, config }
}

fn int(default: i64, min: i64, max: i64) -> Value {
    json!(["INT", {"default": default, "min": min, "max": max, "step": 1}])
}

/// Every class, with `LoadImage`'s list filled from `input_files`.
pub fn all(input_files: &[String]) -> Vec<NodeDef> {
    let image_out = vec![("IMAGE", "IMAGE")];
    vec![
        NodeDef {
            class: "CheckpointLoaderSimple",
            display_name: "Load Checkpoint",
            category: "loaders",
            inputs: vec![input("ckpt_name", json!([CHECKPOINTS]))],
            outputs: vec![("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
            output_node: false,
        },
        NodeDef {
            class: "CLIPTextEncode",
            display_name: "CLIP Text Encode (Prompt)",
            category: "conditioning",
            inputs: vec![
                input(
                    "text",
                    json!(["STRING", {"multiline": true, "dynamicPrompts": true}]),
                ),
                input("clip", json!(["CLIP"])),
            ],
            outputs: vec![("CONDITIONING", "CONDITIONING")],
            output_node: false,
        },
        NodeDef {
            class: "EmptyLatentImage",
            display_name: "Empty Latent Image",
            category: "latent",
            inputs: vec![
                input(
                    "width",
                    json!(["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}]),
                ),
                input(
                    "height",
                    json!(["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}]),
                ),
                input("batch_size", int(1, 1, 4096)),
            ],
            outputs: vec![("LATENT", "LATENT")],
            output_node: false,
        },
        NodeDef {
            class: "KSampler",
            display_name: "KSampler",
            category: "sampling",
            inputs: vec![
                input("model", json!(["MODEL"])),
                input(
                    "seed",
                    json!(["INT", {"default": 0, "min": 0, "max": u64::MAX, "control_after_generate": true}]),
                ),
                input("steps", int(20, 1, 10000)),
                input(
                    "cfg",
                    json!(["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}]),
                ),
                input("sampler_name", json!([SAMPLERS])),
                input("scheduler", json!([SCHEDULERS])),
                input("positive", json!(["CONDITIONING"])),
                input("negative", json!(["CONDITIONING"])),
                input("latent_image", json!(["LATENT"])),
                input(
                    "denoise",
                    json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]),
                ),
            ],
            outputs: vec![("LATENT", "LATENT")],
            output_node: false,
        },
        NodeDef {
            class: "VAEDecode",
            display_name: "VAE Decode",
            category: "latent",
            inputs: vec![
                input("samples", json!(["LATENT"])),
                input("vae", json!(["VAE"])),
            ],
            outputs: image_out.clone(),
            output_node: false,
        },
        NodeDef {
            class: "VAEEncode",
            display_name: "VAE Encode",
            category: "latent",
            inputs: vec![
                input("pixels", json!(["IMAGE"])),
                input("vae", json!(["VAE"])),
            ],
            outputs: vec![("LATENT", "LATENT")],
            output_node: false,
        },
        NodeDef {
            class: "LoadImage",
            display_name: "Load Image",
            category: "image",
            inputs: vec![input("image", json!([input_files, {"image_upload": true}]))],
            outputs: vec![("IMAGE", "IMAGE"), ("MASK", "MASK")],
            output_node: false,
        },
        NodeDef {
            class: "ImageInvert",
            display_name: "Invert Image",
            category: "image",
            inputs: vec![input("image", json!(["IMAGE"]))],
            outputs: image_out.clone(),
            output_node: false,
        },
        NodeDef {
            class: "EmptyImage",
            display_name: "EmptyImage",
            category: "image",
            inputs: vec![
                input("width", int(512, 1, MAX_RESOLUTION)),
                input("height", int(512, 1, MAX_RESOLUTION)),
                input("batch_size", int(1, 1, 4096)),
                input(
                    "color",
                    json!(["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}]),
                ),
            ],
            outputs: image_out,
            output_node: false,
        },
        NodeDef {
            class: "SaveImage",
            display_name: "Save Image",
            category: "image",
            inputs: vec![
                input("images", json!(["IMAGE"])),
                input("filename_prefix", json!(["STRING", {"default": "ComfyUI"}])),
            ],
            outputs: vec![],
            output_node: true,
        },
        NodeDef {
            class: "PreviewImage",
            display_name: "Preview Image",
            category: "image",
            inputs: vec![input("images", json!(["IMAGE"]))],
            outputs: vec![],
            output_node: true,
        },
    ]
}

/// One class by name (`LoadImage`'s file list left empty: validation checks the file itself).
pub fn find(class: &str) -> Option<NodeDef> {
    all(&[]).into_iter().find(|d| d.class == class)
}

impl NodeDef {
    /// The `GET /object_info` entry.
    pub fn object_info(&self) -> Value {
        let mut required = serde_json::Map::new();
        for i in &self.inputs {
            required.insert(i.name.to_owned(), i.config.clone());
        }
        let mut input = json!({ "required": required });
        if self.output_node {
            input["hidden"] = json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"});
        }
        json!({
            "input": input,
            "input_order": {"required": self.inputs.iter().map(|i| i.name).collect::<Vec<_>>()},
            "output": self.outputs.iter().map(|o| o.0).collect::<Vec<_>>(),
            "output_is_list": self.outputs.iter().map(|_| false).collect::<Vec<_>>(),
            "output_name": self.outputs.iter().map(|o| o.1).collect::<Vec<_>>(),
            "name": self.class,
            "display_name": self.display_name,
            "description": "",
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        })
    }
}

/// A Python-like exception raised while executing a node.
#[derive(Debug, Clone)]
pub struct NodeFailure {
    pub message: String,
    pub exception_type: String,
}

impl NodeFailure {
    fn new(exception_type: &str, message: impl Into<String>) -> Self {
        NodeFailure {
            message: message.into(),
            exception_type: exception_type.to_owned(),
        }
    }
}

/// A linked input's value or a literal widget value.
#[derive(Debug, Clone)]
pub enum Arg {
    Link(Data),
    Literal(Value),
}

/// The arguments of one node execution, by input name.
#[derive(Debug, Default)]
pub struct Args(pub Vec<(String, Arg)>);

impl Args {
    fn get(&self, name: &str) -> Result<&Arg, NodeFailure> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| NodeFailure::new("KeyError", format!("'{name}'")))
    }
    fn data(&self, name: &str) -> Result<&Data, NodeFailure> {
        match self.get(name)? {
            Arg::Link(d) => Ok(d),
            Arg::Literal(_) => Err(NodeFailure::new(
                "TypeError",
                format!("{name}: expected a linked value"),
            )),
        }
    }
    fn literal(&self, name: &str) -> Result<&Value, NodeFailure> {
        match self.get(name)? {
            Arg::Literal(v) => Ok(v),
            Arg::Link(_) => Err(NodeFailure::new(
                "TypeError",
                format!("{name}: expected a widget value"),
            )),
        }
    }
    fn int(&self, name: &str) -> Result<i128, NodeFailure> {
        to_int(self.literal(name)?)
            .ok_or_else(|| NodeFailure::new("ValueError", format!("{name}: not an int")))
    }
    fn text(&self, name: &str) -> Result<String, NodeFailure> {
        Ok(py_str(self.literal(name)?))
    }
    fn images(&self, name: &str) -> Result<Arc<Vec<RgbImage>>, NodeFailure> {
        match self.data(name)? {
            Data::Image(i) => Ok(i.clone()),
            _ => Err(NodeFailure::new(
                "TypeError",
                format!("{name}: not an IMAGE"),
            )),
        }
    }
    fn latent(&self, name: &str) -> Result<Latent, NodeFailure> {
        match self.data(name)? {
            Data::Latent(l) => Ok(l.clone()),
            _ => Err(NodeFailure::new(
                "TypeError",
                format!("{name}: not a LATENT"),
            )),
        }
    }
    fn named(&self, name: &str) -> Result<String, NodeFailure> {
        match self.data(name)? {
            Data::Named(s) | Data::Cond(s) => Ok(s.clone()),
            _ => Err(NodeFailure::new("TypeError", format!("{name}: wrong type"))),
        }
    }

    /// `current_inputs` of an `execution_error`: each input as a list of printable values.
    pub fn formatted(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, arg) in &self.0 {
            let v = match arg {
                Arg::Literal(v) => v.clone(),
                Arg::Link(Data::Named(s) | Data::Cond(s)) => Value::String(s.clone()),
                Arg::Link(Data::Latent(l)) => json!(format!(
                    "{{'samples': torch.Size([{}, 4, {}, {}])}}",
                    l.batch,
                    l.height / 8,
                    l.width / 8
                )),
                Arg::Link(Data::Image(i)) => json!(format!(
                    "torch.Size([{}, {}, {}, 3])",
                    i.len(),
                    i.first().map_or(0, |x| x.height()),
                    i.first().map_or(0, |x| x.width())
                )),
                Arg::Link(Data::Mask(m)) => json!(format!("torch.Size([{}, ...])", m.len())),
            };
            out.insert(name.clone(), json!([v]));
        }
        Value::Object(out)
    }
}

/// Python's `int(x)` on a JSON value, for the cases the stand-in accepts.
pub fn to_int(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.trunc() as i128)
            }),
        Value::Bool(b) => Some(i128::from(*b)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Python's `float(x)`.
pub fn to_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Python's `str(x)` for the values that appear in prompts and messages.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) if n.is_f64() => py_float(n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

/// Python's `repr(float)` for ordinary values (`0.0`, `100.0`, `0.5`).
pub fn py_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// A JSON number from an integer that may exceed `i64` (seeds up to `u64::MAX`).
pub fn int_value(i: i128) -> Value {
    if let Ok(v) = i64::try_from(i) {
        json!(v)
    } else if let Ok(v) = u64::try_from(i) {
        json!(v)
    } else {
        json!(i as f64)
    }
}

fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    // FNV-1a: deterministic across runs, unlike std's RandomState.
    if h == 0 {
        h = 0xcbf2_9ce4_8422_2325;
    }
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A cheap deterministic picture: a gradient tinted by `fingerprint`.
pub fn picture(width: u32, height: u32, fingerprint: u64) -> RgbImage {
    let [r0, g0, b0, ..] = fingerprint.to_le_bytes();
    let (w, h) = (width.max(1), height.max(1));
    RgbImage::from_fn(width, height, |x, y| {
        let gx = (x * 255 / w) as u8;
        let gy = (y * 255 / h) as u8;
        Rgb([r0.wrapping_add(gx), g0.wrapping_add(gy), b0])
    })
}

/// The 64×64 JPEG sent as a latent preview at `step`.
pub fn preview_jpeg(step: u64, steps: u64) -> Vec<u8> {
    let level = (step * 255 / steps.max(1)) as u8;
    let img = RgbImage::from_fn(64, 64, |x, y| Rgb([level, (x * 4) as u8, (y * 4) as u8]));
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75);
    // Encoding a 64×64 RGB buffer into memory cannot fail.
    let _ = img.write_with_encoder(enc);
    out
}

/// Results of a node: its outputs, in order.
pub type Outputs = Vec<Data>;

/// Executes a node that has no steps and no files (everything but `KSampler`, `SaveImage`,
/// `PreviewImage`).
pub fn compute(class: &str, args: &Args, input_dir: &Path) -> Result<Outputs, NodeFailure> {
    match class {
        "CheckpointLoaderSimple" => {
            let name = args.text("ckpt_name")?;
            Ok(vec![
                Data::Named(name.clone()),
                Data::Named(name.clone()),
                Data::Named(name),
            ])
        }
        "CLIPTextEncode" => Ok(vec![Data::Cond(args.text("text")?)]),
        "EmptyLatentImage" => {
            let width = args.int("width")? as u32;
            let height = args.int("height")? as u32;
            Ok(vec![Data::Latent(Latent {
                width,
                height,
                batch: args.int("batch_size")? as u32,
                fingerprint: mix(0, format!("empty {width}x{height}").as_bytes()),
            })])
        }
        "VAEDecode" => {
            let l = args.latent("samples")?;
            let imgs = (0..l.batch)
                .map(|i| picture(l.width, l.height, l.fingerprint.wrapping_add(u64::from(i))))
                .collect();
            Ok(vec![Data::Image(Arc::new(imgs))])
        }
        "VAEEncode" => {
            let imgs = args.images("pixels")?;
            let first = imgs
                .first()
                .ok_or_else(|| NodeFailure::new("IndexError", "empty batch"))?;
            let mut fp = 0;
            for p in first.pixels().step_by(97) {
                fp = mix(fp, &p.0);
            }
            Ok(vec![Data::Latent(Latent {
                width: first.width(),
                height: first.height(),
                batch: imgs.len() as u32,
                fingerprint: fp,
            })])
        }
        "LoadImage" => {
            let name = args.text("image")?;
            let path = crate::files::annotated_input(input_dir, &name).ok_or_else(|| {
                NodeFailure::new(
                    "FileNotFoundError",
                    format!("[Errno 2] No such file or directory: '{name}'"),
                )
            })?;
            let img = image::open(&path).map_err(|e| {
                NodeFailure::new(
                    "PIL.UnidentifiedImageError",
                    format!("cannot identify image file '{}': {e}", path.display()),
                )
            })?;
            let mask = match img.as_rgba8() {
                Some(rgba) => GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                    image::Luma([255 - rgba.get_pixel(x, y).0[3]])
                }),
                None => GrayImage::new(64, 64),
            };
            Ok(vec![
                Data::Image(Arc::new(vec![img.to_rgb8()])),
                Data::Mask(Arc::new(vec![mask])),
            ])
        }
        "ImageInvert" => {
            let imgs = args.images("image")?;
            let out = imgs
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    image::imageops::invert(&mut i);
                    i
                })
                .collect();
            Ok(vec![Data::Image(Arc::new(out))])
        }
        "EmptyImage" => {
            let w = args.int("width")? as u32;
            let h = args.int("height")? as u32;
            let c = args.int("color")? as u32;
            let px = Rgb([(c >> 16) as u8, (c >> 8) as u8, c as u8]);
            let one = RgbImage::from_pixel(w, h, px);
            let n = args.int("batch_size")? as usize;
            Ok(vec![Data::Image(Arc::new(vec![one; n]))])
        }
        other => Err(NodeFailure::new(
            "RuntimeError",
            format!("{other} is not a plain node"),
        )),
    }
}

/// What `KSampler` produces once its steps are done.
pub fn sample(args: &Args) -> Result<Outputs, NodeFailure> {
    let l = args.latent("latent_image")?;
    let mut fp = mix(l.fingerprint, args.named("model")?.as_bytes());
    fp = mix(fp, args.named("positive")?.as_bytes());
    fp = mix(fp, b"\0");
    fp = mix(fp, args.named("negative")?.as_bytes());
    fp = mix(fp, &args.int("seed")?.to_le_bytes());
    for k in ["steps", "cfg", "sampler_name", "scheduler", "denoise"] {
        fp = mix(fp, py_str(args.literal(k)?).as_bytes());
    }
    Ok(vec![Data::Latent(Latent {
        fingerprint: fp,
        ..l
    })])
}

/// `KSampler`'s step count.
pub fn steps(args: &Args) -> Result<u64, NodeFailure> {
    Ok(args.int("steps")?.max(1) as u64)
}

/// The images an output node stores, and `SaveImage`'s prefix.
pub fn output_images(args: &Args) -> Result<Arc<Vec<RgbImage>>, NodeFailure> {
    args.images("images")
}

/// `SaveImage`'s `filename_prefix`.
pub fn filename_prefix(args: &Args) -> Result<String, NodeFailure> {
    args.text("filename_prefix")
}

impl NodeFailure {
    /// A failure raised by the stand-in itself (file errors and the like).
    pub fn runtime(exception_type: &str, message: impl Into<String>) -> Self {
        NodeFailure::new(exception_type, message)
    }
}

//! The built-in `demo` backend: N steps of M milliseconds with progress, a preview and a real
//! PNG output (derived from the one input when given: an image's picture, or any other file's
//! bytes and name). Needs no external service.

use std::io::Cursor;
use std::time::Duration;

use async_trait::async_trait;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, imageops::FilterType};
use outlast_protocol::{Failure, FailureCode, JobSpec};
use serde::Deserialize;
use sha2::Digest as _;

use super::{Backend, InputFile, JobContext, RestartPolicy};
use crate::error::AppError;

/// The name of the demo's one output.
const RESULT: &str = "result.png";

/// Largest input image the demo decodes, in pixels (decompression-bomb guard).
const MAX_INPUT_PIXELS: u64 = 50_000_000;

/// The demo workflow: `{"steps": N, "step_ms": M}` plus test knobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Workflow {
    #[serde(default = "default_steps")]
    steps: u32,
    #[serde(default = "default_step_ms")]
    step_ms: u64,
    /// Fail (as a backend error) after this step.
    #[serde(default)]
    fail_at_step: Option<u32>,
}

fn default_steps() -> u32 {
    10
}

fn default_step_ms() -> u64 {
    500
}

fn parse(spec: &JobSpec) -> Result<Workflow, AppError> {
    let wf = if spec.workflow.is_null() {
        serde_json::json!({})
    } else {
        spec.workflow.clone()
    };
    let wf: Workflow =
        serde_json::from_value(wf).map_err(|e| AppError::invalid(format!("demo workflow: {e}")))?;
    if !(1..=100_000).contains(&wf.steps) {
        return Err(AppError::invalid(
            "demo workflow: steps must be between 1 and 100000",
        ));
    }
    if wf.step_ms > 600_000 {
        return Err(AppError::invalid(
            "demo workflow: step_ms must be at most 600000",
        ));
    }
    Ok(wf)
}

/// The demo backend.
#[derive(Debug)]
pub struct Demo {
    concurrency: usize,
}

impl Demo {
    /// A demo backend running `concurrency` jobs at once.
    pub fn new(concurrency: usize) -> Self {
        Self { concurrency }
    }
}

#[async_trait]
impl Backend for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Demo jobs have no side effects, so they simply run again.
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::Rerun
    }

    /// Its picture stands for its workflow and input (only a cosmetic tint varies per job), so
    /// the result cache may answer repeats.
    fn deterministic(&self) -> bool {
        true
    }

    fn validate(&self, spec: &JobSpec) -> Result<(), AppError> {
        parse(spec)?;
        if spec.inputs.len() > 1 {
            return Err(AppError::invalid(
                "demo workflow: at most one input (any name, any file)",
            ));
        }
        Ok(())
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), Failure> {
        let wf = parse(&ctx.spec).map_err(|e| failure(FailureCode::InvalidWorkflow, e.message))?;
        // Any one input: an image gives a picture derived from it, any other file (audio, text,
        // ...) a pattern derived from its bytes and name.
        let source = match ctx.inputs.iter().next() {
            Some((name, input)) => Some(load_input(name, input).await?),
            None => None,
        };
        // Derived from the workflow, not the job: the same submission renders the same picture,
        // which is what makes the demo backend cacheable.
        let seed = {
            let workflow = serde_json::to_vec(&ctx.spec.workflow).unwrap_or_default();
            sha2::Sha256::digest(workflow)[0]
        };
        for step in 1..=wf.steps {
            if wf.step_ms == 0 {
                // As fast as the job's event queue takes them (benchmarks, tests).
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(wf.step_ms)).await;
            }
            if wf.fail_at_step == Some(step) {
                return Err(Failure {
                    code: FailureCode::BackendError,
                    message: format!("demo failure requested at step {step}"),
                    detail: Some(serde_json::json!({ "step": step })),
                });
            }
            ctx.progress(
                u64::from(step),
                u64::from(wf.steps),
                Some(format!("step {step}/{}", wf.steps)),
            )
            .await?;
            if step == wf.steps.div_ceil(2) {
                let preview = render(source.as_ref(), seed, 64, step as f32 / wf.steps as f32);
                ctx.preview("image/jpeg", encode(preview, ImageFormat::Jpeg)?)
                    .await?;
            }
        }
        // A re-run after a crash between this output and `completed` finds it stored already.
        if ctx.existing_outputs.iter().any(|o| o == RESULT) {
            return Ok(());
        }
        let result = render(source.as_ref(), seed, 256, 1.0);
        ctx.output_bytes(RESULT, "image/png", &encode(result, ImageFormat::Png)?)
            .await
    }
}

fn failure(code: FailureCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        detail: None,
    }
}

/// What the demo renders from: the input's picture, or a seed taken from a non-image file.
enum Source {
    Picture(DynamicImage),
    Bytes([u8; 32]),
}

async fn load_input(name: &str, input: &InputFile) -> Result<Source, Failure> {
    use image::ImageDecoder as _;
    let path = input.path.clone();
    let picture = tokio::task::spawn_blocking(move || {
        let Ok(decoder) = image::ImageReader::open(&path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| failure(FailureCode::BackendError, format!("cannot read input: {e}")))?
            .into_decoder()
        else {
            return Ok(None); // not an image: rendered from its bytes
        };
        // The header's dimensions are checked before any pixel memory is allocated.
        let (w, h) = decoder.dimensions();
        if u64::from(w) * u64::from(h) > MAX_INPUT_PIXELS {
            return Err(failure(
                FailureCode::BackendError,
                format!("input image of {w}x{h} pixels is too large"),
            ));
        }
        Ok(DynamicImage::from_decoder(decoder).ok())
    })
    .await
    .map_err(|e| failure(FailureCode::Internal, e.to_string()))??;
    if let Some(picture) = picture {
        return Ok(Source::Picture(picture));
    }
    // The content digest is known from the upload; the file name is part of the seed too.
    let digest = match &input.sha256 {
        Some(hex) => hex.clone(),
        None => {
            let path = input.path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .map_err(|e| failure(FailureCode::Internal, e.to_string()))?
                .map(|bytes| hex::encode(sha2::Sha256::digest(&bytes)))
                .map_err(|e| {
                    failure(FailureCode::BackendError, format!("cannot read input: {e}"))
                })?
        }
    };
    let filename = input.filename.as_deref().unwrap_or(name);
    let mut h = sha2::Sha256::new();
    h.update(digest.as_bytes());
    h.update(filename.as_bytes());
    Ok(Source::Bytes(h.finalize().into()))
}

/// The demo's "generated" image: a gradient pattern, or the input turned into a tinted negative.
/// `done` (0..=1) fades the preview in, so previews visibly differ from the result.
fn render(source: Option<&Source>, seed: u8, edge: u32, done: f32) -> DynamicImage {
    let (seed, bands) = match source {
        Some(Source::Bytes(d)) => (seed ^ d[0], 4.0 + f32::from(d[1] % 16)),
        _ => (seed, 9.0),
    };
    match source {
        Some(Source::Picture(img)) => {
            let mut small = img.resize(edge, edge, FilterType::Triangle).to_rgb8();
            for p in small.pixels_mut() {
                let l = (0.299 * f32::from(p[0])
                    + 0.587 * f32::from(p[1])
                    + 0.114 * f32::from(p[2])) as u8;
                let v = ((255 - l) as f32 * done) as u8;
                *p = Rgb([v, v / 2 + seed / 2, 255 - v]);
            }
            DynamicImage::ImageRgb8(small)
        }
        Some(Source::Bytes(_)) | None => {
            DynamicImage::ImageRgb8(RgbImage::from_fn(edge, edge, |x, y| {
                let fx = x as f32 / edge as f32;
                let fy = y as f32 / edge as f32;
                let wave = ((fx * 12.0 + f32::from(seed) / 20.0).sin() * (fy * bands).cos() * 0.5
                    + 0.5)
                    * done;
                Rgb([
                    (fx * 255.0 * done) as u8,
                    (wave * 255.0) as u8,
                    (fy * 255.0 * done) as u8 ^ seed,
                ])
            }))
        }
    }
}

fn encode(img: DynamicImage, format: ImageFormat) -> Result<Vec<u8>, Failure> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .map_err(|e| failure(FailureCode::Internal, format!("encoding failed: {e}")))?;
    Ok(out.into_inner())
}

//! The JavaScript binding (wasm32 only): `shrink(bytes, options)` returning
//! the bytes and the report; errors are thrown as `Error` with a `code`.

use wasm_bindgen::prelude::*;

use crate::{ExifPolicy, Format, Options, Preset, Report};

/// Options for [`shrink`]; starts from a preset, then setters override fields.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct ShrinkOptions {
    inner: Options,
}

fn js_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    // Setting a property on a fresh Error object cannot fail in practice;
    // if it did, the message still carries the code.
    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
    err.into()
}

#[wasm_bindgen]
impl ShrinkOptions {
    /// `preset` is `"eco"`, `"standard"` (the default) or `"high"`.
    #[wasm_bindgen(constructor)]
    pub fn new(preset: Option<String>) -> Result<ShrinkOptions, JsValue> {
        let preset = match preset.as_deref() {
            None => Preset::Standard,
            Some(p) => Preset::parse(p)
                .ok_or_else(|| js_error("invalid_option", &format!("unknown preset {p}")))?,
        };
        Ok(ShrinkOptions {
            inner: Options::preset(preset),
        })
    }

    /// Largest long edge in px (`undefined`: no bound).
    #[wasm_bindgen(setter = maxEdge)]
    pub fn set_max_edge(&mut self, v: Option<u32>) {
        self.inner.max_edge = v;
    }

    /// Largest width in px (`undefined`: no bound).
    #[wasm_bindgen(setter = maxWidth)]
    pub fn set_max_width(&mut self, v: Option<u32>) {
        self.inner.max_width = v;
    }

    /// Largest height in px (`undefined`: no bound).
    #[wasm_bindgen(setter = maxHeight)]
    pub fn set_max_height(&mut self, v: Option<u32>) {
        self.inner.max_height = v;
    }

    /// JPEG quality 1..=100.
    #[wasm_bindgen(setter)]
    pub fn set_quality(&mut self, v: u8) {
        self.inner.quality = v;
    }

    /// `"jpeg"`, `"png"`, `"webp"` or `undefined` (JPEG, PNG for transparent input).
    #[wasm_bindgen(setter)]
    pub fn set_format(&mut self, v: Option<String>) -> Result<(), JsValue> {
        self.inner.format = match v.as_deref() {
            None => None,
            Some(f) => Some(
                Format::parse(f)
                    .ok_or_else(|| js_error("invalid_option", &format!("unknown format {f}")))?,
            ),
        };
        Ok(())
    }

    /// Upper bound on the output size in bytes (`undefined`: none).
    #[wasm_bindgen(setter = targetBytes)]
    pub fn set_target_bytes(&mut self, v: Option<f64>) {
        self.inner.target_bytes = v.map(|b| b.max(0.0) as u64);
    }

    /// Quality floor for the target-size search.
    #[wasm_bindgen(setter = minQuality)]
    pub fn set_min_quality(&mut self, v: u8) {
        self.inner.min_quality = v;
    }

    /// Long-edge floor in px for the target-size search.
    #[wasm_bindgen(setter = minEdge)]
    pub fn set_min_edge(&mut self, v: u32) {
        self.inner.min_edge = v;
    }

    /// `"strip"` (default), `"safe"` or `"safe-with-gps"`.
    #[wasm_bindgen(setter)]
    pub fn set_exif(&mut self, v: String) -> Result<(), JsValue> {
        self.inner.metadata.exif = match v.as_str() {
            "strip" => ExifPolicy::Strip,
            "safe" => ExifPolicy::Safe,
            "safe-with-gps" => ExifPolicy::SafeWithGps,
            _ => {
                return Err(js_error(
                    "invalid_option",
                    &format!("unknown exif policy {v}"),
                ));
            }
        };
        Ok(())
    }

    /// Keep the ICC colour profile (default true).
    #[wasm_bindgen(setter = keepIcc)]
    pub fn set_keep_icc(&mut self, v: bool) {
        self.inner.metadata.icc_profile = v;
    }
}

/// The result of [`shrink`].
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct Shrunk {
    bytes: Vec<u8>,
    report: Report,
}

#[wasm_bindgen]
impl Shrunk {
    /// The encoded file (a copy, as a `Uint8Array`).
    #[wasm_bindgen(getter)]
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    /// Output width in px.
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.report.output_width
    }
    /// Output height in px.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.report.output_height
    }
    /// Output format name (`"jpeg"`, `"png"`, `"webp"`).
    #[wasm_bindgen(getter)]
    pub fn format(&self) -> String {
        self.report.output_format.name().to_string()
    }
    /// Output MIME type.
    #[wasm_bindgen(getter)]
    pub fn mime(&self) -> String {
        self.report.output_format.mime().to_string()
    }
    /// JPEG quality used (`undefined` for lossless output).
    #[wasm_bindgen(getter)]
    pub fn quality(&self) -> Option<u8> {
        self.report.quality
    }
    /// Input width as displayed.
    #[wasm_bindgen(getter = inputWidth)]
    pub fn input_width(&self) -> u32 {
        self.report.input_width
    }
    /// Input height as displayed.
    #[wasm_bindgen(getter = inputHeight)]
    pub fn input_height(&self) -> u32 {
        self.report.input_height
    }
    /// Input size in bytes.
    #[wasm_bindgen(getter = inputBytes)]
    pub fn input_bytes(&self) -> f64 {
        self.report.input_bytes as f64
    }
    /// Output size in bytes.
    #[wasm_bindgen(getter = outputBytes)]
    pub fn output_bytes(&self) -> f64 {
        self.report.output_bytes as f64
    }
    /// EXIF orientation found and applied.
    #[wasm_bindgen(getter)]
    pub fn orientation(&self) -> u8 {
        self.report.orientation
    }
    /// Number of encodes.
    #[wasm_bindgen(getter)]
    pub fn attempts(&self) -> u32 {
        self.report.attempts
    }
    /// Wall time in milliseconds.
    #[wasm_bindgen(getter = elapsedMs)]
    pub fn elapsed_ms(&self) -> f64 {
        self.report.elapsed.as_secs_f64() * 1000.0
    }
}

/// Prepares one image; throws an `Error` whose `code` is the stable error code.
#[wasm_bindgen]
pub fn shrink(input: &[u8], options: &ShrinkOptions) -> Result<Shrunk, JsValue> {
    crate::process(input, &options.inner)
        .map(|out| Shrunk {
            bytes: out.bytes,
            report: out.report,
        })
        .map_err(|e| js_error(e.code(), &format!("{}: {e}", e.code())))
}

//! The data directory (input/, output/, temp/) and the path rules of ComfyUI's `/view`,
//! `/upload/image` and `SaveImage` (server.py 316-518, folder_paths.py).

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The three directories under `--data`.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub temp: PathBuf,
}

impl Dirs {
    /// Creates input/, output/ and temp/ under `data` (temp/ emptied, as ComfyUI does at start).
    pub fn create(data: &Path) -> std::io::Result<Dirs> {
        let data = std::path::absolute(data)?;
        let dirs = Dirs {
            input: data.join("input"),
            output: data.join("output"),
            temp: data.join("temp"),
        };
        if dirs.temp.exists() {
            std::fs::remove_dir_all(&dirs.temp)?;
        }
        for d in [&dirs.input, &dirs.output, &dirs.temp] {
            std::fs::create_dir_all(d)?;
        }
        Ok(dirs)
    }

    /// `input` / `output` / `temp` → its directory.
    pub fn by_type(&self, kind: &str) -> Option<&Path> {
        match kind {
            "input" => Some(&self.input),
            "output" => Some(&self.output),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }

    /// Every file under input/ as `subfolder/name`, sorted (LoadImage's list).
    pub fn input_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.input, &self.input, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Lexical `os.path.normpath(os.path.abspath(p))` for an absolute `p`: `.` and `..` resolved
/// without touching the disk.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether `p` (normalized) is `root` or inside it (`os.path.commonpath` check).
pub fn inside(root: &Path, p: &Path) -> bool {
    normalize(p).starts_with(root)
}

/// Splits `"name.png [output]"` into the name and the directory type it names.
pub fn annotated(name: &str) -> (&str, Option<&'static str>) {
    for kind in ["output", "input", "temp"] {
        if let Some(stripped) = name.strip_suffix(&format!(" [{kind}]")) {
            return (stripped, Some(kind));
        }
    }
    (name, None)
}

/// The file a `LoadImage` name refers to (input dir unless annotated), if it exists.
pub fn annotated_input(input_dir: &Path, name: &str) -> Option<PathBuf> {
    let (name, kind) = annotated(name);
    let base = match kind {
        None | Some("input") => input_dir.to_path_buf(),
        Some(other) => input_dir.parent()?.join(other),
    };
    let p = base.join(name);
    (inside(&base, &p) && p.is_file()).then_some(p)
}

/// `mimetypes.guess_type` for the extensions that matter, with ComfyUI's overrides.
pub fn content_type(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" | "jpe" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/x-wav",
        "flac" => "audio/flac",
        // html/js/css would be forced to octet-stream by ComfyUI anyway.
        _ => "application/octet-stream",
    }
}

/// `GET /view` outcome.
#[derive(Debug)]
pub enum View {
    File { path: PathBuf, name: String },
    BadRequest,
    Forbidden,
    NotFound,
}

/// Resolves `/view`'s query like server.py 416-518.
pub fn view(
    dirs: &Dirs,
    filename: Option<&str>,
    kind: Option<&str>,
    subfolder: Option<&str>,
) -> View {
    let Some(filename) = filename else {
        return View::NotFound;
    };
    let (filename, annotated_kind) = annotated(filename);
    if filename.is_empty() {
        return View::BadRequest;
    }
    if filename.starts_with('/') || filename.contains("..") {
        return View::BadRequest;
    }
    let kind = annotated_kind.or(kind).unwrap_or("output");
    let Some(mut dir) = dirs.by_type(kind).map(Path::to_path_buf) else {
        return View::BadRequest;
    };
    if let Some(sub) = subfolder {
        let full = normalize(&dir.join(sub));
        if !full.starts_with(&dir) {
            return View::Forbidden;
        }
        dir = full;
    }
    let base = Path::new(filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(&base);
    if base.is_empty() || !path.is_file() {
        return View::NotFound;
    }
    View::File { path, name: base }
}

/// `POST /upload/image` outcome.
#[derive(Debug)]
pub enum Upload {
    Saved {
        name: String,
        subfolder: String,
        kind: String,
    },
    BadRequest,
    /// Unknown `type`: ComfyUI fails with an unbound local (500).
    ServerError,
}

/// Stores an upload like server.py 316-367: rename on clash, keep the existing name when the
/// bytes are identical.
pub fn upload(
    dirs: &Dirs,
    filename: &str,
    bytes: &[u8],
    overwrite: Option<&str>,
    subfolder: &str,
    kind: Option<&str>,
) -> std::io::Result<Upload> {
    let kind = kind.unwrap_or("input");
    let Some(dir) = dirs.by_type(kind) else {
        return Ok(Upload::ServerError);
    };
    if filename.is_empty() {
        return Ok(Upload::BadRequest);
    }
    let folder = normalize(&dir.join(subfolder));
    let mut path = normalize(&folder.join(filename));
    if !path.starts_with(dir) || path == dir {
        return Ok(Upload::BadRequest);
    }
    std::fs::create_dir_all(path.parent().unwrap_or(&folder))?;
    let mut name = filename.to_owned();
    let overwrite = matches!(overwrite, Some("true" | "1"));
    let mut duplicate = false;
    if !overwrite {
        let p = Path::new(filename);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = p
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let parent = Path::new(filename)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let want = Sha256::digest(bytes);
        let mut i = 1;
        while path.exists() {
            if Sha256::digest(std::fs::read(&path)?) == want {
                duplicate = true;
                break;
            }
            name = parent
                .join(format!("{stem} ({i}){ext}"))
                .to_string_lossy()
                .into_owned();
            path = folder.join(&name);
            i += 1;
        }
    }
    if !duplicate {
        std::fs::write(&path, bytes)?;
    }
    Ok(Upload::Saved {
        name,
        subfolder: subfolder.to_owned(),
        kind: kind.to_owned(),
    })
}

/// `folder_paths.get_save_image_path`: the folder, the file stem and the next counter for
/// `prefix` under `root`. Errors if the prefix escapes `root`.
pub fn save_path(root: &Path, prefix: &str) -> Result<(PathBuf, String, String, u32), String> {
    let (sub, stem) = match prefix.rfind('/') {
        Some(i) => (&prefix[..i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let folder = normalize(&root.join(sub));
    if !folder.starts_with(root) {
        return Err(format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
            folder.display(),
            root.display()
        ));
    }
    let mut counter = 0;
    if let Ok(rd) = std::fs::read_dir(&folder) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = f.strip_prefix(&format!("{stem}_")) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty()
                && rest[digits.len()..].starts_with('_')
                && let Ok(n) = digits.parse::<u32>()
            {
                counter = counter.max(n);
            }
        }
    }
    let subfolder = folder
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((folder, stem.to_owned(), subfolder, counter + 1))
}

/// `/view`'s `preview=webp;90|jpeg;90` and `channel=rgb|a` conversions (server.py 452-505):
/// the new bytes and their content type, or None if the file is not an image.
pub fn convert(
    bytes: &[u8],
    preview: Option<&str>,
    channel: &str,
) -> Option<(Vec<u8>, &'static str)> {
    use image::{DynamicImage, ImageFormat};
    let img = image::load_from_memory(bytes).ok()?;
    let mut out = std::io::Cursor::new(Vec::new());
    if let Some(p) = preview {
        let mut parts = p.split(';');
        let wanted = parts.next().unwrap_or("");
        let quality = p
            .rsplit(';')
            .next()
            .and_then(|q| q.parse::<u8>().ok())
            .unwrap_or(90);
        if wanted == "jpeg" && !channel.contains('a') {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            DynamicImage::ImageRgb8(img.to_rgb8())
                .write_with_encoder(enc)
                .ok()?;
            return Some((out.into_inner(), "image/jpeg"));
        }
        // WebP (lossless: the image crate has no lossy encoder; quality is ignored).
        let img = if channel == "rgb" {
            DynamicImage::ImageRgb8(img.to_rgb8())
        } else {
            DynamicImage::ImageRgba8(img.to_rgba8())
        };
        img.write_to(&mut out, ImageFormat::WebP).ok()?;
        return Some((out.into_inner(), "image/webp"));
    }
    let converted = if channel == "rgb" {
        DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        // `a`: the alpha channel on a black RGBA image (opaque if there is none).
        let rgba = img.to_rgba8();
        DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
            rgba.width(),
            rgba.height(),
            |x, y| image::Rgba([0, 0, 0, rgba.get_pixel(x, y).0[3]]),
        ))
    };
    converted.write_to(&mut out, ImageFormat::Png).ok()?;
    Some((out.into_inner(), "image/png"))
}

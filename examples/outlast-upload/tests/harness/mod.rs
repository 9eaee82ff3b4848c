//! Test harness for the CLI suites: runs `outlast-upload` against a real gateway (started with
//! `outlast_e2e::Gateway`), a throttling, counting, cutting TCP proxy, and image fixtures.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub use outlast_e2e::Gateway;

/// The binary under test.
pub fn cli() -> &'static str {
    env!("CARGO_BIN_EXE_outlast-upload")
}

/// A proxy that limits client->server bytes per second, counts them, and cuts on command.
#[derive(Debug)]
pub struct Proxy {
    /// Where the CLI connects.
    pub addr: SocketAddr,
    /// Client->server bytes forwarded.
    pub up_bytes: Arc<AtomicU64>,
    /// HTTP job submissions seen on the wire (`POST /v1/jobs`, also `/v1/jobs/batch`).
    pub http_submits: Arc<AtomicU64>,
    /// Bytes per second client->server (0 = unlimited); changeable while running.
    pub rate: watch::Sender<u64>,
    cut: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// Forwards to `target`, at most `rate` bytes per second upstream (0 = unlimited).
    pub async fn start(target: SocketAddr, rate: u64) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(0u64);
        let (rate_tx, rate_rx) = watch::channel(rate);
        let up_bytes = Arc::new(AtomicU64::new(0));
        let http_submits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&up_bytes);
        let submits = Arc::clone(&http_submits);
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let cut_rx = cut_rx.clone();
                let rate_rx = rate_rx.clone();
                let counter = Arc::clone(&counter);
                let submits = Arc::clone(&submits);
                conns.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        pipe(client, server, rate_rx, cut_rx, counter, submits).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Proxy {
            addr,
            up_bytes,
            http_submits,
            rate: rate_tx,
            cut,
            accept,
        })
    }

    /// `http://addr`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection now (no close frames, like a proxy restart).
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    rate: watch::Receiver<u64>,
    mut cut: watch::Receiver<u64>,
    counter: Arc<AtomicU64>,
    submits: Arc<AtomicU64>,
) {
    const SUBMIT: &[u8] = b"POST /v1/jobs";
    cut.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 4096];
        // The end of the previous read, so that a request line split across reads is seen.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let r = *rate.borrow();
            let max = if r == 0 {
                buf.len()
            } else {
                buf.len().min((r / 20).max(1) as usize)
            };
            let n = match cr.read(&mut buf[..max]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            counter.fetch_add(n as u64, Ordering::SeqCst);
            tail.extend_from_slice(&buf[..n]);
            let seen = tail.windows(SUBMIT.len()).filter(|w| *w == SUBMIT).count();
            submits.fetch_add(seen as u64, Ordering::SeqCst);
            let keep = tail.len().min(SUBMIT.len() - 1);
            tail.drain(..tail.len() - keep);
            if r > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = up => {},
        () = down => {},
        _ = cut.changed() => {},
    }
}

/// A running CLI with its stdout read line by line.
pub struct Run {
    pub child: Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub seen: Vec<String>,
}

/// Starts the CLI with `args` (stdout piped, stderr inherited).
pub fn spawn(args: &[&str]) -> anyhow::Result<Run> {
    let mut child = Command::new(cli())
        .args(args)
        .env_remove("OUTLAST_URL")
        .env_remove("OUTLAST_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning outlast-upload")?;
    let stdout = child.stdout.take().context("stdout")?;
    Ok(Run {
        child,
        lines: BufReader::new(stdout).lines(),
        seen: Vec::new(),
    })
}

impl Run {
    /// Reads lines until `pred` matches one (bounded).
    pub async fn until(
        &mut self,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| {
                    format!(
                        "no matching line within {within:?}; saw:\n{}",
                        self.seen.join("\n")
                    )
                })??
                .with_context(|| format!("stdout ended; saw:\n{}", self.seen.join("\n")))?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// Reads the rest and waits for the exit status (bounded).
    pub async fn finish(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        while let Some(line) = tokio::time::timeout_at(deadline, self.lines.next_line())
            .await
            .with_context(|| {
                format!(
                    "did not end within {within:?}; saw:\n{}",
                    self.seen.join("\n")
                )
            })??
        {
            self.seen.push(line);
        }
        Ok(tokio::time::timeout_at(deadline, self.child.wait()).await??)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.child.id().context("no pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Parsed JSON lines (panics on a line that is not JSON: `--json` promises NDJSON).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }
}

/// Runs the CLI to the end and returns (exit code, stdout lines).
pub async fn run(args: &[&str], within: Duration) -> anyhow::Result<(Option<i32>, Vec<String>)> {
    let mut r = spawn(args)?;
    let status = r.finish(within).await?;
    Ok((status.code(), r.seen))
}

/// Deterministic noise, so PNGs do not compress much.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A noisy RGB PNG of `w`x`h` (about 3 bytes per pixel).
pub fn noisy_png(path: &Path, w: u32, h: u32, seed: u64) -> anyhow::Result<()> {
    let img = image::RgbImage::from_raw(w, h, noise(seed, (w * h * 3) as usize)).context("raw")?;
    img.save_with_format(path, image::ImageFormat::Png)?;
    Ok(())
}

/// A smooth PNG (small file).
pub fn smooth_png(path: &Path, w: u32, h: u32) -> anyhow::Result<()> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    img.save_with_format(path, image::ImageFormat::Png)?;
    Ok(())
}

/// A JPEG of `w`x`h` stored pixels with an EXIF APP1 segment saying `orientation` (and a GPS
/// tag-free but personal-looking camera model string), so preparation must rotate and strip.
/// The top rows are red, so "upright" is checkable after orientation 6 (rotate 90° CW: the
/// stored top ends up on the right).
pub fn jpeg_with_orientation(path: &Path, w: u32, h: u32, orientation: u16) -> anyhow::Result<()> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if y < h / 8 {
            image::Rgb([230, 20, 20])
        } else {
            image::Rgb([(x % 200) as u8 + 20, 90, (y % 200) as u8 + 20])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img)?;
    // TIFF header (big-endian), IFD0 with Orientation (0x0112) and Model (0x0110).
    let model = b"SecretCam 3000\0";
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend_from_slice(&0x0110u16.to_be_bytes());
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend_from_slice(&(model.len() as u32).to_be_bytes());
    tiff.extend_from_slice(&(8 + 2 + 2 * 12 + 4u32).to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    tiff.extend_from_slice(model);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    std::fs::write(path, out)?;
    Ok(())
}

/// A short WAV (mono 8 kHz, 16 bit).
pub fn wav(path: &Path, samples: usize) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..samples)
        .flat_map(|i| (((i as f64 * 0.05).sin() * 8000.0) as i16).to_le_bytes())
        .collect();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out)?;
    Ok(())
}

/// The gateway's description of an upload (`GET /v1/uploads/{id}`).
pub async fn upload_info(gw: &Gateway, id: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(format!("{}/v1/uploads/{id}", gw.http()))
        .await?
        .json()
        .await?)
}

/// The stored bytes of an upload, read from the gateway's data directory.
pub fn stored_upload(gw: &Gateway, id: &str) -> anyhow::Result<Vec<u8>> {
    let p: PathBuf = gw.data_dir.join("uploads").join(format!("{id}.bin"));
    std::fs::read(&p).with_context(|| p.display().to_string())
}

/// A counter's value from `/metrics` (summed over labels).
pub async fn metric(gw: &Gateway, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{}/metrics", gw.http()))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A demo workflow file in `dir`.
pub fn workflow(dir: &Path, json: &str) -> anyhow::Result<String> {
    let p = dir.join("workflow.json");
    std::fs::write(&p, json)?;
    Ok(p.display().to_string())
}

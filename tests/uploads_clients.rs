//! Unmodified third-party tus clients against the real binary: tus-js-client (Node) and tuspy
//! (Python), interrupted at random offsets and resumed, with and without `parallelUploads`,
//! and through a proxy that cuts the connection.
//!
//! `scripts/test.sh` installs the pinned clients (`npm ci` and `pip install -r` in
//! `tests/clients`). Missing clients fail these tests with instructions; nothing is skipped.

#[path = "uploads_common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Tus, content, id_of, sha256_hex, wait_for};
use outlast_e2e::Gateway;
use outlast_e2e::ws::Client;
use outlast_protocol::Codec;
use outlast_protocol::v1::Control;
use rand::Rng;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

fn require_node() {
    let module = clients_dir().join("node_modules/tus-js-client/package.json");
    assert!(
        module.exists(),
        "tus-js-client is not installed: run scripts/test.sh, or `npm ci` in {}",
        clients_dir().display()
    );
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "tuspy is not installed: run scripts/test.sh, or `pip install -r {}`",
        clients_dir().join("requirements.txt").display()
    );
}

/// Runs a client to its end; returns the exit code and the last stdout line.
async fn run(cmd: &mut tokio::process::Command) -> anyhow::Result<(i32, String)> {
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code == 0 || code == 3,
        "client failed ({code}):\n{stdout}\n{stderr}"
    );
    Ok((code, stdout.lines().last().unwrap_or_default().to_owned()))
}

fn node(endpoint: &str, file: &Path, store: &Path, extra: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("node");
    c.current_dir(clients_dir())
        .arg("tus_upload.mjs")
        .args(["--endpoint", endpoint])
        .arg("--file")
        .arg(file)
        .arg("--store")
        .arg(store)
        .args(extra)
        .kill_on_drop(true);
    c
}

fn upload_path_of(line: &str) -> anyhow::Result<String> {
    let url = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no URL in {line:?}"))?;
    let path = url
        .find("/v1/uploads/")
        .map(|i| url[i..].to_owned())
        .ok_or_else(|| anyhow::anyhow!("not an upload URL: {url}"))?;
    Ok(path)
}

/// Checks the server's copy: complete, the source's sha256, and (unless `allow_resend`) every
/// byte written once.
async fn verify(tus: &Tus, path: &str, source: &[u8], allow_resend: bool) -> anyhow::Result<()> {
    let info = tus.info(path).await?;
    assert_eq!(info["state"], "complete", "{info}");
    assert_eq!(info["sha256"], sha256_hex(source), "{info}");
    if !allow_resend {
        assert_eq!(
            info["bytes_written"].as_u64(),
            Some(source.len() as u64),
            "{info}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn tus_js_client_resumes_after_random_interruptions() -> anyhow::Result<()> {
    require_node();
    let gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let dir = tempfile::tempdir()?;
    let endpoint = format!("{}/v1/uploads", gw.http());
    let mut rng = rand::rng();
    for (i, size) in [300_000usize, (5 << 20) + 17, 12 << 20]
        .into_iter()
        .enumerate()
    {
        let source = content(size, i as u64 + 100);
        let file = dir.path().join(format!("src{i}.bin"));
        std::fs::write(&file, &source)?;
        let store = dir.path().join(format!("store{i}.json"));
        let chunk = if size < 1 << 20 { 64 << 10 } else { 1 << 20 };
        let first_stop = rng.random_range(1..size / 2);
        let second_stop = rng.random_range(size / 2..size - 1);
        let mut line = String::new();
        for stop in [first_stop, second_stop] {
            let extra = vec![
                "--chunk".into(),
                chunk.to_string(),
                "--stop-after".into(),
                stop.to_string(),
            ];
            let (code, l) = run(&mut node(&endpoint, &file, &store, &extra)).await?;
            line = l;
            if code == 0 {
                break;
            }
            let path = upload_path_of(&line)?;
            let offset = tus.offset(&path).await?;
            assert!(
                offset >= stop as u64 || offset == size as u64,
                "stopped at {offset} < {stop}"
            );
        }
        let path = upload_path_of(&line)?;
        let extra = vec!["--chunk".into(), chunk.to_string()];
        let (code, line) = run(&mut node(&endpoint, &file, &store, &extra)).await?;
        assert_eq!(code, 0, "{line}");
        assert_eq!(
            upload_path_of(&line)?,
            path,
            "the resumed upload is the same upload"
        );
        verify(&tus, &path, &source, false).await?;
    }
    Ok(())
}

#[tokio::test]
async fn tus_js_client_parallel_uploads_use_concatenation() -> anyhow::Result<()> {
    require_node();
    let gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let dir = tempfile::tempdir()?;
    let endpoint = format!("{}/v1/uploads", gw.http());
    let source = content((6 << 20) + 3, 42);
    let file = dir.path().join("src.bin");
    std::fs::write(&file, &source)?;
    let store = dir.path().join("store.json");
    let base = vec![
        "--chunk".to_owned(),
        (512 << 10).to_string(),
        "--parallel".into(),
        "3".into(),
    ];
    let stop = rand::rng().random_range(256 << 10..3 << 20);
    let mut interrupted = base.clone();
    interrupted.extend(["--stop-after".into(), stop.to_string()]);
    let (code, _) = run(&mut node(&endpoint, &file, &store, &interrupted)).await?;
    assert_eq!(code, 3, "the first run must stop early");
    let (code, line) = run(&mut node(&endpoint, &file, &store, &base)).await?;
    assert_eq!(code, 0, "{line}");
    let path = upload_path_of(&line)?;
    let (status, headers) = {
        let r = tus.head(&path).await?;
        (r.status(), r.headers().clone())
    };
    assert_eq!(status, 200);
    let concat = common::header(&headers, "upload-concat").unwrap_or_default();
    assert!(
        concat.starts_with("final;"),
        "not a final upload: {concat:?}"
    );
    // A final upload is assembled from its parts: check content, not the write count.
    verify(&tus, &path, &source, true).await?;
    Ok(())
}

#[tokio::test]
async fn tus_js_client_survives_a_cutting_proxy() -> anyhow::Result<()> {
    require_node();
    let gw = Gateway::start_behind_edge(&[]).await?;
    let proxy = gw.edge()?;
    let tus = Tus::new(&gw.http());
    let dir = tempfile::tempdir()?;
    let source = content(16 << 20, 77);
    let file = dir.path().join("src.bin");
    std::fs::write(&file, &source)?;
    let store = dir.path().join("store.json");
    let endpoint = format!("{}/v1/uploads", gw.http());
    // The test's own observer goes past the edge: the cuts below are for the tus client only.
    let mut watch = Client::connect(&gw.direct_ws_url(), Codec::Json).await?;
    let extra = vec![
        "--chunk".into(),
        (4 << 20).to_string(),
        "--retry-fast".into(),
    ];
    let mut child = node(&endpoint, &file, &store, &extra);
    let upload = tokio::spawn(async move { run(&mut child).await });
    // Cut every connection whenever the server has seen another 3 MiB arrive.
    let mut cuts = 0;
    let mut next = 3u64 << 20;
    while next < source.len() as u64 {
        let seen = wait_for(&mut watch, Duration::from_secs(60), |c| match c {
            Control::UploadProgress { offset, .. } if offset.0 >= next => Some(offset.0),
            _ => None,
        })
        .await?;
        proxy.cut_all();
        cuts += 1;
        next = seen + (3 << 20);
    }
    let (code, line) = upload.await??;
    assert_eq!(code, 0, "{line}");
    assert!(cuts >= 3, "only {cuts} cuts");
    let path = upload_path_of(&line)?;
    // Bytes of a cut PATCH are kept; tus-js-client resumes from HEAD, so nothing is resent.
    verify(&tus, &path, &source, false).await?;
    Ok(())
}

#[tokio::test]
async fn tuspy_resumes_with_chunk_checksums() -> anyhow::Result<()> {
    require_python();
    let gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let dir = tempfile::tempdir()?;
    let endpoint = format!("{}/v1/uploads", gw.http());
    let mut rng = rand::rng();
    for (i, size) in [100_000usize, (3 << 20) + 5, 9 << 20]
        .into_iter()
        .enumerate()
    {
        let source = content(size, i as u64 + 200);
        let file = dir.path().join(format!("src{i}.bin"));
        std::fs::write(&file, &source)?;
        let store = dir.path().join(format!("store{i}.json"));
        let chunk = (256 << 10).to_string();
        let py = |stop: Option<usize>| {
            let mut c = tokio::process::Command::new("python3");
            c.current_dir(clients_dir())
                .arg("tuspy_upload.py")
                .arg(&endpoint)
                .arg(&file)
                .arg(&store)
                .arg(&chunk)
                .kill_on_drop(true);
            if let Some(s) = stop {
                c.arg(s.to_string());
            }
            c
        };
        let stop = rng.random_range(1..size - 1);
        let (code, line) = run(&mut py(Some(stop))).await?;
        let path = upload_path_of(&line)?;
        if code == 3 {
            let offset = tus.offset(&path).await?;
            assert!(
                offset >= stop as u64 && offset < size as u64,
                "offset {offset}"
            );
        }
        let (code, line) = run(&mut py(None)).await?;
        assert_eq!(code, 0, "{line}");
        assert_eq!(upload_path_of(&line)?, path);
        assert_eq!(id_of(&path), id_of(&upload_path_of(&line)?));
        verify(&tus, &path, &source, false).await?;
    }
    Ok(())
}

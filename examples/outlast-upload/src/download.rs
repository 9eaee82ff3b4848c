//! Downloads a finished job's outputs into `--out`, named after the input file: into
//! `<name>.part` first, resuming with `Range` (and `If-Range` on the ETag) after a cut or a
//! rerun, then verifying size and sha256 before renaming into place. A file that fails
//! verification is removed (so the next run fetches it afresh) and counts for exit 4.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use outlast_protocol::{JobId, OutputInfo};
use tokio::io::AsyncWriteExt;

use crate::net::{Ctx, Retry, Stop};
use crate::report::Event;

/// What happened to a job's outputs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Downloaded {
    /// Saved and verified.
    pub saved: usize,
    /// Failed verification.
    pub bad: usize,
}

/// Where an output of the job at `idx` is saved.
pub fn output_path(ctx: &Ctx, prefix: &str, name: &str) -> PathBuf {
    // Output names come from the gateway: keep only a plain file name.
    let safe: String = name
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .chars()
        .map(|c| if c == '\\' || c.is_control() { '_' } else { c })
        .collect();
    let safe = if safe.is_empty() || safe == "." || safe == ".." {
        "output".to_string()
    } else {
        safe
    };
    ctx.args.out.join(format!("{prefix}{safe}"))
}

/// Downloads every output of the job at `idx` not downloaded yet.
pub async fn download_job(ctx: &Ctx, idx: usize) -> Result<Downloaded, Stop> {
    let (job_id, prefix, outputs, done, file) = ctx.store.read(|s| {
        let r = &s.jobs[idx];
        (
            r.job_id,
            r.out_prefix.clone(),
            r.outputs.clone(),
            r.downloaded.clone(),
            r.files.first().cloned().unwrap_or_default(),
        )
    });
    let Some(job_id) = job_id else {
        return Ok(Downloaded::default());
    };
    let mut result = Downloaded::default();
    for info in outputs {
        let path = output_path(ctx, &prefix, &info.name);
        if done.contains(&info.name) && path.exists() {
            result.saved += 1;
            continue;
        }
        match fetch(ctx, job_id, &info, &path).await? {
            Ok(fetched) => {
                ctx.store.update(|s| {
                    let d = &mut s.jobs[idx].downloaded;
                    if !d.contains(&info.name) {
                        d.push(info.name.clone());
                    }
                });
                let _ = ctx.store.save().await;
                result.saved += 1;
                ctx.report.emit(Event::OutputSaved {
                    job_id: job_id.to_string(),
                    file: file.clone(),
                    name: info.name.clone(),
                    path: path.display().to_string(),
                    size: info.size,
                    sha256: info.sha256.clone(),
                    fetched_bytes: fetched,
                });
            }
            Err((code, message)) => {
                result.bad += usize::from(code == "checksum_mismatch");
                ctx.report.emit(Event::OutputFailed {
                    job_id: job_id.to_string(),
                    file: file.clone(),
                    name: info.name.clone(),
                    code,
                    message,
                });
            }
        }
    }
    Ok(result)
}

fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// One output: `Ok(Ok(bytes fetched))`, `Ok(Err((code, message)))` when it is bad for good.
async fn fetch(
    ctx: &Ctx,
    job: JobId,
    info: &OutputInfo,
    path: &Path,
) -> Result<Result<u64, (String, String)>, Stop> {
    let part = part_path(path);
    if let Some(dir) = path.parent()
        && let Err(e) = tokio::fs::create_dir_all(dir).await
    {
        return Ok(Err((
            "download_failed".into(),
            format!("{}: {e}", dir.display()),
        )));
    }
    // A complete file from an earlier run whose state write was lost.
    if tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.len() == info.size)
        && hash(path).await.as_deref() == Some(info.sha256.as_str())
    {
        return Ok(Ok(0));
    }
    let mut retry = Retry::new("download", ctx.args.retry_for);
    let mut fetched = 0u64;
    let url = ctx.url(&format!("/v1/jobs/{job}/outputs/{}", info.name));
    loop {
        let have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have < info.size || info.size == 0 {
            match get(ctx, &url, info, &part, have, &mut fetched).await {
                Ok(()) => retry.ok(),
                Err(e) => {
                    retry.failed(ctx, &e).await?;
                    continue;
                }
            }
        }
        let len = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let sha = hash(&part).await;
        if len == info.size && sha.as_deref() == Some(info.sha256.as_str()) {
            if let Err(e) = tokio::fs::rename(&part, path).await {
                return Ok(Err(("download_failed".into(), e.to_string())));
            }
            return Ok(Ok(fetched));
        }
        let _ = tokio::fs::remove_file(&part).await;
        return Ok(Err((
            "checksum_mismatch".into(),
            format!(
                "expected {} bytes with sha256 {}, got {len} bytes with sha256 {}; removed, run again to fetch it afresh",
                info.size,
                info.sha256,
                sha.unwrap_or_default()
            ),
        )));
    }
}

async fn get(
    ctx: &Ctx,
    url: &str,
    info: &OutputInfo,
    part: &Path,
    have: u64,
    fetched: &mut u64,
) -> anyhow::Result<()> {
    let mut req = ctx.auth(ctx.http.get(url));
    if have > 0 {
        req = req
            .header("range", format!("bytes={have}-"))
            .header("if-range", format!("\"{}\"", info.sha256));
    }
    let r = req.send().await?;
    let append = match r.status().as_u16() {
        206 => true,
        200 => false,
        // Our partial file is already as long as the output (or longer): verify it.
        416 => return Ok(()),
        s if (400..500).contains(&s) && s != 408 && s != 429 => {
            anyhow::bail!("download answered {s}")
        }
        s => anyhow::bail!("download answered {s}"),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await?;
    let mut body = r.bytes_stream();
    while let Some(chunk) = tokio::select! {
        c = body.next() => c,
        () = ctx.cancel.cancelled() => None,
    } {
        let chunk = chunk?;
        file.write_all(&chunk).await?;
        *fetched += chunk.len() as u64;
    }
    file.sync_all().await?;
    anyhow::ensure!(!ctx.cancel.is_cancelled(), "interrupted");
    Ok(())
}

async fn hash(path: &Path) -> Option<String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::prepare::hash_file(&p).ok().map(|(_, h)| h))
        .await
        .ok()
        .flatten()
}

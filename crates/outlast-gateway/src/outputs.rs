//! Job outputs as files under `<data>/outputs/<job>/<name>`, written durably and content-hashed.
//!
//! An S3-compatible implementation replaces this for several gateways; the interface is put
//! (from a local file), share (another job's output, for the result cache; a server-side copy
//! there) and locate (for serving with Range/ETag).

use std::path::{Path, PathBuf};

use outlast_protocol::{JobId, OutputInfo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::AppError;

/// File-system output storage.
#[derive(Debug, Clone)]
pub struct OutputStore {
    root: PathBuf,
}

/// True for names safe as a single path component and in URLs: `[A-Za-z0-9._-]`, 1-128 chars,
/// not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl OutputStore {
    /// Outputs under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn dir(&self, job: JobId) -> PathBuf {
        self.root.join(job.to_string())
    }

    /// Where an output lives, if the name is valid.
    pub fn path(&self, job: JobId, name: &str) -> Option<PathBuf> {
        valid_name(name).then(|| self.dir(job).join(name))
    }

    /// The job's output directory (created) and the path for `name` (validated).
    async fn prepare(&self, job: JobId, name: &str) -> Result<(PathBuf, PathBuf), AppError> {
        let path = self
            .path(job, name)
            .ok_or_else(|| AppError::invalid(format!("invalid output name {name:?}")))?;
        let dir = self.dir(job);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(AppError::internal)?;
        Ok((dir, path))
    }

    /// Stores `bytes` as output `name` of `job`: written to a temporary file, fsynced, renamed.
    pub async fn put_bytes(
        &self,
        job: JobId,
        name: &str,
        mime: &str,
        bytes: &[u8],
    ) -> Result<OutputInfo, AppError> {
        let (dir, path) = self.prepare(job, name).await?;
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(AppError::internal)?;
        file.write_all(bytes).await.map_err(AppError::internal)?;
        file.sync_all().await.map_err(AppError::internal)?;
        drop(file);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(AppError::internal)?;
        sync_dir(&dir).await;
        Ok(OutputInfo {
            name: name.to_owned(),
            mime: mime.to_owned(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Stores the file at `src` (moved when possible) as output `name` of `job`.
    pub async fn put_file(
        &self,
        job: JobId,
        name: &str,
        mime: &str,
        src: &Path,
    ) -> Result<OutputInfo, AppError> {
        let (dir, path) = self.prepare(job, name).await?;
        let mut file = tokio::fs::File::open(src)
            .await
            .map_err(AppError::internal)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(AppError::internal)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        file.sync_all().await.map_err(AppError::internal)?;
        if tokio::fs::rename(src, &path).await.is_err() {
            tokio::fs::copy(src, &path)
                .await
                .map_err(AppError::internal)?;
            tokio::fs::File::open(&path)
                .await
                .map_err(AppError::internal)?
                .sync_all()
                .await
                .map_err(AppError::internal)?;
        }
        sync_dir(&dir).await;
        Ok(OutputInfo {
            name: name.to_owned(),
            mime: mime.to_owned(),
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Makes output `info` of job `from` an output of job `to` as well: a hard link (no bytes
    /// copied; outputs are never modified in place, only replaced by rename, so sharing the
    /// inode is safe), or a fsynced copy where links are impossible. The source must still
    /// exist with `info.size` bytes; any error leaves `to` without the output.
    pub async fn share(&self, from: JobId, to: JobId, info: &OutputInfo) -> std::io::Result<()> {
        let invalid =
            || std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid output name");
        let src = self.path(from, &info.name).ok_or_else(invalid)?;
        let dst = self.path(to, &info.name).ok_or_else(invalid)?;
        let dir = self.dir(to);
        let size = info.size;
        let tmp = dir.join(format!(".{}.tmp", info.name));
        tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&src)?;
            if meta.len() != size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} has {} bytes, recorded {size}",
                        src.display(),
                        meta.len()
                    ),
                ));
            }
            std::fs::create_dir_all(&dir)?;
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
            }
            std::fs::rename(&tmp, &dst)
        })
        .await
        .map_err(std::io::Error::other)??;
        sync_dir(&self.dir(to)).await;
        Ok(())
    }

    /// Removes every output of `job` (best effort; used when a cached answer could not be
    /// completed, before the job runs for real).
    pub async fn remove_all(&self, job: JobId) {
        let _ = tokio::fs::remove_dir_all(self.dir(job)).await;
    }
}

/// Makes a rename durable. Best effort: some file systems refuse to open directories.
async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// A media type from a file name's extension (`mime_guess`'s table), for outputs whose producer
/// did not say; text is declared UTF-8. Unknown extensions are `application/octet-stream`.
pub fn mime_for(name: &str) -> String {
    match mime_guess::from_path(name).first() {
        Some(m) if m.type_() == mime_guess::mime::TEXT && m.get_param("charset").is_none() => {
            format!("{m}; charset=utf-8")
        }
        Some(m) => m.to_string(),
        None => "application/octet-stream".to_owned(),
    }
}

#[cfg(test)]
mod mime_tests {
    use super::mime_for;

    #[test]
    fn media_types_by_extension() {
        for (name, want) in [
            ("a.png", "image/png"),
            ("a.JPG", "image/jpeg"),
            ("b.webp", "image/webp"),
            ("c.mp3", "audio/mpeg"),
            ("d.mp4", "video/mp4"),
            ("e.json", "application/json"),
            ("hello.txt", "text/plain; charset=utf-8"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(mime_for(name), want, "{name}");
        }
    }
}

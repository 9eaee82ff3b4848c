//! The data file of one upload and the running sha256 of its bytes. Blocking I/O only: the
//! owner ([`super::writer::Writer`]) moves it into `spawn_blocking` for every step.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use md5::Md5;
use outlast_protocol::tus::ChecksumAlgorithm;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The per-request checksum of the checksum extension.
#[derive(Debug, Clone)]
pub enum ChunkHasher {
    /// sha1
    Sha1(Sha1),
    /// sha256
    Sha256(Sha256),
    /// md5
    Md5(Md5),
}

impl ChunkHasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => ChunkHasher::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => ChunkHasher::Sha256(Sha256::new()),
            ChecksumAlgorithm::Md5 => ChunkHasher::Md5(Md5::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            ChunkHasher::Sha1(h) => h.update(data),
            ChunkHasher::Sha256(h) => h.update(data),
            ChunkHasher::Md5(h) => h.update(data),
        }
    }

    /// The digest of everything seen.
    pub fn finish(self) -> Vec<u8> {
        match self {
            ChunkHasher::Sha1(h) => h.finalize().to_vec(),
            ChunkHasher::Sha256(h) => h.finalize().to_vec(),
            ChunkHasher::Md5(h) => h.finalize().to_vec(),
        }
    }
}

/// One upload's bytes on disk, `uploads/<id>.bin`.
#[derive(Debug)]
pub struct DataFile {
    path: PathBuf,
    file: Option<File>,
    /// sha256 of `[0, .0)`: kept across requests in memory; rebuilt from the file once when
    /// missing (after a restart) or out of step (after a discarded chunk).
    hasher: Option<(u64, Sha256)>,
    /// Checksum of the current request's chunk, when the client sent `Upload-Checksum`.
    pub chunk: Option<ChunkHasher>,
}

impl DataFile {
    /// The (possibly not yet existing) file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            hasher: None,
            chunk: None,
        }
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("data file not open"))
    }

    /// Makes the file and the hasher stand exactly at the durable `offset`: bytes written after
    /// the last durable commit (a crash, a discarded chunk) are cut off, and the hasher is
    /// rebuilt by reading `[0, offset)` if it is not already there.
    pub fn ensure_at(&mut self, offset: u64) -> io::Result<()> {
        if self.hasher.as_ref().is_some_and(|(at, _)| *at == offset) {
            return Ok(());
        }
        let file = self.file()?;
        if file.metadata()?.len() != offset {
            file.set_len(offset)?;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = 0u64;
        while seen < offset {
            let want = buf.len().min((offset - seen) as usize);
            let n = file.read_at(&mut buf[..want], seen)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            seen += n as u64;
        }
        if seen != offset {
            return Err(io::Error::other(format!(
                "data file holds {seen} bytes, the record says {offset}"
            )));
        }
        tracing::debug!(path = %self.path.display(), offset, "rebuilt the sha256 state from disk");
        self.hasher = Some((offset, hasher));
        Ok(())
    }

    /// Writes `data` at `offset` (which must be where the hasher stands).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.ensure_at(offset)?;
        self.file()?.write_all_at(data, offset)?;
        if let Some((at, h)) = self.hasher.as_mut() {
            h.update(data);
            *at += data.len() as u64;
        }
        if let Some(c) = self.chunk.as_mut() {
            c.update(data);
        }
        Ok(())
    }

    /// A second handle on the open file, for a flush that runs beside the writes
    /// (`Writer`'s early flush); None before the first write.
    pub fn flush_handle(&self) -> Option<io::Result<File>> {
        self.file.as_ref().map(File::try_clone)
    }

    /// fsync of the data.
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// The sha256 of everything written, when the hasher stands at `offset`.
    pub fn sha256_at(&self, offset: u64) -> Option<[u8; 32]> {
        match &self.hasher {
            Some((at, h)) if *at == offset => Some(h.clone().finalize().into()),
            _ => None,
        }
    }

    /// Forgets the hasher state (after a failed write): the next write re-establishes it.
    pub fn forget(&mut self) {
        self.hasher = None;
        self.chunk = None;
    }

    /// Forgets bytes after `offset`: the next write cuts the file back and re-hashes.
    pub fn discard_after(&mut self, offset: u64) -> io::Result<()> {
        self.hasher = None;
        self.chunk = None;
        let file = self.file()?;
        file.set_len(offset)?;
        file.sync_data()
    }

    /// Copies the first `len` bytes of another file to the end (concatenation), hashing them.
    pub fn append_from(
        &mut self,
        offset: u64,
        source: &std::path::Path,
        len: u64,
    ) -> io::Result<u64> {
        self.ensure_at(offset)?;
        let mut src = File::open(source)?.take(len);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = offset;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.write_at(at, &buf[..n])?;
            at += n as u64;
        }
        if at - offset != len {
            return Err(io::Error::other("a part is shorter than its record says"));
        }
        Ok(at)
    }
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

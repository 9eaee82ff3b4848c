//! Turns the PATH arguments into the list of files to send: folders recursively, in a stable
//! (byte-wise sorted) order, hidden entries skipped unless asked for.

use std::path::{Path, PathBuf};

/// One file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Its name relative to the argument it came from (`a/b.jpg` for `photos/a/b.jpg` under
    /// the argument `photos`; just the file name for a file argument). Unique in a run.
    pub rel: String,
    /// Size when walked.
    pub size: u64,
}

/// Why the arguments cannot be walked (usage error, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A PATH does not exist or cannot be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to send after filtering.
    #[error("no files to send (hidden files are skipped unless --hidden)")]
    Empty,
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Walks every argument; duplicates (the same file named twice) are sent once.
pub fn walk(paths: &[PathBuf], hidden: bool) -> Result<Vec<Input>, WalkError> {
    let mut out: Vec<Input> = Vec::new();
    for arg in paths {
        let meta = std::fs::metadata(arg).map_err(|source| WalkError::Unreadable {
            path: arg.clone(),
            source,
        })?;
        if meta.is_dir() {
            let prefix = arg
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            walk_dir(arg, &prefix, hidden, &mut out)?;
        } else {
            let name = arg
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_string_lossy().into_owned());
            out.push(Input {
                path: arg.clone(),
                rel: name,
                size: meta.len(),
            });
        }
    }
    // Same relative name from two arguments: keep both, disambiguated by position.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut dedup = Vec::with_capacity(out.len());
    let mut paths_seen = std::collections::HashSet::new();
    for mut input in out {
        let canonical = std::fs::canonicalize(&input.path).unwrap_or(input.path.clone());
        if !paths_seen.insert(canonical) {
            continue;
        }
        let n = seen.entry(input.rel.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            input.rel = format!("{}~{}", input.rel, n);
        }
        dedup.push(input);
    }
    if dedup.is_empty() {
        return Err(WalkError::Empty);
    }
    Ok(dedup)
}

fn walk_dir(dir: &Path, rel: &str, hidden: bool, out: &mut Vec<Input>) -> Result<(), WalkError> {
    let unreadable = |source| WalkError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if !hidden && is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (metadata, not symlink_metadata); a dangling link is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let child_rel = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        if meta.is_dir() {
            walk_dir(&path, &child_rel, hidden, out)?;
        } else if meta.is_file() {
            out.push(Input {
                path,
                rel: child_rel,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_recursive_and_skips_hidden() {
        let tmp = std::env::temp_dir().join(format!("olu-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let root = tmp.join("pics");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        for f in ["b.jpg", "a.png", ".hidden", "sub/c.wav", ".git/x"] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let rels = |v: Vec<Input>| v.into_iter().map(|i| i.rel).collect::<Vec<_>>();
        let plain = walk(std::slice::from_ref(&root), false).expect("walk");
        assert_eq!(rels(plain), ["pics/a.png", "pics/b.jpg", "pics/sub/c.wav"]);
        let all = walk(std::slice::from_ref(&root), true).expect("walk");
        assert_eq!(
            rels(all),
            [
                "pics/.git/x",
                "pics/.hidden",
                "pics/a.png",
                "pics/b.jpg",
                "pics/sub/c.wav"
            ]
        );
        assert!(matches!(
            walk(&[tmp.join("missing")], false),
            Err(WalkError::Unreadable { .. })
        ));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

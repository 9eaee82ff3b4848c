//! Where a prompt is, read from ComfyUI's `/history/{id}` and `/queue` (finished, running,
//! waiting, or unknown: lost), and what a finished prompt's history entry says: its failure,
//! or the output files to store.
//!
//! Results are always read from the history entry, never from WebSocket events, so they are
//! stored once whatever the socket delivered.

use std::collections::HashSet;

use outlast_protocol::{Failure, FailureCode};
use serde_json::{Value, json};

use super::client::{CallError, FileRef, Server};
use super::failure::{execution_failure, fail, interrupted_failure};
use super::graph::Graph;
use super::messages::Event;
use crate::backend::JobContext;
use crate::outputs::valid_name;

/// Where ComfyUI has the prompt.
#[derive(Debug)]
pub(super) enum Place {
    /// Finished: its history entry.
    Finished(Value),
    /// ComfyUI is running it.
    Running,
    /// Pending in ComfyUI's queue behind this many prompts (the running one included).
    Pending {
        /// Prompts ahead of it.
        ahead: usize,
    },
    /// ComfyUI knows nothing of it (it restarted).
    Unknown,
}

/// Asks ComfyUI where `prompt_id` is.
pub(super) async fn locate(server: &Server, prompt_id: &str) -> Result<Place, CallError> {
    if let Some(entry) = server.history(prompt_id).await? {
        return Ok(Place::Finished(entry));
    }
    let queue = server.queue().await?;
    match queue.find(prompt_id) {
        Some(None) => return Ok(Place::Running),
        Some(Some(ahead)) => return Ok(Place::Pending { ahead }),
        None => {}
    }
    // History is written before a prompt leaves the queue; it may have finished between the
    // two reads.
    Ok(match server.history(prompt_id).await? {
        Some(entry) => Place::Finished(entry),
        None => Place::Unknown,
    })
}

/// The failure a finished prompt's history entry reports, if it failed.
pub(super) fn entry_failure(graph: &Graph, entry: &Value) -> Option<Failure> {
    let status = entry.get("status").cloned().unwrap_or(Value::Null);
    if status.get("status_str").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let messages = status
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last = messages.iter().rev().find_map(|m| {
        let kind = m.get(0)?.as_str()?;
        match Event::from_parts(kind, m.get(1).cloned().unwrap_or(Value::Null)) {
            Event::ExecutionError(e) => Some(execution_failure(graph, &e)),
            Event::ExecutionInterrupted(e) => Some(interrupted_failure(graph, &e)),
            _ => None,
        }
    });
    Some(last.unwrap_or_else(|| {
        fail(
            FailureCode::BackendError,
            "ComfyUI reports the prompt failed, without details",
            Some(json!({"status": status})),
        )
    }))
}

/// Reads a finished prompt's history entry: stores its outputs, or returns its failure.
pub(super) async fn finish(
    ctx: &JobContext,
    graph: &Graph,
    server: &Server,
    entry: &Value,
) -> Result<(), Failure> {
    if let Some(failure) = entry_failure(graph, entry) {
        return Err(failure);
    }
    let mut taken: HashSet<String> = HashSet::new();
    for (node, file) in output_files(entry) {
        let mut name = safe_name(&file.filename);
        if !taken.insert(name.clone()) {
            name = safe_name(&format!("{node}-{}", file.filename));
            taken.insert(name.clone());
        }
        if ctx.existing_outputs.contains(&name) {
            continue; // stored by an attempt before a restart
        }
        let tmp = ctx.work_dir.join(format!("download-{name}"));
        let mime = server.download(&file, &tmp).await.map_err(|e| {
            fail(
                FailureCode::BackendUnavailable,
                format!(
                    "could not fetch output {:?} from ComfyUI: {e}",
                    file.filename
                ),
                None,
            )
        })?;
        let mime = if mime == "application/octet-stream" {
            crate::outputs::mime_for(&name).to_owned()
        } else {
            mime
        };
        ctx.output_file(&name, &mime, &tmp).await?;
    }
    Ok(())
}

/// The files of a history entry's `outputs`, in node order: `output` files, or the `temp` ones
/// (PreviewImage) when the workflow saves nothing.
fn output_files(entry: &Value) -> Vec<(String, FileRef)> {
    let mut nodes: Vec<(&String, &Value)> = entry
        .get("outputs")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    nodes.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let mut files = Vec::new();
    for (node, ui) in nodes {
        let Some(ui) = ui.as_object() else { continue };
        for list in ui.values() {
            for item in list.as_array().into_iter().flatten() {
                let (Some(filename), Some(kind)) = (
                    item.get("filename").and_then(Value::as_str),
                    item.get("type").and_then(Value::as_str),
                ) else {
                    continue;
                };
                files.push((
                    node.clone(),
                    FileRef {
                        filename: filename.to_owned(),
                        subfolder: item
                            .get("subfolder")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        kind: kind.to_owned(),
                    },
                ));
            }
        }
    }
    if files.iter().any(|(_, f)| f.kind == "output") {
        files.retain(|(_, f)| f.kind == "output");
    }
    files
}

/// An output name our store accepts, made from ComfyUI's file name.
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.len() > 128 {
        out = out[out.len() - 128..].to_owned();
    }
    if valid_name(&out) {
        out
    } else {
        "output.bin".into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn outputs_prefer_saved_files_in_node_order() {
        let entry = json!({"outputs": {
            "10": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
            "9": {"images": [{"filename": "a.png", "subfolder": "gw", "type": "output"}], "text": ["not a file"]},
            "3": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}
        }});
        let files = output_files(&entry);
        let names: Vec<&str> = files.iter().map(|(_, f)| f.filename.as_str()).collect();
        assert_eq!(names, ["a.png", "b.png"]);
        assert_eq!(files[0].1.subfolder, "gw");
        let only_temp = json!({"outputs": {"3": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}}});
        assert_eq!(output_files(&only_temp).len(), 1);
        assert_eq!(safe_name("my file (1).png"), "my_file__1_.png");
        assert_eq!(safe_name(".hidden"), "_hidden");
        assert_eq!(crate::outputs::mime_for("x.JPG"), "image/jpeg");
        assert_eq!(crate::outputs::mime_for("x"), "application/octet-stream");
    }

    #[test]
    fn a_failed_entry_reports_its_last_error() {
        let graph = Graph::parse(
            &json!({"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
                    "1": {"class_type": "EmptyImage", "inputs": {}}}),
            &BTreeSet::new(),
        )
        .expect("valid");
        let ok = json!({"status": {"status_str": "success", "messages": []}, "outputs": {}});
        assert!(entry_failure(&graph, &ok).is_none());
        let failed = json!({"status": {"status_str": "error", "messages": [
            ["execution_start", {"prompt_id": "p"}],
            ["execution_error", {"prompt_id": "p", "node_id": "2", "node_type": "SaveImage", "exception_type": "OSError", "exception_message": "disk full"}]
        ]}});
        let f = entry_failure(&graph, &failed).expect("failed");
        assert_eq!(
            f.message,
            "node \"2\" (SaveImage) failed: OSError: disk full"
        );
        let bare = json!({"status": {"status_str": "error", "messages": []}});
        assert_eq!(
            entry_failure(&graph, &bare).expect("failed").message,
            "ComfyUI reports the prompt failed, without details"
        );
    }
}

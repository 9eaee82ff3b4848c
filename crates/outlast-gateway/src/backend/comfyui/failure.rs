//! ComfyUI's errors as our typed [`Failure`]s: a workflow refused by `POST /prompt` (HTTP 400
//! with `node_errors`), and a prompt that failed or was interrupted while it ran.

use outlast_protocol::{Failure, FailureCode};
use serde_json::{Value, json};

use super::graph::Graph;
use super::messages::{ExecutionError, ExecutionInterrupted};

/// A failure with this code, message and detail.
pub(super) fn fail(
    code: FailureCode,
    message: impl Into<String>,
    detail: Option<Value>,
) -> Failure {
    Failure {
        code,
        message: message.into(),
        detail,
    }
}

/// Typed failure for HTTP 400 from `POST /prompt`, naming the first failing node.
pub(super) fn validation_failure(graph: &Graph, body: &Value) -> Failure {
    let error = body.get("error").cloned().unwrap_or(Value::Null);
    let node_errors = body
        .get("node_errors")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<&String> = node_errors.keys().collect();
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let Some(first) = ids.first() else {
        let message = match text(&error, "details").as_str() {
            "" => text(&error, "message"),
            d => format!("{}: {d}", text(&error, "message")),
        };
        return fail(
            FailureCode::InvalidWorkflow,
            format!("ComfyUI rejected the workflow: {message}"),
            Some(json!({"error": error, "node_errors": {}})),
        );
    };
    let reason = node_errors[*first]
        .get("errors")
        .and_then(|e| e.get(0))
        .map(|e| match text(e, "details").as_str() {
            "" => text(e, "message"),
            d => format!("{} ({d})", text(e, "message")),
        })
        .unwrap_or_else(|| text(&error, "message"));
    let more = match ids.len() {
        1 => String::new(),
        n => format!(" (and {} more node(s))", n - 1),
    };
    fail(
        FailureCode::InvalidWorkflow,
        format!(
            "ComfyUI rejected the workflow: {}: {reason}{more}",
            graph.describe(first)
        ),
        Some(json!({
            "node_id": first,
            "node_type": node_errors[*first].get("class_type").cloned().unwrap_or_else(|| json!(graph.class_type(first))),
            "node_title": graph.title(first),
            "error": error,
            "node_errors": node_errors,
        })),
    )
}

fn or_empty(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// Typed failure for `execution_error`: the node, the exception and the traceback's end.
pub(super) fn execution_failure(graph: &Graph, e: &ExecutionError) -> Failure {
    let node = e.node_id.as_deref().unwrap_or("?");
    let traceback: Vec<Value> = e
        .traceback
        .as_deref()
        .map(|t| t.iter().rev().take(20).rev().cloned().collect())
        .unwrap_or_default();
    fail(
        FailureCode::BackendError,
        format!(
            "{} failed: {}: {}",
            graph.describe(node),
            or_empty(&e.exception_type),
            or_empty(&e.exception_message).trim()
        ),
        Some(json!({
            "node_id": node,
            "node_type": or_empty(&e.node_type),
            "node_title": graph.title(node),
            "exception_type": or_empty(&e.exception_type),
            "exception_message": or_empty(&e.exception_message),
            "traceback": traceback,
        })),
    )
}

/// Typed failure for `execution_interrupted` (someone interrupted it in ComfyUI).
pub(super) fn interrupted_failure(graph: &Graph, e: &ExecutionInterrupted) -> Failure {
    let node = e.node_id.as_deref().unwrap_or("?");
    fail(
        FailureCode::BackendError,
        format!(
            "the prompt was interrupted in ComfyUI at {}",
            graph.describe(node)
        ),
        Some(json!({
            "node_id": node,
            "node_type": or_empty(&e.node_type),
            "node_title": graph.title(node),
        })),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::backend::comfyui::messages::Event;

    fn graph() -> Graph {
        Graph::parse(
            &json!({
                "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}, "_meta": {"title": "Save it"}}
            }),
            &BTreeSet::new(),
        )
        .expect("valid")
    }

    #[test]
    fn validation_errors_name_the_node_and_the_reason() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width", "extra_info": {}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        let f = validation_failure(&graph(), &body);
        assert_eq!(f.code, FailureCode::InvalidWorkflow);
        assert_eq!(
            f.message,
            "ComfyUI rejected the workflow: node \"1\" (EmptyImage): Value 0 smaller than min of 1 (width)"
        );
        let d = f.detail.expect("detail");
        assert_eq!(d["node_id"], "1");
        assert_eq!(d["node_type"], "EmptyImage");
        assert_eq!(d["error"]["type"], "prompt_outputs_failed_validation");

        let f = validation_failure(
            &graph(),
            &json!({"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}, "node_errors": {}}),
        );
        assert_eq!(
            f.message,
            "ComfyUI rejected the workflow: Prompt has no outputs"
        );
    }

    #[test]
    fn runtime_errors_name_the_node() {
        let Event::ExecutionError(e) = Event::from_parts(
            "execution_error",
            json!({"prompt_id": "p", "node_id": "2", "node_type": "SaveImage", "exception_message": "disk full\n", "exception_type": "OSError", "traceback": ["a", "b"]}),
        ) else {
            panic!("not an execution_error");
        };
        let f = execution_failure(&graph(), &e);
        assert_eq!(f.code, FailureCode::BackendError);
        assert_eq!(
            f.message,
            "node \"2\" (SaveImage \"Save it\") failed: OSError: disk full"
        );
        assert_eq!(f.detail.expect("detail")["traceback"], json!(["a", "b"]));

        let Event::ExecutionInterrupted(e) = Event::from_parts(
            "execution_interrupted",
            json!({"prompt_id": "p", "node_id": "1", "node_type": "EmptyImage"}),
        ) else {
            panic!("not an execution_interrupted");
        };
        let f = interrupted_failure(&graph(), &e);
        assert_eq!(
            f.message,
            "the prompt was interrupted in ComfyUI at node \"1\" (EmptyImage)"
        );
        assert_eq!(f.detail.expect("detail")["node_type"], "EmptyImage");
    }
}

//! The submitted ComfyUI graph (API format): checks, node titles and input placeholders.
//!
//! A job's inputs are Outlast uploads. A node input whose value is exactly
//! `{"$input": "<name>"}` names the job input `<name>`; before queueing, the adapter uploads
//! that file to ComfyUI and puts the name ComfyUI gave it (`subfolder/name`) in its place.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// The placeholder key.
pub const PLACEHOLDER: &str = "$input";

/// A checked API-format graph.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Map<String, Value>,
}

fn placeholder(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(m) if m.len() == 1 => m.get(PLACEHOLDER),
        _ => None,
    }
}

impl Graph {
    /// Checks the shape of `workflow` and that placeholders and job inputs match one to one.
    pub fn parse(workflow: &Value, inputs: &BTreeSet<String>) -> Result<Graph, String> {
        let Value::Object(nodes) = workflow else {
            return Err(
                "comfyui workflow: expected a JSON object of nodes in ComfyUI's API format".into(),
            );
        };
        if nodes.contains_key("nodes") && nodes.contains_key("links") {
            return Err(
                "comfyui workflow: this is ComfyUI's UI format; export the workflow with \
                        \"Export (API)\" and submit that"
                    .into(),
            );
        }
        if nodes.is_empty() {
            return Err("comfyui workflow: the graph has no nodes".into());
        }
        let mut used = BTreeSet::new();
        for (id, node) in nodes {
            let Value::Object(node) = node else {
                return Err(format!("comfyui workflow: node {id:?} is not an object"));
            };
            match node.get("class_type") {
                Some(Value::String(c)) if !c.is_empty() => {}
                _ => {
                    return Err(format!("comfyui workflow: node {id:?} has no class_type"));
                }
            }
            let Some(Value::Object(node_inputs)) = node.get("inputs") else {
                return Err(format!(
                    "comfyui workflow: node {id:?} has no \"inputs\" object"
                ));
            };
            for (input, value) in node_inputs {
                if let Some(name) = placeholder(value) {
                    let Value::String(name) = name else {
                        return Err(format!(
                            "comfyui workflow: node {id:?} input {input:?}: \"{PLACEHOLDER}\" must name a job input"
                        ));
                    };
                    if !inputs.contains(name) {
                        return Err(format!(
                            "comfyui workflow: node {id:?} input {input:?} uses job input {name:?}, \
                             which the job does not have"
                        ));
                    }
                    used.insert(name.clone());
                }
            }
        }
        if let Some(unused) = inputs.iter().find(|i| !used.contains(*i)) {
            return Err(format!(
                "comfyui workflow: job input {unused:?} is not used; put {{\"{PLACEHOLDER}\": \
                 {unused:?}}} where a node takes it"
            ));
        }
        Ok(Graph {
            nodes: nodes.clone(),
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for an empty graph (never, after `parse`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node's class, if the node exists.
    pub fn class_type(&self, node: &str) -> Option<&str> {
        self.nodes.get(node)?.get("class_type")?.as_str()
    }

    /// What people call the node: its `_meta.title`, else its class, else its id.
    pub fn title(&self, node: &str) -> String {
        let Some(n) = self.nodes.get(node) else {
            return node.to_owned();
        };
        n.get("_meta")
            .and_then(|m| m.get("title"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .or_else(|| n.get("class_type").and_then(Value::as_str))
            .unwrap_or(node)
            .to_owned()
    }

    /// `node "3" (KSampler "My sampler")`: how failures name a node.
    pub fn describe(&self, node: &str) -> String {
        match self.class_type(node) {
            Some(class) => {
                let title = self.title(node);
                if title == class {
                    format!("node {node:?} ({class})")
                } else {
                    format!("node {node:?} ({class} {title:?})")
                }
            }
            None => format!("node {node:?}"),
        }
    }

    /// The graph with every placeholder replaced by the ComfyUI file name of its input.
    pub fn substitute(&self, names: &BTreeMap<String, String>) -> Value {
        let mut nodes = self.nodes.clone();
        for node in nodes.values_mut() {
            if let Some(Value::Object(inputs)) = node.get_mut("inputs") {
                for value in inputs.values_mut() {
                    let replacement = placeholder(value)
                        .and_then(Value::as_str)
                        .and_then(|name| names.get(name));
                    if let Some(r) = replacement {
                        *value = Value::String(r.clone());
                    }
                }
            }
        }
        Value::Object(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn placeholders_are_checked_and_replaced() {
        let wf = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"$input": "photo"}}, "_meta": {"title": "Your photo"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        });
        let g = Graph::parse(&wf, &names(&["photo"])).expect("valid");
        assert_eq!(g.title("1"), "Your photo");
        assert_eq!(g.title("2"), "SaveImage");
        assert_eq!(g.describe("1"), "node \"1\" (LoadImage \"Your photo\")");
        let out = g.substitute(&BTreeMap::from([(
            "photo".to_owned(),
            "outlast/a.png".to_owned(),
        )]));
        assert_eq!(out["1"]["inputs"]["image"], json!("outlast/a.png"));
        assert_eq!(out["2"]["inputs"]["images"], json!(["1", 0]));

        let err = Graph::parse(&wf, &names(&[])).expect_err("unknown input");
        assert!(err.contains("\"photo\""), "{err}");
        let err = Graph::parse(&wf, &names(&["photo", "extra"])).expect_err("unused input");
        assert!(err.contains("\"extra\" is not used"), "{err}");
    }

    #[test]
    fn shapes_that_are_not_api_graphs_are_refused() {
        for (wf, want) in [
            (json!([]), "JSON object"),
            (json!({}), "no nodes"),
            (json!({"nodes": [], "links": []}), "Export (API)"),
            (json!({"1": {"inputs": {}}}), "no class_type"),
            (json!({"1": {"class_type": "X"}}), "no \"inputs\""),
            (json!({"1": 5}), "not an object"),
            (
                json!({"1": {"class_type": "X", "inputs": {"a": {"$input": 3}}}}),
                "must name a job input",
            ),
        ] {
            let err = Graph::parse(&wf, &names(&[])).expect_err("refused");
            assert!(err.contains(want), "{wf}: {err}");
        }
    }
}

//! Prompt validation as ComfyUI's `validate_prompt`/`validate_inputs` do it (execution.py
//! 966-1073): the same error types, messages and `node_errors` shape, so a 400 from the
//! stand-in reads like one from ComfyUI.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::nodes::{self, NodeDef, int_value, py_float, py_str, to_float, to_int};

/// A prompt that may be queued.
#[derive(Debug)]
pub struct Valid {
    /// Output nodes that validated (`outputs_to_execute`).
    pub outputs: Vec<String>,
    /// Errors of outputs that were dropped (may be non-empty).
    pub node_errors: Value,
}

/// A rejected prompt: the `error` and `node_errors` of the 400 body.
#[derive(Debug)]
pub struct Invalid {
    pub error: Value,
    pub node_errors: Value,
}

fn err(kind: &str, message: &str, details: &str) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": {}})
}

/// Sorts node ids the way people number them ("2" before "10").
pub fn sort_ids(ids: &mut [String]) {
    ids.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    });
}

/// The class of node `id`, if it has one.
pub fn class_of<'a>(prompt: &'a Map<String, Value>, id: &str) -> Option<&'a str> {
    prompt.get(id)?.get("class_type")?.as_str()
}

/// Validates `prompt`; `targets` is `partial_execution_targets`.
pub fn validate(
    prompt: &Value,
    targets: Option<&[String]>,
    input_dir: &Path,
) -> Result<Valid, Invalid> {
    let empty = Map::new();
    let graph = prompt.as_object().unwrap_or(&empty);
    let mut outputs = Vec::new();
    let mut ids: Vec<String> = graph.keys().cloned().collect();
    sort_ids(&mut ids);
    for id in &ids {
        let Some(class) = class_of(graph, id) else {
            return Err(Invalid {
                error: err(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    &format!("Node ID '#{id}'"),
                ),
                node_errors: json!({}),
            });
        };
        let Some(def) = nodes::find(class) else {
            return Err(Invalid {
                error: err(
                    "invalid_prompt",
                    &format!("Cannot execute because node {class} does not exist."),
                    &format!("Node ID '#{id}'"),
                ),
                node_errors: json!({}),
            });
        };
        if def.output_node && targets.is_none_or(|t| t.contains(id)) {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Err(Invalid {
            error: err("prompt_no_outputs", "Prompt has no outputs", ""),
            node_errors: json!({}),
        });
    }

    let mut v = Validator {
        graph,
        input_dir,
        done: HashMap::new(),
    };
    let mut good = Vec::new();
    let mut output_errors: Vec<Value> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        if v.node(o) {
            good.push(o.clone());
            continue;
        }
        if let Some((_, reasons)) = v.done.get(o) {
            output_errors.extend(reasons.iter().cloned());
        }
        let mut failed: Vec<&String> = v
            .done
            .iter()
            .filter(|(_, (ok, reasons))| !ok && !reasons.is_empty())
            .map(|(id, _)| id)
            .collect();
        failed.sort();
        for id in failed {
            let (_, reasons) = &v.done[id];
            let entry = node_errors.entry(id.clone()).or_insert_with(|| {
                json!({"errors": reasons, "dependent_outputs": [], "class_type": class_of(graph, id)})
            });
            if let Some(deps) = entry["dependent_outputs"].as_array_mut() {
                deps.push(json!(o));
            }
        }
    }
    if good.is_empty() {
        let details: Vec<String> = output_errors
            .iter()
            .map(|e| format!("{}: {}", py_str(&e["message"]), py_str(&e["details"])))
            .collect();
        return Err(Invalid {
            error: err(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                &details.join("\n"),
            ),
            node_errors: Value::Object(node_errors),
        });
    }
    Ok(Valid {
        outputs: good,
        node_errors: Value::Object(node_errors),
    })
}

struct Validator<'a> {
    graph: &'a Map<String, Value>,
    input_dir: &'a Path,
    /// Node id → (valid, reasons attached to that node).
    done: HashMap<String, (bool, Vec<Value>)>,
}

impl Validator<'_> {
    fn node(&mut self, id: &str) -> bool {
        if let Some((ok, _)) = self.done.get(id) {
            return *ok;
        }
        // Mark first so a cycle ends instead of recursing forever.
        self.done.insert(id.to_owned(), (true, Vec::new()));
        let Some(def) = class_of(self.graph, id).and_then(nodes::find) else {
            self.done.insert(id.to_owned(), (false, Vec::new()));
            return false;
        };
        let empty = Map::new();
        let inputs = self.graph[id]
            .get("inputs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut errors = Vec::new();
        let mut valid = true;
        for i in &def.inputs {
            match self.input(&def, i, inputs.get(i.name)) {
                Check::Ok => {}
                Check::Upstream => valid = false,
                Check::Err(e) => errors.push(e),
            }
        }
        let ok = valid && errors.is_empty();
        self.done.insert(id.to_owned(), (ok, errors));
        ok
    }

    fn input(&mut self, def: &NodeDef, i: &nodes::InputDef, val: Option<&Value>) -> Check {
        let x = i.name;
        let info = &i.config;
        let Some(val) = val else {
            return Check::Err(
                json!({"type": "required_input_missing", "message": "Required input is missing",
                "details": x, "extra_info": {"input_name": x}}),
            );
        };
        let kind = &info[0];
        let extra = info.get(1).cloned().unwrap_or_else(|| json!({}));
        if let Value::Array(link) = val {
            let (Some(from), Some(idx), 2) = (
                link.first().and_then(Value::as_str),
                link.get(1).and_then(Value::as_u64),
                link.len(),
            ) else {
                return Check::Err(json!({"type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [string, int]",
                    "details": x, "extra_info": {"input_name": x, "input_config": info, "received_value": val}}));
            };
            let received = class_of(self.graph, from)
                .and_then(nodes::find)
                .and_then(|d| d.outputs.get(idx as usize).map(|o| o.0));
            let Some(received) = received else {
                let msg = if self.graph.contains_key(from) {
                    "tuple index out of range".to_owned()
                } else {
                    format!("'{from}'")
                };
                return Check::Err(json!({"type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node", "details": msg,
                    "extra_info": {"input_name": x, "input_config": info, "exception_message": msg,
                        "exception_type": if self.graph.contains_key(from) {"IndexError"} else {"KeyError"},
                        "traceback": [], "linked_node": val}}));
            };
            let expected = match kind {
                Value::String(s) => s.as_str(),
                _ => "COMBO",
            };
            if received != expected && received != "*" && expected != "*" {
                return Check::Err(json!({"type": "return_type_mismatch",
                    "message": "Return type mismatch between linked nodes",
                    "details": format!("{x}, received_type({received}) mismatch input_type({expected})"),
                    "extra_info": {"input_name": x, "input_config": info, "received_type": received, "linked_node": val}}));
            }
            if !self.node(from) {
                return Check::Upstream;
            }
            return Check::Ok;
        }

        let converted = match kind.as_str() {
            Some("INT") => to_int(val).map(int_value),
            Some("FLOAT") => to_float(val).map(|f| json!(f)),
            Some("STRING") => Some(Value::String(py_str(val))),
            Some("BOOLEAN") => Some(Value::Bool(match val {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => false,
            })),
            _ => Some(val.clone()),
        };
        let Some(v) = converted else {
            let t = kind.as_str().unwrap_or("COMBO");
            return Check::Err(json!({"type": "invalid_input_type",
                "message": format!("Failed to convert an input value to a {t} value"),
                "details": format!("{x}, {}, invalid literal for {}() with base 10: '{}'", py_str(val), t.to_lowercase(), py_str(val)),
                "extra_info": {"input_name": x, "input_config": info, "received_value": val, "exception_message": "invalid literal"}}));
        };
        if let Some(n) = number(&v) {
            if let Some(min) = extra.get("min").and_then(number)
                && n < min
            {
                return Check::Err(json!({"type": "value_smaller_than_min",
                    "message": format!("Value {} smaller than min of {}", fmt_num(&v), fmt_num(&extra["min"])),
                    "details": x, "extra_info": {"input_name": x, "input_config": info, "received_value": v}}));
            }
            if let Some(max) = extra.get("max").and_then(number)
                && n > max
            {
                return Check::Err(json!({"type": "value_bigger_than_max",
                    "message": format!("Value {} bigger than max of {}", fmt_num(&v), fmt_num(&extra["max"])),
                    "details": x, "extra_info": {"input_name": x, "input_config": info, "received_value": v}}));
            }
        }
        // LoadImage validates its own `image` (VALIDATE_INPUTS), which skips the list check.
        if def.class == "LoadImage" && x == "image" {
            let name = py_str(&v);
            if crate::files::annotated_input(self.input_dir, &name).is_none() {
                return Check::Err(json!({"type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": format!("{} - Invalid image file: {name}", def.class),
                    "extra_info": {}}));
            }
            return Check::Ok;
        }
        if let Value::Array(options) = kind
            && !options.contains(&v)
        {
            let (list_info, config) = if options.len() > 20 {
                (format!("(list of length {})", options.len()), Value::Null)
            } else {
                (py_list(options), info.clone())
            };
            return Check::Err(
                json!({"type": "value_not_in_list", "message": "Value not in list",
                "details": format!("{x}: '{}' not in {list_info}", py_str(&v)),
                "extra_info": {"input_name": x, "input_config": config, "received_value": v}}),
            );
        }
        Check::Ok
    }
}

enum Check {
    Ok,
    /// A linked node failed; the reason is attached to it, not here.
    Upstream,
    Err(Value),
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn fmt_num(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => py_float(n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

fn py_list(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            Value::String(s) => format!("'{s}'"),
            other => py_str(other),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

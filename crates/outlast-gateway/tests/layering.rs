//! The gateway's layering, checked from its source: no module imports, directly or through
//! others, a module that imports it, and top-level modules only import layers below their own.
//!
//! Read as text: `crate::a::b` paths, `super::x` paths and paths through a file's own child
//! modules (`child::Item`) count as imports; comments and `#[cfg(test)]` modules do not.
//! Run: `cargo test -p outlast-gateway --test layering`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A top-level module may import only modules of a lower layer.
const LAYERS: &[&[&str]] = &[
    &["clock", "error", "metrics", "topics", "config"],
    &["hub", "auth"],
    &["store", "outputs"],
    &["backend", "webhooks"],
    &["jobs", "upload"],
    &["http"],
    &["gateway"],
];

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|layer| layer.contains(&top))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`; `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts.join("::")
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break; // test modules sit at the end of their file
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // A `//` inside a string (a URL) is kept; only a comment after code is cut.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn idents_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut start = 0;
    while let Some(i) = code[start..].find(prefix) {
        let at = start + i;
        start = at + prefix.len();
        let boundary = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if !boundary {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let mut segments = Vec::new();
        for seg in rest.split("::") {
            let ident: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() || ident.len() != seg.len() && !segments.is_empty() {
                if !ident.is_empty() {
                    segments.push(ident);
                }
                break;
            }
            segments.push(ident.clone());
            if ident.len() != seg.len() {
                break;
            }
        }
        found.push(segments);
    }
    found
}

/// The deepest known module a path names (`a::b::Item` -> `a::b` when that is a module).
fn resolve(base: &[String], path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut best = None;
    let mut current: Vec<String> = base.to_vec();
    if !current.is_empty() || !path.is_empty() {
        for seg in path {
            current.push(seg.clone());
            let name = current.join("::");
            if modules.contains(&name) {
                best = Some(name);
            } else {
                break;
            }
        }
    }
    best.or_else(|| (!base.is_empty()).then(|| base.join("::")))
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read source");
            (module_of(&src, f), code_of(&text))
        })
        .collect();
    let modules: BTreeSet<String> = texts.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &texts {
        if module.is_empty() {
            continue; // the crate root declares everything; it is above every layer
        }
        let here: Vec<String> = module.split("::").map(str::to_owned).collect();
        let mut targets = BTreeSet::new();
        for path in idents_after(code, "crate::") {
            targets.extend(resolve(&[], &path, &modules));
        }
        let parent = &here[..here.len() - 1];
        for path in idents_after(code, "super::") {
            targets.extend(resolve(parent, &path, &modules));
        }
        // Paths through this module's own children (`use child::Item`, `child::f()`).
        for child in modules.iter().filter_map(|m| {
            m.strip_prefix(&format!("{module}::"))
                .filter(|rest| !rest.contains("::"))
        }) {
            if !idents_after(code, &format!("{child}::")).is_empty() {
                targets.insert(format!("{module}::{child}"));
            }
        }
        targets.remove(module);
        graph.insert(module.clone(), targets);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let graph = imports();
    assert!(graph.len() > 20, "the source was read: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let Some(from_layer) = layer_of(from) else {
            wrong.push(format!("{from} is in no layer"));
            continue;
        };
        for to in targets {
            let same_top = from.split("::").next() == to.split("::").next();
            if same_top {
                continue; // inside one module folder the circle check applies
            }
            match layer_of(to) {
                Some(l) if l < from_layer => {}
                _ => wrong.push(format!("{from} imports {to}")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_a_circle_when_there_is_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_owned()].into());
    graph.insert("b".into(), ["c".to_owned()].into());
    graph.insert("c".into(), ["a".to_owned()].into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let code = code_of("use crate::jobs::queue::FairQueue;\n// crate::http\nlet x = super::Y;\n");
    assert_eq!(
        idents_after(&code, "crate::"),
        vec![vec!["jobs".to_owned(), "queue".into(), "FairQueue".into()]]
    );
    assert_eq!(idents_after(&code, "super::"), vec![vec!["Y".to_owned()]]);
}

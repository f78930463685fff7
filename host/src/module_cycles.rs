//! The library's modules form no cycle: each top-level module may use the
//! ones below it, never one that (directly or through others) uses it. A
//! cycle makes two modules one (neither can be read, tested or replaced
//! alone), so this test names the first one that appears, with the lines
//! that close it.
//!
//! A module's dependencies are the `crate::<module>` paths in its files
//! (`use` lines and paths written inline), comments left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Test-only modules and crate-root items are not modules to order.
const IGNORED: &[&str] = &["fuzzing", "module_cycles"];

/// The top-level modules `lib.rs` declares.
fn modules(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .filter(|m| !IGNORED.contains(&m.as_str()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Edges `from → to` with the first `file:line` that makes each.
fn dependencies(src: &Path, modules: &BTreeSet<String>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for module in modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let rest = &code[at + "crate::".len()..];
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if modules.contains(&name) && &name != module {
                        let place = format!("{}:{}", file.strip_prefix(src).unwrap().display(), n + 1);
                        edges.entry(module.clone()).or_default().entry(name).or_insert(place);
                    }
                }
            }
        }
    }
    edges
}

/// A cycle through the graph, as the modules on it (first repeated last).
fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_module_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.len() > 5 && modules.contains("guest"), "{modules:?}");
    let edges = dependencies(&src, &modules);
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
            .collect();
        panic!("module cycle: {}\n{}", cycle.join(" -> "), steps.join("\n"));
    }
}

#[test]
fn a_cycle_is_found() {
    let edge = |to: &str| BTreeMap::from([(to.to_owned(), "x.rs:1".to_owned())]);
    let edges = BTreeMap::from([
        ("a".to_owned(), edge("b")),
        ("b".to_owned(), edge("c")),
        ("c".to_owned(), edge("a")),
    ]);
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    let edges = BTreeMap::from([("a".to_owned(), edge("b")), ("b".to_owned(), edge("c"))]);
    assert_eq!(find_cycle(&edges), None);
}

//! The crate's layering, checked from its sources: no module imports a module that imports it
//! back (a parent's own `mod`/`pub use` of its children aside), `cpu/` and `gpu/` are leaves
//! that reach only burn and the ops' shared types, model code calls ops and never a kernel or a
//! backend check, and no file is over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`ops::conv`, `""` for the crate root) → the file's text without its tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src dir").flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let path = e.path();
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let mut p = prefix.to_vec();
                if !matches!(name.as_str(), "mod" | "lib") {
                    p.push(name);
                }
                let text = std::fs::read_to_string(&path).expect("source");
                out.insert(p.join("::"), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut out);
    out
}

/// The code of a file before its `#[cfg(test)]` module, comments dropped.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::` or `super::`/`self::` (and `use` trees), resolved
/// against `module`, as module-path segment lists (item names included).
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let here: Vec<String> = module.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    // `use` trees: expand `a::{b, c::{d}}` into a::b, a::c::d.
    fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&inner[start..], &format!("{prefix}{head}"), out);
        } else if !tree.is_empty() {
            out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or(tree).trim()));
        }
    }
    let mut raw = Vec::new();
    for stmt in code.split(';') {
        let s = stmt.trim_start();
        let s = s
            .strip_prefix("pub(crate) ")
            .or_else(|| s.strip_prefix("pub "))
            .unwrap_or(s);
        if let Some(tree) = s.strip_prefix("use ") {
            expand(&tree.replace(char::is_whitespace, ""), "", &mut raw);
        }
    }
    // Inline paths: `crate::a::b`, `super::a`, `self::a`.
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0 && code[..i].chars().next_back().is_some_and(ident) {
                continue;
            }
            let tail: String = code[i..].chars().take_while(|&c| ident(c) || c == ':').collect();
            raw.push(tail);
        }
    }
    for p in raw {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<String> = match segs.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") | Some(&"self") => here.clone(),
            _ => continue,
        };
        let mut rest = &segs[..];
        if rest.first() == Some(&"crate") {
            rest = &rest[1..];
        }
        while let Some(&s) = rest.first() {
            match s {
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        base.extend(rest.iter().map(|s| s.to_string()));
        found.push(base);
    }
    found
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], modules: &BTreeMap<String, String>) -> String {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
        .unwrap_or_default()
}

fn is_within(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// module → the modules it imports (not counting a module's own descendants).
fn graph() -> (BTreeMap<String, String>, BTreeMap<String, BTreeSet<String>>) {
    let modules = modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &modules {
        let targets = paths(m, &code(text))
            .iter()
            .map(|p| resolve(p, &modules))
            .filter(|t| t != m && !is_within(t, m))
            .collect();
        edges.insert(m.clone(), targets);
    }
    (modules, edges)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let (_, edges) = graph();
    // Depth-first search for a path back to the start, from each module.
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, trail)) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if next == start {
                    cycles.push(format!("{} -> {start}", trail.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The check sees the edges it should (a parser that found nothing would pass).
    assert!(
        edges["models::unet_2d"].contains("ops"),
        "{:?}",
        edges["models::unet_2d"]
    );
    assert!(edges["ops::conv"].contains("cpu"), "{:?}", edges["ops::conv"]);
    assert!(edges["gpu::fused"].contains("ops::types"), "{:?}", edges["gpu::fused"]);
}

#[test]
fn kernels_are_leaves_and_models_call_ops() {
    let (modules, edges) = graph();
    let shared = ["ops::types", "ops::kernels"];
    for (m, targets) in &edges {
        for leaf in ["cpu", "gpu"] {
            if is_within(m, leaf) {
                let bad: Vec<_> = targets
                    .iter()
                    .filter(|t| !is_within(t, leaf) && !shared.contains(&t.as_str()))
                    .collect();
                assert!(bad.is_empty(), "{m} (a leaf) imports {bad:?}");
            }
        }
        if is_within(m, "models") {
            let bad: Vec<_> = targets
                .iter()
                .filter(|t| is_within(t, "cpu") || is_within(t, "gpu"))
                .collect();
            assert!(bad.is_empty(), "{m} calls kernels directly: {bad:?}");
            let text = code(&modules[m]);
            for check in ["on_gpu", "Device::flex", "try_into_primitive", "cfg(feature"] {
                assert!(!text.contains(check), "{m}: `{check}` in model code");
            }
        }
    }
}

#[test]
fn files_fit_one_sitting() {
    for (m, text) in modules() {
        let lines = text.lines().count();
        assert!(lines <= 600, "{m}: {lines} lines (600 at most)");
    }
}

//! Two checks of the shape of the code, for `cargo xtask test` (CI):
//!
//! * [`check`]: no import cycle between the modules of `agent` and of `qemu`. Every `.rs`
//!   file under `src/` is a module (`a/b.rs` and `a/b/mod.rs` are `crate::a::b`; `lib.rs` and
//!   `main.rs` are `crate`); its `use crate::…` / `use super::…` / `use self::…` lines and its
//!   `crate::x::…` / `super::x::…` paths in code are edges to the modules they name (the
//!   longest module prefix of the path). Test code is left out: inline `#[cfg(test)]` modules
//!   and `tests.rs` / `tests/` files. A cycle is reported with the modules in it.
//! * [`check_image_dependencies`]: the default image (`imds-unikernel` without features)
//!   links none of broker mode's crates (`cargo tree … -e normal`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates whose module graphs [`check`] reads, relative to the workspace root.
pub const CRATES: [&str; 2] = ["agent/src", "qemu/src"];

/// Crates the default image must not link at all.
pub const IMAGE_FORBIDDEN: [&str; 4] = [
    "embedded-tls",
    "embedded-io",
    "embedded-io-async",
    "embassy-futures",
];

/// Module graph of one crate: module path → the modules it uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// No import cycle in [`CRATES`] under `root` (the workspace root). Err: every cycle, with
/// its modules.
pub fn check(root: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    for krate in CRATES {
        let src = root.join(krate);
        let graph = module_graph(&src)?;
        for (modules, cycle) in components(&graph)
            .into_iter()
            .filter(|c| c.len() > 1)
            .zip(cycles(&graph))
        {
            problems.push(format!(
                "{krate}: import cycle between the modules {} (for example {})",
                modules.into_iter().collect::<Vec<_>>().join(", "),
                cycle.join(" -> ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Read every non-test `.rs` file under `src` (a crate's `src/`, without `src/bin/`, whose
/// files are other crates) into the module graph.
pub fn module_graph(src: &Path) -> Result<Graph, String> {
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    let mut sources = BTreeMap::new();
    for (module, path) in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        sources.insert(module, text);
    }
    Ok(graph_of(&sources))
}

/// The graph of modules given as (module path, source text).
pub fn graph_of(sources: &BTreeMap<String, String>) -> Graph {
    let modules: BTreeSet<&str> = sources.keys().map(String::as_str).collect();
    let mut graph = Graph::new();
    for (module, text) in sources {
        let edges = graph.entry(module.clone()).or_default();
        for path in referenced_paths(&strip_tests(text)) {
            if let Some(target) = resolve(module, &path, &modules) {
                if target != *module {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// Every cycle of the graph (one per strongly connected component of more than one module),
/// as the modules along it, the first one repeated at the end.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for component in components(graph) {
        if component.len() < 2 {
            continue;
        }
        let start = component.iter().next().expect("not empty").clone();
        // A shortest way back to `start` inside the component (breadth first).
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut found = None;
        'search: while let Some(m) = queue.pop_front() {
            for next in graph.get(&m).into_iter().flatten() {
                if !component.contains(next) {
                    continue;
                }
                if *next == start {
                    found = Some(m.clone());
                    break 'search;
                }
                if !prev.contains_key(next) {
                    prev.insert(next.clone(), m.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut path = Vec::new();
        let mut at = found.expect("a strongly connected component has a cycle");
        while at != start {
            path.push(at.clone());
            at = prev[&at].clone();
        }
        path.push(start.clone());
        path.reverse();
        path.push(start);
        out.push(path);
    }
    out
}

/// Strongly connected components (Tarjan), each as a sorted set.
fn components(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn collect(src: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let rel = path.strip_prefix(src).expect("under src");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if rel == Path::new("bin") || name == "tests" {
                continue;
            }
            collect(src, &path, out)?;
        } else if name.ends_with(".rs") && name != "tests.rs" && name != "build.rs" {
            out.push((module_of(rel), path));
        }
    }
    Ok(())
}

/// `a/b.rs`, `a/b/mod.rs` → `crate::a::b`; `lib.rs`, `main.rs` → `crate`.
pub fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    std::iter::once("crate".to_string())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

/// The text without comments and without inline `#[cfg(test)]` / `#[cfg(all(test, …))]`
/// modules.
fn strip_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let test_attr = t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test");
        if test_attr
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod ") && n.contains('{'))
        {
            // Skip to the module's closing brace.
            let mut depth = 0i32;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                if depth <= 0 && l.contains('}') {
                    break;
                }
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Module paths named by `use` items and by paths in code that start with `crate`, `super`
/// or `self`, each as its segments.
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use` items, braces expanded.
    let mut rest = code;
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let Some(end) = after.find(';') else { break };
        expand_use(after[..end].trim(), &mut Vec::new(), &mut out);
        rest = &after[end..];
    }
    // Paths in code.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let start = from + i;
            from = start + root.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let path: String = code[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out.retain(|p| {
        matches!(
            p.first().map(String::as_str),
            Some("crate" | "super" | "self")
        )
    });
    out
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let after = b.get(at + word.len()).copied().unwrap_or(b' ');
        if before_ok && after.is_ascii_whitespace() {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// `a::b::{c, d::{e, f}}` → `a::b::c`, `a::b::d::e`, `a::b::d::f` (appended to `out`).
fn expand_use(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    match tree.find('{') {
        None => {
            let mut p = prefix.clone();
            let name = tree.split(" as ").next().unwrap_or(tree);
            p.extend(
                name.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != "*")
                    .map(str::to_string),
            );
            out.push(p);
        }
        Some(open) => {
            let head: Vec<String> = tree[..open]
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let close = tree.rfind('}').unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let n = head.len();
            prefix.extend(head);
            for item in split_top_level(inner) {
                expand_use(item, prefix, out);
            }
            prefix.truncate(prefix.len() - n);
        }
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The module a path (from inside `module`) lands in: the longest known module prefix.
fn resolve(module: &str, path: &[String], modules: &BTreeSet<&str>) -> Option<String> {
    let mut segments: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            segments.push("crate".into());
            rest = &path[1..];
        }
        Some("self" | "super") => {
            segments.extend(module.split("::").map(str::to_string));
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        segments.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut candidate = segments.join("::");
    if modules.contains(candidate.as_str()) {
        best = Some(candidate.clone());
    }
    for s in rest {
        candidate = format!("{candidate}::{s}");
        if modules.contains(candidate.as_str()) {
            best = Some(candidate.clone());
        }
    }
    best
}

/// Crates in a `cargo tree --prefix depth` listing that the default image must not link:
/// [`IMAGE_FORBIDDEN`] anywhere, and `rand_core` as a dependency of `imds-agent` or
/// `imds-unikernel` themselves (p256's arithmetic links it underneath for its own traits;
/// broker mode's TLS session used it directly).
pub fn forbidden_in_tree(tree: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut found = BTreeSet::new();
    for line in tree.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else {
            continue;
        };
        let name = line[digits..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        stack.truncate(depth);
        let parent = stack.last().map(String::as_str);
        if IMAGE_FORBIDDEN.contains(&name.as_str())
            || (name == "rand_core" && matches!(parent, Some("imds-agent" | "imds-unikernel")))
        {
            found.insert(match parent {
                Some(p) => format!("{name} (from {p})"),
                None => name.clone(),
            });
        }
        stack.push(name);
    }
    found.into_iter().collect()
}

/// `cargo tree -p imds-unikernel --target x86_64-unknown-none -e normal` (the default image)
/// lists none of broker mode's crates ([`forbidden_in_tree`]).
pub fn check_image_dependencies(root: &Path) -> Result<(), String> {
    let mut tree = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    tree.current_dir(root).args([
        "tree",
        "-p",
        "imds-unikernel",
        "--target",
        "x86_64-unknown-none",
        "-e",
        "normal",
        "--prefix",
        "depth",
    ]);
    // Resolving the tree may wait for the package cache lock of a running build.
    let out = crate::run_with_timeout(tree, std::time::Duration::from_secs(600))?;
    let found = forbidden_in_tree(&String::from_utf8_lossy(&out.stdout));
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the default image (imds-unikernel without features) links broker-mode crates: {}",
            found.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn module_paths_of_files() {
        assert_eq!(module_of(Path::new("lib.rs")), "crate");
        assert_eq!(module_of(Path::new("net/mod.rs")), "crate::net");
        assert_eq!(
            module_of(Path::new("broker/task.rs")),
            "crate::broker::task"
        );
    }

    #[test]
    fn a_synthetic_cycle_is_reported_with_its_modules() {
        let g = graph_of(&sources(&[
            ("crate", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("crate::a", "use crate::b::{Thing, other::X};\n"),
            ("crate::b", "fn f() { let _ = super::c::make(); }\n"),
            ("crate::c", "use crate::{a::A, limits};\n"),
        ]));
        assert_eq!(
            cycles(&g),
            vec![vec!["crate::a", "crate::b", "crate::c", "crate::a"]]
        );
    }

    #[test]
    fn downward_edges_tests_and_comments_are_no_cycle() {
        let g = graph_of(&sources(&[
            ("crate", "pub mod broker;\npub mod imds;\n"),
            (
                "crate::broker",
                "pub mod task;\n/// Uses [`crate::imds::Agent`].\n",
            ),
            (
                "crate::broker::task",
                "use super::JobSpec;\n#[cfg(test)]\nmod tests {\n    use crate::imds::Agent;\n}\n",
            ),
            (
                "crate::imds",
                "use crate::broker::task::run; // crate::imds\n",
            ),
        ]));
        assert!(cycles(&g).is_empty(), "{g:?}");
        assert!(g["crate::imds"].contains("crate::broker::task"));
        assert!(g["crate::broker::task"].contains("crate::broker"));
    }

    #[test]
    fn the_repository_has_no_cycle() {
        check(&crate::root()).unwrap();
    }

    #[test]
    fn the_default_image_links_no_broker_crate() {
        check_image_dependencies(&crate::root()).unwrap();
    }

    #[test]
    fn broker_crates_in_a_tree_are_found() {
        let tree = "0imds-unikernel v0.1.0 (/w/qemu)\n\
                    1imds-agent v0.1.0 (/w/agent)\n\
                    2p256 v0.13.2\n\
                    3elliptic-curve v0.13.8\n\
                    4rand_core v0.6.4\n\
                    2heapless v0.9.1\n";
        assert!(forbidden_in_tree(tree).is_empty());
        let tree = format!("{tree}2rand_core v0.6.4\n2embedded-tls v0.19.0\n3embedded-io v0.7.1\n");
        assert_eq!(
            forbidden_in_tree(&tree),
            vec![
                "embedded-io (from embedded-tls)",
                "embedded-tls (from imds-agent)",
                "rand_core (from imds-agent)"
            ]
        );
    }
}

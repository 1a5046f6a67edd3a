//! The house's shape, checked: the server's top-level modules ("rooms") depend on each other
//! downward only. A `crate::room` path in a room's code (comments aside) is a dependency; the
//! graph must have no cycle, so every room can be read knowing only the rooms below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The room a file of `src/` belongs to: `src/x.rs` and `src/x/**` are room `x`.
fn room_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let room = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(room, "lib" | "main")).then(|| room.to_string())
}

/// The rooms a file's code names as `crate::room`, comments and strings of doc links aside.
fn dependencies(code: &str, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or(line);
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if rooms.contains(&name) {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::C}` groups.
        if let Some(group) = line.strip_prefix("use crate::{") {
            for part in group.split([',', '}']) {
                let name = part.trim().split("::").next().unwrap_or("").to_string();
                if rooms.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    deps
}

/// A cycle in `graph`, if any, as the rooms along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn room_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rooms: BTreeSet<String> = files.iter().filter_map(|f| room_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = rooms.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(room) = room_of(&src, file) else { continue };
        let code = std::fs::read_to_string(file).unwrap();
        let deps = dependencies(&code, &rooms);
        graph.get_mut(&room).unwrap().extend(deps.into_iter().filter(|d| *d != room));
    }
    graph
}

#[test]
fn rooms_depend_downward_only() {
    let graph = room_graph();
    assert!(graph.len() > 10, "found the rooms: {:?}", graph.keys());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle among the server's rooms: {}\n(graph: {graph:#?})", cycle.join(" -> "));
    }
}

#[test]
fn the_rooms_below_the_services_never_reach_up() {
    let graph = room_graph();
    // The socket task talks to the sessions service, never to the HTTP layer or the state bag;
    // the hub and the backplane know nothing of either.
    for (room, forbidden) in [
        ("socket", &["http", "state", "app"][..]),
        ("hub", &["http", "state", "sessions", "socket", "app"][..]),
        ("backplane", &["http", "state", "app"][..]),
        ("sessions", &["http", "state", "backplane", "socket", "ssf", "app"][..]),
        ("accounts", &["http", "state", "sessions", "app"][..]),
        ("store", &["http", "state", "sessions", "hub", "ssf", "app"][..]),
        // The Shared Signals transmitter reads the outbox the store writes and is woken by the
        // feed signal: it never calls the sessions service, and the sessions service never calls it.
        ("ssf", &["http", "state", "sessions", "socket", "hub", "backplane", "cli", "app"][..]),
    ] {
        let deps = &graph[room];
        for f in forbidden {
            assert!(!deps.contains(*f), "{room} depends on {f}: {deps:?}");
        }
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let rooms: BTreeSet<String> = ["store", "http"].iter().map(|s| s.to_string()).collect();
    let deps = dependencies("// crate::http\nuse crate::{store::Store, http};\nlet x = crate::store::f();", &rooms);
    assert_eq!(deps, rooms);
}

//! The module graph of `src/`, read from the source: which top-level module
//! uses which (`crate::<module>` outside comments), and the rules the
//! architecture keeps (docs/architecture.md): no cycle; the DIAL wire format
//! below everything; agents that never touch the response or the flow; one
//! module that talks to the host; the graph the docs show is the code's; and
//! each agent kind is one file and one row of the kinds table.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                // `crate::a::..`, or a group `crate::{a::.., b}` (on one line).
                let heads: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(str::trim)
                        .collect(),
                    None => vec![rest],
                };
                for head in heads {
                    let used: String = head
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !used.is_empty() && used != module {
                        uses.insert(used);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `node`, if there is one (depth-first search).
fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|n| n == node) {
        let mut cycle = path[start..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = module_graph();
    for (module, uses) in &graph {
        println!(
            "{module} -> {}",
            uses.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn layers_are_kept() {
    let graph = module_graph();
    let uses = |m: &str| graph.get(m).cloned().unwrap_or_default();
    let set = |items: &[&str]| {
        items
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    // The wire format and the small pure pieces stand on nothing of ours.
    assert_eq!(
        uses("wire"),
        set(&["limits"]),
        "wire/ has its own error type"
    );
    for leaf in ["client", "limits", "meter", "trace"] {
        assert_eq!(uses(leaf), BTreeSet::new(), "{leaf}");
    }
    assert_eq!(uses("error"), set(&["wire"]));
    assert_eq!(uses("config"), set(&["client", "error"]));
    assert!(
        uses("memory").is_subset(&set(&["config", "limits", "wire"])),
        "memory is read and written by the layers above it"
    );
    // Agents say what they have to say; they never write the response, run
    // the flow, or know the application.
    for forbidden in ["flow", "app", "host"] {
        assert!(
            !uses("agents").contains(forbidden),
            "agents use {forbidden}"
        );
    }
    // Calls know nothing of agents, memory, the flow or the application.
    for forbidden in ["agents", "memory", "flow", "app", "host"] {
        assert!(!uses("calls").contains(forbidden), "calls use {forbidden}");
    }
    for forbidden in ["app", "host"] {
        assert!(!uses("flow").contains(forbidden), "flow uses {forbidden}");
    }
    // Only the host adapter talks to the host and calls the app, and nothing
    // depends on the host adapter.
    for (module, deps) in &graph {
        assert!(!deps.contains("host"), "{module} uses host");
        if module != "host" {
            assert!(!deps.contains("app"), "{module} uses app");
        }
    }
}

/// The module graph docs/architecture.md shows (its `module-graph` block):
/// one `module -> uses, ...` line per top-level module.
fn documented_graph() -> BTreeMap<String, BTreeSet<String>> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let text = std::fs::read_to_string(doc).unwrap();
    let block = text
        .split("```text module-graph\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a ```text module-graph block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (module, uses) = line.split_once("->").expect("module -> uses");
            let uses = uses
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            (module.trim().to_owned(), uses)
        })
        .collect()
}

#[test]
fn the_documented_module_graph_is_the_code_s() {
    let code = module_graph();
    let doc = documented_graph();
    let show = |g: &BTreeMap<String, BTreeSet<String>>| {
        g.iter()
            .map(|(m, u)| {
                format!(
                    "{m} -> {}",
                    u.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        show(&doc),
        show(&code),
        "docs/architecture.md's module graph (left) differs from src/ (right)"
    );
}

/// The code of a source file: comments dropped, and the unit tests at its end
/// (everything from `#[cfg(test)]` on), which configure kinds by name.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or(""));
        code.push('\n');
    }
    code
}

/// Every `.rs` file under `src/`, by its path relative to `src/`.
fn source_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn each_agent_kind_is_one_file_and_one_row_and_nothing_else_matches_on_it() {
    use mas_coordinator::agents::kinds::KINDS;
    let files = source_files();
    assert!(!KINDS.is_empty());
    for kind in KINDS {
        let own = format!("agents/{}.rs", kind.name);
        let (_, text) = files
            .iter()
            .find(|(path, _)| *path == own)
            .unwrap_or_else(|| panic!("the {} kind has no file {own}", kind.name));
        assert!(
            text.contains("pub const KIND: Kind"),
            "{own} defines its row"
        );
        let literal = format!("\"{}\"", kind.name);
        for (path, text) in &files {
            if *path == own || path == "agents/kinds.rs" {
                continue;
            }
            let code = code_of(text);
            assert!(
                !code.contains(&literal),
                "{path} names the {} kind ({literal}): what differs per kind belongs in {own} and its row of KINDS",
                kind.name
            );
            assert!(
                !code.contains("::KIND"),
                "{path} uses a kind's row directly: go through agents::kinds"
            );
        }
    }
    // The rows themselves are only listed in the table.
    let table = &files
        .iter()
        .find(|(p, _)| p == "agents/kinds.rs")
        .unwrap()
        .1;
    for kind in KINDS {
        assert!(
            code_of(table).contains(&format!("super::{}::KIND", kind.name)),
            "KINDS lists {}",
            kind.name
        );
    }
}

//! The module graph of `world/src`, read from the source: which module uses which
//! (`crate::<name>` outside comments, the names of a `use crate::{..}` group
//! included). `lib.rs` declares every module and puts them together, so it uses
//! them all; a module that takes an item defined in `lib.rs` (`crate::World`)
//! uses `lib` and closes a cycle through it. The rules: no cycle, and the HTTP
//! plumbing knows no stand-in.
//!
//! `main.rs` is the binary's own crate (it sees the library as `mas_world`), so it
//! is not part of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The text of `path` without `//` comments (doc comments included).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first name of every path `code` takes from the crate root: `a` for
/// `crate::a::b`, `a` and `b` for `crate::{a::x, b}`.
fn crate_names(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.insert(ident(rest));
            continue;
        };
        // The top-level items of the group, up to its closing brace.
        let mut depth = 0;
        let mut item_start = true;
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && !c.is_whitespace() => {
                    names.insert(ident(&group[j..]));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    names.remove("");
    names.remove("self");
    names
}

/// The modules `lib.rs` declares (`mod name;`, any visibility).
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Module → the modules it uses (`lib` for the crate root).
fn graph_of(files: &BTreeMap<String, String>) -> Graph {
    let modules = declared_modules(files.get("lib").map_or("", String::as_str));
    files
        .iter()
        .map(|(module, text)| {
            let mut uses: BTreeSet<String> = crate_names(&code_of(text))
                .into_iter()
                .map(|name| {
                    if modules.contains(&name) {
                        name
                    } else {
                        // `crate::World`, `crate::control`: an item of lib.rs.
                        "lib".to_owned()
                    }
                })
                .collect();
            if module == "lib" {
                uses.extend(modules.iter().cloned());
            }
            uses.remove(module);
            (module.clone(), uses)
        })
        .collect()
}

/// `world/src`'s files by module name (`lib` for lib.rs), without main.rs.
fn source_files() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("world/src") {
        let path = entry.expect("a directory entry").path();
        assert!(
            !path.is_dir(),
            "{}: nested modules are not read by this check; extend it",
            path.display()
        );
        let Some(module) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".rs"))
        else {
            continue;
        };
        if module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        files.insert(module.to_owned(), text);
    }
    files
}

/// A cycle through `node`, if there is one (depth-first search).
fn find_cycle(
    graph: &Graph,
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
        if let Some(cycle) = find_cycle(graph, next, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

fn cycle_in(graph: &Graph) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| find_cycle(graph, module, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph_of(&source_files());
    for (module, uses) in &graph {
        println!(
            "{module} -> {}",
            uses.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(graph.contains_key("http") && graph["lib"].contains("http"));
    if let Some(cycle) = cycle_in(&graph) {
        panic!("import cycle in world/src: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_http_plumbing_knows_no_stand_in() {
    let graph = graph_of(&source_files());
    let allowed: BTreeSet<String> = ["fault", "json"].map(str::to_owned).into();
    let http = &graph["http"];
    assert!(
        http.is_subset(&allowed),
        "http.rs uses {http:?}; it may use only {allowed:?} (the stand-ins and the world's \
         state sit above it, and lib.rs gives serve() its handler)"
    );
}

#[test]
fn the_check_sees_grouped_imports_and_items_of_lib_and_skips_comments() {
    let files: BTreeMap<String, String> = [
        (
            "lib",
            "mod a;\npub(crate) mod b;\nmod c;\npub struct World;\n",
        ),
        (
            "a",
            "use crate::{\n    b::{X, Y},\n    c,\n};\n// crate::d is a comment\n",
        ),
        ("b", "/// Made by [`crate::World`]\nfn f() {}\n"),
        ("c", "fn g() -> crate::World { crate::World }\n"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_owned(), t.to_owned()))
    .collect();
    let graph = graph_of(&files);
    let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(graph["lib"], set(&["a", "b", "c"]));
    assert_eq!(graph["a"], set(&["b", "c"]));
    assert_eq!(graph["b"], set(&[]));
    assert_eq!(graph["c"], set(&["lib"]));
    assert_eq!(
        cycle_in(&graph),
        Some(vec!["a".into(), "c".into(), "lib".into(), "a".into()])
    );
}

//! The built component against the world in `wit/`: it may import only what
//! that world imports (standard `wasi:*` interfaces a plain WASI host has) and
//! must export the incoming HTTP handler. Uses `wasm-tools` (installed into
//! `.venv` by the test command) as the WIT parser.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wasm_tools() -> PathBuf {
    if let Some(p) = std::env::var_os("WASM_TOOLS") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/wasm-tools");
    assert!(
        venv.exists(),
        "wasm-tools not found at {}: run `make test` (it installs it), or set WASM_TOOLS",
        venv.display()
    );
    venv
}

fn built_component() -> PathBuf {
    let p = root().join("target/wasm32-wasip2/release/mas_coordinator.wasm");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --release --target wasm32-wasip2 -p mas-coordinator` (make test does)",
        p.display()
    );
    p
}

fn run(args: &[&str]) -> String {
    let out = Command::new(wasm_tools()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "wasm-tools {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Imports and exports of a component's root world, as `ns:pkg/iface@version`.
fn interfaces(component: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let wit = run(&["component", "wit", component.to_str().unwrap()]);
    let world = wit
        .split("world root {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("a root world");
    let pick = |kind: &str| -> BTreeSet<String> {
        world
            .lines()
            .filter_map(|l| l.trim().strip_prefix(kind))
            .map(|s| s.trim_end_matches(';').trim().to_owned())
            .collect()
    };
    (pick("import "), pick("export "))
}

/// A component with exactly the imports and exports of `world` in `wit_dir`.
fn world_component(wit_dir: &Path, world: &str, scratch: &Path) -> PathBuf {
    let core = scratch.join(format!("{world}.core.wasm"));
    let component = scratch.join(format!("{world}.wasm"));
    run(&[
        "component",
        "embed",
        wit_dir.to_str().unwrap(),
        "--world",
        world,
        "--dummy",
        "-o",
        core.to_str().unwrap(),
    ]);
    run(&[
        "component",
        "new",
        core.to_str().unwrap(),
        "-o",
        component.to_str().unwrap(),
    ]);
    component
}

/// `wasi:io/poll@0.2.6` → (`wasi:io/poll`, `0.2`): WASI 0.2.x patch versions are
/// compatible, which is how hosts link them.
fn compat_key(name: &str) -> (String, String) {
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    let major_minor: Vec<&str> = version.split('.').take(2).collect();
    (iface.to_owned(), major_minor.join("."))
}

/// What `component` imports or exports beyond the allowed world.
fn violations(component: &Path, allowed: &Path) -> Vec<String> {
    let (imports, exports) = interfaces(component);
    let (allowed_imports, allowed_exports) = interfaces(allowed);
    let allowed_imports: BTreeSet<_> = allowed_imports.iter().map(|n| compat_key(n)).collect();
    let allowed_exports: BTreeSet<_> = allowed_exports.iter().map(|n| compat_key(n)).collect();
    let mut out: Vec<String> = imports
        .iter()
        .filter(|n| !allowed_imports.contains(&compat_key(n)))
        .map(|n| format!("import {n}"))
        .collect();
    let exported: BTreeSet<_> = exports.iter().map(|n| compat_key(n)).collect();
    if exported != allowed_exports {
        out.push(format!("exports {exports:?} differ from the world's"));
    }
    out
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mas-component-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn built_component_imports_only_what_the_wit_world_allows() {
    let scratch = scratch_dir("world");
    let allowed = world_component(&root().join("wit"), "coordinator", &scratch);
    let component = built_component();
    run(&["validate", component.to_str().unwrap()]);
    assert_eq!(violations(&component, &allowed), Vec::<String>::new());
    let (imports, exports) = interfaces(&component);
    assert!(
        imports.iter().all(|i| i.starts_with("wasi:")),
        "{imports:?}"
    );
    assert!(
        exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2")),
        "{exports:?}"
    );
}

#[test]
fn the_check_rejects_a_spin_only_import() {
    // A component that also imports Spin's variables interface, as a call to
    // `spin_sdk::variables::get` would add: plain WASI hosts refuse to start it.
    let scratch = scratch_dir("spin");
    let wit = scratch.join("wit");
    std::fs::create_dir_all(wit.join("deps")).unwrap();
    for entry in std::fs::read_dir(root().join("wit/deps")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), wit.join("deps").join(entry.file_name())).unwrap();
    }
    std::fs::write(
        wit.join("deps/spin.wit"),
        "package fermyon:spin@2.0.0;\ninterface variables { get: func(name: string) -> string; }\n",
    )
    .unwrap();
    // wit-parser wants one root package per directory: ours goes into deps.
    std::fs::copy(
        root().join("wit/world.wit"),
        wit.join("deps/mas-coordinator.wit"),
    )
    .unwrap();
    std::fs::write(
        wit.join("spinny.wit"),
        "package mas:spinny;\nworld spinny {\n  include mas:coordinator/coordinator@0.1.0;\n  import fermyon:spin/variables@2.0.0;\n}\n",
    )
    .unwrap();
    let spinny = world_component(&wit, "spinny", &scratch);
    let allowed = world_component(&root().join("wit"), "coordinator", &scratch);
    assert_eq!(
        violations(&spinny, &allowed),
        vec!["import fermyon:spin/variables@2.0.0".to_owned()]
    );
}

#[test]
fn spin_kv_variant_adds_exactly_spin_key_value_and_variables() {
    // The `spin-kv` build keeps breaker states in Spin's key-value store and
    // reads configuration from Spin variables too: it is Spin-only by design,
    // and the check above must say exactly why.
    let variant = root().join("target/wasm32-wasip2/spin-kv/mas_coordinator.wasm");
    assert!(
        variant.exists(),
        "{} is missing: build it with `cargo build --profile spin-kv --features spin-kv --target wasm32-wasip2 -p mas-coordinator` (make test does)",
        variant.display()
    );
    let scratch = scratch_dir("kv");
    let allowed = world_component(&root().join("wit"), "coordinator", &scratch);
    let found: Vec<String> = violations(&variant, &allowed)
        .iter()
        .map(|v| v.split('@').next().unwrap_or(v).to_owned())
        .collect();
    assert_eq!(
        found,
        [
            "import fermyon:spin/key-value",
            "import fermyon:spin/variables"
        ],
        "{:?}",
        violations(&variant, &allowed)
    );
    assert!(violations(&variant, &allowed)
        .iter()
        .all(|v| v.contains("@2.")));
}

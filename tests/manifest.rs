//! `spin.toml` against the Spin manifest v2 reference (the fields, types and
//! rules documented for Spin 2–4), and against the component: the route covers
//! our endpoints, the source is what the build produces, every configuration
//! variable is a Spin variable whose defaults are the component's, and the
//! outbound allow-list covers the configured endpoints. Spin itself cannot be installed here, so this is the check.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;

use mas_coordinator::config::{Config, SECRET_VARIABLES, VARIABLES};
use toml::{Table, Value};

fn manifest() -> Table {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spin.toml")).unwrap();
    text.parse::<Table>().expect("spin.toml is valid TOML")
}

fn keys(t: &Table) -> BTreeSet<&str> {
    t.keys().map(String::as_str).collect()
}

fn assert_only(t: &Table, allowed: &[&str], what: &str) {
    let extra: Vec<&str> = keys(t)
        .into_iter()
        .filter(|k| !allowed.contains(k))
        .collect();
    assert!(
        extra.is_empty(),
        "{what} has fields the v2 reference does not define: {extra:?}"
    );
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Spin's rule for variable names: a lower-case letter, then lower-case
/// letters, digits and single underscores, not ending in one.
fn variable_name_ok(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `scheme://name[:port]`, as `allowed_outbound_hosts` entries must be.
fn is_outbound_host(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
    !scheme.is_empty()
        && !host.is_empty()
        && !host.contains('/')
        && (port.is_empty() || port == "*" || port.parse::<u16>().is_ok())
}

/// Spin's HTTP route matching: exact, or a `/...` wildcard prefix.
fn route_matches(route: &str, path: &str) -> bool {
    match route.strip_suffix("/...") {
        Some(prefix) => path.starts_with(&format!("{prefix}/")) || path == prefix,
        None => route == path,
    }
}

/// The allow-list entries with `{{ variable }}` replaced by the variable's default.
fn allowed_hosts(m: &Table) -> Vec<String> {
    let variables = m["variables"].as_table().unwrap();
    m["component"]["mas-coordinator"]["allowed_outbound_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let h = h.as_str().unwrap();
            match h.strip_prefix("{{").and_then(|x| x.strip_suffix("}}")) {
                Some(var) => variables[var.trim()]["default"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                None => h.to_owned(),
            }
        })
        .collect()
}

#[test]
fn manifest_follows_the_v2_reference() {
    let m = manifest();
    assert_only(
        &m,
        &[
            "spin_manifest_version",
            "application",
            "variables",
            "trigger",
            "component",
        ],
        "the manifest",
    );
    assert_eq!(m["spin_manifest_version"], Value::Integer(2));

    let app = m["application"].as_table().unwrap();
    assert_only(
        app,
        &["name", "version", "description", "authors", "trigger"],
        "[application]",
    );
    assert!(is_name(app["name"].as_str().unwrap()));
    let version = app["version"].as_str().unwrap();
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u64>().is_ok())
    );
    assert!(app["authors"].as_array().unwrap().iter().all(Value::is_str));

    let variables = m["variables"].as_table().unwrap();
    for (name, v) in variables {
        assert!(variable_name_ok(name), "variable name {name}");
        let v = v.as_table().unwrap();
        assert_only(v, &["description", "default", "required", "secret"], name);
        let required = v.get("required").and_then(Value::as_bool).unwrap_or(false);
        assert!(
            v.get("default").is_some_and(Value::is_str) || required,
            "variable {name} needs a string default or required = true"
        );
    }

    let components = m["component"].as_table().unwrap();
    for (id, c) in components {
        assert!(is_kebab(id), "component id {id} must be kebab-case");
        let c = c.as_table().unwrap();
        assert_only(
            c,
            &[
                "description",
                "source",
                "files",
                "exclude_files",
                "allowed_outbound_hosts",
                "key_value_stores",
                "environment",
                "build",
                "variables",
                "dependencies_inherit_configuration",
                "dependencies",
            ],
            id,
        );
        assert!(c["source"].is_str());
        for host in c["allowed_outbound_hosts"].as_array().unwrap() {
            let host = host.as_str().unwrap();
            match host.strip_prefix("{{").and_then(|h| h.strip_suffix("}}")) {
                Some(var) => {
                    let default = variables[var.trim()]["default"].as_str().unwrap();
                    assert!(is_outbound_host(default), "default of {var}: {default}");
                }
                None => assert!(is_outbound_host(host), "{host}"),
            }
        }
        if let Some(env) = c.get("environment") {
            for (k, v) in env.as_table().unwrap() {
                assert!(v.is_str(), "environment {k} must be a string");
            }
        }
        if let Some(vars) = c.get("variables") {
            for (k, v) in vars.as_table().unwrap() {
                assert!(variable_name_ok(k), "component variable name {k}");
                assert!(v.is_str(), "component variable {k} must be a string");
            }
        }
        let build = c["build"].as_table().unwrap();
        assert_only(build, &["command", "workdir", "watch"], "build");
        assert!(build["command"].is_str());
    }

    let triggers = m["trigger"]["http"].as_array().unwrap();
    assert!(!triggers.is_empty());
    for t in triggers {
        let t = t.as_table().unwrap();
        assert_only(t, &["route", "component", "executor"], "[[trigger.http]]");
        assert!(t["route"].as_str().unwrap().starts_with('/'));
        let component = t["component"].as_str().unwrap();
        assert!(
            components.contains_key(component),
            "trigger names unknown component {component}"
        );
    }
}

#[test]
fn manifest_fits_the_component() {
    let m = manifest();
    let triggers = m["trigger"]["http"].as_array().unwrap();
    for path in [
        "/openai/deployments/mas-coordinator/chat/completions",
        "/openai/deployments/mas-coordinator/rate",
        "/health",
    ] {
        assert!(
            triggers
                .iter()
                .any(|t| route_matches(t["route"].as_str().unwrap(), path)),
            "no route covers {path}"
        );
    }
    let c = m["component"]["mas-coordinator"].as_table().unwrap();
    // Spin runs the build whose breakers live in its key-value store, and
    // builds exactly that one.
    assert_eq!(
        c["source"].as_str(),
        Some("target/wasm32-wasip2/spin-kv/mas_coordinator.wasm")
    );
    assert_eq!(
        c["key_value_stores"].as_array().unwrap(),
        &vec![Value::String("default".to_owned())]
    );
    assert_eq!(
        c["build"]["command"].as_str(),
        Some("cargo build --profile spin-kv --features spin-kv --target wasm32-wasip2 -p mas-coordinator")
    );

    // Configuration comes from the Spin variables (read by the spin-kv build
    // as the lower-case names of config::VARIABLES): every one is declared,
    // mapped into the component unchanged, secret where it holds a secret,
    // and the defaults make the component's own default configuration. An
    // `environment` entry would shadow a variable, so there is none.
    assert!(
        c.get("environment").is_none(),
        "environment values would win over the Spin variables"
    );
    let app_vars = m["variables"].as_table().unwrap();
    let component_vars = c["variables"].as_table().unwrap();
    let expected: BTreeSet<String> = VARIABLES.iter().map(|v| v.to_ascii_lowercase()).collect();
    assert_eq!(
        component_vars.keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(app_vars.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (name, value) in component_vars {
        assert_eq!(value.as_str(), Some(format!("{{{{ {name} }}}}").as_str()));
        let secret = app_vars[name]
            .get("secret")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        assert_eq!(
            secret,
            SECRET_VARIABLES.contains(&name.to_ascii_uppercase().as_str()),
            "secret flag of {name}"
        );
    }
    let lookup = |k: &str| {
        app_vars
            .get(&k.to_ascii_lowercase())
            .and_then(|v| v.get("default"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let config =
        Config::from_lookup(lookup).expect("the manifest's defaults are a valid configuration");
    assert_eq!(config, Config::default());

    // Every endpoint the component calls is on the allow-list (by the variables' defaults).
    let allowed = allowed_hosts(&m);
    let ums = config.registry.get("UMS").unwrap().targets[0].id.clone();
    for endpoint in [&config.dial_endpoint, &ums] {
        assert!(
            allowed.contains(endpoint),
            "{endpoint} is not in allowed_outbound_hosts {allowed:?}"
        );
    }
}

#[test]
fn route_matching_follows_spin() {
    assert!(route_matches("/...", "/health"));
    assert!(route_matches("/api/...", "/api/x/y"));
    assert!(!route_matches("/api/...", "/apix"));
    assert!(route_matches("/health", "/health"));
    assert!(!route_matches("/health", "/health/x"));
}

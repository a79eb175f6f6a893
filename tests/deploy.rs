//! The deployment files under `deploy/`: every file parses, the SpinKube
//! manifests use only fields of spin-operator's `SpinApp` CRD
//! (core.spinkube.dev/v1alpha1, as in spinframework/spin-operator's
//! api/v1alpha1/spinapp_types.go), every ConfigMap and Secret reference
//! resolves to an object shipped beside it, the variables are the ones the
//! coordinator reads, and the key-value store the Spin manifest names is
//! configured as Redis both for `spin up` and for SpinKube. No cluster and no
//! Spin CLI run here, so this is the check.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mas_coordinator::config::{Config, SECRET_VARIABLES};
use serde::Deserialize;
use yaml_serde::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SPIN_APP_API_VERSION: &str = "core.spinkube.dev/v1alpha1";
/// The Spin manifest's component (spin.toml).
const COMPONENT: &str = "mas-coordinator";
/// Longer than the 16 characters the coordinator asks of a secret.
const TEST_SECRET: &str = "a-test-secret-of-32-characters!!";

// ---------------------------------------------------------------------------
// The SpinApp CRD, field for field (spin-operator v0.6: SpinAppSpec and the
// types it uses). `deny_unknown_fields` makes a misspelt or undocumented field
// fail the parse; Kubernetes types the CRD embeds whole (volumes, resources, …)
// are taken as they come.

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpinApp {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: SpinAppSpec,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[allow(dead_code)] // every field is parsed to check the schema; not all are read
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpinAppSpec {
    executor: Option<String>,
    image: String,
    #[serde(default)]
    image_pull_secrets: Vec<Value>,
    checks: Option<HealthChecks>,
    replicas: Option<i32>,
    enable_autoscaling: Option<bool>,
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    volumes: Vec<Value>,
    #[serde(default)]
    volume_mounts: Vec<Value>,
    #[serde(default)]
    variables: Vec<SpinVar>,
    #[serde(default)]
    service_annotations: BTreeMap<String, String>,
    #[serde(default)]
    deployment_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pod_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, String>,
    resources: Option<Resources>,
    components: Option<Vec<String>>,
    service_account_name: Option<String>,
    #[serde(default)]
    invocation_limits: BTreeMap<String, String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    limits: Option<BTreeMap<String, Value>>,
    requests: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthChecks {
    readiness: Option<HealthProbe>,
    liveness: Option<HealthProbe>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthProbe {
    http_get: Option<HttpHealthProbe>,
    initial_delay_seconds: Option<i32>,
    timeout_seconds: Option<i32>,
    period_seconds: Option<i32>,
    success_threshold: Option<i32>,
    failure_threshold: Option<i32>,
}

/// No `port`: the operator always probes the port it has Spin listen on (80).
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpHealthProbe {
    path: String,
    #[serde(default)]
    http_headers: Vec<NameValue>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuntimeConfig {
    load_from_secret: Option<String>,
    #[serde(default)]
    sqlite_databases: Vec<StoreConfig>,
    #[serde(default)]
    key_value_stores: Vec<StoreConfig>,
    llm_compute: Option<LlmCompute>,
}

/// `keyValueStores` and `sqliteDatabases` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Vec<RuntimeConfigOption>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmCompute {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Vec<RuntimeConfigOption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuntimeConfigOption {
    name: String,
    value: Option<String>,
    value_from: Option<RuntimeConfigVarSource>,
}

/// An option's source: a ConfigMap or a Secret key, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuntimeConfigVarSource {
    config_map_key_ref: Option<KeyRef>,
    secret_key_ref: Option<KeyRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpinVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvVarSource>,
}

/// Kubernetes' EnvVarSource, as the CRD embeds it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvVarSource {
    config_map_key_ref: Option<KeyRef>,
    secret_key_ref: Option<KeyRef>,
    field_ref: Option<Value>,
    resource_field_ref: Option<Value>,
    file_key_ref: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRef {
    name: Option<String>,
    key: String,
    optional: Option<bool>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Secret {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(rename = "type")]
    kind_of_secret: Option<String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    immutable: Option<bool>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigMap {
    api_version: String,
    kind: String,
    metadata: Metadata,
    /// Strings only: Kubernetes refuses a number or a boolean here.
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    binary_data: BTreeMap<String, String>,
    immutable: Option<bool>,
}

// ---------------------------------------------------------------------------
// Loading.

/// One YAML document of a file under deploy/.
#[derive(Debug)]
struct Doc {
    at: String,
    value: Value,
}

impl Doc {
    fn str_at(&self, path: &[&str]) -> Option<&str> {
        let mut v = &self.value;
        for key in path {
            v = v.get(*key)?;
        }
        v.as_str()
    }

    fn kind(&self) -> &str {
        self.str_at(&["kind"]).unwrap_or("")
    }

    fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or("")
    }

    fn typed<T: for<'de> Deserialize<'de>>(&self) -> T {
        yaml_serde::from_value(self.value.clone()).unwrap_or_else(|e| {
            panic!(
                "{} ({}) does not fit the {} schema (misspelt or undocumented field?): {e}",
                self.at,
                self.name(),
                self.kind()
            )
        })
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(ROOT).join("deploy")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn yaml_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", relative(path)));
        if value.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        docs.push(Doc {
            at: format!("{} (document {})", relative(path), i + 1),
            value,
        });
    }
    docs
}

/// Every document of every manifest under deploy/kubernetes.
fn kubernetes_docs() -> Vec<Doc> {
    let docs: Vec<Doc> = files_under(&deploy_dir().join("kubernetes"))
        .iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| yaml_docs(p))
        .collect();
    assert!(
        !docs.is_empty(),
        "deploy/kubernetes holds no manifest (*.yaml)"
    );
    docs
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn of_kind<'d>(docs: &'d [Doc], kind: &str) -> Vec<&'d Doc> {
    docs.iter().filter(|d| d.kind() == kind).collect()
}

/// The one SpinApp.
fn spin_app(docs: &[Doc]) -> SpinApp {
    let apps = of_kind(docs, "SpinApp");
    assert_eq!(
        apps.len(),
        1,
        "deploy/kubernetes should ship exactly one SpinApp, found {}",
        apps.len()
    );
    apps[0].typed()
}

fn secrets(docs: &[Doc]) -> BTreeMap<String, Secret> {
    of_kind(docs, "Secret")
        .into_iter()
        .map(|d| {
            let s: Secret = d.typed();
            (s.metadata.name.clone(), s)
        })
        .collect()
}

fn config_maps(docs: &[Doc]) -> BTreeMap<String, ConfigMap> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .map(|d| {
            let c: ConfigMap = d.typed();
            (c.metadata.name.clone(), c)
        })
        .collect()
}

fn spin_toml() -> toml::Table {
    let text = std::fs::read_to_string(Path::new(ROOT).join("spin.toml")).unwrap();
    text.parse().expect("spin.toml is valid TOML")
}

fn spin_toml_component() -> toml::Table {
    spin_toml()
        .get("component")
        .and_then(|c| c.get(COMPONENT))
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("spin.toml has no [component.{COMPONENT}]"))
        .clone()
}

/// The key-value stores the component is granted in spin.toml.
fn spin_toml_stores() -> Vec<String> {
    spin_toml_component()
        .get("key_value_stores")
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

fn runtime_config_toml() -> toml::Table {
    let path = deploy_dir().join("spin/runtime-config.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", relative(&path)));
    text.parse()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", relative(&path)))
}

/// Spin's rule for variable names (spin-expressions `Key::validate`): lower
/// case ASCII letters, digits and single underscores, starting with a letter
/// and ending with a letter or digit.
fn is_spin_variable_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("__")
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// What a `valueFrom` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ConfigMap,
    Secret,
}

/// Where a SpinApp variable or runtime option takes its value from.
fn source_of<'a>(
    what: &str,
    value: Option<&String>,
    config_map_key_ref: Option<&'a KeyRef>,
    secret_key_ref: Option<&'a KeyRef>,
    others: usize,
) -> Option<(Source, &'a KeyRef)> {
    let sources = usize::from(value.is_some())
        + usize::from(config_map_key_ref.is_some())
        + usize::from(secret_key_ref.is_some())
        + others;
    assert_eq!(
        sources, 1,
        "{what} must have exactly one of value, valueFrom.configMapKeyRef, valueFrom.secretKeyRef"
    );
    assert!(
        others == 0,
        "{what} takes its value from a source other than a ConfigMap or a Secret"
    );
    config_map_key_ref
        .map(|r| (Source::ConfigMap, r))
        .or(secret_key_ref.map(|r| (Source::Secret, r)))
}

fn variable_source(var: &SpinVar) -> Option<(Source, &KeyRef)> {
    let what = format!("SpinApp variable {}", var.name);
    match &var.value_from {
        None => source_of(&what, var.value.as_ref(), None, None, 0),
        Some(from) => {
            let others = usize::from(from.field_ref.is_some())
                + usize::from(from.resource_field_ref.is_some())
                + usize::from(from.file_key_ref.is_some());
            source_of(
                &what,
                var.value.as_ref(),
                from.config_map_key_ref.as_ref(),
                from.secret_key_ref.as_ref(),
                others,
            )
        }
    }
}

fn option_source<'a>(store: &str, opt: &'a RuntimeConfigOption) -> Option<(Source, &'a KeyRef)> {
    let what = format!("runtimeConfig store {store}, option {}", opt.name);
    let from = opt.value_from.as_ref();
    source_of(
        &what,
        opt.value.as_ref(),
        from.and_then(|f| f.config_map_key_ref.as_ref()),
        from.and_then(|f| f.secret_key_ref.as_ref()),
        0,
    )
}

/// The value a reference resolves to in the shipped objects, or why not.
fn resolve(docs: &[Doc], what: &str, source: Source, key_ref: &KeyRef) -> Result<String, String> {
    let Some(name) = key_ref.name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(format!("{what}: the reference names no object"));
    };
    let key = &key_ref.key;
    match source {
        Source::Secret => {
            let all = secrets(docs);
            let secret = all.get(name).ok_or_else(|| {
                format!(
                    "{what}: Secret {name} is not shipped in deploy/kubernetes (shipped: {:?})",
                    all.keys().collect::<Vec<_>>()
                )
            })?;
            secret.string_data.get(key).cloned().ok_or_else(|| {
                format!(
                    "{what}: Secret {name} has no key {key} in stringData (keys: {:?})",
                    secret.string_data.keys().collect::<Vec<_>>()
                )
            })
        }
        Source::ConfigMap => {
            let all = config_maps(docs);
            let map = all.get(name).ok_or_else(|| {
                format!(
                    "{what}: ConfigMap {name} is not shipped in deploy/kubernetes (shipped: {:?})",
                    all.keys().collect::<Vec<_>>()
                )
            })?;
            map.data.get(key).cloned().ok_or_else(|| {
                format!(
                    "{what}: ConfigMap {name} has no key {key} (keys: {:?})",
                    map.data.keys().collect::<Vec<_>>()
                )
            })
        }
    }
}

/// The configuration variables the SpinApp sets, by upper-case name, with the
/// values they resolve to in the shipped ConfigMaps and Secrets.
fn resolved_variables(docs: &[Doc]) -> BTreeMap<String, String> {
    let app = spin_app(docs);
    app.spec
        .variables
        .iter()
        .map(|var| {
            let value = match variable_source(var) {
                None => var.value.clone().unwrap(),
                Some((source, key_ref)) => resolve(
                    docs,
                    &format!("SpinApp variable {}", var.name),
                    source,
                    key_ref,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            };
            (var.name.to_ascii_uppercase(), value)
        })
        .collect()
}

/// The variables `Config::from_lookup` asks for, given these values, and its
/// verdict on them.
fn read_by_coordinator(
    values: &BTreeMap<String, String>,
) -> (BTreeSet<String>, Result<Config, String>) {
    let asked = RefCell::new(BTreeSet::new());
    let config = Config::from_lookup(|name| {
        asked.borrow_mut().insert(name.to_owned());
        values.get(name).cloned()
    })
    .map_err(|e| e.to_string());
    (asked.into_inner(), config)
}

/// The shipped values with the secrets' placeholders replaced by usable test
/// values, as a real deployment has them.
fn deployable_values(docs: &[Doc]) -> BTreeMap<String, String> {
    let mut values = resolved_variables(docs);
    for &var in SECRET_VARIABLES {
        if let Some(v) = values.get_mut(var) {
            TEST_SECRET.clone_into(v);
        }
    }
    values
}

/// `redis://` or `rediss://` with a host and a port: (host, port).
fn redis_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn every_file_under_deploy_parses() {
    let files = files_under(&deploy_dir());
    assert!(!files.is_empty(), "deploy/ holds no file");
    for path in &files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "yaml" | "yml" => {
                let docs = yaml_docs(path);
                assert!(
                    !docs.is_empty(),
                    "{} holds no YAML document",
                    relative(path)
                );
                for doc in &docs {
                    assert!(
                        doc.str_at(&["apiVersion"]).is_some()
                            && !doc.kind().is_empty()
                            && !doc.name().is_empty(),
                        "{} is not a Kubernetes object (apiVersion, kind, metadata.name)",
                        doc.at
                    );
                }
            }
            "toml" => {
                let text = std::fs::read_to_string(path).unwrap();
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", relative(path)));
            }
            _ => panic!(
                "{}: tests/deploy.rs checks YAML and TOML files only; teach it this one",
                relative(path)
            ),
        }
    }
}

#[test]
fn manifests_are_objects_of_known_kinds_in_one_namespace() {
    let known = [
        (SPIN_APP_API_VERSION, "SpinApp"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
    ];
    let docs = kubernetes_docs();
    let mut namespaces = BTreeSet::new();
    let mut names = BTreeSet::new();
    for doc in &docs {
        let api_version = doc.str_at(&["apiVersion"]).unwrap_or("");
        assert!(
            known.contains(&(api_version, doc.kind())),
            "{}: {api_version} {} is none of the kinds this test knows: {known:?}",
            doc.at,
            doc.kind()
        );
        assert!(
            names.insert((doc.kind().to_owned(), doc.name().to_owned())),
            "{}: a second {} named {}",
            doc.at,
            doc.kind(),
            doc.name()
        );
        namespaces.insert(doc.str_at(&["metadata", "namespace"]).map(str::to_owned));
    }
    assert_eq!(
        namespaces.len(),
        1,
        "the SpinApp reads its ConfigMaps, Secrets and executor in its own namespace: \
         all objects need the same metadata.namespace (or none), found {namespaces:?}"
    );
}

#[test]
fn spin_app_uses_only_crd_fields_and_runs_replicated_on_the_shim() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    assert_eq!(app.api_version, SPIN_APP_API_VERSION);
    assert_eq!(app.kind, "SpinApp");
    assert_eq!(
        app.spec.executor.as_deref(),
        Some("containerd-shim-spin"),
        "spec.executor should name the SpinAppExecutor of the Spin containerd shim"
    );
    let replicas = app.spec.replicas.unwrap_or(1);
    assert!(
        replicas >= 2,
        "spec.replicas is {replicas}: run at least 2, the breakers are shared through Redis"
    );
    assert_ne!(
        app.spec.enable_autoscaling,
        Some(true),
        "with enableAutoscaling spin-operator refuses spec.replicas"
    );
    let image = &app.spec.image;
    let (repo, tag) = image
        .rsplit_once(':')
        .filter(|(repo, tag)| !tag.contains('/') && repo.contains('/'))
        .unwrap_or_else(|| panic!("spec.image {image:?} should be registry/repository:tag"));
    assert!(
        repo.split('/').next().unwrap().contains('.'),
        "spec.image {image:?} should name its registry host (spin registry push needs one)"
    );
    assert_ne!(
        tag, "latest",
        "spec.image should pin a version, not :latest"
    );
    assert!(
        app.spec.components.is_none(),
        "spec.components would select components; the app has one, {COMPONENT}"
    );
}

#[test]
fn spin_app_probes_the_shallow_health_endpoint() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    let checks = app
        .spec
        .checks
        .as_ref()
        .expect("spec.checks should define readiness and liveness probes");
    for (which, probe) in [
        ("readiness", &checks.readiness),
        ("liveness", &checks.liveness),
    ] {
        let probe = probe
            .as_ref()
            .unwrap_or_else(|| panic!("spec.checks.{which} is missing"));
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("spec.checks.{which} needs httpGet (the only probe type)"));
        // The CRD has no port: the operator probes port 80, where it has the
        // shim's HTTP trigger listen (SPIN_HTTP_LISTEN_ADDR=0.0.0.0:80).
        // Readiness tells the truth about the configuration; liveness only
        // that the component serves (a restart cannot fix a configuration).
        let path = if which == "readiness" {
            "/health"
        } else {
            "/health/live"
        };
        assert_eq!(
            get.path, path,
            "spec.checks.{which}.httpGet.path should be the coordinator's GET {path} \
             (not ?deep=1, which calls every upstream)"
        );
        for (field, v) in [
            ("initialDelaySeconds", probe.initial_delay_seconds),
            ("timeoutSeconds", probe.timeout_seconds),
            ("periodSeconds", probe.period_seconds),
            ("successThreshold", probe.success_threshold),
            ("failureThreshold", probe.failure_threshold),
        ] {
            if let Some(v) = v {
                let min = if field == "initialDelaySeconds" { 0 } else { 1 };
                assert!(
                    v >= min,
                    "spec.checks.{which}.{field} is {v}, at least {min}"
                );
            }
        }
    }
    let liveness = checks.liveness.as_ref().unwrap();
    assert!(
        liveness.success_threshold.unwrap_or(1) == 1,
        "Kubernetes requires successThreshold 1 for a liveness probe"
    );
}

#[test]
fn spin_app_variables_are_the_coordinators_variables() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    assert!(!app.spec.variables.is_empty(), "spec.variables is empty");
    let mut seen = BTreeSet::new();
    for var in &app.spec.variables {
        assert!(
            is_spin_variable_name(&var.name),
            "SpinApp variable {:?} is not a valid Spin variable name \
             (lower-case letters, digits, single underscores)",
            var.name
        );
        assert!(
            seen.insert(&var.name),
            "SpinApp variable {} is set twice",
            var.name
        );
    }
    let values = deployable_values(&docs);
    let (asked, config) = read_by_coordinator(&values);
    if let Err(e) = config {
        panic!("the shipped values (secrets filled in) are not a valid configuration: {e}");
    }
    for name in values.keys() {
        assert!(
            asked.contains(name),
            "SpinApp variable {} maps to {name}, which the coordinator does not read \
             (it reads: {asked:?})",
            name.to_ascii_lowercase()
        );
    }
    // And the other way round: every variable of the coordinator is bound,
    // so the ConfigMap is the one place to tune a deployment. The AGENT_*
    // variables are per agent; the Spin manifest must declare them first.
    let unbound: Vec<&String> = asked
        .iter()
        .filter(|n| !n.starts_with("AGENT_") && !values.contains_key(*n))
        .collect();
    assert!(
        unbound.is_empty(),
        "the coordinator reads {unbound:?}, which the SpinApp does not bind \
         (add each, in lower case, to spec.variables and its value to the ConfigMap)"
    );
}

#[test]
fn secrets_come_from_a_secret_and_the_placeholders_are_refused() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    for &secret_var in SECRET_VARIABLES {
        let name = secret_var.to_ascii_lowercase();
        let var = app
            .spec
            .variables
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("spec.variables should bind {name}"));
        let source = variable_source(var).map(|(s, _)| s);
        assert_eq!(
            source,
            Some(Source::Secret),
            "{name} is a secret: take it from a Secret (valueFrom.secretKeyRef)"
        );
    }
    // The shipped Secret holds placeholders the coordinator refuses (secrets
    // are at least 16 characters), so a deployment that forgot to replace them
    // fails its readiness probe instead of running with a published secret.
    // STATE_SECRET_PREVIOUS is set only during a rotation: it ships empty.
    let values = resolved_variables(&docs);
    assert_eq!(values["STATE_SECRET_PREVIOUS"], "");
    for &secret_var in SECRET_VARIABLES {
        if secret_var == "STATE_SECRET_PREVIOUS" {
            continue;
        }
        let v = &values[secret_var];
        assert!(
            v.contains("CHANGE-ME") && v.len() < 16,
            "the shipped {secret_var} should be a short CHANGE-ME placeholder, not {v:?}"
        );
    }
    let (_, config) = read_by_coordinator(&values);
    let e = config.expect_err("the coordinator should refuse the placeholder secrets");
    assert!(e.contains("STATE_SECRET"), "unexpected error: {e}");
}

#[test]
fn every_reference_resolves_to_a_shipped_key_named_after_its_variable() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    let mut errors = Vec::new();
    for var in &app.spec.variables {
        if let Some((source, key_ref)) = variable_source(var) {
            let what = format!("SpinApp variable {}", var.name);
            if let Err(e) = resolve(&docs, &what, source, key_ref) {
                errors.push(e);
            }
            assert_ne!(
                key_ref.optional,
                Some(true),
                "{what}: an optional reference hides a missing key"
            );
            // One name throughout: dial_endpoint takes key DIAL_ENDPOINT.
            assert_eq!(
                key_ref.key,
                var.name.to_ascii_uppercase(),
                "{what} should read the key named after its configuration variable"
            );
        }
    }
    let runtime = app.spec.runtime_config.as_ref();
    let stores: Vec<&StoreConfig> = runtime
        .map(|r| {
            r.key_value_stores
                .iter()
                .chain(&r.sqlite_databases)
                .collect()
        })
        .unwrap_or_default();
    for store in stores {
        for opt in &store.options {
            if let Some((source, key_ref)) = option_source(&store.name, opt) {
                let what = format!("runtimeConfig store {}, option {}", store.name, opt.name);
                if let Err(e) = resolve(&docs, &what, source, key_ref) {
                    errors.push(e);
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "unresolved references:\n{}",
        errors.join("\n")
    );
}

#[test]
fn spin_app_puts_the_manifests_key_value_stores_in_redis() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    let stores = spin_toml_stores();
    assert!(
        stores.iter().any(|s| s == "default"),
        "spin.toml's [component.{COMPONENT}] should grant key_value_stores = [\"default\"]"
    );
    let runtime = app
        .spec
        .runtime_config
        .as_ref()
        .expect("spec.runtimeConfig should configure the key-value store");
    assert!(
        runtime.load_from_secret.is_none(),
        "runtimeConfig.loadFromSecret makes spin-operator ignore keyValueStores"
    );
    for store in &stores {
        let configured: Vec<&StoreConfig> = runtime
            .key_value_stores
            .iter()
            .filter(|s| &s.name == store)
            .collect();
        assert_eq!(
            configured.len(),
            1,
            "spin.toml grants key-value store {store:?}: runtimeConfig.keyValueStores should \
             configure it exactly once (else each pod keeps its own SQLite file)"
        );
        let kv = configured[0];
        assert_eq!(
            kv.kind, "redis",
            "key-value store {store} should be of type redis"
        );
        let names: Vec<&str> = kv.options.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            ["url"],
            "a redis key-value store takes exactly one option, url"
        );
        let url_opt = &kv.options[0];
        let source = option_source(&kv.name, url_opt);
        assert!(
            matches!(source, Some((Source::Secret, _))),
            "the Redis url of store {store} may carry a password: take it from a Secret"
        );
        let (source, key_ref) = source.unwrap();
        let url =
            resolve(&docs, "the Redis url", source, key_ref).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            redis_host_port(&url).is_some(),
            "the Redis url {url:?} should be redis://host:port or rediss://host:port"
        );
    }
    for kv in &runtime.key_value_stores {
        assert!(
            stores.contains(&kv.name),
            "runtimeConfig configures key-value store {:?}, which spin.toml does not grant",
            kv.name
        );
    }
}

#[test]
fn the_redis_url_points_at_the_shipped_redis_service() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    let kv = app
        .spec
        .runtime_config
        .as_ref()
        .and_then(|r| r.key_value_stores.first())
        .expect("spec.runtimeConfig.keyValueStores configures a store");
    let url_opt = kv.options.first().expect("the store has a url option");
    let (source, key_ref) = option_source(&kv.name, url_opt).expect("the url comes from a Secret");
    let url = resolve(&docs, "the Redis url", source, key_ref).unwrap_or_else(|e| panic!("{e}"));
    let (host, port) = redis_host_port(&url).unwrap();
    let services = of_kind(&docs, "Service");
    let service = services
        .iter()
        .find(|s| s.name() == host.split('.').next().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "the Redis url's host {host} is no Service shipped in deploy/kubernetes \
                 (shipped: {:?})",
                services.iter().map(|s| s.name()).collect::<Vec<_>>()
            )
        });
    let ports: Vec<u64> = service.value["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(port)),
        "the Redis url's port {port} is not a port of Service {} ({ports:?})",
        service.name()
    );
    // The Service selects the Redis pods.
    let selector = &service.value["spec"]["selector"];
    let deployments = of_kind(&docs, "Deployment");
    let selected = deployments.iter().any(|d| {
        let labels = &d.value["spec"]["template"]["metadata"]["labels"];
        let matches = &d.value["spec"]["selector"]["matchLabels"];
        selector
            .as_mapping()
            .is_some_and(|sel| sel.iter().all(|(k, v)| &labels[k] == v && &matches[k] == v))
    });
    assert!(
        selected,
        "Service {} selects no shipped Deployment's pods",
        service.name()
    );
}

#[test]
fn spin_runtime_config_puts_the_default_store_in_redis() {
    let config = runtime_config_toml();
    let top: Vec<&String> = config.keys().collect();
    assert_eq!(
        top,
        ["key_value_store"],
        "deploy/spin/runtime-config.toml should only configure key-value stores"
    );
    let stores = config["key_value_store"]
        .as_table()
        .expect("[key_value_store.<label>] tables");
    for label in spin_toml_stores() {
        let store = stores
            .get(&label)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| {
                panic!("spin.toml grants store {label:?}: add [key_value_store.{label}]")
            });
        assert_eq!(
            store.get("type").and_then(toml::Value::as_str),
            Some("redis"),
            "[key_value_store.{label}] should be type = \"redis\""
        );
        let keys: Vec<&String> = store.keys().collect();
        assert_eq!(
            keys,
            ["type", "url"],
            "a redis store takes type and url only"
        );
        let url = store["url"].as_str().expect("url is a string");
        assert!(
            redis_host_port(url).is_some(),
            "[key_value_store.{label}] url {url:?} should be redis://host:port or rediss://host:port"
        );
    }
}

/// What spin.toml's variable declarations ask of the SpinApp: a `required`
/// variable is bound, a `secret` one comes from a Secret.
fn declaration_problems(app: &SpinApp, manifest: &toml::Table) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(declared) = manifest.get("variables").and_then(toml::Value::as_table) else {
        return problems;
    };
    for (name, decl) in declared {
        let bound = app.spec.variables.iter().find(|v| &v.name == name);
        let flag = |key: &str| decl.get(key).and_then(toml::Value::as_bool) == Some(true);
        if flag("required") && bound.is_none() {
            problems.push(format!(
                "spin.toml declares {name} required: the SpinApp must bind it"
            ));
        }
        if let Some(var) = bound.filter(|_| flag("secret")) {
            if variable_source(var).map(|(s, _)| s) != Some(Source::Secret) {
                problems.push(format!(
                    "spin.toml declares {name} secret: bind it from a Secret"
                ));
            }
        }
    }
    problems
}

/// What keeps a SpinApp variable from reaching the component: Spin ignores a
/// value for an application variable the manifest does not declare, the
/// component sees only the variables mapped into it, and the component's
/// environment wins over a Spin variable of the same name.
fn reach_problems(app: &SpinApp, manifest: &toml::Table) -> Vec<String> {
    let table = |t: Option<&toml::Value>| {
        t.and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default()
    };
    let declared = table(manifest.get("variables"));
    let component = table(manifest.get("component").and_then(|c| c.get(COMPONENT)));
    let mapped = table(component.get("variables"));
    let environment = table(component.get("environment"));
    let mut problems = Vec::new();
    for var in &app.spec.variables {
        let name = &var.name;
        if !declared.contains_key(name) {
            problems.push(format!(
                "SpinApp variable {name} is not declared in spin.toml's [variables]"
            ));
        }
        let template = format!("{{{{ {name} }}}}");
        if mapped.get(name).and_then(toml::Value::as_str) != Some(template.as_str()) {
            problems.push(format!(
                "spin.toml's [component.{COMPONENT}.variables] should map {name} = \"{template}\""
            ));
        }
        let upper = name.to_ascii_uppercase();
        if environment.contains_key(&upper) {
            problems.push(format!(
                "spin.toml's [component.{COMPONENT}.environment] sets {upper}, which hides \
                 the SpinApp's {name}"
            ));
        }
    }
    problems
}

#[test]
fn spin_toml_required_and_secret_variables_are_bound_as_such() {
    let docs = kubernetes_docs();
    let problems = declaration_problems(&spin_app(&docs), &spin_toml());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn spin_app_variables_reach_the_component() {
    let docs = kubernetes_docs();
    let problems = reach_problems(&spin_app(&docs), &spin_toml());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The two spin.toml checks above, on manifests written for the purpose: one
/// as the SpinApp needs it, and ways to get it wrong.
#[test]
fn the_spin_toml_checks_tell_a_fitting_manifest_from_a_wrong_one() {
    let docs = kubernetes_docs();
    let app = spin_app(&docs);
    let mut fitting = String::from("[variables]\n");
    let mut mapping = format!("[component.{COMPONENT}.variables]\n");
    for var in &app.spec.variables {
        let secret = SECRET_VARIABLES.contains(&var.name.to_ascii_uppercase().as_str());
        fitting.push_str(&format!(
            "{} = {{ default = \"\", secret = {secret} }}\n",
            var.name
        ));
        mapping.push_str(&format!("{0} = \"{{{{ {0} }}}}\"\n", var.name));
    }
    let fitting =
        format!("{fitting}{mapping}[component.{COMPONENT}.environment]\nRUST_LOG = \"info\"\n");
    let manifest: toml::Table = fitting.parse().unwrap();
    assert_eq!(declaration_problems(&app, &manifest), Vec::<String>::new());
    assert_eq!(reach_problems(&app, &manifest), Vec::<String>::new());

    let wrong = |from: &str, to: &str| -> toml::Table {
        assert!(
            fitting.contains(from),
            "{from:?} is not in the fitting manifest"
        );
        fitting.replacen(from, to, 1).parse().unwrap()
    };
    // Undeclared, unmapped, shadowed by the environment.
    let m = wrong("dial_endpoint = { default", "dial_endpoint_x = { default");
    assert_eq!(reach_problems(&app, &m).len(), 1);
    let m = wrong(
        "dial_endpoint = \"{{ dial_endpoint }}\"",
        "dial_endpoint = \"x\"",
    );
    assert_eq!(reach_problems(&app, &m).len(), 1);
    let m = wrong("RUST_LOG = ", "DIAL_ENDPOINT = ");
    assert_eq!(reach_problems(&app, &m).len(), 1);
    // A required variable the SpinApp does not bind; a secret one it takes
    // from a ConfigMap.
    let m = wrong(
        "[variables]\n",
        "[variables]\nextra = { required = true }\n",
    );
    assert_eq!(declaration_problems(&app, &m).len(), 1);
    let m = wrong(
        "dial_endpoint = { default = \"\", secret = false }",
        "dial_endpoint = { default = \"\", secret = true }",
    );
    assert_eq!(declaration_problems(&app, &m).len(), 1);
}

#[test]
fn redis_url_parsing_accepts_only_redis_schemes_with_host_and_port() {
    assert_eq!(
        redis_host_port("redis://mas-coordinator-redis:6379"),
        Some(("mas-coordinator-redis".to_owned(), 6379))
    );
    assert_eq!(
        redis_host_port("rediss://:pw@redis.example.com:6380/0"),
        Some(("redis.example.com".to_owned(), 6380))
    );
    assert_eq!(redis_host_port("http://redis:6379"), None);
    assert_eq!(redis_host_port("redis://redis"), None);
    assert_eq!(redis_host_port("redis://:6379"), None);
    assert!(is_spin_variable_name("dial_endpoint"));
    assert!(!is_spin_variable_name("DIAL_ENDPOINT"));
    assert!(!is_spin_variable_name("agent_rag__kind"));
    assert!(!is_spin_variable_name("_x"));
}

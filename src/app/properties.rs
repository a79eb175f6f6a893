//! Application properties: one deployment of the coordinator serving many
//! DIAL applications, each with its own agents, mode and prompts.
//!
//! DIAL admins register the coordinator as an application *type*: DIAL Core
//! reads the JSON Schema of its properties from `GET /v1/schema`
//! ([`type_schema`]), validates every application instance's properties
//! against it when the instance is saved, and sends them with every request
//! to the instance, in the `X-DIAL-APPLICATION-PROPERTIES` header (compact
//! JSON; Core drops any copy a client sent), beside `X-DIAL-APPLICATION-ID`
//! (the instance's name). docs/dial-core.md has the details.
//!
//! The properties are this request's configuration on top of the
//! environment's: each property stands for the variable of the same meaning
//! (`coordination_mode` for `COORDINATION_MODE`, an agent's `deployment` for
//! `AGENT_<NAME>_DEPLOYMENT`, ...), and the configuration is read again
//! through a lookup that answers those first ([`configure`]). So a property is
//! checked exactly as its variable is, and the environment supplies what the
//! properties leave out: secrets, limits, timeouts, and the agents they name
//! without a target.
//!
//! Properties are written by application owners, not by the operator, so
//! they cannot reach what the operator did not allow:
//! - an agent whose target (`deployment` or `endpoint`) the properties set is
//!   configured by the properties alone: the environment's variables of that
//!   agent (its backups, its credential) are not read for it, so an
//!   operator's credential is never sent to an endpoint an owner chose;
//! - an endpoint the properties name must be on an origin the environment
//!   allows: `ALLOWED_AGENT_HOSTS`, and the origins of every endpoint the
//!   environment itself configures (DIAL deployments are reached through
//!   DIAL Core, which checks the per-request key, so they need no list);
//! - limits, timeouts, state secrets and the LLM deployment are not
//!   properties at all.
//!
//! Invalid properties are a 400 naming each property that is wrong
//! ([`CoordError::Properties`]); the next request is unaffected. Parsing is
//! bounded ([`MAX_HEADER_BYTES`], [`MAX_AGENTS`]) and its result is kept per
//! header value in the instance ([`CACHE_ENTRIES`] of them).

use std::cell::RefCell;
use std::collections::HashSet;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::agents::kinds::{read_registry, KINDS};
use crate::config::registry::is_valid_name;
use crate::config::{origin, Config, CoordinationMode};
use crate::error::{ConfigProblem, CoordError};

/// The header DIAL Core sends an application instance's properties in.
pub const PROPERTIES_HEADER: &str = "x-dial-application-properties";
/// The header DIAL Core names the application instance in.
pub const APPLICATION_ID_HEADER: &str = "x-dial-application-id";
/// The path of the application type schema.
pub const SCHEMA_PATH: &str = "/v1/schema";
/// The id of DIAL's meta-schema of application type schemas.
pub const DIAL_META_SCHEMA: &str = "https://dial.epam.com/application_type_schemas/schema#";
/// The schema's `$id` when `PUBLIC_URL` is not set.
pub const DEFAULT_SCHEMA_ID: &str = "urn:mas-coordinator:application-type";
/// What DIAL shows as the application type.
pub const DISPLAY_NAME: &str = "Multi-agent coordinator";
/// The deployment name in the endpoints the schema names.
pub const TYPE_DEPLOYMENT: &str = "mas-coordinator";
/// Largest properties header read.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most agents of one application.
pub const MAX_AGENTS: usize = 32;
/// How many parsed headers an instance keeps.
pub const CACHE_ENTRIES: usize = 16;

/// The properties of one application instance. Every property is optional:
/// what is not set comes from the deployment's environment.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Multi-agent coordinator")]
pub struct Properties {
    /// The agents this application's coordinator may call, in order. An agent
    /// named without a deployment or endpoint is the deployment's agent of
    /// that name (its targets and credentials come from the environment).
    /// Not set: the deployment's agents.
    #[schemars(length(min = 1, max = 32))]
    pub agents: Option<Vec<AgentProperties>>,
    /// `plan`: a plan of subtasks over the agents, run in parallel where it
    /// can be. `route`: one agent per request.
    #[schemars(extend("enum" = ["plan", "route"]))]
    pub coordination_mode: Option<String>,
    /// Which plans wait for the user's approval: `never`, `multi-agent`
    /// (plans of several subtasks, or using an agent marked `confirm`) or
    /// `always`.
    #[schemars(extend("enum" = ["never", "multi-agent", "always"]))]
    pub plan_approval: Option<String>,
    /// Most subtasks of one plan.
    #[schemars(range(min = 1, max = 32))]
    pub max_subtasks: Option<u32>,
    /// Most subtasks running at once.
    #[schemars(range(min = 1, max = 16))]
    pub max_parallel: Option<u32>,
    /// Instructions added to the coordination prompt (which agents serve
    /// which requests, when to ask the user).
    #[schemars(length(max = 4000))]
    pub coordination_prompt: Option<String>,
    /// Instructions added to the prompt of the final answer (tone, language,
    /// format).
    #[schemars(length(max = 4000))]
    pub synthesis_prompt: Option<String>,
}

/// One agent of an application.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentProperties {
    /// Its name: capital letters, digits and `_`, starting with a letter.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[A-Z][A-Z0-9_]*$"))]
    pub name: String,
    /// How it is called (`dial`: a DIAL deployment; `ums`: a UMS agent
    /// service; `a2a`: an Agent2Agent agent). `GPA` and `UMS` have a default.
    pub kind: Option<String>,
    /// The DIAL deployment of a `dial` agent.
    pub deployment: Option<String>,
    /// The base URL of a `ums` or `a2a` agent.
    pub endpoint: Option<String>,
    /// Backup deployments or endpoints, tried in order when it fails.
    #[schemars(length(max = 8))]
    pub backups: Option<Vec<String>>,
    /// What the coordination prompt says it is for (an `a2a` agent can
    /// describe itself).
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// How messages to the user name it ("the travel agent").
    #[schemars(length(max = 100))]
    pub display_name: Option<String>,
    /// It acts (writes, sends, deletes): with `plan_approval` `multi-agent`,
    /// a plan that uses it waits for the user's approval.
    pub confirm: Option<bool>,
}

/// The application type schema DIAL Core reads from `GET /v1/schema`: the
/// JSON Schema of [`Properties`] (draft-07, subschemas inlined), each
/// top-level property with its `dial:meta`, and the root keywords of DIAL's
/// meta-schema. `base` is the coordinator's public base URL (`PUBLIC_URL`,
/// else what the request reached).
pub fn type_schema(base: &str) -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<Properties>().to_value();
    tidy(&mut schema);
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    if let Some(kind) = schema.pointer_mut("/properties/agents/items/properties/kind") {
        kind["enum"] = json!(kinds);
    }
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            let order = PROPERTY_NAMES
                .iter()
                .position(|n| n == name)
                .unwrap_or(PROPERTY_NAMES.len());
            if let Value::Object(p) = property {
                p.insert(
                    "dial:meta".to_owned(),
                    json!({"dial:propertyOrder": order, "dial:propertyKind": "server"}),
                );
            }
        }
    }
    let base = base.trim_end_matches('/');
    let id = if base.is_empty() {
        DEFAULT_SCHEMA_ID.to_owned()
    } else {
        format!("{base}{SCHEMA_PATH}")
    };
    if let Value::Object(root) = &mut schema {
        root.insert("$schema".to_owned(), json!(DIAL_META_SCHEMA));
        root.insert("$id".to_owned(), json!(id));
        root.insert(
            "dial:applicationTypeDisplayName".to_owned(),
            json!(DISPLAY_NAME),
        );
        root.insert(
            "dial:applicationTypeCompletionEndpoint".to_owned(),
            json!(format!(
                "{base}/openai/deployments/{TYPE_DEPLOYMENT}/chat/completions"
            )),
        );
        root.insert(
            "dial:applicationTypeConfigurationEndpoint".to_owned(),
            json!(format!(
                "{base}/openai/deployments/{TYPE_DEPLOYMENT}/configuration"
            )),
        );
    }
    schema
}

/// What schemars writes that the properties do not mean: `"type": [T,
/// "null"]` for an optional property (an unset property is left out, never
/// `null`), and `"format": "uint32"` (and the like) on integers, which is no
/// JSON Schema format.
fn tidy(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type") {
                if let [only, null] = types.as_slice() {
                    if null == "null" {
                        let only = only.clone();
                        map.insert("type".to_owned(), only);
                    }
                }
            }
            if let Some(Value::String(text)) = map.get_mut("description") {
                // Doc comments wrap lines; a form shows one paragraph.
                *text = text.replace('\n', " ");
            }
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint") || f.starts_with("int"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The names of the top-level properties, in the order of the schema.
pub const PROPERTY_NAMES: &[&str] = &[
    "agents",
    "coordination_mode",
    "plan_approval",
    "max_subtasks",
    "max_parallel",
    "coordination_prompt",
    "synthesis_prompt",
];

/// The variable each top-level property stands for.
const TOP_LEVEL: &[(&str, &str)] = &[
    ("coordination_mode", "COORDINATION_MODE"),
    ("plan_approval", "PLAN_APPROVAL"),
    ("max_subtasks", "MAX_SUBTASKS"),
    ("max_parallel", "MAX_PARALLEL"),
    ("coordination_prompt", "COORDINATION_PROMPT"),
    ("synthesis_prompt", "SYNTHESIS_PROMPT"),
];

/// The variables an agent's properties stand for: `AGENT_<NAME>_<field>`.
const AGENT_FIELDS: &[(&str, &str)] = &[
    ("kind", "KIND"),
    ("deployment", "DEPLOYMENT"),
    ("endpoint", "ENDPOINT"),
    ("backups", "BACKUPS"),
    ("description", "DESCRIPTION"),
    ("display_name", "DISPLAY_NAME"),
    ("confirm", "CONFIRM"),
];

/// A header read: the header, the environment's configuration it was read
/// over, and what it made.
type Cached = (String, Config, Result<Config, CoordError>);

/// This request's configuration: the environment's (`env`, read through
/// `lookup`), with the application's `properties` header on top when there is
/// one.
pub fn configure(
    lookup: &dyn Fn(&str) -> Option<String>,
    env: Config,
    properties: Option<&str>,
) -> Result<Config, CoordError> {
    let Some(header) = properties else {
        return Ok(env);
    };
    thread_local! {
        // Lives as long as the instance.
        static CACHE: RefCell<Vec<Cached>> =
            const { RefCell::new(Vec::new()) };
    }
    let hit = CACHE.with(|cache| {
        cache
            .borrow()
            .iter()
            .find(|(h, e, _)| h == header && *e == env)
            .map(|(_, _, result)| result.clone())
    });
    if let Some(result) = hit {
        return result;
    }
    let result = apply(lookup, &env, header);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            drop(cache.remove(0));
        }
        cache.push((header.to_owned(), env, result.clone()));
    });
    result
}

/// Reads `header` over the environment (uncached).
pub fn apply(
    lookup: &dyn Fn(&str) -> Option<String>,
    env: &Config,
    header: &str,
) -> Result<Config, CoordError> {
    let properties = parse(header)?;
    let overlay = Overlay::of(&properties);
    let read = RefCell::new(HashSet::<String>::new());
    let layered = |name: &str| -> Option<String> {
        read.borrow_mut().insert(name.to_owned());
        if let Some((_, value)) = overlay.set.iter().find(|(var, _)| var == name) {
            return Some(value.clone());
        }
        if overlay.blocked(name) {
            return None;
        }
        lookup(name)
    };
    let config = Config::read(layered, &read_registry).map_err(|e| overlay.rename(e))?;
    let read = read.into_inner();
    let problems = Problems::default();
    // A property the configuration never read does not apply (an endpoint
    // given to an agent called through DIAL Core).
    for (var, _) in &overlay.set {
        if !read.contains(var) {
            let path = overlay.path_of(var);
            let kind = overlay.kind_of(var, &config);
            problems.add(&path, format!("does not apply to an agent of kind {kind}"));
        }
    }
    check_origins(env, &config, &overlay, &problems);
    problems.into_result()?;
    Ok(config)
}

/// Parses the header: a JSON object of [`Properties`], each agent's name and
/// kind checked (the rest is checked by the configuration's reader).
pub fn parse(header: &str) -> Result<Properties, CoordError> {
    let problems = Problems::default();
    if header.len() > MAX_HEADER_BYTES {
        return Err(problem(
            "X-DIAL-APPLICATION-PROPERTIES",
            format!("is larger than {} KiB", MAX_HEADER_BYTES / 1024),
        ));
    }
    // A struct also reads from a JSON list: only an object is properties.
    if !header.trim_start().starts_with('{') {
        return Err(problem(
            "X-DIAL-APPLICATION-PROPERTIES",
            "must be a JSON object of the application's properties",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(header);
    let properties: Properties = match serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        .and_then(|p| de.end().map(|()| p).map_err(|e| (".".to_owned(), e)))
    {
        Ok(p) => p,
        Err((path, error)) => {
            let text = error.to_string();
            let message = text.split(" at line ").next().unwrap_or("");
            let header_name = "X-DIAL-APPLICATION-PROPERTIES";
            return Err(if error.is_syntax() || error.is_eof() {
                problem(header_name, format!("is not valid JSON ({message})"))
            } else if path == "." {
                problem(
                    header_name,
                    format!("must be a JSON object of the application's properties ({message})"),
                )
            } else {
                problem(&path, message)
            });
        }
    };
    if let Some(agents) = &properties.agents {
        if agents.is_empty() {
            problems.add("agents", "must name at least one agent");
        }
        if agents.len() > MAX_AGENTS {
            problems.add("agents", format!("may name at most {MAX_AGENTS} agents"));
        }
        for (i, agent) in agents.iter().enumerate().take(MAX_AGENTS) {
            if !is_valid_name(&agent.name) {
                problems.add(
                    &format!("agents[{i}].name"),
                    "must be made of A-Z, 0-9 and '_', starting with a letter, at most 32 characters",
                );
            } else if agents[..i].iter().any(|a| a.name == agent.name) {
                problems.add(
                    &format!("agents[{i}].name"),
                    format!("names {} a second time", agent.name),
                );
            }
            if let Some(kind) = &agent.kind {
                if !KINDS.iter().any(|k| k.name == kind) {
                    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
                    problems.add(
                        &format!("agents[{i}].kind"),
                        format!("must be one of {}", names.join(", ")),
                    );
                }
            }
            if agent.deployment.is_some() && agent.endpoint.is_some() {
                problems.add(
                    &format!("agents[{i}].endpoint"),
                    "cannot be set beside deployment: an agent is a DIAL deployment or an endpoint",
                );
            }
        }
    }
    problems.into_result()?;
    Ok(properties)
}

/// The variables the properties stand for, and what they hide of the
/// environment.
#[derive(Debug, Default)]
struct Overlay {
    /// Variable, value.
    set: Vec<(String, String)>,
    /// The agents' names, and whether the properties set each one's target
    /// (then the environment's variables of that agent are hidden).
    agents: Vec<(String, bool)>,
    /// The built-in agents' legacy variables of the agents with a target.
    hidden: Vec<&'static str>,
    /// Variable prefix or name, property path.
    paths: Vec<(String, String)>,
}

impl Overlay {
    fn of(properties: &Properties) -> Overlay {
        let mut overlay = Overlay::default();
        let mut set = |var: String, path: String, value: Option<String>| {
            if let Some(value) = value {
                overlay.set.push((var.clone(), value));
            }
            overlay.paths.push((var, path));
        };
        let p = properties;
        let values = [
            p.coordination_mode.clone(),
            p.plan_approval.clone(),
            p.max_subtasks.map(|n| n.to_string()),
            p.max_parallel.map(|n| n.to_string()),
            p.coordination_prompt.clone(),
            p.synthesis_prompt.clone(),
        ];
        for ((path, var), value) in TOP_LEVEL.iter().zip(values) {
            set((*var).to_owned(), (*path).to_owned(), value);
        }
        if let Some(agents) = &p.agents {
            let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
            set(
                "AGENTS".to_owned(),
                "agents".to_owned(),
                Some(names.join(",")),
            );
            for (i, agent) in agents.iter().enumerate() {
                let fields = [
                    agent.kind.clone(),
                    agent.deployment.clone(),
                    agent.endpoint.clone(),
                    agent.backups.as_ref().map(|b| b.join(",")),
                    agent.description.clone(),
                    agent.display_name.clone(),
                    agent.confirm.map(|c| c.to_string()),
                ];
                for ((field, suffix), value) in AGENT_FIELDS.iter().zip(fields) {
                    set(
                        format!("AGENT_{}_{suffix}", agent.name),
                        format!("agents[{i}].{field}"),
                        value,
                    );
                }
            }
            for agent in agents {
                let own_target = agent.deployment.is_some() || agent.endpoint.is_some();
                overlay.agents.push((agent.name.clone(), own_target));
                if own_target {
                    for kind in KINDS {
                        if let Some(b) = kind.builtin.as_ref().filter(|b| b.name == agent.name) {
                            overlay
                                .hidden
                                .extend(b.legacy.iter().filter(|v| !v.is_empty()));
                        }
                    }
                }
            }
        }
        overlay
    }

    /// The agent whose variable `var` is (`AGENT_<NAME>_...`): of the names
    /// it starts with, the longest (`AGENT_A_B_ENDPOINT` is agent `A_B`'s
    /// when both `A` and `A_B` are listed), and whether its target is set.
    fn owner(&self, var: &str) -> Option<&(String, bool)> {
        let rest = var.strip_prefix("AGENT_")?;
        self.agents
            .iter()
            .filter(|(name, _)| {
                rest.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with('_'))
            })
            .max_by_key(|(name, _)| name.len())
    }

    /// Whether the environment's value of `var` is hidden: a variable of an
    /// agent whose target the properties set.
    fn blocked(&self, var: &str) -> bool {
        self.hidden.contains(&var) || self.owner(var).is_some_and(|(_, own)| *own)
    }

    /// Whether the properties set `name`'s target.
    fn sets_target(&self, name: &str) -> bool {
        self.agents.iter().any(|(n, own)| n == name && *own)
    }

    /// The property `var` stands for (the variable itself when none does).
    fn path_of(&self, var: &str) -> String {
        self.paths
            .iter()
            .find(|(v, _)| v == var)
            .map_or_else(|| var.to_owned(), |(_, path)| path.clone())
    }

    /// The kind of the agent `var` belongs to, as read.
    fn kind_of(&self, var: &str, config: &Config) -> String {
        self.owner(var)
            .and_then(|(name, _)| config.registry.get(name))
            .map_or_else(|| "this".to_owned(), |a| a.kind.to_owned())
    }

    /// A configuration error of the layered read, as the properties' error.
    fn rename(&self, error: CoordError) -> CoordError {
        match error {
            CoordError::Config(problems) => CoordError::Properties(
                problems
                    .into_iter()
                    .map(|p| ConfigProblem {
                        var: self.path_of(&p.var),
                        reason: p.reason,
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Every endpoint the properties set must be on an allowed origin.
fn check_origins(env: &Config, config: &Config, overlay: &Overlay, problems: &Problems) {
    let mut allowed: Vec<String> = env.allowed_agent_hosts.clone();
    allowed.extend(
        env.registry
            .agents()
            .iter()
            .flat_map(|a| a.targets.iter())
            .filter_map(|t| origin(&t.id)),
    );
    for agent in config.registry.agents() {
        if !overlay.sets_target(&agent.name) {
            continue;
        }
        let prefix = format!("AGENT_{}_", agent.name);
        for (index, target) in agent.targets.iter().enumerate() {
            let Some(found) = origin(&target.id) else {
                continue;
            };
            if !allowed.contains(&found) {
                let field = if index == 0 { "ENDPOINT" } else { "BACKUPS" };
                problems.add(
                    &overlay.path_of(&format!("{prefix}{field}")),
                    format!(
                        "is on {found}, which this deployment does not allow for agents \
                         (the operator allows origins in ALLOWED_AGENT_HOSTS)"
                    ),
                );
            }
        }
    }
}

/// A properties error of one problem.
fn problem(path: &str, reason: impl Into<String>) -> CoordError {
    CoordError::Properties(vec![ConfigProblem {
        var: path.to_owned(),
        reason: reason.into(),
    }])
}

/// Problems with properties, in the order found.
#[derive(Debug, Default)]
struct Problems(RefCell<Vec<ConfigProblem>>);

impl Problems {
    fn add(&self, path: &str, reason: impl Into<String>) {
        self.0.borrow_mut().push(ConfigProblem {
            var: path.to_owned(),
            reason: reason.into(),
        });
    }

    fn into_result(self) -> Result<(), CoordError> {
        let found = self.0.into_inner();
        if found.is_empty() {
            Ok(())
        } else {
            Err(CoordError::Properties(found))
        }
    }
}

/// The request's per-conversation settings (`custom_fields.configuration`,
/// which DIAL Chat sends as the user set them against the schema of
/// [`configuration_schema`]), applied within what the configuration allows:
/// `agents` narrows the registry, `coordination_mode` picks the mode.
pub fn apply_conversation(config: &mut Config, settings: &Value) -> Result<(), CoordError> {
    let bad = |path: &str, reason: &str| {
        CoordError::BadRequest(format!("custom_fields.configuration{path} {reason}"))
    };
    let Value::Object(map) = settings else {
        if settings.is_null() {
            return Ok(());
        }
        return Err(bad("", "must be an object"));
    };
    for (key, value) in map {
        match key.as_str() {
            "agents" if value.is_null() => {}
            "agents" => {
                let Some(list) = value.as_array() else {
                    return Err(bad(".agents", "must be a list of agent names"));
                };
                let mut names: Vec<&str> = Vec::with_capacity(list.len());
                for item in list {
                    let Some(name) = item.as_str().filter(|n| config.registry.get(n).is_some())
                    else {
                        return Err(bad(
                            ".agents",
                            &format!(
                                "must name agents of this application ({})",
                                config.registry.names().join(", ")
                            ),
                        ));
                    };
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                if names.is_empty() {
                    return Err(bad(".agents", "must name at least one agent"));
                }
                config.registry = config.registry.only(&names);
            }
            "coordination_mode" if value.is_null() => {}
            "coordination_mode" => {
                config.coordination_mode = match value.as_str() {
                    Some("plan") => CoordinationMode::Plan,
                    Some("route") => CoordinationMode::Route,
                    _ => return Err(bad(".coordination_mode", "must be plan or route")),
                };
            }
            _ => {
                return Err(bad(
                    &format!(".{}", key.chars().take(40).collect::<String>()),
                    "is not a setting of this coordinator (agents, coordination_mode)",
                ))
            }
        }
    }
    Ok(())
}

/// The per-conversation settings' schema (the configuration endpoint): which
/// of this application's agents may work in the conversation, and whether a
/// request is planned or routed.
pub fn configuration_schema(config: &Config) -> Value {
    let names = config.registry.names();
    let mode = match config.coordination_mode {
        CoordinationMode::Plan => "plan",
        CoordinationMode::Route => "route",
    };
    let mut properties = Map::new();
    properties.insert(
        "agents".to_owned(),
        json!({
            "title": "Agents",
            "description": "Which agents may work in this conversation (all of them when not set).",
            "type": "array",
            "items": {"type": "string", "enum": names},
            "uniqueItems": true,
            "minItems": 1,
            "default": names,
        }),
    );
    properties.insert(
        "coordination_mode".to_owned(),
        json!({
            "title": "Coordination",
            "description": "plan: a request may be split into subtasks for several agents; route: one agent answers each request.",
            "type": "string",
            "enum": ["plan", "route"],
            "default": mode,
        }),
    );
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CORE: &str = "http://core:8080";
    const UMS: &str = "http://ums:8042";

    fn env_vars(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars: HashMap<String, String> = [
            ("DIAL_ENDPOINT", CORE),
            ("UMS_AGENT_ENDPOINT", UMS),
            ("STATE_SECRET", "0123456789abcdef"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        vars.retain(|_, v| !v.is_empty());
        vars
    }

    /// `header` applied over the environment of `extra`.
    fn applied(extra: &[(&str, &str)], header: &str) -> Result<Config, CoordError> {
        let vars = env_vars(extra);
        let lookup = |k: &str| vars.get(k).cloned();
        let env = Config::from_lookup(lookup).unwrap();
        apply(&lookup, &env, header)
    }

    /// The problems of a properties error, as `path reason`.
    fn problems(e: CoordError) -> Vec<String> {
        match e {
            CoordError::Properties(found) => found
                .into_iter()
                .map(|p| format!("{} {}", p.var, p.reason))
                .collect(),
            other => panic!("not a properties error: {other:?}"),
        }
    }

    fn nested_meta(value: &Value, depth: usize, found: &mut Vec<usize>) {
        match value {
            Value::Object(map) => {
                if map.contains_key("dial:meta") {
                    found.push(depth);
                }
                map.values().for_each(|v| nested_meta(v, depth + 1, found));
            }
            Value::Array(items) => items.iter().for_each(|v| nested_meta(v, depth + 1, found)),
            _ => {}
        }
    }

    #[test]
    fn the_type_schema_keeps_the_rules_of_dials_meta_schema() {
        let schema = type_schema("https://coordinator.example.com/");
        assert_eq!(schema["$schema"], DIAL_META_SCHEMA);
        assert_eq!(schema["$id"], "https://coordinator.example.com/v1/schema");
        assert_eq!(schema["dial:applicationTypeDisplayName"], DISPLAY_NAME);
        assert_eq!(
            schema["dial:applicationTypeCompletionEndpoint"],
            "https://coordinator.example.com/openai/deployments/mas-coordinator/chat/completions"
        );
        assert_eq!(
            schema["dial:applicationTypeConfigurationEndpoint"],
            "https://coordinator.example.com/openai/deployments/mas-coordinator/configuration"
        );
        assert_eq!(
            (&schema["type"], &schema["additionalProperties"]),
            (&json!("object"), &json!(false))
        );
        // Every top-level property, in order, with its dial:meta; none deeper.
        let properties = schema["properties"].as_object().unwrap();
        let mut names: Vec<(&str, u64)> = properties
            .iter()
            .map(|(name, p)| {
                assert_eq!(p["dial:meta"]["dial:propertyKind"], "server", "{name}");
                (
                    name.as_str(),
                    p["dial:meta"]["dial:propertyOrder"].as_u64().unwrap(),
                )
            })
            .collect();
        names.sort_by_key(|(_, order)| *order);
        let ordered: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        assert_eq!(ordered, PROPERTY_NAMES);
        let mut depths = Vec::new();
        nested_meta(&schema, 0, &mut depths);
        assert_eq!(
            depths,
            vec![2; PROPERTY_NAMES.len()],
            "dial:meta only on top-level properties"
        );
        // Self-contained draft-07: nothing refers elsewhere, nothing is null.
        let text = schema.to_string();
        for absent in ["$ref", "$defs", "definitions", "\"null\"", "uint32", "\\n"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        let agent = &schema["properties"]["agents"]["items"];
        assert_eq!(agent["required"], json!(["name"]));
        assert_eq!(
            agent["properties"]["kind"]["enum"],
            json!(["dial", "ums", "a2a"])
        );
        assert_eq!(agent["properties"]["name"]["pattern"], "^[A-Z][A-Z0-9_]*$");
        assert_eq!(
            schema["properties"]["plan_approval"]["enum"],
            json!(["never", "multi-agent", "always"])
        );
        assert_eq!(
            (
                &schema["properties"]["max_subtasks"]["minimum"],
                &schema["properties"]["max_subtasks"]["maximum"]
            ),
            (&json!(1), &json!(32))
        );
        // Without a base URL the id is still a URI.
        assert_eq!(type_schema("")["$id"], DEFAULT_SCHEMA_ID);
    }

    #[test]
    fn properties_configure_the_request_on_top_of_the_environment() {
        let c = applied(
            &[("MAX_PARALLEL", "3"), ("UPSTREAM_IDLE_TIMEOUT_MS", "777")],
            r#"{"agents":[{"name":"GPA"},{"name":"RAG","kind":"dial","deployment":"rag-agent","description":"Answers from the travel policy.","display_name":"the policy agent","confirm":true}],
                "coordination_mode":"route","plan_approval":"multi-agent","max_subtasks":5,
                "coordination_prompt":"Prefer RAG for policy questions.\nNever GPA for them.","synthesis_prompt":"Answer like a travel agent."}"#,
        )
        .unwrap();
        assert_eq!(c.registry.names(), ["GPA", "RAG"]);
        let rag = c.registry.get("RAG").unwrap();
        assert_eq!(
            (
                rag.kind,
                rag.target_ids(),
                rag.description.as_str(),
                rag.display_name.as_str(),
                rag.confirm
            ),
            (
                "dial",
                vec!["rag-agent"],
                "Answers from the travel policy.",
                "the policy agent",
                true
            )
        );
        assert_eq!(
            c.registry.get("GPA").unwrap().target_ids(),
            ["general-purpose-agent"]
        );
        assert_eq!(c.coordination_mode, CoordinationMode::Route);
        assert_eq!(c.plan_approval, crate::config::PlanApproval::MultiAgent);
        assert_eq!((c.max_subtasks, c.max_parallel), (5, 3));
        assert_eq!(c.timeouts.idle_ms, 777);
        assert_eq!(
            c.coordination_prompt.as_deref(),
            Some("Prefer RAG for policy questions.\nNever GPA for them.")
        );
        assert_eq!(
            c.synthesis_prompt.as_deref(),
            Some("Answer like a travel agent.")
        );
        // Nothing set: the environment's configuration.
        let vars = env_vars(&[]);
        let lookup = |k: &str| vars.get(k).cloned();
        let env = Config::from_lookup(lookup).unwrap();
        assert_eq!(apply(&lookup, &env, "{}").unwrap(), env);
    }

    #[test]
    fn an_agent_named_alone_is_the_environments_and_one_with_a_target_is_the_properties_alone() {
        let env = [
            ("AGENTS", "GPA,UMS,WEATHER"),
            ("AGENT_WEATHER_KIND", "a2a"),
            ("AGENT_WEATHER_ENDPOINT", "http://weather:9000"),
            ("AGENT_WEATHER_BACKUPS", "http://weather-b:9000"),
            ("AGENT_WEATHER_AUTH_HEADER", "X-Key"),
            ("AGENT_WEATHER_AUTH_VALUE", "weather-secret"),
            ("UMS_AGENT_BACKUP_ENDPOINTS", "http://ums-b:8042"),
        ];
        let c = applied(&env, r#"{"agents":[{"name":"WEATHER"},{"name":"UMS"}]}"#).unwrap();
        let weather = c.registry.get("WEATHER").unwrap();
        assert_eq!(
            weather.target_ids(),
            ["http://weather:9000", "http://weather-b:9000"]
        );
        assert_eq!(
            weather.headers.len(),
            1,
            "its credential comes with its endpoints"
        );
        assert_eq!(
            c.registry.get("UMS").unwrap().target_ids(),
            [UMS, "http://ums-b:8042"]
        );
        // A target of its own: no backups, no credential of the environment's agent.
        let c = applied(
            &env,
            r#"{"agents":[{"name":"WEATHER","kind":"a2a","endpoint":"http://weather-b:9000"},{"name":"UMS","endpoint":"http://weather:9000"}]}"#,
        )
        .unwrap();
        let weather = c.registry.get("WEATHER").unwrap();
        assert_eq!(
            (weather.target_ids(), weather.headers.len()),
            (vec!["http://weather-b:9000"], 0)
        );
        assert_eq!(
            c.registry.get("UMS").unwrap().target_ids(),
            ["http://weather:9000"]
        );
    }

    #[test]
    fn an_agent_whose_name_starts_with_anothers_keeps_its_own_variables() {
        let env = [
            ("AGENTS", "GPA,UMS,A,A_B"),
            ("AGENT_A_KIND", "ums"),
            ("AGENT_A_ENDPOINT", "http://ums:8042/a"),
            ("AGENT_A_DESCRIPTION", "a"),
            ("AGENT_A_B_KIND", "ums"),
            ("AGENT_A_B_ENDPOINT", "http://ums:8042/ab"),
            ("AGENT_A_B_DESCRIPTION", "ab"),
        ];
        let c = applied(
            &env,
            r#"{"agents":[{"name":"A","kind":"ums","endpoint":"http://ums:8042/own","description":"own"},{"name":"A_B"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.registry.get("A").unwrap().target_ids(),
            ["http://ums:8042/own"]
        );
        assert_eq!(
            c.registry.get("A_B").unwrap().target_ids(),
            ["http://ums:8042/ab"]
        );
        assert_eq!(c.registry.get("A_B").unwrap().description, "ab");
    }

    #[test]
    fn endpoints_must_be_on_an_origin_the_environment_allows() {
        let e = applied(
            &[],
            r#"{"agents":[{"name":"UMS","endpoint":"http://evil.example.com:8042"},{"name":"X","kind":"a2a","endpoint":"http://ums:8042/x","backups":["https://ums:8042"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            problems(e),
            [
                "agents[0].endpoint is on http://evil.example.com:8042, which this deployment does not allow for agents (the operator allows origins in ALLOWED_AGENT_HOSTS)",
                "agents[1].backups is on https://ums:8042, which this deployment does not allow for agents (the operator allows origins in ALLOWED_AGENT_HOSTS)",
            ]
        );
        // Allowed by the operator; a default port is the same origin written out.
        let c = applied(
            &[("ALLOWED_AGENT_HOSTS", "http://evil.example.com:8042, https://ums")],
            r#"{"agents":[{"name":"UMS","endpoint":"http://EVIL.example.com:8042/"},{"name":"X","kind":"a2a","endpoint":"http://ums:8042/x","backups":["https://ums:443"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.registry.get("X").unwrap().target_ids(),
            ["http://ums:8042/x", "https://ums:443"]
        );
    }

    #[test]
    fn every_bad_property_is_named() {
        let cases: &[(&str, &[&str])] = &[
            ("not json", &["X-DIAL-APPLICATION-PROPERTIES must be a JSON object of the application's properties"]),
            ("[1]", &["X-DIAL-APPLICATION-PROPERTIES must be a JSON object of the application's properties"]),
            (r#"{"agents":"#, &["X-DIAL-APPLICATION-PROPERTIES is not valid JSON (EOF while parsing a value)"]),
            (r#"{"agent":[]}"#, &["agent unknown field `agent`, expected one of `agents`, `coordination_mode`, `plan_approval`, `max_subtasks`, `max_parallel`, `coordination_prompt`, `synthesis_prompt`"]),
            (r#"{"max_subtasks":"many"}"#, &["max_subtasks invalid type: string \"many\", expected u32"]),
            (r#"{"agents":[{"name":"A","kindd":"dial"}]}"#, &["agents[0].kindd unknown field `kindd`, expected one of `name`, `kind`, `deployment`, `endpoint`, `backups`, `description`, `display_name`, `confirm`"]),
            (r#"{"agents":[]}"#, &["agents must name at least one agent"]),
            (
                r#"{"agents":[{"name":"rag"},{"name":"GPA"},{"name":"GPA"},{"name":"X","kind":"mcp"},{"name":"Y","deployment":"d","endpoint":"http://ums:8042"}]}"#,
                &[
                    "agents[0].name must be made of A-Z, 0-9 and '_', starting with a letter, at most 32 characters",
                    "agents[2].name names GPA a second time",
                    "agents[3].kind must be one of dial, ums, a2a",
                    "agents[4].endpoint cannot be set beside deployment: an agent is a DIAL deployment or an endpoint",
                ],
            ),
            (r#"{"coordination_mode":"both","max_parallel":99}"#, &["coordination_mode must be plan or route", "max_parallel must be a whole number from 1 to 16"]),
            (
                r#"{"agents":[{"name":"RAG","kind":"dial","deployment":"a/b"},{"name":"NEW","kind":"ums"}]}"#,
                &[
                    "agents[0].deployment must be a deployment name made of letters, digits, '-', '_' and '.'",
                    "agents[0].description is required for agent RAG: the coordination prompt says what it is for",
                    "agents[1].endpoint is required for the ums agent NEW",
                    "agents[1].description is required for agent NEW: the coordination prompt says what it is for",
                ],
            ),
            (r#"{"agents":[{"name":"GPA","endpoint":"http://ums:8042"}]}"#, &["agents[0].endpoint does not apply to an agent of kind dial"]),
            (r#"{"coordination_prompt":"a\u0000b"}"#, &["coordination_prompt must be text of at most 4000 characters (lines and tabs allowed, no other control characters)"]),
        ];
        for (header, expected) in cases {
            let found = problems(applied(&[], header).unwrap_err());
            assert_eq!(&found, expected, "{header}");
        }
        let many: Vec<Value> = (0..33).map(|i| json!({"name": format!("A{i}")})).collect();
        let e = applied(&[], &json!({ "agents": many }).to_string()).unwrap_err();
        assert_eq!(problems(e)[0], "agents may name at most 32 agents");
        let e = applied(
            &[],
            &format!(
                "{{\"coordination_prompt\":\"{}\"}}",
                "a".repeat(MAX_HEADER_BYTES)
            ),
        )
        .unwrap_err();
        assert_eq!(
            problems(e),
            ["X-DIAL-APPLICATION-PROPERTIES is larger than 64 KiB"]
        );
        // Approval needs the operator's secret.
        let e = applied(&[("STATE_SECRET", "")], r#"{"plan_approval":"always"}"#).unwrap_err();
        assert_eq!(
            problems(e),
            ["plan_approval needs STATE_SECRET: a plan waiting for approval is kept in the signed state"]
        );
    }

    #[test]
    fn a_header_is_read_once_per_instance_and_the_cache_is_bounded() {
        let vars = env_vars(&[]);
        let reads = std::cell::Cell::new(0);
        let lookup = |k: &str| {
            reads.set(reads.get() + 1);
            vars.get(k).cloned()
        };
        let env = Config::from_lookup(lookup).unwrap();
        let header = r#"{"coordination_mode":"route"}"#;
        reads.set(0);
        let first = configure(&lookup, env.clone(), Some(header)).unwrap();
        assert!(reads.get() > 0);
        reads.set(0);
        assert_eq!(
            configure(&lookup, env.clone(), Some(header)).unwrap(),
            first
        );
        assert_eq!(reads.get(), 0, "the second request reads nothing");
        // A bad header is kept too, as its error.
        let bad = configure(&lookup, env.clone(), Some("{")).unwrap_err();
        assert_eq!(configure(&lookup, env.clone(), Some("{")).unwrap_err(), bad);
        for i in 0..CACHE_ENTRIES {
            configure(
                &lookup,
                env.clone(),
                Some(&format!("{{\"max_subtasks\":{}}}", i + 1)),
            )
            .unwrap();
        }
        reads.set(0);
        configure(&lookup, env.clone(), Some(header)).unwrap();
        assert!(reads.get() > 0, "the oldest entry made room");
        // Without the header: the environment's configuration.
        assert_eq!(configure(&lookup, env.clone(), None).unwrap(), env);
    }

    #[test]
    fn the_conversation_narrows_agents_and_picks_the_mode() {
        let mut c = applied(&[], r#"{"agents":[{"name":"GPA"},{"name":"UMS"}]}"#).unwrap();
        apply_conversation(
            &mut c,
            &json!({"agents": ["UMS", "UMS"], "coordination_mode": "route"}),
        )
        .unwrap();
        assert_eq!(
            (c.registry.names(), c.coordination_mode),
            (vec!["UMS"], CoordinationMode::Route)
        );
        let mut c = applied(&[], "{}").unwrap();
        apply_conversation(&mut c, &json!({"agents": null, "coordination_mode": null})).unwrap();
        apply_conversation(&mut c, &Value::Null).unwrap();
        assert_eq!(c.registry.names(), ["GPA", "UMS"]);
        for (settings, message) in [
            (json!([]), "custom_fields.configuration must be an object"),
            (json!({"agents": ["RAG"]}), "custom_fields.configuration.agents must name agents of this application (GPA, UMS)"),
            (json!({"agents": []}), "custom_fields.configuration.agents must name at least one agent"),
            (json!({"agents": "GPA"}), "custom_fields.configuration.agents must be a list of agent names"),
            (json!({"coordination_mode": "fast"}), "custom_fields.configuration.coordination_mode must be plan or route"),
            (json!({"temperature": 1}), "custom_fields.configuration.temperature is not a setting of this coordinator (agents, coordination_mode)"),
        ] {
            let e = apply_conversation(&mut c, &settings).unwrap_err();
            assert_eq!((e.status(), e.message()), (400, format!("Invalid request: {message}")));
        }
    }

    #[test]
    fn the_configuration_schema_offers_the_applications_agents() {
        let c = applied(
            &[],
            r#"{"agents":[{"name":"UMS"},{"name":"GPA"}],"coordination_mode":"route"}"#,
        )
        .unwrap();
        assert_eq!(
            configuration_schema(&c),
            json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {
                    "agents": {
                        "title": "Agents",
                        "description": "Which agents may work in this conversation (all of them when not set).",
                        "type": "array",
                        "items": {"type": "string", "enum": ["UMS", "GPA"]},
                        "uniqueItems": true,
                        "minItems": 1,
                        "default": ["UMS", "GPA"],
                    },
                    "coordination_mode": {
                        "title": "Coordination",
                        "description": "plan: a request may be split into subtasks for several agents; route: one agent answers each request.",
                        "type": "string",
                        "enum": ["plan", "route"],
                        "default": "route",
                    },
                },
                "additionalProperties": false,
            })
        );
    }
}

//! The agent kinds, one row each in [`KINDS`], and the reading of the registry
//! through them.
//!
//! A kind is everything that differs between agents that are called the same
//! way: which variables it reads and how it checks them (its targets), its
//! built-in agent (GPA for `dial`, UMS for `ums`: default target, the Python
//! reference's variables, description, state slot), the session that serves
//! one subtask, what `/health?deep=1` probes, and whether its subtasks share
//! one conversation (and so run one at a time). Each kind is one file beside
//! this one and one row here; nothing else in the crate matches on a kind
//! (`tests/architecture.rs` checks it). docs/architecture.md walks through
//! adding one.
//!
//! Reading the agents needs this table, and the configuration holds the
//! agents, so [`Config::from_lookup`] is defined here: `config/mod.rs` reads every
//! other variable and asks [`read_registry`] for the agents.

use serde_json::Value;

use super::Session;
use crate::client::Target;
use crate::config::registry::{is_valid_name, AgentSpec, Registry, Secret, StateSlot};
use crate::config::Config;
use crate::context::RequestContext;
use crate::error::{CoordError, Problems};
use crate::memory::Conversation;

/// Every kind, in the order error messages list them.
pub static KINDS: &[Kind] = &[super::dial::KIND, super::ums::KIND, super::a2a::KIND];

/// One agent kind: its row of [`KINDS`].
#[derive(Debug)]
pub struct Kind {
    /// Its name: the value of `AGENT_<NAME>_KIND`.
    pub name: &'static str,
    /// What it is, in configuration errors ("a DIAL deployment").
    pub about: &'static str,
    /// Reads and checks its variables of one agent: its targets, primary first.
    pub read: fn(&AgentVars<'_>) -> Vec<Target>,
    /// The built-in agent of this kind, if any.
    pub builtin: Option<Builtin>,
    /// The session serving one subtask.
    pub session: for<'a> fn(Assignment<'a>) -> Box<dyn Session + 'a>,
    /// What `/health?deep=1` probes for an agent of this kind (beyond DIAL
    /// Core, which is always probed).
    pub probes: fn(&AgentSpec) -> Vec<Probe>,
    /// Whether its subtasks of one turn share one conversation, so that they
    /// run one at a time (in plan order when several are ready).
    pub serial: bool,
    /// What its agents publish about themselves, read before the coordination
    /// call (`flow/discovery.rs`); `None` when there is nothing to read.
    pub discover: Option<Discover>,
}

/// A document each agent of a kind publishes about itself (an A2A agent card),
/// read before the coordination call: it can describe the agent to the
/// coordination prompt, and an agent whose document cannot be read is
/// unavailable for that request.
#[derive(Debug)]
pub struct Discover {
    /// What the document is called in messages ("agent card").
    pub what: &'static str,
    /// Its path under each of the agent's endpoints.
    pub path: &'static str,
    /// Reads what the endpoint `base` published: the agent's description for
    /// the coordination prompt, or why the document cannot be used.
    pub read: fn(doc: &Value, base: &str) -> Result<String, String>,
}

/// What discovery read for an agent: the target that answered, and its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// The endpoint that published it.
    pub target: Target,
    /// The document.
    pub doc: Value,
}

/// A built-in agent: listed in `AGENTS` by its name alone, with the defaults
/// and the variables of the Python reference.
#[derive(Debug)]
pub struct Builtin {
    /// Its name (`GPA`, `UMS`).
    pub name: &'static str,
    /// Its primary target when no variable names one.
    pub target: &'static str,
    /// The Python reference's variables of its primary target and of its
    /// backups, read when `AGENT_<NAME>_*` are not set.
    pub legacy: [&'static str; 2],
    /// What the coordination prompt says it is for.
    pub description: &'static str,
    /// How messages shown to the person name it.
    pub display_name: &'static str,
    /// Where its memory lives (the Python reference's keys).
    pub slot: StateSlot,
}

/// What a session is given: the request, the agent, its task text (appended
/// to the user's message) and the conversation it continues, if it keeps one.
#[derive(Debug)]
pub struct Assignment<'a> {
    /// The request being served.
    pub ctx: &'a RequestContext,
    /// The agent.
    pub agent: &'a AgentSpec,
    /// Instructions, a task description, results it depends on.
    pub task: Option<String>,
    /// Its conversation: from this turn's earlier subtasks or the history.
    pub conversation: Option<Conversation>,
    /// What discovery read about the agent, for a kind that discovers.
    pub discovered: Option<Discovered>,
}

/// One deep-health probe: `GET url`, reported as `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What the report shows (a base URL).
    pub target: String,
    /// What is asked.
    pub url: String,
}

/// The row of `agent`'s kind (`None` only for a spec built by hand with a
/// name no row has: the reader writes only names of rows).
pub fn kind_of(agent: &AgentSpec) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == agent.kind)
}

/// The session serving `assignment`, or why there is none.
pub fn session(assignment: Assignment<'_>) -> Result<Box<dyn Session + '_>, String> {
    match kind_of(assignment.agent) {
        Some(kind) => Ok((kind.session)(assignment)),
        None => Err(format!(
            "agent {} has no known kind ({:?})",
            assignment.agent.name, assignment.agent.kind
        )),
    }
}

/// What `agent`'s kind reads about it before the coordination call.
pub fn discover_of(agent: &AgentSpec) -> Option<&'static Discover> {
    kind_of(agent).and_then(|k| k.discover.as_ref())
}

/// Whether `agent`'s subtasks run one at a time (see [`Kind::serial`]).
pub fn is_serial(agent: &AgentSpec) -> bool {
    kind_of(agent).is_some_and(|k| k.serial)
}

/// The request an agent called by URL is sent: the user's message, with the
/// task text after a blank line when there is one.
pub fn message_with_task(ctx: &RequestContext, task: Option<&str>) -> String {
    let mut message = ctx
        .request
        .messages
        .last()
        .map(crate::wire::request::Message::text)
        .unwrap_or_default();
    if let Some(task) = task {
        message.push_str("\n\n");
        message.push_str(task);
    }
    message
}

/// `GET <endpoint><path>` for each of `agent`'s endpoints, primary first.
pub fn endpoint_probes(agent: &AgentSpec, path: &str) -> Vec<Probe> {
    agent
        .targets
        .iter()
        .map(|t| Probe {
            target: t.id.clone(),
            url: format!("{}{path}", t.id),
        })
        .collect()
}

/// What `/health?deep=1` probes for `agent`.
pub fn probes(agent: &AgentSpec) -> Vec<Probe> {
    kind_of(agent).map_or_else(Vec::new, |k| (k.probes)(agent))
}

/// One agent's variables, as its kind reads them.
pub struct AgentVars<'v> {
    /// The agent's name.
    pub name: &'v str,
    /// DIAL Core's base URL (what deployments' targets are keyed by).
    pub dial_endpoint: &'v str,
    kind: &'static Kind,
    builtin: Option<&'static Builtin>,
    get: &'v dyn Fn(&str) -> Option<String>,
    problems: &'v Problems,
    headers: std::cell::RefCell<Vec<(String, Secret)>>,
}

impl std::fmt::Debug for AgentVars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentVars")
            .field("name", &self.name)
            .field("kind", &self.kind.name)
            .finish_non_exhaustive()
    }
}

impl AgentVars<'_> {
    /// `AGENT_<NAME>_<field>`.
    pub fn var(&self, field: &str) -> String {
        format!("AGENT_{}_{field}", self.name)
    }

    /// The value of `AGENT_<NAME>_<field>`, if set.
    pub fn value(&self, field: &str) -> Option<String> {
        (self.get)(&self.var(field))
    }

    /// Reports a problem with `var`.
    pub fn problem(&self, var: &str, reason: impl Into<String>) {
        self.problems.add(CoordError::config(var, reason));
    }

    /// A header every call to the agent carries (its own credential).
    pub fn add_header(&self, name: &str, value: String) {
        self.headers
            .borrow_mut()
            .push((name.to_ascii_lowercase(), Secret(value)));
    }

    /// The first set variable of `vars`, and its name.
    fn first_set<'n>(&self, vars: &[&'n str]) -> Option<(&'n str, String)> {
        vars.iter()
            .find_map(|v| (self.get)(v).map(|value| (*v, value)))
    }

    /// The agent's targets as written: `AGENT_<NAME>_<primary>` (required
    /// unless the built-in agent has a default), then the comma-separated
    /// `AGENT_<NAME>_BACKUPS`; the built-in agent also reads its legacy
    /// variables when those are not set. Each value is checked by `parse`.
    pub fn targets(
        &self,
        primary: &str,
        parse: fn(&str, &str) -> Result<String, CoordError>,
    ) -> Vec<String> {
        let (primary_var, backups_var) = (self.var(primary), self.var("BACKUPS"));
        let [legacy_primary, legacy_backups] = self.builtin.map(|b| b.legacy).unwrap_or_default();
        let names = |own: &str, legacy: &'static str| -> Vec<String> {
            std::iter::once(own.to_owned())
                .chain((!legacy.is_empty()).then(|| legacy.to_owned()))
                .collect()
        };
        let primary_vars = names(&primary_var, legacy_primary);
        let primary_refs: Vec<&str> = primary_vars.iter().map(String::as_str).collect();
        let first = match self.first_set(&primary_refs) {
            Some((var, v)) => self.problems.take(parse(var, &v), String::new()),
            None => match self.builtin {
                Some(b) => b.target.to_owned(),
                None => {
                    self.problems.add(CoordError::config(
                        &primary_var,
                        format!("is required for the {} agent {}", self.kind.name, self.name),
                    ));
                    String::new()
                }
            },
        };
        let mut targets = vec![first];
        let backups_vars = names(&backups_var, legacy_backups);
        let backups_refs: Vec<&str> = backups_vars.iter().map(String::as_str).collect();
        if let Some((var, list)) = self.first_set(&backups_refs) {
            targets.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| self.problems.take(parse(var, s), String::new())),
            );
        }
        targets
    }
}

/// Reads the registry through `get` (a variable's value; empty counts as
/// unset): `AGENTS`, then each agent's `AGENT_<NAME>_KIND`, its kind's
/// variables, `AGENT_<NAME>_DESCRIPTION`, `AGENT_<NAME>_DISPLAY_NAME` and
/// `AGENT_<NAME>_CONFIRM`. Problems go to `problems`, in that order.
pub fn read_registry(
    get: &dyn Fn(&str) -> Option<String>,
    dial_endpoint: &str,
    problems: &Problems,
) -> Registry {
    let names: Vec<String> = match get("AGENTS") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => KINDS
            .iter()
            .filter_map(|k| k.builtin.as_ref())
            .map(|b| b.name.to_owned())
            .collect(),
    };
    if names.is_empty() {
        problems.add(CoordError::config("AGENTS", "must name at least one agent"));
    }
    let mut agents: Vec<AgentSpec> = Vec::with_capacity(names.len());
    for name in names {
        if !is_valid_name(&name) {
            problems.add(CoordError::config(
                "AGENTS",
                "must list names made of A-Z, 0-9 and '_', starting with a letter, at most 32 characters",
            ));
            continue;
        }
        if agents.iter().any(|a| a.name == name) {
            problems.add(CoordError::config(
                "AGENTS",
                format!("lists {name} more than once"),
            ));
            continue;
        }
        agents.push(read_agent(&name, get, dial_endpoint, problems));
    }
    Registry::new(agents)
}

/// The kind names, as "dial, ums or a2a".
fn kind_names() -> String {
    one_of(KINDS.iter().map(|k| k.name.to_owned()).collect())
}

/// "a, b or c".
fn one_of(mut items: Vec<String>) -> String {
    match items.pop() {
        None => String::new(),
        Some(last) if items.is_empty() => last,
        Some(last) => format!("{} or {last}", items.join(", ")),
    }
}

fn read_agent(
    name: &str,
    get: &dyn Fn(&str) -> Option<String>,
    dial_endpoint: &str,
    problems: &Problems,
) -> AgentSpec {
    let var = |field: &str| format!("AGENT_{name}_{field}");
    let kind_var = var("KIND");
    let builtin_kind = KINDS
        .iter()
        .find(|k| k.builtin.as_ref().is_some_and(|b| b.name == name));
    let kind = match get(&kind_var) {
        Some(value) => {
            let value = value.trim().to_ascii_lowercase();
            let kind = KINDS.iter().find(|k| k.name == value);
            if kind.is_none() {
                let choices: Vec<String> = KINDS
                    .iter()
                    .map(|k| format!("{} ({})", k.name, k.about))
                    .collect();
                problems.add(CoordError::config(
                    &kind_var,
                    format!("must be {}", one_of(choices)),
                ));
            }
            kind
        }
        None => {
            if builtin_kind.is_none() {
                problems.add(CoordError::config(
                    &kind_var,
                    format!(
                        "is required for agent {name} listed in AGENTS ({})",
                        kind_names()
                    ),
                ));
            }
            builtin_kind
        }
    };
    let builtin = kind
        .and_then(|k| k.builtin.as_ref())
        .filter(|b| b.name == name);
    let (targets, headers) = match kind {
        Some(kind) => {
            let vars = AgentVars {
                name,
                dial_endpoint,
                kind,
                builtin,
                get,
                problems,
                headers: std::cell::RefCell::default(),
            };
            ((kind.read)(&vars), vars.headers.into_inner())
        }
        None => (Vec::new(), Vec::new()),
    };
    let description_var = var("DESCRIPTION");
    let description = match (get(&description_var), builtin) {
        (Some(d), _) => problems.take(parse_text(&description_var, &d, 2_000), String::new()),
        (None, Some(b)) => b.description.to_owned(),
        // Described by what it publishes, per request.
        (None, None) if kind.is_some_and(|k| k.discover.is_some()) => String::new(),
        (None, None) => {
            problems.add(CoordError::config(
                &description_var,
                format!(
                    "is required for agent {name}: the coordination prompt says what it is for"
                ),
            ));
            String::new()
        }
    };
    let display_var = var("DISPLAY_NAME");
    let display_name = match (get(&display_var), builtin) {
        (Some(d), _) => problems.take(parse_text(&display_var, &d, 100), String::new()),
        (None, Some(b)) => b.display_name.to_owned(),
        (None, None) => format!("the {name} agent"),
    };
    let confirm_var = var("CONFIRM");
    let confirm = match get(&confirm_var).map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(_) => {
            problems.add(CoordError::config(&confirm_var, "must be true or false"));
            false
        }
    };
    AgentSpec {
        name: name.to_owned(),
        kind: kind.map_or("", |k| k.name),
        targets,
        description,
        display_name,
        slot: builtin.map_or(StateSlot::Agents, |b| b.slot),
        confirm,
        headers,
    }
}

/// Free text for prompts and messages: one line of printable characters.
fn parse_text(var: &str, value: &str, max: usize) -> Result<String, CoordError> {
    let v = value.trim();
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(CoordError::config(
            var,
            format!("must be one line of at most {max} printable characters"),
        ));
    }
    Ok(v.to_owned())
}

impl Config {
    /// Reads the configuration through `lookup` (a variable's value, if set),
    /// the agents included. An empty value counts as unset. Every malformed
    /// variable is reported at once, in one [`CoordError::Config`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, CoordError> {
        Config::read(lookup, &read_registry)
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, CoordError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }
}

impl Default for Config {
    fn default() -> Self {
        // The built-in defaults are valid (see the test `defaults_match_the_python_reference`).
        Config::from_lookup(|_| None).expect("the built-in defaults are a valid configuration")
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Service;
    use std::collections::HashMap;

    fn registry(pairs: &[(&str, &str)]) -> Result<Registry, CoordError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let problems = Problems::default();
        let get = |k: &str| map.get(k).cloned();
        let r = read_registry(&get, "http://core", &problems);
        problems.into_result(r)
    }

    /// The variable of the first problem.
    fn var_of(e: CoordError) -> String {
        match e {
            CoordError::Config(problems) => problems[0].var.clone(),
            other => panic!("not a configuration error: {other:?}"),
        }
    }

    #[test]
    fn default_registry_is_gpa_and_ums_with_the_reference_defaults() {
        let r = registry(&[]).unwrap();
        assert_eq!(r.names(), vec!["GPA", "UMS"]);
        let gpa = r.get("GPA").unwrap();
        assert_eq!(gpa.kind, "dial");
        assert_eq!(gpa.target_ids(), ["general-purpose-agent"]);
        assert_eq!(
            gpa.targets[0].identity,
            "http://core/openai/deployments/general-purpose-agent"
        );
        assert_eq!(gpa.description, crate::agents::dial::GPA_DESCRIPTION);
        assert_eq!(gpa.slot, StateSlot::Gpa);
        assert_eq!(gpa.stage_name(), "Call GPA Agent");
        let ums = r.get("UMS").unwrap();
        assert_eq!(ums.kind, "ums");
        assert_eq!(ums.target_ids(), ["http://localhost:8042"]);
        assert_eq!(ums.targets[0].label, "primary endpoint");
        assert_eq!(ums.slot, StateSlot::Ums);
        assert_eq!(ums.display_name, "the User Management agent");
        assert_eq!(r.fallback().name, "GPA");
    }

    #[test]
    fn legacy_variables_are_defaults_and_agent_variables_win() {
        let r = registry(&[
            ("GPA_DEPLOYMENT_NAME", "gpa-legacy"),
            ("GPA_BACKUP_DEPLOYMENTS", "gpa-b1, gpa-b2"),
            ("UMS_AGENT_ENDPOINT", "http://ums-legacy:1"),
            ("UMS_AGENT_BACKUP_ENDPOINTS", "http://ums-b:2/"),
        ])
        .unwrap();
        assert_eq!(
            r.get("GPA").unwrap().target_ids(),
            ["gpa-legacy", "gpa-b1", "gpa-b2"]
        );
        assert_eq!(
            r.get("UMS").unwrap().target_ids(),
            ["http://ums-legacy:1", "http://ums-b:2"]
        );
        let r = registry(&[
            ("GPA_DEPLOYMENT_NAME", "gpa-legacy"),
            ("AGENT_GPA_DEPLOYMENT", "gpa-new"),
            ("AGENT_GPA_BACKUPS", "gpa-nb"),
            ("GPA_BACKUP_DEPLOYMENTS", "ignored"),
        ])
        .unwrap();
        assert_eq!(r.get("GPA").unwrap().target_ids(), ["gpa-new", "gpa-nb"]);
    }

    #[test]
    fn a_third_dial_agent_by_configuration() {
        let r = registry(&[
            ("AGENTS", "GPA, UMS, RAG"),
            ("AGENT_RAG_KIND", "dial"),
            ("AGENT_RAG_DEPLOYMENT", "rag-agent"),
            ("AGENT_RAG_BACKUPS", "rag-backup"),
            (
                "AGENT_RAG_DESCRIPTION",
                "Answers questions from the company knowledge base.",
            ),
        ])
        .unwrap();
        assert_eq!(r.names(), vec!["GPA", "UMS", "RAG"]);
        let rag = r.get("RAG").unwrap();
        assert_eq!(rag.target_ids(), ["rag-agent", "rag-backup"]);
        assert_eq!(rag.slot, StateSlot::Agents);
        assert_eq!(rag.display_name, "the RAG agent");
        assert_eq!(rag.stage_name(), "Call RAG Agent");
        assert_eq!(
            rag.service(),
            Service {
                name: "RAG".into(),
                display: "the RAG agent".into()
            }
        );
    }

    #[test]
    fn gpa_alone_takes_everything() {
        let r = registry(&[("AGENTS", "GPA")]).unwrap();
        assert_eq!(r.names(), vec!["GPA"]);
        assert_eq!(r.fallback().name, "GPA");
        let r = registry(&[
            ("AGENTS", "RAG"),
            ("AGENT_RAG_KIND", "dial"),
            ("AGENT_RAG_DEPLOYMENT", "rag"),
            ("AGENT_RAG_DESCRIPTION", "docs"),
        ])
        .unwrap();
        assert_eq!(
            r.fallback().name,
            "RAG",
            "without GPA the first agent is the fallback"
        );
    }

    #[test]
    fn every_bad_registry_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("AGENTS", " , ")], "AGENTS"),
            (&[("AGENTS", "GPA,gpa")], "AGENTS"),
            (&[("AGENTS", "1ABC")], "AGENTS"),
            (&[("AGENTS", &"A".repeat(33))], "AGENTS"),
            (&[("AGENTS", "GPA,UMS,GPA")], "AGENTS"),
            // Listed with no settings at all.
            (&[("AGENTS", "GPA,RAG")], "AGENT_RAG_KIND"),
            (
                &[("AGENTS", "RAG"), ("AGENT_RAG_KIND", "grpc")],
                "AGENT_RAG_KIND",
            ),
            (
                &[("AGENTS", "RAG"), ("AGENT_RAG_KIND", "dial")],
                "AGENT_RAG_DEPLOYMENT",
            ),
            (
                &[
                    ("AGENTS", "CRM"),
                    ("AGENT_CRM_KIND", "ums"),
                    ("AGENT_CRM_DESCRIPTION", "x"),
                ],
                "AGENT_CRM_ENDPOINT",
            ),
            (
                &[
                    ("AGENTS", "RAG"),
                    ("AGENT_RAG_KIND", "dial"),
                    ("AGENT_RAG_DEPLOYMENT", "r"),
                ],
                "AGENT_RAG_DESCRIPTION",
            ),
            (
                &[
                    ("AGENTS", "RAG"),
                    ("AGENT_RAG_KIND", "dial"),
                    ("AGENT_RAG_DEPLOYMENT", "a/b"),
                    ("AGENT_RAG_DESCRIPTION", "x"),
                ],
                "AGENT_RAG_DEPLOYMENT",
            ),
            (&[("AGENT_GPA_BACKUPS", "ok,bad/one")], "AGENT_GPA_BACKUPS"),
            (
                &[("GPA_BACKUP_DEPLOYMENTS", "bad/one")],
                "GPA_BACKUP_DEPLOYMENTS",
            ),
            (&[("UMS_AGENT_ENDPOINT", "ftp://x")], "UMS_AGENT_ENDPOINT"),
            (&[("AGENT_UMS_BACKUPS", "nope")], "AGENT_UMS_BACKUPS"),
            (
                &[("AGENT_GPA_DESCRIPTION", "two\nlines")],
                "AGENT_GPA_DESCRIPTION",
            ),
        ];
        for (pairs, var) in cases {
            let e = registry(pairs).expect_err(&format!("{pairs:?} must be rejected"));
            assert_eq!(e.status(), 500);
            assert!(e.message().contains(var), "{}", e.message());
            assert_eq!(var_of(e), *var, "{pairs:?}");
        }
    }

    #[test]
    fn the_kind_error_lists_every_kind_of_the_table() {
        let e = registry(&[("AGENTS", "RAG"), ("AGENT_RAG_KIND", "grpc")]).unwrap_err();
        assert!(
            e.message().contains(
                "AGENT_RAG_KIND must be dial (a DIAL deployment), ums (the UMS conversation API) or a2a (an Agent2Agent protocol server)"
            ),
            "{}",
            e.message()
        );
    }

    #[test]
    fn an_agent_is_marked_as_acting_by_its_confirm_variable() {
        let r = registry(&[
            ("AGENT_UMS_CONFIRM", "TRUE"),
            ("AGENT_GPA_CONFIRM", "false"),
        ])
        .unwrap();
        assert!(r.get("UMS").unwrap().confirm);
        assert!(!r.get("GPA").unwrap().confirm);
        assert!(!registry(&[]).unwrap().get("UMS").unwrap().confirm);
        let e = registry(&[("AGENT_UMS_CONFIRM", "yes")]).unwrap_err();
        assert!(
            e.message()
                .contains("AGENT_UMS_CONFIRM must be true or false"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn gpa_can_change_kind_and_then_keeps_its_memory_under_agents() {
        let r = registry(&[
            ("AGENTS", "GPA"),
            ("AGENT_GPA_KIND", "ums"),
            ("AGENT_GPA_ENDPOINT", "http://gpa-as-ums:1"),
            ("AGENT_GPA_DESCRIPTION", "a conversational GPA"),
        ])
        .unwrap();
        let gpa = r.get("GPA").unwrap();
        assert_eq!(gpa.slot, StateSlot::Agents);
        assert_eq!(gpa.target_ids(), ["http://gpa-as-ums:1"]);
    }
}

//! The agent registry: which agents the coordinator can call, and everything
//! about each of them, in one table.
//!
//! Read from environment variables (see README "Agent registry"):
//! `AGENTS` (default `GPA,UMS`), then per agent `AGENT_<NAME>_KIND` (`dial` or
//! `ums`), `AGENT_<NAME>_DEPLOYMENT` (dial) or `AGENT_<NAME>_ENDPOINT` (ums),
//! `AGENT_<NAME>_BACKUPS`, `AGENT_<NAME>_DESCRIPTION` and
//! `AGENT_<NAME>_DISPLAY_NAME`. GPA and UMS have built-in kinds, descriptions
//! and display names, and keep reading the variables of the Python reference
//! (`GPA_DEPLOYMENT_NAME`, `GPA_BACKUP_DEPLOYMENTS`, `UMS_AGENT_ENDPOINT`,
//! `UMS_AGENT_BACKUP_ENDPOINTS`) as their defaults.
//!
//! Everything else that differs per agent is derived from its [`AgentSpec`]:
//! the coordination schema's agent enum and the agent list of the prompt, its
//! targets (primary, then backups) and their breaker keys and health probes,
//! its stage name, its display name in errors, and where its state lives.
//! Parsing is pure: it takes a lookup function.

use crate::error::{CoordError, Problems, Service};

/// Longest agent name.
pub const MAX_NAME_LEN: usize = 32;

/// How an agent is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKind {
    /// A DIAL deployment called through DIAL Core (as GPA is): deployment names,
    /// primary first.
    Dial {
        /// The deployments, primary then backups.
        deployments: Vec<String>,
    },
    /// An agent with the UMS conversation API, called directly: base URLs,
    /// primary first.
    Ums {
        /// The endpoints, primary then backups.
        endpoints: Vec<String>,
    },
}

/// Where an agent's memory lives in the state of our assistant messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSlot {
    /// GPA's keys of the Python reference: `is_gpa` and `gpa_messages`.
    Gpa,
    /// UMS's key of the Python reference: `ums_conversation_id`.
    Ums,
    /// Under `agents.<NAME>`.
    Agents,
}

/// One agent: the single source of truth for everything about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// `[A-Z][A-Z0-9_]*`, at most 32 characters: the name on the wire, in the
    /// schema, in stage titles and logs.
    pub name: String,
    /// How it is called, and where.
    pub kind: AgentKind,
    /// What the coordination prompt says the agent is for.
    pub description: String,
    /// How messages shown to the person name it ("the General Purpose Agent").
    pub display_name: String,
    /// Where its memory lives in our state.
    pub slot: StateSlot,
}

impl AgentSpec {
    /// The agent as errors and logs name it.
    pub fn service(&self) -> Service {
        Service {
            name: self.name.clone(),
            display: self.display_name.clone(),
        }
    }

    /// The name of the agent's stage: `Call <NAME> Agent`.
    pub fn stage_name(&self) -> String {
        format!("Call {} Agent", self.name)
    }

    /// The agent's targets (deployments or endpoints), primary first.
    pub fn targets(&self) -> &[String] {
        match &self.kind {
            AgentKind::Dial { deployments } => deployments,
            AgentKind::Ums { endpoints } => endpoints,
        }
    }
}

/// The agents, in the order of `AGENTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    agents: Vec<AgentSpec>,
}

/// GPA's description in the coordination prompt.
pub const GPA_DESCRIPTION: &str = "General Purpose Agent: answers general questions; searches the web; reads, \
extracts and searches the content of documents and attached files (PDF, TXT, CSV, HTML) with RAG; \
runs Python code for calculations, data analysis and charts; generates images and describes images.";
/// UMS's description in the coordination prompt.
pub const UMS_DESCRIPTION: &str = "Users Management Service agent: everything about the users stored in the \
Users Management Service: checking whether a person is a user, searching and listing users, showing a \
user's details, creating, updating and deleting users. It can also search the web to complete a user's \
profile.";

const DEFAULT_GPA_DEPLOYMENT: &str = "general-purpose-agent";
const DEFAULT_UMS_ENDPOINT: &str = "http://localhost:8042";

impl Registry {
    /// The agents, in order.
    pub fn agents(&self) -> &[AgentSpec] {
        &self.agents
    }

    /// The agent called `name`.
    pub fn get(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The agent used when a coordination answer cannot be used: GPA when it
    /// is registered, else the first agent.
    pub fn fallback(&self) -> &AgentSpec {
        self.get("GPA").unwrap_or(&self.agents[0])
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.name.as_str()).collect()
    }

    /// Reads the registry through `lookup` (a variable's value; empty counts
    /// as unset), checking endpoints and deployment names with the given parsers.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        parse_endpoint: fn(&str, &str) -> Result<String, CoordError>,
        parse_deployment: fn(&str, &str) -> Result<String, CoordError>,
        problems: &Problems,
    ) -> Registry {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let names: Vec<String> = match get("AGENTS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => vec!["GPA".to_owned(), "UMS".to_owned()],
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
            agents.push(read_agent(
                &name,
                &get,
                parse_endpoint,
                parse_deployment,
                problems,
            ));
        }
        Registry { agents }
    }
}

/// Whether `name` is a valid agent name: `[A-Z][A-Z0-9_]*`, at most 32 characters.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The first set variable of `vars` and its name.
fn first_set<'v>(
    get: &dyn Fn(&str) -> Option<String>,
    vars: &[&'v str],
) -> Option<(&'v str, String)> {
    vars.iter().find_map(|v| get(v).map(|value| (*v, value)))
}

fn read_agent(
    name: &str,
    get: &dyn Fn(&str) -> Option<String>,
    parse_endpoint: fn(&str, &str) -> Result<String, CoordError>,
    parse_deployment: fn(&str, &str) -> Result<String, CoordError>,
    problems: &Problems,
) -> AgentSpec {
    let var = |field: &str| format!("AGENT_{name}_{field}");
    let (kind_var, deployment_var, endpoint_var, backups_var, description_var, display_var) = (
        var("KIND"),
        var("DEPLOYMENT"),
        var("ENDPOINT"),
        var("BACKUPS"),
        var("DESCRIPTION"),
        var("DISPLAY_NAME"),
    );
    let builtin_kind = match name {
        "GPA" => Some("dial"),
        "UMS" => Some("ums"),
        _ => None,
    };
    let kind = match get(&kind_var) {
        Some(k) => k.trim().to_ascii_lowercase(),
        None => match builtin_kind {
            Some(k) => k.to_owned(),
            None => {
                problems.add(CoordError::config(
                    &kind_var,
                    format!("is required for agent {name} listed in AGENTS (dial or ums)"),
                ));
                String::new()
            }
        },
    };
    let list = |var: &str, value: &str, parse: fn(&str, &str) -> Result<String, CoordError>| {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| problems.take(parse(var, s), String::new()))
            .collect::<Vec<_>>()
    };
    // Legacy variables of the Python reference, read for GPA and UMS only.
    let (legacy_primary, legacy_backups): (&[&str], &[&str]) = match (name, kind.as_str()) {
        ("GPA", "dial") => (&["GPA_DEPLOYMENT_NAME"], &["GPA_BACKUP_DEPLOYMENTS"]),
        ("UMS", "ums") => (&["UMS_AGENT_ENDPOINT"], &["UMS_AGENT_BACKUP_ENDPOINTS"]),
        _ => (&[], &[]),
    };
    let backups_vars: Vec<&str> = std::iter::once(backups_var.as_str())
        .chain(legacy_backups.iter().copied())
        .collect();
    let kind = match kind.as_str() {
        "dial" => {
            let primary_vars: Vec<&str> = std::iter::once(deployment_var.as_str())
                .chain(legacy_primary.iter().copied())
                .collect();
            let primary = match first_set(get, &primary_vars) {
                Some((var, v)) => problems.take(parse_deployment(var, &v), String::new()),
                None if name == "GPA" => DEFAULT_GPA_DEPLOYMENT.to_owned(),
                None => {
                    problems.add(CoordError::config(
                        &deployment_var,
                        format!("is required for the dial agent {name}"),
                    ));
                    String::new()
                }
            };
            let mut deployments = vec![primary];
            if let Some((var, v)) = first_set(get, &backups_vars) {
                deployments.extend(list(var, &v, parse_deployment));
            }
            AgentKind::Dial { deployments }
        }
        "ums" => {
            let primary_vars: Vec<&str> = std::iter::once(endpoint_var.as_str())
                .chain(legacy_primary.iter().copied())
                .collect();
            let primary = match first_set(get, &primary_vars) {
                Some((var, v)) => problems.take(parse_endpoint(var, &v), String::new()),
                None if name == "UMS" => DEFAULT_UMS_ENDPOINT.to_owned(),
                None => {
                    problems.add(CoordError::config(
                        &endpoint_var,
                        format!("is required for the ums agent {name}"),
                    ));
                    String::new()
                }
            };
            let mut endpoints = vec![primary];
            if let Some((var, v)) = first_set(get, &backups_vars) {
                endpoints.extend(list(var, &v, parse_endpoint));
            }
            AgentKind::Ums { endpoints }
        }
        "" => AgentKind::Dial {
            deployments: Vec::new(),
        },
        _ => {
            problems.add(CoordError::config(
                &kind_var,
                "must be dial (a DIAL deployment) or ums (the UMS conversation API)",
            ));
            AgentKind::Dial {
                deployments: Vec::new(),
            }
        }
    };
    let builtin = matches!(
        (name, &kind),
        ("GPA", AgentKind::Dial { .. }) | ("UMS", AgentKind::Ums { .. })
    );
    let description = match get(&description_var) {
        Some(d) => problems.take(parse_text(&description_var, &d, 2_000), String::new()),
        None if builtin && name == "GPA" => GPA_DESCRIPTION.to_owned(),
        None if builtin => UMS_DESCRIPTION.to_owned(),
        None => {
            problems.add(CoordError::config(
                &description_var,
                format!(
                    "is required for agent {name}: the coordination prompt says what it is for"
                ),
            ));
            String::new()
        }
    };
    let display_name = match get(&display_var) {
        Some(d) => problems.take(parse_text(&display_var, &d, 100), String::new()),
        None if builtin && name == "GPA" => "the General Purpose Agent".to_owned(),
        None if builtin => "the User Management agent".to_owned(),
        None => format!("the {name} agent"),
    };
    let slot = match (builtin, &kind) {
        (true, AgentKind::Dial { .. }) => StateSlot::Gpa,
        (true, AgentKind::Ums { .. }) => StateSlot::Ums,
        _ => StateSlot::Agents,
    };
    AgentSpec {
        name: name.to_owned(),
        kind,
        description,
        display_name,
        slot,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn endpoint(var: &str, v: &str) -> Result<String, CoordError> {
        if v.starts_with("http://") {
            Ok(v.trim_end_matches('/').to_owned())
        } else {
            Err(CoordError::config(var, "must start with http://"))
        }
    }

    fn deployment(var: &str, v: &str) -> Result<String, CoordError> {
        if v.contains('/') {
            Err(CoordError::config(var, "must be a deployment name"))
        } else {
            Ok(v.to_owned())
        }
    }

    fn registry(pairs: &[(&str, &str)]) -> Result<Registry, CoordError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let problems = Problems::default();
        let r = Registry::from_lookup(&|k| map.get(k).cloned(), endpoint, deployment, &problems);
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
        assert_eq!(
            gpa.kind,
            AgentKind::Dial {
                deployments: vec!["general-purpose-agent".into()]
            }
        );
        assert_eq!(gpa.description, GPA_DESCRIPTION);
        assert_eq!(gpa.slot, StateSlot::Gpa);
        assert_eq!(gpa.stage_name(), "Call GPA Agent");
        let ums = r.get("UMS").unwrap();
        assert_eq!(
            ums.kind,
            AgentKind::Ums {
                endpoints: vec!["http://localhost:8042".into()]
            }
        );
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
            r.get("GPA").unwrap().targets(),
            ["gpa-legacy", "gpa-b1", "gpa-b2"]
        );
        assert_eq!(
            r.get("UMS").unwrap().targets(),
            ["http://ums-legacy:1", "http://ums-b:2"]
        );
        let r = registry(&[
            ("GPA_DEPLOYMENT_NAME", "gpa-legacy"),
            ("AGENT_GPA_DEPLOYMENT", "gpa-new"),
            ("AGENT_GPA_BACKUPS", "gpa-nb"),
            ("GPA_BACKUP_DEPLOYMENTS", "ignored"),
        ])
        .unwrap();
        assert_eq!(r.get("GPA").unwrap().targets(), ["gpa-new", "gpa-nb"]);
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
        assert_eq!(rag.targets(), ["rag-agent", "rag-backup"]);
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
        assert_eq!(gpa.targets(), ["http://gpa-as-ums:1"]);
    }
}

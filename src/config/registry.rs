//! The agent registry: which agents the coordinator can call, and everything
//! about each of them, in one table of [`AgentSpec`]s.
//!
//! This module is the data. The agents are read from environment variables
//! (see README "Agent registry") by their kinds, in `agents/kinds.rs`: `AGENTS`
//! (default `GPA,UMS`), then per agent `AGENT_<NAME>_KIND` and the variables
//! its kind reads. Everything else that differs per agent is derived from its
//! spec: the coordination schema's agent enum and the agent list of the
//! prompt, its targets (primary, then backups) with their breaker keys, its
//! stage name, its display name in errors, and where its state lives. What
//! differs per *kind* (how it is called, probed, scheduled) is the kind's row
//! of `agents::KINDS`, found by [`AgentSpec::kind`]; nothing here knows a kind.

use crate::client::Target;
use crate::error::Service;

/// Longest agent name.
pub const MAX_NAME_LEN: usize = 32;

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
    /// The name of its kind (`AGENT_<NAME>_KIND`): its row in `agents::KINDS`.
    pub kind: &'static str,
    /// Where it is called: primary, then backups.
    pub targets: Vec<Target>,
    /// What the coordination prompt says the agent is for.
    pub description: String,
    /// How messages shown to the person name it ("the General Purpose Agent").
    pub display_name: String,
    /// Where its memory lives in our state.
    pub slot: StateSlot,
    /// Whether it acts (writes, sends, deletes), so that with
    /// `PLAN_APPROVAL=multi-agent` a plan that uses it waits for the user's
    /// approval (`AGENT_<NAME>_CONFIRM`).
    pub confirm: bool,
    /// Headers sent with every call to it, set by its kind from its
    /// configuration (an agent's own credential); never shown by `Debug`.
    pub headers: Vec<(String, Secret)>,
}

/// A configured value that is never shown: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
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

    /// The ids of its targets (deployment names or endpoints), primary first.
    pub fn target_ids(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.id.as_str()).collect()
    }
}

/// The agents, in the order of `AGENTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    agents: Vec<AgentSpec>,
}

impl Registry {
    /// A registry of `agents`, in order (names unique: the reader checks).
    pub fn new(agents: Vec<AgentSpec>) -> Registry {
        Registry { agents }
    }

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

    /// The registry of the agents called `names`, in the registry's order.
    pub fn only(&self, names: &[&str]) -> Registry {
        Registry {
            agents: self
                .agents
                .iter()
                .filter(|a| names.contains(&a.name.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.name.as_str()).collect()
    }
}

/// Whether `name` is a valid agent name: `[A-Z][A-Z0-9_]*`, at most 32 characters.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

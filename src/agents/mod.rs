//! The agents the coordinator routes to, each behind the same small interface.
//!
//! An agent decides which part of the history and state it takes, how it is
//! called, and how its answer becomes our stages and state. It writes into its
//! stage ("Call <NAME> Agent", opened by the coordinator), may set the choice
//! state once, and returns the answer text for the synthesis step. Adding an
//! agent is a new module implementing [`Agent`], a variant of
//! `routing::AgentName` (so the routing schema lists it) and one match arm in
//! `coordinator`.

pub mod gpa;
pub mod ums;

use crate::calls::Caller;
use crate::client::Host;
use crate::coordinator::FlowError;
use crate::emitter::{Emitter, StageId, Transport};
use crate::routing::RoutingDecision;

/// Everything an agent call needs.
#[derive(Debug)]
pub struct AgentCall<'a, H> {
    /// The request being served and the host.
    pub caller: Caller<'a, H>,
    /// The routing decision (its additional instructions).
    pub decision: &'a RoutingDecision,
    /// The agent's stage, already open.
    pub stage: StageId,
}

/// One agent.
pub trait Agent {
    /// Calls the agent, streams its progress into `call.stage` (and stages under
    /// it), sets the state, and returns the agent's answer text.
    fn run<H: Host, T: Transport>(
        call: AgentCall<'_, H>,
        out: &mut Emitter<T>,
    ) -> impl std::future::Future<Output = Result<String, FlowError>>;
}

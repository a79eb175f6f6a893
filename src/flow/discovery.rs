//! Before the coordination call: what the agents of a discovering kind (A2A:
//! its agent card) publish about themselves.
//!
//! The coordination call needs every such document first: it describes an
//! agent that has no description of its own, and an agent whose document
//! cannot be read is left out of this request's registry (stage 0 says why),
//! never failing the request. Documents are kept in the host's store (where
//! the breakers live, so every instance that shares the store shares them) for
//! `CARD_TTL_S` seconds; a document that could not be read is not kept, so
//! the next request reads it again, and one whose agent's call then failed is
//! dropped. The reads of a request run at once, through the driver, bounded
//! like any call (timeouts, breaker, failover over the agent's endpoints) and
//! in size ([`MAX_DOCUMENT_BYTES`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::agents::kinds::{discover_of, Discover, Discovered};
use crate::agents::{Read, Say, Session, Step};
use crate::calls::{CallFailed, CallSpec, Replay, RequestTemplate};
use crate::client::{Host, Method, Target};
use crate::config::registry::{AgentSpec, Registry};
use crate::context::{FlowError, RequestContext};
use crate::error::{CoordError, UpstreamFault};
use crate::flow::driver::{Driver, Ended, Ready, Root, Scheduler, Task};
use crate::flow::emitter::Transport;
use crate::flow::plan::{Finished, Outcome};

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// This request's agents after discovery.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The agents the coordination call offers: the configured ones, less
    /// those whose document could not be read, each described by its
    /// document when it has no description of its own.
    pub registry: Registry,
    /// What was read, by agent name (handed to the agents' sessions).
    pub found: HashMap<String, Discovered>,
    /// Why agents are unavailable, as sentences for stage 0.
    pub notes: String,
    /// The store keys of the documents that came from the store, by agent.
    pub cached: Vec<(String, String)>,
}

/// The store key of `agent`'s document.
fn key(ctx: &RequestContext, agent: &AgentSpec) -> String {
    let primary = agent.targets.first().map_or("", |t| t.identity.as_str());
    format!("discovery:{}:{}:{primary}", ctx.coordinator, agent.name)
}

/// A document kept in the store: when it was read, which target published
/// it, and the document.
fn stored(ctx: &RequestContext, agent: &AgentSpec, bytes: &[u8]) -> Option<Discovered> {
    let ttl = ctx.config.card_ttl_s;
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let at = value.get("at_s")?.as_u64()?;
    let fresh = at <= ctx.unix_s.saturating_add(300) && ctx.unix_s.saturating_sub(at) < ttl;
    let target = value.get("target")?.as_str()?;
    let target = agent.targets.iter().find(|t| t.id == target)?.clone();
    fresh.then(|| Discovered {
        target,
        doc: value.get("doc").cloned().unwrap_or(Value::Null),
    })
}

/// Reads the documents of the registry's discovering agents (see the module
/// docs); `None` when no agent has one.
pub async fn discover<'a, H: Host, T: Transport>(
    ctx: &'a RequestContext,
    driver: &mut Driver<'a, '_, H, T>,
) -> Result<Option<Discovery>, FlowError> {
    let registry = &ctx.config.registry;
    let agents: Vec<(&AgentSpec, &'static Discover)> = registry
        .agents()
        .iter()
        .filter_map(|a| Some((a, discover_of(a)?)))
        .collect();
    if agents.is_empty() {
        return Ok(None);
    }
    let mut found: HashMap<String, Discovered> = HashMap::new();
    let mut cached = Vec::new();
    let mut tasks: Vec<(usize, &AgentSpec, Fetched)> = Vec::new();
    for (i, (agent, _)) in agents.iter().enumerate() {
        let key = key(ctx, agent);
        let hit = (ctx.config.card_ttl_s > 0)
            .then(|| driver.stored(&key))
            .flatten()
            .and_then(|bytes| stored(ctx, agent, &bytes));
        match hit {
            Some(doc) => {
                found.insert(agent.name.clone(), doc);
                cached.push((agent.name.clone(), key));
            }
            None => tasks.push((i, agent, Fetched::default())),
        }
    }
    let mut failures: Vec<(String, String)> = Vec::new();
    if !tasks.is_empty() {
        let mut all = All {
            tasks: tasks
                .iter()
                .map(|(i, agent, fetched)| Task {
                    id: *i,
                    // Silent: a read says nothing in the response.
                    root: Root::Choice,
                    session: Box::new(Fetch::new(agent, agents[*i].1, fetched.clone())),
                })
                .collect(),
            ended: Vec::new(),
        };
        driver.run(&mut all).await?;
        for ended in all.ended {
            let Some((_, agent, fetched)) = tasks.iter().find(|(i, _, _)| *i == ended.id) else {
                continue;
            };
            match (ended.result, fetched.borrow_mut().take()) {
                (Ok(_), Some(doc)) => {
                    if ctx.config.card_ttl_s > 0 {
                        let record =
                            json!({"at_s": ctx.unix_s, "target": doc.target.id, "doc": doc.doc});
                        driver.store(&key(ctx, agent), record.to_string().as_bytes());
                    }
                    found.insert(agent.name.clone(), doc);
                }
                (Err(e), _) => failures.push((agent.name.clone(), e.message())),
                (Ok(_), None) => failures.push((
                    agent.name.clone(),
                    format!("its {} could not be read", agents[ended.id].1.what),
                )),
            }
        }
    }
    // This request's registry, in the configured order.
    let mut notes = String::new();
    let mut available = Vec::new();
    for agent in registry.agents() {
        let mut agent = agent.clone();
        if let Some(discover) = discover_of(&agent) {
            if let Some((_, why)) = failures.iter().find(|(n, _)| *n == agent.name) {
                notes.push_str(&unavailable(&agent, why));
                continue;
            }
            let Some(doc) = found.get(&agent.name) else {
                continue;
            };
            match (discover.read)(&doc.doc, &doc.target.id) {
                Ok(description) => {
                    if agent.description.is_empty() {
                        agent.description = description;
                    }
                }
                Err(why) => {
                    notes.push_str(&unavailable(
                        &agent,
                        &format!("its {} {why}", discover.what),
                    ));
                    found.remove(&agent.name);
                    continue;
                }
            }
        }
        available.push(agent);
    }
    if available.is_empty() {
        return Err(FlowError::Failed(CoordError::BadRequest(format!(
            "no agent is available for this request: {}",
            notes.trim()
        ))));
    }
    Ok(Some(Discovery {
        registry: Registry::new(available),
        found,
        notes,
        cached,
    }))
}

/// The sentence of stage 0 for an agent left out of this request.
fn unavailable(agent: &AgentSpec, why: &str) -> String {
    format!(
        "_Agent {} is unavailable for this request: {}._\n\n",
        agent.name,
        why.trim_end_matches('.')
    )
}

/// Drops from the store the documents of agents whose subtask failed: the
/// next request reads them again (the agent may have moved).
pub fn forget_failed<H: Host, T: Transport>(
    discovery: &Discovery,
    finished: &[Finished],
    driver: &mut Driver<'_, '_, H, T>,
) {
    for (agent, key) in &discovery.cached {
        let failed = finished
            .iter()
            .any(|f| f.agent == *agent && matches!(f.outcome, Outcome::Failed(_)));
        if failed {
            driver.store(key, b"");
        }
    }
}

/// Where a read leaves its document.
type Fetched = Rc<RefCell<Option<Discovered>>>;

/// Runs every task at once.
struct All<'a> {
    tasks: Vec<Task<'a>>,
    ended: Vec<Ended>,
}

impl<'a> Scheduler<'a> for All<'a> {
    fn ready(&mut self, _running: usize) -> Vec<Ready<'a>> {
        self.tasks.drain(..).map(Ready::Start).collect()
    }

    fn ended(&mut self, ended: Ended) {
        self.ended.push(ended);
    }
}

/// One read of an agent's document.
struct Fetch {
    spec: Option<CallSpec>,
    discover: &'static Discover,
    target: Option<Target>,
    failed: Option<CoordError>,
    fetched: Fetched,
}

impl Fetch {
    fn new(agent: &AgentSpec, discover: &'static Discover, fetched: Fetched) -> Fetch {
        let mut request = RequestTemplate::endpoint(Method::Get, discover.path, Vec::new());
        for (name, value) in &agent.headers {
            request = request.header(name, &value.0);
        }
        Fetch {
            spec: Some(CallSpec {
                service: agent.service(),
                targets: agent.targets.clone(),
                request,
                replay: Replay::Safe,
                defer_blame: false,
            }),
            discover,
            target: None,
            failed: None,
            fetched,
        }
    }
}

impl Session for Fetch {
    fn step(&mut self, _say: &mut dyn Say) -> Step {
        if let Some(spec) = self.spec.take() {
            return Step::Call(spec, Read::Whole);
        }
        match self.failed.take() {
            Some(e) => Step::Finish(Err(e)),
            None => Step::Finish(Ok(String::new())),
        }
    }

    fn on_open(&mut self, target: &Target, _say: &mut dyn Say) {
        self.target = Some(target.clone());
    }

    fn on_failed(&mut self, failed: CallFailed, _say: &mut dyn Say) {
        self.failed = Some(failed.error);
    }

    fn on_event(&mut self, _data: &str, _say: &mut dyn Say) -> Result<(), CoordError> {
        Ok(())
    }

    fn on_body(&mut self, body: &[u8], say: &mut dyn Say) -> Result<(), CoordError> {
        let what = self.discover.what;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(say.error(UpstreamFault::Oversized(format!(
                "its {what} is larger than {MAX_DOCUMENT_BYTES} bytes"
            ))));
        }
        let Some(target) = self.target.clone() else {
            return Ok(());
        };
        let doc: Value = serde_json::from_slice(body)
            .map_err(|_| say.error(UpstreamFault::malformed(format!("its {what} is not JSON"))))?;
        (self.discover.read)(&doc, &target.id)
            .map_err(|why| say.error(UpstreamFault::malformed(format!("its {what} {why}"))))?;
        *self.fetched.borrow_mut() = Some(Discovered { target, doc });
        Ok(())
    }
}

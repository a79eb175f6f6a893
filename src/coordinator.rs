//! The flow of one request: coordination, the agents, synthesis.
//!
//! [`prepare`] validates everything that can be checked before the first byte
//! (body size, JSON, `Api-Key`), so those errors are HTTP statuses.
//! [`coordinate`] then runs the flow against a [`Host`] and writes into an
//! [`Emitter`] through one [`Driver`]: the role chunk and the opening of stage
//! 0 are flushed before the coordination call, so the client's first byte
//! never waits on the LLM. In `route` mode one decision picks one agent; in
//! `plan` mode (the default) rounds of plans run through `tasks::PlanRun`,
//! and the synthesis gets every result. The state of the response (what every agent left
//! for later turns, `memory.rs`) is written once, when the agents are done, on
//! success and on failure alike. After the first byte a failure ends the
//! stream with failed stages, the stop chunk, one error event and `[DONE]`
//! ([`stream_response`]); in non-streaming mode it becomes an HTTP error
//! ([`collect_response`]).

use std::collections::HashMap;

use serde_json::Value;

use crate::calls::Caller;
use crate::client::Host;
use crate::config::{Config, CoordinationMode};
pub use crate::context::{FlowError, RequestContext};
use crate::coordination::{stage_name, CoordinationSession, Decided, Decision};
use crate::dial::request::parse_request;
use crate::driver::{Driver, Ending, Root, Single};
use crate::emitter::{ClientGone, Emitter, Transport};
use crate::error::CoordError;
use crate::memory::Memory;
use crate::meter::{self, Phase};
use crate::plan::{self, Finished, Outcome, Plan, PLAN_SYNTHESIS_PROMPT};
use crate::registry::AgentSpec;
use crate::state::token_subject;
use crate::synthesis::{SynthesisSession, SYNTHESIS_PROMPT};
use crate::tasks::PlanRun;
use crate::trace::Trace;

/// What an incoming request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST .../chat/completions`.
    ChatCompletions,
    /// `POST .../rate`: DIAL's rating hook; accepted and ignored, as aidial-sdk does.
    Rate,
    /// `GET /health`.
    Health,
}

/// Maps method and path (query ignored; one trailing `/` ignored) to an
/// endpoint. `HEAD /health` is served like `GET`, without a body.
pub fn route_endpoint(method: &str, path_and_query: &str) -> Result<Endpoint, CoordError> {
    let path = path_and_query.split('?').next().unwrap_or("");
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let (endpoint, allow) = if path.ends_with("/chat/completions") {
        (Endpoint::ChatCompletions, "POST")
    } else if path.starts_with("/openai/deployments/") && path.ends_with("/rate") {
        (Endpoint::Rate, "POST")
    } else if path == "/health" {
        (Endpoint::Health, "GET, HEAD")
    } else {
        return Err(CoordError::NotFound(truncate(path, 200)));
    };
    if allow.split(", ").any(|m| method.eq_ignore_ascii_case(m)) {
        Ok(endpoint)
    } else {
        Err(CoordError::MethodNotAllowed {
            method: truncate(method, 20),
            allow,
        })
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The coordinator's deployment name in a request path
/// (`/openai/deployments/<name>/...`), else `mas-coordinator` (the name
/// `GET /health?deep=1` reports by default).
pub fn deployment_of(path_and_query: &str) -> String {
    let path = path_and_query.split('?').next().unwrap_or("");
    path.strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split('/').next())
        .filter(|name| crate::health::is_coordinator_name(name))
        .unwrap_or(crate::health::DEFAULT_DEPLOYMENT)
        .to_owned()
}

/// What the host knows about the request besides its body.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// Path and query.
    pub path: &'a str,
    /// The trace the request belongs to.
    pub trace: Trace,
    /// Monotonic milliseconds at arrival.
    pub start_ms: u64,
    /// Unix milliseconds at arrival.
    pub unix_ms: u64,
}

/// Validates a chat-completions request. `header` looks a header up by
/// lowercase name.
pub fn prepare(
    config: Config,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    incoming: Incoming<'_>,
) -> Result<RequestContext, CoordError> {
    if body.len() > config.max_request_bytes {
        return Err(CoordError::PayloadTooLarge(config.max_request_bytes));
    }
    let request = parse_request(body)?;
    if request.messages.len() > config.max_messages {
        return Err(CoordError::BadRequest(format!(
            "too many messages ({} > {})",
            request.messages.len(),
            config.max_messages
        )));
    }
    let api_key = header("api-key")
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .ok_or(CoordError::MissingApiKey)?;
    let conversation_id = header("x-conversation-id")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let subject = header("authorization").and_then(|a| token_subject(&a));
    Ok(RequestContext {
        config,
        api_key,
        conversation_id,
        subject,
        coordinator: deployment_of(incoming.path),
        request,
        trace: incoming.trace,
        start_ms: incoming.start_ms,
        unix_s: incoming.unix_ms / 1000,
    })
}

/// Runs coordination, the agents and synthesis through `driver`. Does not
/// end the response: the caller does, by success or failure. The agents
/// called are added to `agents` as soon as they are known (for the log).
///
/// Rounds of coordination decide plans (in `route` mode one round, one plan
/// of one subtask), each run by [`PlanRun`]; re-planning goes on while a plan
/// asks for it (at most `MAX_PLAN_ROUNDS` rounds, never to repeat work already
/// done). Then the state is written, and one synthesis of every result
/// answers. The flow fails only when every subtask failed.
pub async fn coordinate<'a, H: Host, T: Transport>(
    ctx: &'a RequestContext,
    driver: &mut Driver<'a, '_, H, T>,
    agents: &mut Vec<String>,
) -> Result<(), FlowError> {
    let config = &ctx.config;
    let rounds = match config.coordination_mode {
        CoordinationMode::Route => 1,
        CoordinationMode::Plan => config.max_plan_rounds,
    };
    driver.begin();
    let mut finished: Vec<Finished> = Vec::new();
    let mut memories: Vec<(u32, &AgentSpec, Memory)> = Vec::new();
    let mut first_error: Option<CoordError> = None;
    let mut conversations = HashMap::new();
    for round in 1..=rounds {
        meter::set_phase(Phase::Coordination);
        let decided = Decided::default();
        let session = CoordinationSession::new(ctx, round, &finished, decided.clone());
        let mut coordination = Single::new(Root::NewStage(stage_name(round)), Box::new(session));
        driver.run(&mut coordination).await?;
        coordination.result()?;
        let decision = decided.borrow_mut().take();
        let Some(Decision::Run(mut plan)) = decision else {
            break;
        };
        renumber(
            &mut plan,
            u32::try_from(finished.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        for s in &plan.subtasks {
            if !agents.contains(&s.agent_name) {
                agents.push(s.agent_name.clone());
            }
        }
        meter::set_phase(Phase::Agents);
        let mut run = PlanRun::new(ctx, &plan, std::mem::take(&mut conversations));
        let result = driver.run(&mut run).await;
        conversations = std::mem::take(&mut run.conversations);
        finished.append(&mut run.finished);
        memories.append(&mut run.memories);
        if first_error.is_none() {
            first_error = run.first_error.take();
        }
        result?;
        if !plan.replan {
            break;
        }
    }
    finished.sort_by_key(|f| f.id);
    memories.sort_by_key(|(id, _, _)| *id);
    let memories: Vec<(&AgentSpec, Memory)> =
        memories.into_iter().map(|(_, a, m)| (a, m)).collect();
    driver.write_state(&memories);
    if finished
        .iter()
        .all(|f| matches!(f.outcome, Outcome::Failed(_)))
    {
        return Err(FlowError::Failed(first_error.unwrap_or_else(|| {
            CoordError::Internal("the plan had no subtask that could run".to_owned())
        })));
    }
    meter::set_phase(Phase::Synthesis);
    let (prompt, context) = match finished.as_slice() {
        // One subtask: the seed's synthesis of one answer.
        [only] => match &only.outcome {
            Outcome::Done(answer) => (SYNTHESIS_PROMPT, answer.clone()),
            Outcome::Failed(_) => return Ok(()),
        },
        all => (PLAN_SYNTHESIS_PROMPT, plan::sections(all)),
    };
    let mut synthesis = Single::new(
        Root::Choice,
        Box::new(SynthesisSession::new(ctx, prompt, &context)),
    );
    driver.run(&mut synthesis).await?;
    synthesis.result()?;
    Ok(())
}

/// Numbers a round's subtasks from `first` on, in plan order (their
/// dependencies follow), so that every subtask of the turn has its own number.
fn renumber(plan: &mut Plan, first: u32) {
    let map: Vec<(u32, u32)> = plan
        .subtasks
        .iter()
        .zip(first..)
        .map(|(s, n)| (s.task_id, n))
        .collect();
    let to = |id: u32| {
        map.iter()
            .find(|(from, _)| *from == id)
            .map_or(id, |(_, n)| *n)
    };
    for s in &mut plan.subtasks {
        s.task_id = to(s.task_id);
        s.depends_on = s.depends_on.iter().map(|d| to(*d)).collect();
    }
}

/// Logs, once per instance, that states are not signed.
fn warn_unsigned<H: Host>(host: &H, ctx: &RequestContext) {
    if ctx.config.state_secret.is_none() && host.first_in_instance("state_signing_off") {
        let line = serde_json::json!({
            "ts_ms": host.unix_ms(),
            "level": "warn",
            "event": "config",
            "message": "STATE_SECRET is not set: client-supplied state is trusted as it comes (see README, Operating in production)",
        });
        host.log(&line.to_string());
    }
}

/// Runs the flow as an SSE stream and ends it properly either way, then
/// writes the request's log line.
pub async fn stream_response<H: Host, T: Transport>(
    ctx: &RequestContext,
    host: &H,
    out: &mut Emitter<T>,
) {
    warn_unsigned(host, ctx);
    let mut agents = Vec::new();
    let mut driver = Driver::new(Caller { host, ctx }, out);
    let result = coordinate(ctx, &mut driver, &mut agents).await;
    let (outcome, error) = match driver.finish(result).await {
        Ending::Ok => ("ok", None),
        Ending::ClientGone => ("client_gone", None),
        Ending::Failed(e) => ("error", Some(e)),
    };
    log_request(host, ctx, "stream", &agents, 200, outcome, error.as_ref());
}

/// Runs the flow collecting the merged message (non-streaming mode), and
/// writes the request's log line.
pub async fn collect_response<H: Host>(
    ctx: &RequestContext,
    host: &H,
    id: &str,
    created: u64,
) -> Result<Value, CoordError> {
    warn_unsigned(host, ctx);
    let mut out: Emitter<NoTransport> = Emitter::collecting();
    let mut agents = Vec::new();
    let mut driver = Driver::new(Caller { host, ctx }, &mut out);
    let result = coordinate(ctx, &mut driver, &mut agents).await;
    let result = match driver.finish(result).await {
        Ending::Ok => Ok(out.into_merged(id, created).unwrap_or(Value::Null)),
        Ending::Failed(e) => Err(e),
        // A collecting emitter never reports a gone client.
        Ending::ClientGone => Err(CoordError::Internal(
            "a collected answer lost its client".to_owned(),
        )),
    };
    match &result {
        Ok(_) => log_request(host, ctx, "json", &agents, 200, "ok", None),
        Err(e) => log_request(host, ctx, "json", &agents, e.status(), "error", Some(e)),
    }
    result
}

/// One structured line per request: never message content or secrets.
fn log_request<H: Host>(
    host: &H,
    ctx: &RequestContext,
    mode: &str,
    agents: &[String],
    status: u16,
    outcome: &str,
    error: Option<&CoordError>,
) {
    let mut line = serde_json::json!({
        "ts_ms": host.unix_ms(),
        "level": if error.is_some() { "error" } else { "info" },
        "event": "request",
        "trace_id": ctx.trace.trace_id,
        "span_id": ctx.trace.span_id,
        "parent_span_id": ctx.trace.parent_span_id,
        "mode": mode,
        "agent": agents.first(),
        "agents": agents,
        "messages": ctx.request.messages.len(),
        "status": status,
        "outcome": outcome,
        "latency_ms": host.now_ms().saturating_sub(ctx.start_ms),
        "error": error.map(CoordError::message),
    });
    add_own_time(&mut line);
    host.log(&line.to_string());
}

/// Adds the request's own time so far (`own_us`, and `phases_us` by phase),
/// when the host meters it (`meter.rs`).
pub fn add_own_time(line: &mut Value) {
    if let (Some(own), Some(map)) = (meter::snapshot(), line.as_object_mut()) {
        let phases: serde_json::Map<String, Value> = own
            .phases_us
            .iter()
            .map(|(name, us)| ((*name).to_owned(), Value::from(*us)))
            .collect();
        map.insert("own_us".to_owned(), Value::from(own.total_us));
        map.insert("phases_us".to_owned(), Value::Object(phases));
        map.insert("polls".to_owned(), Value::from(own.polls));
        map.insert("writes".to_owned(), Value::from(own.writes));
    }
}

/// The transport of a collecting emitter: never written to.
#[derive(Debug)]
pub struct NoTransport;

impl Transport for NoTransport {
    async fn write(&mut self, _bytes: &[u8]) -> Result<(), ClientGone> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_method_and_path() {
        assert_eq!(
            route_endpoint(
                "POST",
                "/openai/deployments/mas-coordinator/chat/completions?api-version=1"
            ),
            Ok(Endpoint::ChatCompletions)
        );
        assert_eq!(route_endpoint("GET", "/health"), Ok(Endpoint::Health));
        assert_eq!(
            route_endpoint("POST", "/openai/deployments/mas-coordinator/rate"),
            Ok(Endpoint::Rate)
        );
        assert_eq!(route_endpoint("GET", "/nope").unwrap_err().status(), 404);
        assert_eq!(
            route_endpoint("GET", "/openai/deployments/x/chat/completions")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route_endpoint("POST", "/health"),
            Err(CoordError::MethodNotAllowed {
                method: "POST".to_owned(),
                allow: "GET, HEAD"
            })
        );
        assert_eq!(route_endpoint("HEAD", "/health"), Ok(Endpoint::Health));
        assert_eq!(
            route_endpoint("GET", "/openai/deployments/x/chat/completions")
                .unwrap_err()
                .allow(),
            Some("POST")
        );
        // One trailing slash is ignored; the root is not a route.
        assert_eq!(route_endpoint("GET", "/health/"), Ok(Endpoint::Health));
        assert_eq!(
            route_endpoint("POST", "/openai/deployments/m/chat/completions/?a=1"),
            Ok(Endpoint::ChatCompletions)
        );
        assert_eq!(
            route_endpoint("POST", "/openai/deployments/m/rate/"),
            Ok(Endpoint::Rate)
        );
        assert_eq!(
            route_endpoint("GET", "/health//").unwrap_err().status(),
            404
        );
        assert_eq!(route_endpoint("GET", "/").unwrap_err().status(), 404);
    }

    #[test]
    fn the_coordinator_deployment_comes_from_the_path() {
        assert_eq!(
            deployment_of("/openai/deployments/mas-coordinator/chat/completions?x=1"),
            "mas-coordinator"
        );
        assert_eq!(deployment_of("/chat/completions"), "mas-coordinator");
        assert_eq!(
            deployment_of("/openai/deployments/a%2Fb/chat/completions"),
            "mas-coordinator"
        );
    }

    fn incoming() -> Incoming<'static> {
        Incoming {
            path: "/openai/deployments/mas/chat/completions",
            trace: Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16)),
            start_ms: 0,
            unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn prepare_checks_size_body_and_key_in_that_order() {
        let cfg = Config {
            max_request_bytes: 1024,
            ..Config::default()
        };
        let key = |k: &str| (k == "api-key").then(|| "sk".to_owned());
        let big = vec![b' '; 2000];
        assert_eq!(
            prepare(cfg.clone(), key, &big, incoming())
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            prepare(cfg.clone(), key, b"nope", incoming())
                .unwrap_err()
                .status(),
            400
        );
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            prepare(cfg.clone(), |_| None, body, incoming()).unwrap_err(),
            CoordError::MissingApiKey
        );
        let few = Config {
            max_messages: 1,
            ..cfg.clone()
        };
        let two = br#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#;
        assert_eq!(
            prepare(few, key, two, incoming()).unwrap_err().message(),
            "Invalid request: too many messages (2 > 1)"
        );
        let ctx = prepare(
            cfg,
            |k| match k {
                "api-key" => Some("sk".into()),
                "x-conversation-id" => Some("conv%201".into()),
                // {"sub":"user-42","name":"Ada"}
                "authorization" => Some(
                    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyLTQyIiwibmFtZSI6IkFkYSJ9.x".into(),
                ),
                _ => None,
            },
            body,
            incoming(),
        )
        .unwrap();
        assert_eq!(ctx.api_key, "sk");
        assert_eq!(ctx.conversation_id.as_deref(), Some("conv%201"));
        assert_eq!(ctx.subject.as_deref(), Some("user-42"));
        assert_eq!(ctx.coordinator, "mas");
        assert_eq!(ctx.unix_s, 1_700_000_000);
        assert!(!ctx.streaming());
    }
}

//! The flow of one request: coordination, the agents, synthesis.
//!
//! [`prepare`] validates everything that can be checked before the first byte
//! (body size, JSON, `Api-Key`), so those errors are HTTP statuses.
//! [`coordinate`] then runs the flow against a [`Host`] and writes into an
//! [`Emitter`] through one [`Driver`]: the role chunk and the opening of stage
//! 0 are flushed before the coordination call, so the client's first byte
//! never waits on the LLM. The state of the response (what every agent left
//! for later turns, `memory.rs`) is written once, when the agents are done, on
//! success and on failure alike. After the first byte a failure ends the
//! stream with failed stages, the stop chunk, one error event and `[DONE]`
//! ([`stream_response`]); in non-streaming mode it becomes an HTTP error
//! ([`collect_response`]).

use serde_json::Value;

use crate::agents::dial::DialSession;
use crate::agents::ums::{find_conversation, UmsSession};
use crate::agents::{CompletionCall, Session};
use crate::calls::{dial_targets, CallSpec, Caller, Replay, RequestTemplate};
use crate::client::Host;
use crate::config::Config;
pub use crate::context::{FlowError, RequestContext};
use crate::dial::request::parse_request;
use crate::dial::response::StageStatus;
use crate::driver::{Driver, Root, Single};
use crate::emitter::{ClientGone, Emitter, Transport};
use crate::error::{CoordError, Service};
use crate::memory::{self, Memory};
use crate::registry::{AgentKind, AgentSpec};
use crate::routing;
use crate::state::{sign, token_subject};
use crate::synthesis::{SynthesisSession, SYNTHESIS_PROMPT};
use crate::trace::Trace;

/// Name of stage 0.
pub const COORDINATION_STAGE: &str = "Coordination Request";

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

/// Maps method and path (query ignored) to an endpoint.
pub fn route_endpoint(method: &str, path_and_query: &str) -> Result<Endpoint, CoordError> {
    let path = path_and_query.split('?').next().unwrap_or("");
    let (endpoint, allowed) = if path.ends_with("/chat/completions") {
        (Endpoint::ChatCompletions, "POST")
    } else if path.starts_with("/openai/deployments/") && path.ends_with("/rate") {
        (Endpoint::Rate, "POST")
    } else if path == "/health" {
        (Endpoint::Health, "GET")
    } else {
        return Err(CoordError::NotFound(truncate(path, 200)));
    };
    if method.eq_ignore_ascii_case(allowed) {
        Ok(endpoint)
    } else {
        Err(CoordError::MethodNotAllowed(truncate(method, 20)))
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
        .filter(|name| {
            !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
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

/// A session for one call of `agent`, with `task` appended to the user's
/// message, in the conversation `known` for UMS-kind agents.
pub fn agent_session<'a>(
    ctx: &'a RequestContext,
    agent: &'a AgentSpec,
    task: Option<String>,
    known: Option<(String, Option<String>)>,
) -> Box<dyn Session + 'a> {
    match &agent.kind {
        AgentKind::Dial { .. } => Box::new(DialSession::new(ctx, agent, task)),
        AgentKind::Ums { .. } => Box::new(UmsSession::new(ctx, agent, task.as_deref(), known)),
    }
}

/// The non-streaming coordination call of `body` on the LLM deployments.
pub fn coordination_call(ctx: &RequestContext, body: Vec<u8>) -> CompletionCall {
    CompletionCall::new(CallSpec {
        service: Service::llm(),
        targets: dial_targets(&ctx.config, &ctx.config.llm_targets()),
        request: RequestTemplate::dial_chat(ctx, body),
        replay: Replay::Safe,
        defer_blame: false,
    })
}

/// Writes the one state of the response: what the agents left, signed.
pub fn write_state<T: Transport>(
    ctx: &RequestContext,
    out: &mut Emitter<T>,
    memories: &[(&AgentSpec, Memory)],
) {
    if let Some(state) = memory::compose(memories.iter().map(|(a, m)| (*a, m))) {
        out.set_state(sign(state, &ctx.state_trust()));
    }
}

/// Runs coordination, the agents and synthesis, writing the response into
/// `out`. Does not end the response: the caller does, by success or failure.
/// The agents called are added to `agents` as soon as they are known (for the
/// log).
pub async fn coordinate<H: Host, T: Transport>(
    ctx: &RequestContext,
    host: &H,
    out: &mut Emitter<T>,
    agents: &mut Vec<String>,
) -> Result<(), FlowError> {
    let caller = Caller { host, ctx };
    let registry = &ctx.config.registry;
    out.role();
    let stage0 = out.open_stage(COORDINATION_STAGE, None);
    let mut driver = Driver::new(caller, out);

    let mut routing_call = Single::new(
        Root::Existing(stage0),
        Box::new(coordination_call(ctx, routing::request_body(ctx))),
    );
    driver.run(&mut routing_call).await?;
    let answer = routing_call.result()?;
    let routed = routing::parse_decision(Some(&answer), registry);
    driver
        .out
        .stage_content(stage0, &routing::stage_text(&routed, registry));
    driver.out.close_stage(stage0, StageStatus::Completed);

    let agent = registry
        .get(&routed.decision.agent_name)
        .unwrap_or_else(|| registry.fallback());
    agents.push(agent.name.clone());
    let known = match agent.kind {
        AgentKind::Ums { .. } => find_conversation(ctx, agent),
        AgentKind::Dial { .. } => None,
    };
    let session = agent_session(
        ctx,
        agent,
        routed.decision.additional_instructions.clone(),
        known,
    );
    let mut agent_call = Single::new(Root::NewStage(agent.stage_name()), session);
    driver.run(&mut agent_call).await?;
    let memories: Vec<(&AgentSpec, Memory)> = agent_call
        .ended
        .as_mut()
        .map(|e| std::mem::take(&mut e.memory))
        .unwrap_or_default()
        .into_iter()
        .map(|m| (agent, m))
        .collect();
    write_state(ctx, driver.out, &memories);
    let answer = agent_call.result()?;

    let mut synthesis = Single::new(
        Root::Choice,
        Box::new(SynthesisSession::new(ctx, SYNTHESIS_PROMPT, &answer)),
    );
    driver.run(&mut synthesis).await?;
    synthesis.result()?;
    Ok(())
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
    let result = coordinate(ctx, host, out, &mut agents).await;
    let (outcome, error) = match result {
        Ok(()) => {
            let gone = out.finish_ok().await.is_err();
            (if gone { "client_gone" } else { "ok" }, None)
        }
        Err(FlowError::ClientGone) => ("client_gone", None),
        Err(FlowError::Failed(e)) => {
            let _ = out.finish_err(&e).await;
            ("error", Some(e))
        }
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
    let result = match coordinate(ctx, host, &mut out, &mut agents).await {
        Ok(()) => {
            out.close_open_stages(StageStatus::Completed);
            Ok(out.into_merged(id, created).unwrap_or(Value::Null))
        }
        Err(FlowError::Failed(e)) => Err(e),
        // A collecting emitter never reports a gone client.
        Err(FlowError::ClientGone) => Err(CoordError::BadRequest("client went away".to_owned())),
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
    let line = serde_json::json!({
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
    host.log(&line.to_string());
}

/// The transport of a collecting emitter: never written to.
#[derive(Debug)]
pub struct NoTransport;

impl Transport for NoTransport {
    async fn write(&mut self, _bytes: Vec<u8>) -> Result<(), ClientGone> {
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
        assert_eq!(route_endpoint("POST", "/health").unwrap_err().status(), 405);
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

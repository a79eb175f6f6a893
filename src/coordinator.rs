//! The three-step flow: routing, the agent call, synthesis.
//!
//! [`prepare`] validates everything that can be checked before the first byte
//! (path, method, body size, JSON, `Api-Key`), so those errors are HTTP statuses.
//! [`coordinate`] then runs the flow against an [`Host`] and writes into an
//! [`Emitter`]: the role chunk and the opening of stage 0 are flushed before the
//! routing call, so the client's first byte never waits on the LLM. After that,
//! a failure ends the stream with failed stages, the stop chunk, one error event
//! and `[DONE]` ([`stream_response`]); in non-streaming mode it becomes an HTTP
//! error ([`collect_response`]).

use serde_json::Value;

use crate::agents::gpa::{Gpa, StateTrust};
use crate::agents::ums::Ums;
use crate::agents::{Agent, AgentCall};
use crate::calls::{call, parse_event, pump_events, read_answer, Caller, Next};
use crate::client::{Host, OutboundRequest};
use crate::config::Config;
use crate::dial::request::{parse_request, ChatRequest};
use crate::dial::response::StageStatus;
use crate::dial::upstream::{error_text, Completion, StreamChunk};
use crate::emitter::{ClientGone, Emitter, Transport};
use crate::error::{CoordError, Upstream, UpstreamFault};
use crate::routing::{self, AgentName};
use crate::synthesis;
use crate::trace::Trace;

/// Name of stage 0.
pub const COORDINATION_STAGE: &str = "Coordination Request";

/// Why the flow stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// The client disconnected: stop quietly.
    ClientGone,
    /// A failure to report to the client.
    Failed(CoordError),
}

impl From<ClientGone> for FlowError {
    fn from(_: ClientGone) -> Self {
        FlowError::ClientGone
    }
}

impl From<CoordError> for FlowError {
    fn from(e: CoordError) -> Self {
        FlowError::Failed(e)
    }
}

/// A validated request, ready to be coordinated.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Configuration for this request.
    pub config: Config,
    /// The per-request DIAL key: sent only to DIAL Core.
    pub api_key: String,
    /// `X-CONVERSATION-ID`, forwarded to GPA when present.
    pub conversation_id: Option<String>,
    /// The parsed body.
    pub request: ChatRequest,
    /// The trace this request belongs to.
    pub trace: Trace,
    /// When the request arrived (host's monotonic milliseconds).
    pub start_ms: u64,
}

impl RequestContext {
    /// How to trust the states in this request's history: the signing secret
    /// and the conversation they must belong to.
    pub fn state_trust(&self) -> StateTrust<'_> {
        StateTrust {
            secret: self.config.state_secret.as_deref(),
            binding: self.conversation_id.as_deref().unwrap_or(""),
        }
    }

    /// Whether the client asked for SSE.
    pub fn streaming(&self) -> bool {
        self.request.stream.unwrap_or(false)
    }
}

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

/// Validates a chat-completions request. `header` looks a header up by
/// lowercase name.
pub fn prepare(
    config: Config,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    trace: Trace,
    start_ms: u64,
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
    Ok(RequestContext {
        config,
        api_key,
        conversation_id,
        request,
        trace,
        start_ms,
    })
}

/// Runs routing, the agent and synthesis, writing the response into `out`.
/// Does not end the response: the caller does, by success or failure. The
/// chosen agent is written to `agent` as soon as it is known (for the log).
pub async fn coordinate<H: Host, T: Transport>(
    ctx: &RequestContext,
    host: &H,
    out: &mut Emitter<T>,
    agent: &mut Option<AgentName>,
) -> Result<(), FlowError> {
    let caller = Caller { host, ctx };
    out.role();
    let stage0 = out.open_stage(COORDINATION_STAGE, None);
    out.flush().await?;

    let (routed, note) = route(caller).await?;
    if let Some(note) = note {
        out.stage_content(stage0, &note);
    }
    out.stage_content(stage0, &routing::stage_text(&routed));
    out.close_stage(stage0, StageStatus::Completed);

    let chosen = routed.decision.agent_name;
    *agent = Some(chosen);
    let stage1 = out.open_stage(&format!("Call {} Agent", chosen.as_str()), None);
    out.flush().await?;
    let call = AgentCall {
        caller,
        decision: &routed.decision,
        stage: stage1,
    };
    let answer = match chosen {
        AgentName::Gpa => Gpa::run(call, out).await?,
        AgentName::Ums => Ums::run(call, out).await?,
    };
    out.close_stage(stage1, StageStatus::Completed);
    out.flush().await?;

    synthesize(caller, &answer, out).await
}

fn llm_request(ctx: &RequestContext, deployment: &str, body: &[u8]) -> OutboundRequest {
    OutboundRequest::post_json(ctx.config.deployment_url(deployment), body.to_vec())
        .header("api-key", &ctx.api_key)
}

/// Step 1: the routing call. Returns the decision and, when a backup
/// deployment answered, a note for stage 0.
async fn route<H: Host>(
    caller: Caller<'_, H>,
) -> Result<(routing::Routed, Option<String>), CoordError> {
    let ctx = caller.ctx;
    let targets = ctx.config.llm_targets();
    let answered = call(caller, Upstream::Llm, &targets, |deployment| {
        let body = routing::request_body(deployment, &ctx.request.messages);
        llm_request(ctx, deployment, &body)
    })
    .await?;
    let site = answered.site;
    let note = answered.failover_note();
    let bytes = read_answer(answered).await?;
    let completion: Completion = serde_json::from_slice(&bytes).map_err(|_| {
        site.error(UpstreamFault::Malformed(
            "the routing answer is not a chat completion".to_owned(),
        ))
    })?;
    let text = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content);
    Ok((routing::parse_decision(text.as_deref()), note))
}

/// Step 3: the streamed final answer.
async fn synthesize<H: Host, T: Transport>(
    caller: Caller<'_, H>,
    answer: &str,
    out: &mut Emitter<T>,
) -> Result<(), FlowError> {
    let ctx = caller.ctx;
    let targets = ctx.config.llm_targets();
    let answered = call(caller, Upstream::Llm, &targets, |deployment| {
        let body = synthesis::request_body(deployment, &ctx.request.messages, answer);
        llm_request(ctx, deployment, &body)
    })
    .await?;
    let site = answered.site;
    pump_events(answered, out, |data, out| {
        let chunk: StreamChunk = parse_event(site, data)?;
        if let Some(error) = &chunk.error {
            return Err(site.error(UpstreamFault::ErrorEvent(site.redact(&error_text(error)))));
        }
        if let Some(text) = chunk.into_delta().and_then(|d| d.content) {
            out.content(&text);
        }
        Ok(Next::Continue)
    })
    .await
}

/// Runs the flow as an SSE stream and ends it properly either way, then
/// writes the request's log line.
pub async fn stream_response<H: Host, T: Transport>(
    ctx: &RequestContext,
    host: &H,
    out: &mut Emitter<T>,
) {
    let mut agent = None;
    let result = coordinate(ctx, host, out, &mut agent).await;
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
    log_request(host, ctx, "stream", agent, 200, outcome, error.as_ref());
}

/// Runs the flow collecting the merged message (non-streaming mode), and
/// writes the request's log line.
pub async fn collect_response<H: Host>(
    ctx: &RequestContext,
    host: &H,
    id: &str,
    created: u64,
) -> Result<Value, CoordError> {
    let mut out: Emitter<NoTransport> = Emitter::collecting();
    let mut agent = None;
    let result = match coordinate(ctx, host, &mut out, &mut agent).await {
        Ok(()) => {
            out.close_open_stages(StageStatus::Completed);
            Ok(out.into_merged(id, created).unwrap_or(Value::Null))
        }
        Err(FlowError::Failed(e)) => Err(e),
        // A collecting emitter never reports a gone client.
        Err(FlowError::ClientGone) => Err(CoordError::BadRequest("client went away".to_owned())),
    };
    match &result {
        Ok(_) => log_request(host, ctx, "json", agent, 200, "ok", None),
        Err(e) => log_request(host, ctx, "json", agent, e.status(), "error", Some(e)),
    }
    result
}

/// One structured line per request: never message content or secrets.
fn log_request<H: Host>(
    host: &H,
    ctx: &RequestContext,
    mode: &str,
    agent: Option<AgentName>,
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
        "agent": agent.map(AgentName::as_str),
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
    fn prepare_checks_size_body_and_key_in_that_order() {
        let cfg = Config {
            max_request_bytes: 1024,
            ..Config::default()
        };
        let key = |k: &str| (k == "api-key").then(|| "sk".to_owned());
        let big = vec![b' '; 2000];
        let t = || Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16));
        assert_eq!(
            prepare(cfg.clone(), key, &big, t(), 0)
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            prepare(cfg.clone(), key, b"nope", t(), 0)
                .unwrap_err()
                .status(),
            400
        );
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            prepare(cfg.clone(), |_| None, body, t(), 0).unwrap_err(),
            CoordError::MissingApiKey
        );
        let few = Config {
            max_messages: 1,
            ..cfg.clone()
        };
        let two = br#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#;
        assert_eq!(
            prepare(few, key, two, t(), 0).unwrap_err().message(),
            "Invalid request: too many messages (2 > 1)"
        );
        let ctx = prepare(
            cfg,
            |k| match k {
                "api-key" => Some("sk".into()),
                "x-conversation-id" => Some("conv%201".into()),
                _ => None,
            },
            body,
            t(),
            0,
        )
        .unwrap();
        assert_eq!(ctx.api_key, "sk");
        assert_eq!(ctx.conversation_id.as_deref(), Some("conv%201"));
        assert!(!ctx.streaming());
    }
}

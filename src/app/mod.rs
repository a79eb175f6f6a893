//! The application: what the host hands every incoming request to, and every
//! decision about its answer — which endpoint it is, the body limit, health,
//! refusals and their log line, streaming or collecting the flow, and the
//! request's log line. Plain Rust over [`Host`] and a [`Responder`], so all of
//! it is tested natively (`tests/app.rs`); `host.rs` only adapts wasi:http.
//!
//! [`prepare`] validates everything that can be checked before the first byte
//! (body size, JSON, `Api-Key`), so those errors are HTTP statuses. After the
//! first byte a failure ends the stream with failed stages, the stop chunk,
//! one error event and `[DONE]` ([`stream_response`]); in non-streaming mode
//! it becomes an HTTP error ([`collect_response`]).

pub mod health;
pub mod properties;

use std::future::Future;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::calls::Caller;
use crate::client::Host;
use crate::config::{parse_endpoint, Config};
pub use crate::context::{FlowError, RequestContext};
use crate::error::CoordError;
use crate::flow::coordinate;
use crate::flow::driver::{Driver, Ending};
use crate::flow::emitter::{ClientGone, Emitter, Transport};
use crate::memory::pending::{self, Resume};
use crate::memory::state::token_subject;
use crate::meter;
use crate::trace::{span_id, trace_id, Trace};
use crate::wire::request::parse_request;
use crate::wire::response::SseEncoder;
use properties::{APPLICATION_ID_HEADER, PROPERTIES_HEADER, SCHEMA_PATH};

/// An incoming HTTP request, as the host reads it.
pub struct HttpRequest<'r, B> {
    /// The method (`POST`, `GET`, ...).
    pub method: &'r str,
    /// Path and query.
    pub path: &'r str,
    /// A header's value by name (any case).
    pub header: &'r dyn Fn(&str) -> Option<String>,
    /// The body, in chunks (`Err` when it cannot be read).
    pub body: B,
}

impl<B> std::fmt::Debug for HttpRequest<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A whole answer: status, headers, body of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Allow`, on a 405.
    pub allow: Option<&'static str>,
    /// `Cache-Control` (`no-cache` but for the application type schema).
    pub cache_control: &'static str,
    /// `X-Trace-ID`.
    pub trace_id: &'a str,
    /// The body; with `head_only` it is not sent (nor its length).
    pub body: Vec<u8>,
    /// A `HEAD` answer: the head of the `GET` answer, without the body.
    pub head_only: bool,
}

/// How the app answers: the host side of one response.
pub trait Responder {
    /// The body of a streamed answer.
    type Stream: Transport;
    /// Sends a whole answer.
    fn answer(self, answer: Answer<'_>) -> impl Future<Output = ()>;
    /// Starts a streamed answer (`text/event-stream`) whose head leaves with
    /// its first write.
    fn stream(self, status: u16, trace_id: &str) -> Self::Stream;
}

/// What an incoming request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST .../chat/completions`.
    ChatCompletions,
    /// `POST .../rate`: DIAL's rating hook; accepted and ignored, as aidial-sdk does.
    Rate,
    /// `GET /health`: the configuration is usable (readiness).
    Health,
    /// `GET /health/live`: the component serves (liveness); reads nothing.
    Live,
    /// `GET /v1/schema`: the application type schema DIAL Core reads.
    Schema,
    /// `GET /openai/deployments/<id>/configuration`: the schema of the
    /// per-conversation settings of an application instance.
    Configuration,
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
    } else if path == "/health/live" {
        (Endpoint::Live, "GET, HEAD")
    } else if path == SCHEMA_PATH {
        (Endpoint::Schema, "GET, HEAD")
    } else if path.starts_with("/openai/deployments/") && path.ends_with("/configuration") {
        (Endpoint::Configuration, "GET")
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
        .filter(|name| health::is_coordinator_name(name))
        .unwrap_or(health::DEFAULT_DEPLOYMENT)
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
    let mut config = config;
    let mut request = parse_request(body)?;
    if let Some(settings) = request.custom_fields.take().and_then(|c| c.configuration) {
        properties::apply_conversation(&mut config, &settings)?;
    }
    // One choice per answer, as aidial-sdk's single-choice applications answer.
    match request.n {
        Some(0) => return Err(CoordError::BadRequest("n must be at least 1".to_owned())),
        Some(n) if n > 1 => {
            return Err(CoordError::Unsupported(format!(
                "{} deployment doesn't support n > 1",
                deployment_of(incoming.path)
            )))
        }
        _ => {}
    }
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
    let application = application_of(&header);
    let mut ctx = RequestContext {
        config,
        api_key,
        conversation_id,
        subject,
        application,
        coordinator: deployment_of(incoming.path),
        request,
        trace: incoming.trace,
        start_ms: incoming.start_ms,
        unix_s: incoming.unix_ms / 1000,
        recall: std::sync::OnceLock::new(),
        resume: Resume::New,
    };
    // What the last turn left pending (a question, a plan waiting for
    // approval) decides how this one goes on.
    let mut messages = std::mem::take(&mut ctx.request.messages);
    ctx.resume = pending::resume(&mut messages, &ctx.state_trust());
    ctx.request.messages = messages;
    Ok(ctx)
}

/// `X-DIAL-APPLICATION-ID`, trimmed, when set (at most 256 characters).
fn application_of(header: &impl Fn(&str) -> Option<String>) -> Option<String> {
    header(APPLICATION_ID_HEADER)
        .map(|v| truncate(v.trim(), 256))
        .filter(|v| !v.is_empty())
}

/// The configuration of a request: the environment's (`env` looks a
/// variable up), with the application properties DIAL Core sent on top
/// (`config/properties.rs`).
fn request_config(
    env: &dyn Fn(&str) -> Option<String>,
    header: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, CoordError> {
    let base = Config::from_lookup(env)?;
    properties::configure(env, base, header(PROPERTIES_HEADER).as_deref())
}

/// The base URL the application type schema names: `PUBLIC_URL`, else the
/// `Host` the request reached (plain HTTP).
fn public_base(config: &Config, header: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(url) = &config.public_url {
        return url.clone();
    }
    header("host")
        .and_then(|host| parse_endpoint("Host", &format!("http://{}", host.trim())).ok())
        .unwrap_or_default()
}

/// Serves one request: `env` looks a configuration variable up (only the
/// endpoints that need the configuration read it), `respond` sends the answer.
pub async fn app<H, B, R>(
    host: &H,
    request: HttpRequest<'_, B>,
    env: &dyn Fn(&str) -> Option<String>,
    respond: R,
) where
    H: Host,
    B: Stream<Item = Result<Vec<u8>, ()>> + Unpin,
    R: Responder,
{
    let header = request.header;
    let trace = Trace::from_headers(
        header("traceparent").as_deref(),
        header("x-trace-id").as_deref(),
        trace_id(host.random_u64(), host.random_u64()),
        span_id(host.random_u64()),
    );
    let path = request.path;
    match route_endpoint(request.method, path) {
        Ok(Endpoint::Health) => {
            // HEAD is GET without the body (same status and headers).
            let head_only = request.method.eq_ignore_ascii_case("HEAD");
            let (status, report) = match Config::from_lookup(env) {
                Err(e) => (500, health::misconfigured(&e)),
                Ok(config) if health::wants_deep(path) => {
                    if let Err(e) = health::authorize(&config, header("authorization").as_deref()) {
                        return answer_error(respond, &trace, &e).await;
                    }
                    (200, health::deep(host, &config, path).await)
                }
                Ok(config) => (200, health::shallow(host, &config)),
            };
            let body = serde_json::to_vec(&report).unwrap_or_default();
            send(respond, &trace, status, body, head_only).await;
        }
        Ok(Endpoint::Live) => {
            let head_only = request.method.eq_ignore_ascii_case("HEAD");
            send(
                respond,
                &trace,
                200,
                br#"{"status":"alive"}"#.to_vec(),
                head_only,
            )
            .await;
        }
        Ok(Endpoint::Rate) => send(respond, &trace, 200, Vec::new(), false).await,
        Ok(Endpoint::Schema) => {
            let head_only = request.method.eq_ignore_ascii_case("HEAD");
            match Config::from_lookup(env) {
                Ok(config) => {
                    let schema = properties::type_schema(&public_base(&config, header));
                    let body = serde_json::to_vec(&schema).unwrap_or_default();
                    if !head_only {
                        meter::count_write();
                    }
                    respond
                        .answer(Answer {
                            status: 200,
                            content_type: "application/json",
                            allow: None,
                            cache_control: "public, max-age=300",
                            trace_id: &trace.trace_id,
                            body,
                            head_only,
                        })
                        .await;
                }
                Err(e) => answer_error(respond, &trace, &e).await,
            }
        }
        Ok(Endpoint::Configuration) => match request_config(env, header) {
            Ok(config) => {
                let schema = properties::configuration_schema(&config);
                let body = serde_json::to_vec(&schema).unwrap_or_default();
                send(respond, &trace, 200, body, false).await;
            }
            Err(e) => rejected(host, respond, &trace, application_of(&header), &e).await,
        },
        Ok(Endpoint::ChatCompletions) => chat(host, request, env, respond, trace).await,
        Err(e) => answer_error(respond, &trace, &e).await,
    }
}

/// A JSON answer.
async fn send<R: Responder>(respond: R, trace: &Trace, status: u16, body: Vec<u8>, head: bool) {
    if !body.is_empty() && !head {
        meter::count_write();
    }
    respond
        .answer(Answer {
            status,
            content_type: "application/json",
            allow: None,
            cache_control: "no-cache",
            trace_id: &trace.trace_id,
            body,
            head_only: head,
        })
        .await;
}

/// An error before the first byte: its status and DIAL error body.
async fn answer_error<R: Responder>(respond: R, trace: &Trace, e: &CoordError) {
    meter::count_write();
    send_error(respond, trace, e).await;
}

/// Sends the error answer (the caller counts the write).
async fn send_error<R: Responder>(respond: R, trace: &Trace, e: &CoordError) {
    respond
        .answer(Answer {
            status: e.status(),
            content_type: "application/json",
            allow: e.allow(),
            cache_control: "no-cache",
            trace_id: &trace.trace_id,
            body: e.body_json(),
            head_only: false,
        })
        .await;
}

/// A chat request refused before the flow started: its log line, then the
/// error. The line comes first because an answer of known length is complete
/// for the client as soon as its bytes arrive; it counts the answer's write.
async fn rejected<H: Host, R: Responder>(
    host: &H,
    respond: R,
    trace: &Trace,
    application: Option<String>,
    e: &CoordError,
) {
    meter::count_write();
    let mut line = serde_json::json!({
        "ts_ms": host.unix_ms(),
        "level": "warn",
        "event": "request",
        "trace_id": trace.trace_id,
        "span_id": trace.span_id,
        "parent_span_id": trace.parent_span_id,
        "status": e.status(),
        "outcome": "rejected",
        "error": e.message(),
    });
    add_application(&mut line, application.as_deref());
    add_own_time(&mut line);
    host.log(&line.to_string());
    send_error(respond, trace, e).await;
}

async fn chat<H, B, R>(
    host: &H,
    request: HttpRequest<'_, B>,
    env: &dyn Fn(&str) -> Option<String>,
    respond: R,
    trace: Trace,
) where
    H: Host,
    B: Stream<Item = Result<Vec<u8>, ()>> + Unpin,
    R: Responder,
{
    let start_ms = host.now_ms();
    let unix_ms = host.unix_ms();
    let header = request.header;
    let application = || application_of(&header);
    let config = match request_config(env, header) {
        Ok(c) => c,
        Err(e) => return rejected(host, respond, &trace, application(), &e).await,
    };
    let expected = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let body = match read_limited(request.body, config.max_request_bytes, expected).await {
        Ok(b) => b,
        Err(e) => return rejected(host, respond, &trace, application(), &e).await,
    };
    let incoming = Incoming {
        path: request.path,
        trace: trace.clone(),
        start_ms,
        unix_ms,
    };
    let ctx = match prepare(config, header, &body, incoming) {
        Ok(ctx) => ctx,
        Err(e) => return rejected(host, respond, &trace, application(), &e).await,
    };
    drop(body);
    let id = format!(
        "chatcmpl-{:016x}{:016x}",
        host.random_u64(),
        host.random_u64()
    );
    let created = unix_ms / 1000;
    if ctx.streaming() {
        let transport = respond.stream(200, &trace.trace_id);
        let mut emitter = Emitter::streaming(SseEncoder::new(&id, created), transport);
        stream_response(&ctx, host, &mut emitter).await;
    } else {
        match collect_response(&ctx, host, &id, created).await {
            Ok(message) => {
                let body = serde_json::to_vec(&message).unwrap_or_default();
                send(respond, &trace, 200, body, false).await;
            }
            Err(e) => answer_error(respond, &trace, &e).await,
        }
    }
}

/// Reads the request body, refusing more than `limit` bytes (answered at
/// once; the host closes the connection after the 413, and a client that
/// reads while it sends gets the answer).
async fn read_limited<B>(
    mut body: B,
    limit: usize,
    expected: Option<usize>,
) -> Result<Vec<u8>, CoordError>
where
    B: Stream<Item = Result<Vec<u8>, ()>> + Unpin,
{
    // One allocation for the whole body when its length is announced.
    let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|()| {
            CoordError::BadRequest("the request body could not be read".to_owned())
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(CoordError::PayloadTooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Logs, once per instance, when states are not signed or unsigned ones are
/// read.
fn warn_unsigned<H: Host>(host: &H, ctx: &RequestContext) {
    let message = match (&ctx.config.state_secret, ctx.config.allow_unsigned_state) {
        (Some(_), false) => return,
        (Some(_), true) => "ALLOW_UNSIGNED_STATE is true: a state without a signature is trusted as it comes (see docs/operating.md, State and secrets)",
        (None, true) => "STATE_SECRET is not set and ALLOW_UNSIGNED_STATE is true: client-supplied state is trusted as it comes (see docs/operating.md, State and secrets)",
        (None, false) => "STATE_SECRET is not set: states are not signed and every state sent back is ignored, so agents do not see their earlier turns (see docs/operating.md, State and secrets)",
    };
    if host.first_in_instance("state_signing_off") {
        let line = serde_json::json!({
            "ts_ms": host.unix_ms(),
            "level": "warn",
            "event": "config",
            "message": message,
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
    add_application(&mut line, ctx.application.as_deref());
    add_own_time(&mut line);
    host.log(&line.to_string());
}

/// Names the application instance (`X-DIAL-APPLICATION-ID`) in a log line,
/// when DIAL Core named one.
fn add_application(line: &mut Value, application: Option<&str>) {
    if let (Some(id), Some(map)) = (application, line.as_object_mut()) {
        map.insert("application".to_owned(), Value::from(id));
    }
}

/// Adds the request's own time so far (`own_us`, and `phases_us` by phase),
/// its polls, client writes and host calls by kind (`host_calls`), when the
/// host meters it (`meter.rs`).
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
        let calls: serde_json::Map<String, Value> = own
            .host_calls
            .iter()
            .map(|(kind, n)| ((*kind).to_owned(), Value::from(*n)))
            .collect();
        map.insert("host_calls".to_owned(), Value::Object(calls));
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

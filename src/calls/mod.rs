//! Calling upstreams: failover across a service's targets, the circuit breaker
//! per target, timeouts (first byte, idle gap, total), tracing headers, one log
//! line per call, and every failure mapped to the one error type.
//!
//! [`open`] walks the targets of a [`CallSpec`] in order (primary, then
//! backups) until one accepts the call with a success head; what a failed
//! attempt means (fail over or not, what the breaker counts) is the pure
//! [`verdict`], and the breaker's state changes are `breaker::record_*`. [`Opened::body`]
//! then yields the body under the idle and total deadlines, and
//! [`Opened::finish`] writes the call's log line and feeds the breaker.
//!
//! **Failover** happens only where the upstream provably did not start the
//! work, or where the work has no side effects: a target whose breaker is open
//! is skipped; a request that could not be sent (connection refused, name not
//! resolved, TLS failure), a 503 or a 429 moves to the next target. A call
//! marked [`Replay::Safe`] (an LLM answer, a health probe, a lookup) also moves
//! on after a 5xx, a 408 or a first-byte timeout; any other call reports those,
//! because the upstream may have acted on it (a UMS "delete user", a GPA code
//! run). Once a head with a success status has arrived nothing is replayed.
//!
//! **The breaker** counts the target's failures only, after resilience4j and
//! Envoy: the request could not be sent, no head in time, a 5xx before the
//! head, a stream cut by the transport or stalled past the idle or total
//! deadline after it. A 4xx (429 included) is this request's or this caller's
//! (a bad request, an attachment they cannot read, their quota) and leaves the
//! breaker as it is; so does what one request's content causes after the head
//! (an error event, malformed or oversized data). Only a whole answer resets
//! it. Failures are counted with the request's caller, the user of the
//! forwarded token (see `BreakerConfig::min_callers` and
//! `RequestContext::caller_id`).

pub mod breaker;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{select, Either};
use futures::{Stream, StreamExt};

use crate::client::{redacted_headers, Host, Method, OutboundRequest, Target, TransportError};
use crate::config::LogLevel;
use crate::context::RequestContext;
use crate::error::{redact, CoordError, Deadline, Service, UpstreamFault};
use crate::limits::{ERROR_EXCERPT_WAIT_MS, MAX_ERROR_EXCERPT_BYTES};
use crate::trace::span_id;
use breaker::Admission;

/// The request being served and the host it runs on: what every call needs.
#[derive(Debug)]
pub struct Caller<'a, H> {
    /// The host (HTTP, time, logs, breakers).
    pub host: &'a H,
    /// The request being served.
    pub ctx: &'a RequestContext,
}

impl<H> Clone for Caller<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H> Copy for Caller<'_, H> {}

/// The breaker key of a target: per coordinator deployment, service and target.
pub fn breaker_key(coordinator: &str, service: &str, identity: &str) -> String {
    format!("breaker:{coordinator}:{service}:{identity}")
}

/// Whether a call may be sent again to another target after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The call has no side effects: any infrastructure failure fails over.
    Safe,
    /// The upstream may act on the call: fail over only when it provably did not start.
    NotStarted,
}

/// A request to be sent to any of a spec's targets.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    /// Method.
    pub method: Method,
    /// The URL is `url_before + target.id + url_after`.
    pub url_before: String,
    /// See `url_before`.
    pub url_after: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes (a JSON object when `with_model`).
    pub body: Vec<u8>,
    /// Whether the body gets `"model": <target id>` as its last field.
    pub with_model: bool,
}

impl std::fmt::Debug for RequestTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTemplate")
            .field("method", &self.method)
            .field("url_before", &self.url_before)
            .field("url_after", &self.url_after)
            .field("headers", &redacted_headers(&self.headers))
            .field("body_bytes", &self.body.len())
            .field("with_model", &self.with_model)
            .finish()
    }
}

impl RequestTemplate {
    /// A chat-completions call into DIAL Core with the per-request key; the
    /// body is a JSON object without `model` (each target adds its own).
    pub fn dial_chat(ctx: &RequestContext, body: Vec<u8>) -> RequestTemplate {
        let config = &ctx.config;
        let url_after = match &config.api_version {
            Some(v) => format!("/chat/completions?api-version={v}"),
            None => "/chat/completions".to_owned(),
        };
        RequestTemplate {
            method: Method::Post,
            url_before: format!("{}/openai/deployments/", config.dial_endpoint),
            url_after,
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("api-key".to_owned(), ctx.api_key.clone()),
            ],
            body,
            with_model: true,
        }
    }

    /// A call to `<endpoint><path>` (never with DIAL credentials).
    pub fn endpoint(method: Method, path: &str, body: Vec<u8>) -> RequestTemplate {
        let headers = if method == Method::Post {
            vec![("content-type".to_owned(), "application/json".to_owned())]
        } else {
            Vec::new()
        };
        RequestTemplate {
            method,
            url_before: String::new(),
            url_after: path.to_owned(),
            headers,
            body,
            with_model: false,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> RequestTemplate {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The request for `target`.
    pub fn build(&self, target: &Target) -> OutboundRequest {
        self.build_with(target, self.body.clone())
    }

    /// The URL for `target`.
    pub fn url(&self, target: &Target) -> String {
        format!("{}{}{}", self.url_before, target.id, self.url_after)
    }

    /// The request for `target` with `body` (this template's body, taken or
    /// copied by the caller: the last attempt takes it, so a large body is
    /// never held twice).
    fn build_with(&self, target: &Target, mut body: Vec<u8>) -> OutboundRequest {
        if self.with_model && body.last() == Some(&b'}') {
            body.pop();
            if body.len() > 1 {
                body.push(b',');
            }
            body.extend_from_slice(br#""model":"#);
            let _ = serde_json::to_writer(&mut body, &target.id);
            body.push(b'}');
        }
        OutboundRequest {
            method: self.method,
            url: self.url(target),
            headers: self.headers.clone(),
            body,
        }
    }
}

/// One call to make: who, where, what, and how it may be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSpec {
    /// Who is called (for errors and logs).
    pub service: Service,
    /// Primary, then backups.
    pub targets: Vec<Target>,
    /// The request.
    pub request: RequestTemplate,
    /// Whether an ambiguous failure may be retried on the next target.
    pub replay: Replay,
    /// A failure status that ends the call is not counted by the breaker at
    /// once: the caller decides ([`CallFailed::blame`]), e.g. after learning
    /// that UMS answered 500 because the conversation no longer exists.
    pub defer_blame: bool,
}

/// A breaker failure held back (see [`CallSpec::defer_blame`]); [`blame`]
/// records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blame {
    key: String,
}

/// A call that failed before a success head (after failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailed {
    /// What to report.
    pub error: CoordError,
    /// The breaker failure held back, when the spec deferred it.
    pub blame: Option<Blame>,
}

/// Records a breaker failure (also one that was held back).
pub fn blame<H: Host>(caller: Caller<'_, H>, blame: &Blame) {
    breaker::record_failure(
        caller.host.store(),
        &blame.key,
        &caller.ctx.config.breaker,
        caller.host.unix_ms(),
        caller.ctx.caller_id(),
    );
}

/// A committed call: a target answered with a success head.
pub struct Opened<'a, H: Host> {
    caller: Caller<'a, H>,
    /// The spec it was made from.
    pub spec: CallSpec,
    /// Index of the target that answered.
    pub target: usize,
    /// HTTP status of the head.
    pub status: u16,
    /// Targets tried before this one (labels), and why they were passed over.
    pub passed_over: Vec<(String, String)>,
    /// The body, under the idle and total deadlines.
    pub body: CallBody<'a, H>,
    log: CallLog,
}

impl<H: Host> std::fmt::Debug for Opened<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("spec", &self.spec)
            .field("target", &self.target)
            .field("status", &self.status)
            .field("passed_over", &self.passed_over)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CallLog {
    span: String,
    method: &'static str,
    path: String,
    start_ms: u64,
    head_ms: u64,
    breaker_key: String,
}

/// How a committed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Read to its end.
    Ok,
    /// Ended with an upstream fault.
    Failed(&'static str, bool),
    /// The client went away first.
    ClientGone,
}

impl Outcome {
    /// The outcome of a call that ended with `error`.
    pub fn of(error: &CoordError) -> Outcome {
        match error.fault() {
            Some(fault) => Outcome::Failed(fault_name(fault), is_infrastructure_after_head(fault)),
            None => Outcome::Failed("error", false),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(what, _) => what,
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// Whether a failure after the head is the upstream's: the stream broke (the
/// transport cut it) or stalled (the idle or total deadline passed). What
/// this request's content can cause — an error event, malformed or oversized
/// data — is not.
fn is_infrastructure_after_head(fault: &UpstreamFault) -> bool {
    matches!(
        fault,
        UpstreamFault::Truncated(_) | UpstreamFault::Timeout(..)
    )
}

fn fault_name(fault: &UpstreamFault) -> &'static str {
    match fault {
        UpstreamFault::Connect(_) => "connect_error",
        UpstreamFault::Status(..) => "http_error",
        UpstreamFault::RateLimited { .. } => "rate_limited",
        UpstreamFault::ErrorEvent(_) => "error_event",
        UpstreamFault::Truncated(_) => "truncated",
        UpstreamFault::Malformed { .. } => "malformed",
        UpstreamFault::Oversized(_) => "oversized",
        UpstreamFault::Timeout(..) => "timeout",
        UpstreamFault::CircuitOpen { .. } => "circuit_open",
    }
}

impl<'a, H: Host> Opened<'a, H> {
    /// The target that answered.
    pub fn answered_by(&self) -> &Target {
        &self.spec.targets[self.target]
    }

    /// The error for `fault` at this call.
    pub fn error(&self, fault: UpstreamFault) -> CoordError {
        site_error(&self.spec, self.answered_by(), fault)
    }

    /// A sentence for the agent's stage when a backup answered.
    pub fn failover_note(&self) -> Option<String> {
        let (primary, reason) = self.passed_over.first()?;
        Some(format!(
            "_{primary} was unavailable ({reason}); answered by {}._\n\n",
            self.answered_by().label
        ))
    }

    /// Ends the call: one log line, and its outcome fed to the breaker.
    pub fn finish(self, outcome: Outcome) {
        self.end(outcome, None);
    }

    /// Ends the call that failed with `error`: [`Opened::finish`] with its
    /// outcome, and the fault's detail in the log line.
    pub fn fail(self, error: &CoordError) {
        let detail = error.fault().and_then(UpstreamFault::log_detail);
        self.end(Outcome::of(error), detail);
    }

    fn end(self, outcome: Outcome, detail: Option<&str>) {
        let caller = self.caller;
        let key = &self.log.breaker_key;
        match outcome {
            // A whole answer shows the target is healthy.
            Outcome::Ok => breaker::record_success(caller.host.store(), key),
            // A stream that broke or stalled after its head is the target's failure.
            Outcome::Failed(_, true) => blame(caller, &Blame { key: key.clone() }),
            // What this request's content caused says nothing either way.
            Outcome::Failed(_, false) | Outcome::ClientGone => {}
        }
        let now = caller.host.now_ms();
        log_call(
            caller,
            &self.spec,
            self.answered_by(),
            &self.log,
            Some(self.status),
            outcome.name(),
            Some(self.log.head_ms.saturating_sub(self.log.start_ms)),
            now.saturating_sub(self.log.start_ms),
            detail,
        );
    }
}

fn site_error(spec: &CallSpec, target: &Target, fault: UpstreamFault) -> CoordError {
    CoordError::Upstream {
        service: spec.service.clone(),
        target: target.label.clone(),
        fault,
    }
}

#[allow(clippy::too_many_arguments)]
fn log_call<H: Host>(
    caller: Caller<'_, H>,
    spec: &CallSpec,
    target: &Target,
    log: &CallLog,
    status: Option<u16>,
    outcome: &str,
    ttfb_ms: Option<u64>,
    latency_ms: u64,
    detail: Option<&str>,
) {
    // A successful call is in the request's line already (`agents`, its
    // latency); its own line is for LOG_LEVEL=debug.
    if outcome == "ok" && caller.ctx.config.log_level != LogLevel::Debug {
        return;
    }
    let trace = &caller.ctx.trace;
    let line = serde_json::json!({
        "ts_ms": caller.host.unix_ms(),
        "level": if outcome == "ok" { "debug" } else { "warn" },
        "event": "upstream_call",
        "trace_id": trace.trace_id,
        "span_id": log.span,
        "parent_span_id": trace.span_id,
        "agent": spec.service.name,
        "target": target.id,
        "method": log.method,
        "path": log.path,
        "status": status,
        "outcome": outcome,
        "ttfb_ms": ttfb_ms,
        "latency_ms": latency_ms,
        // What the upstream said (an error body's excerpt, a parser's
        // complaint), redacted: for the operator, never for the user.
        "detail": detail,
    });
    caller.host.log(&line.to_string());
}

/// The path of a URL, without scheme, host or query (for logs).
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split('?').next().unwrap_or("/").to_owned()
}

/// How an attempt on one target failed, before any success head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A head with this (non-2xx) status.
    Status(u16),
    /// The request could not be sent whole, or no head came back;
    /// `not_sent`: it provably never reached the upstream.
    Unreachable {
        /// Whether it provably never reached the upstream.
        not_sent: bool,
    },
    /// No head within the first-byte timeout.
    Timeout,
}

/// What the breaker makes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Nothing: the target refused this request (a 4xx, 429 included), which
    /// says nothing about its health; the breaker stays as it is.
    Nothing,
    /// A failure of the target, counted now.
    Failure,
    /// A failure of the target that the session counts only if it proves to
    /// be one (see [`CallSpec::defer_blame`]).
    Deferred,
}

/// The decision about a failed attempt: whether the call moves on to the next
/// target, and what the breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the call may be sent to the next target.
    pub failover: bool,
    /// What the breaker counts.
    pub count: Count,
}

/// Decides about a failed attempt (see the module docs). A 4xx is never the
/// target's failure (429 included: a limit of this caller, or this caller's
/// share): the breaker stays as it is, and only 429 (nothing started) and a
/// 408 of a call without side effects move on to the next target. A 5xx, a
/// request that could not be sent and no head in time count against the
/// target; the call moves on only where the upstream provably did not start
/// the work (not sent, 503) or the work has no side effects
/// ([`Replay::Safe`]), and the spec may defer a failure that does not fail
/// over.
pub fn verdict(attempt: Attempt, replay: Replay, defer_blame: bool) -> Verdict {
    let safe = replay == Replay::Safe;
    let (failover, deferrable) = match attempt {
        Attempt::Status(status) if (400..500).contains(&status) => {
            return Verdict {
                failover: status == 429 || (status == 408 && safe),
                count: Count::Nothing,
            }
        }
        Attempt::Status(status) => (status == 503 || safe, true),
        Attempt::Unreachable { not_sent } => (not_sent || safe, false),
        Attempt::Timeout => (safe, false),
    };
    let count = if deferrable && defer_blame && !failover {
        Count::Deferred
    } else {
        Count::Failure
    };
    Verdict { failover, count }
}

/// Calls the first available target of `spec` (primary first, then backups).
/// Returns the committed call, or why none accepted it.
pub async fn open<'a, H: Host>(
    caller: Caller<'a, H>,
    mut spec: CallSpec,
) -> Result<Opened<'a, H>, CallFailed> {
    let ctx = caller.ctx;
    let host = caller.host;
    let timeouts = ctx.config.timeouts;
    let store = host.store();
    let mut passed_over: Vec<(String, String)> = Vec::new();
    let mut last: Option<CoordError> = None;
    let mut earliest_retry: Option<u64> = None;
    // The body leaves the spec: an attempt before the last gets a copy, the
    // last takes it, and the call under way never holds it again.
    let mut body = std::mem::take(&mut spec.request.body);

    for (index, target) in spec.targets.iter().enumerate() {
        let key = breaker_key(&ctx.coordinator, &spec.service.name, &target.identity);
        let admission = breaker::admit_at(store, &key, &ctx.config.breaker, host.unix_ms());
        let start_ms = host.now_ms();
        let log = CallLog {
            span: span_id(host.random_u64()),
            method: match spec.request.method {
                Method::Get => "GET",
                Method::Post => "POST",
            },
            path: url_path(&spec.request.url(target)),
            start_ms,
            head_ms: start_ms,
            breaker_key: key,
        };
        if let Admission::Reject { retry_at } = admission {
            earliest_retry = Some(earliest_retry.map_or(retry_at, |e| e.min(retry_at)));
            log_call(
                caller,
                &spec,
                target,
                &log,
                None,
                "circuit_open",
                None,
                0,
                None,
            );
            passed_over.push((target.label.clone(), "circuit open".to_owned()));
            continue;
        }
        let this_body = if index + 1 < spec.targets.len() {
            body.clone()
        } else {
            std::mem::take(&mut body)
        };
        let mut request = spec.request.build_with(target, this_body);
        for (name, value) in ctx.trace.call_headers(&log.span) {
            request.headers.push((name.to_owned(), value));
        }

        let sending = std::pin::pin!(host.send(request));
        let sent = select(sending, host.sleep(timeouts.first_byte_ms)).await;
        let head_ms = host.now_ms();
        let latency = head_ms.saturating_sub(start_ms);
        // (the error, the reason for the note, how the attempt failed)
        let (error, reason, attempt) = match sent {
            Either::Left((Ok(mut response), _)) => {
                if (200..300).contains(&response.status) {
                    let deadline_ms = start_ms.saturating_add(timeouts.total_ms);
                    return Ok(Opened {
                        caller,
                        target: index,
                        status: response.status,
                        passed_over,
                        body: CallBody::new(host, response.body, timeouts.idle_ms, deadline_ms),
                        log: CallLog { head_ms, ..log },
                        spec,
                    });
                }
                let status = response.status;
                let wait_until = head_ms
                    .saturating_add(ERROR_EXCERPT_WAIT_MS)
                    .min(start_ms.saturating_add(timeouts.total_ms));
                let excerpt = read_excerpt(host, &mut response.body, wait_until).await;
                let detail = redact(&excerpt, &ctx.api_key);
                let fault = if status == 429 {
                    UpstreamFault::RateLimited {
                        retry_after_s: response.retry_after_s,
                        detail,
                    }
                } else {
                    UpstreamFault::Status(status, detail)
                };
                log_call(
                    caller,
                    &spec,
                    target,
                    &log,
                    Some(status),
                    "http_error",
                    Some(latency),
                    latency,
                    fault.log_detail(),
                );
                (fault, format!("HTTP {status}"), Attempt::Status(status))
            }
            Either::Left((Err(e), _)) => {
                log_call(
                    caller,
                    &spec,
                    target,
                    &log,
                    None,
                    "connect_error",
                    None,
                    latency,
                    None,
                );
                (
                    UpstreamFault::Connect(redact(&e.message, &ctx.api_key)),
                    "unreachable".to_owned(),
                    Attempt::Unreachable {
                        not_sent: e.not_sent,
                    },
                )
            }
            Either::Right(_) => {
                log_call(
                    caller, &spec, target, &log, None, "timeout", None, latency, None,
                );
                let what = format!("no response within {} ms", timeouts.first_byte_ms);
                (
                    UpstreamFault::Timeout(Deadline::FirstByte, what.clone()),
                    what,
                    Attempt::Timeout,
                )
            }
        };
        let error = site_error(&spec, target, error);
        let Verdict { failover, count } = verdict(attempt, spec.replay, spec.defer_blame);
        let pending = Blame {
            key: log.breaker_key,
        };
        if count == Count::Failure {
            blame(caller, &pending);
        }
        let more = index + 1 < spec.targets.len();
        if !failover || !more {
            return Err(CallFailed {
                error,
                blame: (count == Count::Deferred).then_some(pending),
            });
        }
        passed_over.push((target.label.clone(), reason));
        last = Some(error);
    }

    Err(match last {
        Some(error) => CallFailed { error, blame: None },
        None => CallFailed {
            error: CoordError::Upstream {
                service: spec.service.clone(),
                target: spec
                    .targets
                    .first()
                    .map(|t| t.label.clone())
                    .unwrap_or_default(),
                fault: UpstreamFault::CircuitOpen {
                    retry_in_s: earliest_retry
                        .map_or(0, |r| r.saturating_sub(host.unix_ms()).div_ceil(1000)),
                },
            },
            blame: None,
        },
    })
}

/// Reads up to [`MAX_ERROR_EXCERPT_BYTES`] of an error body, until
/// `wait_until` (monotonic ms) at the latest: the DIAL/JSON error message if
/// there is one, else the text.
async fn read_excerpt<H: Host>(host: &H, body: &mut H::Body, wait_until: u64) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_EXCERPT_BYTES {
        let left = wait_until.saturating_sub(host.now_ms());
        if left == 0 {
            break;
        }
        match select(body.next(), host.sleep(left)).await {
            Either::Left((Some(Ok(chunk)), _)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(MAX_ERROR_EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v
            .get("error")
            .map(crate::wire::upstream::error_text)
            .or_else(|| v.get("detail").map(ToString::to_string))
            .unwrap_or_else(|| text.into_owned()),
        Err(_) => text.into_owned(),
    }
}

/// Why a body could not be read further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The connection failed.
    Transport(TransportError),
    /// A deadline passed.
    Timeout(Deadline, String),
}

impl BodyError {
    /// The fault to report.
    pub fn fault(self, secret: &str) -> UpstreamFault {
        match self {
            BodyError::Transport(t) => UpstreamFault::Truncated(redact(&t.message, secret)),
            BodyError::Timeout(deadline, what) => UpstreamFault::Timeout(deadline, what),
        }
    }
}

/// A response body under two deadlines: no chunk for `idle_ms`, or the call's
/// total time. Both are checked on every poll, including when chunks are
/// already waiting (a fast upstream cannot outrun the total deadline).
///
/// One timer serves the whole body: a chunk moves the idle deadline on but
/// leaves the timer as it is (arming one costs host calls); when the timer
/// rings before the deadline it stands for, it is armed again for the rest.
pub struct CallBody<'a, H: Host> {
    host: &'a H,
    body: H::Body,
    idle_ms: u64,
    deadline_ms: u64,
    /// When the last chunk came (or the body opened), monotonic ms.
    last_chunk_ms: u64,
    timer: Option<H::Sleep>,
    ended: bool,
}

impl<H: Host> std::fmt::Debug for CallBody<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBody")
            .field("idle_ms", &self.idle_ms)
            .field("deadline_ms", &self.deadline_ms)
            .finish_non_exhaustive()
    }
}

impl<'a, H: Host> CallBody<'a, H> {
    fn new(host: &'a H, body: H::Body, idle_ms: u64, deadline_ms: u64) -> CallBody<'a, H> {
        CallBody {
            host,
            body,
            idle_ms,
            deadline_ms,
            last_chunk_ms: host.now_ms(),
            timer: None,
            ended: false,
        }
    }

    fn total_exceeded() -> BodyError {
        BodyError::Timeout(
            Deadline::Total,
            "the call exceeded its total time".to_owned(),
        )
    }

    /// Ends the body on `deadline`.
    fn timed_out(&mut self, deadline: Deadline) -> BodyError {
        self.ended = true;
        self.timer = None;
        match deadline {
            Deadline::Idle => {
                BodyError::Timeout(Deadline::Idle, format!("no data for {} ms", self.idle_ms))
            }
            _ => CallBody::<H>::total_exceeded(),
        }
    }

    /// The deadline that comes first now, and which one it is.
    fn due(&self) -> (u64, Deadline) {
        let idle = self.last_chunk_ms.saturating_add(self.idle_ms);
        if self.deadline_ms <= idle {
            (self.deadline_ms, Deadline::Total)
        } else {
            (idle, Deadline::Idle)
        }
    }
}

impl<H: Host> Stream for CallBody<'_, H> {
    type Item = Result<Vec<u8>, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let now = this.host.now_ms();
        if now >= this.deadline_ms {
            this.ended = true;
            this.timer = None;
            return Poll::Ready(Some(Err(CallBody::<H>::total_exceeded())));
        }
        if let Poll::Ready(item) = this.body.poll_next_unpin(cx) {
            return Poll::Ready(match item {
                Some(Ok(chunk)) => {
                    this.last_chunk_ms = now;
                    Some(Ok(chunk))
                }
                Some(Err(e)) => {
                    this.ended = true;
                    this.timer = None;
                    Some(Err(BodyError::Transport(e)))
                }
                None => {
                    this.ended = true;
                    this.timer = None;
                    None
                }
            });
        }
        // A timer that rings may have been armed for an idle deadline a
        // chunk has moved on since: then it is armed again for the rest.
        // A fresh timer that rings at once is the host's word that the time
        // has come.
        for _ in 0..2 {
            let (due_ms, deadline) = this.due();
            if now < due_ms {
                let host = this.host;
                let timer = this.timer.get_or_insert_with(|| host.sleep(due_ms - now));
                if Pin::new(timer).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer = None;
                continue;
            }
            return Poll::Ready(Some(Err(this.timed_out(deadline))));
        }
        let (_, deadline) = this.due();
        Poll::Ready(Some(Err(this.timed_out(deadline))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_have_no_host_or_query() {
        assert_eq!(
            url_path("http://core:8080/openai/deployments/gpt-4o/chat/completions?api-version=1"),
            "/openai/deployments/gpt-4o/chat/completions"
        );
        assert_eq!(url_path("http://ums:8042"), "/");
    }

    #[test]
    fn every_failed_attempt_has_its_verdict() {
        use Attempt::{Status, Timeout, Unreachable};
        use Count::{Deferred, Failure, Nothing};
        use Replay::{NotStarted, Safe};
        let v = |failover, count| Verdict { failover, count };
        // (attempt, replay, defer_blame) -> verdict
        let table = [
            // A 4xx is this request's or this caller's: never counted, and
            // only a 429 (nothing started) or a safe 408 fails over.
            (Status(400), Safe, false, v(false, Nothing)),
            (Status(403), NotStarted, true, v(false, Nothing)),
            (Status(404), NotStarted, true, v(false, Nothing)),
            (Status(413), Safe, false, v(false, Nothing)),
            (Status(422), NotStarted, false, v(false, Nothing)),
            (Status(429), NotStarted, false, v(true, Nothing)),
            (Status(429), Safe, true, v(true, Nothing)),
            (Status(408), NotStarted, true, v(false, Nothing)),
            (Status(408), Safe, false, v(true, Nothing)),
            // 503 proves nothing started: always fail over.
            (Status(503), NotStarted, false, v(true, Failure)),
            (Status(503), Safe, true, v(true, Failure)),
            // Other 5xx: only a call without side effects fails over.
            (Status(500), Safe, false, v(true, Failure)),
            (Status(502), NotStarted, false, v(false, Failure)),
            (Status(504), NotStarted, true, v(false, Deferred)),
            // Not sent: fail over; sent but no head: only when safe. Counted.
            (
                Unreachable { not_sent: true },
                NotStarted,
                true,
                v(true, Failure),
            ),
            (
                Unreachable { not_sent: false },
                NotStarted,
                true,
                v(false, Failure),
            ),
            (
                Unreachable { not_sent: false },
                Safe,
                false,
                v(true, Failure),
            ),
            (Timeout, NotStarted, true, v(false, Failure)),
            (Timeout, Safe, false, v(true, Failure)),
        ];
        for (attempt, replay, defer, expected) in table {
            assert_eq!(
                verdict(attempt, replay, defer),
                expected,
                "{attempt:?} {replay:?} defer={defer}"
            );
        }
    }

    #[test]
    fn after_the_head_only_a_broken_or_stalled_stream_is_the_upstream_s() {
        for upstream in [
            UpstreamFault::Truncated("x".into()),
            UpstreamFault::Timeout(Deadline::Idle, "x".into()),
            UpstreamFault::Timeout(Deadline::Total, "x".into()),
        ] {
            assert!(is_infrastructure_after_head(&upstream), "{upstream:?}");
        }
        for content in [
            UpstreamFault::ErrorEvent("x".into()),
            UpstreamFault::malformed("x"),
            UpstreamFault::Oversized("x".into()),
        ] {
            assert!(!is_infrastructure_after_head(&content), "{content:?}");
        }
    }

    fn target(id: &str) -> Target {
        Target {
            id: id.to_owned(),
            label: id.to_owned(),
            identity: id.to_owned(),
        }
    }

    #[test]
    fn call_specs_and_requests_never_show_the_key_in_debug() {
        let t = RequestTemplate {
            method: Method::Post,
            url_before: "http://core/openai/deployments/".into(),
            url_after: "/chat/completions".into(),
            headers: vec![
                ("api-key".into(), "sk-very-secret-key".into()),
                ("Authorization".into(), "Bearer secret-token".into()),
                ("x-trace-id".into(), "t1".into()),
            ],
            body: b"{}".to_vec(),
            with_model: true,
        };
        let shown = format!("{t:?} {:?}", t.build(&target("gpt-4o")));
        assert!(!shown.contains("sk-very-secret-key"), "{shown}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("(\"api-key\", \"***\")"), "{shown}");
        assert!(shown.contains("(\"x-trace-id\", \"t1\")"), "{shown}");
    }

    #[test]
    fn templates_put_the_target_into_url_and_model() {
        let t = RequestTemplate {
            method: Method::Post,
            url_before: "http://core/openai/deployments/".into(),
            url_after: "/chat/completions".into(),
            headers: vec![],
            body: br#"{"messages":[],"stream":true}"#.to_vec(),
            with_model: true,
        };
        let r = t.build(&target("gpa-b"));
        assert_eq!(
            r.url,
            "http://core/openai/deployments/gpa-b/chat/completions"
        );
        assert_eq!(r.body, br#"{"messages":[],"stream":true,"model":"gpa-b"}"#);
        let e = RequestTemplate::endpoint(Method::Get, "/conversations/c1", Vec::new());
        let r = e.build(&target("http://ums:1"));
        assert_eq!(r.url, "http://ums:1/conversations/c1");
        assert!(r.headers.is_empty());
    }
}

//! Calling upstreams: failover across a service's targets, the circuit breaker
//! per target, timeouts (first byte, idle gap, total), tracing headers, one log
//! line per call, and every failure mapped to the one error type.
//!
//! [`call`] walks the targets in order (primary, then backups). A target whose
//! breaker is open is skipped at once; a target that fails before its response
//! head (connection error, first-byte timeout, 5xx, 408, 429) is recorded as a
//! breaker failure and the next one is tried. Once a head with a success status
//! arrives the call is committed: its body is read with [`read_answer`] or
//! [`pump_events`], which finish the call's log line and feed its outcome to
//! the breaker. There is no replay after that point: whatever the agent
//! streamed has reached the user, so a later failure is an error, not a retry.

use futures::future::{select, Either};
use futures::{FutureExt, StreamExt};

use crate::client::{Host, OutboundRequest, TransportError};
use crate::coordinator::{FlowError, RequestContext};
use crate::emitter::{Emitter, Transport};
use crate::error::{redact, CoordError, Upstream, UpstreamFault};
use crate::resilience::breaker::Admission;
use crate::sse::SseDecoder;
use crate::trace::span_id;

/// Largest error body read from an upstream for the error message.
const ERROR_BODY_LIMIT: usize = 4096;
/// Largest non-streaming answer accepted from an upstream.
pub const ANSWER_LIMIT: usize = 8 * 1024 * 1024;

/// Identifies an upstream call in errors; holds the secret to redact.
#[derive(Debug, Clone, Copy)]
pub struct CallSite<'a> {
    /// Which upstream.
    pub upstream: Upstream,
    /// Deployment name or endpoint.
    pub target: &'a str,
    /// The per-request key, removed from any upstream text put into an error.
    pub secret: &'a str,
}

impl CallSite<'_> {
    /// The error for `fault` at this call site.
    pub fn error(&self, fault: UpstreamFault) -> CoordError {
        CoordError::Upstream {
            upstream: self.upstream,
            target: self.target.to_owned(),
            fault,
        }
    }

    /// Redacts upstream text for an error message.
    pub fn redact(&self, text: &str) -> String {
        redact(text, self.secret)
    }
}

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

fn breaker_key(upstream: Upstream, target: &str) -> String {
    format!("{}:{target}", upstream.short_name())
}

/// A response body read with the idle and total timeouts.
pub struct TimedBody<'a, H: Host> {
    host: &'a H,
    body: H::Body,
    idle_ms: u64,
    deadline_ms: u64,
}

impl<H: Host> std::fmt::Debug for TimedBody<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody")
            .field("idle_ms", &self.idle_ms)
            .field("deadline_ms", &self.deadline_ms)
            .finish_non_exhaustive()
    }
}

/// Why a body could not be read further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The connection failed.
    Transport(TransportError),
    /// No data within the idle timeout, or past the total deadline.
    Timeout(String),
}

impl<H: Host> TimedBody<'_, H> {
    /// The next chunk if one is already there, without waiting.
    pub fn ready_now(&mut self) -> Option<Option<Result<Vec<u8>, BodyError>>> {
        self.body
            .next()
            .now_or_never()
            .map(|item| item.map(|r| r.map_err(BodyError::Transport)))
    }

    /// The next chunk; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, BodyError>> {
        let now = self.host.now_ms();
        if now >= self.deadline_ms {
            return Some(Err(BodyError::Timeout(
                "the call exceeded its total time".to_owned(),
            )));
        }
        let wait = self.idle_ms.min(self.deadline_ms - now);
        match select(self.body.next(), self.host.sleep(wait)).await {
            Either::Left((item, _)) => item.map(|r| r.map_err(BodyError::Transport)),
            Either::Right(_) => Some(Err(BodyError::Timeout(if wait == self.idle_ms {
                format!("no data for {wait} ms")
            } else {
                "the call exceeded its total time".to_owned()
            }))),
        }
    }
}

/// A committed call: the target answered with a success head.
pub struct Answered<'a, H: Host> {
    caller: Caller<'a, H>,
    /// Where the answer comes from (for errors).
    pub site: CallSite<'a>,
    /// HTTP status of the head.
    pub status: u16,
    /// The body.
    pub body: TimedBody<'a, H>,
    /// Targets tried before this one, and why they were passed over.
    pub passed_over: Vec<(String, String)>,
    log: CallLog,
}

impl<H: Host> std::fmt::Debug for Answered<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answered")
            .field("site", &self.site)
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
}

impl<H: Host> Answered<'_, H> {
    /// A sentence for the agent's stage when a backup answered.
    pub fn failover_note(&self) -> Option<String> {
        let (primary, reason) = self.passed_over.first()?;
        Some(format!(
            "_{primary} was unavailable ({reason}); answered by backup {}._\n\n",
            self.site.target
        ))
    }

    /// Ends the call: one log line, and its outcome fed to the breaker.
    fn finish(self, outcome: Outcome) {
        let now = self.caller.host.now_ms();
        let breakers = self.caller.host.breakers();
        let key = breaker_key(self.site.upstream, self.site.target);
        let state = breakers.load(&key);
        match outcome {
            Outcome::Ok => breakers.save(&key, state.on_success()),
            Outcome::Failed(_) => {
                breakers.save(&key, state.on_failure(&self.caller.ctx.config.breaker, now));
            }
            Outcome::ClientGone => {}
        }
        log_call(
            self.caller,
            &self.site,
            &self.log,
            Some(self.status),
            outcome.name(),
            Some(self.log.head_ms.saturating_sub(self.log.start_ms)),
            now.saturating_sub(self.log.start_ms),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed(&'static str),
    ClientGone,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(what) => what,
            Outcome::ClientGone => "client_gone",
        }
    }

    fn of(error: &FlowError) -> Outcome {
        match error {
            FlowError::ClientGone => Outcome::ClientGone,
            FlowError::Failed(CoordError::Upstream { fault, .. }) => {
                Outcome::Failed(fault_name(fault))
            }
            FlowError::Failed(_) => Outcome::Failed("error"),
        }
    }
}

fn fault_name(fault: &UpstreamFault) -> &'static str {
    match fault {
        UpstreamFault::Connect(_) => "connect_error",
        UpstreamFault::Status(..) => "http_error",
        UpstreamFault::ErrorEvent(_) => "error_event",
        UpstreamFault::Truncated(_) => "truncated",
        UpstreamFault::Malformed(_) => "malformed",
        UpstreamFault::Timeout(_) => "timeout",
        UpstreamFault::CircuitOpen { .. } => "circuit_open",
    }
}

fn log_call<H: Host>(
    caller: Caller<'_, H>,
    site: &CallSite<'_>,
    log: &CallLog,
    status: Option<u16>,
    outcome: &str,
    ttfb_ms: Option<u64>,
    latency_ms: u64,
) {
    let trace = &caller.ctx.trace;
    let line = serde_json::json!({
        "ts_ms": caller.host.unix_ms(),
        "level": if outcome == "ok" { "info" } else { "warn" },
        "event": "upstream_call",
        "trace_id": trace.trace_id,
        "span_id": log.span,
        "parent_span_id": trace.span_id,
        "agent": site.upstream.short_name(),
        "target": site.target,
        "method": log.method,
        "path": log.path,
        "status": status,
        "outcome": outcome,
        "ttfb_ms": ttfb_ms,
        "latency_ms": latency_ms,
    });
    caller.host.log(&line.to_string());
}

/// The path of a URL, without scheme, host or query (for logs).
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split('?').next().unwrap_or("/").to_owned()
}

/// Whether a status means "this target is failing": fail over and count it.
fn is_target_failure(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Calls the first available target of `targets` (primary first, then backups),
/// building each request with `build(target)`. Returns the committed answer.
pub async fn call<'a, H: Host>(
    caller: Caller<'a, H>,
    upstream: Upstream,
    targets: &[&'a str],
    build: impl Fn(&str) -> OutboundRequest,
) -> Result<Answered<'a, H>, CoordError> {
    let ctx = caller.ctx;
    let host = caller.host;
    let timeouts = ctx.config.timeouts;
    let breakers = host.breakers();
    let mut passed_over: Vec<(String, String)> = Vec::new();
    let mut last_error: Option<CoordError> = None;
    let mut earliest_retry: Option<u64> = None;

    for &target in targets {
        let site = CallSite {
            upstream,
            target,
            secret: &ctx.api_key,
        };
        let key = breaker_key(upstream, target);
        let now = host.now_ms();
        let state = breakers.load(&key);
        let (admission, next) = state.admit(&ctx.config.breaker, now);
        if next != state {
            breakers.save(&key, next);
        }
        let mut request = build(target);
        let log = CallLog {
            span: span_id(host.random_u64()),
            method: match request.method {
                crate::client::Method::Get => "GET",
                crate::client::Method::Post => "POST",
            },
            path: url_path(&request.url),
            start_ms: now,
            head_ms: now,
        };
        if let Admission::Reject { retry_at } = admission {
            earliest_retry = Some(earliest_retry.map_or(retry_at, |e| e.min(retry_at)));
            log_call(caller, &site, &log, None, "circuit_open", None, 0);
            passed_over.push((target.to_owned(), "circuit open".to_owned()));
            continue;
        }
        for (name, value) in ctx.trace.call_headers(&log.span) {
            request.headers.push((name.to_owned(), value));
        }

        let sending = std::pin::pin!(host.send(request));
        let sent = select(sending, host.sleep(timeouts.first_byte_ms)).await;
        let head_ms = host.now_ms();
        let failure = match sent {
            Either::Left((Ok(mut response), _)) => {
                if (200..300).contains(&response.status) {
                    let log = CallLog { head_ms, ..log };
                    return Ok(Answered {
                        caller,
                        site,
                        status: response.status,
                        body: TimedBody {
                            host,
                            body: response.body,
                            idle_ms: timeouts.idle_ms,
                            deadline_ms: now.saturating_add(timeouts.total_ms),
                        },
                        passed_over,
                        log,
                    });
                }
                let excerpt = read_excerpt(host, &mut response.body, timeouts.idle_ms).await;
                let error = site.error(UpstreamFault::Status(
                    response.status,
                    site.redact(&excerpt),
                ));
                let latency = head_ms.saturating_sub(now);
                log_call(
                    caller,
                    &site,
                    &log,
                    Some(response.status),
                    "http_error",
                    Some(latency),
                    latency,
                );
                if !is_target_failure(response.status) {
                    // The target is alive and refused this request: no failover.
                    breakers.save(&key, breakers.load(&key).on_success());
                    return Err(error);
                }
                (error, format!("HTTP {}", response.status))
            }
            Either::Left((Err(e), _)) => {
                let latency = head_ms.saturating_sub(now);
                log_call(caller, &site, &log, None, "connect_error", None, latency);
                (
                    site.error(UpstreamFault::Connect(site.redact(&e.0))),
                    "unreachable".to_owned(),
                )
            }
            Either::Right(_) => {
                let latency = head_ms.saturating_sub(now);
                log_call(caller, &site, &log, None, "timeout", None, latency);
                let what = format!("no response within {} ms", timeouts.first_byte_ms);
                (site.error(UpstreamFault::Timeout(what.clone())), what)
            }
        };
        let (error, reason) = failure;
        breakers.save(
            &key,
            breakers.load(&key).on_failure(&ctx.config.breaker, head_ms),
        );
        passed_over.push((target.to_owned(), reason));
        last_error = Some(error);
    }

    Err(match last_error {
        Some(e) => e,
        None => CoordError::Upstream {
            upstream,
            target: targets.first().copied().unwrap_or_default().to_owned(),
            fault: UpstreamFault::CircuitOpen {
                retry_in_s: earliest_retry
                    .map_or(0, |r| r.saturating_sub(host.now_ms()).div_ceil(1000)),
            },
        },
    })
}

/// Reads up to [`ERROR_BODY_LIMIT`] bytes of an error body: the DIAL/JSON error
/// message if there is one, else the text.
async fn read_excerpt<H: Host>(host: &H, body: &mut H::Body, idle_ms: u64) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_LIMIT {
        match select(body.next(), host.sleep(idle_ms)).await {
            Either::Left((Some(Ok(chunk)), _)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ERROR_BODY_LIMIT);
    let text = String::from_utf8_lossy(&bytes);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v
            .get("error")
            .map(crate::dial::upstream::error_text)
            .or_else(|| v.get("detail").map(ToString::to_string))
            .unwrap_or_else(|| text.into_owned()),
        Err(_) => text.into_owned(),
    }
}

fn body_fault(site: &CallSite<'_>, e: BodyError) -> CoordError {
    match e {
        BodyError::Transport(t) => site.error(UpstreamFault::Truncated(site.redact(&t.0))),
        BodyError::Timeout(what) => site.error(UpstreamFault::Timeout(what)),
    }
}

/// Reads a whole successful body (non-streaming answers) and ends the call.
pub async fn read_answer<H: Host>(mut answered: Answered<'_, H>) -> Result<Vec<u8>, CoordError> {
    let mut out = Vec::new();
    let result = loop {
        match answered.body.next().await {
            Some(Ok(chunk)) => {
                if out.len() + chunk.len() > ANSWER_LIMIT {
                    break Err(answered.site.error(UpstreamFault::Malformed(format!(
                        "the answer is larger than {ANSWER_LIMIT} bytes"
                    ))));
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(e)) => break Err(body_fault(&answered.site, e)),
            None => break Ok(out),
        }
    };
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::of(&FlowError::Failed(e.clone())),
    };
    answered.finish(outcome);
    result
}

/// What an event handler wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep reading.
    Continue,
    /// The stream is complete (its own end marker was seen).
    Done,
}

/// Reads an SSE body until `[DONE]`, handing each event's data to `on_event`.
/// Before it waits for more of the body it flushes `out`, so the client sees
/// each piece as soon as the upstream sent it, while chunks that arrived
/// together go out in one write. EOF or a broken connection before `[DONE]` is
/// a truncation error. Ends the call (log line, breaker).
pub async fn pump_events<H, T, F>(
    mut answered: Answered<'_, H>,
    out: &mut Emitter<T>,
    mut on_event: F,
) -> Result<(), FlowError>
where
    H: Host,
    T: Transport,
    F: FnMut(&str, &mut Emitter<T>) -> Result<Next, CoordError>,
{
    let site = answered.site;
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    let mut ready = None;
    let result: Result<(), FlowError> = loop {
        let item = match ready.take() {
            Some(item) => item,
            None => {
                if let Err(gone) = out.flush().await {
                    break Err(gone.into());
                }
                answered.body.next().await
            }
        };
        match item {
            Some(Ok(bytes)) => {
                events.clear();
                if let Err(e) = decoder.push(&bytes, &mut events) {
                    break Err(site.error(UpstreamFault::Malformed(e.to_string())).into());
                }
                let mut done = false;
                let mut failed = None;
                for data in &events {
                    if data == "[DONE]" {
                        done = true;
                        break;
                    }
                    match on_event(data, out) {
                        Ok(Next::Continue) => {}
                        Ok(Next::Done) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break Err(e.into());
                }
                if done {
                    break out.flush().await.map_err(FlowError::from);
                }
                ready = answered.body.ready_now();
            }
            Some(Err(e)) => break Err(body_fault(&site, e).into()),
            None => {
                break Err(site
                    .error(UpstreamFault::Truncated(
                        "the stream ended without [DONE]".to_owned(),
                    ))
                    .into())
            }
        }
    };
    let outcome = match &result {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::of(e),
    };
    answered.finish(outcome);
    result
}

/// Parses one event's JSON, or reports the upstream as malformed.
pub fn parse_event<V: serde::de::DeserializeOwned>(
    site: CallSite<'_>,
    data: &str,
) -> Result<V, CoordError> {
    serde_json::from_str(data).map_err(|e| {
        site.error(UpstreamFault::Malformed(format!(
            "an event is not the expected JSON ({e})"
        )))
    })
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
    fn target_failures_are_5xx_408_429() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_target_failure(s));
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!is_target_failure(s));
        }
    }
}

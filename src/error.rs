//! The one error type of the request path, and how it looks on the wire.
//!
//! Every failure a request can meet is a [`CoordError`]. Before the first byte it
//! becomes an HTTP status with a DIAL error body ([`CoordError::status`],
//! [`CoordError::body`]); after it, the same body travels as one SSE error event
//! (see `wire::response`). This module must not do I/O and must never put the
//! per-request key into a message: upstream text is passed through [`redact`].
//!
//! What the person sees is the coordinator's own words, and an agent's error
//! event (its `message`, meant for the user). What an upstream said to the
//! coordinator — an error body, what the parser made of malformed data — is a
//! fault's [`UpstreamFault::log_detail`]: it goes to the call's log line, never
//! into a message.

use std::fmt;

use crate::wire::error::{ErrorBody, ErrorDetail};
use crate::wire::request::RequestError;

/// Who a fault came from: the short name used in logs and technical messages
/// (`GPA`, `LLM`, `RAG`) and the words DIAL Chat shows to the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Short machine name, e.g. `GPA`.
    pub name: String,
    /// Human name, e.g. `the General Purpose Agent`.
    pub display: String,
}

impl Service {
    /// The coordinator's own language model (coordination and synthesis calls).
    pub fn llm() -> Service {
        Service {
            name: "LLM".to_owned(),
            display: "the coordinator's language model".to_owned(),
        }
    }
}

/// Which deadline a call missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No response head in time.
    FirstByte,
    /// Silence between two body chunks.
    Idle,
    /// The whole call took too long.
    Total,
}

/// What went wrong while talking to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFault {
    /// The request could not be sent or no response head arrived (refused, reset, DNS, TLS).
    Connect(String),
    /// The upstream answered with a non-success status; the text is a short,
    /// redacted excerpt of its body, for the log only (never in a message).
    Status(u16, String),
    /// The upstream answered 429: a limit of this caller (or of its share)
    /// was reached, not a fault of the upstream; `Retry-After` when it said.
    RateLimited {
        /// Seconds until it may be tried again, when the upstream said.
        retry_after_s: Option<u64>,
        /// A short, redacted excerpt of its answer, for the log only (never in a message).
        detail: String,
    },
    /// The upstream sent an error event inside its stream: its message, for the user.
    ErrorEvent(String),
    /// The stream ended (EOF or broken connection) before its end marker.
    Truncated(String),
    /// The upstream sent something that is not its protocol (non-JSON, wrong shape).
    Malformed {
        /// What was wrong, in the coordinator's words.
        what: String,
        /// What the parser said (it may quote the upstream), redacted, for the
        /// log only (never in a message); empty when there is nothing to add.
        detail: String,
    },
    /// The upstream sent more than the coordinator accepts (an event, stages, state...).
    Oversized(String),
    /// The upstream did not answer in time.
    Timeout(Deadline, String),
    /// Every target's circuit breaker is open; the next trial is in `retry_in_s` seconds.
    CircuitOpen {
        /// Seconds until a trial call is allowed.
        retry_in_s: u64,
    },
}

impl UpstreamFault {
    /// Malformed data, said in the coordinator's words, with nothing for the log.
    pub fn malformed(what: impl Into<String>) -> UpstreamFault {
        UpstreamFault::Malformed {
            what: what.into(),
            detail: String::new(),
        }
    }

    /// What the upstream said that only the log may keep: the excerpt of an
    /// error body, what the parser made of malformed data (both redacted).
    pub fn log_detail(&self) -> Option<&str> {
        let (UpstreamFault::Status(_, detail)
        | UpstreamFault::RateLimited { detail, .. }
        | UpstreamFault::Malformed { detail, .. }) = self
        else {
            return None;
        };
        (!detail.is_empty()).then_some(detail.as_str())
    }
}

/// One configuration variable that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable's name.
    pub var: String,
    /// Why the value was rejected (never the value itself: it may be a secret).
    pub reason: String,
}

/// The problems found while reading a configuration: each read records its
/// error here and goes on with a placeholder, so that one pass finds every
/// malformed variable (the placeholders are never used: any problem makes the
/// whole configuration an error).
#[derive(Debug, Default)]
pub struct Problems(std::cell::RefCell<Vec<ConfigProblem>>);

impl Problems {
    /// Records the problems of `error` (a configuration error; any other is ignored).
    pub fn add(&self, error: CoordError) {
        if let CoordError::Config(found) = error {
            self.0.borrow_mut().extend(found);
        }
    }

    /// The value of `result`, or `placeholder` after recording its error.
    pub fn take<T>(&self, result: Result<T, CoordError>, placeholder: T) -> T {
        result.unwrap_or_else(|e| {
            self.add(e);
            placeholder
        })
    }

    /// `value` when nothing was recorded, else every problem, in order.
    pub fn into_result<T>(self, value: T) -> Result<T, CoordError> {
        let found = self.0.into_inner();
        if found.is_empty() {
            Ok(value)
        } else {
            Err(CoordError::Config(found))
        }
    }
}

/// Every error of the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordError {
    /// The request body or headers are not a valid DIAL chat-completion request.
    BadRequest(String),
    /// A valid request asks for what the coordinator does not do (422, as
    /// aidial-sdk answers it): the whole message.
    Unsupported(String),
    /// The `Api-Key` header is missing.
    MissingApiKey,
    /// The request body is larger than the configured limit (bytes).
    PayloadTooLarge(usize),
    /// No route for this path.
    NotFound(String),
    /// The path exists but not for this method.
    MethodNotAllowed {
        /// The method the request used (cut to 20 characters).
        method: String,
        /// The methods the path serves, as the `Allow` header lists them.
        allow: &'static str,
    },
    /// The endpoint needs a token the request did not carry (`HEALTH_TOKEN`).
    Unauthorized(String),
    /// Configuration variables with malformed values: every one found, in
    /// the order they were read (never empty).
    Config(Vec<ConfigProblem>),
    /// The application properties DIAL Core sent
    /// (`X-DIAL-APPLICATION-PROPERTIES`) cannot be used: every problem
    /// found, each named by its property (never empty).
    Properties(Vec<ConfigProblem>),
    /// The coordinator itself failed: a state its own flow should never reach.
    Internal(String),
    /// The request ran past `REQUEST_DEADLINE_MS` (milliseconds) and was stopped.
    DeadlineExceeded(u64),
    /// An upstream call failed.
    Upstream {
        /// Which upstream.
        service: Service,
        /// The deployment, or the label of the endpoint (never its URL: URLs
        /// stay in logs), that was called.
        target: String,
        /// What went wrong.
        fault: UpstreamFault,
    },
}

impl From<RequestError> for CoordError {
    fn from(e: RequestError) -> Self {
        CoordError::BadRequest(e.0)
    }
}

impl CoordError {
    /// A configuration error about one variable.
    pub fn config(var: &str, reason: impl Into<String>) -> CoordError {
        CoordError::Config(vec![ConfigProblem {
            var: var.to_owned(),
            reason: reason.into(),
        }])
    }

    /// HTTP status when the error happens before the first byte.
    ///
    /// Never 429/502/503/504: DIAL Core treats those as "this application is down"
    /// and backs off from it for every user.
    pub fn status(&self) -> u16 {
        match self {
            CoordError::BadRequest(_) | CoordError::MissingApiKey | CoordError::Properties(_) => {
                400
            }
            CoordError::Unsupported(_) => 422,
            CoordError::PayloadTooLarge(_) => 413,
            CoordError::NotFound(_) => 404,
            CoordError::MethodNotAllowed { .. } => 405,
            CoordError::Unauthorized(_) => 401,
            CoordError::Config(_)
            | CoordError::Internal(_)
            | CoordError::DeadlineExceeded(_)
            | CoordError::Upstream { .. } => 500,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CoordError::BadRequest(_)
            | CoordError::Unsupported(_)
            | CoordError::MissingApiKey
            | CoordError::PayloadTooLarge(_)
            | CoordError::MethodNotAllowed { .. }
            | CoordError::Unauthorized(_)
            | CoordError::Properties(_) => "invalid_request_error",
            CoordError::NotFound(_) => "not_found_error",
            CoordError::Config(_) | CoordError::Internal(_) => "internal_server_error",
            CoordError::Upstream { .. } | CoordError::DeadlineExceeded(_) => "runtime_error",
        }
    }

    /// The technical message.
    pub fn message(&self) -> String {
        match self {
            CoordError::BadRequest(m) => format!("Invalid request: {m}"),
            CoordError::Unsupported(m) => m.clone(),
            CoordError::MissingApiKey => "Api-Key header is required: DIAL Core sends the per-request \
                key in it; called directly, send Api-Key: <key> (an Authorization header is not a key)"
                .to_owned(),
            CoordError::PayloadTooLarge(limit) => {
                format!("Request body is larger than the limit of {limit} bytes")
            }
            CoordError::NotFound(path) => format!("No route for path {path}"),
            CoordError::MethodNotAllowed { method, allow } => {
                format!("Method {method} is not allowed on this path (allowed: {allow})")
            }
            CoordError::Unauthorized(what) => what.clone(),
            CoordError::Internal(what) => format!("Internal error: {what}"),
            CoordError::DeadlineExceeded(ms) => format!(
                "The request ran past its deadline of {ms} ms (REQUEST_DEADLINE_MS): every call under way was stopped"
            ),
            CoordError::Config(problems) => {
                let each: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{} {}", p.var, p.reason))
                    .collect();
                format!("Invalid configuration: {}", each.join("; "))
            }
            CoordError::Properties(problems) => {
                let each: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{} {}", p.var, p.reason))
                    .collect();
                format!("Invalid application properties: {}", each.join("; "))
            }
            CoordError::Upstream {
                service,
                target,
                fault,
            } => {
                let who = format!("{} ({target})", service.name);
                match fault {
                    UpstreamFault::Connect(d) => format!("{who} could not be reached: {d}"),
                    UpstreamFault::Status(s, _) => format!("{who} answered HTTP {s}"),
                    UpstreamFault::RateLimited { retry_after_s, .. } => {
                        let mut m = format!("{who} answered HTTP 429: a limit was reached");
                        if let Some(s) = retry_after_s {
                            m.push_str(&format!("; retry after {s} s"));
                        }
                        m
                    }
                    UpstreamFault::ErrorEvent(d) => format!("{who} reported an error: {d}"),
                    UpstreamFault::Truncated(d) => {
                        format!("{who} stopped before finishing its answer: {d}")
                    }
                    UpstreamFault::Malformed { what, .. } => {
                        format!("{who} sent malformed data: {what}")
                    }
                    UpstreamFault::Oversized(d) => format!("{who} sent too much: {d}"),
                    UpstreamFault::Timeout(_, d) => format!("{who} did not answer in time: {d}"),
                    UpstreamFault::CircuitOpen { retry_in_s } => format!(
                        "{who} is skipped after repeated failures (circuit open, next try in {retry_in_s} s)"
                    ),
                }
            }
        }
    }

    /// The sentence DIAL Chat shows to the person, saying what they can do.
    pub fn display_message(&self) -> String {
        match self {
            CoordError::BadRequest(m) => format!("The request could not be processed: {m}."),
            CoordError::Unsupported(m) => format!("{m}."),
            CoordError::MissingApiKey => {
                "The request reached the coordinator without an API key. Call it through DIAL Core."
                    .to_owned()
            }
            CoordError::PayloadTooLarge(limit) => format!(
                "The conversation is too large for the coordinator (limit {} KiB). Start a new conversation or remove large attachments.",
                limit / 1024
            ),
            CoordError::NotFound(_) | CoordError::MethodNotAllowed { .. } => {
                "The coordinator does not serve this address.".to_owned()
            }
            CoordError::Unauthorized(_) => "This endpoint needs a valid token.".to_owned(),
            CoordError::DeadlineExceeded(ms) => format!(
                "The request took too long and was stopped after {} s. Please try again, or ask for less at once.",
                ms.div_ceil(1000)
            ),
            CoordError::Internal(_) => {
                "The coordinator failed internally. Please try again; if it keeps happening, tell the administrator."
                    .to_owned()
            }
            CoordError::Config(problems) => {
                let vars: Vec<&str> = problems.iter().map(|p| p.var.as_str()).collect();
                format!(
                    "The coordinator is misconfigured ({}). Please tell the administrator.",
                    vars.join(", ")
                )
            }
            CoordError::Properties(problems) => {
                let paths: Vec<&str> = problems.iter().map(|p| p.var.as_str()).collect();
                format!(
                    "This application's settings are invalid ({}). Please tell the application's owner.",
                    paths.join(", ")
                )
            }
            CoordError::Upstream { service, fault, .. } => {
                let who = &service.display;
                let what = match fault {
                    UpstreamFault::Connect(_) => format!("{who} is unreachable right now"),
                    UpstreamFault::Status(s, _) => format!("{who} failed (HTTP {s})"),
                    UpstreamFault::RateLimited { retry_after_s, .. } => {
                        let mut s = format!("{who} reached a usage limit");
                        if let Some(first) = s.get_mut(0..1) {
                            first.make_ascii_uppercase();
                        }
                        return match retry_after_s {
                            Some(after) => format!("{s}. Please try again in {after} s."),
                            None => format!("{s}. Please try again later."),
                        };
                    }
                    UpstreamFault::ErrorEvent(_) => format!("{who} reported an error"),
                    UpstreamFault::Truncated(_) => {
                        format!("{who} stopped before finishing its answer")
                    }
                    UpstreamFault::Malformed { .. } => format!("{who} sent an answer that could not be read"),
                    UpstreamFault::Oversized(_) => format!("{who} sent more than the coordinator accepts"),
                    UpstreamFault::Timeout(..) => format!("{who} did not answer in time"),
                    UpstreamFault::CircuitOpen { retry_in_s } => format!(
                        "{who} is unavailable after repeated failures; it will be tried again in {retry_in_s} s"
                    ),
                };
                let mut s = what;
                if let Some(first) = s.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                s.push_str(". Please try again in a moment.");
                s
            }
        }
    }

    /// The `Allow` header a 405 carries.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            CoordError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }

    /// The DIAL error body for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message(),
                kind: self.kind(),
                code: self.status().to_string(),
                display_message: self.display_message(),
            },
        }
    }

    /// The DIAL error body serialized as JSON bytes.
    pub fn body_json(&self) -> Vec<u8> {
        self.body().to_json()
    }

    /// The fault, when this is an upstream's error.
    pub fn fault(&self) -> Option<&UpstreamFault> {
        match self {
            CoordError::Upstream { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

impl fmt::Display for CoordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for CoordError {}

/// Longest upstream excerpt kept in an error message or a log line.
const EXCERPT_CHARS: usize = 200;

/// Shortens upstream text for an error message or a log line and removes every
/// occurrence of `secret` (the per-request key), so that an upstream echoing it
/// cannot leak it.
pub fn redact(text: &str, secret: &str) -> String {
    // Only the start of the text can end up in the excerpt: look no further
    // than that (plus room for a secret that straddles the cut).
    let text = text.trim_start();
    let room = EXCERPT_CHARS + secret.chars().count() + 1;
    let head = match text.char_indices().nth(room) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    let cleaned = if secret.is_empty() {
        head.to_owned()
    } else {
        head.replace(secret, "***")
    };
    let cleaned = cleaned.trim();
    match cleaned.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa() -> Service {
        Service {
            name: "GPA".into(),
            display: "the General Purpose Agent".into(),
        }
    }

    #[test]
    fn bad_request_body_has_dial_shape() {
        let e = CoordError::BadRequest("messages must not be empty".into());
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{
                "message":"Invalid request: messages must not be empty",
                "type":"invalid_request_error","code":"400",
                "display_message":"The request could not be processed: messages must not be empty."}})
        );
    }

    #[test]
    fn an_internal_failure_is_a_500_not_the_callers_fault() {
        let e = CoordError::Internal("the task did not run".into());
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{
                "message":"Internal error: the task did not run",
                "type":"internal_server_error","code":"500",
                "display_message":"The coordinator failed internally. Please try again; if it keeps happening, tell the administrator."}})
        );
    }

    #[test]
    fn a_request_past_its_deadline_says_so() {
        let e = CoordError::DeadlineExceeded(1500);
        assert_eq!(
            serde_json::to_value(e.body()).unwrap(),
            serde_json::json!({"error": {
                "message": "The request ran past its deadline of 1500 ms (REQUEST_DEADLINE_MS): every call under way was stopped",
                "type": "runtime_error", "code": "500",
                "display_message": "The request took too long and was stopped after 2 s. Please try again, or ask for less at once."}})
        );
    }

    #[test]
    fn a_limit_says_so_and_when_to_try_again() {
        let limited = |retry_after_s| CoordError::Upstream {
            service: Service::llm(),
            target: "gpt-4o".into(),
            fault: UpstreamFault::RateLimited {
                retry_after_s,
                detail: "Token rate limit exceeded".into(),
            },
        };
        assert_eq!(
            limited(None).display_message(),
            "The coordinator's language model reached a usage limit. Please try again later."
        );
        assert_eq!(
            limited(Some(20)).message(),
            "LLM (gpt-4o) answered HTTP 429: a limit was reached; retry after 20 s"
        );
        assert_eq!(limited(Some(20)).status(), 500, "never a 429 to DIAL Core");
    }

    #[test]
    fn an_upstream_s_words_stay_out_of_every_message_and_go_to_the_log() {
        let upstream = "MARKER-41 at handler.py:12, key ***";
        let at = |fault| CoordError::Upstream {
            service: gpa(),
            target: "general-purpose-agent".into(),
            fault,
        };
        let cases = [
            (
                at(UpstreamFault::Status(503, upstream.into())),
                "GPA (general-purpose-agent) answered HTTP 503",
                "The General Purpose Agent failed (HTTP 503). Please try again in a moment.",
            ),
            (
                at(UpstreamFault::RateLimited {
                    retry_after_s: Some(7),
                    detail: upstream.into(),
                }),
                "GPA (general-purpose-agent) answered HTTP 429: a limit was reached; retry after 7 s",
                "The General Purpose Agent reached a usage limit. Please try again in 7 s.",
            ),
            (
                at(UpstreamFault::Malformed {
                    what: "an event is not the expected JSON".into(),
                    detail: upstream.into(),
                }),
                "GPA (general-purpose-agent) sent malformed data: an event is not the expected JSON",
                "The General Purpose Agent sent an answer that could not be read. Please try again in a moment.",
            ),
        ];
        for (e, message, display) in cases {
            assert_eq!(e.message(), message);
            assert_eq!(e.display_message(), display);
            let wire = String::from_utf8(e.body_json()).unwrap();
            assert!(!wire.contains("MARKER-41"), "{wire}");
            assert_eq!(
                e.fault().and_then(UpstreamFault::log_detail),
                Some(upstream)
            );
        }
        // An agent's error event is meant for the user: its message stays.
        let event = at(UpstreamFault::ErrorEvent("the tool crashed".into()));
        assert_eq!(
            event.message(),
            "GPA (general-purpose-agent) reported an error: the tool crashed"
        );
        assert_eq!(event.fault().and_then(UpstreamFault::log_detail), None);
        let bare = UpstreamFault::Status(500, String::new());
        assert_eq!(bare.log_detail(), None, "nothing said, nothing logged");
    }

    #[test]
    fn upstream_errors_never_use_statuses_that_make_core_back_off() {
        for fault in [
            UpstreamFault::Connect("refused".into()),
            UpstreamFault::Status(503, String::new()),
            UpstreamFault::Status(429, String::new()),
            UpstreamFault::Timeout(Deadline::FirstByte, "30 s".into()),
        ] {
            let e = CoordError::Upstream {
                service: gpa(),
                target: "general-purpose-agent".into(),
                fault,
            };
            assert_eq!(e.status(), 500);
        }
    }

    #[test]
    fn upstream_display_message_names_the_agent() {
        let e = CoordError::Upstream {
            service: Service {
                name: "UMS".into(),
                display: "the User Management agent".into(),
            },
            target: "primary endpoint".into(),
            fault: UpstreamFault::Connect("connection refused".into()),
        };
        assert_eq!(
            e.display_message(),
            "The User Management agent is unreachable right now. Please try again in a moment."
        );
        assert_eq!(
            e.message(),
            "UMS (primary endpoint) could not be reached: connection refused"
        );
    }

    #[test]
    fn redact_removes_secret_and_shortens() {
        assert_eq!(redact(" key sk-123 denied ", "sk-123"), "key *** denied");
        let long = "x".repeat(500);
        assert_eq!(redact(&long, "k").chars().count(), EXCERPT_CHARS + 1);
    }
}

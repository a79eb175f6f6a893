//! The seam between the coordinator and its host: outbound HTTP requests and
//! responses, the targets they go to, time, randomness, logging and breaker
//! storage.
//!
//! The component implements [`Host`] with WASI (`host.rs`); native tests
//! implement it with scripted in-process fakes. Nothing here knows about DIAL,
//! agents or the per-request key.

use futures::Stream;

/// HTTP method of an outbound call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// A small key-value store: where breaker states (and the deep health report's
/// cache) live. A deployment choice (see docs/deploying.md, "Which build on which host").
pub trait SharedStore {
    /// The value of `key`, if any.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key`.
    fn set(&self, key: &str, value: &[u8]);
    /// A name for `/health`.
    fn kind(&self) -> &'static str;
}

/// A store in this instance's memory: it lasts as long as the host reuses the instance.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// The keys it holds, sorted (tests and tools).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.values.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.values.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8]) {
        self.values
            .borrow_mut()
            .insert(key.to_owned(), value.to_vec());
    }

    fn kind(&self) -> &'static str {
        "instance-memory"
    }
}

/// One place a call can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What goes into the URL (and a DIAL body's `model`): a deployment name
    /// or an endpoint's base URL.
    pub id: String,
    /// How messages shown to the person name it: the deployment name, or
    /// `primary endpoint` / `backup endpoint N` (URLs stay in logs).
    pub label: String,
    /// What the breaker is keyed by: the deployment's URL in DIAL Core, or the
    /// endpoint.
    pub identity: String,
}

/// The targets of a list of DIAL deployments (primary first) behind the DIAL
/// Core at `dial_endpoint`.
pub fn dial_targets(dial_endpoint: &str, deployments: &[String]) -> Vec<Target> {
    deployments
        .iter()
        .map(|d| Target {
            id: d.clone(),
            label: d.clone(),
            identity: format!("{dial_endpoint}/openai/deployments/{d}"),
        })
        .collect()
}

/// The targets of a list of endpoints (base URLs, primary first).
pub fn endpoint_targets(endpoints: &[String]) -> Vec<Target> {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| Target {
            id: e.clone(),
            label: if i == 0 {
                "primary endpoint".to_owned()
            } else {
                format!("backup endpoint {i}")
            },
            identity: e.clone(),
        })
        .collect()
}

/// Headers as `Debug` shows them: the values of credential headers
/// (`api-key`, `authorization`) replaced, so no `{:?}` prints a key.
pub fn redacted_headers(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(name, value)| {
            let secret =
                name.eq_ignore_ascii_case("api-key") || name.eq_ignore_ascii_case("authorization");
            (name.as_str(), if secret { "***" } else { value.as_str() })
        })
        .collect()
}

/// An outbound request.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for GET).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &redacted_headers(&self.headers))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl OutboundRequest {
    /// A POST with a JSON body.
    pub fn post_json(url: String, body: Vec<u8>) -> OutboundRequest {
        OutboundRequest {
            method: Method::Post,
            url,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body,
        }
    }

    /// A GET.
    pub fn get(url: String) -> OutboundRequest {
        OutboundRequest {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> OutboundRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The value of a header, if set.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A transport-level failure (no usable response, or a body that broke).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// The request provably never reached the upstream (connection refused,
    /// name not resolved, TLS failed, the request could not be written): it
    /// cannot have started any work, so another target may be tried.
    pub not_sent: bool,
    /// What happened, in the host's words (first line only).
    pub message: String,
}

impl TransportError {
    /// A failure before the request reached the upstream.
    pub fn not_sent(message: impl Into<String>) -> TransportError {
        TransportError {
            not_sent: true,
            message: message.into(),
        }
    }

    /// A failure after the request may have reached the upstream.
    pub fn other(message: impl Into<String>) -> TransportError {
        TransportError {
            not_sent: false,
            message: message.into(),
        }
    }
}

/// A response whose body is read as a stream of byte chunks.
#[derive(Debug)]
pub struct OutboundResponse<B> {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds, when the response carries one as a number.
    pub retry_after_s: Option<u64>,
    /// Body chunks, split anywhere.
    pub body: B,
}

/// A `Retry-After` value in seconds (its HTTP-date form is not read), bounded
/// to a day.
pub fn retry_after_seconds(value: &str) -> Option<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.min(24 * 60 * 60))
}

/// What the coordinator needs from the host it runs on: outbound HTTP, a timer,
/// two clocks, randomness, a log line sink and a small key-value store. The
/// component implements it with WASI (`host.rs`); tests with fakes.
pub trait Host {
    /// The body stream of a response.
    type Body: Stream<Item = Result<Vec<u8>, TransportError>> + Unpin;
    /// A timer future.
    type Sleep: std::future::Future<Output = ()> + Unpin;

    /// Sends a request and returns once the response head has arrived.
    fn send(
        &self,
        request: OutboundRequest,
    ) -> impl std::future::Future<Output = Result<OutboundResponse<Self::Body>, TransportError>>;

    /// A future that completes after `ms` milliseconds.
    fn sleep(&self, ms: u64) -> Self::Sleep;

    /// Milliseconds of a monotonic clock (timeouts; it may start anywhere in
    /// each instance).
    fn now_ms(&self) -> u64;

    /// Unix time in milliseconds (log lines, breakers, state issue times: what
    /// is compared across instances).
    fn unix_ms(&self) -> u64;

    /// 64 random bits (span and trace ids).
    fn random_u64(&self) -> u64;

    /// Writes one structured log line.
    fn log(&self, line: &str);

    /// Where circuit-breaker states live.
    fn store(&self) -> &dyn SharedStore;

    /// True the first time it is asked for `what` in this instance (for
    /// warnings logged once per instance).
    fn first_in_instance(&self, what: &'static str) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_targets_are_labelled_without_their_urls() {
        let t = endpoint_targets(&["http://a".into(), "http://b".into()]);
        assert_eq!(t[0].label, "primary endpoint");
        assert_eq!(t[1].label, "backup endpoint 1");
        assert_eq!(t[1].identity, "http://b");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        assert_eq!(retry_after_seconds(" 30 "), Some(30));
        assert_eq!(retry_after_seconds("999999999"), Some(86_400));
        assert_eq!(retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(retry_after_seconds("-1"), None);
    }

    #[test]
    fn dial_targets_are_keyed_by_their_url_in_dial_core() {
        let t = dial_targets("http://core", &["gpa".into(), "gpa-b".into()]);
        assert_eq!((t[1].id.as_str(), t[1].label.as_str()), ("gpa-b", "gpa-b"));
        assert_eq!(t[0].identity, "http://core/openai/deployments/gpa");
    }
}

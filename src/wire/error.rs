//! The error body DIAL uses everywhere: `{"error": {...}}`, as an HTTP body before
//! the first byte and as one SSE event after it. Only the wire shape lives here;
//! which error gets which words is the application's business (`error.rs`).

use serde::Serialize;

/// The JSON body `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The inner object.
    pub error: ErrorDetail,
}

/// The inner error object, field names as DIAL expects them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Technical message (for logs and API clients).
    pub message: String,
    /// Error class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status as a string, as aidial-sdk does.
    pub code: String,
    /// What DIAL Chat shows to the person.
    pub display_message: String,
}

impl ErrorBody {
    /// The body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

//! Injected faults: what a test can make a target do (see the crate docs for the
//! semantics), and which targets there are.

use serde::{Deserialize, Serialize};

/// An injected fault (see the crate docs for the semantics).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Fault {
    pub kind: FaultKind,
    /// For [`FaultKind::Status`] (500 when absent) and [`FaultKind::DribbleError`] (503
    /// when absent).
    pub status: Option<u16>,
    /// Delay before the response head, in milliseconds.
    pub first_byte_delay_ms: u64,
    /// Delay between body frames (SSE events), in milliseconds; for
    /// [`FaultKind::DribbleError`] between bytes (1000 when 0).
    pub chunk_delay_ms: u64,
    /// For [`FaultKind::Status`]: the error's message (Core) or the text body (UMS)
    /// instead of the default, e.g. a marker an upstream's error body must not leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The kind of an injected fault.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The normal answer (only the delays apply).
    #[default]
    None,
    /// Close the connection without a response.
    Down,
    /// An error status before any body.
    Status,
    /// Two events, then an error event.
    ErrorMidStream,
    /// Two events, then cut the connection.
    DropMidStream,
    /// A 200 with an invalid body.
    Garbage,
    /// No response head until the client goes away.
    Hang,
    /// An error body sent one byte per frame, slowly.
    DribbleError,
    /// An endless SSE body that never completes an event.
    NoEventBoundary,
}

/// The fault targets, for error messages.
pub(crate) const TARGETS: &str = "routing, synthesis, ums, ums-backup or deployment:<name>";

/// Whether `target` names something a fault can apply to.
pub(crate) fn valid_target(target: &str) -> bool {
    matches!(target, "routing" | "synthesis" | "ums" | "ums-backup")
        || target
            .strip_prefix("deployment:")
            .is_some_and(|name| !name.is_empty())
}

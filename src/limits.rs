//! Every bound the coordinator puts on what an upstream or a client can make it
//! hold or do, in one place. An upstream that goes past a bound ends its call
//! with a clear error (or, for text handed to the synthesis, is truncated and
//! marked): it can never make the instance run out of memory or wait forever.

/// Largest SSE event (all `data:` lines of one event together) accepted from an upstream.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Largest non-streaming answer accepted from an upstream.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Largest error body read for an error message (the rest is not read).
pub const MAX_ERROR_EXCERPT_BYTES: usize = 4096;
/// Longest wait for an error body's excerpt, after which the call moves on with
/// what arrived (it is also bounded by the call's total deadline).
pub const ERROR_EXCERPT_WAIT_MS: u64 = 1_000;

/// Stages one agent call may open (its own, mirrored under its stage).
pub const MAX_STAGES_PER_AGENT: usize = 256;
/// Attachments one agent call may add (to the choice and to its stages together).
pub const MAX_ATTACHMENTS_PER_AGENT: usize = 256;
/// Text (answer and stage content together) one agent call may stream.
pub const MAX_AGENT_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// Largest state one agent may hand back for a turn (serialized JSON).
pub const MAX_AGENT_STATE_BYTES: usize = 1024 * 1024;
/// Largest inline attachment (its `data`) an agent call may add. A larger one
/// is not emitted (nor remembered), and the agent's stage says so.
pub const MAX_INLINE_ATTACHMENT_BYTES: usize = 1024 * 1024;
/// Bytes of attachments (their fields together) one agent call may add, to
/// the choice and to its stages. An attachment that would pass it is not
/// emitted (nor remembered), and the agent's stage says so.
pub const MAX_ATTACHMENT_BYTES_PER_AGENT: usize = 4 * 1024 * 1024;

/// The part of one agent's answer handed to the synthesis call; longer answers
/// are cut at a character boundary and marked.
pub const MAX_CONTEXT_BYTES_PER_RESULT: usize = 64 * 1024;
/// What an agent's earlier turn keeps of its answer (and of what it was asked)
/// in our state, for the agent's own history on later turns.
pub const MAX_REMEMBERED_TEXT_BYTES: usize = 8 * 1024;
/// Attachments an agent's earlier turn keeps in our state.
pub const MAX_REMEMBERED_ATTACHMENTS: usize = 32;
/// Bytes of attachments (their JSON together) an agent's earlier turn keeps
/// in our state: each attachment that still fits, in order (a DIAL file's
/// reference is a few hundred bytes; large inline ones are left out).
pub const MAX_REMEMBERED_ATTACHMENT_BYTES: usize = 16 * 1024;
/// Largest state (signed, serialized JSON) one response carries. Every later
/// request of the conversation carries it back, so it is a quarter of the
/// request limit: 1 MiB of the default `MAX_REQUEST_BYTES` of 4 MiB (see
/// [`state_budget`]). One turn can then never make the next request too
/// large, and a client that re-encodes the state (spaces after separators,
/// non-ASCII text escaped: up to three times the bytes) still fits. A state
/// past it is trimmed (`memory::compose`): agents' own states first, largest
/// first, then attachments, then the latest exchanges; answers stay longest.
pub const MAX_STATE_BYTES: usize = 1024 * 1024;

/// The state budget of a response under a request limit of
/// `max_request_bytes`: [`MAX_STATE_BYTES`], or a quarter of a lower limit.
pub fn state_budget(max_request_bytes: usize) -> usize {
    MAX_STATE_BYTES.min(max_request_bytes / 4)
}

/// Buffered response bytes after which the driver writes to the client even
/// when more upstream data is ready at once.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// Cuts `text` to at most `max` bytes at a character boundary, with a marker
/// saying so. Returns the text unchanged when it fits.
pub fn truncate_marked(text: &str, max: usize, what: &str) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n\n[{what} truncated: {} of {} bytes shown]",
        &text[..cut],
        cut,
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_budget_is_a_quarter_of_the_request_limit_at_most_one_mib() {
        assert_eq!(state_budget(4 * 1024 * 1024), 1024 * 1024);
        assert_eq!(state_budget(64 * 1024 * 1024), MAX_STATE_BYTES);
        assert_eq!(state_budget(1024 * 1024), 256 * 1024);
        assert_eq!(state_budget(1024), 256);
    }

    #[test]
    fn truncation_keeps_char_boundaries_and_says_so() {
        assert_eq!(truncate_marked("short", 10, "answer"), "short");
        assert_eq!(
            truncate_marked("héllo", 2, "answer"),
            "h\n\n[answer truncated: 1 of 6 bytes shown]"
        );
    }
}

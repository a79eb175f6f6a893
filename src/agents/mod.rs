//! The agents, as sans-IO sessions: each is a state machine that says which
//! call it needs next ([`Step`]), is fed what that call brings (its head, its
//! events or its whole body, its end, its failure), and says what it has to say
//! through [`Say`]: text for its stage, stages of its own, attachments, its
//! memory for later turns, usage. It never touches the network, the clock, the
//! emitter or the breakers: the driver (`flow/driver.rs`) owns all of those and can
//! run several sessions at once into one response.
//!
//! Each agent kind is one file and one row of [`kinds::KINDS`]:
//!
//! - [`dial`]: any DIAL deployment called through DIAL Core (GPA and every
//!   `dial` agent of the registry).
//! - [`ums`]: any agent with the UMS conversation API.
//! - [`synthesis::SynthesisSession`](crate::flow::synthesis::SynthesisSession) and
//!   [`coordination::CoordinationSession`](crate::flow::coordination::CoordinationSession)
//!   use the same interface for the coordination and the final answer.

pub mod a2a;
pub mod dial;
pub mod kinds;
pub mod ums;

use crate::calls::{Blame, CallFailed, CallSpec};
use crate::client::Target;
use crate::error::{CoordError, UpstreamFault};
use crate::memory::Memory;
use crate::wire::response::{Attachment, StageStatus};
use crate::wire::upstream::{error_text, ChunkDelta, StreamChunk};
use crate::wire::usage::Usage;

/// A stage a session opened, in the session's own numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalStage(pub usize);

/// What a session may say. The driver maps it onto the response: the
/// session's text goes to its root (its own stage, or the answer for the
/// synthesis), its stages open under its root, and every bound of `limits.rs`
/// is enforced (a session past one is ended with an error).
pub trait Say {
    /// Text into the session's root.
    fn text(&mut self, text: &str);
    /// Opens a stage under `parent` (`None`: under the session's root).
    fn open_stage(&mut self, name: &str, parent: Option<LocalStage>) -> LocalStage;
    /// Whether the session's stage is still open.
    fn is_open(&self, stage: LocalStage) -> bool;
    /// Appends to a stage's name.
    fn stage_name(&mut self, stage: LocalStage, name: &str);
    /// Appends to a stage's content.
    fn stage_content(&mut self, stage: LocalStage, text: &str);
    /// Adds an attachment to a stage.
    fn stage_attachment(&mut self, stage: LocalStage, attachment: Attachment);
    /// Closes a stage.
    fn close_stage(&mut self, stage: LocalStage, status: StageStatus);
    /// Adds an attachment to the choice; false when it was left out (past a
    /// byte budget of `limits.rs`: the driver says so in the session's root).
    fn attachment(&mut self, attachment: Attachment) -> bool;
    /// Leaves something for later turns (see `memory/`).
    fn remember(&mut self, memory: Memory);
    /// Reports what a call to `model` used.
    fn usage(&mut self, model: &str, usage: Usage);
    /// Records a breaker failure the call held back (see `CallSpec::defer_blame`).
    fn blame(&mut self, blame: Blame);
    /// The error for `fault` at the current call.
    fn error(&self, fault: UpstreamFault) -> CoordError;
    /// Upstream text made safe for an error message (the key removed, shortened).
    fn redact(&self, text: &str) -> String;
}

/// How the driver reads a call's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// As server-sent events, each fed to [`Session::on_event`], until `[DONE]`.
    Events,
    /// As server-sent events with no end marker: the end of the body ends the
    /// stream (then [`Session::on_done`] decides whether it was complete).
    EventsToEnd,
    /// Whole (bounded), fed to [`Session::on_body`].
    Whole,
}

/// What a session needs next.
#[derive(Debug)]
pub enum Step {
    /// Make this call.
    Call(CallSpec, Read),
    /// The session is over: its answer text (for the synthesis), or why not.
    Finish(Result<String, CoordError>),
}

/// An agent session (see the module docs). The driver calls [`Session::step`]
/// first and after every call has ended; in between it feeds the call.
pub trait Session {
    /// The next call, or the end.
    fn step(&mut self, say: &mut dyn Say) -> Step;
    /// The call was accepted by `target` (the head arrived).
    fn on_open(&mut self, _target: &Target, _say: &mut dyn Say) {}
    /// The call failed before a success head (after failover).
    fn on_failed(&mut self, failed: CallFailed, say: &mut dyn Say);
    /// One event of a streamed call (neither `[DONE]` nor an empty keep-alive).
    fn on_event(&mut self, data: &str, say: &mut dyn Say) -> Result<(), CoordError>;
    /// The whole body of a call read with [`Read::Whole`].
    fn on_body(&mut self, _body: &[u8], _say: &mut dyn Say) -> Result<(), CoordError> {
        Ok(())
    }
    /// A streamed call ended with `[DONE]` (with [`Read::EventsToEnd`]: its
    /// body ended).
    fn on_done(&mut self, _say: &mut dyn Say) -> Result<(), CoordError> {
        Ok(())
    }
}

/// One event's JSON, or the current call's "malformed" error. Serde's message
/// may quote upstream text, so it is the fault's detail for the log (redacted),
/// not part of the message.
pub fn parse_event<T: serde::de::DeserializeOwned>(
    data: &str,
    say: &dyn Say,
) -> Result<T, CoordError> {
    serde_json::from_str(data).map_err(|e| {
        say.error(UpstreamFault::Malformed {
            what: "an event is not the expected JSON".to_owned(),
            detail: say.redact(&e.to_string()),
        })
    })
}

/// One event of a DIAL deployment's stream: an error event becomes the
/// call's error, usage is reported for `deployment`, and the delta of choice
/// 0 is returned.
pub fn dial_delta(
    data: &str,
    deployment: &str,
    say: &mut dyn Say,
) -> Result<Option<ChunkDelta>, CoordError> {
    let chunk: StreamChunk = parse_event(data, say)?;
    if let Some(error) = &chunk.error {
        return Err(say.error(UpstreamFault::ErrorEvent(say.redact(&error_text(error)))));
    }
    if let Some(usage) = chunk.usage {
        say.usage(deployment, usage);
    }
    Ok(chunk.into_delta())
}

/// An upstream's text kept for the synthesis, bounded: past `max` bytes it is
/// cut (at a character boundary) and marked.
#[derive(Debug, Clone)]
pub struct AnswerText {
    text: String,
    total: usize,
    max: usize,
}

impl AnswerText {
    /// Keeps at most `max` bytes.
    pub fn new(max: usize) -> AnswerText {
        AnswerText {
            text: String::new(),
            total: 0,
            max,
        }
    }

    /// Appends a piece.
    pub fn push(&mut self, piece: &str) {
        self.total = self.total.saturating_add(piece.len());
        let room = self.max.saturating_sub(self.text.len());
        if piece.len() <= room {
            self.text.push_str(piece);
        } else {
            let mut cut = room;
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&piece[..cut]);
        }
    }

    /// What was kept, without a marker.
    pub fn kept(&self) -> &str {
        &self.text
    }

    /// The text, marked when it was cut.
    pub fn finish(self) -> String {
        if self.total <= self.text.len() {
            return self.text;
        }
        format!(
            "{}\n\n[answer truncated: {} of {} bytes shown]",
            self.text,
            self.text.len(),
            self.total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_is_cut_and_marked_past_its_bound() {
        let mut a = AnswerText::new(5);
        a.push("abc");
        assert_eq!(a.kept(), "abc");
        a.push("déf");
        assert_eq!(a.kept(), "abcd");
        assert_eq!(a.finish(), "abcd\n\n[answer truncated: 4 of 7 bytes shown]");
        let mut b = AnswerText::new(5);
        b.push("abcde");
        assert_eq!(b.finish(), "abcde");
    }
}

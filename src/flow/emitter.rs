//! The response being written: the rules of a DIAL choice, enforced in one place.
//!
//! [`Emitter`] allocates stage and attachment indices, refuses what aidial-sdk
//! would refuse (content for a closed stage, a second state, a second close) and
//! closes whatever is still open when the response ends: completed on success,
//! failed on error, children before parents. It appends events to a buffer;
//! [`Emitter::flush`] hands the buffer to the [`Transport`] in one write, so the
//! flow flushes right before it waits on an upstream and every event reaches the
//! client as soon as it exists. [`Emitter::heartbeat`] writes an SSE comment
//! that keeps a quiet stream open through proxies. In non-streaming mode the
//! same deltas are folded into the merged message instead. It also keeps the
//! response's token usage, which the last chunk carries.

use serde_json::Value;

pub use crate::context::ClientGone;
use crate::error::CoordError;
use crate::wire::response::{Attachment, Delta, MessageAccumulator, SseEncoder, StageStatus};
use crate::wire::usage::{Usage, UsageReport};

/// Where the streamed bytes go (the host's response body, or a test's buffer).
pub trait Transport {
    /// Writes and flushes `bytes` (the emitter reuses its buffer afterwards,
    /// so a write allocates nothing on the way).
    fn write(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = Result<(), ClientGone>>;
}

/// A stage of our response, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageId(pub usize);

#[derive(Debug)]
struct StageSlot {
    open: bool,
    attachments: usize,
}

#[derive(Debug)]
enum Sink<T> {
    Stream {
        encoder: SseEncoder,
        buffer: Vec<u8>,
        transport: T,
    },
    Collect(MessageAccumulator),
}

/// Writes one choice, streaming (SSE) or collecting (merged JSON).
#[derive(Debug)]
pub struct Emitter<T> {
    sink: Sink<T>,
    stages: Vec<StageSlot>,
    attachments: usize,
    state_sent: bool,
    form_sent: bool,
    finished: bool,
    /// Writes that reached the transport (streaming mode).
    writes: u64,
    usage: UsageReport,
}

/// The SSE comment of a heartbeat (clients ignore comment lines).
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

impl<T: Transport> Emitter<T> {
    /// An emitter that streams SSE through `transport`.
    pub fn streaming(encoder: SseEncoder, transport: T) -> Emitter<T> {
        Emitter::with_sink(Sink::Stream {
            encoder,
            buffer: Vec::with_capacity(4096),
            transport,
        })
    }

    /// An emitter that folds everything into one message.
    pub fn collecting() -> Emitter<T> {
        Emitter::with_sink(Sink::Collect(MessageAccumulator::default()))
    }

    fn with_sink(sink: Sink<T>) -> Emitter<T> {
        Emitter {
            sink,
            stages: Vec::new(),
            attachments: 0,
            state_sent: false,
            form_sent: false,
            finished: false,
            writes: 0,
            usage: UsageReport::default(),
        }
    }

    /// Adds the usage one call to `model` reported.
    pub fn add_usage(&mut self, model: &str, usage: Usage) {
        self.usage.add(model, usage);
    }

    /// Bytes written but not yet flushed (streaming mode).
    pub fn buffered(&self) -> usize {
        match &self.sink {
            Sink::Stream { buffer, .. } => buffer.len(),
            Sink::Collect(_) => 0,
        }
    }

    /// Whether the response is streamed (SSE) rather than collected.
    pub fn is_streaming(&self) -> bool {
        matches!(self.sink, Sink::Stream { .. })
    }

    /// How many writes reached the client so far (heartbeats included; 0
    /// when collecting).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    fn emit(&mut self, delta: Delta) {
        match &mut self.sink {
            Sink::Stream {
                encoder, buffer, ..
            } => encoder.delta(buffer, &delta),
            Sink::Collect(acc) => acc.apply(delta),
        }
    }

    /// Opens the choice (the role chunk).
    pub fn role(&mut self) {
        self.emit(Delta::Role);
    }

    /// Appends answer text.
    pub fn content(&mut self, text: &str) {
        if !text.is_empty() && !self.finished {
            self.emit(Delta::Content(text.to_owned()));
        }
    }

    /// Opens a stage, optionally under `parent`, and returns its id.
    pub fn open_stage(&mut self, name: &str, parent: Option<StageId>) -> StageId {
        let index = self.stages.len();
        self.stages.push(StageSlot {
            open: true,
            attachments: 0,
        });
        let parent = parent.filter(|p| self.is_open(*p)).map(|p| p.0);
        self.emit(Delta::StageOpen {
            index,
            name: name.to_owned(),
            parent,
        });
        StageId(index)
    }

    /// Whether `stage` exists and is still open.
    pub fn is_open(&self, stage: StageId) -> bool {
        self.stages.get(stage.0).is_some_and(|s| s.open)
    }

    /// Appends to an open stage's name. Ignored for closed stages.
    pub fn stage_name(&mut self, stage: StageId, name: &str) {
        if !name.is_empty() && self.is_open(stage) {
            self.emit(Delta::StageName {
                index: stage.0,
                name: name.to_owned(),
            });
        }
    }

    /// Appends content to an open stage. Ignored for closed stages.
    pub fn stage_content(&mut self, stage: StageId, text: &str) {
        if !text.is_empty() && self.is_open(stage) {
            self.emit(Delta::StageContent {
                index: stage.0,
                content: text.to_owned(),
            });
        }
    }

    /// Adds an attachment to an open stage, with the next per-stage index.
    pub fn stage_attachment(&mut self, stage: StageId, attachment: Attachment) {
        let Some(slot) = self.stages.get_mut(stage.0).filter(|s| s.open) else {
            return;
        };
        let attachment_index = slot.attachments;
        slot.attachments += 1;
        self.emit(Delta::StageAttachment {
            index: stage.0,
            attachment_index,
            attachment,
        });
    }

    /// Closes an open stage. Closing twice is ignored.
    pub fn close_stage(&mut self, stage: StageId, status: StageStatus) {
        if let Some(slot) = self.stages.get_mut(stage.0).filter(|s| s.open) {
            slot.open = false;
            self.emit(Delta::StageClose {
                index: stage.0,
                status,
            });
        }
    }

    /// Adds a choice attachment with the next per-choice index.
    pub fn attachment(&mut self, attachment: Attachment) {
        let index = self.attachments;
        self.attachments += 1;
        self.emit(Delta::Attachment { index, attachment });
    }

    /// Sets the choice state. Only the first call has an effect: clients merge
    /// state objects, so a second state chunk would corrupt the stored state.
    pub fn set_state(&mut self, state: Value) -> bool {
        if self.state_sent {
            return false;
        }
        self.state_sent = true;
        self.emit(Delta::State(state));
        true
    }

    /// Sets the choice's form (`custom_content.form_schema`: DIAL Chat shows
    /// its buttons under the answer). Only the first call has an effect.
    pub fn set_form_schema(&mut self, schema: Value) -> bool {
        if self.form_sent {
            return false;
        }
        self.form_sent = true;
        self.emit(Delta::FormSchema(schema));
        true
    }

    /// Closes every open stage with `status`, children (higher indices) first.
    pub fn close_open_stages(&mut self, status: StageStatus) {
        for index in (0..self.stages.len()).rev() {
            self.close_stage(StageId(index), status);
        }
    }

    /// Sends what is buffered (streaming mode); a no-op when collecting.
    pub async fn flush(&mut self) -> Result<(), ClientGone> {
        if let Sink::Stream {
            buffer, transport, ..
        } = &mut self.sink
        {
            if !buffer.is_empty() {
                transport.write(buffer).await?;
                buffer.clear();
                self.writes += 1;
            }
        }
        Ok(())
    }

    /// Writes the heartbeat comment straight to the client (what is buffered
    /// stays buffered: it holds whole events, so the comment falls between
    /// two). Only in a stream whose first bytes went out and that has not
    /// ended: a comment must not be the response's first bytes, nor follow
    /// `[DONE]`. A no-op when collecting.
    pub async fn heartbeat(&mut self) -> Result<(), ClientGone> {
        if self.finished || self.writes == 0 {
            return Ok(());
        }
        if let Sink::Stream { transport, .. } = &mut self.sink {
            transport.write(HEARTBEAT).await?;
            self.writes += 1;
        }
        Ok(())
    }

    /// Ends a successful response: open stages completed, stop chunk, `[DONE]`.
    pub async fn finish_ok(&mut self) -> Result<(), ClientGone> {
        self.close_open_stages(StageStatus::Completed);
        self.end(None);
        self.flush().await
    }

    /// Ends a failed response: open stages failed, stop chunk, one error event, `[DONE]`.
    pub async fn finish_err(&mut self, error: &CoordError) -> Result<(), ClientGone> {
        self.close_open_stages(StageStatus::Failed);
        self.end(Some(error));
        self.flush().await
    }

    fn end(&mut self, error: Option<&CoordError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Sink::Stream {
            encoder, buffer, ..
        } = &mut self.sink
        {
            encoder.stop(buffer, &self.usage);
            if let Some(e) = error {
                SseEncoder::error(buffer, &e.body());
            }
            SseEncoder::done(buffer);
        }
    }

    /// The transport (streaming mode), `None` when collecting.
    pub fn into_transport(self) -> Option<T> {
        match self.sink {
            Sink::Stream { transport, .. } => Some(transport),
            Sink::Collect(_) => None,
        }
    }

    /// The merged message (collecting mode), `None` when streaming.
    pub fn into_merged(self, id: &str, created: u64) -> Option<Value> {
        match self.sink {
            Sink::Collect(acc) => Some(acc.into_response(id, created, &self.usage)),
            Sink::Stream { .. } => None,
        }
    }
}

/// A transport that keeps every write, for tests and tools.
#[derive(Debug, Default)]
pub struct BufferTransport {
    /// Each flushed write, in order.
    pub writes: Vec<Vec<u8>>,
}

impl Transport for BufferTransport {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        self.writes.push(bytes.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn events(e: Emitter<BufferTransport>) -> Vec<String> {
        let Sink::Stream { transport, .. } = e.sink else {
            panic!("streaming emitter expected")
        };
        let all: Vec<u8> = transport.writes.concat();
        String::from_utf8(all)
            .unwrap()
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| s.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    fn delta(event: &str) -> Value {
        let v: Value = serde_json::from_str(event).unwrap();
        v["choices"][0]["delta"].clone()
    }

    #[test]
    fn indices_are_contiguous_and_rules_are_enforced() {
        let mut e = Emitter::streaming(SseEncoder::new("i", 1), BufferTransport::default());
        e.role();
        let s0 = e.open_stage("a", None);
        let s1 = e.open_stage("b", Some(s0));
        e.stage_attachment(s1, Attachment::default());
        e.stage_attachment(s1, Attachment::default());
        e.close_stage(s1, StageStatus::Completed);
        e.close_stage(s1, StageStatus::Failed); // ignored
        e.stage_content(s1, "late"); // ignored
        e.attachment(Attachment::default());
        e.attachment(Attachment::default());
        assert!(e.set_state(serde_json::json!({"a": 1})));
        assert!(!e.set_state(serde_json::json!({"b": 2})));
        block_on(e.finish_ok()).unwrap();
        let ev = events(e);
        let deltas: Vec<Value> = ev[..ev.len() - 2].iter().map(|s| delta(s)).collect();
        use serde_json::json;
        assert_eq!(
            deltas,
            vec![
                json!({"role":"assistant"}),
                json!({"custom_content":{"stages":[{"index":0,"name":"a","status":null}]}}),
                json!({"custom_content":{"stages":[{"index":1,"name":"b","status":null,"parent_stage_index":0}]}}),
                json!({"custom_content":{"stages":[{"index":1,"attachments":[{"index":0}],"status":null}]}}),
                json!({"custom_content":{"stages":[{"index":1,"attachments":[{"index":1}],"status":null}]}}),
                json!({"custom_content":{"stages":[{"index":1,"status":"completed"}]}}),
                json!({"custom_content":{"attachments":[{"index":0}]}}),
                json!({"custom_content":{"attachments":[{"index":1}]}}),
                json!({"custom_content":{"state":{"a":1}}}),
                json!({"custom_content":{"stages":[{"index":0,"status":"completed"}]}}),
            ]
        );
        let stop: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev.last().unwrap(), "[DONE]");
    }

    #[test]
    fn failure_closes_children_first_then_error_then_done() {
        let mut e = Emitter::streaming(SseEncoder::new("i", 1), BufferTransport::default());
        e.role();
        let s0 = e.open_stage("parent", None);
        e.open_stage("child", Some(s0));
        block_on(e.finish_err(&CoordError::MissingApiKey)).unwrap();
        let ev = events(e);
        assert_eq!(
            delta(&ev[3]),
            serde_json::json!({"custom_content":{"stages":[{"index":1,"status":"failed"}]}})
        );
        assert_eq!(
            delta(&ev[4]),
            serde_json::json!({"custom_content":{"stages":[{"index":0,"status":"failed"}]}})
        );
        let stop: Value = serde_json::from_str(&ev[5]).unwrap();
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        let err: Value = serde_json::from_str(&ev[6]).unwrap();
        assert_eq!(err["error"]["code"], "400");
        assert_eq!(ev[7], "[DONE]");
        assert_eq!(ev.len(), 8);
    }

    #[test]
    fn flush_writes_once_per_batch() {
        let mut e = Emitter::streaming(SseEncoder::new("i", 1), BufferTransport::default());
        e.role();
        e.open_stage("a", None);
        block_on(e.flush()).unwrap();
        block_on(e.flush()).unwrap();
        e.content("x");
        block_on(e.finish_ok()).unwrap();
        let Sink::Stream { transport, .. } = e.sink else {
            unreachable!()
        };
        assert_eq!(transport.writes.len(), 2);
    }

    #[test]
    fn a_heartbeat_is_a_comment_of_its_own_only_inside_a_started_stream() {
        let mut e = Emitter::streaming(SseEncoder::new("i", 1), BufferTransport::default());
        e.role();
        block_on(e.heartbeat()).unwrap(); // nothing went out yet: not the first bytes
        assert_eq!(e.writes(), 0);
        block_on(e.flush()).unwrap();
        e.content("x"); // buffered: the comment does not wait for it
        block_on(e.heartbeat()).unwrap();
        assert_eq!(e.writes(), 2);
        block_on(e.finish_ok()).unwrap();
        block_on(e.heartbeat()).unwrap(); // after [DONE]: nothing
        assert_eq!(e.writes(), 3);
        let Sink::Stream { transport, .. } = e.sink else {
            unreachable!()
        };
        assert_eq!(transport.writes[1], b": heartbeat\n\n");
        assert!(transport.writes[0].starts_with(b"data: "));
        assert!(transport.writes[2].ends_with(b"data: [DONE]\n\n"));

        let mut collecting: Emitter<BufferTransport> = Emitter::collecting();
        collecting.role();
        collecting.content("x");
        block_on(collecting.heartbeat()).unwrap();
        assert!(!collecting.is_streaming());
        assert_eq!(collecting.writes(), 0);
    }
}

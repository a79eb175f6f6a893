//! The driver: the one place that owns the response being written (the
//! emitter) and every upstream call, and runs agent sessions into it, several
//! at once.
//!
//! Sessions (`agents/`) are state machines that never do I/O; the driver asks
//! each for its next step, makes the call it asks for (failover, breaker,
//! timeouts and the call's log line are `calls/`), and feeds it what comes
//! back: the head, every SSE event (decoded here, bounded in size) or the
//! whole body (bounded), the end, the failure. What a session says goes
//! straight into the emitter under the session's root stage, with the stage
//! and attachment indices of one response, and within the bounds of
//! `limits.rs`. The sessions' calls are polled together, round-robin, so their
//! chunks interleave in the response as they arrive. Before it waits for any
//! upstream the driver flushes the response; when upstream data keeps arriving
//! without a pause it still flushes once `FLUSH_BYTES` are buffered. While it
//! waits, a stream that nothing was written to for `HEARTBEAT_INTERVAL_MS`
//! gets a heartbeat comment, so that proxies do not cut it. A session
//! that fails has its open stages closed as failed and does not disturb the
//! others. Which sessions run when is the [`Scheduler`]'s business.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{FutureExt, StreamExt};
use serde_json::Value;

use crate::agents::{LocalStage, Read, Say, Session, Step};
use crate::calls::{self, Blame, CallFailed, Caller, Opened, Outcome};
use crate::client::Host;
use crate::config::registry::AgentSpec;
use crate::context::{ClientGone, FlowError};
use crate::error::{redact, CoordError, Service, UpstreamFault};
use crate::flow::emitter::{Emitter, StageId, Transport};
use crate::limits::{
    state_budget, FLUSH_BYTES, MAX_AGENT_OUTPUT_BYTES, MAX_ANSWER_BYTES, MAX_ATTACHMENTS_PER_AGENT,
    MAX_ATTACHMENT_BYTES_PER_AGENT, MAX_INLINE_ATTACHMENT_BYTES, MAX_STAGES_PER_AGENT,
};
use crate::memory::pending::{self, Pending};
use crate::memory::state::sign;
use crate::memory::{self, Memory};
use crate::wire::response::{Attachment, StageStatus};
use crate::wire::sse::SseDecoder;
use crate::wire::usage::Usage;

/// Where a task's text goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A stage opened for the task (closed when it ends: completed or failed).
    NewStage(String),
    /// A stage that is already open (left open when the task ends).
    Existing(StageId),
    /// The answer itself (the synthesis).
    Choice,
}

/// A session to run, and where its text goes.
pub struct Task<'a> {
    /// The scheduler's id for it.
    pub id: usize,
    /// Where its text goes.
    pub root: Root,
    /// The session.
    pub session: Box<dyn Session + 'a>,
}

impl std::fmt::Debug for Task<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What the scheduler has for the driver.
#[derive(Debug)]
pub enum Ready<'a> {
    /// Start this task.
    Start(Task<'a>),
    /// Show a stage for a task that will not run, saying why (closed as failed).
    Skip {
        /// The scheduler's id for it.
        id: usize,
        /// The stage's name.
        stage: String,
        /// Why it does not run.
        reason: String,
    },
}

/// How a task ended.
#[derive(Debug)]
pub struct Ended {
    /// The scheduler's id for it.
    pub id: usize,
    /// Its answer text, or why it failed.
    pub result: Result<String, CoordError>,
    /// What it left for later turns (also when it failed).
    pub memory: Vec<Memory>,
}

/// Decides which tasks run, and when.
pub trait Scheduler<'a> {
    /// Tasks that may start now; `running` tasks are under way. Asked at the
    /// start and after every task ends.
    fn ready(&mut self, running: usize) -> Vec<Ready<'a>>;
    /// A task ended.
    fn ended(&mut self, ended: Ended);
}

/// A scheduler of one task.
pub struct Single<'a> {
    task: Option<Task<'a>>,
    /// How it ended.
    pub ended: Option<Ended>,
}

impl std::fmt::Debug for Single<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Single")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<'a> Single<'a> {
    /// Runs `session` with its text into `root`.
    pub fn new(root: Root, session: Box<dyn Session + 'a>) -> Single<'a> {
        Single {
            task: Some(Task {
                id: 0,
                root,
                session,
            }),
            ended: None,
        }
    }

    /// The task's result (`Err` with a plain message if it never ran).
    pub fn result(&mut self) -> Result<String, CoordError> {
        match self.ended.as_mut() {
            Some(e) => std::mem::replace(&mut e.result, Ok(String::new())),
            None => Err(CoordError::Internal("the task did not run".to_owned())),
        }
    }
}

impl<'a> Scheduler<'a> for Single<'a> {
    fn ready(&mut self, _running: usize) -> Vec<Ready<'a>> {
        self.task.take().map(Ready::Start).into_iter().collect()
    }

    fn ended(&mut self, ended: Ended) {
        self.ended = Some(ended);
    }
}

/// A call looking for a target that accepts it.
type Opening<'a, H> = Pin<Box<dyn Future<Output = Result<Box<Opened<'a, H>>, CallFailed>> + 'a>>;

/// What is under way for a session.
enum Io<'a, H: Host> {
    /// Waiting for its next step.
    Idle,
    /// A call looking for a target that accepts it.
    Opening(Opening<'a, H>, Read),
    /// A committed call whose body is being read.
    Reading(Box<Opened<'a, H>>, Reader),
}

enum Reader {
    /// Events. With `Some`, the body's end is the stream's end (no `[DONE]`),
    /// and the bytes so far are kept until the first event (bounded): a body
    /// without any event (an error answered as one JSON document) is handed
    /// to the session whole.
    Events(SseDecoder, Option<ToEnd>),
    Whole(Vec<u8>),
}

/// A stream that ends with its body: what came before its first event.
#[derive(Default)]
struct ToEnd {
    eventless: Vec<u8>,
    seen_event: bool,
}

/// How much of a stream without events yet is kept (see [`Reader::Events`]).
const MAX_EVENTLESS_BYTES: usize = 64 * 1024;

/// What happened on a session's call.
enum IoEvent<'a, H: Host> {
    Opened(Result<Box<Opened<'a, H>>, CallFailed>),
    Chunk(Option<Result<Vec<u8>, calls::BodyError>>),
}

/// Everything about a running session except the session itself.
struct SlotState {
    id: usize,
    root: Option<StageId>,
    own_root: bool,
    stages: Vec<StageId>,
    stage_count: usize,
    attachment_count: usize,
    attachment_bytes: usize,
    output_bytes: usize,
    memory: Vec<Memory>,
    blames: Vec<Blame>,
    violation: Option<CoordError>,
    /// Who the current call is for, and the target it went to (for errors).
    site: (Service, String),
}

struct Slot<'a, H: Host> {
    session: Box<dyn Session + 'a>,
    io: Io<'a, H>,
    state: SlotState,
}

/// The [`Say`] of one session, over the emitter.
struct SlotSay<'s, T> {
    out: &'s mut Emitter<T>,
    state: &'s mut SlotState,
    secret: &'s str,
}

impl<T: Transport> SlotSay<'_, T> {
    fn stage(&self, stage: LocalStage) -> Option<StageId> {
        self.state.stages.get(stage.0).copied()
    }

    fn over(&mut self, what: String) {
        if self.state.violation.is_none() {
            let (service, target) = self.state.site.clone();
            self.state.violation = Some(CoordError::Upstream {
                service,
                target,
                fault: UpstreamFault::Oversized(what),
            });
        }
    }

    /// Counts `bytes` of output; false past the bound.
    fn spend(&mut self, bytes: usize) -> bool {
        self.state.output_bytes = self.state.output_bytes.saturating_add(bytes);
        if self.state.output_bytes > MAX_AGENT_OUTPUT_BYTES {
            self.over(format!(
                "its output is larger than {MAX_AGENT_OUTPUT_BYTES} bytes"
            ));
            return false;
        }
        true
    }

    /// Whether `attachment` may be emitted: past the count the session ends
    /// with an error; past a byte budget the attachment is left out and the
    /// session's root says so.
    fn attachment_allowed(&mut self, attachment: &Attachment) -> bool {
        self.state.attachment_count += 1;
        if self.state.attachment_count > MAX_ATTACHMENTS_PER_AGENT {
            self.over(format!("more than {MAX_ATTACHMENTS_PER_AGENT} attachments"));
            return false;
        }
        let inline = attachment.data.as_deref().map_or(0, str::len);
        let bytes = attachment.byte_len();
        let reason = if inline > MAX_INLINE_ATTACHMENT_BYTES {
            format!(
                "it has {inline} bytes inline, and an inline attachment may have at most {MAX_INLINE_ATTACHMENT_BYTES}"
            )
        } else if self.state.attachment_bytes.saturating_add(bytes) > MAX_ATTACHMENT_BYTES_PER_AGENT
        {
            format!(
                "the agent's attachments may have at most {MAX_ATTACHMENT_BYTES_PER_AGENT} bytes together"
            )
        } else {
            self.state.attachment_bytes += bytes;
            return true;
        };
        let note = format!(
            "_Attachment \"{}\" was left out: {reason}._\n\n",
            attachment_name(attachment)
        );
        self.text(&note);
        false
    }
}

/// How a note names an attachment: its title, else its type, cut at 100 bytes.
fn attachment_name(attachment: &Attachment) -> String {
    const MAX: usize = 100;
    let name = [&attachment.title, &attachment.kind]
        .into_iter()
        .find_map(|f| f.as_deref().filter(|t| !t.is_empty()))
        .unwrap_or("attachment");
    if name.len() <= MAX {
        return name.to_owned();
    }
    let mut cut = MAX;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &name[..cut])
}

impl<T: Transport> Say for SlotSay<'_, T> {
    fn text(&mut self, text: &str) {
        if !self.spend(text.len()) {
            return;
        }
        match self.state.root {
            Some(root) => self.out.stage_content(root, text),
            None => self.out.content(text),
        }
    }

    fn open_stage(&mut self, name: &str, parent: Option<LocalStage>) -> LocalStage {
        let local = LocalStage(self.state.stages.len());
        self.state.stage_count += 1;
        if self.state.stage_count > MAX_STAGES_PER_AGENT {
            self.over(format!("more than {MAX_STAGES_PER_AGENT} stages"));
            return LocalStage(usize::MAX);
        }
        if !self.spend(name.len()) {
            return LocalStage(usize::MAX);
        }
        let parent = parent.and_then(|p| self.stage(p)).or(self.state.root);
        let id = self.out.open_stage(name, parent);
        self.state.stages.push(id);
        local
    }

    fn is_open(&self, stage: LocalStage) -> bool {
        self.stage(stage).is_some_and(|s| self.out.is_open(s))
    }

    fn stage_name(&mut self, stage: LocalStage, name: &str) {
        if let Some(id) = self.stage(stage) {
            if self.spend(name.len()) {
                self.out.stage_name(id, name);
            }
        }
    }

    fn stage_content(&mut self, stage: LocalStage, text: &str) {
        if let Some(id) = self.stage(stage) {
            if self.spend(text.len()) {
                self.out.stage_content(id, text);
            }
        }
    }

    fn stage_attachment(&mut self, stage: LocalStage, attachment: Attachment) {
        if let Some(id) = self.stage(stage) {
            if self.attachment_allowed(&attachment) {
                self.out.stage_attachment(id, attachment);
            }
        }
    }

    fn close_stage(&mut self, stage: LocalStage, status: StageStatus) {
        if let Some(id) = self.stage(stage) {
            self.out.close_stage(id, status);
        }
    }

    fn attachment(&mut self, attachment: Attachment) -> bool {
        let allowed = self.attachment_allowed(&attachment);
        if allowed {
            self.out.attachment(attachment);
        }
        allowed
    }

    fn remember(&mut self, memory: Memory) {
        self.state.memory.push(memory);
    }

    fn usage(&mut self, model: &str, usage: Usage) {
        self.out.add_usage(model, usage);
    }

    fn blame(&mut self, blame: Blame) {
        self.state.blames.push(blame);
    }

    fn error(&self, fault: UpstreamFault) -> CoordError {
        let (service, target) = self.state.site.clone();
        CoordError::Upstream {
            service,
            target,
            fault,
        }
    }

    fn redact(&self, text: &str) -> String {
        redact(text, self.secret)
    }
}

/// Polls every session's call once, round-robin from `cursor`.
fn poll_calls<'a, H: Host>(
    slots: &mut [Slot<'a, H>],
    cursor: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<(usize, IoEvent<'a, H>)> {
    let n = slots.len();
    for k in 0..n {
        let i = (*cursor + k) % n;
        let event = match &mut slots[i].io {
            Io::Idle => continue,
            Io::Opening(opening, _) => match opening.as_mut().poll(cx) {
                Poll::Ready(r) => IoEvent::Opened(r),
                Poll::Pending => continue,
            },
            Io::Reading(opened, _) => match opened.body.poll_next_unpin(cx) {
                Poll::Ready(item) => IoEvent::Chunk(item),
                Poll::Pending => continue,
            },
        };
        *cursor = (i + 1) % n;
        return Poll::Ready((i, event));
    }
    Poll::Pending
}

/// Runs sessions into one response (see the module docs). It is the only
/// writer of the response: its opening, every session's output, the state,
/// and its end.
pub struct Driver<'a, 'o, H: Host, T> {
    caller: Caller<'a, H>,
    out: &'o mut Emitter<T>,
    /// When the request's deadline passes (the host's monotonic ms).
    deadline_ms: u64,
    /// How often a waiting stream checks whether it needs a heartbeat (`None`:
    /// never, and always when the answer is collected).
    heartbeat_ms: Option<u64>,
}

/// What the one timer of a run rings for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alarm {
    /// The request's deadline.
    Deadline,
    /// A heartbeat tick, which comes before the deadline.
    Heartbeat,
}

/// How a response ended.
#[derive(Debug)]
pub enum Ending {
    /// Completed: the stop chunk and `[DONE]` were written.
    Ok,
    /// The client went away.
    ClientGone,
    /// The flow failed: open stages closed as failed, the stop chunk, the
    /// error event and `[DONE]` were written (in a stream).
    Failed(CoordError),
}

impl<H: Host, T> std::fmt::Debug for Driver<'_, '_, H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// What handling an event did to a session.
enum Handled {
    Continue,
    Failed(CoordError),
}

impl<'a, 'o, H: Host, T: Transport> Driver<'a, 'o, H, T> {
    /// A driver writing into `out`.
    pub fn new(caller: Caller<'a, H>, out: &'o mut Emitter<T>) -> Driver<'a, 'o, H, T> {
        let ctx = caller.ctx;
        let deadline_ms = ctx.start_ms.saturating_add(ctx.config.request_deadline_ms);
        let heartbeat_ms =
            Some(ctx.config.heartbeat_interval_ms).filter(|ms| *ms > 0 && out.is_streaming());
        Driver {
            caller,
            out,
            deadline_ms,
            heartbeat_ms,
        }
    }

    /// Opens the response: the role chunk (sent with whatever the first
    /// session says before its first call).
    pub fn begin(&mut self) {
        self.out.role();
    }

    /// Writes the one state of the response: what the agents left, in order,
    /// within the state budget (`limits::state_budget`), signed.
    pub fn write_state(&mut self, memories: &[(&AgentSpec, Memory)]) {
        let ctx = self.caller.ctx;
        let budget = state_budget(ctx.config.max_request_bytes);
        if let Some(state) = memory::compose(memories.iter().map(|(a, m)| (*a, m)), budget) {
            self.out.set_state(sign(state, &ctx.state_trust()));
        }
    }

    /// Ends a turn that asks the user: `question` is the answer, `form` its
    /// buttons, and the state keeps what is `pending` beside what the agents
    /// of the turn left (`memories`, trimmed to the room left), signed. Fails,
    /// writing nothing, when what is pending does not fit the state budget.
    pub fn ask(
        &mut self,
        question: &str,
        form: Option<Value>,
        pending: &Pending,
        memories: &[(&AgentSpec, Memory)],
    ) -> Result<(), CoordError> {
        let ctx = self.caller.ctx;
        let budget = state_budget(ctx.config.max_request_bytes);
        let pending_bytes = serde_json::to_vec(pending).map_or(usize::MAX, |b| b.len());
        let room = budget.saturating_sub(pending_bytes.saturating_add(32));
        let kept = memory::compose(memories.iter().map(|(a, m)| (*a, m)), room);
        let state = sign(pending::attach(kept, pending), &ctx.state_trust());
        let size = serde_json::to_vec(&state).map_or(usize::MAX, |b| b.len());
        if size > budget {
            return Err(CoordError::Internal(format!(
                "what waits for the user's answer takes {size} bytes, and the state may have at most {budget}"
            )));
        }
        self.out.content(question);
        if let Some(form) = form {
            self.out.set_form_schema(form);
        }
        self.out.set_state(state);
        Ok(())
    }

    /// The value the host's store keeps under `key` (none when empty).
    pub fn stored(&self, key: &str) -> Option<Vec<u8>> {
        self.caller.host.store().get(key).filter(|v| !v.is_empty())
    }

    /// Keeps `value` under `key` in the host's store (empty: forgotten).
    pub fn store(&self, key: &str, value: &[u8]) {
        self.caller.host.store().set(key, value);
    }

    /// Writes answer text that no session produced (a cancellation).
    pub fn answer(&mut self, text: &str) {
        self.out.content(text);
    }

    /// A stage written and closed at once, completed.
    pub fn done_stage(&mut self, name: &str, text: &str) {
        let stage = self.out.open_stage(name, None);
        self.out.stage_content(stage, text);
        self.out.close_stage(stage, StageStatus::Completed);
    }

    /// Ends the response after the flow ended with `result`: on success open
    /// stages completed, the stop chunk and `[DONE]`; on failure every open
    /// stage closed as failed, the stop chunk, one error event and `[DONE]`
    /// (a collected answer only closes its stages).
    pub async fn finish(&mut self, result: Result<(), FlowError>) -> Ending {
        match result {
            Ok(()) => match self.out.finish_ok().await {
                Ok(()) => Ending::Ok,
                Err(ClientGone) => Ending::ClientGone,
            },
            Err(FlowError::ClientGone) => Ending::ClientGone,
            Err(FlowError::Failed(e)) => {
                let _ = self.out.finish_err(&e).await;
                Ending::Failed(e)
            }
        }
    }

    /// Runs the scheduler's tasks until none is left. Fails only when the
    /// client went away or the request's deadline passed (every call under
    /// way is then dropped; at the deadline every running session also ends
    /// as failed, its stages closed).
    pub async fn run(&mut self, scheduler: &mut dyn Scheduler<'a>) -> Result<(), FlowError> {
        let mut slots: Vec<Slot<'a, H>> = Vec::new();
        let mut cursor = 0;
        // One timer serves every wait of the run: armed at the first wait
        // (most runs of one call wait at once) and again only when it rang
        // for a heartbeat tick, never once per wait.
        let mut alarm: Option<(H::Sleep, Alarm)> = None;
        // The client's writes when the alarm was armed: a heartbeat tick that
        // finds no write since writes the comment.
        let mut writes_at_arming = 0;
        loop {
            for ready in scheduler.ready(slots.len()) {
                match ready {
                    Ready::Start(task) => slots.push(self.start(task)),
                    Ready::Skip { id, stage, reason } => {
                        let s = self.out.open_stage(&stage, None);
                        self.out.stage_content(s, &reason);
                        self.out.close_stage(s, StageStatus::Failed);
                        scheduler.ended(Ended {
                            id,
                            result: Err(CoordError::BadRequest(reason)),
                            memory: Vec::new(),
                        });
                    }
                }
            }
            // Let every idle session take its next step; collect those that end.
            let mut any_ended = false;
            let mut any_started = false;
            let mut i = 0;
            while i < slots.len() {
                if matches!(slots[i].io, Io::Idle) {
                    match self.step(&mut slots[i]) {
                        Some(result) => {
                            let slot = slots.swap_remove(i);
                            self.end(slot, result, scheduler);
                            any_ended = true;
                            continue;
                        }
                        None => any_started = true,
                    }
                }
                i += 1;
            }
            if any_ended {
                continue;
            }
            if slots.is_empty() {
                return Ok(());
            }
            // What was said so far reaches the client before a new call goes
            // out (the first byte never waits on the coordination call).
            if any_started && self.flush_or_cancel(&mut slots).await.is_err() {
                return Err(FlowError::ClientGone);
            }
            // Upstream data that is already there is handled without a write
            // per chunk, until enough is buffered.
            let ready = if self.out.buffered() < FLUSH_BYTES {
                futures::future::poll_fn(|cx| poll_calls(&mut slots, &mut cursor, cx))
                    .now_or_never()
            } else {
                None
            };
            let (index, event) = match ready {
                Some(ready) => ready,
                None => {
                    if self.flush_or_cancel(&mut slots).await.is_err() {
                        return Err(FlowError::ClientGone);
                    }
                    loop {
                        let (timer, _) = alarm.get_or_insert_with(|| {
                            writes_at_arming = self.out.writes();
                            self.arm()
                        });
                        if let Some(ready) = Self::wait(&mut slots, &mut cursor, timer).await {
                            break ready;
                        }
                        if let Some((_, Alarm::Deadline)) = alarm.take() {
                            return Err(self.stop_at_deadline(slots, scheduler));
                        }
                        if self.out.writes() == writes_at_arming
                            && self.out.heartbeat().await.is_err()
                        {
                            Self::cancel(&mut slots);
                            return Err(FlowError::ClientGone);
                        }
                    }
                }
            };
            if let Handled::Failed(error) = self.handle(&mut slots[index], event) {
                let mut slot = slots.swap_remove(index);
                if let Io::Reading(opened, _) = std::mem::replace(&mut slot.io, Io::Idle) {
                    opened.fail(&error);
                }
                self.end(slot, Err(error), scheduler);
            }
        }
    }

    /// The run's timer: the request's deadline, or the next heartbeat tick
    /// when one is due before it.
    fn arm(&self) -> (H::Sleep, Alarm) {
        let host = self.caller.host;
        let left = self.deadline_ms.saturating_sub(host.now_ms());
        match self.heartbeat_ms {
            Some(every) if every < left => (host.sleep(every), Alarm::Heartbeat),
            _ => (host.sleep(left), Alarm::Deadline),
        }
    }

    /// Waits for the next thing to happen on any session's call, until the
    /// run's `alarm` rings (`None`). One timer serves every wait of a run (see
    /// [`Driver::run`]).
    async fn wait(
        slots: &mut [Slot<'a, H>],
        cursor: &mut usize,
        alarm: &mut H::Sleep,
    ) -> Option<(usize, IoEvent<'a, H>)> {
        let events = futures::future::poll_fn(|cx| poll_calls(slots, cursor, cx));
        match futures::future::select(std::pin::pin!(events), alarm).await {
            futures::future::Either::Left((ready, _)) => Some(ready),
            futures::future::Either::Right(_) => None,
        }
    }

    /// The request's deadline passed: every call under way is dropped (not a
    /// failure of its upstream: the time was the request's), every running
    /// session ends as failed with its stages closed, and the flow fails.
    fn stop_at_deadline(
        &mut self,
        mut slots: Vec<Slot<'a, H>>,
        scheduler: &mut dyn Scheduler<'a>,
    ) -> FlowError {
        let error = CoordError::DeadlineExceeded(self.caller.ctx.config.request_deadline_ms);
        for mut slot in slots.drain(..) {
            if let Io::Reading(opened, _) = std::mem::replace(&mut slot.io, Io::Idle) {
                opened.finish(Outcome::Failed("deadline", false));
            }
            self.end(slot, Err(error.clone()), scheduler);
        }
        FlowError::Failed(error)
    }

    /// Flushes the response; when the client is gone, ends every call under
    /// way (their log lines say so) and drops them.
    async fn flush_or_cancel(&mut self, slots: &mut Vec<Slot<'a, H>>) -> Result<(), ClientGone> {
        if self.out.flush().await.is_ok() {
            return Ok(());
        }
        Self::cancel(slots);
        Err(ClientGone)
    }

    /// The client is gone: ends every call under way (their log lines say
    /// so) and drops them.
    fn cancel(slots: &mut Vec<Slot<'a, H>>) {
        for slot in slots.drain(..) {
            if let Io::Reading(opened, _) = slot.io {
                opened.finish(Outcome::ClientGone);
            }
        }
    }

    fn start(&mut self, task: Task<'a>) -> Slot<'a, H> {
        let (root, own_root) = match &task.root {
            Root::NewStage(name) => (Some(self.out.open_stage(name, None)), true),
            Root::Existing(stage) => (Some(*stage), false),
            Root::Choice => (None, false),
        };
        Slot {
            session: task.session,
            io: Io::Idle,
            state: SlotState {
                id: task.id,
                root,
                own_root,
                stages: Vec::new(),
                stage_count: 0,
                attachment_count: 0,
                attachment_bytes: 0,
                output_bytes: 0,
                memory: Vec::new(),
                blames: Vec::new(),
                violation: None,
                site: (Service::llm(), String::new()),
            },
        }
    }

    fn say<'s>(
        out: &'s mut Emitter<T>,
        state: &'s mut SlotState,
        secret: &'s str,
    ) -> SlotSay<'s, T> {
        SlotSay { out, state, secret }
    }

    /// Applies what a callback left behind: held-back breaker failures, and a
    /// bound it went past.
    fn settle(&self, state: &mut SlotState) -> Option<CoordError> {
        for b in state.blames.drain(..) {
            calls::blame(self.caller, &b);
        }
        state.violation.take()
    }

    /// Asks an idle session for its next step: starts its call, or returns how
    /// it ended.
    fn step(&mut self, slot: &mut Slot<'a, H>) -> Option<Result<String, CoordError>> {
        let secret = self.caller.ctx.api_key.as_str();
        let step = slot
            .session
            .step(&mut Self::say(self.out, &mut slot.state, secret));
        if let Some(e) = self.settle(&mut slot.state) {
            return Some(Err(e));
        }
        match step {
            Step::Call(spec, read) => {
                slot.state.site = (
                    spec.service.clone(),
                    spec.targets
                        .first()
                        .map(|t| t.label.clone())
                        .unwrap_or_default(),
                );
                let caller = self.caller;
                let opening = async move { calls::open(caller, spec).await.map(Box::new) };
                slot.io = Io::Opening(Box::pin(opening), read);
                None
            }
            Step::Finish(result) => Some(result),
        }
    }

    fn handle(&mut self, slot: &mut Slot<'a, H>, event: IoEvent<'a, H>) -> Handled {
        let secret = self.caller.ctx.api_key.as_str();
        let read = match std::mem::replace(&mut slot.io, Io::Idle) {
            Io::Opening(_, read) => Some(read),
            io => {
                slot.io = io;
                None
            }
        };
        match event {
            IoEvent::Opened(Ok(opened)) => {
                let target = opened.answered_by().clone();
                slot.state.site = (opened.spec.service.clone(), target.label.clone());
                if let (Some(note), Some(root)) = (opened.failover_note(), slot.state.root) {
                    self.out.stage_content(root, &note);
                }
                let mut say = Self::say(self.out, &mut slot.state, secret);
                slot.session.on_open(&target, &mut say);
                let reader = match read {
                    Some(Read::Whole) => Reader::Whole(Vec::new()),
                    Some(Read::EventsToEnd) => {
                        Reader::Events(SseDecoder::default(), Some(ToEnd::default()))
                    }
                    _ => Reader::Events(SseDecoder::default(), None),
                };
                slot.io = Io::Reading(opened, reader);
                self.checked(slot)
            }
            IoEvent::Opened(Err(failed)) => {
                if let CoordError::Upstream {
                    service, target, ..
                } = &failed.error
                {
                    slot.state.site = (service.clone(), target.clone());
                }
                let mut say = Self::say(self.out, &mut slot.state, secret);
                slot.session.on_failed(failed, &mut say);
                self.checked(slot)
            }
            IoEvent::Chunk(item) => self.chunk(slot, item),
        }
    }

    fn checked(&self, slot: &mut Slot<'a, H>) -> Handled {
        match self.settle(&mut slot.state) {
            Some(e) => Handled::Failed(e),
            None => Handled::Continue,
        }
    }

    fn chunk(
        &mut self,
        slot: &mut Slot<'a, H>,
        item: Option<Result<Vec<u8>, calls::BodyError>>,
    ) -> Handled {
        let secret = self.caller.ctx.api_key.as_str();
        let Io::Reading(opened, reader) = &mut slot.io else {
            return Handled::Continue;
        };
        match (item, reader) {
            (Some(Err(e)), _) => Handled::Failed(opened.error(e.fault(secret))),
            (Some(Ok(bytes)), Reader::Whole(body)) => {
                if body.len() + bytes.len() > MAX_ANSWER_BYTES {
                    return Handled::Failed(opened.error(UpstreamFault::Oversized(format!(
                        "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                    ))));
                }
                body.extend_from_slice(&bytes);
                Handled::Continue
            }
            (None, Reader::Whole(body)) => {
                let body = std::mem::take(body);
                if let Io::Reading(opened, _) = std::mem::replace(&mut slot.io, Io::Idle) {
                    opened.finish(Outcome::Ok);
                }
                let mut say = Self::say(self.out, &mut slot.state, secret);
                if let Err(e) = slot.session.on_body(&body, &mut say) {
                    return Handled::Failed(e);
                }
                self.checked(slot)
            }
            (None, Reader::Events(_, Some(to_end))) => {
                let eventless = std::mem::take(&mut to_end.eventless);
                if let Io::Reading(opened, _) = std::mem::replace(&mut slot.io, Io::Idle) {
                    opened.finish(Outcome::Ok);
                }
                let mut say = Self::say(self.out, &mut slot.state, secret);
                if !eventless.is_empty() {
                    if let Err(e) = slot.session.on_body(&eventless, &mut say) {
                        return Handled::Failed(e);
                    }
                }
                if let Err(e) = slot.session.on_done(&mut say) {
                    return Handled::Failed(e);
                }
                self.checked(slot)
            }
            (None, Reader::Events(_, None)) => Handled::Failed(opened.error(
                UpstreamFault::Truncated("the stream ended without [DONE]".to_owned()),
            )),
            (Some(Ok(bytes)), Reader::Events(decoder, until_end)) => {
                let to_end = until_end.is_some();
                let mut events = Vec::new();
                if let Err(e) = decoder.push(&bytes, &mut events) {
                    return Handled::Failed(opened.error(match e {
                        crate::wire::sse::SseError::EventTooLarge(_) => {
                            UpstreamFault::Oversized(e.to_string())
                        }
                        crate::wire::sse::SseError::InvalidUtf8 => {
                            UpstreamFault::malformed(e.to_string())
                        }
                    }));
                }
                if let Some(state) = until_end {
                    state.seen_event |= !events.is_empty();
                    if state.seen_event {
                        state.eventless = Vec::new();
                    } else if state.eventless.len() + bytes.len() <= MAX_EVENTLESS_BYTES {
                        state.eventless.extend_from_slice(&bytes);
                    }
                }
                for data in &events {
                    if data == "[DONE]" && !to_end {
                        if let Io::Reading(opened, _) = std::mem::replace(&mut slot.io, Io::Idle) {
                            opened.finish(Outcome::Ok);
                        }
                        let mut say = Self::say(self.out, &mut slot.state, secret);
                        if let Err(e) = slot.session.on_done(&mut say) {
                            return Handled::Failed(e);
                        }
                        return self.checked(slot);
                    }
                    if data.is_empty() {
                        // A keep-alive.
                        continue;
                    }
                    let mut say = Self::say(self.out, &mut slot.state, secret);
                    if let Err(e) = slot.session.on_event(data, &mut say) {
                        return Handled::Failed(e);
                    }
                    if let Handled::Failed(e) = self.checked(slot) {
                        return Handled::Failed(e);
                    }
                }
                Handled::Continue
            }
        }
    }

    /// Ends a session: closes what it left open (completed on success, failed
    /// on failure, children first) and tells the scheduler.
    fn end(
        &mut self,
        mut slot: Slot<'a, H>,
        result: Result<String, CoordError>,
        scheduler: &mut dyn Scheduler<'a>,
    ) {
        let _ = self.settle(&mut slot.state);
        let status = if result.is_ok() {
            StageStatus::Completed
        } else {
            StageStatus::Failed
        };
        for id in slot.state.stages.iter().rev() {
            self.out.close_stage(*id, status);
        }
        if slot.state.own_root {
            if let Some(root) = slot.state.root {
                self.out.close_stage(root, status);
            }
        }
        scheduler.ended(Ended {
            id: slot.state.id,
            result,
            memory: slot.state.memory,
        });
    }
}

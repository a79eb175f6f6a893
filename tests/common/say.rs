//! Driving a session by hand, with no driver: a [`Say`] that records every
//! call a session makes, in order, as a readable list ([`Said`]), and a
//! [`Harness`] that feeds a session scripted inputs (the head's target,
//! events, a whole body, the end of a stream, a failure) and takes its steps.
//!
//! A [`CallFailed`] is made by [`failure`] (no breaker failure held back) or
//! by [`fail_call`], which has `calls::open` itself fail the call on the
//! in-process fakes, so that a held-back [`Blame`] is the one the calls layer
//! really hands a session (`Blame` can only be made there).

use mas_coordinator::agents::{LocalStage, Read, Say, Session, Step};
use mas_coordinator::calls::{self, Blame, CallFailed, CallSpec, Caller};
use mas_coordinator::client::Target;
use mas_coordinator::context::RequestContext;
use mas_coordinator::error::{redact, CoordError, Service, UpstreamFault};
use mas_coordinator::memory::Memory;
use mas_coordinator::wire::response::{Attachment, StageStatus};
use mas_coordinator::wire::usage::Usage;
use serde_json::Value;

use super::fakes::{FakeClient, Reply};

/// One thing a session said, as the driver would receive it. Stages are the
/// session's own numbers (`LocalStage.0`), given in the order they open.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    /// Text into the session's root.
    Text(String),
    /// Stage `stage` opened under `parent` (`None`: under the root).
    OpenStage {
        stage: usize,
        name: String,
        parent: Option<usize>,
    },
    /// A piece of a stage's name.
    StageName { stage: usize, name: String },
    /// A piece of a stage's content.
    StageContent { stage: usize, text: String },
    /// An attachment of a stage.
    StageAttachment {
        stage: usize,
        attachment: Attachment,
    },
    /// A stage closed (also one that was closed already: what was said).
    CloseStage { stage: usize, status: StageStatus },
    /// An attachment of the choice.
    Attachment(Attachment),
    /// Memory for later turns.
    Remember(Memory),
    /// What a call to `model` used.
    Usage { model: String, usage: Usage },
    /// A held-back breaker failure, recorded.
    Blame(Blame),
}

/// A [`Say`] that records everything. Its errors name the current call's
/// site as the driver's do: the first target of the call asked for, then the
/// target that accepted it, or the one a failure names.
#[derive(Debug)]
pub struct Recorder {
    said: Vec<Said>,
    /// Whether each stage opened so far is still open.
    open: Vec<bool>,
    /// The service and target label of the current call.
    pub site: (Service, String),
    secret: String,
    /// Titles of choice attachments answered as left out (as the driver
    /// answers past a byte budget); they are still recorded as said.
    pub left_out: Vec<String>,
}

impl Recorder {
    /// A recorder redacting `secret` (the request's key).
    pub fn new(secret: &str) -> Recorder {
        Recorder {
            said: Vec::new(),
            open: Vec::new(),
            site: (Service::llm(), String::new()),
            secret: secret.to_owned(),
            left_out: Vec::new(),
        }
    }

    /// What was said since the last call, in order.
    pub fn take(&mut self) -> Vec<Said> {
        std::mem::take(&mut self.said)
    }
}

impl Say for Recorder {
    fn text(&mut self, text: &str) {
        self.said.push(Said::Text(text.to_owned()));
    }

    fn open_stage(&mut self, name: &str, parent: Option<LocalStage>) -> LocalStage {
        let stage = self.open.len();
        self.open.push(true);
        self.said.push(Said::OpenStage {
            stage,
            name: name.to_owned(),
            parent: parent.map(|p| p.0),
        });
        LocalStage(stage)
    }

    fn is_open(&self, stage: LocalStage) -> bool {
        self.open.get(stage.0).copied().unwrap_or(false)
    }

    fn stage_name(&mut self, stage: LocalStage, name: &str) {
        self.said.push(Said::StageName {
            stage: stage.0,
            name: name.to_owned(),
        });
    }

    fn stage_content(&mut self, stage: LocalStage, text: &str) {
        self.said.push(Said::StageContent {
            stage: stage.0,
            text: text.to_owned(),
        });
    }

    fn stage_attachment(&mut self, stage: LocalStage, attachment: Attachment) {
        self.said.push(Said::StageAttachment {
            stage: stage.0,
            attachment,
        });
    }

    fn close_stage(&mut self, stage: LocalStage, status: StageStatus) {
        if let Some(open) = self.open.get_mut(stage.0) {
            *open = false;
        }
        self.said.push(Said::CloseStage {
            stage: stage.0,
            status,
        });
    }

    fn attachment(&mut self, attachment: Attachment) -> bool {
        let shown = !attachment
            .title
            .as_ref()
            .is_some_and(|t| self.left_out.contains(t));
        self.said.push(Said::Attachment(attachment));
        shown
    }

    fn remember(&mut self, memory: Memory) {
        self.said.push(Said::Remember(memory));
    }

    fn usage(&mut self, model: &str, usage: Usage) {
        self.said.push(Said::Usage {
            model: model.to_owned(),
            usage,
        });
    }

    fn blame(&mut self, blame: Blame) {
        self.said.push(Said::Blame(blame));
    }

    fn error(&self, fault: UpstreamFault) -> CoordError {
        let (service, target) = self.site.clone();
        CoordError::Upstream {
            service,
            target,
            fault,
        }
    }

    fn redact(&self, text: &str) -> String {
        redact(text, &self.secret)
    }
}

/// A session driven by hand (see the module docs).
pub struct Harness<'a> {
    session: Box<dyn Session + 'a>,
    /// What the session said.
    pub say: Recorder,
    service: Service,
}

impl std::fmt::Debug for Harness<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("say", &self.say)
            .finish_non_exhaustive()
    }
}

impl<'a> Harness<'a> {
    /// Drives `session` of the request `ctx` (whose key is redacted).
    pub fn new(ctx: &RequestContext, session: Box<dyn Session + 'a>) -> Harness<'a> {
        Harness {
            session,
            say: Recorder::new(&ctx.api_key),
            service: Service::llm(),
        }
    }

    /// The session's next step.
    pub fn step(&mut self) -> Step {
        let step = self.session.step(&mut self.say);
        if let Step::Call(spec, _) = &step {
            self.service = spec.service.clone();
            let first = spec.targets.first().map(|t| t.label.clone());
            self.say.site = (spec.service.clone(), first.unwrap_or_default());
        }
        step
    }

    /// The call the session asks for next (panics if it finishes instead).
    pub fn call(&mut self) -> (CallSpec, Read) {
        match self.step() {
            Step::Call(spec, read) => (spec, read),
            Step::Finish(result) => panic!("expected a call, the session finished: {result:?}"),
        }
    }

    /// How the session ends (panics if it asks for a call instead).
    pub fn finish(&mut self) -> Result<String, CoordError> {
        match self.step() {
            Step::Finish(result) => result,
            Step::Call(spec, _) => panic!("expected the end, the session asked for {spec:?}"),
        }
    }

    /// The call was accepted by `target`.
    pub fn open(&mut self, target: &Target) {
        self.say.site = (self.service.clone(), target.label.clone());
        self.session.on_open(target, &mut self.say);
    }

    /// The call failed with `failed`.
    pub fn fail(&mut self, failed: CallFailed) {
        if let CoordError::Upstream {
            service, target, ..
        } = &failed.error
        {
            self.say.site = (service.clone(), target.clone());
        }
        self.session.on_failed(failed, &mut self.say);
    }

    /// One event of a streamed call.
    pub fn event(&mut self, data: &str) -> Result<(), CoordError> {
        self.session.on_event(data, &mut self.say)
    }

    /// One event of a streamed call, as JSON.
    pub fn event_json(&mut self, data: &Value) -> Result<(), CoordError> {
        self.event(&data.to_string())
    }

    /// The whole body of a call read whole.
    pub fn body(&mut self, body: &[u8]) -> Result<(), CoordError> {
        self.session.on_body(body, &mut self.say)
    }

    /// The stream ended with `[DONE]`.
    pub fn done(&mut self) -> Result<(), CoordError> {
        self.session.on_done(&mut self.say)
    }

    /// What the session said since the last call, in order.
    pub fn said(&mut self) -> Vec<Said> {
        self.say.take()
    }
}

/// A failure of a call to `target` of `service`, with no breaker failure
/// held back.
pub fn failure(service: Service, target: &str, fault: UpstreamFault) -> CallFailed {
    CallFailed {
        error: CoordError::Upstream {
            service,
            target: target.to_owned(),
            fault,
        },
        blame: None,
    }
}

/// How `calls::open` fails `spec` when every target it tries answers
/// `reply` (on the fakes: no network).
pub fn fail_call(ctx: &RequestContext, spec: &CallSpec, reply: &Reply) -> CallFailed {
    let host = FakeClient::new();
    for target in &spec.targets {
        let url = spec.request.build(target).url;
        let path = url.split('?').next().unwrap_or_default().to_owned();
        host.push(&path, reply.clone());
    }
    let caller = Caller { host: &host, ctx };
    match host.run(calls::open(caller, spec.clone())) {
        Ok(opened) => panic!("the call was accepted by {:?}", opened.answered_by()),
        Err(failed) => failed,
    }
}

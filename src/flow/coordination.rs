//! Step 1 as a session: the coordination call, read into the subtasks to run.
//!
//! A [`CoordinationSession`] is run by the driver like any agent: it makes the
//! non-streaming LLM call with the structured output of its mode (`routing.rs`
//! or `plan.rs`), writes what was decided into its stage (stage 0, or
//! "Coordination Request (round N)") through `Say`, and leaves the
//! [`Decision`] for the flow. In both modes the decision is a [`Plan`]: in
//! `route` mode a plan of one subtask (the routed agent, with its additional
//! instructions as the task), run by the same scheduler as every plan. A
//! re-planning round can also decide to stop, and says why in its stage.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use crate::agents::{Read, Say, Session, Step};
use crate::calls::{CallFailed, CallSpec, Replay, RequestTemplate};
use crate::client::Target;
use crate::config::registry::Registry;
use crate::config::CoordinationMode;
use crate::context::RequestContext;
use crate::error::{CoordError, Service, UpstreamFault};
use crate::flow::ask::AskUser;
use crate::flow::plan::{self, Finished, Plan, Subtask};
use crate::flow::routing;
use crate::wire::upstream::Completion;

/// Name of stage 0.
pub const COORDINATION_STAGE: &str = "Coordination Request";

/// The name of the stage of coordination round `round` (1 is stage 0).
pub fn stage_name(round: usize) -> String {
    if round == 1 {
        COORDINATION_STAGE.to_owned()
    } else {
        format!("{COORDINATION_STAGE} (round {round})")
    }
}

/// What a coordination round decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run these subtasks (numbered from 1 within the round).
    Run(Plan),
    /// Plan no further: the subtasks already done are all there is.
    Stop,
    /// Run nothing: ask the user this first (first round only).
    Ask(AskUser),
}

/// Where the flow finds a session's decision once the driver has run it.
pub type Decided = Rc<RefCell<Option<Decision>>>;

/// The non-streaming coordination call of `body` on the LLM deployments.
pub fn coordination_call(ctx: &RequestContext, body: Vec<u8>) -> CallSpec {
    CallSpec {
        service: Service::llm(),
        targets: ctx.config.llm_targets(),
        request: RequestTemplate::dial_chat(ctx, body),
        replay: Replay::Safe,
        defer_blame: false,
    }
}

/// One coordination round (see the module docs).
#[derive(Debug)]
pub struct CoordinationSession<'a> {
    ctx: &'a RequestContext,
    round: usize,
    call: Option<CallSpec>,
    deployment: String,
    outcome: Option<Result<String, CoordError>>,
    decided: Decided,
    /// The agent and description of every subtask done in earlier rounds.
    done: Vec<(String, String)>,
    /// Sentences the stage starts with.
    notes: String,
    /// The agents this request can use.
    registry: Cow<'a, Registry>,
}

impl<'a> CoordinationSession<'a> {
    /// Round `round` of the request's coordination; `done` are the subtasks
    /// finished in earlier rounds (their results go into a re-planning call).
    /// The decision is left in `decided`.
    pub fn new(
        ctx: &'a RequestContext,
        round: usize,
        done: &[Finished],
        decided: Decided,
    ) -> CoordinationSession<'a> {
        CoordinationSession::over(
            ctx,
            Cow::Borrowed(&ctx.config.registry),
            round,
            done,
            decided,
        )
    }

    /// The same over `registry`: the agents this request can use (the
    /// configured ones, less those whose discovery failed, with the
    /// descriptions discovery read; `flow/discovery.rs`).
    pub fn over(
        ctx: &'a RequestContext,
        registry: Cow<'a, Registry>,
        round: usize,
        done: &[Finished],
        decided: Decided,
    ) -> CoordinationSession<'a> {
        let body = match ctx.config.coordination_mode {
            CoordinationMode::Route => routing::request_body_for(ctx, &registry),
            CoordinationMode::Plan => {
                plan::request_body_for(ctx, &registry, if round > 1 { done } else { &[] })
            }
        };
        CoordinationSession {
            ctx,
            round,
            call: Some(coordination_call(ctx, body)),
            deployment: String::new(),
            outcome: None,
            decided,
            done: plan::work_of(done),
            notes: String::new(),
            registry,
        }
    }

    /// The same, its stage starting with `notes`.
    pub fn with_notes(mut self, notes: String) -> Self {
        self.notes = notes;
        self
    }

    /// Reads the answer: the decision, and the text of the round's stage.
    fn decide(&self, answer: &str) -> (Decision, String) {
        let config = &self.ctx.config;
        let registry = &self.registry;
        match config.coordination_mode {
            CoordinationMode::Route => {
                let routed = routing::parse_decision(Some(answer), registry);
                let text = routing::stage_text(&routed, registry);
                let decision = routed.decision;
                if let Some(ask) = decision.ask_user {
                    return (Decision::Ask(ask), text);
                }
                let plan = Plan {
                    subtasks: vec![Subtask {
                        task_id: 1,
                        // Instructions are the task; without them the agent is
                        // asked the user's message alone.
                        task_description: decision
                            .additional_instructions
                            .unwrap_or_else(|| self.ctx.request_text()),
                        agent_name: decision.agent_name,
                        depends_on: Vec::new(),
                    }],
                    replan: false,
                    ask_user: None,
                };
                (Decision::Run(plan), text)
            }
            CoordinationMode::Plan if self.round == 1 => {
                let request = self.ctx.request_text();
                let mut planned = plan::parse_plan(answer, registry, config.max_subtasks, &request);
                let text = plan::stage_text(&planned.notes, &planned.plan);
                match planned.plan.ask_user.take() {
                    Some(ask) => (Decision::Ask(ask), text),
                    None => (Decision::Run(planned.plan), text),
                }
            }
            CoordinationMode::Plan => {
                let stop = match plan::parse_replan(answer, registry, config.max_subtasks) {
                    Ok((plan, _)) if plan.subtasks.is_empty() => {
                        Err("_Nothing more to do._\n".to_owned())
                    }
                    Ok((plan, _)) if plan::only_repeats(&plan, &self.done) => Err(
                        "_The new plan only repeats subtasks already done, so planning stops here._\n"
                            .to_owned(),
                    ),
                    Ok(planned) => Ok(planned),
                    Err(reason) => Err(format!("_Planning stops here: {reason}._\n")),
                };
                match stop {
                    Ok((plan, notes)) => {
                        let text = plan::stage_text(&notes, &plan);
                        (Decision::Run(plan), text)
                    }
                    Err(why) => (Decision::Stop, why),
                }
            }
        }
    }
}

impl Session for CoordinationSession<'_> {
    fn step(&mut self, say: &mut dyn Say) -> Step {
        if let Some(spec) = self.call.take() {
            if !self.notes.is_empty() {
                say.text(&std::mem::take(&mut self.notes));
            }
            return Step::Call(spec, Read::Whole);
        }
        match self.outcome.take() {
            Some(Ok(answer)) => {
                let (decision, text) = self.decide(&answer);
                say.text(&text);
                *self.decided.borrow_mut() = Some(decision);
                Step::Finish(Ok(String::new()))
            }
            Some(Err(e)) => Step::Finish(Err(e)),
            None => Step::Finish(Err(CoordError::Internal(
                "the coordination call ended without an answer".to_owned(),
            ))),
        }
    }

    fn on_open(&mut self, target: &Target, _say: &mut dyn Say) {
        self.deployment = target.id.clone();
    }

    fn on_failed(&mut self, failed: CallFailed, _say: &mut dyn Say) {
        self.outcome = Some(Err(failed.error));
    }

    fn on_event(&mut self, _data: &str, _say: &mut dyn Say) -> Result<(), CoordError> {
        Ok(())
    }

    fn on_body(&mut self, body: &[u8], say: &mut dyn Say) -> Result<(), CoordError> {
        let completion: Completion = serde_json::from_slice(body).map_err(|_| {
            say.error(UpstreamFault::malformed(
                "the answer is not a chat completion",
            ))
        })?;
        let (text, usage) = completion.into_text_and_usage();
        if let Some(usage) = usage {
            say.usage(&self.deployment, usage);
        }
        self.outcome = Some(Ok(text));
        Ok(())
    }
}

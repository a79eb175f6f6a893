//! The flow of one request, in order: coordination, the agents, synthesis.
//!
//! [`coordinate`] keeps the order of the steps and nothing else: every step
//! is a session (`coordination.rs`, the agents' kinds, `synthesis.rs`) run by
//! the one [`Driver`], which alone writes the response. The role chunk and the
//! opening of stage 0 are flushed before the coordination call, so the
//! client's first byte never waits on the LLM. The state of the response (what
//! every agent left for later turns, `memory/`) is written once, when the
//! agents are done, on success and on failure alike.

pub mod ask;
pub mod coordination;
pub mod discovery;
pub mod driver;
pub mod emitter;
pub mod plan;
pub mod routing;
pub mod scheduler;
pub mod synthesis;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::client::Host;
use crate::config::registry::{AgentSpec, Registry};
use crate::config::CoordinationMode;
use crate::context::{FlowError, RequestContext};
use crate::error::CoordError;
use crate::flow::coordination::{stage_name, CoordinationSession, Decided, Decision};
use crate::flow::driver::{Driver, Root, Single};
use crate::flow::emitter::Transport;
use crate::flow::scheduler::PlanRun;
use crate::flow::synthesis::{SynthesisSession, SYNTHESIS_PROMPT};
use crate::memory::pending::{request_digest, Pending, Resume};
use crate::memory::Memory;
use crate::meter::{self, Phase};
use plan::{Finished, Outcome, Plan, PLAN_SYNTHESIS_PROMPT};

/// The heading of the application's own instructions in a system prompt.
pub const INSTRUCTIONS_HEADING: &str = "## Instructions of this assistant";

/// `prompt` followed by the application's `instructions` (`COORDINATION_PROMPT`,
/// `SYNTHESIS_PROMPT` or their application properties), under
/// [`INSTRUCTIONS_HEADING`]: they add to the built-in rules, which keep the
/// structured output and the agents' contract intact.
pub fn with_instructions<'p>(
    prompt: impl Into<Cow<'p, str>>,
    instructions: Option<&str>,
) -> Cow<'p, str> {
    let prompt = prompt.into();
    match instructions {
        Some(text) if !text.is_empty() => Cow::Owned(format!(
            "{}\n\n{INSTRUCTIONS_HEADING}\n{text}",
            prompt.trim_end()
        )),
        _ => prompt,
    }
}

/// Runs coordination, the agents and synthesis through `driver`. Does not
/// end the response: the caller does, by success or failure. The agents
/// called are added to `agents` as soon as they are known (for the log).
///
/// Rounds of coordination decide plans (in `route` mode one round, one plan
/// of one subtask), each run by [`PlanRun`]; re-planning goes on while a plan
/// asks for it (at most `MAX_PLAN_ROUNDS` rounds, never to repeat work already
/// done). Then the state is written, and one synthesis of every result
/// answers. The flow fails only when every subtask failed.
pub async fn coordinate<'a, H: Host, T: Transport>(
    ctx: &'a RequestContext,
    driver: &mut Driver<'a, '_, H, T>,
    agents: &mut Vec<String>,
) -> Result<(), FlowError> {
    let config = &ctx.config;
    let rounds = match config.coordination_mode {
        CoordinationMode::Route => 1,
        CoordinationMode::Plan => config.max_plan_rounds,
    };
    driver.begin();
    // How this turn goes on from what the last one left pending: a plan to
    // run without a coordination call (with stage 0's text), or a note.
    let (mut resumed, note) = match &ctx.resume {
        Resume::New => (None, None),
        Resume::Cancel => {
            driver.answer(ask::CANCELLED);
            return Ok(());
        }
        Resume::Run(plan) => match plan::approved(plan, &config.registry, config.max_subtasks) {
            Some(plan) => {
                let text = approved_text(&plan);
                (Some((plan, text)), None)
            }
            None => (None, Some(NOT_RUNNABLE)),
        },
        Resume::Untrusted => (None, Some(UNTRUSTED)),
        Resume::Agent(question) => match config.registry.get(&question.agent) {
            Some(agent) => {
                let plan = Plan {
                    subtasks: vec![plan::Subtask {
                        task_id: 1,
                        agent_name: agent.name.clone(),
                        task_description: ctx.request_text(),
                        depends_on: Vec::new(),
                    }],
                    replan: false,
                    ask_user: None,
                };
                let text = format!(
                    "_{} asked a question in the previous turn: this message is the answer, so it \
goes to {} without a coordination call._\n\n{}",
                    capitalized(&agent.display_name),
                    agent.name,
                    plan::stage_text(&[], &plan)
                );
                (Some((plan, text)), None)
            }
            None => (None, None),
        },
    };
    let skip_approval = resumed.is_some();
    // What discovering agents publish, read before the coordination call
    // (not needed when no coordination call is made).
    meter::set_phase(Phase::Coordination);
    let discovery = match resumed {
        None => discovery::discover(ctx, driver).await?,
        Some(_) => None,
    };
    let registry: Cow<'a, Registry> = match &discovery {
        Some(d) => Cow::Owned(d.registry.clone()),
        None => Cow::Borrowed(&config.registry),
    };
    let mut notes = note.unwrap_or_default().to_owned();
    if let Some(d) = &discovery {
        notes.push_str(&d.notes);
    }
    let mut finished: Vec<Finished> = Vec::new();
    let mut memories: Vec<(u32, &AgentSpec, Memory)> = Vec::new();
    let mut first_error: Option<CoordError> = None;
    let mut conversations = HashMap::new();
    for round in 1..=rounds {
        meter::set_phase(Phase::Coordination);
        let decision = match resumed.take() {
            Some((plan, text)) => {
                driver.done_stage(&stage_name(round), &text);
                Some(Decision::Run(plan))
            }
            None => {
                let decided = Decided::default();
                let session = CoordinationSession::over(
                    ctx,
                    registry.clone(),
                    round,
                    &finished,
                    decided.clone(),
                )
                .with_notes(std::mem::take(&mut notes));
                let mut coordination =
                    Single::new(Root::NewStage(stage_name(round)), Box::new(session));
                driver.run(&mut coordination).await?;
                coordination.result()?;
                let decision = decided.borrow_mut().take();
                decision
            }
        };
        let mut plan = match decision {
            Some(Decision::Run(plan)) => plan,
            Some(Decision::Ask(question)) => {
                let pending = Pending::Question {
                    question: question.question.clone(),
                    options: question.options.clone(),
                };
                driver.ask(&question.question, question.form(), &pending, &[])?;
                return Ok(());
            }
            Some(Decision::Stop) | None => break,
        };
        if round == 1
            && !skip_approval
            && ask::needs_approval(&plan, config.plan_approval, &config.registry)
        {
            let request = ctx.request.messages.last().map(request_digest);
            let pending = Pending::Plan {
                plan: serde_json::to_value(&plan).unwrap_or_default(),
                request: request.unwrap_or_default(),
            };
            driver.ask(
                &ask::approval_question(&plan),
                Some(ask::approval_form()),
                &pending,
                &[],
            )?;
            return Ok(());
        }
        renumber(
            &mut plan,
            u32::try_from(finished.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        for s in &plan.subtasks {
            if !agents.contains(&s.agent_name) {
                agents.push(s.agent_name.clone());
            }
        }
        meter::set_phase(Phase::Agents);
        let mut run = PlanRun::new(ctx, &plan, std::mem::take(&mut conversations));
        if let Some(d) = &discovery {
            run.discovered = d.found.clone();
        }
        let result = driver.run(&mut run).await;
        conversations = std::mem::take(&mut run.conversations);
        if let Some(d) = &discovery {
            discovery::forget_failed(d, &run.finished, driver);
        }
        finished.append(&mut run.finished);
        memories.append(&mut run.memories);
        if first_error.is_none() {
            first_error = run.first_error.take();
        }
        result?;
        // An agent asked the user: the turn ends with its question, no synthesis.
        if let Some(question) = run.asked.take() {
            memories.sort_by_key(|(id, _, _)| *id);
            let memories: Vec<(&AgentSpec, Memory)> =
                memories.into_iter().map(|(_, a, m)| (a, m)).collect();
            let text = question.question.clone();
            driver.ask(&text, None, &Pending::Agent(question), &memories)?;
            return Ok(());
        }
        if !plan.replan {
            break;
        }
    }
    finished.sort_by_key(|f| f.id);
    memories.sort_by_key(|(id, _, _)| *id);
    let memories: Vec<(&AgentSpec, Memory)> =
        memories.into_iter().map(|(_, a, m)| (a, m)).collect();
    driver.write_state(&memories);
    if finished
        .iter()
        .all(|f| matches!(f.outcome, Outcome::Failed(_)))
    {
        return Err(FlowError::Failed(first_error.unwrap_or_else(|| {
            CoordError::Internal("the plan had no subtask that could run".to_owned())
        })));
    }
    meter::set_phase(Phase::Synthesis);
    let (prompt, context) = match finished.as_slice() {
        // One subtask: the seed's synthesis of one answer.
        [only] => match &only.outcome {
            Outcome::Done(answer) => (SYNTHESIS_PROMPT, answer.clone()),
            Outcome::Failed(_) => return Ok(()),
        },
        all => (PLAN_SYNTHESIS_PROMPT, plan::sections(all)),
    };
    let mut synthesis = Single::new(
        Root::Choice,
        Box::new(SynthesisSession::new(ctx, prompt, &context)),
    );
    driver.run(&mut synthesis).await?;
    synthesis.result()?;
    Ok(())
}

/// Stage 0's first sentence when the user approved a plan that can no longer
/// run as it was (an agent it names is gone from the registry).
const NOT_RUNNABLE: &str = "_The approved plan cannot run as it was proposed (the agents have \
changed), so the request is planned again._\n\n";

/// Stage 0's first sentence when the user answered a plan waiting for
/// approval that cannot be trusted.
const UNTRUSTED: &str = "_A plan was waiting for approval, but the state it came in cannot be \
trusted (it is not signed by this coordinator, was changed, belongs to another conversation, is \
too old, or its request was edited since), so it was not run; the message is planned as a new \
request._\n\n";

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Stage 0's text for a plan the user approved.
fn approved_text(plan: &Plan) -> String {
    let mut text = String::from(
        "_The plan approved in the previous turn runs as proposed, without a new coordination call._\n\n",
    );
    text.push_str(&plan::stage_text(&[], plan));
    text
}

/// Numbers a round's subtasks from `first` on, in plan order (their
/// dependencies follow), so that every subtask of the turn has its own number.
fn renumber(plan: &mut Plan, first: u32) {
    let map: Vec<(u32, u32)> = plan
        .subtasks
        .iter()
        .zip(first..)
        .map(|(s, n)| (s.task_id, n))
        .collect();
    let to = |id: u32| {
        map.iter()
            .find(|(from, _)| *from == id)
            .map_or(id, |(_, n)| *n)
    };
    for s in &mut plan.subtasks {
        s.task_id = to(s.task_id);
        s.depends_on = s.depends_on.iter().map(|d| to(*d)).collect();
    }
}

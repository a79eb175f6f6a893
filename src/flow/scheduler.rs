//! Running one round of a plan: which subtask starts when, as a
//! [`Scheduler`] for the driver.
//!
//! A subtask starts as soon as every subtask it depends on has finished, at
//! most `MAX_PARALLEL` at once; independent subtasks run concurrently, each
//! streaming into its own stage. Subtasks of one UMS-kind agent run one after
//! another (in plan order when several are ready) on one conversation: the one
//! in the history, or the one the first of them created. A subtask that fails does not stop its
//! siblings; the subtasks that depend on it are skipped, and their stage says
//! why. Each agent is asked the user's message followed by its task
//! description and the results of the subtasks it depends on.

use std::collections::HashMap;

use crate::agents::kinds::{self, Assignment, Discovered};
use crate::agents::ums::find_conversation;
use crate::config::registry::AgentSpec;
use crate::context::RequestContext;
use crate::error::CoordError;
use crate::flow::driver::{Ended, Ready, Root, Scheduler, Task};
use crate::flow::plan::{task_text, Finished, Outcome, Plan, Subtask};
use crate::memory::pending::AgentQuestion;
use crate::memory::Conversation;
use crate::memory::Memory;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Running,
    Ok,
    Failed,
}

#[derive(Debug)]
struct Slot<'a> {
    subtask: Subtask,
    agent: &'a AgentSpec,
    status: Status,
}

/// One round of a plan, run by the driver.
#[derive(Debug)]
pub struct PlanRun<'a> {
    ctx: &'a RequestContext,
    request: String,
    slots: Vec<Slot<'a>>,
    single: bool,
    max_parallel: usize,
    /// The UMS conversation of each UMS-kind agent in this turn (id, endpoint
    /// tag), handed from round to round.
    pub conversations: HashMap<String, Conversation>,
    /// How each subtask ended, in the order they ended.
    pub finished: Vec<Finished>,
    /// What the agents left for later turns, with the number of the subtask.
    pub memories: Vec<(u32, &'a AgentSpec, Memory)>,
    /// The first failure (reported when every subtask failed).
    pub first_error: Option<CoordError>,
    /// The first question an agent asked the user (the turn ends with it).
    pub asked: Option<AgentQuestion>,
    /// What discovery read about the agents (`flow/discovery.rs`), by name.
    pub discovered: HashMap<String, Discovered>,
}

impl<'a> PlanRun<'a> {
    /// A run of `plan`, whose task ids are the turn's numbers of its subtasks
    /// and whose agents are all registered.
    pub fn new(
        ctx: &'a RequestContext,
        plan: &Plan,
        conversations: HashMap<String, Conversation>,
    ) -> PlanRun<'a> {
        let registry = &ctx.config.registry;
        let slots = plan
            .subtasks
            .iter()
            .map(|s| Slot {
                subtask: s.clone(),
                agent: registry
                    .get(&s.agent_name)
                    .unwrap_or_else(|| registry.fallback()),
                status: Status::Pending,
            })
            .collect();
        PlanRun {
            ctx,
            request: ctx.request_text(),
            slots,
            single: plan.subtasks.len() == 1,
            max_parallel: ctx.config.max_parallel,
            conversations,
            finished: Vec::new(),
            memories: Vec::new(),
            first_error: None,
            asked: None,
            discovered: HashMap::new(),
        }
    }

    fn stage_name(&self, slot: &Slot<'_>) -> String {
        if self.single {
            slot.agent.stage_name()
        } else {
            format!(
                "{} (task {})",
                slot.agent.stage_name(),
                slot.subtask.task_id
            )
        }
    }

    fn slot_of(&self, task_id: u32) -> Option<&Slot<'a>> {
        self.slots.iter().find(|s| s.subtask.task_id == task_id)
    }

    fn finished_of(&self, task_id: u32) -> Option<&Finished> {
        self.finished.iter().find(|f| f.id == task_id)
    }

    /// Whether a UMS-kind subtask must wait because another one of its agent
    /// is using the conversation (a conversation is one thread).
    fn waits_for_its_conversation(&self, index: usize) -> bool {
        let agent = self.slots[index].agent;
        kinds::is_serial(agent)
            && self
                .slots
                .iter()
                .any(|s| s.agent.name == agent.name && s.status == Status::Running)
    }

    fn skip(&mut self, index: usize, failed_dependency: u32) -> Ready<'a> {
        let slot = &self.slots[index];
        let dep_agent = self
            .slot_of(failed_dependency)
            .map_or("?", |s| s.agent.name.as_str());
        let reason = format!(
            "_Skipped: this task needs the result of task {failed_dependency} ({dep_agent}), which failed._\n\n"
        );
        let finished = Finished {
            id: slot.subtask.task_id,
            agent: slot.agent.name.clone(),
            description: slot.subtask.task_description.clone(),
            outcome: Outcome::Failed(format!(
                "not done: it needed the result of task {failed_dependency}, which failed"
            )),
        };
        let stage = self.stage_name(slot);
        self.slots[index].status = Status::Failed;
        self.finished.push(finished);
        Ready::Skip {
            id: index,
            stage,
            reason,
        }
    }
}

impl<'a> PlanRun<'a> {
    /// A subtask that can never run, and why.
    fn unschedulable(&mut self, index: usize, why: &str) -> Ready<'a> {
        let slot = &self.slots[index];
        let finished = Finished {
            id: slot.subtask.task_id,
            agent: slot.agent.name.clone(),
            description: slot.subtask.task_description.clone(),
            outcome: Outcome::Failed(format!("not done: {why}")),
        };
        let stage = self.stage_name(slot);
        self.slots[index].status = Status::Failed;
        self.finished.push(finished);
        Ready::Skip {
            id: index,
            stage,
            reason: format!("_Skipped: {why}._\n\n"),
        }
    }
}

impl<'a> Scheduler<'a> for PlanRun<'a> {
    fn ready(&mut self, running: usize) -> Vec<Ready<'a>> {
        let mut out = Vec::new();
        let mut running = running;
        // Skips can cascade; starts are bounded by MAX_PARALLEL.
        let mut changed = true;
        while changed {
            changed = false;
            for index in 0..self.slots.len() {
                if self.slots[index].status != Status::Pending {
                    continue;
                }
                let deps = self.slots[index].subtask.depends_on.clone();
                let statuses: Vec<(u32, Option<Status>)> = deps
                    .iter()
                    .map(|d| (*d, self.slot_of(*d).map(|s| s.status)))
                    .collect();
                if let Some((failed, _)) = statuses.iter().find(|(_, s)| *s == Some(Status::Failed))
                {
                    out.push(self.skip(index, *failed));
                    changed = true;
                    continue;
                }
                let deps_done = statuses
                    .iter()
                    .all(|(_, s)| matches!(s, Some(Status::Ok) | None));
                if !deps_done
                    || running >= self.max_parallel
                    || self.waits_for_its_conversation(index)
                {
                    continue;
                }
                let slot = &self.slots[index];
                let dependencies: Vec<&Finished> =
                    deps.iter().filter_map(|d| self.finished_of(*d)).collect();
                let text = task_text(&slot.subtask.task_description, &self.request, &dependencies);
                let agent = slot.agent;
                // Only agents that keep a conversation have one to continue.
                let conversation = kinds::is_serial(agent)
                    .then(|| {
                        self.conversations
                            .get(&agent.name)
                            .cloned()
                            .or_else(|| find_conversation(self.ctx, agent))
                    })
                    .flatten();
                let stage = self.stage_name(slot);
                let assignment = Assignment {
                    ctx: self.ctx,
                    agent,
                    task: text,
                    conversation,
                    discovered: self.discovered.get(&agent.name).cloned(),
                };
                match kinds::session(assignment) {
                    Ok(session) => out.push(Ready::Start(Task {
                        id: index,
                        root: Root::NewStage(stage),
                        session,
                    })),
                    Err(reason) => {
                        out.push(self.unschedulable(index, &reason));
                        changed = true;
                        continue;
                    }
                }
                self.slots[index].status = Status::Running;
                running += 1;
                changed = true;
            }
        }
        // Nothing runs and nothing can start: whatever is left can never run
        // (the plan's checks rule this out; this keeps it from being lost).
        if out.is_empty() && running == 0 {
            for index in 0..self.slots.len() {
                if self.slots[index].status == Status::Pending {
                    out.push(self.unschedulable(index, "the tasks it depends on could not run"));
                }
            }
        }
        out
    }

    fn ended(&mut self, ended: Ended) {
        let Some(slot) = self.slots.get_mut(ended.id) else {
            return;
        };
        if slot.status == Status::Failed {
            // A skipped subtask: already recorded.
            return;
        }
        let agent = slot.agent;
        for memory in ended.memory {
            if let Memory::Asked(question) = memory {
                self.asked.get_or_insert(question);
                continue;
            }
            if let Memory::Conversation { id, endpoint } = &memory {
                self.conversations
                    .insert(agent.name.clone(), (id.clone(), Some(endpoint.clone())));
            }
            self.memories.push((slot.subtask.task_id, agent, memory));
        }
        let outcome = match ended.result {
            Ok(text) => {
                slot.status = Status::Ok;
                Outcome::Done(text)
            }
            Err(e) => {
                slot.status = Status::Failed;
                let why = e.display_message();
                self.first_error.get_or_insert(e);
                Outcome::Failed(why)
            }
        };
        self.finished.push(Finished {
            id: slot.subtask.task_id,
            agent: agent.name.clone(),
            description: slot.subtask.task_description.clone(),
            outcome,
        });
    }
}

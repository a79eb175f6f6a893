//! The schedulers driven by hand through their `Scheduler` trait, as the
//! driver drives them (`ready(running)` at the start and after every end,
//! `ended(..)` for every task that ends or is skipped), with plans built by
//! hand: `PlanRun`'s parallelism bound, dependencies, skips and their reasons,
//! serial agents sharing one conversation; `Single`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::HashMap;

use common::fakes::UMS;
use common::flow::{ask, config_with, context_with};
use common::say::Harness;
use mas_coordinator::calls::CallSpec;
use mas_coordinator::client::Method;
use mas_coordinator::config::registry::{AgentSpec, Registry, StateSlot};
use mas_coordinator::context::RequestContext;
use mas_coordinator::error::{CoordError, Service, UpstreamFault};
use mas_coordinator::flow::driver::{Ended, Ready, Root, Scheduler, Single, Task};
use mas_coordinator::flow::plan::{Finished, Outcome, Plan, Subtask};
use mas_coordinator::flow::scheduler::PlanRun;
use mas_coordinator::flow::synthesis::{SynthesisSession, SYNTHESIS_PROMPT};
use mas_coordinator::memory::{endpoint_tag, Exchange, Memory};
use serde_json::{json, Value};

const REQUEST: &str = "Help me with Ada";

/// What the scheduler handed out, without the sessions.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Start {
        id: usize,
        root: Root,
    },
    Skip {
        id: usize,
        stage: String,
        reason: String,
    },
}

fn start(id: usize, stage: &str) -> Got {
    Got::Start {
        id,
        root: Root::NewStage(stage.to_owned()),
    }
}

fn skip(id: usize, stage: &str, reason: &str) -> Got {
    Got::Skip {
        id,
        stage: stage.to_owned(),
        reason: reason.to_owned(),
    }
}

/// What `ready` handed out, and the tasks to start.
fn ready<'a>(scheduler: &mut dyn Scheduler<'a>, running: usize) -> (Vec<Got>, Vec<Task<'a>>) {
    let mut got = Vec::new();
    let mut tasks = Vec::new();
    for r in scheduler.ready(running) {
        match r {
            Ready::Start(task) => {
                got.push(Got::Start {
                    id: task.id,
                    root: task.root.clone(),
                });
                tasks.push(task);
            }
            Ready::Skip { id, stage, reason } => got.push(Got::Skip { id, stage, reason }),
        }
    }
    (got, tasks)
}

/// The first call of a started task's session.
fn first_call(ctx: &RequestContext, task: Task<'_>) -> CallSpec {
    Harness::new(ctx, task.session).call().0
}

/// The text of the last message of a DIAL agent's call.
fn asked(spec: &CallSpec) -> String {
    let body: Value = serde_json::from_slice(&spec.request.body).unwrap();
    body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn plan(subtasks: &[(u32, &str, &str, &[u32])]) -> Plan {
    Plan {
        subtasks: subtasks
            .iter()
            .map(|(id, agent, description, deps)| Subtask {
                task_id: *id,
                agent_name: (*agent).to_owned(),
                task_description: (*description).to_owned(),
                depends_on: deps.to_vec(),
            })
            .collect(),
        replan: false,
        ask_user: None,
    }
}

fn ok(id: usize, text: &str) -> Ended {
    Ended {
        id,
        result: Ok(text.to_owned()),
        memory: Vec::new(),
    }
}

fn finished(id: u32, agent: &str, description: &str, outcome: Outcome) -> Finished {
    Finished {
        id,
        agent: agent.to_owned(),
        description: description.to_owned(),
        outcome,
    }
}

fn done(text: &str) -> Outcome {
    Outcome::Done(text.to_owned())
}

fn failed(why: &str) -> Outcome {
    Outcome::Failed(why.to_owned())
}

fn ctx_with(extra: &[(&str, &str)]) -> RequestContext {
    context_with(config_with(extra), ask(REQUEST), None)
}

#[test]
fn independent_subtasks_start_together_up_to_max_parallel() {
    let ctx = ctx_with(&[("MAX_PARALLEL", "2")]);
    let plan = plan(&[
        (1, "GPA", "Weather in Paris", &[]),
        (2, "GPA", "Weather in Rome", &[]),
        (3, "GPA", "Weather in Oslo", &[]),
    ]);
    let mut run = PlanRun::new(&ctx, &plan, HashMap::new());
    let (got, tasks) = ready(&mut run, 0);
    assert_eq!(
        got,
        [
            start(0, "Call GPA Agent (task 1)"),
            start(1, "Call GPA Agent (task 2)")
        ]
    );
    let asked_of: Vec<String> = tasks
        .into_iter()
        .map(|t| asked(&first_call(&ctx, t)))
        .collect();
    assert_eq!(
        asked_of,
        [
            format!("{REQUEST}\n\nWeather in Paris"),
            format!("{REQUEST}\n\nWeather in Rome")
        ]
    );
    assert_eq!(ready(&mut run, 2).0, [], "two are running: the bound");

    run.ended(ok(1, "Rome: +20."));
    assert_eq!(
        run.finished,
        [finished(2, "GPA", "Weather in Rome", done("Rome: +20."))]
    );
    assert_eq!(ready(&mut run, 1).0, [start(2, "Call GPA Agent (task 3)")]);
    assert_eq!(ready(&mut run, 2).0, []);
    run.ended(ok(0, "Paris: +12."));
    run.ended(ok(2, "Oslo: -3."));
    assert_eq!(ready(&mut run, 0).0, [], "nothing is left");
    assert_eq!(
        run.finished,
        [
            finished(2, "GPA", "Weather in Rome", done("Rome: +20.")),
            finished(1, "GPA", "Weather in Paris", done("Paris: +12.")),
            finished(3, "GPA", "Weather in Oslo", done("Oslo: -3.")),
        ]
    );
    assert_eq!(run.first_error, None);
}

#[test]
fn a_dependent_starts_after_its_dependency_with_its_result() {
    let ctx = ctx_with(&[]);
    let plan = plan(&[
        (1, "GPA", "Find Ada", &[]),
        (2, "GPA", "Find news about Ada", &[1]),
    ]);
    let mut run = PlanRun::new(&ctx, &plan, HashMap::new());
    assert_eq!(ready(&mut run, 0).0, [start(0, "Call GPA Agent (task 1)")]);
    assert_eq!(ready(&mut run, 1).0, [], "task 2 waits for task 1");
    run.ended(ok(0, "Ada is a mathematician."));
    let (got, mut tasks) = ready(&mut run, 0);
    assert_eq!(got, [start(1, "Call GPA Agent (task 2)")]);
    assert_eq!(
        asked(&first_call(&ctx, tasks.remove(0))),
        format!(
            "{REQUEST}\n\nFind news about Ada\n\n{}\n\n```text\n\
             ### Task 1 (GPA): Find Ada\nAda is a mathematician.\n```\n",
            mas_coordinator::flow::plan::RESULTS_HEADING
        )
    );
}

fn gpa_failure() -> CoordError {
    CoordError::Upstream {
        service: Service {
            name: "GPA".to_owned(),
            display: "the General Purpose Agent".to_owned(),
        },
        target: "general-purpose-agent".to_owned(),
        fault: UpstreamFault::Status(500, String::new()),
    }
}

#[test]
fn dependents_of_a_failed_subtask_are_skipped_with_the_reason_and_siblings_go_on() {
    let ctx = ctx_with(&[]);
    // Task 2 needs task 3, which needs task 1: listed before what it needs.
    let plan = plan(&[
        (1, "GPA", "a", &[]),
        (2, "GPA", "b", &[3]),
        (3, "GPA", "c", &[1]),
        (4, "GPA", "d", &[]),
    ]);
    let mut run = PlanRun::new(&ctx, &plan, HashMap::new());
    assert_eq!(
        ready(&mut run, 0).0,
        [
            start(0, "Call GPA Agent (task 1)"),
            start(3, "Call GPA Agent (task 4)")
        ]
    );
    run.ended(Ended {
        id: 0,
        result: Err(gpa_failure()),
        memory: Vec::new(),
    });
    // The skip cascades: task 3 needs task 1; task 2 needs task 3, which is
    // now failed too.
    let (got, tasks) = ready(&mut run, 1);
    assert!(tasks.is_empty());
    assert_eq!(
        got,
        [
            skip(
                2,
                "Call GPA Agent (task 3)",
                "_Skipped: this task needs the result of task 1 (GPA), which failed._\n\n"
            ),
            skip(
                1,
                "Call GPA Agent (task 2)",
                "_Skipped: this task needs the result of task 3 (GPA), which failed._\n\n"
            ),
        ]
    );
    // The driver reports each skip as ended; that changes nothing.
    for (id, reason) in [(2, "three"), (1, "two")] {
        run.ended(Ended {
            id,
            result: Err(CoordError::BadRequest(reason.to_owned())),
            memory: Vec::new(),
        });
    }
    let exchange = Memory::Exchange(Exchange {
        asked: Some(format!("{REQUEST}\n\nd")),
        answer: "d done".to_owned(),
        attachments: Vec::new(),
        state: None,
    });
    run.ended(Ended {
        id: 3,
        result: Ok("d done".to_owned()),
        memory: vec![exchange.clone()],
    });
    assert_eq!(ready(&mut run, 0).0, []);
    assert_eq!(
        run.finished,
        [
            finished(
                1,
                "GPA",
                "a",
                failed(
                    "The General Purpose Agent failed (HTTP 500). Please try again in a moment."
                )
            ),
            finished(
                3,
                "GPA",
                "c",
                failed("not done: it needed the result of task 1, which failed")
            ),
            finished(
                2,
                "GPA",
                "b",
                failed("not done: it needed the result of task 3, which failed")
            ),
            finished(4, "GPA", "d", done("d done")),
        ]
    );
    assert_eq!(run.first_error, Some(gpa_failure()));
    let memories: Vec<(u32, &str, &Memory)> = run
        .memories
        .iter()
        .map(|(id, agent, m)| (*id, agent.name.as_str(), m))
        .collect();
    assert_eq!(memories, [(4, "GPA", &exchange)]);
}

#[test]
fn subtasks_that_can_never_run_are_skipped_rather_than_lost() {
    // A cycle (the plan's checks rule it out; the scheduler still ends).
    let ctx = ctx_with(&[]);
    let cycle = plan(&[(1, "GPA", "a", &[2]), (2, "GPA", "b", &[1])]);
    let mut run = PlanRun::new(&ctx, &cycle, HashMap::new());
    let why = "_Skipped: the tasks it depends on could not run._\n\n";
    assert_eq!(
        ready(&mut run, 0).0,
        [
            skip(0, "Call GPA Agent (task 1)", why),
            skip(1, "Call GPA Agent (task 2)", why)
        ]
    );
    let not_done = failed("not done: the tasks it depends on could not run");
    assert_eq!(
        run.finished,
        [
            finished(1, "GPA", "a", not_done.clone()),
            finished(2, "GPA", "b", not_done)
        ]
    );

    // An agent of no known kind (a registry built by hand).
    let mut ctx = ctx_with(&[]);
    ctx.config.registry = Registry::new(vec![AgentSpec {
        name: "X".to_owned(),
        kind: "grpc",
        targets: Vec::new(),
        description: "x".to_owned(),
        display_name: "the X agent".to_owned(),
        slot: StateSlot::Agents,
        confirm: false,
        headers: Vec::new(),
    }]);
    let mut run = PlanRun::new(&ctx, &plan(&[(1, "X", "x it", &[])]), HashMap::new());
    assert_eq!(
        ready(&mut run, 0).0,
        [skip(
            0,
            "Call X Agent",
            "_Skipped: agent X has no known kind (\"grpc\")._\n\n"
        )]
    );
    assert_eq!(
        run.finished,
        [finished(
            1,
            "X",
            "x it",
            failed("not done: agent X has no known kind (\"grpc\")")
        )]
    );
    assert_eq!(run.first_error, None);
}

/// The chat of a UMS subtask: its conversation's path and targets.
fn chat_route(spec: &CallSpec) -> (Method, &str, Vec<&str>) {
    (
        spec.request.method,
        spec.request.url_after.as_str(),
        spec.targets.iter().map(|t| t.id.as_str()).collect(),
    )
}

fn ums_message(spec: &CallSpec) -> Value {
    serde_json::from_slice::<Value>(&spec.request.body).unwrap()["message"]["content"].clone()
}

#[test]
fn subtasks_of_a_serial_agent_run_one_after_the_other_on_one_conversation() {
    let ctx = ctx_with(&[]);
    let plan = plan(&[
        (1, "UMS", "Add Ada", &[]),
        (2, "UMS", "Show Ada", &[]),
        (3, "GPA", "Weather", &[]),
    ]);
    let mut run = PlanRun::new(&ctx, &plan, HashMap::new());
    let (got, mut tasks) = ready(&mut run, 0);
    assert_eq!(
        got,
        [
            start(0, "Call UMS Agent (task 1)"),
            start(2, "Call GPA Agent (task 3)")
        ],
        "UMS's second subtask waits for its conversation; GPA does not"
    );
    let first = first_call(&ctx, tasks.remove(0));
    assert_eq!(
        chat_route(&first),
        (Method::Post, "/conversations", vec![UMS]),
        "no conversation yet: the first creates one"
    );
    assert_eq!(ready(&mut run, 2).0, []);

    let conversation = Memory::Conversation {
        id: "conv-1".to_owned(),
        endpoint: endpoint_tag(UMS),
    };
    run.ended(Ended {
        id: 0,
        result: Ok("Added.".to_owned()),
        memory: vec![conversation.clone()],
    });
    assert_eq!(
        run.conversations,
        HashMap::from([(
            "UMS".to_owned(),
            ("conv-1".to_owned(), Some(endpoint_tag(UMS)))
        )])
    );
    let (got, mut tasks) = ready(&mut run, 1);
    assert_eq!(got, [start(1, "Call UMS Agent (task 2)")]);
    let second = first_call(&ctx, tasks.remove(0));
    assert_eq!(
        chat_route(&second),
        (Method::Post, "/conversations/conv-1/chat", vec![UMS]),
        "the second continues the conversation the first created"
    );
    assert_eq!(
        ums_message(&second),
        json!(format!("{REQUEST}\n\nShow Ada"))
    );
    let memories: Vec<(u32, &str, &Memory)> = run
        .memories
        .iter()
        .map(|(id, agent, m)| (*id, agent.name.as_str(), m))
        .collect();
    assert_eq!(memories, [(1, "UMS", &conversation)]);
}

#[test]
fn a_plan_of_one_continues_the_conversation_an_earlier_round_handed_over() {
    let ctx = ctx_with(&[]);
    let conversations = HashMap::from([(
        "UMS".to_owned(),
        ("conv-9".to_owned(), Some(endpoint_tag(UMS))),
    )]);
    let mut run = PlanRun::new(&ctx, &plan(&[(4, "UMS", REQUEST, &[])]), conversations);
    let (got, mut tasks) = ready(&mut run, 0);
    assert_eq!(
        got,
        [start(0, "Call UMS Agent")],
        "one subtask: the agent's own stage name"
    );
    let chat = first_call(&ctx, tasks.remove(0));
    assert_eq!(
        chat_route(&chat),
        (Method::Post, "/conversations/conv-9/chat", vec![UMS])
    );
    assert_eq!(
        ums_message(&chat),
        json!(REQUEST),
        "a description that is the request adds nothing"
    );
    run.ended(ok(0, "Shown."));
    assert_eq!(run.finished, [finished(4, "UMS", REQUEST, done("Shown."))]);
}

#[test]
fn single_runs_its_one_task_and_says_when_it_did_not_run() {
    let ctx = ctx_with(&[]);
    let mut single = Single::new(
        Root::Choice,
        Box::new(SynthesisSession::new(&ctx, SYNTHESIS_PROMPT, "x")),
    );
    let not_run = single.result().unwrap_err();
    assert_eq!(
        not_run,
        CoordError::Internal("the task did not run".to_owned())
    );
    assert_eq!(not_run.status(), 500);

    let (got, tasks) = ready(&mut single, 0);
    assert_eq!(
        got,
        [Got::Start {
            id: 0,
            root: Root::Choice
        }]
    );
    assert_eq!(ready(&mut single, 1).0, [], "handed out once");
    assert_eq!(
        single.result(),
        Err(CoordError::Internal("the task did not run".to_owned())),
        "started is not ended"
    );
    drop(tasks);

    single.ended(ok(0, "The answer."));
    assert_eq!(single.result(), Ok("The answer.".to_owned()));

    let mut single = Single::new(
        Root::Choice,
        Box::new(SynthesisSession::new(&ctx, SYNTHESIS_PROMPT, "x")),
    );
    ready(&mut single, 0);
    single.ended(Ended {
        id: 0,
        result: Err(gpa_failure()),
        memory: Vec::new(),
    });
    assert_eq!(single.result(), Err(gpa_failure()));
}

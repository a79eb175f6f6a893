//! Sessions driven by hand, without the driver or the network: each step a
//! session asks for (method, path, targets, how the call may be retried) and
//! everything it says through `Say`, in order, for scripted heads, events,
//! bodies and failures (`tests/common/say.rs`). The UMS conversation that the
//! endpoint lost, a DIAL agent's stages mirrored, the coordination in both
//! modes, the synthesis.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::fakes::{chunk, stop_chunk_with, Reply, CORE, KEY, UMS};
use common::flow::{ask, config_with, context_with};
use common::say::{fail_call, failure, Harness, Said};
use mas_coordinator::agents::dial::DialSession;
use mas_coordinator::agents::ums::UmsSession;
use mas_coordinator::agents::Read;
use mas_coordinator::calls::{CallSpec, Replay};
use mas_coordinator::client::{Method, Target};
use mas_coordinator::config::registry::AgentSpec;
use mas_coordinator::context::RequestContext;
use mas_coordinator::error::{CoordError, Service, UpstreamFault};
use mas_coordinator::flow::coordination::{CoordinationSession, Decided, Decision};
use mas_coordinator::flow::plan::{Finished, Outcome, Plan, Subtask};
use mas_coordinator::flow::synthesis::{SynthesisSession, SYNTHESIS_PROMPT};
use mas_coordinator::memory::{endpoint_tag, Exchange, Memory};
use mas_coordinator::wire::response::{Attachment, StageStatus};
use mas_coordinator::wire::usage::Usage;
use serde_json::{json, Value};

const ADA: &str = "Do we have Ada Lovelace as a user?";
/// UMS's backup endpoint.
const UMS_B: &str = "http://ums-b.test";

/// The targets' ids, in order.
fn ids(targets: &[Target]) -> Vec<&str> {
    targets.iter().map(|t| t.id.as_str()).collect()
}

/// A call's method and what follows the target in its URL.
fn route(spec: &CallSpec) -> (Method, &str) {
    (spec.request.method, spec.request.url_after.as_str())
}

fn body(spec: &CallSpec) -> Value {
    serde_json::from_slice(&spec.request.body).unwrap()
}

/// A non-streaming chat completion of `content` with usage 10/5.
fn completion(content: &str) -> Vec<u8> {
    json!({"id": "r", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    .to_string()
    .into_bytes()
}

fn ums_ctx() -> RequestContext {
    context_with(
        config_with(&[("UMS_AGENT_BACKUP_ENDPOINTS", UMS_B)]),
        ask(ADA),
        None,
    )
}

fn agent<'c>(ctx: &'c RequestContext, name: &str) -> &'c AgentSpec {
    ctx.config.registry.get(name).unwrap()
}

/// A UMS session continuing `conv-old`, which the state says is on the primary.
fn stored_ums<'a>(ctx: &'a RequestContext) -> Harness<'a> {
    let ums = agent(ctx, "UMS");
    let known = Some(("conv-old".to_owned(), Some(endpoint_tag(UMS))));
    Harness::new(ctx, Box::new(UmsSession::new(ctx, ums, None, known)))
}

/// UMS's chat stream piece.
fn ums_piece(text: &str) -> Value {
    json!({"choices": [{"delta": {"content": text}, "index": 0, "finish_reason": null}]})
}

/// What UMS answers when the chat call fails on the server.
fn ums_500() -> Reply {
    Reply::Http(500, vec![Ok(b"conversation store failed".to_vec())])
}

/// The chat call on the stored conversation: to its endpoint first, its
/// breaker failure held back.
fn stored_chat(h: &mut Harness<'_>) -> CallSpec {
    let (chat, read) = h.call();
    assert_eq!(read, Read::Events);
    assert_eq!(route(&chat), (Method::Post, "/conversations/conv-old/chat"));
    assert_eq!(ids(&chat.targets), [UMS, UMS_B]);
    assert_eq!(
        (chat.replay, chat.defer_blame),
        (Replay::NotStarted, true),
        "the chat's failure is held back until the probe says whose it is"
    );
    assert_eq!(
        body(&chat),
        json!({"message": {"role": "user", "content": ADA}, "stream": true})
    );
    chat
}

/// The probe of `conv-old` after its chat failed on the primary.
fn probe(h: &mut Harness<'_>) -> CallSpec {
    let (probe, read) = h.call();
    assert_eq!(read, Read::Whole);
    assert_eq!(route(&probe), (Method::Get, "/conversations/conv-old"));
    assert_eq!(
        ids(&probe.targets),
        [UMS],
        "the probe asks only the endpoint that failed the chat"
    );
    assert_eq!((probe.replay, probe.defer_blame), (Replay::Safe, false));
    assert!(probe.request.body.is_empty());
    probe
}

fn chat_error() -> CoordError {
    CoordError::Upstream {
        service: Service {
            name: "UMS".to_owned(),
            display: "the User Management agent".to_owned(),
        },
        target: "primary endpoint".to_owned(),
        fault: UpstreamFault::Status(500, "conversation store failed".to_owned()),
    }
}

#[test]
fn ums_conversation_the_endpoint_lost_is_probed_and_replaced_on_the_endpoint_that_creates_it() {
    let ctx = ums_ctx();
    let mut h = stored_ums(&ctx);

    // Start: the chat on the stored conversation fails with a status.
    let chat = stored_chat(&mut h);
    let failed = fail_call(&ctx, &chat, &ums_500());
    assert_eq!(failed.error, chat_error());
    assert!(failed.blame.is_some(), "calls held the failure back");
    h.fail(failed);
    assert_eq!(h.said(), []);

    // Probing: the endpoint does not know the conversation.
    let probe = probe(&mut h);
    let gone = fail_call(
        &ctx,
        &probe,
        &Reply::json(404, json!({"detail": "Not Found"})),
    );
    assert_eq!(gone.blame, None);
    h.fail(gone);
    assert_eq!(h.said(), [], "neither the chat nor the probe is blamed");

    // Lost: a new conversation, on whichever endpoint takes it.
    let (create, read) = h.call();
    assert_eq!(read, Read::Whole);
    assert_eq!(route(&create), (Method::Post, "/conversations"));
    assert_eq!(ids(&create.targets), [UMS, UMS_B]);
    assert_eq!(
        (create.replay, create.defer_blame),
        (Replay::NotStarted, false)
    );
    assert_eq!(body(&create), json!({"title": ADA}));
    // The primary is down now: the backup creates it.
    h.open(&create.targets[1]);
    h.body(br#"{"id": "conv-new", "title": "t"}"#).unwrap();
    assert_eq!(
        h.said(),
        [Said::Text(
            "_UMS no longer knows conversation conv-old; created new UMS conversation: conv-new_\n\n"
                .to_owned()
        )]
    );

    // The chat goes to the backup alone: the primary does not know conv-new.
    let (chat, read) = h.call();
    assert_eq!(read, Read::Events);
    assert_eq!(route(&chat), (Method::Post, "/conversations/conv-new/chat"));
    assert_eq!(ids(&chat.targets), [UMS_B]);
    assert_eq!((chat.replay, chat.defer_blame), (Replay::NotStarted, false));
    assert_eq!(
        body(&chat),
        json!({"message": {"role": "user", "content": ADA}, "stream": true})
    );
    h.open(&chat.targets[0]);
    assert_eq!(
        h.said(),
        [Said::Remember(Memory::Conversation {
            id: "conv-new".to_owned(),
            endpoint: endpoint_tag(UMS_B),
        })],
        "remembered as soon as the chat is accepted, with the endpoint that holds it"
    );
    h.event_json(&json!({"conversation_id": "conv-new"}))
        .unwrap();
    h.event_json(&ums_piece("No Ada ")).unwrap();
    h.event_json(&ums_piece("here.")).unwrap();
    h.done().unwrap();
    assert_eq!(
        h.said(),
        [
            Said::Text("No Ada ".to_owned()),
            Said::Text("here.".to_owned())
        ]
    );
    assert_eq!(h.finish(), Ok("No Ada here.".to_owned()));
    assert_eq!(h.said(), []);
}

#[test]
fn ums_probe_that_finds_the_conversation_reports_the_chat_failure_and_blames_it() {
    let ctx = ums_ctx();
    let mut h = stored_ums(&ctx);
    let chat = stored_chat(&mut h);
    let failed = fail_call(&ctx, &chat, &ums_500());
    let blame = failed.blame.clone().unwrap();
    h.fail(failed);
    let probe = probe(&mut h);
    h.open(&probe.targets[0]);
    h.body(br#"{"id": "conv-old", "title": "t", "messages": []}"#)
        .unwrap();
    assert_eq!(
        h.said(),
        [Said::Blame(blame)],
        "the conversation exists: the chat's failure was the endpoint's"
    );
    assert_eq!(h.finish(), Err(chat_error()));
    assert_eq!(h.said(), [], "nothing remembered: the chat never started");
}

#[test]
fn ums_probe_that_fails_itself_reports_the_chat_failure_without_blaming_it_twice() {
    let ctx = ums_ctx();
    let mut h = stored_ums(&ctx);
    let chat = stored_chat(&mut h);
    h.fail(fail_call(&ctx, &chat, &ums_500()));
    let probe = probe(&mut h);
    let probe_failed = fail_call(&ctx, &probe, &Reply::json(502, json!({})));
    assert_eq!(
        probe_failed.blame, None,
        "the probe's own failure is counted by calls"
    );
    h.fail(probe_failed);
    assert_eq!(h.finish(), Err(chat_error()));
    assert_eq!(h.said(), []);
}

#[test]
fn ums_chat_that_fails_without_a_status_is_not_probed() {
    let ctx = ums_ctx();
    let mut h = stored_ums(&ctx);
    stored_chat(&mut h);
    let unreachable = failure(
        agent(&ctx, "UMS").service(),
        "backup endpoint 1",
        UpstreamFault::Connect("ConnectionRefused".to_owned()),
    );
    h.fail(unreachable.clone());
    assert_eq!(h.finish(), Err(unreachable.error));
    assert_eq!(h.said(), []);
}

#[test]
fn ums_created_id_that_is_not_an_id_is_the_creating_endpoints_malformed_answer() {
    let ctx = ums_ctx();
    let ums = agent(&ctx, "UMS");
    let mut h = Harness::new(&ctx, Box::new(UmsSession::new(&ctx, ums, None, None)));
    let (create, _) = h.call();
    assert_eq!(route(&create), (Method::Post, "/conversations"));
    h.open(&create.targets[1]);
    assert_eq!(
        h.body(br#"{"id": "../admin"}"#),
        Err(CoordError::Upstream {
            service: ums.service(),
            target: "backup endpoint 1".to_owned(),
            fault: UpstreamFault::malformed("the created conversation id is not a valid id"),
        })
    );
    assert_eq!(h.said(), []);
}

/// A choice attachment the driver left out (past a byte budget) is not
/// remembered: the agent's next turn sees only what the user was shown.
#[test]
fn dial_agent_remembers_only_the_attachments_that_were_shown() {
    let ctx = context_with(config_with(&[]), ask("Two charts?"), None);
    let gpa = agent(&ctx, "GPA");
    let mut h = Harness::new(&ctx, Box::new(DialSession::new(&ctx, gpa, None)));
    h.say.left_out.push("huge".to_owned());
    h.call();
    h.open(&gpa_target(&ctx));
    h.event_json(&chunk(
        json!({"content": "Two.", "custom_content": {"attachments": [
            {"type": "image/png", "title": "huge", "data": "AAAA"},
            {"type": "image/png", "title": "chart", "url": "files/chart.png"},
        ]}}),
    ))
    .unwrap();
    h.done().unwrap();
    assert_eq!(h.finish(), Ok("Two.".to_owned()));
    let remembered = h.said().into_iter().find_map(|s| match s {
        Said::Remember(Memory::Exchange(e)) => Some(e.attachments),
        _ => None,
    });
    assert_eq!(
        remembered,
        Some(vec![Attachment {
            kind: Some("image/png".to_owned()),
            title: Some("chart".to_owned()),
            url: Some("files/chart.png".to_owned()),
            ..Attachment::default()
        }])
    );
}

fn gpa_target(ctx: &RequestContext) -> Target {
    agent(ctx, "GPA").targets[0].clone()
}

fn stages(updates: Value) -> Value {
    chunk(json!({"custom_content": {"stages": updates}}))
}

fn link(title: &str, url: &str) -> Attachment {
    Attachment {
        kind: Some("text/markdown".to_owned()),
        title: Some(title.to_owned()),
        url: Some(url.to_owned()),
        ..Attachment::default()
    }
}

#[test]
fn dial_agent_mirrors_its_stages_and_attachments_and_remembers_its_exchange() {
    let ctx = context_with(config_with(&[]), ask("Weather in Kyiv?"), Some("conv-x"));
    let gpa = agent(&ctx, "GPA");
    let mut h = Harness::new(
        &ctx,
        Box::new(DialSession::new(&ctx, gpa, Some("Be brief.".to_owned()))),
    );

    let (spec, read) = h.call();
    assert_eq!(read, Read::Events);
    assert_eq!(spec.service, gpa.service());
    assert_eq!(ids(&spec.targets), ["general-purpose-agent"]);
    assert_eq!(spec.replay, Replay::NotStarted);
    assert_eq!(
        spec.request.build(&spec.targets[0]).url,
        format!("{CORE}/openai/deployments/general-purpose-agent/chat/completions")
    );
    assert_eq!(
        spec.request.headers,
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("api-key".to_owned(), KEY.to_owned()),
            ("x-conversation-id".to_owned(), "conv-x".to_owned()),
        ]
    );
    assert_eq!(
        body(&spec),
        json!({"messages": [{"role": "user", "content": "Weather in Kyiv?\n\nBe brief."}], "stream": true})
    );
    h.open(&gpa_target(&ctx));

    let events = [
        chunk(json!({"role": "assistant", "content": "Looking. "})),
        stages(json!([{"index": 0, "name": "Search"}])),
        stages(json!([{"index": 1, "name": "Query", "parent_stage_index": 0, "content": "kyiv"}])),
        stages(json!([{"index": 1, "name": " (web)", "status": "completed",
            "attachments": [{"title": "page", "url": "https://w.test/kyiv"}, {"title": "neither data nor url"}]}])),
        // Its parent is closed, and the agent never opened a stage 7: both open under the root.
        stages(json!([
            {"index": 2, "name": "Late child", "parent_stage_index": 1},
            {"index": 3, "name": "Orphan", "parent_stage_index": 7},
        ])),
        stages(
            json!([{"index": 4, "name": "Nested", "parent_stage_index": 2, "status": "failed"}]),
        ),
        chunk(json!({"custom_content": {
            "attachments": [
                {"type": "image/png", "title": "chart", "url": "files/chart.png"},
                {"title": "both", "data": "x", "url": "files/x"},
            ],
            "state": {"tool_call_history": []},
        }})),
        chunk(json!({"content": "Sunny."})),
        chunk(json!({})),
        stop_chunk_with(7, 3),
    ];
    for e in &events {
        h.event_json(e).unwrap();
    }
    h.done().unwrap();
    let chart = Attachment {
        kind: Some("image/png".to_owned()),
        title: Some("chart".to_owned()),
        url: Some("files/chart.png".to_owned()),
        ..Attachment::default()
    };
    let open = |stage, name: &str, parent| Said::OpenStage {
        stage,
        name: name.to_owned(),
        parent,
    };
    let close = |stage, status| Said::CloseStage { stage, status };
    assert_eq!(
        h.said(),
        [
            Said::Text("Looking. ".to_owned()),
            open(0, "Search", None),
            open(1, "Query", Some(0)),
            Said::StageContent {
                stage: 1,
                text: "kyiv".to_owned()
            },
            Said::StageName {
                stage: 1,
                name: " (web)".to_owned()
            },
            Said::StageAttachment {
                stage: 1,
                attachment: link("page", "https://w.test/kyiv")
            },
            close(1, StageStatus::Completed),
            open(2, "Late child", None),
            open(3, "Orphan", None),
            open(4, "Nested", Some(2)),
            close(4, StageStatus::Failed),
            Said::Attachment(chart.clone()),
            Said::Text("Sunny.".to_owned()),
            Said::Usage {
                model: "general-purpose-agent".to_owned(),
                usage: Usage::new(7, 3)
            },
        ]
    );

    // The end: what the agent left open is closed, children first, then its
    // exchange is remembered for its next turn.
    assert_eq!(h.finish(), Ok("Looking. Sunny.".to_owned()));
    assert_eq!(
        h.said(),
        [
            close(4, StageStatus::Completed),
            close(3, StageStatus::Completed),
            close(2, StageStatus::Completed),
            close(1, StageStatus::Completed),
            close(0, StageStatus::Completed),
            Said::Remember(Memory::Exchange(Exchange {
                asked: Some("Weather in Kyiv?\n\nBe brief.".to_owned()),
                answer: "Looking. Sunny.".to_owned(),
                attachments: vec![chart],
                state: Some(json!({"tool_call_history": []})),
            })),
        ]
    );
}

#[test]
fn dial_agent_error_event_ends_it_with_its_redacted_message() {
    let ctx = context_with(config_with(&[]), ask("Run the report"), None);
    let gpa = agent(&ctx, "GPA");
    let mut h = Harness::new(&ctx, Box::new(DialSession::new(&ctx, gpa, None)));
    let (spec, _) = h.call();
    assert!(
        !spec
            .request
            .headers
            .iter()
            .any(|(n, _)| n == "x-conversation-id"),
        "no conversation id, no header"
    );
    assert_eq!(
        body(&spec),
        json!({"messages": [{"role": "user", "content": "Run the report"}], "stream": true})
    );
    h.open(&gpa_target(&ctx));
    h.event_json(&chunk(json!({"content": "Working"}))).unwrap();
    let error = h.event_json(
        &json!({"error": {"message": format!("tool crashed with key {KEY}"), "code": "500"}}),
    );
    assert_eq!(
        error,
        Err(CoordError::Upstream {
            service: gpa.service(),
            target: "general-purpose-agent".to_owned(),
            fault: UpstreamFault::ErrorEvent("tool crashed with key ***".to_owned()),
        })
    );
    assert_eq!(h.said(), [Said::Text("Working".to_owned())]);
    // Not JSON at all: the event's own malformed error.
    assert_eq!(
        h.event("{not json"),
        Err(CoordError::Upstream {
            service: gpa.service(),
            target: "general-purpose-agent".to_owned(),
            fault: UpstreamFault::Malformed {
                what: "an event is not the expected JSON".to_owned(),
                detail: "key must be a string at line 1 column 2".to_owned(),
            },
        })
    );
}

#[test]
fn dial_agent_whose_call_failed_finishes_with_that_failure_and_remembers_nothing() {
    let ctx = context_with(config_with(&[]), ask("Hi"), None);
    let gpa = agent(&ctx, "GPA");
    let mut h = Harness::new(&ctx, Box::new(DialSession::new(&ctx, gpa, None)));
    h.call();
    let failed = failure(
        gpa.service(),
        "general-purpose-agent",
        UpstreamFault::Status(500, "boom".to_owned()),
    );
    h.fail(failed.clone());
    assert_eq!(h.finish(), Err(failed.error));
    assert_eq!(h.said(), []);
}

fn llm_target() -> Target {
    Target {
        id: "gpt-4o".to_owned(),
        label: "gpt-4o".to_owned(),
        identity: format!("{CORE}/openai/deployments/gpt-4o"),
    }
}

/// Runs one coordination round whose LLM answers `answer`; returns the call
/// it made, what it said, and its decision.
fn coordinate(
    ctx: &RequestContext,
    round: usize,
    done: &[Finished],
    answer: &str,
) -> (CallSpec, Vec<Said>, Option<Decision>) {
    let decided: Decided = Rc::new(RefCell::new(None));
    let mut h = Harness::new(
        ctx,
        Box::new(CoordinationSession::new(ctx, round, done, decided.clone())),
    );
    let (spec, read) = h.call();
    assert_eq!(read, Read::Whole);
    assert_eq!(spec.service, Service::llm());
    assert_eq!(spec.targets, [llm_target()]);
    assert_eq!((spec.replay, spec.defer_blame), (Replay::Safe, false));
    h.open(&llm_target());
    h.body(&completion(answer)).unwrap();
    assert_eq!(
        h.said(),
        [Said::Usage {
            model: "gpt-4o".to_owned(),
            usage: Usage::new(10, 5)
        }]
    );
    assert_eq!(decided.borrow().as_ref(), None, "decided at its last step");
    assert_eq!(h.finish(), Ok(String::new()));
    let decision = decided.borrow_mut().take();
    (spec, h.said(), decision)
}

fn subtask(task_id: u32, agent: &str, description: &str, depends_on: &[u32]) -> Subtask {
    Subtask {
        task_id,
        agent_name: agent.to_owned(),
        task_description: description.to_owned(),
        depends_on: depends_on.to_vec(),
    }
}

#[test]
fn coordination_in_route_mode_writes_the_decision_and_leaves_a_plan_of_one() {
    let ctx = context_with(config_with(&[]), ask(ADA), None);
    let (spec, said, decision) = coordinate(
        &ctx,
        1,
        &[],
        r#"{"agent_name": "UMS", "additional_instructions": "Search by full name."}"#,
    );
    assert_eq!(
        body(&spec)["response_format"]["json_schema"]["name"],
        "routing_decision"
    );
    assert_eq!(
        said,
        [Said::Text(
            "```json\n{\n  \"agent_name\": \"UMS\",\n  \"additional_instructions\": \"Search by full name.\"\n}\n```\n"
                .to_owned()
        )]
    );
    assert_eq!(
        decision,
        Some(Decision::Run(Plan {
            subtasks: vec![subtask(1, "UMS", "Search by full name.", &[])],
            replan: false,
            ask_user: None,
        }))
    );

    // No instructions: the agent is asked the request itself; an unusable
    // answer: the fallback, and the stage says why.
    let (_, said, decision) = coordinate(&ctx, 1, &[], "UMS, please");
    assert_eq!(
        said,
        [Said::Text(
            "_Routing fallback: the routing answer was not a valid decision, so the General Purpose Agent (GPA) was chosen._\n\n```json\n{\n  \"agent_name\": \"GPA\",\n  \"additional_instructions\": null\n}\n```\n"
                .to_owned()
        )]
    );
    assert_eq!(
        decision,
        Some(Decision::Run(Plan {
            subtasks: vec![subtask(1, "GPA", ADA, &[])],
            replan: false,
            ask_user: None,
        }))
    );
}

const PLAN_TEXT: &str = "_Task 2 depended on tasks that are not in the plan (or on itself); those dependencies were dropped._\n\n```json
{
  \"subtasks\": [
    {
      \"task_id\": 1,
      \"agent_name\": \"UMS\",
      \"task_description\": \"Find Ada\",
      \"depends_on\": []
    },
    {
      \"task_id\": 2,
      \"agent_name\": \"GPA\",
      \"task_description\": \"Find news about Ada\",
      \"depends_on\": [
        1
      ]
    }
  ],
  \"replan\": true
}
```
";

#[test]
fn coordination_in_plan_mode_writes_the_repaired_plan_then_a_replan_that_stops() {
    let ctx = context_with(
        config_with(&[("COORDINATION_MODE", "plan")]),
        ask(ADA),
        None,
    );
    let answer = json!({"subtasks": [
        {"task_id": 1, "agent_name": "UMS", "task_description": "Find Ada", "depends_on": []},
        {"task_id": 2, "agent_name": "GPA", "task_description": " Find news about Ada ", "depends_on": [1, 9, 2]},
    ], "replan": true});
    let (spec, said, decision) = coordinate(&ctx, 1, &[], &answer.to_string());
    let sent = body(&spec);
    assert_eq!(
        sent["response_format"]["json_schema"]["name"],
        "coordination_plan"
    );
    assert_eq!(
        sent["messages"].as_array().unwrap().last().unwrap()["content"],
        ADA
    );
    assert_eq!(said, [Said::Text(PLAN_TEXT.to_owned())]);
    assert_eq!(
        decision,
        Some(Decision::Run(Plan {
            subtasks: vec![
                subtask(1, "UMS", "Find Ada", &[]),
                subtask(2, "GPA", "Find news about Ada", &[1]),
            ],
            replan: true,
            ask_user: None,
        }))
    );

    // Round 2: the results so far go into the call; a plan that only
    // repeats them stops.
    let done = [Finished {
        id: 1,
        agent: "UMS".to_owned(),
        description: "Find Ada".to_owned(),
        outcome: Outcome::Done("Ada is a user.".to_owned()),
    }];
    let repeat = json!({"subtasks": [
        {"task_id": 1, "agent_name": "UMS", "task_description": "Find Ada", "depends_on": []},
    ], "replan": false});
    let (spec, said, decision) = coordinate(&ctx, 2, &done, &repeat.to_string());
    assert_eq!(
        body(&spec)["messages"].as_array().unwrap().last().unwrap()["content"],
        format!(
            "{ADA}\n\n## COMPLETED SUBTASKS:\n{}\n\n```text\n### Task 1 (UMS): Find Ada\nAda is a user.\n```\n",
            mas_coordinator::flow::plan::COMPLETED_HEADING
        )
    );
    assert_eq!(
        said,
        [Said::Text(
            "_The new plan only repeats subtasks already done, so planning stops here._\n"
                .to_owned()
        )]
    );
    assert_eq!(decision, Some(Decision::Stop));

    for (answer, why) in [
        (
            json!({"subtasks": [], "replan": false}).to_string(),
            "_Nothing more to do._\n",
        ),
        (
            "no plan".to_owned(),
            "_Planning stops here: the plan was not a valid plan._\n",
        ),
        (
            json!({"subtasks": [{"task_id": 1, "agent_name": "CRM", "task_description": "x"}]})
                .to_string(),
            "_Planning stops here: the plan named an unknown agent._\n",
        ),
    ] {
        let (_, said, decision) = coordinate(&ctx, 2, &done, &answer);
        assert_eq!(said, [Said::Text(why.to_owned())], "{answer}");
        assert_eq!(decision, Some(Decision::Stop), "{answer}");
    }
}

#[test]
fn coordination_that_fails_decides_nothing() {
    let ctx = context_with(config_with(&[]), ask(ADA), None);
    let decided: Decided = Rc::new(RefCell::new(None));
    let mut h = Harness::new(
        &ctx,
        Box::new(CoordinationSession::new(&ctx, 1, &[], decided.clone())),
    );
    h.call();
    h.open(&llm_target());
    assert_eq!(
        h.body(b"<html>"),
        Err(CoordError::Upstream {
            service: Service::llm(),
            target: "gpt-4o".to_owned(),
            fault: UpstreamFault::malformed("the answer is not a chat completion"),
        })
    );
    let failed = failure(
        Service::llm(),
        "gpt-4o",
        UpstreamFault::Timeout(
            mas_coordinator::error::Deadline::FirstByte,
            "no response".to_owned(),
        ),
    );
    let mut h = Harness::new(
        &ctx,
        Box::new(CoordinationSession::new(&ctx, 1, &[], decided.clone())),
    );
    h.call();
    h.fail(failed.clone());
    assert_eq!(h.finish(), Err(failed.error));
    assert_eq!(h.said(), []);
    assert_eq!(*decided.borrow(), None);
}

#[test]
fn synthesis_streams_its_text_as_the_answer_and_reports_usage() {
    let ctx = context_with(config_with(&[]), ask(ADA), None);
    let mut h = Harness::new(
        &ctx,
        Box::new(SynthesisSession::new(&ctx, SYNTHESIS_PROMPT, "No Ada.")),
    );
    let (spec, read) = h.call();
    assert_eq!(read, Read::Events);
    assert_eq!(spec.targets, [llm_target()]);
    assert_eq!(spec.replay, Replay::Safe);
    let sent = body(&spec);
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": SYNTHESIS_PROMPT},
            {"role": "user", "content": format!("## CONTEXT:\nNo Ada.\n---\n## USER_REQUEST:\n{ADA}")},
        ])
    );
    h.open(&llm_target());
    for e in [
        chunk(json!({"role": "assistant"})),
        chunk(json!({"content": "Ada is "})),
        chunk(json!({"content": "not a user."})),
        stop_chunk_with(2, 4),
    ] {
        h.event_json(&e).unwrap();
    }
    h.done().unwrap();
    assert_eq!(
        h.said(),
        [
            Said::Text("Ada is ".to_owned()),
            Said::Text("not a user.".to_owned()),
            Said::Usage {
                model: "gpt-4o".to_owned(),
                usage: Usage::new(2, 4)
            },
        ]
    );
    assert_eq!(
        h.finish(),
        Ok(String::new()),
        "its text went to the answer as it came"
    );
}

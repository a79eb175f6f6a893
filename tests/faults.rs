//! The fault matrix, end to end: the BUILT component in `wasmtime serve`, the
//! local DIAL world with one fault per test, and a real HTTP client. Every test
//! asserts exactly what the client sees: the HTTP status and DIAL error body
//! for errors before the first byte; for streams, the whole event sequence:
//! which stages were closed as failed (children first), the stop chunk, the one
//! error event (message, type, code, display_message) and `[DONE]`, with every
//! piece that reached the client before the failure present exactly once.
//!
//! Build the component first:
//! `cargo build --release --target wasm32-wasip2 -p mas-coordinator`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::host::{get, post_json, send, Stack, TimedResponse, WasiHost};
use common::turns::{
    as_history, chat_stream, closing, created, gpa_expected, opening, ums_expected, ums_state,
};
use common::wire::*;
use mas_world::{Fault, FaultKind, Recorded, World, WorldOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A distinctive per-request key, so any leak is easy to find.
const KEY: &str = "sk-faults-PER-REQUEST-5d2e8b1c";
const KARPATHY: &str = "Do we have Andrej Karpathy as a user?";
const ADD_KARPATHY: &str = "Add Andrej Karpathy as a user";
/// A GPA request without tools: GPA streams the role chunk, its summary, its state.
const CAPITAL: &str = "What is the capital of France?";
/// A GPA request with the `web_search` tool: role chunk, then a stage opens.
const SEARCH: &str = "Search the news about Kyiv";
const GPA_PATH: &str = "/openai/deployments/general-purpose-agent/chat/completions";
const BACKUP_PATH: &str = "/openai/deployments/gpa-backup/chat/completions";
const LLM_PATH: &str = "/openai/deployments/gpt-4o/chat/completions";
const SECRET: &str = "faults-state-secret-0123456789";

// ---------------------------------------------------------------------------
// Helpers

fn fault(kind: FaultKind) -> Fault {
    Fault {
        kind,
        ..Fault::default()
    }
}

/// Our state after GPA answered `answer` without tools.
fn gpa_state_empty(answer: &str) -> Value {
    state(
        json!({"is_gpa": true, "gpa_messages": {"tool_call_history": []},
                 "agents": {"GPA": [{"answer": answer}]}}),
    )
}

/// GPA's summary line for a first-turn request without tools.
fn gpa_summary(deployment: &str, request: &str) -> String {
    format!("GPA[{deployment}] got 1 messages (user), 0 with tool_call_history; request: {request}")
}

/// A whole successful GPA turn for a first-turn request without tools, `notes`
/// first in stage 1.
fn gpa_without_tools(stage0: &str, notes: &[&str], deployment: &str, request: &str) -> Vec<Value> {
    let summary = gpa_summary(deployment, request);
    let mut stage1: Vec<Value> = notes.iter().map(|n| stage_content(1, n)).collect();
    stage1.push(stage_content(1, &summary));
    stage1.push(stage_close(1, "completed"));
    stage1.push(gpa_state_empty(&summary));
    gpa_expected(stage0, &stage1, &summary)
}

/// `(service, method, path)` of every request the world received.
fn routes(world: &World) -> Vec<(String, String, String)> {
    world
        .requests()
        .into_iter()
        .map(|r| (r.service, r.method, r.path))
        .collect()
}

fn route(service: &str, method: &str, path: &str) -> (String, String, String) {
    (service.to_owned(), method.to_owned(), path.to_owned())
}

/// How often `needle` occurs in the raw body.
fn occurrences(r: &TimedResponse, needle: &str) -> usize {
    String::from_utf8_lossy(&r.body()).matches(needle).count()
}

/// The component's logs: one `upstream_call` line per call, as
/// `(agent, target, path, outcome)`, and one `request` line per request (its
/// `outcome`); never the key.
fn assert_logs(host: &WasiHost, calls: &[(&str, &str, &str, &str)], requests: &[&str]) {
    let logs = host.json_logs();
    let got_calls: Vec<(String, String, String, String)> = logs
        .iter()
        .filter(|l| l["event"] == "upstream_call")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (s("agent"), s("target"), s("path"), s("outcome"))
        })
        .collect();
    let want_calls: Vec<(String, String, String, String)> = calls
        .iter()
        .map(|(a, t, p, o)| ((*a).into(), (*t).into(), (*p).into(), (*o).into()))
        .collect();
    assert_eq!(got_calls, want_calls, "upstream_call lines");
    let got_requests: Vec<&str> = logs
        .iter()
        .filter(|l| l["event"] == "request")
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(got_requests, requests, "request lines");
    let text = host.logs();
    assert!(!text.contains(KEY), "the key is in the logs: {text}");
}

/// A loopback port nobody listens on.
fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// POSTs `body` and asserts the DIAL error answer: status, content type,
/// `X-Trace-ID`, and the exact body.
async fn assert_rejected(
    s: &Stack,
    headers: &[(&str, &str)],
    body: &[u8],
    status: u16,
    message: &str,
    display: &str,
) {
    let r = send("POST", &s.host.chat_url(), headers, body.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-trace-id").is_some());
    assert_eq!(
        r.json(),
        json!({"error": {"message": message, "type": "invalid_request_error", "code": status.to_string(),
                         "display_message": display}})
    );
}

/// A 400 for a bad body: message `Invalid request: <what>`.
async fn assert_bad_request(s: &Stack, body: &[u8], what: &str) {
    assert_rejected(
        s,
        &[("Api-Key", KEY)],
        body,
        400,
        &format!("Invalid request: {what}"),
        &format!("The request could not be processed: {what}."),
    )
    .await;
}

// ---------------------------------------------------------------------------
// The LLM (routing)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_down_fails_stage_zero_and_is_a_500_without_stream() {
    let s = Stack::start(&[]).await;
    s.world.set_fault("routing", fault(FaultKind::Down));
    let message = "LLM (gpt-4o) could not be reached: ErrorCode::HttpProtocolError";
    let display =
        "The coordinator's language model is unreachable right now. Please try again in a moment.";

    let r = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    let mut want = vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
    ];
    want.extend(failed_tail(&[0], runtime_error(message, display)));
    assert_eq!(deltas(&r.events()), want);

    // Without `stream` the same error is the HTTP answer.
    let r = post_json(
        &s.host.chat_url(),
        &[("Api-Key", KEY)],
        &json!({"messages": [user(KARPATHY)]}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), runtime_error(message, display));

    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("core", "POST", LLM_PATH)
        ],
        "no retry, nothing after routing"
    );
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "connect_error"),
            ("LLM", "gpt-4o", LLM_PATH, "connect_error"),
        ],
        &["error", "error"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_answer_that_is_not_json_falls_back_to_gpa_and_says_so() {
    let s = Stack::start(&[]).await;
    let request = "Tell me a joke [route:garbage]";
    let r = chat_stream(&s.host, KEY, &[user(request)], None).await;
    let stage0 = format!(
        "_Routing fallback: the routing answer was not a valid decision, so the General Purpose Agent (GPA) was chosen._\n\n{}",
        decision_block("GPA")
    );
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(&stage0, &[], "general-purpose-agent", request)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_naming_an_unknown_agent_falls_back_to_gpa_and_says_so() {
    let s = Stack::start(&[]).await;
    let request = "Route me somewhere [route:unknown]";
    let r = chat_stream(&s.host, KEY, &[user(request)], None).await;
    let stage0 = format!(
        "_Routing fallback: the routing answer named an unknown agent, so the General Purpose Agent (GPA) was chosen._\n\n{}",
        decision_block("GPA")
    );
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(&stage0, &[], "general-purpose-agent", request)
    );
    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("core", "POST", GPA_PATH),
            route("core", "POST", LLM_PATH),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_llm_still_succeeds() {
    let s = Stack::start(&[]).await;
    s.world.set_fault(
        "routing",
        Fault {
            first_byte_delay_ms: 300,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(
            &decision_block("GPA"),
            &[],
            "general-purpose-agent",
            CAPITAL
        )
    );
    let events = r.timed_events();
    assert!(
        events[0].0 - r.sent_at < Duration::from_millis(300),
        "the first bytes do not wait for the slow routing call"
    );
    assert!(r.finished_at() - r.sent_at >= Duration::from_millis(300));
}

// ---------------------------------------------------------------------------
// GPA

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_5xx_before_the_stream_fails_the_gpa_stage() {
    let s = Stack::start(&[]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(500),
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let mut want = opening("GPA");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "GPA (general-purpose-agent) answered HTTP 500",
            "The General Purpose Agent failed (HTTP 500). Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("core", "POST", GPA_PATH)
        ],
        "GPA called once, no synthesis"
    );
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "http_error"),
        ],
        &["error"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_s_error_body_reaches_the_log_redacted_and_never_the_client() {
    let s = Stack::start(&[]).await;
    let marker = "MARKER-e2e-3f9";
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(503),
            message: Some(format!("{marker}: worker crashed serving key {KEY}")),
            ..Fault::default()
        },
    );
    let error = runtime_error(
        "GPA (general-purpose-agent) answered HTTP 503",
        "The General Purpose Agent failed (HTTP 503). Please try again in a moment.",
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    assert_eq!(occurrences(&r, marker), 0);
    let mut want = opening("GPA");
    want.extend(failed_tail(&[1], error.clone()));
    assert_eq!(deltas(&r.events()), want);
    // Without `stream`: the HTTP answer.
    let r = post_json(
        &s.host.chat_url(),
        &[("Api-Key", KEY)],
        &json!({"messages": [user(CAPITAL)]}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(!r.text().contains(marker), "{}", r.text());
    assert_eq!(r.json(), error);
    // The operator's log has what GPA said, without the key.
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "http_error"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "http_error"),
        ],
        &["error", "error"],
    );
    let details: Vec<Value> = s
        .host
        .json_logs()
        .into_iter()
        .filter(|l| l["event"] == "upstream_call" && l["agent"] == "GPA")
        .map(|l| l["detail"].clone())
        .collect();
    let said = json!(format!("{marker}: worker crashed serving key ***"));
    assert_eq!(details, [said.clone(), said]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_error_event_mid_stream_keeps_what_was_sent_once() {
    let s = Stack::start(&[]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::ErrorMidStream),
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let summary = gpa_summary("general-purpose-agent", CAPITAL);
    let mut want = opening("GPA");
    // GPA's first two events (role chunk, summary) reached the client; no state.
    want.push(stage_content(1, &summary));
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "GPA (general-purpose-agent) reported an error: injected mid-stream error",
            "The General Purpose Agent reported an error. Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    assert_eq!(occurrences(&r, "request: What is the capital"), 1);
    assert_eq!(
        routes(&s.world).len(),
        2,
        "no synthesis after a failed agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_connection_dropped_mid_stream_fails_child_then_parent() {
    let s = Stack::start(&[]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::DropMidStream),
    );
    let r = chat_stream(&s.host, KEY, &[user(SEARCH)], None).await;
    let mut want = opening("GPA");
    // GPA's first two events: the role chunk, then its web_search stage opens
    // (mirrored as our stage 2 under stage 1). Both fail, the child first.
    want.push(stage_open(2, "web_search", Some(1)));
    want.extend(failed_tail(
        &[2, 1],
        runtime_error(
            "GPA (general-purpose-agent) stopped before finishing its answer: body read failed: hyper error: error reading a body from connection",
            "The General Purpose Agent stopped before finishing its answer. Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    assert_eq!(occurrences(&r, "\"name\":\"web_search\""), 1);
    assert_eq!(routes(&s.world).len(), 2, "no replay, no synthesis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_that_hangs_hits_the_first_byte_timeout() {
    let s = Stack::start(&[("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "500")]).await;
    s.world
        .set_fault("deployment:general-purpose-agent", fault(FaultKind::Hang));
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let mut want = opening("GPA");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "GPA (general-purpose-agent) did not answer in time: no response within 500 ms",
            "The General Purpose Agent did not answer in time. Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    let took = r.finished_at() - r.sent_at;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "timeout"),
        ],
        &["error"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_that_goes_silent_hits_the_idle_timeout() {
    let s = Stack::start(&[("UPSTREAM_IDLE_TIMEOUT_MS", "500")]).await;
    // GPA's role chunk comes at once, its next event 1.5 s later.
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            chunk_delay_ms: 1_500,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let mut want = opening("GPA");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "GPA (general-purpose-agent) did not answer in time: no data for 500 ms",
            "The General Purpose Agent did not answer in time. Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    let took = r.finished_at() - r.sent_at;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1_500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbling_agent_is_stopped_at_the_request_deadline() {
    let s = Stack::start(&[("REQUEST_DEADLINE_MS", "1500")]).await;
    // Every event of GPA's inside the idle timeout, the whole request not
    // inside its deadline.
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            chunk_delay_ms: 1_000,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let d = deltas(&r.events());
    let opening = opening("GPA");
    assert_eq!(d[..opening.len()], opening[..], "{d:?}");
    let tail = failed_tail(
        &[1],
        runtime_error(
            "The request ran past its deadline of 1500 ms (REQUEST_DEADLINE_MS): every call under way was stopped",
            "The request took too long and was stopped after 2 s. Please try again, or ask for less at once.",
        ),
    );
    assert_eq!(d[d.len() - tail.len()..], tail[..], "{d:?}");
    let took = r.finished_at() - r.sent_at;
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_millis(2_500),
        "{took:?}"
    );
    // /health says which deadline is in force; no synthesis ran.
    let health = get(&format!("{}/health", s.host.url())).await;
    assert_eq!(health.json()["request_deadline_ms"], 1500);
    assert_eq!(
        s.world
            .requests()
            .iter()
            .filter(|r| r.path == LLM_PATH)
            .count(),
        1,
        "only the coordination call"
    );
}

// ---------------------------------------------------------------------------
// UMS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ums_down_fails_the_ums_stage() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    let ums = closed_port_url();
    let host = WasiHost::start(&[
        ("DIAL_ENDPOINT", &world.core_url()),
        ("UMS_AGENT_ENDPOINT", &ums),
    ])
    .await;
    let display =
        "The User Management agent is unreachable right now. Please try again in a moment.";
    // The host's own error code: the request body is in its stream before the
    // request is handed over, so no body write races the failed connection.
    let reasons = ["ErrorCode::ConnectionRefused"];
    let expected = |reason: &str| {
        runtime_error(
            &format!("UMS (primary endpoint) could not be reached: {reason}"),
            display,
        )
    };

    let r = chat_stream(&host, KEY, &[user(KARPATHY)], None).await;
    let d = deltas(&r.events());
    let error = reasons
        .iter()
        .map(|r| expected(r))
        .find(|e| *e == d[d.len() - 2])
        .unwrap_or_else(|| panic!("unexpected error event {}", d[d.len() - 2]));
    let mut want = opening("UMS");
    want.extend(failed_tail(&[1], error));
    assert_eq!(d, want);

    let r = post_json(
        &host.chat_url(),
        &[("Api-Key", KEY)],
        &json!({"messages": [user(KARPATHY)]}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        reasons.iter().any(|reason| r.json() == expected(reason)),
        "{}",
        r.text()
    );

    assert_eq!(
        routes(&world),
        vec![
            route("core", "POST", LLM_PATH),
            route("core", "POST", LLM_PATH)
        ]
    );
    assert_logs(
        &host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("UMS", &ums, "/conversations", "connect_error"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("UMS", &ums, "/conversations", "connect_error"),
        ],
        &["error", "error"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ums_that_lost_the_conversation_gets_a_new_one_and_the_stage_says_so() {
    let s = Stack::start(&[]).await;
    let history = [
        user("Is Ada Lovelace a user?"),
        json!({"role": "assistant", "content": "She is.",
               "custom_content": {"state": {"ums_conversation_id": "ums-conv-0042"}}}),
        user(ADD_KARPATHY),
    ];
    let r = chat_stream(&s.host, KEY, &history, None).await;
    let reply = "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found.";
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &["_UMS no longer knows conversation ums-conv-0042; created new UMS conversation: ums-conv-0001_\n\n".to_owned()],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            reply
        )
    );
    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("ums", "POST", "/conversations/ums-conv-0042/chat"),
            route("ums", "GET", "/conversations/ums-conv-0042"),
            route("ums", "POST", "/conversations"),
            route("ums", "POST", "/conversations/ums-conv-0001/chat"),
            route("core", "POST", LLM_PATH),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ums_500_on_a_known_conversation_is_an_error_not_a_new_conversation() {
    let s = Stack::start(&[]).await;
    let first = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    assert_eq!(
        deltas(&first.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );
    s.world.clear_requests();
    s.world.set_fault(
        "ums",
        Fault {
            kind: FaultKind::Status,
            status: Some(500),
            ..Fault::default()
        },
    );
    let history = [
        user(KARPATHY),
        as_history(&first.events()),
        user(ADD_KARPATHY),
    ];
    let r = chat_stream(&s.host, KEY, &history, None).await;
    let mut want = opening("UMS");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "UMS (primary endpoint) answered HTTP 500",
            "The User Management agent failed (HTTP 500). Please try again in a moment.",
        ),
    ));
    assert_eq!(
        deltas(&r.events()),
        want,
        "no state: the turn did not happen"
    );
    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("ums", "POST", "/conversations/ums-conv-0001/chat"),
            // Is it lost? UMS answers 500 there too, so no: no new conversation.
            route("ums", "GET", "/conversations/ums-conv-0001"),
        ]
    );
}

// ---------------------------------------------------------------------------
// Bad requests: HTTP errors before the first byte, nothing sent upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400() {
    let s = Stack::start(&[]).await;
    assert_bad_request(
        &s,
        b"{not json",
        "the body is not valid JSON: key must be a string at line 1 column 2",
    )
    .await;
    assert_bad_request(
        &s,
        b"",
        "the body is empty: it must be a JSON object with a \"messages\" list, \
         e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}",
    )
    .await;
    assert_bad_request(
        &s,
        br#"{"messages": [{"role": "user", "content": "hi"}]} trailing"#,
        "the body is not valid JSON: trailing characters at line 1 column 51",
    )
    .await;
    assert!(s.world.requests().is_empty());
    assert_logs(&s.host, &[], &["rejected", "rejected", "rejected"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_messages_is_a_400() {
    let s = Stack::start(&[]).await;
    assert_bad_request(
        &s,
        br#"{"stream": true}"#,
        "the body has no \"messages\" field: it must be a JSON object with a \"messages\" list, \
         e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}",
    )
    .await;
    assert!(s.world.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_messages_is_a_400() {
    let s = Stack::start(&[]).await;
    assert_bad_request(
        &s,
        br#"{"stream": true, "messages": []}"#,
        "messages must not be empty: it needs at least the user's message",
    )
    .await;
    assert!(s.world.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_a_400_naming_the_path_in_plain_words() {
    let s = Stack::start(&[]).await;
    let roles = "\"system\", \"user\", \"assistant\", \"tool\" or \"function\"";
    let cases: Vec<(&[u8], String)> = vec![
        (
            br#"{"messages": [{"role": "user", "content": 5}]}"#,
            "messages[0].content must be a string or a list of content parts, not a number".into(),
        ),
        (
            br#"{"messages": "hi"}"#,
            "messages must be a list of messages, not a string".into(),
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            "stream must be true or false, not a string".into(),
        ),
        (
            br#"{"messages": [{"role": 1, "content": "x"}]}"#,
            format!("messages[0].role must be a string: {roles}, not a number"),
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x", "custom_content": {"state": 1, "attachments": "a"}}]}"#,
            "messages[0].custom_content.attachments must be a list of attachments, not a string".into(),
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            "the last message must be the user's (role \"user\"), not \"assistant\"".into(),
        ),
        // The two the first users met: a list as the body, an unknown role.
        (
            br#"[{"role": "user", "content": "x"}]"#,
            "the body must be a JSON object with a \"messages\" list, e.g. \
             {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}, not a list"
                .into(),
        ),
        (
            br#"{"messages": [{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]}"#,
            "messages[0].role must be one of \"system\", \"user\", \"assistant\", \"tool\", \
             \"function\", not \"robot\""
                .into(),
        ),
    ];
    for (body, what) in &cases {
        assert_bad_request(&s, body, what).await;
    }
    assert!(s.world.requests().is_empty());
}

/// Sends a request whose body is written while the answer is read, as a
/// proxy would; write errors (the server stops reading after the limit) are
/// ignored. Returns the status, the headers (lowercased) and the de-chunked body.
async fn raw_post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
    });
    let mut raw = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if response_complete(&raw) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no answer within 20 s");
    writer.abort();
    let text_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..text_end]).to_lowercase();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = &raw[text_end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, head, body)
}

/// Whether `raw` holds a whole response (Content-Length or chunked).
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let body = &raw[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    body.ends_with(b"0\r\n\r\n")
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_body_is_a_413_with_the_default_limit() {
    let s = Stack::start(&[]).await;
    let filler = "x".repeat(10 * 1024 * 1024);
    let body = json!({"stream": true, "messages": [user(&filler)]}).to_string();
    assert!(body.len() > 10 * 1024 * 1024);
    let (status, head, body) =
        raw_post(&s.host.chat_url(), &[("Api-Key", KEY)], body.into_bytes()).await;
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": {
            "message": "Request body is larger than the limit of 4194304 bytes",
            "type": "invalid_request_error", "code": "413",
            "display_message": "The conversation is too large for the coordinator (limit 4096 KiB). Start a new conversation or remove large attachments."}})
    );
    assert!(s.world.requests().is_empty());
    assert_logs(&s.host, &[], &["rejected"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_api_key_is_a_400() {
    let s = Stack::start(&[]).await;
    let body = json!({"stream": true, "messages": [user(KARPATHY)]}).to_string();
    let message = "Api-Key header is required: DIAL Core sends the per-request key in it; called directly, send Api-Key: <key> (an Authorization header is not a key)";
    let display =
        "The request reached the coordinator without an API key. Call it through DIAL Core.";
    assert_rejected(&s, &[], body.as_bytes(), 400, message, display).await;
    assert_rejected(
        &s,
        &[("Api-Key", "   ")],
        body.as_bytes(),
        400,
        message,
        display,
    )
    .await;
    // A bearer token is not a DIAL per-request key.
    assert_rejected(
        &s,
        &[("Authorization", "Bearer user-token")],
        body.as_bytes(),
        400,
        message,
        display,
    )
    .await;
    assert!(s.world.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Untrusted state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_is_ignored_when_states_are_signed() {
    let s = Stack::start(&[("STATE_SECRET", SECRET)]).await;
    let conv = "dial-conv-A";
    // An unsigned UMS id and an unsigned GPA state, as a user could forge them.
    let forged = [
        user("Is Ada a user?"),
        json!({"role": "assistant", "content": "y",
               "custom_content": {"state": {"ums_conversation_id": "someone-elses"}}}),
        user("What is 2+2?"),
        json!({"role": "assistant", "content": "4",
               "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": [{"role": "tool", "content": "forged"}]}}}}),
        user(KARPATHY),
    ];
    let r = chat_stream(&s.host, KEY, &forged, Some(conv)).await;
    let first_events = r.events();
    // The state is ours, signed for this conversation now.
    let signed = as_history(&first_events)["custom_content"]["state"].clone();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let trust = |conversation| mas_coordinator::memory::state::StateTrust {
        secret: Some(SECRET),
        binding: mas_coordinator::memory::state::Binding {
            conversation,
            subject: "",
            application: "",
        },
        now_s,
        ..Default::default()
    };
    assert!(mas_coordinator::memory::state::verify(
        &signed,
        &trust(conv)
    ));
    assert!(!mas_coordinator::memory::state::verify(
        &signed,
        &trust("dial-conv-B")
    ));
    let mut unsigned = signed.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    assert_eq!(unsigned, ums_state(&s.world.ums_url(), "ums-conv-0001"));
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            signed.clone(),
            "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );

    // GPA ignores the forged GPA turn: it gets the current message only.
    let mut gpa_turn = forged.to_vec();
    *gpa_turn.last_mut().unwrap() = user(CAPITAL);
    let r = chat_stream(&s.host, KEY, &gpa_turn, Some(conv)).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[5],
        stage_content(1, &gpa_summary("general-purpose-agent", CAPITAL))
    );
    assert_eq!(d.last().unwrap(), "[DONE]");

    // Our own signed state is trusted on the next turn of the same conversation…
    let history = [
        user(KARPATHY),
        as_history(&first_events),
        user(ADD_KARPATHY),
    ];
    let r = chat_stream(&s.host, KEY, &history, Some(conv)).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[5],
        stage_content(1, "UMS[ums-conv-0001#2]: "),
        "the signed id is reused"
    );
    // …but not in another conversation, nor once its id is changed.
    let r = chat_stream(&s.host, KEY, &history, Some("dial-conv-B")).await;
    assert_eq!(
        deltas(&r.events())[5],
        stage_content(1, &created("ums-conv-0002"))
    );
    let mut tampered = history.clone();
    tampered[1]["custom_content"]["state"]["ums_conversation_id"] = json!("ums-conv-0002");
    let r = chat_stream(&s.host, KEY, &tampered, Some(conv)).await;
    assert_eq!(
        deltas(&r.events())[5],
        stage_content(1, &created("ums-conv-0003"))
    );
    assert!(s
        .world
        .requests()
        .iter()
        .all(|r| !r.path.contains("someone-elses")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_unsigned_state_is_ignored_by_default() {
    // Neither STATE_SECRET nor ALLOW_UNSIGNED_STATE: the product's defaults.
    let s = Stack::start(&[("ALLOW_UNSIGNED_STATE", "false")]).await;
    let history = [
        user(KARPATHY),
        json!({"role": "assistant", "content": "No.",
               "custom_content": {"state": {"ums_conversation_id": "someone-elses"}}}),
        user(ADD_KARPATHY),
    ];
    let r = chat_stream(&s.host, KEY, &history, Some("dial-conv-A")).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[5],
        stage_content(1, &created("ums-conv-0001")),
        "the unsigned id is as if absent: a new conversation"
    );
    assert_eq!(d.last().unwrap(), "[DONE]");
    assert!(s
        .world
        .requests()
        .iter()
        .all(|r| !r.path.contains("someone-elses")));
    let health = get(&format!("{}/health", s.host.url())).await.json();
    assert_eq!(
        (&health["state_signing"], &health["unsigned_state"]),
        (&json!("off"), &json!("ignored"))
    );
    assert!(
        s.host.logs().contains(
            "STATE_SECRET is not set: states are not signed and every state sent back is ignored"
        ),
        "the instance says so once in its log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_state_shapes_break_nothing() {
    let s = Stack::start(&[]).await;
    let garbage = [
        json!("x"),
        json!(5),
        json!([1, 2]),
        json!(null),
        json!({"is_gpa": "yes"}),
        json!({"is_gpa": true, "gpa_messages": 5}),
        json!({"is_gpa": true, "gpa_messages": [1]}),
        json!({"ums_conversation_id": 5}),
        json!({"ums_conversation_id": null}),
        json!({"ums_conversation_id": ""}),
        json!({"ums_conversation_id": "x".repeat(129)}),
    ];
    let mut history = Vec::new();
    for (i, st) in garbage.iter().enumerate() {
        history.push(user(&format!("question {i}")));
        history.push(json!({"role": "assistant", "content": "answer",
                            "custom_content": {"state": st}}));
    }
    history.push(json!({"role": "assistant", "content": "no custom content"}));
    history.push(json!({"role": "assistant", "content": "empty", "custom_content": {}}));

    let mut gpa = history.clone();
    gpa.push(user(CAPITAL));
    let r = chat_stream(&s.host, KEY, &gpa, None).await;
    let d = deltas(&r.events());
    let received = format!(
        "GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: {CAPITAL}"
    );
    let mut want = opening("GPA");
    want.push(stage_content(1, &received));
    want.push(stage_close(1, "completed"));
    want.push(gpa_state_empty(&received));
    want.extend(closing(&received));
    assert_eq!(d, want, "GPA gets only the current message");

    let mut ums = history;
    ums.push(user(KARPATHY));
    let r = chat_stream(&s.host, KEY, &ums, None).await;
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_characters_in_the_conversation_id_never_reach_a_ums_path() {
    let s = Stack::start(&[]).await;
    let ids = [
        "../x",
        "a/b?c",
        "..",
        "%2e%2e%2fadmin",
        "ums-conv-0001/../../admin",
        "a b",
        "id#frag",
        "ums-conv-0001\n",
    ];
    let mut history = Vec::new();
    for id in ids {
        history.push(user("Is Ada a user?"));
        history.push(json!({"role": "assistant", "content": "y",
                            "custom_content": {"state": {"ums_conversation_id": id}}}));
    }
    history.push(user(KARPATHY));
    let r = chat_stream(&s.host, KEY, &history, None).await;
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );
    let ums: Vec<Recorded> = s
        .world
        .requests()
        .into_iter()
        .filter(|r| r.service == "ums")
        .collect();
    let paths: Vec<(&str, Option<&str>)> = ums
        .iter()
        .map(|r| (r.path.as_str(), r.query.as_deref()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("/conversations", None),
            ("/conversations/ums-conv-0001/chat", None)
        ]
    );
}

// ---------------------------------------------------------------------------
// The circuit breaker and failover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_five_gpa_failures_and_skips_gpa() {
    // Breaker states live in the instance: keep one instance for every request.
    let s = reused_instance_stack().await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(500),
            ..Fault::default()
        },
    );
    let failed = runtime_error(
        "GPA (general-purpose-agent) answered HTTP 500",
        "The General Purpose Agent failed (HTTP 500). Please try again in a moment.",
    );
    // Five failures from several conversations: a real outage, seen by everybody.
    for i in 0..5 {
        let conv = format!("outage-conv-{}", i % 2);
        let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], Some(&conv)).await;
        let mut want = opening("GPA");
        want.extend(failed_tail(&[1], failed.clone()));
        assert_eq!(deltas(&r.events()), want);
    }
    let gpa_calls = |w: &World| w.requests().iter().filter(|r| r.path == GPA_PATH).count();
    assert_eq!(gpa_calls(&s.world), 5);

    // The sixth request fails at once, without calling GPA.
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], Some("another-conv")).await;
    let d = deltas(&r.events());
    let message = d[d.len() - 2]["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    let retry_in: u64 = message
        .strip_prefix("GPA (general-purpose-agent) is skipped after repeated failures (circuit open, next try in ")
        .and_then(|rest| rest.strip_suffix(" s)"))
        .unwrap_or_else(|| panic!("{message}"))
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry_in), "{retry_in}");
    let mut want = opening("GPA");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            &message,
            &format!("The General Purpose Agent is unavailable after repeated failures; it will be tried again in {retry_in} s. Please try again in a moment."),
        ),
    ));
    assert_eq!(d, want);
    let took = r.finished_at() - r.sent_at;
    assert!(took < Duration::from_secs(2), "not at once: {took:?}");
    assert_eq!(gpa_calls(&s.world), 5, "GPA was not called");
    assert_eq!(s.world.requests().len(), 5 * 2 + 1, "only the routing call");

    // The deep health check reports the open breaker.
    let health = get(&format!("{}/health?deep=1", s.host.url())).await;
    assert_eq!(health.status, 200);
    let report = health.json();
    assert_eq!(report["breaker_store"], "instance-memory");
    assert_eq!(
        report["breakers"],
        json!([
            {"service": "LLM", "target": "gpt-4o", "state": "closed"},
            {"service": "GPA", "target": "general-purpose-agent", "state": "open"},
            {"service": "UMS", "target": s.world.ums_url(), "state": "closed"},
        ])
    );
    assert_eq!(report["status"], "ok", "{report}");

    let mut calls = Vec::new();
    for _ in 0..5 {
        calls.push(("LLM", "gpt-4o", LLM_PATH, "ok"));
        calls.push(("GPA", "general-purpose-agent", GPA_PATH, "http_error"));
    }
    calls.push(("LLM", "gpt-4o", LLM_PATH, "ok"));
    calls.push(("GPA", "general-purpose-agent", GPA_PATH, "circuit_open"));
    assert_logs(&s.host, &calls, &["error"; 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_fails_over_to_the_backup_and_the_stage_says_so() {
    let s = Stack::start(&[("GPA_BACKUP_DEPLOYMENTS", "gpa-backup")]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(503),
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(
            &decision_block("GPA"),
            &["_general-purpose-agent was unavailable (HTTP 503); answered by gpa-backup._\n\n"],
            "gpa-backup",
            CAPITAL
        )
    );
    assert_eq!(
        routes(&s.world),
        vec![
            route("core", "POST", LLM_PATH),
            route("core", "POST", GPA_PATH),
            route("core", "POST", BACKUP_PATH),
            route("core", "POST", LLM_PATH),
        ]
    );
    assert_eq!(s.world.requests()[2].json()["model"], "gpa-backup");
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "http_error"),
            ("GPA", "gpa-backup", BACKUP_PATH, "ok"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
        ],
        &["ok"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ums_fails_over_to_the_backup_endpoint_and_remembers_where_the_conversation_lives() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    // Nothing listens on the primary: the request provably never reached it.
    let (ums1, ums2) = (closed_port_url(), world.ums_backup_url());
    let host = WasiHost::start(&[
        ("DIAL_ENDPOINT", &world.core_url()),
        ("UMS_AGENT_ENDPOINT", &ums1),
        ("UMS_AGENT_BACKUP_ENDPOINTS", &ums2),
    ])
    .await;
    let note =
        "_primary endpoint was unavailable (unreachable); answered by backup endpoint 1._\n\n";

    let r = chat_stream(&host, KEY, &[user(KARPATHY)], None).await;
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[note.to_owned(), created("ums-b-conv-0001")],
            ums_state(&ums2, "ums-b-conv-0001"),
            "UMS[ums-b-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );
    // The next turn goes straight to the backup, where the conversation lives.
    let history = [user(KARPATHY), as_history(&r.events()), user(ADD_KARPATHY)];
    let r = chat_stream(&host, KEY, &history, None).await;
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[],
            ums_state(&ums2, "ums-b-conv-0001"),
            "UMS[ums-b-conv-0001#2]: No user named Andrej Karpathy was found."
        )
    );
    assert_eq!(
        routes(&world)
            .into_iter()
            .filter(|r| r.0 != "core")
            .collect::<Vec<_>>(),
        vec![
            route("ums-backup", "POST", "/conversations"),
            route("ums-backup", "POST", "/conversations/ums-b-conv-0001/chat"),
            route("ums-backup", "POST", "/conversations/ums-b-conv-0001/chat"),
        ]
    );
    assert_logs(
        &host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("UMS", &ums1, "/conversations", "connect_error"),
            ("UMS", &ums2, "/conversations", "ok"),
            ("UMS", &ums2, "/conversations/ums-b-conv-0001/chat", "ok"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("UMS", &ums2, "/conversations/ums-b-conv-0001/chat", "ok"),
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
        ],
        &["ok", "ok"],
    );
}

// ---------------------------------------------------------------------------
// Hardening: one user cannot trip the breaker, bounded reads, merge-proof signatures

/// A stack whose one instance serves every request: breaker states live in
/// the instance.
async fn reused_instance_stack() -> Stack {
    Stack::start_with_args(
        &[
            "--max-instance-reuse-count",
            "1000",
            "--idle-instance-timeout",
            "60s",
        ],
        &[],
    )
    .await
}

/// A streamed chat of the user `sub` (of the forwarded token) in `conversation`.
async fn chat_as(host: &WasiHost, sub: &str, conversation: &str) -> TimedResponse {
    let token = bearer(sub);
    let headers = [
        ("Api-Key", KEY),
        ("X-CONVERSATION-ID", conversation),
        ("Authorization", token.as_str()),
    ];
    let body = json!({"model": "mas-coordinator", "stream": true, "messages": [user(CAPITAL)]});
    let r = common::host::post_json_timed(&host.chat_url(), &headers, &body).await;
    assert_eq!(r.status, 200);
    r
}

/// What a stream that failed in coordination says.
fn coordination_failed(message: &str, display: &str) -> Vec<Value> {
    let mut want = vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
    ];
    want.extend(failed_tail(&[0], runtime_error(message, display)));
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_limit_of_one_user_never_opens_the_breaker_and_another_user_is_served() {
    let s = reused_instance_stack().await;
    s.world.set_fault(
        "routing",
        Fault {
            kind: FaultKind::Status,
            status: Some(429),
            ..Fault::default()
        },
    );
    // One user, three conversations, twice the breaker's threshold.
    for i in 0..10 {
        let r = chat_as(&s.host, "alice", &format!("alice-conv-{}", i % 3)).await;
        assert_eq!(
            deltas(&r.events()),
            coordination_failed(
                "LLM (gpt-4o) answered HTTP 429: a limit was reached; retry after 7 s",
                "The coordinator's language model reached a usage limit. Please try again in 7 s."
            )
        );
    }
    s.world.clear_faults();
    let r = chat_as(&s.host, "bob", "bob-conv").await;
    let d = deltas(&r.events());
    assert_eq!(d.last(), Some(&json!("[DONE]")));
    assert!(d.iter().all(|e| e.get("error").is_none()), "{d:?}");
    let health = get(&format!("{}/health?deep=1", s.host.url())).await;
    assert_eq!(
        health.json()["breakers"][0],
        json!({"service": "LLM", "target": "gpt-4o", "state": "closed"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_503s_seen_by_several_users_open_its_breaker() {
    let s = reused_instance_stack().await;
    s.world.set_fault(
        "routing",
        Fault {
            kind: FaultKind::Status,
            status: Some(503),
            ..Fault::default()
        },
    );
    for i in 0..5 {
        let r = chat_as(&s.host, &format!("user-{}", i % 2), "conv").await;
        assert_eq!(
            deltas(&r.events()),
            coordination_failed(
                "LLM (gpt-4o) answered HTTP 503",
                "The coordinator's language model failed (HTTP 503). Please try again in a moment."
            )
        );
    }
    let llm_calls = |w: &World| w.requests().iter().filter(|r| r.path == LLM_PATH).count();
    assert_eq!(llm_calls(&s.world), 5);
    let r = chat_as(&s.host, "carol", "conv").await;
    let d = deltas(&r.events());
    let message = d[d.len() - 2]["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(
            "LLM (gpt-4o) is skipped after repeated failures (circuit open, next try in "
        ),
        "{message}"
    );
    assert_eq!(llm_calls(&s.world), 5, "the LLM is not called while open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpa_tool_crashing_on_one_conversation_never_opens_the_breaker() {
    let s = reused_instance_stack().await;
    let crash = "Search the news [gpa:crash]";
    for _ in 0..7 {
        let r = chat_stream(&s.host, KEY, &[user(crash)], Some("noisy-conversation")).await;
        let d = deltas(&r.events());
        assert_eq!(
            d[d.len() - 2]["error"]["message"],
            "GPA (general-purpose-agent) reported an error: tool crashed"
        );
    }
    // Everybody else (and the noisy conversation itself) still reaches GPA.
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], Some("another-conversation")).await;
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(
            &decision_block("GPA"),
            &[],
            "general-purpose-agent",
            CAPITAL
        )
    );
    let health = get(&format!("{}/health?deep=1", s.host.url())).await;
    assert_eq!(
        health.json()["breakers"][1],
        json!({"service": "GPA", "target": "general-purpose-agent", "state": "closed"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_503_body_does_not_hold_the_call_and_the_backup_answers() {
    let s = Stack::start(&[
        ("GPA_BACKUP_DEPLOYMENTS", "gpa-backup"),
        ("UPSTREAM_TOTAL_TIMEOUT_MS", "5000"),
    ])
    .await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::DribbleError,
            status: Some(503),
            chunk_delay_ms: 1_000,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    assert_eq!(
        deltas(&r.events()),
        gpa_without_tools(
            &decision_block("GPA"),
            &["_general-purpose-agent was unavailable (HTTP 503); answered by gpa-backup._\n\n"],
            "gpa-backup",
            CAPITAL
        )
    );
    let took = r.finished_at() - r.sent_at;
    assert!(
        took < Duration::from_millis(2_500),
        "the dribble held the call for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lines_without_an_event_boundary_end_in_a_clear_error() {
    let s = Stack::start(&[]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::NoEventBoundary),
    );
    let r = chat_stream(&s.host, KEY, &[user(CAPITAL)], None).await;
    let mut want = opening("GPA");
    want.extend(failed_tail(
        &[1],
        runtime_error(
            "GPA (general-purpose-agent) sent too much: an event is larger than 8388608 bytes",
            "The General Purpose Agent sent more than the coordinator accepts. Please try again in a moment.",
        ),
    ));
    assert_eq!(deltas(&r.events()), want);
    assert_logs(
        &s.host,
        &[
            ("LLM", "gpt-4o", LLM_PATH, "ok"),
            ("GPA", "general-purpose-agent", GPA_PATH, "oversized"),
        ],
        &["error"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_stages_attachments_or_state_gets_a_clear_error() {
    let s = Stack::start(&[]).await;
    for (request, message) in [
        (
            "Do it [gpa:stages=5000]",
            "GPA (general-purpose-agent) sent too much: more than 256 stages",
        ),
        (
            "Do it [gpa:attachments=5000]",
            "GPA (general-purpose-agent) sent too much: more than 256 attachments",
        ),
        (
            "Do it [gpa:state-bytes=3000000]",
            "GPA (general-purpose-agent) sent too much: its state is larger than 1048576 bytes",
        ),
    ] {
        let r = chat_stream(&s.host, KEY, &[user(request)], None).await;
        let d = deltas(&r.events());
        assert_eq!(d[d.len() - 2]["error"]["message"], message);
        assert_eq!(d[d.len() - 3], json!("STOP"));
        assert_eq!(d[d.len() - 1], json!("[DONE]"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_reaches_the_synthesis_truncated_and_marked() {
    let s = Stack::start(&[]).await;
    let r = chat_stream(&s.host, KEY, &[user("Write [gpa:text-bytes=200000]")], None).await;
    let d = deltas(&r.events());
    assert_eq!(d.last().unwrap(), "[DONE]");
    let synthesis = s
        .world
        .requests()
        .into_iter()
        .rfind(|r| r.path == LLM_PATH)
        .unwrap();
    let last = synthesis.json()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(last.starts_with(&format!("## CONTEXT:\n{}", "x".repeat(65_536))));
    assert!(
        last.contains("\n\n[answer truncated: 65536 of "),
        "{}",
        &last[65_500..65_700]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_gpa_state_from_a_non_streaming_answer_verifies_on_the_next_turn() {
    let s = Stack::start(&[("STATE_SECRET", SECRET)]).await;
    let conv = "dial-conv-json";
    let search = "Search weather in Kyiv";
    let r = post_json(
        &s.host.chat_url(),
        &[("Api-Key", KEY), ("X-CONVERSATION-ID", conv)],
        &json!({"messages": [user(search)]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let state = r.json()["choices"][0]["message"]["custom_content"]["state"].clone();
    assert_eq!(
        state["gpa_messages"]["tool_call_history"][0]["tool_calls"][0].get("index"),
        None,
        "the merge removed the index inside the state"
    );
    let history = [
        user(search),
        json!({"role": "assistant", "content": "It rains.", "custom_content": {"state": state}}),
        user(CAPITAL),
    ];
    let r = chat_stream(&s.host, KEY, &history, Some(conv)).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[5],
        stage_content(
            1,
            &format!("GPA[general-purpose-agent] got 3 messages (user,assistant,user), 1 with tool_call_history; request: {CAPITAL}")
        ),
        "the signed state verified and GPA got its tool history back"
    );
}

// ---------------------------------------------------------------------------
// History replay (issue 24, item 4)

/// A 2 MiB user message and a 1.9 MiB answer whose state lists sixteen GPA
/// records with nothing in them (unsigned, or signed for `conv` with
/// `secret`): each record used to replay both, 62 MiB per GPA call. GPA now
/// gets the turn's two messages once and the question, less than the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_empty_records_never_multiplies_what_gpa_is_sent() {
    let conv = "dial-conv-replay";
    for secret in [None, Some(SECRET)] {
        let env: Vec<(&str, &str)> = secret.map(|s| ("STATE_SECRET", s)).into_iter().collect();
        let s = Stack::start(&env).await;
        let mut state = json!({"is_gpa": true, "agents": {"GPA": vec![json!({}); 16]}});
        if let Some(secret) = secret {
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let trust = mas_coordinator::memory::state::StateTrust {
                secret: Some(secret),
                binding: mas_coordinator::memory::state::Binding {
                    conversation: conv,
                    subject: "",
                    application: "",
                },
                now_s,
                ..Default::default()
            };
            state = mas_coordinator::memory::state::sign(state, &trust);
        }
        let history = [
            user(&"u".repeat(2 * 1024 * 1024)),
            json!({"role": "assistant", "content": "a".repeat(1_900 * 1024),
                   "custom_content": {"state": state}}),
            user(CAPITAL),
        ];
        let request_bytes =
            json!({"model": "mas-coordinator", "stream": true, "messages": history})
                .to_string()
                .len();
        let r = chat_stream(&s.host, KEY, &history, Some(conv)).await;
        let d = deltas(&r.events());
        assert_eq!(
            d[5],
            stage_content(
                1,
                &format!("GPA[general-purpose-agent] got 3 messages (user,assistant,user), 0 with tool_call_history; request: {CAPITAL}")
            ),
            "secret {secret:?}"
        );
        assert_eq!(d.last().unwrap(), "[DONE]");
        let sent: Vec<Recorded> = s
            .world
            .requests()
            .into_iter()
            .filter(|r| r.path == GPA_PATH)
            .collect();
        assert_eq!(sent.len(), 1);
        assert!(
            sent[0].body.len() <= 2 * request_bytes,
            "{} bytes sent for a request of {request_bytes}",
            sent[0].body.len()
        );
        assert_eq!(
            sent[0].json()["messages"],
            json!([history[0], {"role": "assistant", "content": "a".repeat(1_900 * 1024)}, user(CAPITAL)])
        );
    }
}

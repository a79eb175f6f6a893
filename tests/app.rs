//! The app without a host: endpoint dispatch, the body limit, health,
//! refusals and their log line, and the reply decisions, against a recording
//! responder and the scripted fakes (what `host.rs` only adapts to wasi:http).

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::fakes::{llm_stream, routing_reply, FakeClient, Reply, KEY};
use common::flow::{lookup, vars_with};
use futures::stream;
use mas_coordinator::app::{app, Answer, HttpRequest, Responder};
use mas_coordinator::flow::emitter::{ClientGone, Transport};
use serde_json::{json, Value};

/// What the app answered.
#[derive(Debug, Default, Clone, PartialEq)]
struct Answered {
    status: u16,
    content_type: String,
    allow: Option<String>,
    trace_id: String,
    body: Vec<u8>,
    head_only: bool,
    streamed: bool,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug, Default, Clone)]
struct Recorder(Rc<RefCell<Option<Answered>>>);

struct Streamed(Rc<RefCell<Option<Answered>>>);

impl Transport for Streamed {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        if let Some(a) = self.0.borrow_mut().as_mut() {
            a.body.extend_from_slice(bytes);
        }
        Ok(())
    }
}

impl Responder for Recorder {
    type Stream = Streamed;

    async fn answer(self, answer: Answer<'_>) {
        *self.0.borrow_mut() = Some(Answered {
            status: answer.status,
            content_type: answer.content_type.to_owned(),
            allow: answer.allow.map(str::to_owned),
            trace_id: answer.trace_id.to_owned(),
            body: answer.body,
            head_only: answer.head_only,
            streamed: false,
        });
    }

    fn stream(self, status: u16, trace_id: &str) -> Streamed {
        *self.0.borrow_mut() = Some(Answered {
            status,
            content_type: "text/event-stream; charset=utf-8".to_owned(),
            trace_id: trace_id.to_owned(),
            streamed: true,
            ..Answered::default()
        });
        Streamed(self.0)
    }
}

const TRACE: &str = "trace-app-1";
const CHAT: &str = "/openai/deployments/mas-coordinator/chat/completions";

/// Serves one request; `headers` as (lowercase name, value), the body in `chunks`.
fn serve(
    client: &FakeClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
    vars: Vec<(String, String)>,
) -> Answered {
    let mut all: Vec<(String, String)> = vec![("x-trace-id".into(), TRACE.into())];
    all.extend(
        headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    let header = move |name: &str| {
        all.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let recorder = Recorder::default();
    let request = HttpRequest {
        method,
        path,
        header: &header,
        body: stream::iter(chunks.into_iter().map(Ok::<_, ()>)),
    };
    let env = move |name: &str| lookup(&vars, name);
    client.run(app(client, request, &env, recorder.clone()));
    let answered = recorder.0.borrow().clone();
    answered.expect("the app answered")
}

fn get(client: &FakeClient, method: &str, path: &str) -> Answered {
    serve(client, method, path, &[], Vec::new(), vars_with(&[]))
}

fn error_answer(status: u16, kind: &str, message: &str, display: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": status.to_string(), "display_message": display}})
}

#[test]
fn an_unknown_path_is_a_404_with_its_trace_id_and_no_request_line() {
    let client = FakeClient::new();
    let a = get(&client, "GET", "/nope");
    assert_eq!((a.status, a.trace_id.as_str()), (404, TRACE));
    assert_eq!(a.content_type, "application/json");
    assert_eq!(
        a.json(),
        error_answer(
            404,
            "not_found_error",
            "No route for path /nope",
            "The coordinator does not serve this address."
        )
    );
    assert!(client.logs().is_empty(), "{:?}", client.logs());
}

#[test]
fn a_wrong_method_is_a_405_that_says_what_is_allowed() {
    let client = FakeClient::new();
    let a = get(&client, "GET", CHAT);
    assert_eq!((a.status, a.allow.as_deref()), (405, Some("POST")));
    assert_eq!(
        a.json()["error"]["message"],
        "Method GET is not allowed on this path (allowed: POST)"
    );
    let a = get(&client, "POST", "/health");
    assert_eq!((a.status, a.allow.as_deref()), (405, Some("GET, HEAD")));
}

#[test]
fn health_answers_get_and_head_alike_but_head_has_no_body() {
    let client = FakeClient::new();
    let get_answer = get(&client, "GET", "/health");
    assert_eq!((get_answer.status, get_answer.head_only), (200, false));
    assert_eq!(
        get_answer.json(),
        json!({"status": "ok", "breaker_store": "instance-memory", "state_signing": "off", "unsigned_state": "read", "request_deadline_ms": 300_000})
    );
    let head = get(&client, "HEAD", "/health");
    assert_eq!(
        (head.status, head.head_only, head.content_type.as_str()),
        (200, true, "application/json")
    );
    assert_eq!(head.trace_id, TRACE);
}

#[test]
fn liveness_says_only_that_the_component_serves_even_when_misconfigured() {
    let client = FakeClient::new();
    let bad = || vec![("MAX_PARALLEL".to_owned(), "99".to_owned())];
    let a = serve(&client, "GET", "/health/live", &[], Vec::new(), bad());
    assert_eq!((a.status, a.json()), (200, json!({"status": "alive"})));
    let a = serve(&client, "HEAD", "/health/live", &[], Vec::new(), bad());
    assert_eq!((a.status, a.head_only), (200, true));
    let a = serve(&client, "POST", "/health/live", &[], Vec::new(), bad());
    assert_eq!((a.status, a.allow.as_deref()), (405, Some("GET, HEAD")));
    assert!(client.requests().is_empty() && client.logs().is_empty());
}

#[test]
fn a_misconfigured_coordinator_says_so_on_health_and_refuses_chats_with_a_line() {
    let client = FakeClient::new();
    let bad = || vec![("MAX_PARALLEL".to_owned(), "99".to_owned())];
    let a = serve(&client, "GET", "/health", &[], Vec::new(), bad());
    assert_eq!(a.status, 500);
    assert_eq!(
        a.json(),
        json!({
            "status": "misconfigured",
            "error": {
                "message": "Invalid configuration: MAX_PARALLEL must be a whole number from 1 to 16",
                "type": "internal_server_error",
                "code": "500",
                "display_message": "The coordinator is misconfigured (MAX_PARALLEL). Please tell the administrator."
            },
            "problems": [{"variable": "MAX_PARALLEL", "reason": "must be a whole number from 1 to 16"}]
        })
    );
    assert!(client.logs().is_empty());
    let a = serve(
        &client,
        "POST",
        CHAT,
        &[("api-key", KEY)],
        Vec::new(),
        bad(),
    );
    assert_eq!(a.status, 500);
    let logs = client.logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["outcome"], "rejected");
    assert_eq!(logs[0]["status"], 500);
}

#[test]
fn a_body_over_the_limit_is_a_413_and_its_request_line_says_rejected() {
    let client = FakeClient::new();
    let config = vars_with(&[("MAX_REQUEST_BYTES", "1024")]);
    // The limit is checked as the body arrives, chunk by chunk.
    let chunks = vec![vec![b' '; 600], vec![b' '; 600]];
    let a = serve(&client, "POST", CHAT, &[("api-key", KEY)], chunks, config);
    assert_eq!(a.status, 413);
    assert_eq!(
        a.json()["error"]["message"],
        "Request body is larger than the limit of 1024 bytes"
    );
    let logs = client.logs();
    assert_eq!(logs.len(), 1);
    let mut line = logs[0].clone();
    assert!(line["ts_ms"].is_u64());
    line["ts_ms"] = json!(0);
    assert_eq!(
        line,
        json!({
            "ts_ms": 0,
            "level": "warn",
            "event": "request",
            "trace_id": TRACE,
            "span_id": line["span_id"],
            "parent_span_id": null,
            "status": 413,
            "outcome": "rejected",
            "error": "Request body is larger than the limit of 1024 bytes",
        })
    );
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
}

#[test]
fn invalid_json_and_a_missing_key_are_refused_before_any_call() {
    let client = FakeClient::new();
    let a = serve(
        &client,
        "POST",
        CHAT,
        &[("api-key", KEY)],
        vec![b"{not json".to_vec()],
        vars_with(&[]),
    );
    assert_eq!(a.status, 400);
    let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec();
    let a = serve(&client, "POST", CHAT, &[], vec![body], vars_with(&[]));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert!(client.requests().is_empty());
    let outcomes: Vec<Value> = client.logs().iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("rejected"), json!("rejected")]);
}

#[test]
fn more_than_one_choice_is_a_422_as_aidial_sdk_answers_it() {
    let client = FakeClient::new();
    let ask = |n: &str| {
        let body = format!(r#"{{"n":{n},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        serve(
            &client,
            "POST",
            CHAT,
            &[("api-key", KEY)],
            vec![body.into_bytes()],
            vars_with(&[]),
        )
    };
    let a = ask("2");
    assert_eq!(a.status, 422);
    assert_eq!(
        a.json(),
        error_answer(
            422,
            "invalid_request_error",
            "mas-coordinator deployment doesn't support n > 1",
            "mas-coordinator deployment doesn't support n > 1."
        )
    );
    let a = ask("0");
    assert_eq!(a.status, 400);
    assert_eq!(
        a.json()["error"]["message"],
        "Invalid request: n must be at least 1"
    );
    let a = ask("\"two\"");
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("n must be a whole number, at least 1"));
    assert!(client.requests().is_empty(), "nothing was called");
}

#[test]
fn rate_is_accepted_and_ignored() {
    let client = FakeClient::new();
    let a = get(&client, "POST", "/openai/deployments/mas-coordinator/rate");
    assert_eq!((a.status, a.body.as_slice()), (200, &b""[..]));
}

#[test]
fn a_chat_is_streamed_or_collected_as_the_request_asks() {
    let client = FakeClient::new()
        .on("gpt-4o/chat/completions", routing_reply("GPA", None))
        .on(
            "general-purpose-agent/chat/completions",
            llm_stream(&["Hi."]),
        )
        .on("gpt-4o/chat/completions", llm_stream(&["Hello!"]));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
    let a = serve(
        &client,
        "POST",
        CHAT,
        &[("api-key", KEY)],
        vec![body.to_string().into_bytes()],
        vars_with(&[]),
    );
    assert!(a.streamed);
    assert_eq!((a.status, a.trace_id.as_str()), (200, TRACE));
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    let client = FakeClient::new()
        .on("gpt-4o/chat/completions", routing_reply("GPA", None))
        .on(
            "general-purpose-agent/chat/completions",
            llm_stream(&["Hi."]),
        )
        .on("gpt-4o/chat/completions", llm_stream(&["Hello!"]));
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let a = serve(
        &client,
        "POST",
        CHAT,
        &[("api-key", KEY)],
        vec![body.to_string().into_bytes()],
        vars_with(&[]),
    );
    assert!(!a.streamed);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello!");
    let line = client.logs().pop().unwrap();
    assert_eq!(
        (line["mode"].clone(), line["outcome"].clone()),
        (json!("json"), json!("ok"))
    );
}

#[test]
fn a_collected_chat_whose_coordination_fails_is_an_http_error() {
    let client = FakeClient::new().on(
        "gpt-4o/chat/completions",
        Reply::json(500, json!({"error": {"message": "boom"}})),
    );
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let a = serve(
        &client,
        "POST",
        CHAT,
        &[("api-key", KEY)],
        vec![body.to_string().into_bytes()],
        vars_with(&[]),
    );
    assert!(!a.streamed);
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["error"]["type"], "runtime_error");
    let line = client.logs().pop().unwrap();
    assert_eq!(
        (line["status"].clone(), line["outcome"].clone()),
        (json!(500), json!("error"))
    );
}

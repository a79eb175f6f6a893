//! End-to-end tests of the local DIAL world over real sockets, with a tiny raw HTTP/1.1
//! client so that dropped connections and unterminated chunked bodies are observable.

use mas_world::{Fault, FaultKind, Recorded, World, WorldOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
struct Resp {
    /// 0 when the connection was closed without a response head.
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Whether the body was complete (chunked terminator / content-length reached).
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The payloads of the SSE events (`data: ` removed).
    fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or(e).to_owned())
            .collect()
    }
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

async fn send_raw(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut stream = TcpStream::connect(addr_of(url)).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        addr_of(url),
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: vec![],
            body: String::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        let mut body = Vec::new();
        let mut complete = false;
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                break;
            };
            rest = &rest[eol + 2..];
            if size == 0 {
                complete = rest.starts_with(b"\r\n");
                break;
            }
            if rest.len() < size + 2 {
                body.extend_from_slice(&rest[..rest.len().min(size)]);
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        (body, complete)
    } else {
        let len: Option<usize> = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        (rest.to_vec(), len.is_none_or(|l| l == rest.len()))
    };
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        complete,
    }
}

async fn post_json(url: &str, path: &str, body: &Value) -> Resp {
    send_raw(
        url,
        "POST",
        path,
        &[
            ("api-key", "test-key"),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

async fn world() -> World {
    World::start(WorldOptions::default())
        .await
        .expect("world starts")
}

const GPA: &str = "/openai/deployments/general-purpose-agent/chat/completions";
const LLM: &str = "/openai/deployments/gpt-4o/chat/completions";

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// Splits a Core chunk into its raw delta, checking the envelope byte by byte.
fn raw_delta<'a>(event: &'a str, id: &str, created: u64, finish: &str) -> &'a str {
    let prefix = format!(r#"{{"choices":[{{"index":0,"finish_reason":{finish},"delta":"#);
    let inner = event
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("bad chunk start: {event}"));
    let (delta, tail) = inner
        .rsplit_once(r#"}],"usage":"#)
        .unwrap_or_else(|| panic!("bad chunk: {event}"));
    let expected_tail =
        format!(r#","id":"{id}","created":{created},"object":"chat.completion.chunk"}}"#);
    assert!(tail.ends_with(&expected_tail), "bad envelope tail: {event}");
    delta
}

fn id_and_created(first_event: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(first_event).expect("json chunk");
    (
        v["id"].as_str().expect("id").to_owned(),
        v["created"].as_u64().expect("created"),
    )
}

/// The raw deltas of a complete Core stream, checking the framing, the role chunk, the
/// stop chunk and `[DONE]`; returns (deltas between role and stop, stop chunk usage).
fn core_deltas(resp: &Resp) -> (Vec<String>, Value) {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.complete);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(resp.body.ends_with("data: [DONE]\n\n"));
    let events = resp.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (id, created) = id_and_created(&events[0]);
    assert_eq!(
        raw_delta(&events[0], &id, created, "null"),
        r#"{"role":"assistant"}"#
    );
    let stop = &events[events.len() - 2];
    assert_eq!(raw_delta(stop, &id, created, r#""stop""#), "{}");
    let usage = serde_json::from_str::<Value>(stop).expect("stop json")["usage"].clone();
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    let deltas = events[1..events.len() - 2]
        .iter()
        .map(|e| {
            assert!(e.contains(r#""usage":null"#));
            raw_delta(e, &id, created, "null").to_owned()
        })
        .collect();
    (deltas, usage)
}

fn content_of(deltas: &[String]) -> String {
    deltas
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|d| d["content"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn world_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<World>();
}

#[tokio::test]
async fn refuses_non_loopback() {
    let opts = WorldOptions {
        core_addr: "0.0.0.0:0".parse().expect("addr"),
        ..WorldOptions::default()
    };
    assert!(World::start(opts).await.is_err());
}

#[tokio::test]
async fn routing_rules_over_http() {
    let w = world().await;
    let routing = |text: &str| {
        json!({"messages": [{"role":"system","content":"route!"}, user("earlier user question"),
            {"role":"assistant","content":"x"}, {"role":"user","content":[{"type":"text","text":text}]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": {}}}})
    };
    let cases = [
        (
            "What is the weather in Kyiv?",
            r#"{"agent_name":"GPA","additional_instructions":null}"#,
        ),
        (
            "Do we have Andrej Karpathy as a User?",
            r#"{"agent_name":"UMS","additional_instructions":null}"#,
        ),
        (
            "close my ACCOUNT",
            r#"{"agent_name":"UMS","additional_instructions":null}"#,
        ),
        (
            "[route:instructions] hi",
            r#"{"agent_name":"GPA","additional_instructions":"Be brief."}"#,
        ),
        (
            "[route:unknown] hi",
            r#"{"agent_name":"XYZ","additional_instructions":null}"#,
        ),
        ("[Route:Garbage] hi", "this is not json"),
    ];
    for (text, expected) in cases {
        let resp = post_json(&w.core_url(), LLM, &routing(text)).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let v = resp.json();
        assert_eq!(v["choices"][0]["message"]["content"], expected, "{text}");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o");
        assert!(v["usage"]["total_tokens"].is_u64());
    }
    assert!(resp_is_exact_order(
        &post_json(&w.core_url(), LLM, &routing("x")).await.body
    ));

    let plain = post_json(&w.core_url(), LLM, &json!({"messages": [user("hi")]})).await;
    assert_eq!(
        plain.json()["choices"][0]["message"]["content"],
        "Hello from the local LLM."
    );
}

fn resp_is_exact_order(body: &str) -> bool {
    body.starts_with(r#"{"id":"chatcmpl-world-"#)
        && body.contains(r#","object":"chat.completion","created":"#)
        && body.contains(
            r#","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"#,
        )
        && body.contains(r#"},"finish_reason":"stop"}],"usage":{"prompt_tokens":"#)
}

#[tokio::test]
async fn synthesis_streams_word_by_word() {
    let w = world().await;
    let last = "## CONTEXT:\n Weather in Kyiv: +5°C, light rain.  Done\n ---\n ## USER_REQUEST: \n What is the weather?";
    let body =
        json!({"stream": true, "messages": [{"role":"system","content":"final"}, user(last)]});
    let resp = post_json(&w.core_url(), LLM, &body).await;
    let (deltas, usage) = core_deltas(&resp);
    let expected = [
        "Based ", "on ", "the ", "agent's ", "answer: ", "Weather ", "in ", "Kyiv: ", "+5°C, ",
        "light ", "rain.  ", "Done",
    ];
    let expected: Vec<String> = expected
        .iter()
        .map(|p| format!(r#"{{"content":{}}}"#, json!(p)))
        .collect();
    assert_eq!(deltas, expected);
    assert_eq!(usage["completion_tokens"], 12);

    let resp = post_json(
        &w.core_url(),
        LLM,
        &json!({"stream": true, "messages": [user("no markers")]}),
    )
    .await;
    let (deltas, _) = core_deltas(&resp);
    assert_eq!(content_of(&deltas), "Hello from the local LLM.");
    assert_eq!(deltas.len(), 5);
}

#[tokio::test]
async fn gpa_weather_and_picture_exact_events() {
    let w = world().await;
    let t = "Search the weather in Kyiv and generate a \"picture\" of it";
    let body = json!({"stream": true, "model": "general-purpose-agent", "messages": [user(t)]});
    let resp = post_json(&w.core_url(), GPA, &body).await;
    let (deltas, _) = core_deltas(&resp);
    let q = r#"{\"query\":\"Search the weather in Kyiv and generate a \\\"picture\\\" of it\"}"#;
    let p = r#"{\"prompt\":\"Search the weather in Kyiv and generate a \\\"picture\\\" of it\"}"#;
    let url = "files/world-bucket/images/image-1.png";
    let expected = vec![
        r#"{"custom_content":{"stages":[{"index":0,"name":"web_search","status":null}]}}"#.to_owned(),
        format!(r###"{{"custom_content":{{"stages":[{{"index":0,"content":"## Request arguments: \n```json\n{q}\n```\n## Response: \n","status":null}}]}}}}"###),
        r#"{"custom_content":{"stages":[{"index":0,"content":"Kyiv: +5°C, light rain","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":0,"status":"completed"}]}}"#.to_owned(),
        r#"{"content":"Weather in Kyiv: +5°C, light rain. "}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":1,"name":"image_generation_tool","status":null}]}}"#.to_owned(),
        format!(r###"{{"custom_content":{{"stages":[{{"index":1,"content":"## Request arguments: \n```json\n{p}\n```\n","status":null}}]}}}}"###),
        format!(r#"{{"custom_content":{{"stages":[{{"index":1,"attachments":[{{"index":0,"type":"image/png","title":"Generated image","url":"{url}"}}],"status":null}}]}}}}"#),
        format!(r#"{{"content":"\n\r![image]({url})\n\r"}}"#),
        r#"{"custom_content":{"stages":[{"index":1,"status":"completed"}]}}"#.to_owned(),
        format!(r#"{{"content":{}}}"#, json!(format!("GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: {t}"))),
        format!(r#"{{"custom_content":{{"attachments":[{{"index":0,"type":"image/png","title":"image-1.png","url":"{url}"}}]}}}}"#),
        format!(
            concat!(
                r#"{{"custom_content":{{"state":{{"tool_call_history":["#,
                r#"{{"role":"assistant","content":"","custom_content":{{"attachments":[]}},"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"web_search","arguments":{qa}}}}}]}},"#,
                r#"{{"role":"tool","content":"Kyiv: +5°C, light rain","tool_call_id":"call_1","name":"web_search"}},"#,
                r#"{{"role":"assistant","content":"","custom_content":{{"attachments":[]}},"tool_calls":[{{"index":0,"id":"call_2","type":"function","function":{{"name":"image_generation_tool","arguments":{pa}}}}}]}},"#,
                r#"{{"role":"tool","content":"Generated image: {url}","tool_call_id":"call_2","name":"image_generation_tool"}}"#,
                r#"]}}}}}}"#
            ),
            qa = json!(json!({"query": t}).to_string()),
            pa = json!(json!({"prompt": t}).to_string()),
            url = url
        ),
    ];
    assert_eq!(deltas.len(), expected.len(), "{deltas:#?}");
    for (got, want) in deltas.iter().zip(&expected) {
        assert_eq!(got, want);
    }

    // The image counter is per world.
    let again = post_json(&w.core_url(), GPA, &body).await;
    assert!(again.body.contains("files/world-bucket/images/image-2.png"));
    assert!(!again.body.contains("image-1.png"));
}

#[tokio::test]
async fn gpa_history_nested_open_failed_and_other_names() {
    let w = world().await;
    let history = json!([
        user("Search the weather"),
        {"role": "assistant", "content": "It rains.", "custom_content": {"state": {"tool_call_history": []}}},
        {"role": "assistant", "content": "no state"},
        {"role": "assistant", "content": "bad", "custom_content": {"state": {"tool_call_history": "x"}}},
        user("Show nested [GPA:open-stage] [gpa:failed-stage] plan"),
    ]);
    let resp = post_json(
        &w.core_url(),
        "/openai/deployments/gpa-backup/chat/completions?api-version=2025-01-01-preview",
        &json!({"stream": true, "messages": history}),
    )
    .await;
    let (deltas, _) = core_deltas(&resp);
    let expected = [
        r#"{"custom_content":{"stages":[{"index":0,"name":"planner","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":0,"content":"plan","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":1,"name":"step_one","status":null,"parent_stage_index":0}]}}"#,
        r#"{"custom_content":{"stages":[{"index":1,"content":"step","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":1,"status":"completed"}]}}"#,
        r#"{"custom_content":{"stages":[{"index":0,"status":"completed"}]}}"#,
        r#"{"custom_content":{"stages":[{"index":2,"name":"left_open","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":2,"content":"never closed","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":3,"name":"failing_tool","status":null}]}}"#,
        r#"{"custom_content":{"stages":[{"index":3,"status":"failed"}]}}"#,
        r#"{"content":"GPA[gpa-backup] got 5 messages (user,assistant,assistant,assistant,user), 1 with tool_call_history; request: Show nested [GPA:open-stage] [gpa:failed-stage] plan"}"#,
        r#"{"custom_content":{"state":{"tool_call_history":[]}}}"#,
    ];
    assert_eq!(deltas, expected);

    // Non-streaming GPA calls are refused.
    let resp = post_json(&w.core_url(), GPA, &json!({"messages": [user("hi")]})).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["message"], "stream required");
}

#[tokio::test]
async fn llm_name_is_configurable() {
    let w = World::start(WorldOptions {
        llm_deployment: "local-llm".into(),
        ..WorldOptions::default()
    })
    .await
    .expect("world");
    let resp = post_json(
        &w.core_url(),
        "/openai/deployments/local-llm/chat/completions",
        &json!({"messages": [user("x")]}),
    )
    .await;
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "Hello from the local LLM."
    );
    // gpt-4o is now just another GPA.
    let resp = post_json(
        &w.core_url(),
        LLM,
        &json!({"stream": true, "messages": [user("x")]}),
    )
    .await;
    assert!(resp.body.contains("GPA[gpt-4o] got 1 messages"));
}

#[tokio::test]
async fn core_requires_api_key_and_valid_requests() {
    let w = world().await;
    let body = json!({"stream": true, "messages": [user("hi")]}).to_string();
    let resp = send_raw(
        &w.core_url(),
        "POST",
        GPA,
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.body,
        r#"{"error":{"message":"Missing API key","type":"invalid_request_error","code":"401"}}"#
    );
    let resp = send_raw(&w.core_url(), "POST", GPA, &[("API-KEY", "k")], &body).await;
    assert_eq!(resp.status, 200);

    let resp = send_raw(&w.core_url(), "POST", GPA, &[("api-key", "k")], "not json").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    let resp = post_json(&w.core_url(), GPA, &json!({"messages": "nope"})).await;
    assert_eq!(resp.status, 400);

    for (method, path) in [
        ("POST", "/openai/deployments/x/rate"),
        ("GET", GPA),
        ("POST", "/"),
    ] {
        let resp = send_raw(&w.core_url(), method, path, &[("api-key", "k")], "{}").await;
        assert_eq!(resp.status, 404, "{method} {path}");
        assert_eq!(resp.json()["error"]["code"], "404");
    }
}

#[tokio::test]
async fn ums_conversations_chat_and_memory() {
    let w = world().await;
    let ums = w.ums_url();
    let health = send_raw(&ums, "GET", "/health", &[], "").await;
    assert_eq!(
        health.body,
        r#"{"status":"healthy","conversation_manager_initialized":true}"#
    );

    let missing = send_raw(&ums, "POST", "/conversations", &[], "").await;
    assert_eq!(missing.status, 422);
    assert_eq!(
        missing.body,
        r#"{"detail":[{"type":"missing","loc":["body"],"msg":"Field required"}]}"#
    );

    let created = post_json(
        &ums,
        "/conversations",
        &json!({"title": "UMS Agent Conversation"}),
    )
    .await;
    assert_eq!(created.status, 200);
    let record = created.json();
    assert_eq!(record["id"], "ums-conv-0001");
    assert_eq!(record["title"], "UMS Agent Conversation");
    assert_eq!(record["messages"], json!([]));
    assert_eq!(record["created_at"], record["updated_at"]);
    assert!(record["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with("+00:00") && t.len() == 32));
    let second = post_json(&ums, "/conversations", &json!({})).await;
    assert_eq!(second.json()["id"], "ums-conv-0002");
    assert_eq!(second.json()["title"], Value::Null);

    let chat = json!({"message": {"role": "user", "content": "Do we have Andrej KARPATHY?"}, "stream": true});
    let resp = post_json(&ums, "/conversations/ums-conv-0001/chat", &chat).await;
    assert_eq!(resp.status, 200);
    assert!(resp.complete);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let mut expected = String::from("data: {\"conversation_id\": \"ums-conv-0001\"}\n\n");
    for piece in [
        "UMS[ums-conv-0001#1]: ",
        "No ",
        "user ",
        "named ",
        "Andrej ",
        "Karpathy ",
        "was ",
        "found.",
    ] {
        expected.push_str(&format!(
            "data: {{\"choices\": [{{\"delta\": {{\"content\": \"{piece}\"}}, \"index\": 0, \"finish_reason\": null}}]}}\n\n"
        ));
    }
    expected.push_str("data: {\"choices\": [{\"delta\": {}, \"index\": 0, \"finish_reason\": \"stop\"}]}\n\ndata: [DONE]\n\n");
    assert_eq!(resp.body, expected);

    // Second turn: the turn counter shows the memory; non-ASCII is escaped like Python.
    let chat = json!({"message": {"role": "user", "content": "Add Jan °C"}, "stream": true});
    let resp = post_json(&ums, "/conversations/ums-conv-0001/chat", &chat).await;
    assert!(resp
        .body
        .contains(r#"{"content": "UMS[ums-conv-0001#2]: "}"#));
    assert!(resp.body.contains(r#"{"content": "\u00b0C"}"#));

    let chat = json!({"message": {"role": "user", "content": "plain"}, "stream": false});
    let resp = post_json(&ums, "/conversations/ums-conv-0001/chat", &chat).await;
    assert_eq!(
        resp.body,
        r#"{"content":"UMS[ums-conv-0001#3]: Noted: plain","conversation_id":"ums-conv-0001"}"#
    );

    let record = send_raw(&ums, "GET", "/conversations/ums-conv-0001", &[], "")
        .await
        .json();
    assert_eq!(
        record["messages"],
        json!([
            {"role": "user", "content": "Do we have Andrej KARPATHY?"},
            {"role": "assistant", "content": "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."},
            {"role": "user", "content": "Add Jan °C"},
            {"role": "assistant", "content": "UMS[ums-conv-0001#2]: Noted: Add Jan °C"},
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": "UMS[ums-conv-0001#3]: Noted: plain"},
        ])
    );
    let list = send_raw(&ums, "GET", "/conversations", &[], "")
        .await
        .json();
    assert_eq!(list[0]["id"], "ums-conv-0001");
    assert_eq!(list[0]["message_count"], 6);

    let unknown = post_json(&ums, "/conversations/nope/chat", &chat).await;
    assert_eq!(unknown.status, 500);
    assert_eq!(unknown.body, "Internal Server Error");
    assert!(unknown
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let malformed = post_json(
        &ums,
        "/conversations/ums-conv-0001/chat",
        &json!({"stream": true}),
    )
    .await;
    assert_eq!(malformed.status, 422);

    let deleted = send_raw(&ums, "DELETE", "/conversations/ums-conv-0002", &[], "").await;
    assert_eq!(
        deleted.body,
        r#"{"message":"Conversation deleted successfully"}"#
    );
    let gone = send_raw(&ums, "GET", "/conversations/ums-conv-0002", &[], "").await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body, r#"{"detail":"Conversation not found"}"#);
    assert_eq!(send_raw(&ums, "GET", "/nope", &[], "").await.status, 404);
}

#[tokio::test]
async fn records_every_request_in_order() {
    let w = world().await;
    let body = json!({"stream": true, "messages": [user("hi")]});
    send_raw(
        &w.core_url(),
        "POST",
        &format!("{GPA}?api-version=2025-01-01-preview"),
        &[
            ("Api-Key", "per-request"),
            ("X-Conversation-Id", "conv%201"),
        ],
        &body.to_string(),
    )
    .await;
    post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    send_raw(&w.core_url(), "POST", GPA, &[], "{}").await; // refused, still recorded
    send_raw(&w.core_url(), "GET", "/_world/requests", &[], "").await; // not recorded

    let requests = w.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let first = &requests[0];
    assert_eq!(first.service, "core");
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, GPA);
    assert_eq!(
        first.query.as_deref(),
        Some("api-version=2025-01-01-preview")
    );
    assert_eq!(first.header("API-KEY"), Some("per-request"));
    assert_eq!(first.header("x-conversation-id"), Some("conv%201"));
    assert!(first
        .headers
        .iter()
        .all(|(n, _)| *n == n.to_ascii_lowercase()));
    let names: Vec<&str> = first.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "connection",
            "content-length",
            "api-key",
            "x-conversation-id"
        ]
    );
    assert_eq!(first.json(), body);
    assert_eq!(requests[1].service, "ums");
    assert_eq!(requests[1].path, "/conversations");
    assert_eq!(requests[1].query, None);
    assert_eq!(requests[2].json(), json!({}));
    assert_eq!(requests[2].header("api-key"), None);

    let over_http = send_raw(&w.core_url(), "GET", "/_world/requests", &[], "").await;
    let decoded: Vec<Recorded> = serde_json::from_str(&over_http.body).expect("recorded json");
    assert_eq!(decoded, requests);

    w.clear_requests();
    assert!(w.requests().is_empty());
    send_raw(&w.ums_url(), "GET", "/health", &[], "").await;
    assert_eq!(w.requests().len(), 1);
    let cleared = send_raw(&w.core_url(), "DELETE", "/_world/requests", &[], "").await;
    assert_eq!(cleared.status, 200);
    assert!(w.requests().is_empty());

    // A chunked request body is recorded decoded.
    let mut stream = TcpStream::connect(addr_of(&w.ums_url()))
        .await
        .expect("connect");
    stream
        .write_all(b"POST /conversations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"tit\r\n8\r\nle\":\"c\"}\r\n0\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    assert_eq!(w.requests()[0].body, r#"{"title":"c"}"#);
    assert!(String::from_utf8_lossy(&out).contains("ums-conv-0002"));
}

fn fault(kind: FaultKind) -> Fault {
    Fault {
        kind,
        ..Fault::default()
    }
}

#[tokio::test]
async fn fault_down_and_status() {
    let w = world().await;
    let stream_body = json!({"stream": true, "messages": [user("hi")]});
    w.set_fault("deployment:general-purpose-agent", fault(FaultKind::Down));
    let resp = post_json(&w.core_url(), GPA, &stream_body).await;
    assert_eq!(resp.status, 0, "{resp:?}");
    assert_eq!(w.requests().len(), 1, "a faulted request is still recorded");
    // Other deployments are unaffected.
    let ok = post_json(
        &w.core_url(),
        "/openai/deployments/gpa-backup/chat/completions",
        &stream_body,
    )
    .await;
    assert_eq!(ok.status, 200);

    w.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(503),
            ..Fault::default()
        },
    );
    let resp = post_json(&w.core_url(), GPA, &stream_body).await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.body,
        r#"{"error":{"message":"injected fault","type":"runtime_error","code":"503"}}"#
    );
    w.set_fault("ums", fault(FaultKind::Status));
    let resp = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.body, "Internal Server Error");
    w.clear_faults();
    let resp = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    assert_eq!(
        resp.json()["id"],
        "ums-conv-0001",
        "a Status fault does not run the handler"
    );
    assert_eq!(
        post_json(&w.core_url(), GPA, &stream_body).await.status,
        200
    );
}

#[tokio::test]
async fn fault_error_and_drop_mid_stream() {
    let w = world().await;
    let body = json!({"stream": true, "messages": [user("search the weather")]});
    w.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::ErrorMidStream),
    );
    let resp = post_json(&w.core_url(), GPA, &body).await;
    assert_eq!(resp.status, 200);
    assert!(resp.complete);
    let events = resp.events();
    assert_eq!(events.len(), 4, "{events:#?}");
    assert!(events[0].contains(r#""delta":{"role":"assistant"}"#));
    assert!(events[1].contains(r#""name":"web_search""#));
    assert_eq!(
        events[2],
        r#"{"error":{"message":"injected mid-stream error","type":"runtime_error","code":"500"}}"#
    );
    assert_eq!(events[3], "[DONE]");

    w.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::DropMidStream),
    );
    let resp = post_json(&w.core_url(), GPA, &body).await;
    assert_eq!(resp.status, 200);
    assert!(!resp.complete, "the chunked body must not be terminated");
    let events = resp.events();
    assert_eq!(events.len(), 2);
    assert!(!resp.body.contains("[DONE]"));

    // UMS: the conversation_id event and the first content event, then the cut.
    let conv = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"}))
        .await
        .json();
    w.set_fault("ums", fault(FaultKind::DropMidStream));
    let chat = json!({"message": {"role": "user", "content": "hello there"}, "stream": true});
    let path = format!(
        "/conversations/{}/chat",
        conv["id"].as_str().unwrap_or_default()
    );
    let resp = post_json(&w.ums_url(), &path, &chat).await;
    assert!(!resp.complete);
    assert_eq!(
        resp.events(),
        [
            r#"{"conversation_id": "ums-conv-0001"}"#,
            r#"{"choices": [{"delta": {"content": "UMS[ums-conv-0001#1]: "}, "index": 0, "finish_reason": null}]}"#
        ]
    );
    w.set_fault("ums", fault(FaultKind::ErrorMidStream));
    let resp = post_json(&w.ums_url(), &path, &chat).await;
    assert!(resp.complete);
    let events = resp.events();
    assert_eq!(events.len(), 4);
    assert!(events[2].starts_with(r#"{"error":"#));

    // Non-streaming answers: a 200 error body, or half a body and the cut.
    w.set_fault("routing", fault(FaultKind::ErrorMidStream));
    let resp = post_json(&w.core_url(), LLM, &json!({"messages": [user("x")]})).await;
    assert_eq!(
        (resp.status, resp.json()["error"]["message"].clone()),
        (200, json!("injected mid-stream error"))
    );
    w.set_fault("routing", fault(FaultKind::DropMidStream));
    let resp = post_json(&w.core_url(), LLM, &json!({"messages": [user("x")]})).await;
    assert_eq!(resp.status, 200);
    assert!(!resp.complete);
    assert!(resp.body.starts_with(r#"{"id":"#));
    assert_eq!(resp.json(), Value::Null);
}

#[tokio::test]
async fn fault_garbage() {
    let w = world().await;
    w.set_fault("synthesis", fault(FaultKind::Garbage));
    let resp = post_json(
        &w.core_url(),
        LLM,
        &json!({"stream": true, "messages": [user("x")]}),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body,
        "data: this is not json\n\ndata: this is not json\n\ndata: [DONE]\n\n"
    );
    w.set_fault("routing", fault(FaultKind::Garbage));
    let resp = post_json(&w.core_url(), LLM, &json!({"messages": [user("x")]})).await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "<html>not json</html>")
    );
    w.set_fault("ums", fault(FaultKind::Garbage));
    let resp = send_raw(&w.ums_url(), "GET", "/health", &[], "").await;
    assert_eq!(resp.body, "<html>not json</html>");
}

#[tokio::test]
async fn fault_hang_until_client_leaves() {
    let w = world().await;
    w.set_fault("deployment:general-purpose-agent", fault(FaultKind::Hang));
    let body = json!({"stream": true, "messages": [user("hi")]});
    let hung = tokio::time::timeout(
        Duration::from_millis(400),
        post_json(&w.core_url(), GPA, &body),
    )
    .await;
    assert!(hung.is_err(), "no response while hanging");
    // The world keeps serving other requests (and the hung one was recorded).
    let ok = post_json(
        &w.core_url(),
        "/openai/deployments/gpa-backup/chat/completions",
        &body,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(w.requests().len(), 2);
}

#[tokio::test]
async fn fault_precedence_and_delays() {
    let w = world().await;
    let routing = json!({"messages": [user("x")], "response_format": {"type": "json_schema"}});
    let synthesis = json!({"stream": true, "messages": [user("one two three four")]});
    w.set_fault(
        "deployment:gpt-4o",
        Fault {
            kind: FaultKind::Status,
            status: Some(502),
            ..Fault::default()
        },
    );
    w.set_fault(
        "routing",
        Fault {
            first_byte_delay_ms: 300,
            ..Fault::default()
        },
    );
    let start = Instant::now();
    let resp = post_json(&w.core_url(), LLM, &routing).await;
    assert_eq!(
        resp.status, 200,
        "the routing key wins over the deployment key"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(post_json(&w.core_url(), LLM, &synthesis).await.status, 502);

    w.clear_faults();
    w.set_fault(
        "synthesis",
        Fault {
            chunk_delay_ms: 50,
            ..Fault::default()
        },
    );
    let start = Instant::now();
    let resp = post_json(&w.core_url(), LLM, &synthesis).await;
    let (deltas, _) = core_deltas(&resp);
    assert_eq!(deltas.len(), 5); // "Hello from the local LLM."
                                 // 8 events → 7 gaps of 50 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn control_api_sets_faults() {
    let w = world().await;
    let core = w.core_url();
    let resp = send_raw(
        &core,
        "PUT",
        "/_world/faults/deployment:gpa-backup",
        &[],
        r#"{"kind":"status","status":418}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let body = json!({"stream": true, "messages": [user("hi")]});
    let backup = "/openai/deployments/gpa-backup/chat/completions";
    assert_eq!(post_json(&core, backup, &body).await.status, 418);
    let resp = send_raw(&core, "GET", "/_world/faults", &[], "").await;
    assert_eq!(resp.json()["deployment:gpa-backup"]["kind"], "status");
    let resp = send_raw(
        &core,
        "PUT",
        "/_world/faults/deployment%3Agpa-backup",
        &[],
        r#"{"kind":"down"}"#,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(post_json(&core, backup, &body).await.status, 0);
    assert_eq!(
        send_raw(
            &core,
            "PUT",
            "/_world/faults/nope",
            &[],
            r#"{"kind":"down"}"#
        )
        .await
        .status,
        400
    );
    assert_eq!(
        send_raw(
            &core,
            "PUT",
            "/_world/faults/ums",
            &[],
            r#"{"kind":"sideways"}"#
        )
        .await
        .status,
        400
    );
    assert_eq!(
        send_raw(&core, "DELETE", "/_world/faults", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(post_json(&core, backup, &body).await.status, 200);
    // Control requests are not recorded.
    assert_eq!(
        w.requests()
            .iter()
            .filter(|r| r.path.starts_with("/_world"))
            .count(),
        0
    );

    let fault: Fault =
        serde_json::from_str(r#"{"kind":"error_mid_stream","chunk_delay_ms":5}"#).expect("fault");
    assert_eq!(
        fault,
        Fault {
            kind: FaultKind::ErrorMidStream,
            status: None,
            first_byte_delay_ms: 0,
            chunk_delay_ms: 5
        }
    );
}

#[tokio::test]
#[should_panic(expected = "unknown fault target")]
async fn set_fault_rejects_typos() {
    world().await.set_fault("deployment", Fault::default());
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let w = world().await;
    let url = w.core_url();
    w.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr_of(&url)).await.is_err());
    w.shutdown();
}

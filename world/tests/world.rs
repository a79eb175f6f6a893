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
    /// The sizes of the body's chunks (chunked encoding only), in order.
    chunks: Vec<usize>,
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

/// A request whose response is read incrementally.
struct Pending {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl Pending {
    async fn start(
        url: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Pending {
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
        Pending {
            stream,
            raw: Vec::new(),
        }
    }

    /// Reads more; false at the end of the response.
    async fn read_more(&mut self) -> bool {
        // On the heap: a big array would make every future that awaits this one big.
        let mut buf = vec![0u8; 65536];
        match self.stream.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Reads until the raw response contains `needle`; false if it ended first.
    async fn read_until(&mut self, needle: &[u8]) -> bool {
        while !self.raw.windows(needle.len()).any(|w| w == needle) {
            if !self.read_more().await {
                return false;
            }
        }
        true
    }

    async fn finish(mut self) -> Resp {
        while self.read_more().await {}
        parse(&self.raw)
    }
}

async fn send_raw(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    Pending::start(url, method, path, headers, body)
        .await
        .finish()
        .await
}

fn parse(raw: &[u8]) -> Resp {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: vec![],
            body: String::new(),
            complete: false,
            chunks: vec![],
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
    let mut chunks = Vec::new();
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
            chunks.push(size);
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
        chunks,
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
    // Core's own health endpoint needs no key.
    let health = send_raw(&w.core_url(), "GET", "/health", &[], "").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
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
    // A message of the test's choosing, in either body.
    let said = |kind| Fault {
        kind,
        message: Some("MARKER key sk-1".to_owned()),
        ..Fault::default()
    };
    w.set_fault("deployment:general-purpose-agent", said(FaultKind::Status));
    let resp = post_json(&w.core_url(), GPA, &stream_body).await;
    assert_eq!(
        resp.body,
        r#"{"error":{"message":"MARKER key sk-1","type":"runtime_error","code":"500"}}"#
    );
    w.set_fault("ums", said(FaultKind::Status));
    let resp = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    assert_eq!((resp.status, resp.body.as_str()), (500, "MARKER key sk-1"));
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
            chunk_delay_ms: 5,
            message: None,
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

// ---------------------------------------------------------------------------------------
// Agent names from the schema, plans, the RAG agent, GPA keywords, new faults, backup UMS.

const RAG: &str = "/openai/deployments/rag-agent/chat/completions";

/// A structured-output request with `schema` (ENUM: whatever `schema` offers).
fn structured(messages: Value, schema: Value) -> Value {
    json!({"messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
}

/// The coordinator-like plan schema: ENUM = UMS, GPA, RAG_AGENT (the `$defs` copy first).
fn plan_schema() -> Value {
    json!({
        "$defs": {"Subtask": {"type": "object", "properties": {
            "task_id": {"type": "integer"},
            "agent_name": {"type": "string", "enum": ["UMS", "GPA"]},
            "task_description": {"type": "string"},
            "depends_on": {"type": "array", "items": {"type": "integer"}}}}},
        "type": "object",
        "properties": {
            "subtasks": {"type": "array", "items": {"$ref": "#/$defs/Subtask"}},
            "replan": {"type": "boolean"},
            "extra": {"properties": {"agent_name": {"enum": ["GPA", "RAG_AGENT"]}}}
        }
    })
}

/// The content of a non-streaming answer, checking its envelope and usage.
fn answer_content(resp: &Resp) -> String {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp_is_exact_order(&resp.body), "{}", resp.body);
    let v = resp.json();
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned();
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64(),
        Some(content.split_whitespace().count() as u64)
    );
    content
}

#[tokio::test]
async fn routing_by_mention_of_a_schema_agent() {
    let w = world().await;
    let schema = json!({"type": "object", "properties": {
        "agent_name": {"type": "string", "enum": ["UMS", "GPA", "Rag_Agent"]},
        "additional_instructions": {"type": ["string", "null"]}}});
    let route = |text: &str| {
        structured(
            json!([{"role": "system", "content": "route"}, user(text)]),
            schema.clone(),
        )
    };
    let cases = [
        (
            "Ask @RAG_agent about the user [route:garbage]",
            r#"{"agent_name":"Rag_Agent","additional_instructions":null}"#,
        ),
        // ENUM order decides between mentions.
        (
            "@rag_agent or @gpa",
            r#"{"agent_name":"GPA","additional_instructions":null}"#,
        ),
        // Names not offered by the schema are no mentions; the old rules apply.
        (
            "@RAG about a user",
            r#"{"agent_name":"UMS","additional_instructions":null}"#,
        ),
        ("rag_agent [route:garbage]", "this is not json"),
    ];
    for (text, expected) in cases {
        let resp = post_json(&w.core_url(), LLM, &route(text)).await;
        assert_eq!(answer_content(&resp), expected, "{text}");
    }
    // Only the last user message counts.
    let body = structured(
        json!([user("@rag_agent"), {"role": "assistant", "content": "@rag_agent"}, user("weather")]),
        schema,
    );
    assert_eq!(
        answer_content(&post_json(&w.core_url(), LLM, &body).await),
        r#"{"agent_name":"GPA","additional_instructions":null}"#
    );
}

#[tokio::test]
async fn plans_from_the_plan_schema() {
    let w = world().await;
    let plan_for = |last: Value| {
        let messages = json!([{"role": "system", "content": "plan!"}, user("earlier"), last]);
        structured(messages, plan_schema())
    };
    let ask = |text: &str| plan_for(user(text));
    let cases = [
        (
            ask("Do we have user John? Also, what's the weather in Paris?"),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"UMS","task_description":"Do we have user John?","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"what's the weather in Paris?","depends_on":[]}],"replan":false}"#
            ),
        ),
        (
            ask("Add Andrej Karpathy as a user and then find news about him"),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"UMS","task_description":"Add Andrej Karpathy as a user","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"find news about him","depends_on":[1]}],"replan":false}"#
            ),
        ),
        (
            // A mention picks the agent (ENUM includes names from anywhere in the schema);
            // "AND THEN" chains, empty parts are dropped; the last message may be any role.
            plan_for(
                json!({"role": "assistant", "content": [{"type": "text", "text": "Ask @rag_agent about accounts AND THEN  and then sum up"}]}),
            ),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"RAG_AGENT","task_description":"Ask @rag_agent about accounts","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"sum up","depends_on":[1]}],"replan":false}"#
            ),
        ),
        (ask("[Plan:Garbage] x"), "this is not json"),
        (
            ask("loop [plan:cycle]"),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"loop [plan:cycle]","depends_on":[2]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"loop [plan:cycle]","depends_on":[1]}],"replan":false}"#
            ),
        ),
        (
            ask("[plan:unknown-agent]"),
            r#"{"subtasks":[{"task_id":1,"agent_name":"XYZ","task_description":"[plan:unknown-agent]","depends_on":[]}],"replan":false}"#,
        ),
        (
            ask("[plan:replan-once] go"),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-once] go","depends_on":[]}],"replan":true}"#,
        ),
        (
            ask("[plan:replan-forever]"),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"round 1","depends_on":[]}],"replan":true}"#,
        ),
    ];
    for (body, expected) in cases {
        let resp = post_json(&w.core_url(), LLM, &body).await;
        assert_eq!(answer_content(&resp), expected);
    }
    let many = answer_content(&post_json(&w.core_url(), LLM, &ask("[plan:many]")).await);
    let many: Value = serde_json::from_str(&many).expect("plan json");
    let expected: Vec<Value> = (1..=12)
        .map(|i| json!({"task_id": i, "agent_name": "GPA", "task_description": format!("part {i}"), "depends_on": []}))
        .collect();
    assert_eq!(many, json!({"subtasks": expected, "replan": false}));

    // Re-plan rounds: the text before the marker decides, k = number of "### Task ".
    let replan = |t: &str, k: usize| {
        let mut text = format!("{t}\n\n## COMPLETED SUBTASKS:\n");
        for i in 1..=k {
            text.push_str(&format!("### Task {i} (GPA): done\n\n"));
        }
        ask(&text)
    };
    let rounds = [
        (
            replan("[plan:replan-forever]", 2),
            r#"{"subtasks":[{"task_id":3,"agent_name":"GPA","task_description":"round 3","depends_on":[]}],"replan":true}"#,
        ),
        (
            replan("[plan:replan-repeat] again", 1),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-repeat] again","depends_on":[]}],"replan":true}"#,
        ),
        (
            replan("[plan:replan-once] go", 1),
            r#"{"subtasks":[],"replan":false}"#,
        ),
        (
            replan("Do we have user John? Also, weather?", 2),
            r#"{"subtasks":[],"replan":false}"#,
        ),
        (replan("[plan:garbage]", 1), "this is not json"),
    ];
    for (body, expected) in rounds {
        let resp = post_json(&w.core_url(), LLM, &body).await;
        assert_eq!(answer_content(&resp), expected);
    }
    // `replan-repeat` in the first round gives the same plan.
    let first = post_json(&w.core_url(), LLM, &ask("[plan:replan-repeat] again")).await;
    assert_eq!(
        answer_content(&first),
        r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-repeat] again","depends_on":[]}],"replan":true}"#
    );
    // The routing fault target covers plans too.
    w.set_fault("routing", fault(FaultKind::Garbage));
    let resp = post_json(&w.core_url(), LLM, &ask("x")).await;
    assert_eq!(resp.body, "<html>not json</html>");
}

#[tokio::test]
async fn rag_agent_exact_events() {
    let w = world().await;
    let messages = json!([
        user("What do the docs say?"),
        {"role": "assistant", "content": "a", "custom_content": {"state": {"rag_turn": 1, "sources": ["source-9.md"]}}},
        {"role": "assistant", "content": "b", "custom_content": {"state": {"rag_turn": "1"}}},
        {"role": "user", "content": "c", "custom_content": {"state": {"rag_turn": 4}}},
        user("Find the refund policy"),
    ]);
    let body = json!({"stream": true, "messages": messages});
    let resp = post_json(&w.core_url(), RAG, &body).await;
    let (deltas, usage) = core_deltas(&resp);
    let source = r#"{"index":0,"type":"text/markdown","title":"source-1.md","url":"files/world-bucket/rag/source-1.md"}"#;
    let expected = [
        r#"{"custom_content":{"stages":[{"index":0,"name":"retrieve","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":0,"content":"Searching the knowledge base for: Find the refund policy","status":null}]}}"#.to_owned(),
        format!(r#"{{"custom_content":{{"stages":[{{"index":0,"attachments":[{source}],"status":null}}]}}}}"#),
        r#"{"custom_content":{"stages":[{"index":0,"status":"completed"}]}}"#.to_owned(),
        r#"{"content":"RAG[rag-agent] got 5 messages (user,assistant,assistant,user,user), 1 with rag state; request: Find the refund policy"}"#.to_owned(),
        format!(r#"{{"custom_content":{{"attachments":[{source}]}}}}"#),
        r#"{"custom_content":{"state":{"rag_turn":2,"sources":["source-1.md"]}}}"#.to_owned(),
    ];
    assert_eq!(deltas, expected);
    assert_eq!(
        usage,
        json!({"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26})
    );

    // The source counter is per world and separate from GPA's image counter.
    let again = post_json(
        &w.core_url(),
        "/openai/deployments/rag/chat/completions",
        &json!({"stream": true, "messages": [user("a picture")]}),
    )
    .await;
    let (deltas, _) = core_deltas(&again);
    assert!(
        deltas[4].starts_with(r#"{"content":"RAG[rag] got 1 messages (user), 0 with rag state"#)
    );
    assert!(again.body.contains("files/world-bucket/rag/source-2.md"));
    assert!(!again.body.contains("image-"));
    let gpa = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("a picture")]}),
    )
    .await;
    assert!(gpa.body.contains("image-1.png"));

    // Streaming only; the LLM name wins over the prefix.
    let resp = post_json(&w.core_url(), RAG, &json!({"messages": [user("hi")]})).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["message"], "stream required");
    let w = World::start(WorldOptions {
        llm_deployment: "rag-llm".into(),
        ..WorldOptions::default()
    })
    .await
    .expect("world");
    let resp = post_json(
        &w.core_url(),
        "/openai/deployments/rag-llm/chat/completions",
        &json!({"messages": [user("x")]}),
    )
    .await;
    assert_eq!(answer_content(&resp_with_model(resp, "rag-llm")), LLM_HELLO);
}

const LLM_HELLO: &str = "Hello from the local LLM.";

/// `resp` with its model renamed to gpt-4o, so `answer_content`'s layout check applies.
fn resp_with_model(mut resp: Resp, model: &str) -> Resp {
    resp.body = resp
        .body
        .replace(&format!(r#""model":"{model}""#), r#""model":"gpt-4o""#);
    resp
}

#[tokio::test]
async fn gpa_crash_and_http500() {
    let w = world().await;
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("search the weather [GPA:crash]")]}),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp.complete);
    let events = resp.events();
    assert_eq!(events.len(), 4, "{events:#?}");
    let (id, created) = id_and_created(&events[0]);
    assert_eq!(
        raw_delta(&events[0], &id, created, "null"),
        r#"{"role":"assistant"}"#
    );
    assert_eq!(
        raw_delta(&events[1], &id, created, "null"),
        r#"{"content":"Working. "}"#
    );
    assert_eq!(
        events[2],
        r#"{"error":{"message":"tool crashed","type":"runtime_error","code":"500"}}"#
    );
    assert_eq!(events[3], "[DONE]");

    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("[gpa:HTTP500] [gpa:crash]")]}),
    )
    .await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.body,
        r#"{"error":{"message":"GPA failed on this request","type":"runtime_error","code":"500"}}"#
    );
    // A content-caused error is not altered by a body fault.
    w.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::Garbage),
    );
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("[gpa:http500]")]}),
    )
    .await;
    assert_eq!(resp.status, 500);
}

#[tokio::test]
async fn gpa_slow_tool_pauses_after_working() {
    let w = world().await;
    let t = "[gpa:slow-tool=400] then answer";
    let body = json!({"stream": true, "messages": [user(t)]}).to_string();
    let start = Instant::now();
    let mut pending = Pending::start(&w.core_url(), "POST", GPA, &[("api-key", "k")], &body).await;
    assert!(pending.read_until(b"Working. ").await);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "the role chunk and `Working. ` come before the pause"
    );
    let resp = pending.finish().await;
    assert!(start.elapsed() >= Duration::from_millis(400));
    let (deltas, usage) = core_deltas(&resp);
    assert_eq!(
        deltas,
        [
            r#"{"content":"Working. "}"#.to_owned(),
            format!(
                r#"{{"content":"GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: {t}"}}"#
            ),
            r#"{"custom_content":{"state":{"tool_call_history":[]}}}"#.to_owned(),
        ]
    );
    assert_eq!(usage["completion_tokens"], 13);
}

#[tokio::test]
async fn gpa_bulk_keywords_exact() {
    let w = world().await;
    let t = "[gpa:stages=2] [gpa:attachments=2] [gpa:state-bytes=5] [gpa:text-bytes=2100] [GPA:open-stage]";
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user(t)]}),
    )
    .await;
    let (deltas, usage) = core_deltas(&resp);
    let x = |n: usize| "x".repeat(n);
    let expected = [
        r#"{"custom_content":{"stages":[{"index":0,"name":"left_open","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":0,"content":"never closed","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":1,"name":"bulk_0","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":1,"status":"completed"}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":2,"name":"bulk_1","status":null}]}}"#.to_owned(),
        r#"{"custom_content":{"stages":[{"index":2,"status":"completed"}]}}"#.to_owned(),
        format!(r#"{{"content":"{}"}}"#, x(1024)),
        format!(r#"{{"content":"{}"}}"#, x(1024)),
        format!(r#"{{"content":"{}"}}"#, x(52)),
        format!(r#"{{"content":"GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: {t}"}}"#),
        r#"{"custom_content":{"attachments":[{"index":0,"type":"text/plain","title":"a0.txt","url":"files/world-bucket/bulk/a0.txt"}]}}"#.to_owned(),
        r#"{"custom_content":{"attachments":[{"index":1,"type":"text/plain","title":"a1.txt","url":"files/world-bucket/bulk/a1.txt"}]}}"#.to_owned(),
        r#"{"custom_content":{"state":{"tool_call_history":[],"padding":"xxxxx"}}}"#.to_owned(),
    ];
    assert_eq!(deltas, expected);
    // The x run and the summary's first word are one word of the concatenated content.
    let words = content_of(&deltas).split_whitespace().count();
    assert_eq!(words, 14);
    assert_eq!(usage["completion_tokens"], 14);

    // After the image attachment, bulk indices continue while titles start at a0.
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("a picture [gpa:attachments=2] [gpa:stages=0]")]}),
    )
    .await;
    let (deltas, _) = core_deltas(&resp);
    let n = deltas.len();
    assert_eq!(
        deltas[n - 4..n - 1],
        [
            r#"{"custom_content":{"attachments":[{"index":0,"type":"image/png","title":"image-1.png","url":"files/world-bucket/images/image-1.png"}]}}"#,
            r#"{"custom_content":{"attachments":[{"index":1,"type":"text/plain","title":"a0.txt","url":"files/world-bucket/bulk/a0.txt"}]}}"#,
            r#"{"custom_content":{"attachments":[{"index":2,"type":"text/plain","title":"a1.txt","url":"files/world-bucket/bulk/a1.txt"}]}}"#,
        ]
    );
    assert!(!resp.body.contains("bulk_"));
}

#[tokio::test]
async fn gpa_large_bulk_answers() {
    let w = world().await;
    let state_bytes = 5_000_000;
    let text_bytes = 300_000;
    let t = format!(
        "search [gpa:state-bytes={state_bytes}] [gpa:text-bytes={text_bytes}] [gpa:stages=3000] [gpa:attachments=3000]"
    );
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user(&t)]}),
    )
    .await;
    let (deltas, usage) = core_deltas(&resp);
    // web_search (5) + 2 × 3000 stages + 293 pieces + summary + 3000 attachments + state.
    assert_eq!(deltas.len(), 5 + 6000 + 293 + 1 + 3000 + 1);
    let content = content_of(&deltas);
    assert_eq!(
        content.matches('x').count() - t.matches('x').count(),
        text_bytes
    );
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        Some(content.split_whitespace().count() as u64)
    );
    let stages: Vec<&String> = deltas.iter().filter(|d| d.contains("bulk_")).collect();
    assert_eq!(
        stages[2999],
        r#"{"custom_content":{"stages":[{"index":3000,"name":"bulk_2999","status":null}]}}"#
    );
    let state: Value = serde_json::from_str(&deltas[deltas.len() - 1]).expect("state json");
    let padding = state["custom_content"]["state"]["padding"]
        .as_str()
        .expect("padding");
    assert_eq!(padding.len(), state_bytes);
    assert!(padding.bytes().all(|b| b == b'x'));
    assert_eq!(
        state["custom_content"]["state"]["tool_call_history"][1]["name"],
        "web_search"
    );
    assert_eq!(
        deltas[deltas.len() - 2],
        r#"{"custom_content":{"attachments":[{"index":2999,"type":"text/plain","title":"a2999.txt","url":"files/world-bucket/bulk/a2999.txt"}]}}"#
    );
}

#[tokio::test]
async fn fault_dribble_error() {
    let w = world().await;
    const BODY: &str = "Service Unavailable: the upstream is overloaded, please retry later.";
    w.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::DribbleError,
            chunk_delay_ms: 5,
            ..Fault::default()
        },
    );
    let body = json!({"stream": true, "messages": [user("hi")]});
    let start = Instant::now();
    let resp = post_json(&w.core_url(), GPA, &body).await;
    assert!(start.elapsed() >= Duration::from_millis(5 * (BODY.len() as u64 - 1)));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert!(resp.complete);
    assert_eq!(resp.body, BODY);
    assert_eq!(resp.chunks, vec![1; BODY.len()], "one byte per frame");

    // The status is configurable; the handler does not run (no UMS side effects).
    w.set_fault(
        "ums",
        Fault {
            kind: FaultKind::DribbleError,
            status: Some(502),
            chunk_delay_ms: 1,
            ..Fault::default()
        },
    );
    let resp = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    assert_eq!((resp.status, resp.body.as_str()), (502, BODY));
    w.clear_faults();
    let resp = post_json(&w.ums_url(), "/conversations", &json!({"title": "t"})).await;
    assert_eq!(resp.json()["id"], "ums-conv-0001");

    // chunk_delay_ms 0 means one byte per second.
    let resp = send_raw(
        &w.core_url(),
        "PUT",
        "/_world/faults/synthesis",
        &[],
        r#"{"kind":"dribble_error"}"#,
    )
    .await;
    assert_eq!(resp.status, 200);
    let mut pending = Pending::start(
        &w.core_url(),
        "POST",
        LLM,
        &[("api-key", "k")],
        &body.to_string(),
    )
    .await;
    assert!(pending.read_until(b"\r\n1\r\nS\r\n").await);
    let first = Instant::now();
    assert!(pending.read_until(b"\r\n1\r\ne\r\n").await);
    assert!(first.elapsed() >= Duration::from_millis(900));
    assert!(String::from_utf8_lossy(&pending.raw).starts_with("HTTP/1.1 503"));
}

/// Checks a prefix of a `no_event_boundary` body: whole 64 KiB chunks of 1024-byte
/// `data: xxx…` lines and never an event boundary.
fn check_no_boundary(resp: &Resp) {
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(!resp.body.contains("\n\n"));
    let whole = resp.chunks.len() - 1;
    assert!(resp.chunks[..whole].iter().all(|&size| size == 65_536));
    let line = format!("data: {}\n", "x".repeat(1017));
    let complete = &resp.body[..whole * 65_536];
    assert_eq!(complete, line.repeat(whole * 64));
}

#[tokio::test]
async fn fault_no_event_boundary() {
    let w = world().await;
    w.set_fault(
        "deployment:general-purpose-agent",
        fault(FaultKind::NoEventBoundary),
    );
    let body = json!({"stream": true, "messages": [user("a picture")]}).to_string();
    let mut pending = Pending::start(&w.core_url(), "POST", GPA, &[("api-key", "k")], &body).await;
    while pending.raw.len() < 1_000_000 {
        assert!(pending.read_more().await, "the body goes on");
    }
    let resp = parse(&pending.raw);
    assert!(!resp.complete);
    check_no_boundary(&resp);
    drop(pending); // the client goes away; the world carries on

    // The handler did not run: the image counter is untouched.
    w.clear_faults();
    let resp = post_json(
        &w.core_url(),
        GPA,
        &json!({"stream": true, "messages": [user("a picture")]}),
    )
    .await;
    assert!(resp.body.contains("image-1.png"));

    // With a frame delay (here on the UMS), frames are paced.
    w.set_fault(
        "ums",
        Fault {
            kind: FaultKind::NoEventBoundary,
            chunk_delay_ms: 100,
            ..Fault::default()
        },
    );
    let start = Instant::now();
    let mut pending = Pending::start(&w.ums_url(), "GET", "/health", &[], "").await;
    while parse(&pending.raw).chunks.len() < 4 {
        assert!(pending.read_more().await);
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    check_no_boundary(&parse(&pending.raw));
}

#[tokio::test]
async fn fault_no_event_boundary_stops_after_256_mib() {
    let w = world().await;
    w.set_fault("ums-backup", fault(FaultKind::NoEventBoundary));
    let mut stream = TcpStream::connect(addr_of(&w.ums_backup_url()))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut total = 0usize;
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(16);
                tail.drain(..keep);
            }
        }
    }
    // 4096 chunks of 64 KiB, each framed as "10000\r\n…\r\n", then the terminator.
    let body_bytes = 4096 * (65_536 + 9) + 5;
    assert!(total > body_bytes && total < body_bytes + 1024, "{total}");
    assert!(tail.ends_with(b"\r\n0\r\n\r\n"), "a terminated body");
}

#[tokio::test]
async fn ums_backup_is_a_separate_instance() {
    let w = world().await;
    assert_ne!(w.ums_backup_url(), w.ums_url());
    let (ums, backup) = (w.ums_url(), w.ums_backup_url());
    let health = send_raw(&backup, "GET", "/health", &[], "").await;
    assert_eq!(
        health.body,
        r#"{"status":"healthy","conversation_manager_initialized":true}"#
    );
    let created = post_json(&backup, "/conversations", &json!({"title": "b"})).await;
    assert_eq!(created.json()["id"], "ums-b-conv-0001");
    let created = post_json(&ums, "/conversations", &json!({"title": "p"})).await;
    assert_eq!(created.json()["id"], "ums-conv-0001", "own counters");
    let chat = json!({"message": {"role": "user", "content": "hi"}, "stream": false});
    let resp = post_json(&backup, "/conversations/ums-b-conv-0001/chat", &chat).await;
    assert_eq!(
        resp.body,
        r#"{"content":"UMS[ums-b-conv-0001#1]: Noted: hi","conversation_id":"ums-b-conv-0001"}"#
    );
    let streamed = json!({"message": {"role": "user", "content": "Karpathy?"}});
    let resp = post_json(&backup, "/conversations/ums-b-conv-0001/chat", &streamed).await;
    assert!(resp
        .body
        .starts_with("data: {\"conversation_id\": \"ums-b-conv-0001\"}\n\ndata: {\"choices\": [{\"delta\": {\"content\": \"UMS[ums-b-conv-0001#2]: \"}"));
    // Own stores.
    let gone = send_raw(&backup, "GET", "/conversations/ums-conv-0001", &[], "").await;
    assert_eq!(gone.status, 404);
    let list = send_raw(&ums, "GET", "/conversations", &[], "")
        .await
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let list = send_raw(&backup, "GET", "/conversations", &[], "")
        .await
        .json();
    assert_eq!(list[0]["message_count"], 4);

    let services: Vec<String> = w.requests().into_iter().map(|r| r.service).collect();
    assert_eq!(
        services,
        [
            "ums-backup",
            "ums-backup",
            "ums",
            "ums-backup",
            "ums-backup",
            "ums-backup",
            "ums",
            "ums-backup"
        ]
    );

    // `ums` faults the primary only, `ums-backup` the backup only.
    w.set_fault("ums", fault(FaultKind::Status));
    assert_eq!(send_raw(&ums, "GET", "/health", &[], "").await.status, 500);
    assert_eq!(
        send_raw(&backup, "GET", "/health", &[], "").await.status,
        200
    );
    let resp = send_raw(
        &w.core_url(),
        "PUT",
        "/_world/faults/ums-backup",
        &[],
        r#"{"kind":"status","status":503}"#,
    )
    .await;
    assert_eq!(resp.status, 200);
    let resp = send_raw(&backup, "GET", "/health", &[], "").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (503, "Internal Server Error")
    );
    w.clear_faults();
    w.set_fault("ums-backup", fault(FaultKind::Down));
    assert_eq!(send_raw(&backup, "GET", "/health", &[], "").await.status, 0);
    assert_eq!(send_raw(&ums, "GET", "/health", &[], "").await.status, 200);

    let resp = send_raw(
        &w.core_url(),
        "PUT",
        "/_world/faults/ums-b",
        &[],
        r#"{"kind":"down"}"#,
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["error"]["message"],
        r#"unknown fault target "ums-b": use routing, synthesis, ums, ums-backup or deployment:<name>"#
    );
    let resp = send_raw(
        &w.core_url(),
        "PUT",
        "/_world/faults/ums",
        &[],
        r#"{"kind":"no_event_boundary","chunk_delay_ms":3}"#,
    )
    .await;
    assert_eq!(
        resp.body,
        r#"{"target":"ums","fault":{"kind":"no_event_boundary","status":null,"first_byte_delay_ms":0,"chunk_delay_ms":3}}"#
    );
}

#[tokio::test]
async fn backup_ums_address_is_configurable() {
    let opts = WorldOptions {
        ums_backup_addr: "10.1.2.3:0".parse().expect("addr"),
        ..WorldOptions::default()
    };
    assert!(World::start(opts).await.is_err(), "loopback only");
    assert_eq!(
        WorldOptions::default().ums_backup_addr.to_string(),
        "127.0.0.1:0"
    );
}

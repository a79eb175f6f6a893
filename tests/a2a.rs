//! The `a2a` agent kind natively, against scripted fakes that answer as the
//! official A2A SDK 1.3 does (the shapes of its 1.0 and 0.3 JSON-RPC answers):
//! exact chunks of a streamed task, the same output at every split of the
//! stream, the blocking method, the context kept across turns, files and data,
//! failures, and what never reaches the agent.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::fakes::*;
use common::flow::*;
use common::wire::{content, stage_close, stage_content, stage_open, state};
use mas_coordinator::memory::endpoint_tag;
use serde_json::{json, Value};

const LLM: &str = "/deployments/gpt-4o/chat/completions";
const BASE: &str = "http://weather.test";
const CARD: &str = "/.well-known/agent-card.json";
const RPC: &str = "/a2a/jsonrpc";
const PARIS: &str = "Weather in Paris?";
const TASK: &str = "task-1";
const CONTEXT: &str = "ctx-7f3a";

fn weather_env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars = vec![
        ("AGENTS", "GPA,UMS,WEATHER"),
        ("AGENT_WEATHER_KIND", "a2a"),
        ("AGENT_WEATHER_ENDPOINT", BASE),
        (
            "AGENT_WEATHER_DESCRIPTION",
            "Answers weather questions for any city.",
        ),
    ];
    vars.extend_from_slice(extra);
    vars
}

/// A card as the SDK serves it (1.0 and 0.3 interfaces), its JSON-RPC endpoint at `rpc`.
fn card(rpc: &str, streaming: bool) -> Value {
    let url = format!("{BASE}{rpc}");
    json!({"name": "Weather Agent", "description": "Answers weather questions for any city.",
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}],
        "version": "1.0.0", "capabilities": {"streaming": streaming},
        "skills": [{"id": "weather", "name": "Weather", "description": "Tells the weather in a city.", "tags": ["weather"]}],
        "preferredTransport": "JSONRPC", "protocolVersion": "0.3", "url": url})
}

fn rpc(result: Value) -> Value {
    json!({"result": result, "id": 1, "jsonrpc": "2.0"})
}

fn status(state: &str, text: Option<&str>) -> Value {
    let mut status = json!({"state": state});
    if let Some(text) = text {
        status["message"] = json!({"messageId": "m", "contextId": CONTEXT, "taskId": TASK,
            "role": "ROLE_AGENT", "parts": [{"text": text}]});
    }
    rpc(json!({"statusUpdate": {"taskId": TASK, "contextId": CONTEXT, "status": status}}))
}

fn artifact(parts: Value, append: bool) -> Value {
    let mut update = json!({"taskId": TASK, "contextId": CONTEXT,
        "artifact": {"artifactId": "answer-1", "name": "answer", "parts": parts}});
    if append {
        update["append"] = json!(true);
        update["lastChunk"] = json!(true);
    }
    rpc(json!({"artifactUpdate": update}))
}

fn submitted() -> Value {
    rpc(
        json!({"task": {"id": TASK, "contextId": CONTEXT, "status": {"state": "TASK_STATE_SUBMITTED"}}}),
    )
}

/// The SDK's stream of a task answered "A2A[1]: Weather in Paris?" in two chunks.
fn paris_events() -> Vec<Value> {
    vec![
        submitted(),
        status("TASK_STATE_WORKING", Some("Looking into it.")),
        artifact(json!([{"text": "A2A[1]: Weat"}]), false),
        artifact(json!([{"text": "her in Paris?"}]), true),
        status("TASK_STATE_COMPLETED", None),
    ]
}

/// An SSE body as the SDK frames it (CRLF line ends), without `[DONE]`.
fn sse_body(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect::<String>()
        .into_bytes()
}

fn routed_to_weather(client: FakeClient) -> FakeClient {
    client.on(LLM, routing_reply("WEATHER", None))
}

fn paris_expected() -> Vec<Value> {
    vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
        stage_content(0, &common::wire::decision_block("WEATHER")),
        stage_close(0, "completed"),
        stage_open(1, "Call WEATHER Agent", None),
        stage_content(1, "Looking into it."),
        stage_content(1, "\n\n"),
        stage_content(1, "A2A[1]: Weat"),
        stage_content(1, "her in Paris?"),
        stage_close(1, "completed"),
        state(
            json!({"agents": {"WEATHER": {"conversation_id": CONTEXT, "endpoint": endpoint_tag(BASE)}}}),
        ),
        content("Paris: sunny."),
        json!("STOP"),
        json!("[DONE]"),
    ]
}

#[test]
fn a_streamed_task_is_mirrored_and_its_artifact_is_the_answer() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), Some("chat-1"));
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&paris_events()))]))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(deltas(&events), paris_expected());
    let requests = client.requests();
    assert_eq!(requests.len(), 4);
    // The card is read before the coordination call.
    assert_eq!(requests[0].url, format!("{BASE}{CARD}"));
    assert!(requests[1].url.ends_with(LLM));
    assert_eq!(requests[2].url, format!("{BASE}{RPC}"));
    assert_eq!(requests[2].header_value("a2a-version"), Some("1.0"));
    // Traced like every call: the card and the message carry the request's trace.
    for r in [&requests[0], &requests[2]] {
        let traceparent = r.header_value("traceparent").unwrap();
        assert!(traceparent.starts_with("00-"), "{traceparent}");
    }
    assert_eq!(
        requests[2].header_value("accept"),
        Some("text/event-stream")
    );
    let body = body_json(&requests[2]);
    assert_eq!(body["method"], "SendStreamingMessage");
    assert_eq!(body["params"]["message"]["role"], "ROLE_USER");
    assert_eq!(body["params"]["message"]["parts"], json!([{"text": PARIS}]));
    assert!(body["params"]["message"].get("contextId").is_none());
    // Never DIAL's key, nor any credential it was not configured with.
    for r in [&requests[0], &requests[2]] {
        assert_eq!(r.header_value("api-key"), None);
        assert_eq!(r.header_value("authorization"), None);
        assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
    }
    // The synthesis reads the artifact's text.
    let synthesis = body_json(&requests[3]);
    let last = synthesis["messages"].as_array().unwrap().last().unwrap();
    assert!(last["content"]
        .as_str()
        .unwrap()
        .starts_with("## CONTEXT:\nA2A[1]: Weather in Paris?\n---"));
}

#[test]
fn the_same_answer_at_every_split_of_the_stream() {
    let body = sse_body(&paris_events());
    for cut in 1..body.len() {
        let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), Some("chat-1"));
        let client = routed_to_weather(FakeClient::new())
            .on(CARD, Reply::json(200, card(RPC, true)))
            .on(
                RPC,
                Reply::Http(
                    200,
                    vec![Ok(body[..cut].to_vec()), Ok(body[cut..].to_vec())],
                ),
            )
            .on(LLM, llm_stream(&["Paris: sunny."]));
        let (events, _) = run_stream(&ctx, &client);
        assert_eq!(deltas(&events), paris_expected(), "split at {cut}");
    }
}

#[test]
fn the_context_is_continued_on_the_next_turn() {
    let first_state = json!({"agents": {"WEATHER": {"conversation_id": CONTEXT, "endpoint": endpoint_tag(BASE)}}});
    let ctx = context_with(
        config_with(&weather_env(&[])),
        json!({"stream": true, "messages": [
            {"role": "user", "content": PARIS},
            {"role": "assistant", "content": "Paris: sunny.", "custom_content": {"state": first_state}},
            {"role": "user", "content": "And in Rome?"},
        ]}),
        Some("chat-1"),
    );
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&paris_events()))]))
        .on(LLM, llm_stream(&["Rome: sunny."]));
    run_stream(&ctx, &client);
    let body = body_json(&client.requests()[2]);
    assert_eq!(body["params"]["message"]["contextId"], CONTEXT);
    // Only the current message: the agent keeps its own history.
    assert_eq!(
        body["params"]["message"]["parts"],
        json!([{"text": "And in Rome?"}])
    );
}

#[test]
fn a_card_without_streaming_gets_the_blocking_method() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let task = rpc(json!({"task": {"id": TASK, "contextId": CONTEXT,
        "status": {"state": "TASK_STATE_COMPLETED"},
        "artifacts": [{"artifactId": "a", "name": "answer", "parts": [{"text": "A2A[1]: Weather in Paris?"}]}]}}));
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, false)))
        .on(RPC, Reply::json(200, task))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_content(1, "A2A[1]: Weather in Paris?"));
    assert_eq!(d[6], stage_close(1, "completed"));
    let body = body_json(&client.requests()[2]);
    assert_eq!(body["method"], "SendMessage");
    assert_eq!(
        client.requests()[2].header_value("accept"),
        Some("application/json")
    );
}

#[test]
fn a_0_3_card_is_spoken_to_in_0_3() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let url = format!("{BASE}{RPC}");
    let old_card = json!({"name": "Weather", "description": "d", "url": url,
        "protocolVersion": "0.3.0", "preferredTransport": "JSONRPC", "capabilities": {"streaming": true}});
    let events = [
        json!({"jsonrpc": "2.0", "id": 1, "result": {"kind": "task", "id": TASK, "contextId": CONTEXT, "status": {"state": "submitted"}}}),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"kind": "status-update", "taskId": TASK, "contextId": CONTEXT, "final": false,
            "status": {"state": "working", "message": {"kind": "message", "role": "agent", "messageId": "m", "parts": [{"kind": "text", "text": "Looking into it."}]}}}}),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"kind": "artifact-update", "taskId": TASK, "contextId": CONTEXT,
            "artifact": {"artifactId": "a", "parts": [{"kind": "text", "text": "A2A[1]: Weather in Paris?"}]}}}),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"kind": "status-update", "taskId": TASK, "contextId": CONTEXT, "final": true,
            "status": {"state": "completed"}}}),
    ];
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, old_card))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&events))]))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_content(1, "Looking into it."));
    assert_eq!(d[7], stage_content(1, "A2A[1]: Weather in Paris?"));
    assert_eq!(d[8], stage_close(1, "completed"));
    let request = &client.requests()[2];
    assert_eq!(request.header_value("a2a-version"), None);
    let body = body_json(request);
    assert_eq!(body["method"], "message/stream");
    assert_eq!(
        body["params"]["message"],
        json!({"kind": "message", "messageId": "1111111111111111-weather-eaafa6d2", "role": "user",
               "parts": [{"kind": "text", "text": PARIS}]})
    );
}

#[test]
fn files_become_attachments_and_data_is_shown_as_json() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let events = vec![
        submitted(),
        artifact(json!([{"text": "Report attached."}]), false),
        rpc(
            json!({"artifactUpdate": {"taskId": TASK, "contextId": CONTEXT, "artifact": {"artifactId": "f", "parts": [
            {"raw": "aGVsbG8=", "filename": "hello.txt", "mediaType": "text/plain"},
            {"url": "https://example.com/report.pdf", "filename": "report.pdf", "mediaType": "application/pdf"},
            {"raw": "/wA=", "filename": "blob.bin", "mediaType": "application/octet-stream"},
            {"url": "javascript:alert(1)", "filename": "click.html", "mediaType": "text/html"},
            {"data": {"temperature": 5, "unit": "C"}}]}}}),
        ),
        status("TASK_STATE_COMPLETED", None),
    ];
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&events))]))
        .on(LLM, llm_stream(&["Done."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[5..11],
        [
            stage_content(1, "Report attached."),
            json!({"custom_content": {"attachments": [{"index": 0, "type": "text/plain", "title": "hello.txt", "data": "hello"}]}}),
            json!({"custom_content": {"attachments": [{"index": 1, "type": "application/pdf", "title": "report.pdf", "url": "https://example.com/report.pdf"}]}}),
            stage_content(1, "_File \"blob.bin\" (2 bytes) was left out: it is not text, and only text can be attached inline._\n\n"),
            stage_content(1, "_File \"click.html\" was left out: it has neither text nor an http(s) link._\n\n"),
            stage_content(1, "\n```json\n{\n  \"temperature\": 5,\n  \"unit\": \"C\"\n}\n```\n"),
        ]
    );
    assert_eq!(d[11], stage_close(1, "completed"));
}

#[test]
fn a_failed_task_fails_its_subtask_with_the_agent_s_message() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let events = vec![
        submitted(),
        status("TASK_STATE_WORKING", None),
        status("TASK_STATE_FAILED", Some("The agent failed on purpose.")),
    ];
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&events))]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_content(1, "The agent failed on purpose."));
    assert_eq!(d[7], stage_close(1, "failed"));
    let error = d.iter().find(|e| e.get("error").is_some()).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("its task failed: The agent failed on purpose."),
        "{message}"
    );
    assert_eq!(d.last(), Some(&json!("[DONE]")));
}

#[test]
fn a_stream_that_ends_before_its_task_finished_is_truncated() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let events = vec![submitted(), status("TASK_STATE_WORKING", Some("Working."))];
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&events))]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    let error = d.iter().find(|e| e.get("error").is_some()).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended before its task finished"),
        "{error}"
    );
}

#[test]
fn an_agent_whose_card_cannot_be_used_is_unavailable_for_the_request_only() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    let mut evil = card(RPC, true);
    evil["supportedInterfaces"][0]["url"] = json!("http://evil.test/a2a/jsonrpc");
    evil["supportedInterfaces"][1]["url"] = json!("http://evil.test/a2a/jsonrpc");
    let client = FakeClient::new()
        .on(CARD, Reply::json(200, evil))
        // The LLM still names WEATHER: it is not registered for this request.
        .on(LLM, routing_reply("WEATHER", None))
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[chunk(json!({"content": "Paris: sunny."})), stop_chunk()]),
        )
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[2],
        stage_content(0, "_Agent WEATHER is unavailable for this request: WEATHER (primary endpoint) sent malformed data: its agent card puts its JSON-RPC endpoint on another origin than its endpoint._\n\n")
    );
    assert_eq!(d[5], stage_open(1, "Call GPA Agent", None));
    assert_eq!(d.last(), Some(&json!("[DONE]")));
    assert!(!d.iter().any(|e| e.get("error").is_some()));
    let requests = client.requests();
    // Nothing was sent to the other origin, and the LLM was not offered WEATHER.
    assert!(requests.iter().all(|r| !r.url.contains("evil.test")));
    let routing = body_json(&requests[1]);
    let names =
        &routing["response_format"]["json_schema"]["schema"]["properties"]["agent_name"]["enum"];
    assert_eq!(names, &json!(["GPA", "UMS"]));
}

#[test]
fn the_agent_s_own_credential_goes_with_every_call_and_only_to_it() {
    let ctx = context_with(
        config_with(&weather_env(&[
            ("AGENT_WEATHER_AUTH_HEADER", "X-Weather-Key"),
            ("AGENT_WEATHER_AUTH_VALUE", "wk-secret-123"),
        ])),
        ask(PARIS),
        None,
    );
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&paris_events()))]))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    run_stream(&ctx, &client);
    let requests = client.requests();
    for r in [&requests[0], &requests[2]] {
        assert_eq!(r.header_value("x-weather-key"), Some("wk-secret-123"));
    }
    for r in [&requests[1], &requests[3]] {
        assert_eq!(r.header_value("x-weather-key"), None);
    }
    // The configuration never shows it.
    assert!(!format!("{:?}", ctx.config).contains("wk-secret-123"));
}

#[test]
fn an_agent_that_asks_ends_the_turn_with_its_question_and_the_answer_goes_to_its_task() {
    const SECRET: &str = "a2a-asking-secret-0123456789";
    let env = weather_env(&[("STATE_SECRET", SECRET)]);
    let ctx = context_with(
        config_with(&env),
        ask("[a2a:ask] weather please"),
        Some("chat-9"),
    );
    let events = vec![
        submitted(),
        status("TASK_STATE_INPUT_REQUIRED", Some("Which city?")),
    ];
    // No synthesis: the stream ends with the question.
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&events))]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    let pending = json!({"kind": "agent", "agent": "WEATHER", "task": TASK, "context": CONTEXT,
        "endpoint": endpoint_tag(BASE), "question": "Which city?"});
    let expected_state = mas_coordinator::memory::state::sign(
        json!({"agents": {"WEATHER": {"conversation_id": CONTEXT, "endpoint": endpoint_tag(BASE)}},
               "pending": pending}),
        &ctx.state_trust(),
    );
    assert_eq!(
        d[4..],
        [
            stage_open(1, "Call WEATHER Agent", None),
            stage_content(1, "Which city?"),
            stage_content(1, "\n\n"),
            stage_close(1, "completed"),
            content("Which city?"),
            state(expected_state.clone()),
            json!("STOP"),
            json!("[DONE]"),
        ]
    );
    assert_eq!(
        client.requests().len(),
        3,
        "routing, card, message: no synthesis"
    );

    // The user answers: no coordination call, the answer goes to the same task.
    let next = context_with(
        config_with(&env),
        json!({"stream": true, "messages": [
            {"role": "user", "content": "[a2a:ask] weather please"},
            {"role": "assistant", "content": "Which city?", "custom_content": {"state": expected_state}},
            {"role": "user", "content": "Kyiv"},
        ]}),
        Some("chat-9"),
    );
    let done = vec![
        rpc(
            json!({"task": {"id": TASK, "contextId": CONTEXT, "status": {"state": "TASK_STATE_WORKING"}}}),
        ),
        artifact(json!([{"text": "Forecast for Kyiv: sunny"}]), false),
        status("TASK_STATE_COMPLETED", None),
    ];
    let client = FakeClient::new()
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&done))]))
        .on(LLM, llm_stream(&["Kyiv: sunny."]));
    let (events, _) = run_stream(&next, &client);
    let d = deltas(&events);
    let plan = "```json\n{\n  \"subtasks\": [\n    {\n      \"task_id\": 1,\n      \"agent_name\": \"WEATHER\",\n      \"task_description\": \"Kyiv\",\n      \"depends_on\": []\n    }\n  ],\n  \"replan\": false\n}\n```\n";
    assert_eq!(
        d[2],
        stage_content(
            0,
            &format!("_The WEATHER agent asked a question in the previous turn: this message is the answer, so it goes to WEATHER without a coordination call._\n\n{plan}")
        )
    );
    let requests = client.requests();
    assert_eq!(requests.len(), 3, "card, message, synthesis");
    let body = body_json(&requests[1]);
    assert_eq!(body["params"]["message"]["taskId"], TASK);
    assert_eq!(body["params"]["message"]["contextId"], CONTEXT);
    assert_eq!(
        body["params"]["message"]["parts"],
        json!([{"text": "Kyiv"}])
    );
    // The new state has nothing pending.
    let last_state = d
        .iter()
        .find_map(|e| e.pointer("/custom_content/state"))
        .unwrap();
    assert!(last_state.get("pending").is_none());
    assert_eq!(d.last(), Some(&json!("[DONE]")));
}

#[test]
fn a_stored_task_s_artifact_of_several_text_parts_is_one_answer() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    // What the SDK's blocking SendMessage returns: the appended chunks are parts.
    let task = rpc(json!({"task": {"id": TASK, "contextId": CONTEXT,
        "status": {"state": "TASK_STATE_COMPLETED"},
        "artifacts": [{"artifactId": "a", "name": "answer",
                       "parts": [{"text": "A2A[1]: Weat"}, {"text": "her in Paris?"}]}]}}));
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, false)))
        .on(RPC, Reply::json(200, task))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    run_stream(&ctx, &client);
    let synthesis = body_json(&client.requests()[3]);
    let last = synthesis["messages"].as_array().unwrap().last().unwrap();
    assert!(last["content"]
        .as_str()
        .unwrap()
        .starts_with("## CONTEXT:\nA2A[1]: Weather in Paris?\n---"));
}

#[test]
fn an_error_answered_as_json_to_a_streaming_call_is_the_agent_s_error() {
    let ctx = context_with(config_with(&weather_env(&[])), ask(PARIS), None);
    // The SDK answers a stream that fails before its first event as one JSON document.
    let error =
        json!({"error": {"code": -32001, "message": "Task not found"}, "id": 1, "jsonrpc": "2.0"});
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, card(RPC, true)))
        .on(RPC, Reply::json(200, error));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_close(1, "failed"));
    let error = d.iter().find(|e| e.get("error").is_some()).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Task not found"),
        "{error}"
    );
}

#[test]
fn cards_are_kept_in_the_store_read_again_when_old_and_dropped_after_a_failed_call() {
    use mas_coordinator::client::MemoryStore;
    use std::rc::Rc;
    let clock = Rc::new(Clock::default());
    let store = Rc::new(MemoryStore::default());
    let env = weather_env(&[("CARD_TTL_S", "60")]);
    let turn = |unix_ms: u64, rpc: Reply, with_card: bool| {
        let client = FakeClient::sharing(clock.clone(), store.clone());
        if with_card {
            client.push(CARD, Reply::json(200, card(RPC, true)));
        }
        client.push(LLM, routing_reply("WEATHER", None));
        client.push(RPC, rpc);
        client.push(LLM, llm_stream(&["ok"]));
        let ctx = context_at(config_with(&env), ask(PARIS), None, unix_ms);
        run_stream(&ctx, &client);
        client
            .requests()
            .iter()
            .filter(|r| r.url.ends_with(CARD))
            .count()
    };
    let ok = || Reply::Http(200, vec![Ok(sse_body(&paris_events()))]);
    let t0 = UNIX_EPOCH_MS;
    assert_eq!(turn(t0, ok(), true), 1, "the first request reads the card");
    assert_eq!(turn(t0 + 30_000, ok(), false), 0, "kept for 60 s");
    assert_eq!(turn(t0 + 61_000, ok(), true), 1, "read again when older");
    // The agent's call fails: its card is dropped, and read again next time.
    assert_eq!(turn(t0 + 62_000, Reply::Refused, false), 0);
    assert_eq!(turn(t0 + 63_000, ok(), true), 1);
}

#[test]
fn without_a_description_the_prompt_describes_the_agent_from_its_card() {
    let env: Vec<(&str, &str)> = weather_env(&[])
        .into_iter()
        .filter(|(k, _)| *k != "AGENT_WEATHER_DESCRIPTION")
        .collect();
    let ctx = context_with(config_with(&env), ask(PARIS), None);
    let mut with_examples = card(RPC, true);
    with_examples["skills"][0]["examples"] = json!(["Weather in Kyiv?", "Will it rain\nin Rome?"]);
    let client = routed_to_weather(FakeClient::new())
        .on(CARD, Reply::json(200, with_examples))
        .on(RPC, Reply::Http(200, vec![Ok(sse_body(&paris_events()))]))
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(deltas(&events), paris_expected());
    let routing = body_json(&client.requests()[1]);
    let prompt = routing["messages"][0]["content"].as_str().unwrap();
    assert!(
        prompt.contains("- WEATHER: Answers weather questions for any city. Skills: Weather: Tells the weather in a city. (e.g. \"Weather in Kyiv?\", \"Will it rain in Rome?\").\n"),
        "{prompt}"
    );
    // The same description in the schema's agent list.
    let schema = routing["response_format"]["json_schema"]["schema"].to_string();
    assert!(schema.contains("WEATHER: Answers weather questions for any city."));
}

#[test]
fn an_unreachable_card_leaves_the_other_agents_working() {
    let ctx = context_with(config_with(&weather_env(&[])), ask("hello"), None);
    let client = FakeClient::new()
        .on(CARD, Reply::Refused)
        .on(LLM, routing_reply("GPA", None))
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[chunk(json!({"content": "Hi."})), stop_chunk()]),
        )
        .on(LLM, llm_stream(&["Hi."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    let stage0 = d[2]["custom_content"]["stages"][0]["content"]
        .as_str()
        .unwrap();
    assert!(
        stage0.starts_with("_Agent WEATHER is unavailable for this request: WEATHER (primary endpoint) could not be reached"),
        "{stage0}"
    );
    assert_eq!(d.last(), Some(&json!("[DONE]")));
    assert!(!d.iter().any(|e| e.get("error").is_some()));
}

#[test]
fn cards_and_messages_fail_over_to_a_backup_endpoint() {
    const BACKUP: &str = "http://weather-b.test";
    let env = weather_env(&[("AGENT_WEATHER_BACKUPS", BACKUP)]);
    // The primary's card is read, but its JSON-RPC endpoint refuses: the
    // message goes to the same path on the backup.
    let ctx = context_with(config_with(&env), ask(PARIS), None);
    let client = FakeClient::new()
        .on(
            &format!("weather.test{CARD}"),
            Reply::json(200, card(RPC, true)),
        )
        .on(LLM, routing_reply("WEATHER", None))
        .on(&format!("weather.test{RPC}"), Reply::Refused)
        .on(
            &format!("weather-b.test{RPC}"),
            Reply::Http(200, vec![Ok(sse_body(&paris_events()))]),
        )
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert!(d.contains(&stage_content(1, "A2A[1]: Weat")), "{d:?}");
    let urls: Vec<String> = client.requests().iter().map(|r| r.url.clone()).collect();
    assert_eq!(urls[2], format!("{BASE}{RPC}"));
    assert_eq!(urls[3], format!("{BACKUP}{RPC}"));
    // The context is kept with the endpoint that holds it.
    let state = d
        .iter()
        .find_map(|e| e.pointer("/custom_content/state"))
        .unwrap();
    assert_eq!(
        state["agents"]["WEATHER"]["endpoint"],
        json!(endpoint_tag(BACKUP))
    );

    // The primary's card cannot be read: the backup's is, and the message goes there.
    let ctx = context_with(config_with(&env), ask(PARIS), None);
    let backup_card = {
        let mut c = card(RPC, true);
        let url = format!("{BACKUP}{RPC}");
        c["supportedInterfaces"][0]["url"] = json!(url);
        c["supportedInterfaces"][1]["url"] = json!(url);
        c
    };
    let client = FakeClient::new()
        .on(&format!("weather.test{CARD}"), Reply::Refused)
        .on(
            &format!("weather-b.test{CARD}"),
            Reply::json(200, backup_card),
        )
        .on(LLM, routing_reply("WEATHER", None))
        .on(
            &format!("weather-b.test{RPC}"),
            Reply::Http(200, vec![Ok(sse_body(&paris_events()))]),
        )
        .on(LLM, llm_stream(&["Paris: sunny."]));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert!(d.contains(&stage_content(1, "A2A[1]: Weat")), "{d:?}");
    assert_eq!(client.requests()[3].url, format!("{BACKUP}{RPC}"));
}

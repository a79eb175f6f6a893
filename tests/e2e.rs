//! End to end: the BUILT component (`target/wasm32-wasip2/release/mas_coordinator.wasm`)
//! served by `wasmtime serve`, talking over real HTTP to the local DIAL world
//! (`mas_world`), driven by a real HTTP client. Covers the seed's three examples
//! with exact event sequences, non-streaming mode, where the per-request key may
//! go, that streaming is progressive, and bad input through the real host.
//!
//! Build the component first:
//! `cargo build --release --target wasm32-wasip2 -p mas-coordinator`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::host::{get, post_json, send, sse_events, Stack, WasiHost};
use common::turns::{
    as_history, chat_stream, closing, created, gpa_expected, opening, ums_expected, ums_state,
};
use common::wire::*;
use mas_coordinator::memory::endpoint_tag;
use mas_coordinator::wire::response::cleanup_indices;
use mas_world::{Fault, FaultKind, Recorded, World};
use serde_json::{json, Map, Value};

/// A distinctive per-request key, so any leak is easy to find.
const KEY: &str = "sk-e2e-PER-REQUEST-9f3c1d7a";
const KARPATHY: &str = "Do we have Andrej Karpathy as a user?";
const WEATHER: &str = "Search weather in Kyiv and generate a picture";
const ADD_KARPATHY: &str = "Add Andrej Karpathy as a user";
const NIGHT: &str = "Now make the picture a night scene";
const GPA_PATH: &str = "/openai/deployments/general-purpose-agent/chat/completions";
const LLM_PATH: &str = "/openai/deployments/gpt-4o/chat/completions";

async fn setup(extra_env: &[(&str, &str)]) -> Stack {
    Stack::start(extra_env).await
}

fn image_url(n: u32) -> String {
    format!("files/world-bucket/images/image-{n}.png")
}

fn tool_call(k: u32, tool: &str, arguments: &Value, result: &str) -> [Value; 2] {
    let id = format!("call_{k}");
    [
        json!({"role": "assistant", "content": "", "custom_content": {"attachments": []},
               "tool_calls": [{"index": 0, "id": id, "type": "function",
                               "function": {"name": tool, "arguments": arguments.to_string()}}]}),
        json!({"role": "tool", "content": result, "tool_call_id": id, "name": tool}),
    ]
}

/// What the world's GPA streams for `request` (world docs, GPA steps 1–6) and
/// how it must come out of the coordinator: mirrored stages from index 2 under
/// stage 1, GPA's text in stage 1, the choice attachment, and our state.
struct GpaScript {
    /// Expected deltas from the GPA stage's first event to its close.
    deltas: Vec<Value>,
    /// GPA's text (what goes to synthesis).
    text: String,
    /// GPA's own state.
    gpa_state: Value,
    /// GPA's choice attachments, as remembered in our state.
    attachments: Vec<Value>,
}

fn gpa_script(request: &str, received: &str, image: Option<u32>) -> GpaScript {
    let tl = request.to_lowercase();
    let mut d = Vec::new();
    let mut text = String::new();
    let mut history = Vec::new();
    let mut next_stage = 2;
    let mut k = 1;
    if tl.contains("weather") || tl.contains("search") {
        let i = next_stage;
        next_stage += 1;
        let args = json!({"query": request});
        d.push(stage_open(i, "web_search", Some(1)));
        d.push(stage_content(
            i,
            &format!("## Request arguments: \n```json\n{args}\n```\n## Response: \n"),
        ));
        d.push(stage_content(i, "Kyiv: +5°C, light rain"));
        d.push(stage_close(i, "completed"));
        let summary = "Weather in Kyiv: +5°C, light rain. ";
        d.push(stage_content(1, summary));
        text.push_str(summary);
        history.extend(tool_call(k, "web_search", &args, "Kyiv: +5°C, light rain"));
        k += 1;
    }
    let mut attachment = None;
    let mut remembered = Vec::new();
    if let Some(n) = image {
        let j = next_stage;
        let url = image_url(n);
        let args = json!({"prompt": request});
        d.push(stage_open(j, "image_generation_tool", Some(1)));
        d.push(stage_content(
            j,
            &format!("## Request arguments: \n```json\n{args}\n```\n"),
        ));
        d.push(json!({"custom_content": {"stages": [{"index": j, "status": null,
            "attachments": [{"index": 0, "type": "image/png", "title": "Generated image", "url": url}]}]}}));
        let markdown = format!("\n\r![image]({url})\n\r");
        d.push(stage_content(1, &markdown));
        text.push_str(&markdown);
        d.push(stage_close(j, "completed"));
        attachment = Some(json!({"custom_content": {"attachments": [
            {"index": 0, "type": "image/png", "title": format!("image-{n}.png"), "url": url}]}}));
        remembered
            .push(json!({"type": "image/png", "title": format!("image-{n}.png"), "url": url}));
        history.extend(tool_call(
            k,
            "image_generation_tool",
            &args,
            &format!("Generated image: {url}"),
        ));
    }
    let summary = format!("GPA[general-purpose-agent] got {received}; request: {request}");
    d.push(stage_content(1, &summary));
    text.push_str(&summary);
    d.extend(attachment);
    let gpa_state = json!({"tool_call_history": history});
    d.push(stage_close(1, "completed"));
    d.push(state(our_gpa_state(&gpa_state, &text, &remembered)));
    GpaScript {
        deltas: d,
        text,
        gpa_state,
        attachments: remembered,
    }
}

/// Our state for a GPA turn: GPA's own state under the reference's keys, and
/// GPA's answer and attachments for its next turn.
fn our_gpa_state(gpa_state: &Value, text: &str, attachments: &[Value]) -> Value {
    let mut exchange = json!({"answer": text});
    if !attachments.is_empty() {
        exchange["attachments"] = json!(attachments);
    }
    json!({"is_gpa": true, "gpa_messages": gpa_state, "agents": {"GPA": [exchange]}})
}

fn requests_to(world: &World, service: &str) -> Vec<Recorded> {
    world
        .requests()
        .into_iter()
        .filter(|r| r.service == service)
        .collect()
}

// ---------------------------------------------------------------------------
// The seed's examples

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed1_ums_query_end_to_end() {
    let s = setup(&[]).await;
    let r = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    let ums_reply = "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found.";
    assert_eq!(
        deltas(&r.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            ums_reply
        )
    );
    // The final content is exactly the world's synthesis of the UMS answer.
    let history = as_history(&r.events());
    assert_eq!(
        history["content"],
        "Based on the agent's answer: UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
    );

    let reqs = s.world.requests();
    let route: Vec<(&str, &str, &str)> = reqs
        .iter()
        .map(|r| (r.service.as_str(), r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        route,
        vec![
            ("core", "POST", LLM_PATH),
            ("ums", "POST", "/conversations"),
            ("ums", "POST", "/conversations/ums-conv-0001/chat"),
            ("core", "POST", LLM_PATH),
        ]
    );
    assert_eq!(reqs[1].json(), json!({"title": KARPATHY}));
    assert_eq!(
        reqs[2].json(),
        json!({"message": {"role": "user", "content": KARPATHY}, "stream": true})
    );
    let synthesis = reqs[3].json();
    assert_eq!(synthesis["stream"], true);
    assert_eq!(
        synthesis["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "user", "content": format!(
            "## CONTEXT:\n{ums_reply}\n---\n## USER_REQUEST:\n{KARPATHY}")})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed2_gpa_weather_and_picture_end_to_end() {
    let s = setup(&[]).await;
    let r = chat_stream(&s.host, KEY, &[user(WEATHER)], Some("conv%2F42")).await;
    let script = gpa_script(
        WEATHER,
        "1 messages (user), 0 with tool_call_history",
        Some(1),
    );
    assert_eq!(
        deltas(&r.events()),
        gpa_expected(&decision_block("GPA"), &script.deltas, &script.text)
    );

    // The state is exactly GPA's state, wrapped, with its answer and attachment.
    let history = as_history(&r.events());
    assert_eq!(
        history["custom_content"]["state"]["gpa_messages"],
        json!({"tool_call_history": [
            {"role": "assistant", "content": "", "custom_content": {"attachments": []},
             "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "web_search", "arguments": format!("{{\"query\":\"{WEATHER}\"}}")}}]},
            {"role": "tool", "content": "Kyiv: +5°C, light rain", "tool_call_id": "call_1", "name": "web_search"},
            {"role": "assistant", "content": "", "custom_content": {"attachments": []},
             "tool_calls": [{"index": 0, "id": "call_2", "type": "function",
                 "function": {"name": "image_generation_tool", "arguments": format!("{{\"prompt\":\"{WEATHER}\"}}")}}]},
            {"role": "tool", "content": "Generated image: files/world-bucket/images/image-1.png",
             "tool_call_id": "call_2", "name": "image_generation_tool"},
        ]})
    );
    assert_eq!(
        history["custom_content"]["state"]["agents"]["GPA"],
        json!([{"answer": script.text, "attachments": [
            {"type": "image/png", "title": "image-1.png", "url": "files/world-bucket/images/image-1.png"}]}])
    );

    let core = requests_to(&s.world, "core");
    let paths: Vec<&str> = core.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec![LLM_PATH, GPA_PATH, LLM_PATH]);
    assert_eq!(
        core[1].json(),
        json!({"messages": [user(WEATHER)], "model": "general-purpose-agent", "stream": true})
    );
    assert_eq!(core[1].header("x-conversation-id"), Some("conv%2F42"));
    assert!(requests_to(&s.world, "ums").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed3_four_turns_keep_each_agents_memory_apart() {
    let s = setup(&[]).await;
    let conv = Some("chat-seed-3");
    let mut history: Vec<Value> = Vec::new();
    let mut turn_starts = Vec::new();
    let mut turn = |history: &mut Vec<Value>, text: &str| {
        history.push(user(text));
        turn_starts.push(s.world.requests().len());
        history.clone()
    };

    // Turn 1: UMS creates the conversation.
    let messages = turn(&mut history, KARPATHY);
    let r1 = chat_stream(&s.host, KEY, &messages, conv).await;
    let ums1 = "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found.";
    assert_eq!(
        deltas(&r1.events()),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            ums1
        )
    );
    history.push(as_history(&r1.events()));

    // Turn 2: GPA, which sees only this turn.
    let messages = turn(&mut history, WEATHER);
    let r2 = chat_stream(&s.host, KEY, &messages, conv).await;
    let gpa2 = gpa_script(
        WEATHER,
        "1 messages (user), 0 with tool_call_history",
        Some(1),
    );
    assert_eq!(
        deltas(&r2.events()),
        gpa_expected(&decision_block("GPA"), &gpa2.deltas, &gpa2.text)
    );
    let a2 = as_history(&r2.events());
    history.push(a2.clone());

    // Turn 3: UMS again, in the same UMS conversation (its turn #2).
    let messages = turn(&mut history, ADD_KARPATHY);
    let r3 = chat_stream(&s.host, KEY, &messages, conv).await;
    let ums3 = "UMS[ums-conv-0001#2]: No user named Andrej Karpathy was found.";
    assert_eq!(
        deltas(&r3.events()),
        ums_expected(&[], ums_state(&s.world.ums_url(), "ums-conv-0001"), ums3)
    );
    history.push(as_history(&r3.events()));

    // Turn 4: GPA with its own earlier turn restored.
    let messages = turn(&mut history, NIGHT);
    let r4 = chat_stream(&s.host, KEY, &messages, conv).await;
    let gpa4 = gpa_script(
        NIGHT,
        "3 messages (user,assistant,user), 1 with tool_call_history",
        Some(2),
    );
    assert_eq!(
        deltas(&r4.events()),
        gpa_expected(&decision_block("GPA"), &gpa4.deltas, &gpa4.text)
    );

    let all = s.world.requests();
    let turn_requests = |t: usize| -> Vec<Recorded> {
        let end = turn_starts.get(t + 1).copied().unwrap_or(all.len());
        all[turn_starts[t]..end].to_vec()
    };

    // Turn 3 reused ums-conv-0001: no second conversation was created.
    let ums3_paths: Vec<String> = turn_requests(2)
        .iter()
        .filter(|r| r.service == "ums")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(ums3_paths, vec!["POST /conversations/ums-conv-0001/chat"]);
    let creations = all
        .iter()
        .filter(|r| r.service == "ums" && r.path == "/conversations")
        .count();
    assert_eq!(creations, 1, "one UMS conversation for the whole chat");

    // GPA on turn 4 got exactly its own earlier turn (its own answer, its
    // attachment and its state restored; not our synthesised answer) and the request.
    let gpa_calls: Vec<&Recorded> = all.iter().filter(|r| r.path == GPA_PATH).collect();
    assert_eq!(gpa_calls.len(), 2);
    assert_ne!(a2["content"], json!(gpa2.text));
    let a2_restored = json!({"role": "assistant", "content": gpa2.text,
                             "custom_content": {"attachments": gpa2.attachments, "state": gpa2.gpa_state}});
    assert_eq!(
        gpa_calls[1].json()["messages"],
        json!([user(WEATHER), a2_restored, user(NIGHT)])
    );
    // ...and never a UMS turn.
    for call in &gpa_calls {
        let body = &call.body;
        for ums_text in [KARPATHY, ADD_KARPATHY, "ums_conversation_id", "UMS["] {
            assert!(!body.contains(ums_text), "GPA saw {ums_text:?}: {body}");
        }
    }

    // The routing call of turn 4 saw the whole history, without custom_content.
    let routing4: Vec<Recorded> = turn_requests(3)
        .into_iter()
        .filter(|r| r.path == LLM_PATH && r.json()["stream"] == false)
        .collect();
    assert_eq!(routing4.len(), 1);
    let sent = routing4[0].json()["messages"].as_array().unwrap().clone();
    assert_eq!(sent[0]["role"], "system");
    let expected: Vec<Value> = history
        .iter()
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect();
    assert_eq!(expected.len(), 7);
    assert_eq!(sent[1..].to_vec(), expected);
}

// ---------------------------------------------------------------------------
// Non-streaming mode equals the fold of the stream

/// aidial-sdk's merge (docs/protocol.md §2.7, `utils/merge_chunks.py`).
fn merge(target: &mut Value, source: &Value) {
    if source.is_null() {
        return;
    }
    if target.is_null() {
        match source {
            Value::Object(_) => *target = Value::Object(Map::new()),
            Value::Array(_) => *target = Value::Array(Vec::new()),
            other => {
                *target = other.clone();
                return;
            }
        }
    }
    match (target, source) {
        (Value::Object(t), Value::Object(s)) => {
            for (k, v) in s {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(t), Value::Array(s)) => merge_lists(t, s),
        (Value::String(t), Value::String(s)) => t.push_str(s),
        (t @ (Value::Number(_) | Value::Bool(_)), s @ (Value::Number(_) | Value::Bool(_))) => {
            *t = s.clone();
        }
        (t, s) => panic!("cannot merge {s} into {t}"),
    }
}

/// Lists: elements that all carry an integer `index` merge by position (missing
/// positions padded); other lists are appended (an indexed list never mixes with
/// an un-indexed one).
fn merge_lists(t: &mut Vec<Value>, s: &[Value]) {
    let indexed = |l: &[Value]| l.iter().all(|e| e.get("index").is_some_and(Value::is_u64));
    if s.is_empty() {
        return;
    }
    if !indexed(s) && (t.is_empty() || !indexed(t)) {
        t.extend_from_slice(s);
        return;
    }
    assert!(
        indexed(s) && indexed(t),
        "cannot merge an indexed list with a non-indexed one: {t:?} {s:?}"
    );
    for e in s {
        let i = usize::try_from(e["index"].as_u64().unwrap()).unwrap();
        while t.len() < i {
            t.push(json!({"index": t.len()}));
        }
        if i < t.len() {
            merge(&mut t[i], e);
        } else {
            t.push(e.clone());
        }
    }
}

/// Folds a stream the way aidial-sdk builds its non-streaming answer (§2.8):
/// chunks merged (top-level id/created/object taken once), `delta` renamed to
/// `message` with nested `index` keys removed, `object: chat.completion`.
fn fold(events: &[String]) -> Value {
    let mut merged = Value::Null;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let mut chunk: Value = serde_json::from_str(e).unwrap();
        assert!(chunk.get("error").is_none(), "error event: {e}");
        if !merged.is_null() {
            for k in ["id", "created", "object"] {
                chunk.as_object_mut().unwrap().remove(k);
            }
        }
        merge(&mut merged, &chunk);
    }
    merged["object"] = json!("chat.completion");
    for choice in merged["choices"].as_array_mut().unwrap() {
        let mut message = choice.as_object_mut().unwrap().remove("delta").unwrap();
        cleanup_indices(&mut message);
        choice["message"] = message;
    }
    merged
}

/// Drops `id`, `created` and the UMS endpoint tag (each stack's UMS has its
/// own port) after checking their shape.
fn without_envelope(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    assert!(o.remove("id").unwrap().as_str().is_some());
    assert!(o.remove("created").unwrap().is_u64());
    if let Some(state) = v.pointer_mut("/choices/0/message/custom_content/state") {
        if let Some(tag) = state.as_object_mut().unwrap().remove("ums_endpoint") {
            assert_eq!(tag.as_str().unwrap().len(), 16);
        }
    }
    v
}

async fn block_answer(body: Value) -> Value {
    let s = setup(&[]).await;
    let r = post_json(&s.host.chat_url(), &[("Api-Key", KEY)], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let length = r.body.len().to_string();
    assert_eq!(r.header("content-length"), Some(length.as_str()));
    assert_eq!(r.header("transfer-encoding"), None);
    r.json()
}

/// Streams `messages` from a fresh stack and folds the stream as aidial-sdk would.
async fn streamed_fold(messages: &[Value]) -> Value {
    let s = setup(&[]).await;
    let r = chat_stream(&s.host, KEY, messages, None).await;
    fold(&r.events())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_equals_the_folded_stream() {
    // UMS, `stream` absent.
    let block = block_answer(json!({"messages": [user(KARPATHY)]})).await;
    assert_eq!(block["object"], "chat.completion");
    let folded = streamed_fold(&[user(KARPATHY)]).await;
    assert_eq!(without_envelope(block.clone()), without_envelope(folded));
    let message = &block["choices"][0]["message"];
    assert_eq!(
        message["custom_content"]["state"]["ums_conversation_id"],
        "ums-conv-0001"
    );
    assert_eq!(
        message["content"],
        "Based on the agent's answer: UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
    );
    assert_eq!(block["choices"][0]["finish_reason"], "stop");

    // GPA with stages, stage attachments and a choice attachment, `stream: false`.
    let block = block_answer(json!({"stream": false, "messages": [user(WEATHER)]})).await;
    let folded = streamed_fold(&[user(WEATHER)]).await;
    assert_eq!(without_envelope(block.clone()), without_envelope(folded));
    let message = &block["choices"][0]["message"];
    let stages = message["custom_content"]["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Coordination Request",
            "Call GPA Agent",
            "web_search",
            "image_generation_tool"
        ]
    );
    assert_eq!(
        stages[3]["attachments"],
        json!([{"type": "image/png", "title": "Generated image", "url": image_url(1)}])
    );
    assert_eq!(stages[3]["parent_stage_index"], 1);
    assert_eq!(
        message["custom_content"]["attachments"],
        json!([{"type": "image/png", "title": "image-1.png", "url": image_url(1)}])
    );
}

// ---------------------------------------------------------------------------
// Where the per-request key goes

/// Names of the routing schema's `agent_name` values (enum or oneOf of consts).
fn agent_names(schema: &Value) -> Vec<String> {
    let mut prop = schema["properties"]["agent_name"].clone();
    if let Some(r) = prop["$ref"].as_str() {
        let pointer = r.trim_start_matches('#');
        prop = schema.pointer(pointer).unwrap().clone();
    }
    if let Some(values) = prop["enum"].as_array() {
        return values
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
    }
    prop["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("agent_name has neither enum nor oneOf: {prop}"))
        .iter()
        .map(|alt| {
            alt["const"]
                .as_str()
                .or_else(|| alt["enum"][0].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_goes_to_dial_core_only_and_never_into_logs() {
    let api_version = "2025-01-01-preview";
    let s = setup(&[("DIAL_API_VERSION", api_version)]).await;
    let mut bodies = Vec::new();

    let r = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    bodies.push(r.body());
    let r = chat_stream(
        &s.host,
        KEY,
        &[user("Search weather in Kyiv")],
        Some("conv%2F42"),
    )
    .await;
    bodies.push(r.body());
    // GPA without X-CONVERSATION-ID works too.
    let r = chat_stream(
        &s.host,
        KEY,
        &[user("What is the capital of France?")],
        None,
    )
    .await;
    let d = deltas(&r.events());
    assert_eq!(d[4], stage_open(1, "Call GPA Agent", None));
    assert_eq!(d.last().unwrap(), "[DONE]");
    assert!(d.iter().all(|e| e.get("error").is_none()), "{d:?}");
    bodies.push(r.body());
    // A failure, so that the component logs something.
    s.world.set_fault(
        "synthesis",
        Fault {
            kind: FaultKind::ErrorMidStream,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user("Hello there")], None).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[d.len() - 2]["error"]["message"],
        "LLM (gpt-4o) reported an error: injected mid-stream error"
    );
    bodies.push(r.body());

    let reqs = s.world.requests();
    let (core, ums): (Vec<&Recorded>, Vec<&Recorded>) =
        reqs.iter().partition(|r| r.service == "core");
    assert_eq!(core.len(), 2 + 3 + 3 + 3);
    assert_eq!(ums.len(), 2);
    for r in &core {
        assert_eq!(r.header("api-key"), Some(KEY), "{} {}", r.method, r.path);
        assert_eq!(r.query.as_deref(), Some("api-version=2025-01-01-preview"));
    }
    for r in &ums {
        for (name, value) in &r.headers {
            assert!(!value.contains(KEY), "UMS got the key in {name}");
            assert!(
                name != "api-key" && name != "authorization",
                "UMS got a {name} header"
            );
        }
        assert!(!r.body.contains(KEY), "UMS got the key in the body");
        assert_eq!(r.query, None);
    }
    for body in &bodies {
        assert!(!String::from_utf8_lossy(body).contains(KEY));
    }

    // X-CONVERSATION-ID reaches GPA when the client sent it, and only then.
    let gpa: Vec<&&Recorded> = core.iter().filter(|r| r.path == GPA_PATH).collect();
    assert_eq!(gpa.len(), 3);
    assert_eq!(gpa[0].header("x-conversation-id"), Some("conv%2F42"));
    assert_eq!(gpa[1].header("x-conversation-id"), None);

    // Every routing call asks for the decision schema.
    let routing: Vec<Value> = core
        .iter()
        .map(|r| r.json())
        .filter(|b| b["stream"] == false)
        .collect();
    assert_eq!(routing.len(), 4);
    for body in &routing {
        assert_eq!(body["response_format"]["type"], "json_schema");
        let schema = &body["response_format"]["json_schema"]["schema"];
        assert_eq!(agent_names(schema), ["GPA", "UMS"]);
    }

    let logs = s.host.logs();
    assert!(
        logs.contains("injected mid-stream error"),
        "the failure is logged: {logs}"
    );
    assert!(!logs.contains(KEY), "the key is in the logs: {logs}");
}

// ---------------------------------------------------------------------------
// Streaming is real

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_arrive_before_the_routing_call_finishes() {
    let s = setup(&[]).await;
    s.world.set_fault(
        "routing",
        Fault {
            kind: FaultKind::None,
            first_byte_delay_ms: 700,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    let events = r.timed_events();
    let (first_at, _) = events[0];
    let early: Vec<Value> = events
        .iter()
        .filter(|(at, _)| *at == first_at)
        .map(|(_, e)| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(
        early,
        vec![
            json!({"role": "assistant"}),
            stage_open(0, "Coordination Request", None)
        ],
        "the first frame carries the role chunk and stage 0"
    );
    let first = first_at - r.sent_at;
    let total = r.finished_at() - r.sent_at;
    assert!(
        first < Duration::from_millis(500),
        "first bytes after {first:?}"
    );
    assert!(total > Duration::from_millis(700), "total {total:?}");
    let (decision_at, _) = events[2];
    assert!(decision_at - r.sent_at >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_coordination_call_gets_heartbeats_and_the_stream_is_otherwise_the_same() {
    let s = setup(&[("HEARTBEAT_INTERVAL_MS", "200")]).await;
    s.world.set_fault(
        "routing",
        Fault {
            kind: FaultKind::None,
            first_byte_delay_ms: 1_100,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user(KARPATHY)], None).await;
    let body = String::from_utf8(r.body()).unwrap();
    let blocks: Vec<&str> = body.split_terminator("\n\n").collect();
    let beats: Vec<usize> = (0..blocks.len())
        .filter(|i| blocks[*i] == ": heartbeat")
        .collect();
    // A tick every 200 ms for 1.1 s writes five; a busy machine fires them late.
    assert!(beats.len() >= 2, "{body}");
    assert!(
        blocks
            .iter()
            .all(|b| *b == ": heartbeat" || b.starts_with("data: ")),
        "{body}"
    );
    // All of them after the role chunk and stage 0, before the decision.
    assert_eq!(beats, (2..2 + beats.len()).collect::<Vec<_>>(), "{body}");
    // Each went out when it was written, not with the next event.
    let beat_frames: Vec<_> = r
        .frames
        .iter()
        .filter(|(_, f)| f.starts_with(b": heartbeat"))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(beat_frames.len(), beats.len(), "one write each: {body}");
    assert!(
        *beat_frames.last().unwrap() - beat_frames[0] >= Duration::from_millis(150),
        "{beat_frames:?}"
    );
    // Without them, the stream is the seed's, exactly.
    let rest: String = blocks
        .iter()
        .filter(|b| !b.starts_with(':'))
        .map(|b| format!("{b}\n\n"))
        .collect();
    assert_eq!(
        deltas(&sse_events(rest.as_bytes())),
        ums_expected(
            &[created("ums-conv-0001")],
            ums_state(&s.world.ums_url(), "ums-conv-0001"),
            "UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
        )
    );
    // The request's line counts them among its writes.
    let line = s
        .host
        .json_logs()
        .into_iter()
        .find(|l| l["event"] == "request")
        .unwrap();
    assert_eq!(line["outcome"], "ok");
    assert!(
        line["writes"].as_u64().unwrap() >= beats.len() as u64 + 2,
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpa_events_are_relayed_as_they_come() {
    let s = setup(&[]).await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::None,
            chunk_delay_ms: 150,
            ..Fault::default()
        },
    );
    let r = chat_stream(&s.host, KEY, &[user("Search weather in Kyiv")], None).await;
    let mut times = Vec::new();
    for (at, e) in r.timed_events() {
        if e == "[DONE]" {
            continue;
        }
        let delta = serde_json::from_str::<Value>(&e).unwrap()["choices"][0]["delta"].clone();
        let Some(stage) = delta.pointer("/custom_content/stages/0") else {
            continue;
        };
        let index = stage["index"].as_u64().unwrap();
        // GPA's mirrored stages, or GPA's text in our GPA stage.
        if index >= 2 || (index == 1 && stage.get("content").is_some()) {
            times.push(at);
        }
    }
    assert_eq!(times.len(), 6, "open, 2 contents, close; 2 texts");
    let mut distinct = times.clone();
    distinct.dedup();
    let span = *times.last().unwrap() - times[0];
    assert!(
        distinct.len() >= 4,
        "GPA's events came in {} frames",
        distinct.len()
    );
    assert!(span > Duration::from_millis(450), "spread over {span:?}");
    assert!(
        r.finished_at() - times[0] > Duration::from_millis(300),
        "not all at the end"
    );
}

// ---------------------------------------------------------------------------
// Bad input through the real host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_dial_errors() {
    let s = setup(&[("MAX_REQUEST_BYTES", "65536")]).await;
    let url = s.host.chat_url();
    let body = json!({"stream": true, "messages": [user(KARPATHY)]});

    let r = post_json(&url, &[], &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Api-Key header is required: DIAL Core sends the per-request key in it; called directly, send Api-Key: <key> (an Authorization header is not a key)", "type": "invalid_request_error",
            "code": "400",
            "display_message": "The request reached the coordinator without an API key. Call it through DIAL Core."}})
    );

    let r = send("POST", &url, &[("Api-Key", KEY)], b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "400");
    assert_eq!(
        e["error"]["message"],
        "Invalid request: the body is not valid JSON: key must be a string at line 1 column 2"
    );

    let r = get(&format!("{}/health", s.host.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "ok", "breaker_store": "instance-memory", "state_signing": "off", "unsigned_state": "read", "request_deadline_ms": 300_000})
    );
    // Answers whose length is known carry it (no chunked framing: the head and
    // the body can leave together), errors included.
    let length = r.body.len().to_string();
    assert_eq!(r.header("content-length"), Some(length.as_str()));
    assert_eq!(r.header("transfer-encoding"), None);

    let r = get(&format!("{}/nope", s.host.url())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "404");

    let r = get(&url).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let length = r.body.len().to_string();
    assert_eq!(r.header("content-length"), Some(length.as_str()));
    assert_eq!(
        r.json()["error"]["message"],
        "Method GET is not allowed on this path (allowed: POST)"
    );
    let health = format!("{}/health", s.host.url());
    let r = send("DELETE", &health, &[], Vec::new()).await.unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // HEAD /health: the status and headers of GET, no body.
    let r = send("HEAD", &health, &[], Vec::new()).await.unwrap();
    assert_eq!(
        (r.status, r.header("content-type"), r.body.len()),
        (200, Some("application/json"), 0)
    );
    // One trailing slash is the same path.
    let r = get(&format!("{health}/")).await;
    assert_eq!(r.json()["status"], "ok");
    let r = post_json(&format!("{url}/"), &[], &body).await;
    assert_eq!(r.status, 400, "the chat route, reached: no key");

    let big = json!({"messages": [user(&"x".repeat(70_000))]});
    let r = post_json(&url, &[("Api-Key", KEY)], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "413");
    assert_eq!(
        r.json()["error"]["message"],
        "Request body is larger than the limit of 65536 bytes"
    );

    assert!(
        s.world.requests().is_empty(),
        "nothing reached the upstreams"
    );
    assert!(!s.host.logs().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_line_reports_the_coordinators_own_time_by_phase() {
    let s = setup(&[]).await;
    let streamed = chat_stream(&s.host, KEY, &[user(WEATHER)], None).await;
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    let events = String::from_utf8_lossy(&streamed.body())
        .matches("data: ")
        .count();
    let r = post_json(
        &s.host.chat_url(),
        &[],
        &json!({"messages": [user(WEATHER)]}),
    )
    .await;
    assert_eq!(r.status, 400);
    let requests: Vec<Value> = s
        .host
        .json_logs()
        .into_iter()
        .filter(|l| l["event"] == "request")
        .collect();
    assert_eq!(requests.len(), 2);
    for line in &requests {
        let phases = line["phases_us"].as_object().unwrap();
        let names: Vec<&str> = phases.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["agents", "coordination", "read", "synthesis"],
            "{line}"
        );
        let sum: u64 = phases.values().map(|v| v.as_u64().unwrap()).sum();
        let own = line["own_us"].as_u64().unwrap();
        assert_eq!(own, sum, "own time is the sum of its phases: {line}");
        assert!(phases["read"].as_u64().unwrap() > 0, "{line}");
    }
    // A served request worked in every phase; it cannot have worked longer
    // than it took (latency_ms is rounded down).
    let served = &requests[0];
    let phases = &served["phases_us"];
    for phase in ["coordination", "agents", "synthesis"] {
        assert!(phases[phase].as_u64().unwrap() > 0, "{phase}: {served}");
    }
    let latency_us = (served["latency_ms"].as_u64().unwrap() + 1) * 1_000;
    assert!(served["own_us"].as_u64().unwrap() <= latency_us, "{served}");
    // Every write carries at least one whole event, and events that are ready
    // together share a write; the request was woken up several times.
    let writes = served["writes"].as_u64().unwrap();
    assert!(
        writes >= 1 && writes as usize <= events,
        "{events} events: {served}"
    );
    assert!(served["polls"].as_u64().unwrap() >= 2, "{served}");
    // A rejected request did nothing but read, and answered in one write.
    let rejected = &requests[1];
    assert_eq!(rejected["outcome"], "rejected");
    assert_eq!(rejected["writes"], 1, "{rejected}");
    for phase in ["coordination", "agents", "synthesis"] {
        assert_eq!(rejected["phases_us"][phase], 0, "{rejected}");
    }
    // Host calls by kind (the log line's keys are sorted), with their total.
    for line in &requests {
        let calls = line["host_calls"].as_object().unwrap();
        let kinds: Vec<&str> = calls.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            [
                "clock",
                "http",
                "meter",
                "other",
                "read",
                "subscribe",
                "timer",
                "total",
                "wait",
                "write"
            ],
            "{line}"
        );
        let n = |kind: &str| calls[kind].as_u64().unwrap();
        let sum: u64 = kinds.iter().filter(|k| **k != "total").map(|k| n(k)).sum();
        assert_eq!(n("total"), sum, "{line}");
        let polls = line["polls"].as_u64().unwrap();
        assert_eq!(n("wait"), polls - 1, "{line}");
        // Two clock reads per poll, one per change of phase (at most four
        // main phases, and a round of coordination may come back).
        assert!((2 * polls..=2 * polls + 6).contains(&n("meter")), "{line}");
        assert!(n("read") >= 1, "{line}");
    }
    // Every streamed write to the client is a check, a write and a flush.
    let calls = &served["host_calls"];
    assert!(
        calls["write"].as_u64().unwrap() >= 3 * served["writes"].as_u64().unwrap(),
        "{served}"
    );
    // A served request armed timers and waited on its upstreams; a rejected
    // one read its body and answered at once.
    assert!(calls["timer"].as_u64().unwrap() >= 2, "{served}");
    assert!(calls["subscribe"].as_u64().unwrap() >= 2, "{served}");
    // The rejected one, exactly: its head (8) and body reader (4); two
    // reads (the body, its end); the meter's two clock reads (entering the
    // poll, the log line's snapshot); two wall-clock reads; two random ids
    // and the log line (3). Its answer goes out after the line, so none of
    // its calls are in it yet.
    assert_eq!(
        rejected["host_calls"],
        json!({"clock": 2, "http": 12, "meter": 2, "other": 3, "read": 2, "subscribe": 0,
               "timer": 0, "total": 21, "wait": 0, "write": 0}),
        "{rejected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_log_level_only_calls_that_failed_get_a_line() {
    let s = setup(&[
        ("LOG_LEVEL", "info"),
        ("GPA_BACKUP_DEPLOYMENTS", "gpa-backup"),
    ])
    .await;
    s.world.set_fault(
        "deployment:general-purpose-agent",
        Fault {
            kind: FaultKind::Status,
            status: Some(503),
            ..Fault::default()
        },
    );
    chat_stream(&s.host, KEY, &[user(WEATHER)], None).await;
    let lines: Vec<(String, String, String)> = s
        .host
        .json_logs()
        .iter()
        .map(|l| {
            let f = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (f("event"), f("target"), f("outcome"))
        })
        .collect();
    let line = |e: &str, t: &str, o: &str| (e.to_owned(), t.to_owned(), o.to_owned());
    assert_eq!(
        lines,
        [
            line("config", "", ""),
            line("upstream_call", "general-purpose-agent", "http_error"),
            line("request", "", "ok"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_health_counts_only_a_2xx_answer_as_up() {
    let world = World::start(mas_world::WorldOptions::default())
        .await
        .unwrap();
    let (core, ums) = (world.core_url(), world.ums_url());
    // A backup UMS at a wrong base path: the world's Core answers 404 there.
    let wrong = format!("{core}/not-ums");
    let host = WasiHost::start(&[
        ("DIAL_ENDPOINT", &core),
        ("UMS_AGENT_ENDPOINT", &ums),
        ("UMS_AGENT_BACKUP_ENDPOINTS", &wrong),
    ])
    .await;
    let report = get(&format!("{}/health?deep=1", host.url())).await.json();
    assert_eq!(report["status"], "degraded");
    let checks: Vec<(Value, Value, Value, Value)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["service"].clone(),
                c["target"].clone(),
                c["up"].clone(),
                c["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            (json!("DIAL Core"), json!(core), json!(true), json!(200)),
            (json!("UMS"), json!(ums), json!(true), json!(200)),
            (json!("UMS"), json!(wrong), json!(false), json!(404)),
        ]
    );
}

// ---------------------------------------------------------------------------
// Agents as configuration

const RAG_DESCRIPTION: &str = "Answers questions from the company knowledge base.";
const RAG_PATH: &str = "/openai/deployments/rag-agent/chat/completions";

/// The world's RAG agent's answer to `request`, as it comes out of the
/// coordinator (world docs, "The RAG agent"), and its text.
fn rag_expected(request: &str, received: &str, n: u32, turn: u32) -> (Vec<Value>, String, Value) {
    let source = format!("source-{n}.md");
    let url = format!("files/world-bucket/rag/{source}");
    let attachment = json!({"type": "text/markdown", "title": source, "url": url});
    let text = format!("RAG[rag-agent] got {received}; request: {request}");
    let mut d = vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
        stage_content(0, &decision_block("RAG")),
        stage_close(0, "completed"),
        stage_open(1, "Call RAG Agent", None),
        stage_open(2, "retrieve", Some(1)),
        stage_content(2, &format!("Searching the knowledge base for: {request}")),
        json!({"custom_content": {"stages": [{"index": 2, "status": null,
            "attachments": [{"index": 0, "type": "text/markdown", "title": source, "url": url}]}]}}),
        stage_close(2, "completed"),
        stage_content(1, &text),
        json!({"custom_content": {"attachments": [{"index": 0, "type": "text/markdown", "title": source, "url": url}]}}),
        stage_close(1, "completed"),
    ];
    let state_value = json!({"agents": {"RAG": [{"answer": text, "attachments": [attachment],
        "state": {"rag_turn": turn, "sources": [source]}}]}});
    d.push(state(state_value.clone()));
    d.extend(closing(&text));
    (d, text, state_value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_dial_agent_works_end_to_end_by_configuration_alone() {
    let s = setup(&[
        ("AGENTS", "GPA,UMS,RAG"),
        ("AGENT_RAG_KIND", "dial"),
        ("AGENT_RAG_DEPLOYMENT", "rag-agent"),
        ("AGENT_RAG_DESCRIPTION", RAG_DESCRIPTION),
    ])
    .await;
    let conv = Some("chat-rag");
    let policy = "@RAG What is our vacation policy?";
    let sick = "@RAG And the sick leave policy?";
    let weather = "Search weather in Kyiv";

    // Turn 1: routed to RAG: its stage and attachment mirrored, its state kept.
    let mut history = vec![user(policy)];
    let r1 = chat_stream(&s.host, KEY, &history, conv).await;
    let (want, rag1_text, _) = rag_expected(policy, "1 messages (user), 0 with rag state", 1, 1);
    assert_eq!(deltas(&r1.events()), want);
    history.push(as_history(&r1.events()));

    // Turn 2: GPA, which never sees RAG's turn.
    history.push(user(weather));
    let r2 = chat_stream(&s.host, KEY, &history, conv).await;
    let gpa2 = gpa_script(weather, "1 messages (user), 0 with tool_call_history", None);
    let d2 = deltas(&r2.events());
    assert_eq!(d2[..5].to_vec(), opening("GPA"));
    assert_eq!(d2[5..5 + gpa2.deltas.len()].to_vec(), gpa2.deltas);
    history.push(as_history(&r2.events()));

    // Turn 3: RAG again, with its own turn restored (its answer, attachment and
    // state), never GPA's.
    history.push(user(sick));
    let r3 = chat_stream(&s.host, KEY, &history, conv).await;
    let (want, _, _) = rag_expected(
        sick,
        "3 messages (user,assistant,user), 1 with rag state",
        2,
        2,
    );
    assert_eq!(deltas(&r3.events()), want);

    let rag_calls: Vec<Recorded> = requests_to(&s.world, "core")
        .into_iter()
        .filter(|r| r.path == RAG_PATH)
        .collect();
    assert_eq!(rag_calls.len(), 2);
    assert_eq!(rag_calls[1].header("api-key"), Some(KEY));
    assert_eq!(rag_calls[1].header("x-conversation-id"), Some("chat-rag"));
    assert_eq!(
        rag_calls[1].json()["messages"],
        json!([
            user(policy),
            {"role": "assistant", "content": rag1_text, "custom_content": {
                "attachments": [{"type": "text/markdown", "title": "source-1.md", "url": "files/world-bucket/rag/source-1.md"}],
                "state": {"rag_turn": 1, "sources": ["source-1.md"]}}},
            user(sick),
        ])
    );
    // Routing saw RAG in the schema and its description in the prompt.
    let routing: Vec<Value> = requests_to(&s.world, "core")
        .iter()
        .map(Recorded::json)
        .filter(|b| b["stream"] == false)
        .collect();
    assert_eq!(routing.len(), 3);
    let schema = &routing[0]["response_format"]["json_schema"]["schema"];
    assert_eq!(agent_names(schema), ["GPA", "UMS", "RAG"]);
    let prompt = routing[0]["messages"][0]["content"].as_str().unwrap();
    assert!(
        prompt.contains(&format!("- RAG: {RAG_DESCRIPTION}\n")),
        "{prompt}"
    );
    let gpa_call = requests_to(&s.world, "core")
        .into_iter()
        .find(|r| r.path == GPA_PATH)
        .unwrap();
    assert_eq!(gpa_call.json()["messages"], json!([user(weather)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_a_500_naming_every_variable_and_health_says_so() {
    let s = setup(&[
        ("AGENTS", "GPA,UMS,RAG"),
        ("AGENT_RAG_KIND", "grpc"),
        ("MAX_PARALLEL", "99"),
    ])
    .await;
    let kind = "must be dial (a DIAL deployment), ums (the UMS conversation API) or a2a (an Agent2Agent protocol server)";
    let description = "is required for agent RAG: the coordination prompt says what it is for";
    let parallel = "must be a whole number from 1 to 16";
    let error = json!({"message": format!("Invalid configuration: AGENT_RAG_KIND {kind}; \
            AGENT_RAG_DESCRIPTION {description}; MAX_PARALLEL {parallel}"),
        "type": "internal_server_error", "code": "500",
        "display_message": "The coordinator is misconfigured (AGENT_RAG_KIND, AGENT_RAG_DESCRIPTION, \
            MAX_PARALLEL). Please tell the administrator."});
    let r = post_json(
        &s.host.chat_url(),
        &[("Api-Key", KEY)],
        &json!({"stream": true, "messages": [user(KARPATHY)]}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"error": error}));
    let health = get(&format!("{}/health", s.host.url())).await;
    assert_eq!(health.status, 500);
    assert_eq!(
        health.json(),
        json!({"status": "misconfigured", "error": error, "problems": [
            {"variable": "AGENT_RAG_KIND", "reason": kind},
            {"variable": "AGENT_RAG_DESCRIPTION", "reason": description},
            {"variable": "MAX_PARALLEL", "reason": parallel},
        ]})
    );
    let head = send("HEAD", &format!("{}/health", s.host.url()), &[], Vec::new())
        .await
        .unwrap();
    assert_eq!((head.status, head.body.len()), (500, 0));
    assert!(s.world.requests().is_empty(), "nothing was called");
}

// ---------------------------------------------------------------------------
// Plans (COORDINATION_MODE=plan, the default)

const PLAN_ENV: (&str, &str) = ("COORDINATION_MODE", "plan");

/// Stage 0's text for a plan of one subtask.
fn one_subtask_plan(agent: &str, description: &str) -> String {
    let plan = json!({"subtasks": [{"task_id": 1, "agent_name": agent, "task_description": description, "depends_on": []}], "replan": false});
    let plan: mas_coordinator::flow::plan::Plan = serde_json::from_value(plan).unwrap();
    format!(
        "```json\n{}\n```\n",
        serde_json::to_string_pretty(&plan).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_four_turns_behave_the_same_in_plan_mode() {
    let routed = setup(&[]).await;
    let planned = setup(&[PLAN_ENV]).await;
    let conv = Some("chat-seed-3");
    let mut route_history: Vec<Value> = Vec::new();
    let mut plan_history: Vec<Value> = Vec::new();
    for (turn, (text, agent)) in [
        (KARPATHY, "UMS"),
        (WEATHER, "GPA"),
        (ADD_KARPATHY, "UMS"),
        (NIGHT, "GPA"),
    ]
    .into_iter()
    .enumerate()
    {
        route_history.push(user(text));
        plan_history.push(user(text));
        let r = chat_stream(&routed.host, KEY, &route_history, conv).await;
        let p = chat_stream(&planned.host, KEY, &plan_history, conv).await;
        // Each world's UMS has its own port, hence its own endpoint tag.
        let tagged = |d: Vec<Value>, w: &World| -> Vec<Value> {
            let tag = json!(endpoint_tag(&w.ums_url()));
            d.into_iter()
                .map(|mut e| {
                    if let Some(t) = e.pointer_mut("/custom_content/state/ums_endpoint") {
                        assert_eq!(*t, tag);
                        *t = json!("<the world's UMS>");
                    }
                    e
                })
                .collect()
        };
        let dr = tagged(deltas(&r.events()), &routed.world);
        let dp = tagged(deltas(&p.events()), &planned.world);
        assert_eq!(dr.len(), dp.len(), "turn {turn}");
        for (i, (a, b)) in dr.iter().zip(&dp).enumerate() {
            if i == 2 {
                assert_eq!(
                    *b,
                    stage_content(0, &one_subtask_plan(agent, text)),
                    "turn {turn}"
                );
            } else {
                assert_eq!(a, b, "turn {turn}, delta {i}");
            }
        }
        route_history.push(as_history(&r.events()));
        plan_history.push(as_history(&p.events()));
    }
    // The agents were asked exactly the same things.
    let agent_calls = |w: &World| -> Vec<(String, Value)> {
        w.requests()
            .into_iter()
            .filter(|r| r.service == "ums" || r.path == GPA_PATH)
            .map(|r| (r.path.clone(), r.json()))
            .collect()
    };
    assert_eq!(agent_calls(&routed.world), agent_calls(&planned.world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_agent_turn_runs_both_at_once_then_each_agent_keeps_its_own_memory() {
    let s = setup(&[PLAN_ENV]).await;
    for target in ["ums", "deployment:general-purpose-agent"] {
        s.world.set_fault(
            target,
            Fault {
                kind: FaultKind::None,
                chunk_delay_ms: 40,
                ..Fault::default()
            },
        );
    }
    let conv = Some("chat-plan");
    let both = "Do we have user John? Also, search the weather in Kyiv";
    let mut history = vec![user(both)];
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    let stage_names: Vec<&str> = d
        .iter()
        .filter_map(|e| e["custom_content"]["stages"][0]["name"].as_str())
        .collect();
    assert_eq!(
        stage_names,
        [
            "Coordination Request",
            "Call UMS Agent (task 1)",
            "Call GPA Agent (task 2)",
            "web_search"
        ]
    );
    // Both streamed at once: their stages' updates interleave.
    let owners: Vec<u64> = d
        .iter()
        .filter_map(|e| e["custom_content"]["stages"][0]["index"].as_u64())
        .filter(|i| *i >= 1)
        .map(|i| if i == 1 { 1 } else { 2 })
        .collect();
    let switches = owners.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 3,
        "the two agents' events did not interleave: {owners:?}"
    );
    assert_eq!(d.last().unwrap(), "[DONE]");
    assert!(d.iter().all(|e| e.get("error").is_none()));
    let first = as_history(&r.events());
    let st = &first["custom_content"]["state"];
    assert_eq!(st["ums_conversation_id"], "ums-conv-0001");
    assert_eq!(st["is_gpa"], true);
    assert_eq!(
        st["agents"]["GPA"][0]["asked"],
        format!("{both}\n\nsearch the weather in Kyiv")
    );
    // The synthesis got both results, labelled.
    let synthesis = requests_to(&s.world, "core")
        .into_iter()
        .rfind(|r| r.path == LLM_PATH)
        .unwrap();
    let context = synthesis.json()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        context.starts_with(
            "## CONTEXT:\n### Task 1 (UMS): Do we have user John?\nUMS[ums-conv-0001#1]: Noted: "
        ),
        "{context}"
    );
    assert!(
        context.contains(
            "\n### Task 2 (GPA): search the weather in Kyiv\nWeather in Kyiv: +5°C, light rain. "
        ),
        "{context}"
    );
    history.push(first);

    // A UMS-only turn: the conversation of the two-agent turn is reused.
    history.push(user("Add him as a user"));
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    assert_eq!(d[4], stage_open(1, "Call UMS Agent", None));
    assert_eq!(d[5], stage_content(1, "UMS[ums-conv-0001#2]: "));
    history.push(as_history(&r.events()));

    // A GPA-only turn: GPA sees its own exchange of the two-agent turn, never UMS's.
    history.push(user("Search the weather in Kyiv again"));
    s.world.clear_requests();
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    assert_eq!(deltas(&r.events()).last().unwrap(), "[DONE]");
    let gpa = requests_to(&s.world, "core")
        .into_iter()
        .find(|r| r.path == GPA_PATH)
        .unwrap();
    let messages = gpa.json()["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 3, "{messages}");
    assert_eq!(
        messages[0],
        user(&format!("{both}\n\nsearch the weather in Kyiv"))
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert!(messages[1]["content"]
        .as_str()
        .unwrap()
        .starts_with("Weather in Kyiv: +5°C, light rain. GPA[general-purpose-agent]"));
    assert_eq!(messages[2], user("Search the weather in Kyiv again"));
    assert!(!gpa.body.contains("UMS["), "GPA saw UMS's answer");
}

// ---------------------------------------------------------------------------
// Asking the user

const ASK_SECRET: (&str, &str) = ("STATE_SECRET", "e2e-asking-secret-0123456789");
const ALEX: &str = "Can you help me with Alex?";

/// The assistant message DIAL Chat keeps of a streamed answer: its content,
/// state and form (Chat sends the form back too).
fn chat_history(events: &[String]) -> Value {
    let mut message = as_history(events);
    let form = deltas(events)
        .into_iter()
        .find_map(|d| d.pointer("/custom_content/form_schema").cloned());
    if let Some(form) = form {
        message["custom_content"]["form_schema"] = form;
    }
    message
}

/// The coordination calls (structured output) the world received.
fn coordination_calls(world: &World) -> Vec<Value> {
    world
        .requests()
        .into_iter()
        .filter(|r| r.path == LLM_PATH && r.json()["response_format"]["type"] == "json_schema")
        .map(|r| r.json())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_request_asks_with_buttons_and_the_answer_by_button_resumes_it() {
    let s = setup(&[PLAN_ENV, ASK_SECRET]).await;
    let conv = Some("chat-alex");
    let mut history = vec![user(ALEX)];
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let question = "Do you mean Alex in the user records, or should I search the web about Alex?";
    let d = deltas(&r.events());
    let option = |i: u64, text: &str| {
        json!({"const": i, "title": text, "dial:widgetOptions":
            {"confirmationMessage": null, "populateText": text, "submit": true}})
    };
    let form = json!({"type": "object", "dial:chatMessageInputDisabled": false, "properties": {"answer": {
        "type": "integer", "dial:widget": "buttons",
        "oneOf": [option(0, "The user record of Alex"), option(1, "A web search about Alex")]}}});
    assert_eq!(d.len(), 9, "{d:?}");
    assert_eq!(d[1], stage_open(0, "Coordination Request", None));
    let stage0 = d[2]["custom_content"]["stages"][0]["content"]
        .as_str()
        .unwrap();
    assert!(stage0.contains("\"ask_user\": {"), "{stage0}");
    assert_eq!(d[3], stage_close(0, "completed"));
    assert_eq!(d[4], content(question));
    assert_eq!(d[5], json!({"custom_content": {"form_schema": form}}));
    let state0 = &d[6]["custom_content"]["state"];
    assert_eq!(
        state0["pending"],
        json!({"kind": "question", "question": question,
               "options": ["The user record of Alex", "A web search about Alex"]})
    );
    assert!(state0["signature"].is_string());
    assert_eq!(d[7..], [json!("STOP"), json!("[DONE]")]);
    assert_eq!(s.world.requests().len(), 1, "no agent was called");

    // The user clicks the first button.
    history.push(chat_history(&r.events()));
    history.push(json!({"role": "user", "content": "The user record of Alex",
                        "custom_content": {"form_value": {"answer": 0}}}));
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let answer = as_history(&r.events());
    assert!(answer["custom_content"]["state"].get("pending").is_none());
    assert_eq!(
        answer["custom_content"]["state"]["ums_conversation_id"],
        "ums-conv-0001"
    );
    let calls = coordination_calls(&s.world);
    assert_eq!(calls.len(), 2);
    let seen = calls[1]["messages"].as_array().unwrap();
    assert_eq!(
        seen[1..],
        [
            json!({"role": "user", "content": ALEX}),
            json!({"role": "assistant", "content": question}),
            json!({"role": "user", "content": "The user record of Alex"}),
        ]
    );
    let ums: Vec<Recorded> = requests_to(&s.world, "ums");
    assert_eq!(ums.len(), 2, "UMS was called for the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_approval_runs_exactly_the_approved_plan_without_a_second_coordination_call() {
    let s = setup(&[PLAN_ENV, ASK_SECRET, ("PLAN_APPROVAL", "always")]).await;
    let conv = Some("chat-approval");
    let mut history = vec![user(ADD_KARPATHY)];
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[2],
        stage_content(0, &one_subtask_plan("UMS", ADD_KARPATHY))
    );
    assert_eq!(
        d[4],
        content(&format!(
            "I would run this plan:\n\n1. **UMS**: {ADD_KARPATHY}\n\nRun this plan?"
        ))
    );
    assert_eq!(
        d[5]["custom_content"]["form_schema"]["properties"]["plan_approval"]["oneOf"][0]["const"],
        "run"
    );
    assert_eq!(s.world.requests().len(), 1, "nothing ran");
    history.push(chat_history(&r.events()));

    // Cancel: nothing runs.
    let mut cancelled = history.clone();
    cancelled.push(json!({"role": "user", "content": "Cancel",
                          "custom_content": {"form_value": {"plan_approval": "cancel"}}}));
    let c = chat_stream(&s.host, KEY, &cancelled, conv).await;
    assert_eq!(
        deltas(&c.events()),
        vec![
            json!({"role": "assistant"}),
            content("Cancelled: the plan was not run."),
            json!("STOP"),
            json!("[DONE]"),
        ]
    );
    assert_eq!(s.world.requests().len(), 1, "nothing ran");

    // Run: the plan runs from the state, with no coordination call.
    history.push(json!({"role": "user", "content": "Run",
                        "custom_content": {"form_value": {"plan_approval": "run"}}}));
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    assert_eq!(
        d[2],
        stage_content(
            0,
            &format!(
                "_The plan approved in the previous turn runs as proposed, without a new coordination call._\n\n{}",
                one_subtask_plan("UMS", ADD_KARPATHY)
            )
        )
    );
    assert_eq!(d[4], stage_open(1, "Call UMS Agent", None));
    assert_eq!(coordination_calls(&s.world).len(), 1);
    let ums = requests_to(&s.world, "ums");
    assert_eq!(ums.len(), 2);
    assert_eq!(
        ums[1].json()["message"]["content"],
        json!(ADD_KARPATHY),
        "asked exactly what it would have been asked without approval"
    );
    // The answer is the synthesis for the request the plan was made for.
    let reqs = s.world.requests();
    let synthesis = reqs.last().unwrap().json();
    let last = synthesis["messages"].as_array().unwrap().last().unwrap();
    assert!(last["content"]
        .as_str()
        .unwrap()
        .ends_with(&format!("## USER_REQUEST:\n{ADD_KARPATHY}")));
    let answer = as_history(&r.events());
    assert!(answer["content"]
        .as_str()
        .unwrap()
        .starts_with("Based on the agent's answer: UMS[ums-conv-0001#1]"));
    assert!(answer["custom_content"]["state"].get("pending").is_none());
}

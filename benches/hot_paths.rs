//! Micro-benchmarks of the coordinator's hot pure code, natively, with criterion:
//! the SSE decoder, chunk writing, request parsing, GPA history filtering, UMS state
//! lookup, and the routing and synthesis request bodies.
//!
//! `cargo bench --bench hot_paths` (short measurement times: about a minute).
//! `mas-bench report` puts the estimates into BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::executor::block_on;
use mas_coordinator::agents::dial::agent_history;
use mas_coordinator::agents::ums::find_conversation;
use mas_coordinator::config::Config;
use mas_coordinator::context::RequestContext;
use mas_coordinator::flow::emitter::{BufferTransport, Emitter};
use mas_coordinator::flow::{routing, synthesis};
use mas_coordinator::memory::state;
use mas_coordinator::memory::state::{Binding, StateTrust};
use mas_coordinator::trace::Trace;
use mas_coordinator::wire::request::{parse_request, ChatBody, ChatRequest, Message};
use mas_coordinator::wire::response::{Delta, SseEncoder, StageStatus};
use mas_coordinator::wire::sse::SseDecoder;
use serde_json::{json, Value};

const WEATHER: &str = "Kyiv: +5°C, light rain";

/// One upstream event in the aidial-sdk chunk envelope.
fn upstream_event(delta: Value) -> String {
    let chunk = json!({
        "choices": [{"index": 0, "finish_reason": null, "delta": delta}],
        "usage": null, "id": "chatcmpl-world-1", "created": 1_700_000_000, "object": "chat.completion.chunk",
    });
    format!("data: {chunk}\n\n")
}

/// A GPA tool-call state entry of about `bytes` bytes.
fn tool_call_history(k: usize, bytes: usize) -> Value {
    let mut result = String::new();
    while result.len() + 400 < bytes {
        result.push_str("Kyiv: +5°C, light rain, wind 4 m/s, humidity 87%. ");
    }
    json!([
        {"role": "assistant", "content": "", "custom_content": {"attachments": []},
         "tool_calls": [{"index": 0, "id": format!("call_{k}"), "type": "function",
                         "function": {"name": "web_search", "arguments": "{\"query\":\"Search weather in Kyiv\"}"}}]},
        {"role": "tool", "content": result, "tool_call_id": format!("call_{k}"), "name": "web_search"},
    ])
}

/// A realistic GPA answer stream: a web_search stage, an image stage with an
/// attachment, 300 word-by-word content pieces, an 8 KB state, stop, `[DONE]`.
fn gpa_stream() -> Vec<u8> {
    let mut s = upstream_event(json!({"role": "assistant"}));
    let stage = |v: Value| upstream_event(json!({"custom_content": {"stages": [v]}}));
    s += &stage(json!({"index": 0, "name": "web_search", "status": null}));
    s += &stage(
        json!({"index": 0, "content": "## Request arguments: \n```json\n{\"query\":\"Search weather in Kyiv\"}\n```\n## Response: \n"}),
    );
    s += &stage(json!({"index": 0, "content": WEATHER}));
    s += &stage(json!({"index": 0, "status": "completed"}));
    s += &stage(json!({"index": 1, "name": "image_generation_tool", "status": null}));
    s += &stage(
        json!({"index": 1, "attachments": [{"index": 0, "type": "image/png", "title": "Generated image",
        "url": "files/world-bucket/images/image-1.png"}], "status": null}),
    );
    s += &stage(json!({"index": 1, "status": "completed"}));
    for i in 0..300 {
        s += &upstream_event(json!({"content": format!("word{i} ")}));
    }
    s += &upstream_event(
        json!({"custom_content": {"attachments": [{"index": 0, "type": "image/png",
        "title": "image-1.png", "url": "files/world-bucket/images/image-1.png"}]}}),
    );
    s += &upstream_event(
        json!({"custom_content": {"state": {"tool_call_history": tool_call_history(1, 8192)}}}),
    );
    let stop = json!({"choices": [{"index": 0, "finish_reason": "stop", "delta": {}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 300, "total_tokens": 310},
        "id": "chatcmpl-world-1", "created": 1_700_000_000, "object": "chat.completion.chunk"});
    s += &format!("data: {stop}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

/// A request body with `total` messages (alternating, the last from the user);
/// earlier assistant turns are GPA turns with ~2 KB states, except that with
/// `ums` the newest one carries a UMS conversation id instead.
fn request_body_with(total: usize, ums: bool) -> Vec<u8> {
    let mut messages = Vec::new();
    if total > 1 {
        messages.push(json!({"role": "assistant", "content": "Hello! How can I help?"}));
        let pairs = (total - 2) / 2;
        for k in 0..pairs {
            messages.push(
                json!({"role": "user", "content": format!("Search weather in Kyiv, question {k}")}),
            );
            let state = if ums && k + 1 == pairs {
                json!({"ums_conversation_id": "ums-conv-0001"})
            } else {
                json!({"is_gpa": true, "gpa_messages": {"tool_call_history": tool_call_history(k, 2048)}})
            };
            messages.push(json!({
                "role": "assistant",
                "content": format!("Weather in Kyiv: +5°C, light rain (answer {k})."),
                "custom_content": {"state": state},
            }));
        }
    }
    messages.push(json!({"role": "user", "content": "Search weather in Kyiv"}));
    serde_json::to_vec(&json!({"messages": messages, "stream": true})).expect("serializable")
}

fn request_body(total: usize) -> Vec<u8> {
    request_body_with(total, false)
}

fn history(total: usize) -> Vec<Message> {
    parse_request(&request_body(total))
        .expect("a valid request")
        .messages
}

/// The same history with a UMS conversation id on the newest assistant turn.
fn ums_history(total: usize) -> Vec<Message> {
    parse_request(&request_body_with(total, true))
        .expect("a valid request")
        .messages
}

fn sse_decoder(c: &mut Criterion) {
    let stream = gpa_stream();
    let expected = stream.windows(2).filter(|w| w == b"\n\n").count();
    let mut g = c.benchmark_group("sse_decoder");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for (name, size) in [
        ("gpa_stream_16KiB_chunks", 16 * 1024),
        ("gpa_stream_7B_chunks", 7),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut decoder = SseDecoder::default();
                let mut events = Vec::with_capacity(512);
                for chunk in stream.chunks(size) {
                    decoder
                        .push(black_box(chunk), &mut events)
                        .expect("valid stream");
                }
                assert_eq!(events.len(), expected);
                events
            });
        });
    }
    g.finish();
}

fn chunk_writing(c: &mut Criterion) {
    let encoder = SseEncoder::new("chatcmpl-0123456789abcdef0123456789abcdef", 1_700_000_000);
    let state =
        json!({"is_gpa": true, "gpa_messages": {"tool_call_history": tool_call_history(1, 8192)}});
    let mut g = c.benchmark_group("chunk_writing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encoder_content_delta", |b| {
        let delta = Delta::Content("Based ".to_owned());
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            encoder.delta(&mut out, black_box(&delta));
            out.len()
        });
    });
    g.bench_function("encoder_stage_content_delta", |b| {
        let delta = Delta::StageContent {
            index: 1,
            content: "Weather in Kyiv: +5°C, light rain. ".to_owned(),
        };
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            encoder.delta(&mut out, black_box(&delta));
            out.len()
        });
    });
    g.bench_function("encoder_state_delta_8KB", |b| {
        let delta = Delta::State(state.clone());
        let mut out = Vec::with_capacity(16 * 1024);
        b.iter(|| {
            out.clear();
            encoder.delta(&mut out, black_box(&delta));
            out.len()
        });
    });
    // A whole GPA-flow response through the emitter: role, two stages with 40
    // content pieces, a mirrored stage, the state, 30 answer words, stop, [DONE],
    // flushed as the flow flushes (after every upstream chunk).
    let response_events = 2 + 4 + 40 + 3 + 1 + 30 + 2;
    g.throughput(Throughput::Elements(response_events));
    g.bench_function("emitter_gpa_response", |b| {
        b.iter_batched(
            || state.clone(),
            |state| {
                let mut out = Emitter::streaming(encoder.clone(), BufferTransport::default());
                out.role();
                let s0 = out.open_stage("Coordination Request", None);
                block_on(out.flush()).expect("buffer");
                out.stage_content(s0, "```json\n{\n  \"agent_name\": \"GPA\",\n  \"additional_instructions\": null\n}\n```\n");
                out.close_stage(s0, StageStatus::Completed);
                let s1 = out.open_stage("Call GPA Agent", None);
                block_on(out.flush()).expect("buffer");
                for i in 0..40 {
                    out.stage_content(s1, if i % 2 == 0 { "Weather " } else { "in Kyiv " });
                    block_on(out.flush()).expect("buffer");
                }
                let s2 = out.open_stage("web_search", Some(s1));
                out.stage_content(s2, WEATHER);
                out.close_stage(s2, StageStatus::Completed);
                out.set_state(state);
                out.close_stage(s1, StageStatus::Completed);
                block_on(out.flush()).expect("buffer");
                for _ in 0..30 {
                    out.content("Based ");
                    block_on(out.flush()).expect("buffer");
                }
                block_on(out.finish_ok()).expect("buffer");
                out.into_transport().map(|t| t.writes.len())
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn request_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    for (name, total) in [("1_message", 1), ("1000_messages", 1000)] {
        let body = request_body(total);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_request(black_box(&body)).expect("valid"));
        });
    }
    // Reference: the same body through plain serde_json (no path tracking, no checks).
    let body = request_body(1000);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1000_messages_reference_plain_serde_json", |b| {
        b.iter(|| serde_json::from_slice::<ChatRequest>(black_box(&body)).expect("valid"));
    });
    g.finish();
}

const SECRET: &str = "bench-state-secret-0123456789abcdef";
const BINDING: &str = "conversation-0001";
const NOW_S: u64 = 1_700_000_000;

/// A validated request for `messages`, with or without state signing
/// (without, unsigned states are read: `ALLOW_UNSIGNED_STATE=true`).
fn context(messages: Vec<Message>, secret: Option<&str>) -> RequestContext {
    RequestContext {
        config: Config {
            state_secret: secret.map(str::to_owned),
            allow_unsigned_state: secret.is_none(),
            ..Config::default()
        },
        api_key: "sk-bench".to_owned(),
        conversation_id: Some(BINDING.to_owned()),
        subject: None,
        application: None,
        coordinator: "mas-coordinator".to_owned(),
        request: ChatRequest {
            messages,
            stream: Some(true),
            n: None,
            custom_fields: None,
        },
        trace: Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16)),
        start_ms: 0,
        unix_s: NOW_S,
        recall: Default::default(),
        resume: Default::default(),
    }
}

fn trust() -> StateTrust<'static> {
    StateTrust {
        secret: Some(SECRET),
        binding: Binding {
            conversation: BINDING,
            subject: "",
            application: "",
        },
        now_s: NOW_S,
        ..StateTrust::default()
    }
}

/// The same history with every state signed (`STATE_SECRET` set).
fn signed(mut history: Vec<Message>) -> Vec<Message> {
    for m in &mut history {
        let Some(value) = m.state_value() else {
            continue;
        };
        if let Some(cc) = m.custom_content.as_mut() {
            let signed = state::sign(value, &trust());
            cc.state = Some(serde_json::value::to_raw_value(&signed).expect("serializable"));
        }
    }
    history
}

fn history_and_state(c: &mut Criterion) {
    let short = context(history(1), None);
    let long = context(history(1000), None);
    let ums_long = context(ums_history(1000), None);
    let long_signed = context(signed(history(1000)), Some(SECRET));
    let gpa = short.config.registry.get("GPA").expect("GPA").clone();
    let ums = short.config.registry.get("UMS").expect("UMS").clone();
    let mut g = c.benchmark_group("history");
    // Each request reads its history's trusted states once (the context's
    // recall) on first use: every iteration starts from a fresh context, so
    // the figures include that read, as a request pays it.
    let fresh = |ctx: &RequestContext| {
        let mut c = ctx.clone();
        c.recall = Default::default();
        c
    };
    g.bench_function("gpa_history_1_message", |b| {
        b.iter_batched_ref(
            || fresh(&short),
            |ctx| agent_history(black_box(ctx), &gpa, None),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("gpa_history_1000_messages", |b| {
        b.iter_batched_ref(
            || fresh(&long),
            |ctx| agent_history(black_box(ctx), &gpa, Some("Be brief.")),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("gpa_history_1000_messages_signed_states", |b| {
        b.iter_batched_ref(
            || fresh(&long_signed),
            |ctx| {
                let h = agent_history(black_box(ctx), &gpa, None);
                assert_eq!(h.len(), 999);
                h
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("find_conversation_id_1000_messages_newest", |b| {
        b.iter_batched_ref(
            || fresh(&ums_long),
            |ctx| find_conversation(black_box(ctx), &ums).expect("present"),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("find_conversation_id_1000_messages_absent", |b| {
        b.iter_batched_ref(
            || fresh(&long),
            |ctx| find_conversation(black_box(ctx), &ums),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("find_conversation_id_1000_messages_signed_absent", |b| {
        b.iter_batched_ref(
            || fresh(&long_signed),
            |ctx| find_conversation(black_box(ctx), &ums),
            BatchSize::LargeInput,
        );
    });
    let state_2k = long_signed.request.messages[2]
        .state_value()
        .expect("a state");
    g.bench_function("state_verify_2KB", |b| {
        b.iter(|| assert!(state::verify(black_box(&state_2k), &trust())));
    });
    g.finish();
}

fn request_bodies(c: &mut Criterion) {
    let short = context(history(1), None);
    let long = context(history(1000), None);
    let gpa = short.config.registry.get("GPA").expect("GPA").clone();
    let answer = "Weather in Kyiv: +5°C, light rain. GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: Search weather in Kyiv";
    let last = synthesis::final_user_text(answer, "Search weather in Kyiv");
    let mut g = c.benchmark_group("request_body");
    g.bench_function("routing_1_message", |b| {
        b.iter(|| routing::request_body(black_box(&short)));
    });
    g.bench_function("routing_1000_messages", |b| {
        b.iter(|| routing::request_body(black_box(&long)));
    });
    g.bench_function("synthesis_1_message", |b| {
        b.iter(|| synthesis::request_body(black_box(&short), synthesis::SYNTHESIS_PROMPT, &last));
    });
    g.bench_function("synthesis_1000_messages", |b| {
        b.iter(|| synthesis::request_body(black_box(&long), synthesis::SYNTHESIS_PROMPT, &last));
    });
    // As `agents::dial` builds it: the agent's history serialized straight into the body.
    g.bench_function("gpa_1000_messages", |b| {
        b.iter(|| {
            let messages = agent_history(black_box(&long), &gpa, None);
            ChatBody {
                messages: &messages,
                stream: true,
                response_format: None,
            }
            .to_vec()
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = sse_decoder, chunk_writing, request_parsing, history_and_state, request_bodies
}
criterion_main!(hot_paths);

//! A bounded load test on loopback: 1,000 concurrent streamed requests (a mix of
//! UMS, plain GPA and GPA-with-a-tool prompts) through ONE `wasmtime serve`
//! running the BUILT component against ONE local DIAL world. Every stream must
//! be complete (`[DONE]`, no error event), well-formed (the DIAL choice rules)
//! and carry exactly its own expected events: the world is deterministic, so
//! only ids, timestamps and UMS conversation numbers vary, and the conversation
//! numbers must be distinct (no two requests share or swap a conversation).
//!
//! The open-files soft limit is raised from inside the test (the client, the
//! world and, inherited, wasmtime each hold about one socket per request).
//!
//! Build the component first:
//! `cargo build --release --target wasm32-wasip2 -p mas-coordinator`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::host::WasiHost;
use common::wire::{split_words, stage_close, stage_content, stage_open, state};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mas_world::{Fault, World, WorldOptions};
use serde_json::{json, Value};

/// Concurrent requests.
const REQUESTS: usize = 1_000;
/// Bound for the whole run (all requests sent at once).
const OVERALL: Duration = Duration::from_secs(120);
/// The routing call is held this long, so that every request is in flight at
/// the same time (heads and first events are sent before the routing call).
/// Accepting and starting 1,000 requests took up to about 2.5 s on a slow
/// 2-core VM; at 1.5 s the first streams sometimes ended before the last
/// heads arrived (920–980 open at once, with the previous component too).
const ROUTING_DELAY_MS: u64 = 3_000;
/// Open files this test wants: a client socket, a world socket and (in
/// wasmtime) an incoming and an outgoing socket per request, plus slack.
const NOFILE: u64 = 8_192;
const KEY: &str = "sk-load-PER-REQUEST-31c7e0a2";
/// `wasmtime serve` flags (override with `LOAD_WASMTIME_FLAGS`).
const WASMTIME_FLAGS: &[&str] = &["-O", "pooling-allocator=n"];

/// What request `i` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ums,
    Gpa,
    GpaSearch,
}

fn kind(i: usize) -> Kind {
    match i % 3 {
        0 => Kind::Ums,
        1 => Kind::Gpa,
        _ => Kind::GpaSearch,
    }
}

fn prompt(i: usize) -> String {
    match kind(i) {
        Kind::Ums => format!("Please check the account of user number {i}"),
        Kind::Gpa => format!("Tell me a fact about the number {i}"),
        Kind::GpaSearch => format!("Search the news about topic {i}"),
    }
}

/// One finished exchange.
#[derive(Debug)]
struct Exchange {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    head_at: Instant,
    done_at: Instant,
}

async fn stream_one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    i: usize,
) -> Result<Exchange, String> {
    let body = json!({"stream": true, "messages": [{"role": "user", "content": prompt(i)}]});
    let request = hyper::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .header("api-key", KEY)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let head_at = Instant::now();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes()
        .to_vec();
    Ok(Exchange {
        status,
        content_type,
        body,
        head_at,
        done_at: Instant::now(),
    })
}

// ---------------------------------------------------------------------------
// The expected stream of each request (the world's rules, see world/src/lib.rs)

/// The deltas of request `i`'s stream (`conv`: its UMS conversation on the
/// UMS whose endpoint tag is `ums_tag`), ending with `"STOP"` and `"[DONE]"`.
fn expected(i: usize, conv: &str, ums_tag: &str) -> Vec<Value> {
    let p = prompt(i);
    let agent = if kind(i) == Kind::Ums { "UMS" } else { "GPA" };
    let mut d = vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
        stage_content(
            0,
            &format!(
                "```json\n{{\n  \"agent_name\": \"{agent}\",\n  \"additional_instructions\": null\n}}\n```\n"
            ),
        ),
        stage_close(0, "completed"),
        stage_open(1, &format!("Call {agent} Agent"), None),
    ];
    let answer = match kind(i) {
        Kind::Ums => {
            let reply = format!("UMS[{conv}#1]: Noted: {p}");
            d.push(stage_content(
                1,
                &format!("_Created new UMS conversation: {conv}_\n\n"),
            ));
            d.extend(split_words(&reply).iter().map(|w| stage_content(1, w)));
            d.push(stage_close(1, "completed"));
            d.push(state(
                json!({"ums_conversation_id": conv, "ums_endpoint": ums_tag}),
            ));
            reply
        }
        Kind::Gpa | Kind::GpaSearch => {
            let mut text = String::new();
            let mut history = Vec::new();
            if kind(i) == Kind::GpaSearch {
                let args = json!({"query": p});
                d.push(stage_open(2, "web_search", Some(1)));
                d.push(stage_content(
                    2,
                    &format!("## Request arguments: \n```json\n{args}\n```\n## Response: \n"),
                ));
                d.push(stage_content(2, "Kyiv: +5°C, light rain"));
                d.push(stage_close(2, "completed"));
                text.push_str("Weather in Kyiv: +5°C, light rain. ");
                d.push(stage_content(1, &text));
                history.push(json!({"role": "assistant", "content": "", "custom_content": {"attachments": []},
                    "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "web_search", "arguments": args.to_string()}}]}));
                history.push(json!({"role": "tool", "content": "Kyiv: +5°C, light rain",
                    "tool_call_id": "call_1", "name": "web_search"}));
            }
            let summary = format!(
                "GPA[general-purpose-agent] got 1 messages (user), 0 with tool_call_history; request: {p}"
            );
            d.push(stage_content(1, &summary));
            text.push_str(&summary);
            d.push(stage_close(1, "completed"));
            d.push(state(
                json!({"is_gpa": true, "gpa_messages": {"tool_call_history": history},
                                "agents": {"GPA": [{"answer": text}]}}),
            ));
            text
        }
    };
    let reply = format!("Based on the agent's answer: {}", answer.trim());
    d.extend(split_words(&reply).iter().map(|w| json!({"content": w})));
    d.push(json!("STOP"));
    d.push(json!("[DONE]"));
    d
}

/// Checks one stream's envelope and DIAL choice rules and returns its deltas
/// (`"STOP"` for the stop chunk, `"[DONE]"`), or what is wrong.
fn well_formed(events: &[String]) -> Result<Vec<Value>, String> {
    let mut envelope: Option<(Value, Value)> = None;
    let mut out = Vec::new();
    let mut stages: Vec<bool> = Vec::new(); // open?
    let mut states = 0;
    for (n, e) in events.iter().enumerate() {
        if e == "[DONE]" {
            if n + 1 != events.len() {
                return Err("[DONE] is not last".into());
            }
            out.push(json!("[DONE]"));
            continue;
        }
        let v: Value = serde_json::from_str(e).map_err(|err| format!("{err}: {e}"))?;
        if v.get("error").is_some() {
            return Err(format!("error event: {e}"));
        }
        let this = (v["id"].clone(), v["created"].clone());
        if !this.0.is_string() || !this.1.is_u64() || v["object"] != "chat.completion.chunk" {
            return Err(format!("bad envelope: {e}"));
        }
        if *envelope.get_or_insert_with(|| this.clone()) != this {
            return Err("id/created changed".into());
        }
        let choice = &v["choices"][0];
        if choice["finish_reason"] == "stop" {
            if stages.iter().any(|open| *open) {
                return Err("stop chunk with a stage still open".into());
            }
            out.push(json!("STOP"));
            continue;
        }
        let delta = choice["delta"].clone();
        for s in delta
            .pointer("/custom_content/stages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = usize::try_from(s["index"].as_u64().ok_or("stage without index")?)
                .map_err(|e| e.to_string())?;
            if index == stages.len() {
                if s.get("name").is_none() {
                    return Err(format!("stage {index} opened without a name"));
                }
                stages.push(true);
            } else if index > stages.len() {
                return Err(format!("stage index {index} skips ahead"));
            } else if !stages[index] {
                return Err(format!("stage {index} used after closing"));
            }
            match s["status"].as_str() {
                Some("completed") => stages[index] = false,
                None => {}
                Some(other) => return Err(format!("stage {index} closed as {other}")),
            }
        }
        if delta.pointer("/custom_content/state").is_some() {
            states += 1;
        }
        out.push(delta);
    }
    if states != 1 {
        return Err(format!("{states} state chunks"));
    }
    if out.len() < 2 || out[out.len() - 2] != "STOP" || out[out.len() - 1] != "[DONE]" {
        return Err("does not end with the stop chunk and [DONE]".into());
    }
    Ok(out)
}

/// The `data` of every event of an SSE body (each event one `data:` line
/// and a blank line, as the coordinator writes them).
fn sse_data(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    if !text.ends_with("\n\n") {
        return Err(format!("the body ends inside an event: {text:?}"));
    }
    text.split_terminator("\n\n")
        .map(|event| {
            event
                .strip_prefix("data: ")
                .filter(|data| !data.contains('\n'))
                .map(str::to_owned)
                .ok_or_else(|| format!("not one data line: {event:?}"))
        })
        .collect()
}

/// The UMS conversation a stream reports in its state.
fn conversation_of(deltas: &[Value]) -> Option<String> {
    deltas.iter().find_map(|d| {
        d.pointer("/custom_content/state/ums_conversation_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Raises the open-files soft limit towards `NOFILE` (bounded by the hard
/// limit) and returns the limit in force.
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(NOFILE).unwrap_or_else(|e| {
        eprintln!("cannot raise the open-files limit: {e}");
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_are_all_complete_and_exact() {
    let nofile = raise_nofile();
    assert!(
        nofile >= 4 * REQUESTS as u64,
        "the open-files limit is {nofile}; this test needs about {}: raise the hard limit (ulimit -Hn)",
        4 * REQUESTS
    );
    let world = World::start(WorldOptions::default()).await.unwrap();
    world.set_fault(
        "routing",
        Fault {
            first_byte_delay_ms: ROUTING_DELAY_MS,
            ..Fault::default()
        },
    );
    let flags: Vec<String> = std::env::var("LOAD_WASMTIME_FLAGS")
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_else(|_| WASMTIME_FLAGS.iter().map(|f| (*f).to_owned()).collect());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let host = WasiHost::start_with_args(
        &flags,
        &[
            ("DIAL_ENDPOINT", &world.core_url()),
            ("UMS_AGENT_ENDPOINT", &world.ums_url()),
        ],
    )
    .await;
    let client = Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Full<Bytes>>(),
    );
    let url = Arc::new(host.chat_url());
    let ums_tag = mas_coordinator::memory::endpoint_tag(&world.ums_url());

    let started = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { stream_one(&client, &url, i).await })
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let results = tokio::time::timeout(OVERALL, all)
        .await
        .unwrap_or_else(|_| panic!("the {REQUESTS} streams did not finish within {OVERALL:?}"));
    let elapsed = started.elapsed();

    let mut failures: Vec<String> = Vec::new();
    let mut conversations = BTreeSet::new();
    let mut times = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let exchange = match result {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                failures.push(format!("#{i}: {e}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("#{i}: task failed: {e}"));
                continue;
            }
        };
        times.push((exchange.head_at, exchange.done_at));
        if exchange.status != 200
            || exchange.content_type.as_deref() != Some("text/event-stream; charset=utf-8")
        {
            failures.push(format!(
                "#{i}: {} {:?} {}",
                exchange.status,
                exchange.content_type,
                String::from_utf8_lossy(&exchange.body)
            ));
            continue;
        }
        let events = match sse_data(&exchange.body) {
            Ok(events) => events,
            Err(e) => {
                failures.push(format!("#{i}: {e}"));
                continue;
            }
        };
        let deltas = match well_formed(&events) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("#{i}: {e}"));
                continue;
            }
        };
        let conv = if kind(i) == Kind::Ums {
            let Some(conv) = conversation_of(&deltas) else {
                failures.push(format!("#{i}: no UMS conversation"));
                continue;
            };
            if !conversations.insert(conv.clone()) {
                failures.push(format!("#{i}: conversation {conv} used twice"));
            }
            conv
        } else {
            String::new()
        };
        let want = expected(i, &conv, &ums_tag);
        if deltas != want {
            let at = deltas
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(deltas.len().min(want.len()));
            failures.push(format!(
                "#{i}: differs at delta {at}: got {:?}, want {:?}",
                deltas.get(at),
                want.get(at)
            ));
        }
    }

    // How many streams were open at the same time (head received, not finished).
    let mut edges: Vec<(Instant, i32)> = times
        .iter()
        .flat_map(|(head, done)| [(*head, 1), (*done, -1)])
        .collect();
    edges.sort();
    let (mut open, mut max_open) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        max_open = max_open.max(open);
    }
    let requests = world.requests().len();
    eprintln!(
        "{REQUESTS} streams in {elapsed:?}: {} failed, at most {max_open} open at once, \
         {requests} upstream requests, open-files limit {nofile}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} streams failed; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ums = (0..REQUESTS).filter(|i| kind(*i) == Kind::Ums).count();
    let want_conversations: BTreeSet<String> =
        (1..=ums).map(|n| format!("ums-conv-{n:04}")).collect();
    assert_eq!(conversations, want_conversations);
    // Routing, agent (UMS: create + chat), synthesis.
    assert_eq!(requests, REQUESTS * 3 + ums);
    assert_eq!(
        usize::try_from(max_open).unwrap(),
        REQUESTS,
        "every stream was open at the same time"
    );
}

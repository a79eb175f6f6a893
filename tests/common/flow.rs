//! Running the flow natively: a configuration pointing at the fakes, a
//! validated request, the streamed events and the merged answer.

use mas_coordinator::app::{collect_response, prepare, stream_response, Incoming, RequestContext};
use mas_coordinator::config::Config;
use mas_coordinator::error::CoordError;
use mas_coordinator::flow::emitter::{BufferTransport, Emitter};
use mas_coordinator::trace::Trace;
use mas_coordinator::wire::response::SseEncoder;
use serde_json::{json, Value};

use super::fakes::{FakeClient, CORE, KEY, UMS, UNIX_EPOCH_MS};

/// The configuration of the fakes with `extra` variables, in `route` mode (the
/// seed's single decision) unless `extra` sets `COORDINATION_MODE`. Unsigned
/// states are read (`ALLOW_UNSIGNED_STATE=true`, as a deployment that serves
/// the seed's conversations, written unsigned by the Python reference, is
/// configured) unless `extra` says otherwise or sets `STATE_SECRET`.
pub fn config_with(extra: &[(&str, &str)]) -> Config {
    let vars = vars_with(extra);
    Config::from_lookup(|k| lookup(&vars, k)).unwrap()
}

/// The variables of [`config_with`]: the fakes' defaults, then `extra`.
pub fn vars_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let signed = extra.iter().any(|(n, _)| *n == "STATE_SECRET");
    let mut vars: Vec<(&str, &str)> = vec![
        ("DIAL_ENDPOINT", CORE),
        ("UMS_AGENT_ENDPOINT", UMS),
        ("COORDINATION_MODE", "route"),
        (
            "ALLOW_UNSIGNED_STATE",
            if signed { "false" } else { "true" },
        ),
    ];
    vars.extend_from_slice(extra);
    vars.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value of `name` in `vars` (the last one set wins).
pub fn lookup(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// The configuration of the fakes.
pub fn config() -> Config {
    config_with(&[])
}

/// A streaming request of one user message.
pub fn ask(text: &str) -> Value {
    json!({"stream": true, "messages": [{"role": "user", "content": text}]})
}

pub fn context(body: Value, conversation_id: Option<&str>) -> RequestContext {
    context_with(config(), body, conversation_id)
}

pub fn context_with(config: Config, body: Value, conversation_id: Option<&str>) -> RequestContext {
    context_at(config, body, conversation_id, UNIX_EPOCH_MS)
}

/// A request arriving at `unix_ms`.
pub fn context_at(
    config: Config,
    body: Value,
    conversation_id: Option<&str>,
    unix_ms: u64,
) -> RequestContext {
    context_full(config, body, conversation_id, None, unix_ms)
}

/// A request with an `Authorization` header, arriving at `unix_ms`.
pub fn context_full(
    config: Config,
    body: Value,
    conversation_id: Option<&str>,
    authorization: Option<&str>,
    unix_ms: u64,
) -> RequestContext {
    let conv = conversation_id.map(str::to_owned);
    let auth = authorization.map(str::to_owned);
    prepare(
        config,
        |h| match h {
            "api-key" => Some(KEY.to_owned()),
            "x-conversation-id" => conv.clone(),
            "authorization" => auth.clone(),
            _ => None,
        },
        body.to_string().as_bytes(),
        Incoming {
            path: "/openai/deployments/mas-coordinator/chat/completions",
            trace: Trace::from_headers(None, Some("trace-abc"), "a".repeat(32), "1".repeat(16)),
            start_ms: 0,
            unix_ms,
        },
    )
    .unwrap()
}

/// Runs the streaming flow; returns each write to the client, as text.
pub fn run_stream_writes(ctx: &RequestContext, client: &FakeClient) -> Vec<String> {
    let mut out = Emitter::streaming(
        SseEncoder::new("resp-1", 1_700_000_000),
        BufferTransport::default(),
    );
    client.run(stream_response(ctx, client, &mut out));
    let transport = out.into_transport().expect("streaming emitter");
    transport
        .writes
        .into_iter()
        .map(|w| String::from_utf8(w).unwrap())
        .collect()
}

/// Runs the streaming flow; returns the SSE events' data (JSON or "[DONE]") and
/// the number of separate writes. Comments (heartbeats) are left out of the
/// events, as SSE clients leave them out.
pub fn run_stream(ctx: &RequestContext, client: &FakeClient) -> (Vec<String>, usize) {
    let writes = run_stream_writes(ctx, client);
    let text = writes.concat();
    let events = text
        .split("\n\n")
        .filter(|s| !s.is_empty() && !s.starts_with(':'))
        .map(|s| {
            s.strip_prefix("data: ")
                .expect("every event is a data line")
                .to_owned()
        })
        .collect();
    (events, writes.len())
}

/// The non-streaming flow.
pub async fn collect(
    ctx: &RequestContext,
    client: &FakeClient,
    id: &str,
    created: u64,
) -> Result<Value, CoordError> {
    collect_response(ctx, client, id, created).await
}

/// The `delta` of every chunk event, then the tail markers as strings (see
/// `wire::deltas`), checking the envelope the flow tests give the emitter.
pub fn deltas(events: &[String]) -> Vec<Value> {
    for e in events.iter().filter(|e| e.starts_with("{\"choices\"")) {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(
            (&v["id"], &v["created"]),
            (&json!("resp-1"), &json!(1_700_000_000))
        );
    }
    super::wire::deltas(events)
}

pub fn decision_block(agent: &str, instructions: Value) -> String {
    format!(
        "```json\n{{\n  \"agent_name\": \"{agent}\",\n  \"additional_instructions\": {}\n}}\n```\n",
        serde_json::to_string(&instructions).unwrap()
    )
}

/// The state a streamed turn set (its first state delta).
pub fn state_of(events: &[String]) -> Value {
    deltas(events)
        .into_iter()
        .find_map(|d| d["custom_content"].get("state").cloned())
        .unwrap()
}

/// The error object of a failed stream.
pub fn error_of(events: &[String]) -> Value {
    serde_json::from_str::<Value>(&events[events.len() - 2]).unwrap()["error"].clone()
}

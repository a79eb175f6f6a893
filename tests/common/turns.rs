//! Whole chat turns through the built component and the local world, for the
//! e2e tier (tests/e2e.rs, tests/faults.rs): sending one, the deltas a turn
//! must stream (from the world's scripted answers, world/src/lib.rs) and the
//! assistant message DIAL Chat sends back for it.

use mas_coordinator::memory::endpoint_tag;
use serde_json::{json, Value};

use super::host::{post_json_timed, TimedResponse, WasiHost};
use super::wire::{
    content, decision_block, deltas, split_words, stage_close, stage_content, stage_open, state,
};

/// Streams one chat request with the per-request `key` (and optionally
/// `X-CONVERSATION-ID`): a 200 event stream with a trace id, the key nowhere in it.
pub async fn chat_stream(
    host: &WasiHost,
    key: &str,
    messages: &[Value],
    conv: Option<&str>,
) -> TimedResponse {
    let mut headers = vec![("Api-Key", key)];
    if let Some(c) = conv {
        headers.push(("X-CONVERSATION-ID", c));
    }
    let body = json!({"model": "mas-coordinator", "stream": true, "messages": messages});
    let r = post_json_timed(&host.chat_url(), &headers, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body()));
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(r.header("x-trace-id").is_some_and(|t| t.len() == 32));
    assert!(
        !String::from_utf8_lossy(&r.body()).contains(key),
        "the key reached the client"
    );
    r
}

/// Role chunk, stage 0 opened, `stage0` as its content, closed, stage 1 opened.
pub fn opening_with(agent: &str, stage0: &str) -> Vec<Value> {
    vec![
        json!({"role": "assistant"}),
        stage_open(0, "Coordination Request", None),
        stage_content(0, stage0),
        stage_close(0, "completed"),
        stage_open(1, &format!("Call {agent} Agent"), None),
    ]
}

/// The opening of a routed turn: stage 0 holds the decision for `agent`.
pub fn opening(agent: &str) -> Vec<Value> {
    opening_with(agent, &decision_block(agent))
}

/// The world's synthesis reply for our template
/// `## CONTEXT:\n{answer}\n---\n## USER_REQUEST:\n{request}` (src/flow/synthesis.rs):
/// the context between the markers, trimmed, with the `---` line removed.
pub fn synthesis_reply(agent_answer: &str) -> String {
    format!("Based on the agent's answer: {}", agent_answer.trim())
}

/// The synthesis of `agent_answer`, one delta per word, the stop chunk, `[DONE]`.
pub fn closing(agent_answer: &str) -> Vec<Value> {
    let mut out: Vec<Value> = split_words(&synthesis_reply(agent_answer))
        .iter()
        .map(|w| content(w))
        .collect();
    out.push(json!("STOP"));
    out.push(json!("[DONE]"));
    out
}

/// Our state for UMS conversation `conv` on the UMS endpoint `ums_url`.
pub fn ums_state(ums_url: &str, conv: &str) -> Value {
    json!({"ums_conversation_id": conv, "ums_endpoint": endpoint_tag(ums_url)})
}

/// The note in the UMS stage when UMS conversation `conv` was created.
pub fn created(conv: &str) -> String {
    format!("_Created new UMS conversation: {conv}_\n\n")
}

/// A whole successful UMS turn: `notes` first in stage 1, then the reply word
/// by word, then `state_value` as our state.
pub fn ums_expected(notes: &[String], state_value: Value, reply: &str) -> Vec<Value> {
    let mut d = opening("UMS");
    d.extend(notes.iter().map(|n| stage_content(1, n)));
    d.extend(split_words(reply).iter().map(|w| stage_content(1, w)));
    d.push(stage_close(1, "completed"));
    d.push(state(state_value));
    d.extend(closing(reply));
    d
}

/// A whole successful GPA turn: `stage0` as the content of stage 0, then
/// `stage1` (GPA's stage from its first delta through its close, and our
/// state), then the synthesis of `answer`.
pub fn gpa_expected(stage0: &str, stage1: &[Value], answer: &str) -> Vec<Value> {
    let mut d = opening_with("GPA", stage0);
    d.extend(stage1.iter().cloned());
    d.extend(closing(answer));
    d
}

/// The assistant message DIAL Chat sends back next turn: only content and
/// state (docs/protocol.md §1.3). Every turn sets a state, once.
pub fn as_history(events: &[String]) -> Value {
    let mut text = String::new();
    let mut st = Value::Null;
    for d in deltas(events) {
        if let Some(t) = d["content"].as_str() {
            text.push_str(t);
        }
        if let Some(s) = d.pointer("/custom_content/state") {
            assert!(st.is_null(), "state is sent once");
            st = s.clone();
        }
    }
    assert!(!st.is_null(), "every turn sets a state");
    json!({"role": "assistant", "content": text, "custom_content": {"state": st}})
}

//! The DIAL wire as the tests see it: SSE events split into deltas (with the
//! envelope checked), builders for the expected deltas, and the local world's
//! word split.

use serde_json::{json, Value};

/// A user message.
pub fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// The `delta` of every chunk; the stop chunk as `"STOP"`, `[DONE]` as
/// `"[DONE]"`, error events as they are. Checks the envelope on the way: one id
/// and one `created` for the whole response, `usage: null` on every chunk but
/// the last (which carries the request's usage).
pub fn deltas(events: &[String]) -> Vec<Value> {
    let mut envelope: Option<(Value, Value)> = None;
    events
        .iter()
        .map(|e| {
            if e == "[DONE]" {
                return json!("[DONE]");
            }
            let v: Value = serde_json::from_str(e).unwrap();
            if v.get("error").is_some() {
                return v;
            }
            assert_eq!(v["object"], "chat.completion.chunk", "{e}");
            assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{e}");
            assert!(v["created"].is_u64(), "{e}");
            let this = (v["id"].clone(), v["created"].clone());
            assert_eq!(envelope.get_or_insert_with(|| this.clone()), &this);
            assert_eq!(v["choices"].as_array().unwrap().len(), 1, "{e}");
            assert_eq!(v["choices"][0]["index"], 0, "{e}");
            if v["choices"][0]["finish_reason"] == "stop" {
                assert_eq!(v["choices"][0]["delta"], json!({}), "{e}");
                return json!("STOP");
            }
            assert_eq!(v["usage"], Value::Null, "{e}");
            assert_eq!(v["choices"][0]["finish_reason"], Value::Null, "{e}");
            v["choices"][0]["delta"].clone()
        })
        .collect()
}

pub fn stage_open(index: usize, name: &str, parent: Option<usize>) -> Value {
    let mut s = json!({"index": index, "name": name, "status": null});
    if let Some(p) = parent {
        s["parent_stage_index"] = json!(p);
    }
    json!({"custom_content": {"stages": [s]}})
}
pub fn stage_content(index: usize, content: &str) -> Value {
    json!({"custom_content": {"stages": [{"index": index, "content": content, "status": null}]}})
}
pub fn stage_close(index: usize, status: &str) -> Value {
    json!({"custom_content": {"stages": [{"index": index, "status": status}]}})
}
pub fn state(state: Value) -> Value {
    json!({"custom_content": {"state": state}})
}
pub fn content(text: &str) -> Value {
    json!({"content": text})
}
pub fn decision_block(agent: &str) -> String {
    format!(
        "```json\n{{\n  \"agent_name\": \"{agent}\",\n  \"additional_instructions\": null\n}}\n```\n"
    )
}

/// The world's word split (world docs: "split after every run of whitespace").
pub fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            pieces.push(std::mem::take(&mut current));
            in_space = false;
        }
        current.push(c);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// A DIAL error event for an upstream failure (always `runtime_error`, code 500).
pub fn runtime_error(message: &str, display_message: &str) -> Value {
    json!({"error": {"message": message, "type": "runtime_error", "code": "500",
                     "display_message": display_message}})
}

/// The end of a failed stream: the listed stages closed as failed (in this
/// order), the stop chunk, the error event, `[DONE]`.
pub fn failed_tail(failed_stages: &[usize], error: Value) -> Vec<Value> {
    let mut d: Vec<Value> = failed_stages
        .iter()
        .map(|i| stage_close(*i, "failed"))
        .collect();
    d.push(json!("STOP"));
    d.push(error);
    d.push(json!("[DONE]"));
    d
}

/// `Authorization: Bearer <jwt>` of a token whose payload is `{"sub": sub}`
/// (unsigned, as the coordinator reads it: DIAL Core verified it).
pub fn bearer(sub: &str) -> String {
    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
    let payload = serde_json::json!({ "sub": sub }).to_string();
    format!(
        "Bearer {}.{}.x",
        b64url(br#"{"alg":"none"}"#),
        b64url(payload.as_bytes())
    )
}

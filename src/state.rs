//! The state we store on assistant messages, and whether to trust it.
//!
//! State comes back from the client, so it is untrusted input: agents read it
//! only through [`trusted_state`]. With `STATE_SECRET` set, every state we emit
//! carries `"signature"`: an HMAC-SHA256 over the state (without the signature,
//! as canonical JSON with sorted keys) and the conversation it belongs to
//! (`X-CONVERSATION-ID`). A state whose signature does not verify, or that was
//! copied from another conversation, is ignored as if absent. Without a secret,
//! states are read as they come (their shape is still checked by each agent).

use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;

use crate::dial::request::Message;

/// The state key holding the signature.
pub const SIGNATURE: &str = "signature";

fn mac(secret: &str, binding: &str, state: &Value) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(binding.as_bytes());
    mac.update(b"\n");
    let mut unsigned = state.clone();
    if let Value::Object(map) = &mut unsigned {
        map.remove(SIGNATURE);
    }
    // serde_json's map is ordered by key, so this serialization is canonical.
    mac.update(&serde_json::to_vec(&unsigned).ok()?);
    Some(mac)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Adds the signature to `state` (an object) when a secret is configured.
pub fn sign(mut state: Value, secret: Option<&str>, binding: &str) -> Value {
    let Some(secret) = secret else {
        return state;
    };
    if let Some(mac) = mac(secret, binding, &state) {
        let tag = hex(&mac.finalize().into_bytes());
        if let Value::Object(map) = &mut state {
            map.insert(SIGNATURE.to_owned(), Value::String(tag));
        }
    }
    state
}

/// Whether `state` carries a valid signature for `binding` (constant-time compare).
pub fn verify(state: &Value, secret: &str, binding: &str) -> bool {
    let Some(tag) = state.get(SIGNATURE).and_then(Value::as_str).and_then(unhex) else {
        return false;
    };
    mac(secret, binding, state).is_some_and(|m| m.verify_slice(&tag).is_ok())
}

/// The state of `message` if it may be trusted: always without a secret; with
/// one, only when its signature verifies for this conversation.
pub fn trusted_state<'a>(
    message: &'a Message,
    secret: Option<&str>,
    binding: &str,
) -> Option<&'a RawValue> {
    let state = message.state()?;
    match secret {
        None => Some(state),
        Some(secret) => {
            let value: Value = serde_json::from_str(state.get()).ok()?;
            verify(&value, secret, binding).then_some(state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-secret";

    #[test]
    fn signed_state_verifies_only_in_its_conversation() {
        let s = sign(json!({"ums_conversation_id": "c1"}), Some(SECRET), "conv-A");
        assert_eq!(s["ums_conversation_id"], "c1");
        assert_eq!(s[SIGNATURE].as_str().unwrap().len(), 64);
        assert!(verify(&s, SECRET, "conv-A"));
        assert!(
            !verify(&s, SECRET, "conv-B"),
            "spliced into another conversation"
        );
        assert!(!verify(&s, "another-secret-123456", "conv-A"));
        let mut tampered = s.clone();
        tampered["ums_conversation_id"] = json!("c2");
        assert!(!verify(&tampered, SECRET, "conv-A"));
        let mut garbage = s;
        garbage[SIGNATURE] = json!("zz");
        assert!(!verify(&garbage, SECRET, "conv-A"));
    }

    #[test]
    fn key_order_does_not_matter() {
        let s = sign(
            json!({"is_gpa": true, "gpa_messages": {"b": 1, "a": [1, 2]}}),
            Some(SECRET),
            "",
        );
        let reordered: Value = serde_json::from_str(&format!(
            r#"{{"signature":{},"gpa_messages":{{"a":[1,2],"b":1}},"is_gpa":true}}"#,
            s[SIGNATURE]
        ))
        .unwrap();
        assert!(verify(&reordered, SECRET, ""));
    }

    #[test]
    fn without_a_secret_nothing_is_added_and_everything_is_read() {
        let s = sign(json!({"a": 1}), None, "x");
        assert_eq!(s, json!({"a": 1}));
        let m: Message = serde_json::from_value(
            json!({"role": "assistant", "content": "", "custom_content": {"state": {"a": 1}}}),
        )
        .unwrap();
        assert_eq!(
            trusted_state(&m, None, "x").map(RawValue::get),
            Some(r#"{"a":1}"#)
        );
        assert!(
            trusted_state(&m, Some(SECRET), "x").is_none(),
            "unsigned state is not trusted"
        );
    }
}

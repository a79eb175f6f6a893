//! Whether to trust the state that comes back from the client, and the
//! signature we put on the state we emit.
//!
//! State travels through the client (DIAL Chat stores it on our assistant
//! messages and sends it back), so it is untrusted input: agents read it only
//! through [`trusted_state`]. With `STATE_SECRET` set, every state we emit
//! carries `"signature": "<issued unix seconds>.<hex HMAC-SHA256>"`. The HMAC
//! covers the issue time, the [`Binding`] (the conversation, and the user when
//! DIAL Core forwarded their token) and the state in a canonical form: keys
//! sorted, the signature left out, and `index` removed from every object inside
//! a list. That last rule is what aidial-sdk's non-streaming merge does to a
//! message (`cleanup_indices`), so a state survives being folded by a client
//! and still verifies. A state whose signature does not verify, was issued for
//! another binding, lies in the future or is older than `STATE_MAX_AGE_S` is
//! ignored, as if absent. Without a secret every state is read as it comes
//! (each agent still checks its shape).

use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;

use crate::wire::request::Message;
use crate::wire::response::cleanup_indices;

/// The state key holding the signature.
pub const SIGNATURE: &str = "signature";
/// How far in the future an issue time may lie (clock skew between instances).
const MAX_CLOCK_SKEW_S: u64 = 300;

/// Who a state belongs to: what the signature binds it to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding<'a> {
    /// `X-CONVERSATION-ID` (chosen by the client: DIAL Chat sends its chat id).
    pub conversation: &'a str,
    /// The `sub` claim of the user's token, when DIAL Core forwarded it
    /// (`forwardAuthToken`); empty otherwise.
    pub subject: &'a str,
}

/// How to trust states in this request's history and sign the one we emit.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateTrust<'a> {
    /// `STATE_SECRET`, when signing is on.
    pub secret: Option<&'a str>,
    /// Who the states must belong to.
    pub binding: Binding<'a>,
    /// Now, in unix seconds (issue time of what we sign).
    pub now_s: u64,
    /// `STATE_MAX_AGE_S`: older signed states are ignored.
    pub max_age_s: Option<u64>,
}

fn mac(secret: &str, binding: Binding<'_>, issued_s: u64, state: &Value) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    // Length-prefixed fields, so no two bindings serialize alike.
    for part in [binding.conversation, binding.subject] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac.update(&issued_s.to_be_bytes());
    let mut canonical = state.clone();
    if let Value::Object(map) = &mut canonical {
        map.remove(SIGNATURE);
    }
    cleanup_indices(&mut canonical);
    // serde_json's map is ordered by key, so this serialization is canonical.
    mac.update(&serde_json::to_vec(&canonical).ok()?);
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
pub fn sign(mut state: Value, trust: &StateTrust<'_>) -> Value {
    let Some(secret) = trust.secret else {
        return state;
    };
    if let Some(mac) = mac(secret, trust.binding, trust.now_s, &state) {
        let tag = format!("{}.{}", trust.now_s, hex(&mac.finalize().into_bytes()));
        if let Value::Object(map) = &mut state {
            map.insert(SIGNATURE.to_owned(), Value::String(tag));
        }
    }
    state
}

/// Whether `state` carries a valid, current signature for the trust's binding
/// (constant-time compare).
pub fn verify(state: &Value, secret: &str, trust: &StateTrust<'_>) -> bool {
    let Some((issued, tag)) = state
        .get(SIGNATURE)
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('.'))
    else {
        return false;
    };
    let (Ok(issued_s), Some(tag)) = (issued.parse::<u64>(), unhex(tag)) else {
        return false;
    };
    if issued_s > trust.now_s.saturating_add(MAX_CLOCK_SKEW_S) {
        return false;
    }
    if trust
        .max_age_s
        .is_some_and(|max| trust.now_s.saturating_sub(issued_s) > max)
    {
        return false;
    }
    mac(secret, trust.binding, issued_s, state).is_some_and(|m| m.verify_slice(&tag).is_ok())
}

/// The state of `message` if it may be trusted: always without a secret; with
/// one, only when its signature verifies. The bytes returned are the ones that
/// were verified.
pub fn trusted_state<'a>(message: &'a Message, trust: &StateTrust<'_>) -> Option<&'a RawValue> {
    let state = message.state()?;
    match trust.secret {
        None => Some(state),
        Some(secret) => {
            let value: Value = serde_json::from_str(state.get()).ok()?;
            verify(&value, secret, trust).then_some(state)
        }
    }
}

/// FNV-1a, 64 bits: a stable, cheap hash (not a secret).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `sub` claim of a bearer JWT (`Authorization: Bearer <header>.<payload>.<sig>`),
/// read without verifying it: DIAL Core checked the token before forwarding it.
/// `None` for anything else (opaque tokens, no header).
pub fn token_subject(authorization: &str) -> Option<String> {
    let token = authorization
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| authorization.trim().strip_prefix("bearer "))?;
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64url_decode(payload)?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    (!sub.is_empty() && sub.len() <= 256).then(|| sub.to_owned())
}

fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in input.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-secret";

    fn trust(conversation: &'static str, now_s: u64) -> StateTrust<'static> {
        StateTrust {
            secret: Some(SECRET),
            binding: Binding {
                conversation,
                subject: "",
            },
            now_s,
            max_age_s: None,
        }
    }

    #[test]
    fn signed_state_verifies_only_for_its_binding() {
        let t = trust("conv-A", 1_000);
        let s = sign(json!({"ums_conversation_id": "c1"}), &t);
        assert_eq!(s["ums_conversation_id"], "c1");
        let sig = s[SIGNATURE].as_str().unwrap();
        assert!(sig.starts_with("1000."), "{sig}");
        assert_eq!(sig.len(), "1000.".len() + 64);
        assert!(verify(&s, SECRET, &t));
        assert!(
            !verify(&s, SECRET, &trust("conv-B", 1_000)),
            "spliced into another conversation"
        );
        let other_user = StateTrust {
            binding: Binding {
                conversation: "conv-A",
                subject: "someone-else",
            },
            ..t
        };
        assert!(!verify(&s, SECRET, &other_user), "another user's state");
        assert!(!verify(&s, "another-secret-123456", &t));
        let mut tampered = s.clone();
        tampered["ums_conversation_id"] = json!("c2");
        assert!(!verify(&tampered, SECRET, &t));
        let mut redated = s.clone();
        redated[SIGNATURE] = json!(sig.replacen("1000.", "1001.", 1));
        assert!(!verify(&redated, SECRET, &t), "the issue time is signed");
        let mut garbage = s;
        garbage[SIGNATURE] = json!("zz");
        assert!(!verify(&garbage, SECRET, &t));
    }

    #[test]
    fn issue_time_bounds_age_and_future() {
        let s = sign(json!({"a": 1}), &trust("c", 10_000));
        assert!(verify(&s, SECRET, &trust("c", 10_000 + 86_400)));
        let aged = StateTrust {
            max_age_s: Some(3_600),
            ..trust("c", 10_000 + 3_601)
        };
        assert!(!verify(&s, SECRET, &aged), "older than STATE_MAX_AGE_S");
        assert!(
            !verify(&s, SECRET, &trust("c", 10_000 - MAX_CLOCK_SKEW_S - 1)),
            "issued in the future"
        );
        assert!(verify(&s, SECRET, &trust("c", 10_000 - MAX_CLOCK_SKEW_S)));
    }

    #[test]
    fn key_order_and_list_indices_do_not_matter() {
        let t = trust("", 5);
        let s = sign(
            json!({"is_gpa": true, "gpa_messages": {"b": 1, "a": [{"index": 0, "id": "x"}]}}),
            &t,
        );
        // What aidial-sdk's non-streaming merge makes of it: keys reordered,
        // `index` dropped inside lists.
        let folded: Value = serde_json::from_str(&format!(
            r#"{{"signature":{},"gpa_messages":{{"a":[{{"id":"x"}}],"b":1}},"is_gpa":true}}"#,
            s[SIGNATURE]
        ))
        .unwrap();
        assert!(verify(&folded, SECRET, &t));
        assert!(verify(&s, SECRET, &t));
    }

    #[test]
    fn without_a_secret_nothing_is_added_and_everything_is_read() {
        let t = StateTrust::default();
        let s = sign(json!({"a": 1}), &t);
        assert_eq!(s, json!({"a": 1}));
        let m: Message = serde_json::from_value(
            json!({"role": "assistant", "content": "", "custom_content": {"state": {"a": 1}}}),
        )
        .unwrap();
        assert_eq!(trusted_state(&m, &t).map(RawValue::get), Some(r#"{"a":1}"#));
        assert!(
            trusted_state(&m, &trust("x", 1)).is_none(),
            "unsigned state is not trusted"
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn token_subject_reads_the_sub_claim_of_a_jwt() {
        // header {"alg":"none"}, payload {"sub":"user-42","name":"Ada"}
        let token = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyLTQyIiwibmFtZSI6IkFkYSJ9.sig";
        assert_eq!(token_subject(token).as_deref(), Some("user-42"));
        assert_eq!(token_subject("Bearer opaque-token"), None);
        assert_eq!(token_subject("Basic dXNlcjpwdw=="), None);
        assert_eq!(token_subject("Bearer a.!!!.c"), None);
    }
}

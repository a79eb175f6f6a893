//! Whether to trust the state that comes back from the client, and the
//! signature we put on the state we emit.
//!
//! State travels through the client (DIAL Chat stores it on our assistant
//! messages and sends it back), and DIAL's API lets a user edit it, so it is
//! untrusted input: agents read it only through [`Verifier::trusted`].
//!
//! With `STATE_SECRET` set, every state we emit carries
//! `"signature": "<key id>.<issued unix seconds>.<hex HMAC-SHA256>"`. The key
//! id ([`key_id`]) names the secret that signed, so a secret can be rotated:
//! `STATE_SECRET_PREVIOUS` still verifies what the old secret signed. The HMAC
//! covers the issue time, the [`Binding`] (the conversation, the user when
//! DIAL Core forwarded their token, and the application instance when DIAL
//! Core names one) and the state in a canonical form: keys
//! sorted, the signature left out, and `index` removed from every object inside
//! a list. That last rule is what aidial-sdk's non-streaming merge does to a
//! message (`cleanup_indices`), so a state survives being folded by a client
//! and still verifies.
//!
//! What an agent reads of a signed state is exactly the canonical bytes the
//! HMAC covered, never the bytes as they came: an `index` key slipped into a
//! list item, a duplicated key or reordered keys verify (they fold to the same
//! canonical form) but can never reach an agent. A state whose signature does
//! not verify, was issued for another binding, lies in the future or is older
//! than `STATE_MAX_AGE_S` is ignored, as if absent.
//!
//! A state without a signature is read as it comes only with
//! `ALLOW_UNSIGNED_STATE=true` (each agent still checks its shape); otherwise
//! it is ignored. States signed before key ids existed
//! (`"<issued>.<hex>"`) still verify with either secret.

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
/// What the key id is derived from (an HMAC of this label under the secret).
const KEY_ID_LABEL: &[u8] = b"mas-coordinator state key id";

/// What precedes the application in the signed bytes (see [`Binding`]).
const APPLICATION_LABEL: &[u8] = b"\0application";

/// Who a state belongs to: what the signature binds it to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding<'a> {
    /// `X-CONVERSATION-ID` (chosen by the client: DIAL Chat sends its chat id).
    pub conversation: &'a str,
    /// The `sub` claim of the user's token, when DIAL Core forwarded it
    /// (`forwardAuthToken`); empty otherwise.
    pub subject: &'a str,
    /// `X-DIAL-APPLICATION-ID`, the application instance DIAL Core names;
    /// empty otherwise. Two instances with agents of the same name never
    /// read each other's states.
    pub application: &'a str,
}

/// How to trust states in this request's history and sign the one we emit.
#[derive(Clone, Copy, Default)]
pub struct StateTrust<'a> {
    /// `STATE_SECRET`: signs what we emit and verifies what comes back.
    pub secret: Option<&'a str>,
    /// `STATE_SECRET_PREVIOUS`: verifies what it signed before a rotation.
    pub previous_secret: Option<&'a str>,
    /// `ALLOW_UNSIGNED_STATE`: a state without a signature is read as it comes.
    pub allow_unsigned: bool,
    /// Who the states must belong to.
    pub binding: Binding<'a>,
    /// Now, in unix seconds (issue time of what we sign).
    pub now_s: u64,
    /// `STATE_MAX_AGE_S`: older signed states are ignored.
    pub max_age_s: Option<u64>,
}

impl std::fmt::Debug for StateTrust<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: Option<&str>| secret.map(|_| "***");
        f.debug_struct("StateTrust")
            .field("secret", &set(self.secret))
            .field("previous_secret", &set(self.previous_secret))
            .field("allow_unsigned", &self.allow_unsigned)
            .field("binding", &self.binding)
            .field("now_s", &self.now_s)
            .field("max_age_s", &self.max_age_s)
            .finish()
    }
}

/// The canonical bytes of `state`: keys sorted, the signature left out,
/// `index` removed inside lists. These are what the HMAC covers and what an
/// agent reads of a verified state.
fn canonical_bytes(state: &Value) -> Option<Vec<u8>> {
    let mut canonical = state.clone();
    if let Value::Object(map) = &mut canonical {
        map.remove(SIGNATURE);
    }
    cleanup_indices(&mut canonical);
    // serde_json's map is ordered by key, so this serialization is canonical.
    serde_json::to_vec(&canonical).ok()
}

fn mac(
    secret: &str,
    binding: Binding<'_>,
    issued_s: u64,
    canonical: &[u8],
) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    // Length-prefixed fields, so no two bindings serialize alike.
    for part in [binding.conversation, binding.subject] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    // Only when there is one, so that what was signed before applications
    // were bound (or outside one) still verifies; the label keeps the two
    // forms apart.
    if !binding.application.is_empty() {
        mac.update(APPLICATION_LABEL);
        mac.update(&(binding.application.len() as u64).to_be_bytes());
        mac.update(binding.application.as_bytes());
    }
    mac.update(&issued_s.to_be_bytes());
    mac.update(canonical);
    Some(mac)
}

/// The id of `secret` in signatures: 8 hex digits of an HMAC of a fixed label
/// under it (it names the secret without saying anything about it).
pub fn key_id(secret: &str) -> String {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut m| {
            m.update(KEY_ID_LABEL);
            hex(&m.finalize().into_bytes()[..4])
        })
        .unwrap_or_default()
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
    let Some(canonical) = canonical_bytes(&state) else {
        return state;
    };
    if let Some(mac) = mac(secret, trust.binding, trust.now_s, &canonical) {
        let tag = format!(
            "{}.{}.{}",
            key_id(secret),
            trust.now_s,
            hex(&mac.finalize().into_bytes())
        );
        if let Value::Object(map) = &mut state {
            map.insert(SIGNATURE.to_owned(), Value::String(tag));
        }
    }
    state
}

/// What verifies the states of one request: its trust, and each secret with
/// its key id, derived once (not once per state of a long history).
pub struct Verifier<'a> {
    trust: StateTrust<'a>,
    keys: Vec<(&'a str, String)>,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The trust redacts its secrets; of the keys only their ids show.
        let ids: Vec<&str> = self.keys.iter().map(|(_, id)| id.as_str()).collect();
        f.debug_struct("Verifier")
            .field("trust", &self.trust)
            .field("key_ids", &ids)
            .finish()
    }
}

impl<'a> Verifier<'a> {
    /// The verifier of `trust`.
    pub fn new(trust: &StateTrust<'a>) -> Verifier<'a> {
        Verifier {
            trust: *trust,
            keys: [trust.secret, trust.previous_secret]
                .into_iter()
                .flatten()
                .map(|secret| (secret, key_id(secret)))
                .collect(),
        }
    }

    /// The canonical bytes of `state` when it carries a valid, current
    /// signature for the trust's binding by one of its secrets (constant-time
    /// compare).
    fn verified(&self, state: &Value) -> Option<Vec<u8>> {
        let trust = &self.trust;
        let signature = state.get(SIGNATURE)?.as_str()?;
        let parts: Vec<&str> = signature.splitn(4, '.').collect();
        let (kid, issued, tag) = match parts[..] {
            [kid, issued, tag] => (Some(kid), issued, tag),
            // Signed before key ids: either secret may have signed it.
            [issued, tag] => (None, issued, tag),
            _ => return None,
        };
        let (Ok(issued_s), Some(tag)) = (issued.parse::<u64>(), unhex(tag)) else {
            return None;
        };
        if issued_s > trust.now_s.saturating_add(MAX_CLOCK_SKEW_S) {
            return None;
        }
        if trust
            .max_age_s
            .is_some_and(|max| trust.now_s.saturating_sub(issued_s) > max)
        {
            return None;
        }
        let canonical = canonical_bytes(state)?;
        // The key id picks the secret; a state naming no known key is not
        // tried with any.
        self.keys
            .iter()
            .filter(|(_, id)| kid.is_none_or(|kid| kid == id))
            .any(|(secret, _)| {
                mac(secret, trust.binding, issued_s, &canonical)
                    .is_some_and(|m| m.verify_slice(&tag).is_ok())
            })
            .then_some(canonical)
    }

    /// Whether the state of `message` may be trusted, and which bytes to read:
    /// a signed state when its signature verifies (its canonical bytes); an
    /// unsigned one (no `signature` key) only when unsigned states are
    /// allowed; without any secret and with unsigned states allowed, every
    /// state as it comes.
    pub fn trusted(&self, message: &Message) -> Option<Trusted> {
        let trust = &self.trust;
        let state = message.state()?;
        if trust.secret.is_none() {
            return trust.allow_unsigned.then_some(Trusted::AsSent);
        }
        let value: Value = serde_json::from_str(state.get()).ok()?;
        if value.get(SIGNATURE).is_none() {
            return trust.allow_unsigned.then_some(Trusted::AsSent);
        }
        let bytes = self.verified(&value)?;
        let text = String::from_utf8(bytes).ok()?;
        RawValue::from_string(text).ok().map(Trusted::Signed)
    }
}

/// Whether `state` carries a valid, current signature for the trust's binding.
pub fn verify(state: &Value, trust: &StateTrust<'_>) -> bool {
    Verifier::new(trust).verified(state).is_some()
}

/// A state this request may read.
#[derive(Debug, Clone)]
pub enum Trusted {
    /// Unsigned, accepted as it came (`ALLOW_UNSIGNED_STATE`): read the
    /// message's own bytes.
    AsSent,
    /// Signed and verified: exactly the canonical bytes the signature covers.
    Signed(Box<RawValue>),
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
                application: "",
            },
            now_s,
            ..StateTrust::default()
        }
    }

    fn message(state: &str) -> Message {
        serde_json::from_str(&format!(
            r#"{{"role": "assistant", "content": "", "custom_content": {{"state": {state}}}}}"#
        ))
        .unwrap()
    }

    /// The bytes an agent would read of `message`'s state.
    fn read(message: &Message, trust: &StateTrust<'_>) -> Option<String> {
        match Verifier::new(trust).trusted(message)? {
            Trusted::AsSent => message.state().map(|s| s.get().to_owned()),
            Trusted::Signed(bytes) => Some(bytes.get().to_owned()),
        }
    }

    #[test]
    fn signed_state_verifies_only_for_its_binding() {
        let t = trust("conv-A", 1_000);
        let s = sign(json!({"ums_conversation_id": "c1"}), &t);
        assert_eq!(s["ums_conversation_id"], "c1");
        let sig = s[SIGNATURE].as_str().unwrap();
        let kid = key_id(SECRET);
        assert_eq!(kid.len(), 8);
        assert!(sig.starts_with(&format!("{kid}.1000.")), "{sig}");
        assert_eq!(sig.len(), "kkkkkkkk.1000.".len() + 64);
        assert!(verify(&s, &t));
        assert!(
            !verify(&s, &trust("conv-B", 1_000)),
            "spliced into another conversation"
        );
        let other_user = StateTrust {
            binding: Binding {
                conversation: "conv-A",
                subject: "someone-else",
                application: "",
            },
            ..t
        };
        assert!(!verify(&s, &other_user), "another user's state");
        // An application instance's state is its own; a state signed outside
        // any is not one of an instance's.
        let app = |application: &'static str| StateTrust {
            binding: Binding {
                application,
                ..t.binding
            },
            ..t
        };
        assert!(
            !verify(&s, &app("hr-assistant")),
            "signed outside the instance"
        );
        let hr = sign(json!({"ums_conversation_id": "c1"}), &app("hr-assistant"));
        assert!(verify(&hr, &app("hr-assistant")));
        assert!(
            !verify(&hr, &app("travel-assistant")),
            "another instance's state"
        );
        assert!(!verify(&hr, &t), "an instance's state outside it");
        let other_secret = StateTrust {
            secret: Some("another-secret-123456"),
            ..t
        };
        assert!(!verify(&s, &other_secret));
        let mut tampered = s.clone();
        tampered["ums_conversation_id"] = json!("c2");
        assert!(!verify(&tampered, &t));
        let mut redated = s.clone();
        redated[SIGNATURE] = json!(sig.replacen(".1000.", ".1001.", 1));
        assert!(!verify(&redated, &t), "the issue time is signed");
        let mut garbage = s;
        garbage[SIGNATURE] = json!("zz");
        assert!(!verify(&garbage, &t));
    }

    #[test]
    fn a_rotated_secret_still_verifies_what_it_signed() {
        let old = trust("conv-A", 1_000);
        let s = sign(json!({"a": 1}), &old);
        let rotated = StateTrust {
            secret: Some("the-new-secret-0123456789"),
            previous_secret: Some(SECRET),
            ..old
        };
        assert!(verify(&s, &rotated));
        let forgotten = StateTrust {
            previous_secret: None,
            ..rotated
        };
        assert!(!verify(&s, &forgotten), "the old secret is gone");
        // The key id picks the secret: a state naming an unknown key is not
        // tried with any secret.
        let mut unknown = s.clone();
        let sig = s[SIGNATURE].as_str().unwrap();
        unknown[SIGNATURE] = json!(format!("00000000{}", &sig[8..]));
        assert!(!verify(&unknown, &old));
        // What the new secret signs carries its own key id.
        let fresh = sign(json!({"a": 1}), &rotated);
        let kid = key_id("the-new-secret-0123456789");
        assert!(fresh[SIGNATURE].as_str().unwrap().starts_with(&kid));
        assert_ne!(kid, key_id(SECRET));
        assert!(verify(&fresh, &rotated));
    }

    #[test]
    fn states_signed_before_key_ids_keep_verifying() {
        // Signed by the previous version (`<issued>.<hex>`, the same HMAC);
        // the tag was computed independently of this code.
        let legacy = json!({
            "ums_conversation_id": "c1",
            "signature": "1000.e8e0f3b5b6a823dc4d076351b83b2698112a08d22c7ba7342554727777699c97"
        });
        assert!(verify(&legacy, &trust("conv-A", 1_000)));
        assert!(!verify(&legacy, &trust("conv-B", 1_000)));
        let rotated = StateTrust {
            secret: Some("the-new-secret-0123456789"),
            previous_secret: Some(SECRET),
            ..trust("conv-A", 1_000)
        };
        assert!(
            verify(&legacy, &rotated),
            "either secret may have signed it"
        );
    }

    #[test]
    fn issue_time_bounds_age_and_future() {
        let s = sign(json!({"a": 1}), &trust("c", 10_000));
        assert!(verify(&s, &trust("c", 10_000 + 86_400)));
        let aged = StateTrust {
            max_age_s: Some(3_600),
            ..trust("c", 10_000 + 3_601)
        };
        assert!(!verify(&s, &aged), "older than STATE_MAX_AGE_S");
        assert!(
            !verify(&s, &trust("c", 10_000 - MAX_CLOCK_SKEW_S - 1)),
            "issued in the future"
        );
        assert!(verify(&s, &trust("c", 10_000 - MAX_CLOCK_SKEW_S)));
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
        assert!(verify(&folded, &t));
        assert!(verify(&s, &t));
    }

    #[test]
    fn what_is_read_of_a_signed_state_is_exactly_what_was_signed() {
        let t = trust("conv-A", 1_000);
        let s = sign(
            json!({"agents": {"RAG": [{"answer": "a", "state": {"k": [{"v": 1}]}}]}}),
            &t,
        );
        let sig = s[SIGNATURE].as_str().unwrap();
        let signed_form = r#"{"agents":{"RAG":[{"answer":"a","state":{"k":[{"v":1}]}}]}}"#;
        // As emitted.
        let plain = message(&s.to_string());
        assert_eq!(read(&plain, &t).as_deref(), Some(signed_form));
        // An `index` slipped into a list item, a duplicated key whose first
        // copy differs, other key order and whitespace: all verify (they fold
        // to the signed form), and none of it reaches an agent.
        let edited = message(&format!(
            r#"{{ "signature": "{sig}",
                 "agents": {{"RAG": [{{"state": {{"k": [{{"v": 1, "index": 7}}]}},
                                      "answer": "forged", "answer": "a", "index": 3}}]}} }}"#
        ));
        assert_eq!(read(&edited, &t).as_deref(), Some(signed_form));
        assert!(!edited.state().unwrap().get().contains(signed_form));
    }

    #[test]
    fn unsigned_states_are_read_only_when_allowed() {
        let m = message(r#"{"a": 1}"#);
        // No secret, unsigned not allowed: nothing is signed, nothing is read.
        let off = StateTrust::default();
        assert_eq!(sign(json!({"a": 1}), &off), json!({"a": 1}));
        assert_eq!(read(&m, &off), None);
        // ALLOW_UNSIGNED_STATE=true without a secret: every state as it comes.
        let open = StateTrust {
            allow_unsigned: true,
            ..off
        };
        assert_eq!(read(&m, &open).as_deref(), Some(r#"{"a": 1}"#));
        // With a secret: unsigned states are ignored unless allowed...
        assert_eq!(
            read(&m, &trust("x", 1)),
            None,
            "unsigned state is not trusted"
        );
        let lenient = StateTrust {
            allow_unsigned: true,
            ..trust("x", 1)
        };
        assert_eq!(read(&m, &lenient).as_deref(), Some(r#"{"a": 1}"#));
        // ...and a state with a signature that does not verify is never read.
        let forged = message(r#"{"a": 1, "signature": "1.00"}"#);
        assert_eq!(read(&forged, &lenient), None);
    }

    #[test]
    fn debug_never_shows_the_secrets() {
        let t = StateTrust {
            previous_secret: Some("previous-secret-0123456789"),
            ..trust("c", 1)
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("previous-secret"), "{shown}");
        assert!(shown.contains(r#"secret: Some("***")"#), "{shown}");
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

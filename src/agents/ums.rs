//! The User Management Service agent: a plain HTTP service (PROTOCOL.md §4).
//!
//! UMS keeps its own history per conversation, so it receives only the current
//! request. The conversation id lives in our state (`ums_conversation_id`): the
//! newest valid one in the history is reused; otherwise a conversation is
//! created, and the stage says so. If UMS no longer knows the id (its chat call
//! fails and `GET /conversations/{id}` answers 404), one new conversation is
//! created and the stage says that too. The id is validated and percent-encoded
//! into the path. No DIAL credentials (`Api-Key`, `Authorization`) are ever sent
//! to UMS.

use serde::Deserialize;
use serde_json::{json, Value};

use super::gpa::StateTrust;
use super::{Agent, AgentCall};
use crate::calls::{call, parse_event, pump_events, read_answer, Caller, Next};
use crate::client::{Host, OutboundRequest};
use crate::coordinator::FlowError;
use crate::dial::request::Message;
use crate::dial::upstream::error_text;
use crate::emitter::{Emitter, Transport};
use crate::error::{CoordError, Upstream, UpstreamFault};
use crate::state::trusted_state;

/// State key holding the UMS conversation id.
pub const UMS_CONVERSATION_ID: &str = "ums_conversation_id";
/// Longest accepted conversation id.
pub const MAX_ID_LEN: usize = 128;

/// The UMS agent.
#[derive(Debug)]
pub struct Ums;

/// Whether `id` is an acceptable UMS conversation id: 1 to 128 of
/// `A-Z a-z 0-9 - _`. Anything else (slashes, dots, `%`, spaces) is refused, so a
/// tampered state can never reach another path or host.
pub fn is_valid_conversation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The newest valid conversation id stored in the history's (trusted) state.
pub fn find_conversation_id(history: &[Message], trust: &StateTrust<'_>) -> Option<String> {
    /// The one field of our UMS state, read without building a tree.
    #[derive(Deserialize)]
    struct View {
        #[serde(default)]
        ums_conversation_id: Option<Value>,
    }
    history.iter().rev().find_map(|m| {
        // Cheap text check first: most states in a long history are GPA's.
        if !m.state()?.get().contains(UMS_CONVERSATION_ID) {
            return None;
        }
        let state = trusted_state(m, trust.secret, trust.binding)?;
        let view: View = serde_json::from_str(state.get()).ok()?;
        match view.ums_conversation_id {
            Some(Value::String(id)) if is_valid_conversation_id(&id) => Some(id),
            _ => None,
        }
    })
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters kept).
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text sent to UMS: the user's request plus any additional instructions.
pub fn ums_message(current: &Message, additional_instructions: Option<&str>) -> String {
    let mut text = current.text();
    if let Some(extra) = additional_instructions {
        text.push_str("\n\n");
        text.push_str(extra);
    }
    text
}

/// A conversation title from the request: its first line, at most 80 characters.
pub fn conversation_title(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let title: String = first.trim().chars().take(80).collect();
    if title.is_empty() {
        "MAS coordinator conversation".to_owned()
    } else {
        title
    }
}

#[derive(Deserialize)]
struct CreatedConversation {
    id: Value,
}

/// One UMS stream event: the leading id event, a delta, or an error.
#[derive(Debug, Default, Deserialize)]
struct UmsEvent {
    #[serde(default)]
    conversation_id: Option<Value>,
    #[serde(default)]
    choices: Vec<UmsChoice>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct UmsChoice {
    #[serde(default)]
    delta: Option<UmsDelta>,
}

#[derive(Debug, Default, Deserialize)]
struct UmsDelta {
    #[serde(default)]
    content: Option<String>,
}

fn create_request(base: &str, title: &str) -> OutboundRequest {
    let body = serde_json::to_vec(&json!({"title": title})).unwrap_or_default();
    OutboundRequest::post_json(format!("{base}/conversations"), body)
}

fn chat_request(base: &str, id: &str, text: &str) -> OutboundRequest {
    let body = serde_json::to_vec(&json!({
        "message": {"role": "user", "content": text},
        "stream": true,
    }))
    .unwrap_or_default();
    OutboundRequest::post_json(
        format!("{base}/conversations/{}/chat", encode_path_segment(id)),
        body,
    )
}

/// Creates a conversation on the first available endpoint. Returns its id, the
/// endpoint (later calls go there) and a failover note if a backup answered.
async fn create<'a, H: Host>(
    caller: Caller<'a, H>,
    endpoints: &[&'a str],
    title: &str,
) -> Result<(String, &'a str, Option<String>), CoordError> {
    let answered = call(caller, Upstream::Ums, endpoints, |base| {
        create_request(base, title)
    })
    .await?;
    let site = answered.site;
    let note = answered.failover_note();
    let bytes = read_answer(answered).await?;
    let created: CreatedConversation = serde_json::from_slice(&bytes).map_err(|_| {
        site.error(UpstreamFault::Malformed(
            "the created conversation has no id".to_owned(),
        ))
    })?;
    match created.id.as_str() {
        Some(id) if is_valid_conversation_id(id) => Ok((id.to_owned(), site.target, note)),
        _ => Err(site.error(UpstreamFault::Malformed(
            "the created conversation id is not a valid id".to_owned(),
        ))),
    }
}

/// After a chat call on a stored id failed with an HTTP status: whether the
/// endpoint that answered says the conversation does not exist (404).
async fn is_lost<H: Host>(caller: Caller<'_, H>, error: &CoordError, id: &str) -> bool {
    let CoordError::Upstream {
        fault: UpstreamFault::Status(..),
        target,
        ..
    } = error
    else {
        return false;
    };
    let probe = call(caller, Upstream::Ums, &[target.as_str()], |base| {
        OutboundRequest::get(format!("{base}/conversations/{}", encode_path_segment(id)))
    })
    .await;
    match probe {
        Ok(answered) => {
            let _ = read_answer(answered).await;
            false
        }
        Err(CoordError::Upstream {
            fault: UpstreamFault::Status(404, _),
            ..
        }) => true,
        Err(_) => false,
    }
}

impl Agent for Ums {
    async fn run<H: Host, T: Transport>(
        call_ctx: AgentCall<'_, H>,
        out: &mut Emitter<T>,
    ) -> Result<String, FlowError> {
        let caller = call_ctx.caller;
        let ctx = caller.ctx;
        let stage = call_ctx.stage;
        let trust = ctx.state_trust();
        let endpoints = ctx.config.ums_targets();
        let Some(current) = ctx.request.messages.last() else {
            return Ok(String::new());
        };
        let text = ums_message(
            current,
            call_ctx.decision.additional_instructions.as_deref(),
        );
        let title = conversation_title(&text);

        let (id, answered) = match find_conversation_id(&ctx.request.messages, &trust) {
            Some(id) => {
                match call(caller, Upstream::Ums, &endpoints, |base| {
                    chat_request(base, &id, &text)
                })
                .await
                {
                    Ok(answered) => (id, answered),
                    Err(error) => {
                        if !is_lost(caller, &error, &id).await {
                            return Err(error.into());
                        }
                        let (new_id, base, note) = create(caller, &endpoints, &title).await?;
                        if let Some(note) = note {
                            out.stage_content(stage, &note);
                        }
                        out.stage_content(
                            stage,
                            &format!(
                                "_UMS no longer knows conversation {id}; created new UMS conversation: {new_id}_\n\n"
                            ),
                        );
                        out.flush().await?;
                        let answered = call(caller, Upstream::Ums, &[base], |b| {
                            chat_request(b, &new_id, &text)
                        })
                        .await?;
                        (new_id, answered)
                    }
                }
            }
            None => {
                let (new_id, base, note) = create(caller, &endpoints, &title).await?;
                if let Some(note) = note {
                    out.stage_content(stage, &note);
                }
                out.stage_content(
                    stage,
                    &format!("_Created new UMS conversation: {new_id}_\n\n"),
                );
                out.flush().await?;
                let answered = call(caller, Upstream::Ums, &[base], |b| {
                    chat_request(b, &new_id, &text)
                })
                .await?;
                (new_id, answered)
            }
        };
        if let Some(note) = answered.failover_note() {
            out.stage_content(stage, &note);
        }
        // The conversation exists and answers: remember it even if the stream fails later.
        out.set_state(crate::state::sign(
            json!({UMS_CONVERSATION_ID: id}),
            trust.secret,
            trust.binding,
        ));
        out.flush().await?;

        let site = answered.site;
        let mut answer = String::new();
        pump_events(answered, out, |data, out| {
            let event: UmsEvent = parse_event(site, data)?;
            if let Some(error) = &event.error {
                return Err(site.error(UpstreamFault::ErrorEvent(site.redact(&error_text(error)))));
            }
            if event.conversation_id.is_some() {
                return Ok(Next::Continue);
            }
            let piece = event
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.delta)
                .and_then(|d| d.content)
                .unwrap_or_default();
            out.stage_content(stage, &piece);
            answer.push_str(&piece);
            Ok(Next::Continue)
        })
        .await?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn newest_valid_conversation_id_wins() {
        let history = vec![
            msg(json!({"role": "user", "content": "a"})),
            msg(
                json!({"role": "assistant", "content": "b", "custom_content": {"state": {"ums_conversation_id": "old-1"}}}),
            ),
            msg(
                json!({"role": "assistant", "content": "c", "custom_content": {"state": {"ums_conversation_id": "new-2"}}}),
            ),
            msg(
                json!({"role": "assistant", "content": "d", "custom_content": {"state": {"ums_conversation_id": "../admin"}}}),
            ),
            msg(
                json!({"role": "assistant", "content": "e", "custom_content": {"state": {"ums_conversation_id": 5}}}),
            ),
            msg(json!({"role": "user", "content": "f"})),
        ];
        let trust = StateTrust::default();
        assert_eq!(
            find_conversation_id(&history, &trust).as_deref(),
            Some("new-2")
        );
        assert_eq!(find_conversation_id(&history[..1], &trust), None);
        let signing = StateTrust {
            secret: Some("0123456789abcdef"),
            binding: "",
        };
        assert_eq!(
            find_conversation_id(&history, &signing),
            None,
            "unsigned ids are ignored"
        );
    }

    #[test]
    fn conversation_ids_are_validated() {
        assert!(is_valid_conversation_id(
            "8c1f0d2e-1234-4abc-9def-0123456789ab"
        ));
        assert!(is_valid_conversation_id("ums-conv-0001"));
        for bad in [
            "",
            "a/b",
            "..",
            "a b",
            "x%2F",
            "id?x=1",
            "a#b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_conversation_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("abc-1_2.~"), "abc-1_2.~");
        assert_eq!(encode_path_segment("a/b?c#d %"), "a%2Fb%3Fc%23d%20%25");
    }

    #[test]
    fn message_and_title() {
        let m = Message::text_message("user", "Do we have Andrej Karpathy as a user?");
        assert_eq!(
            ums_message(&m, Some("Check both spellings.")),
            "Do we have Andrej Karpathy as a user?\n\nCheck both spellings."
        );
        assert_eq!(conversation_title("\n  first line \nsecond"), "first line");
        assert_eq!(conversation_title(""), "MAS coordinator conversation");
        assert_eq!(conversation_title(&"x".repeat(100)).len(), 80);
    }
}

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

use super::{Agent, AgentCall};
use crate::calls::{parse_event, pump_events, read_answer, send_checked, CallSite, Next};
use crate::client::{HttpClient, OutboundRequest, OutboundResponse};
use crate::coordinator::FlowError;
use crate::dial::request::Message;
use crate::dial::upstream::error_text;
use crate::emitter::{Emitter, StageId, Transport};
use crate::error::{CoordError, Upstream, UpstreamFault};

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

/// The newest valid conversation id stored in the history's state.
pub fn find_conversation_id(history: &[Message]) -> Option<String> {
    history.iter().rev().find_map(|m| {
        m.state()
            .and_then(|s| s.get(UMS_CONVERSATION_ID))
            .and_then(Value::as_str)
            .filter(|id| is_valid_conversation_id(id))
            .map(str::to_owned)
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

struct UmsClient<'a, C> {
    client: &'a C,
    base: &'a str,
    site: CallSite<'a>,
}

impl<C: HttpClient> UmsClient<'_, C> {
    async fn create(&self, title: &str) -> Result<String, CoordError> {
        let body = serde_json::to_vec(&json!({"title": title})).unwrap_or_default();
        let request = OutboundRequest::post_json(format!("{}/conversations", self.base), body);
        let mut response = send_checked(self.client, self.site, request).await?;
        let bytes = read_answer::<C>(self.site, &mut response).await?;
        let created: CreatedConversation = serde_json::from_slice(&bytes).map_err(|_| {
            self.site.error(UpstreamFault::Malformed(
                "the created conversation has no id".to_owned(),
            ))
        })?;
        match created.id.as_str() {
            Some(id) if is_valid_conversation_id(id) => Ok(id.to_owned()),
            _ => Err(self.site.error(UpstreamFault::Malformed(
                "the created conversation id is not a valid id".to_owned(),
            ))),
        }
    }

    fn chat_request(&self, id: &str, text: &str) -> OutboundRequest {
        let body = serde_json::to_vec(&json!({
            "message": {"role": "user", "content": text},
            "stream": true,
        }))
        .unwrap_or_default();
        OutboundRequest::post_json(
            format!(
                "{}/conversations/{}/chat",
                self.base,
                encode_path_segment(id)
            ),
            body,
        )
    }

    /// True when UMS answers 404 for the conversation: it no longer exists.
    async fn is_lost(&self, id: &str) -> bool {
        let request = OutboundRequest::get(format!(
            "{}/conversations/{}",
            self.base,
            encode_path_segment(id)
        ));
        matches!(self.client.send(request).await, Ok(r) if r.status == 404)
    }
}

impl Agent for Ums {
    async fn run<C: HttpClient, T: Transport>(
        call: AgentCall<'_, C>,
        out: &mut Emitter<T>,
    ) -> Result<String, FlowError> {
        let ctx = call.ctx;
        let site = CallSite {
            upstream: Upstream::Ums,
            target: &ctx.config.ums_endpoint,
            secret: &ctx.api_key,
        };
        let ums = UmsClient {
            client: call.client,
            base: &ctx.config.ums_endpoint,
            site,
        };
        let Some(current) = ctx.request.messages.last() else {
            return Ok(String::new());
        };
        let text = ums_message(current, call.decision.additional_instructions.as_deref());

        let (id, response) = match find_conversation_id(&ctx.request.messages) {
            Some(id) => open_existing(&ums, id, &text, call.stage, out).await?,
            None => {
                let id = ums.create(&conversation_title(&text)).await?;
                out.stage_content(
                    call.stage,
                    &format!("_Created new UMS conversation: {id}_\n\n"),
                );
                out.flush().await?;
                let response =
                    send_checked(call.client, site, ums.chat_request(&id, &text)).await?;
                (id, response)
            }
        };
        // The conversation exists and answers: remember it even if the stream fails later.
        out.set_state(json!({UMS_CONVERSATION_ID: id}));
        out.flush().await?;

        let mut answer = String::new();
        let stage = call.stage;
        pump_events(site, response.body, out, |data, out| {
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

/// Opens the chat on a stored conversation; if UMS lost it, creates a new one once.
async fn open_existing<C: HttpClient, T: Transport>(
    ums: &UmsClient<'_, C>,
    id: String,
    text: &str,
    stage: StageId,
    out: &mut Emitter<T>,
) -> Result<(String, OutboundResponse<C::Body>), FlowError> {
    match send_checked(ums.client, ums.site, ums.chat_request(&id, text)).await {
        Ok(response) => Ok((id, response)),
        Err(error) => {
            let is_status_error = matches!(
                &error,
                CoordError::Upstream {
                    fault: UpstreamFault::Status(..),
                    ..
                }
            );
            if !is_status_error || !ums.is_lost(&id).await {
                return Err(error.into());
            }
            let new_id = ums.create(&conversation_title(text)).await?;
            out.stage_content(
                stage,
                &format!(
                    "_UMS no longer knows conversation {id}; created new UMS conversation: {new_id}_\n\n"
                ),
            );
            out.flush().await?;
            let response =
                send_checked(ums.client, ums.site, ums.chat_request(&new_id, text)).await?;
            Ok((new_id, response))
        }
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
        assert_eq!(find_conversation_id(&history).as_deref(), Some("new-2"));
        assert_eq!(find_conversation_id(&history[..1]), None);
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

//! The request DIAL Core sends to an application (PROTOCOL.md §1.3).
//!
//! Parsed leniently: unknown fields are tolerated and kept (so messages pass on to
//! agents unchanged), `content` is a string or a list of parts. Wrong types for the
//! fields we use are errors with the JSON path that failed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CoordError;

/// The chat-completion request body, with the fields the coordinator uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation, oldest first; the last message is the user's request.
    pub messages: Vec<Message>,
    /// Whether the client wants SSE (`true`) or one merged JSON answer.
    #[serde(default)]
    pub stream: Option<bool>,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user`, `assistant`, `system`, ...
    pub role: String,
    /// Text or content parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// DIAL extensions: attachments, stages, state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_content: Option<CustomContent>,
    /// Every other field, passed on unchanged (nulls dropped).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message content: a plain string or OpenAI content parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type":"text","text":...}`, images, ...), kept as they are.
    Parts(Vec<Value>),
}

/// `custom_content` of a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomContent {
    /// Attachments (kept as sent: the agent that needs them reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Value>>,
    /// The application state stored on an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// Stages, form values and anything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with a role and plain text.
    pub fn text_message(role: &str, text: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: Some(Content::Text(text.into())),
            custom_content: None,
            extra: Map::new(),
        }
    }

    /// The message's text: the string content, or the text parts joined with newlines.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                texts.join("\n")
            }
        }
    }

    /// The state stored on this message, if any.
    pub fn state(&self) -> Option<&Value> {
        self.custom_content.as_ref()?.state.as_ref()
    }

    /// Appends text to the content: to the string, or as one more text part.
    pub fn append_text(&mut self, text: &str) {
        match &mut self.content {
            None => self.content = Some(Content::Text(text.to_owned())),
            Some(Content::Text(t)) => t.push_str(text),
            Some(Content::Parts(parts)) => {
                parts.push(serde_json::json!({"type": "text", "text": text}));
            }
        }
    }

    /// This message as sent to an LLM: everything but `custom_content`.
    pub fn without_custom_content(&self) -> Message {
        Message {
            role: self.role.clone(),
            content: self.content.clone(),
            custom_content: None,
            extra: self.extra.clone(),
        }
    }
}

/// Parses and validates a request body.
///
/// Errors say which JSON path failed, e.g. `messages[1].content: invalid type`.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, CoordError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut request: ChatRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            format!("body is not valid JSON ({inner})")
        } else if path == "." {
            without_location(&inner)
        } else {
            format!("{path}: {}", without_location(&inner))
        };
        CoordError::BadRequest(what)
    })?;
    de.end()
        .map_err(|e| CoordError::BadRequest(format!("body is not valid JSON ({e})")))?;
    if request.messages.is_empty() {
        return Err(CoordError::BadRequest(
            "messages must not be empty".to_owned(),
        ));
    }
    for m in &mut request.messages {
        m.extra.retain(|_, v| !v.is_null());
        if let Some(cc) = &mut m.custom_content {
            cc.extra.retain(|_, v| !v.is_null());
        }
    }
    let last = request.messages.last().map(|m| m.role.as_str());
    if last != Some("user") {
        return Err(CoordError::BadRequest(
            "the last message must have the role \"user\"".to_owned(),
        ));
    }
    Ok(request)
}

/// A serde error without its " at line L column C" suffix (the path says where).
fn without_location(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_string_and_parts_content_and_keeps_unknown_fields() {
        let body = json!({
            "model": "mas-coordinator", "stream": true, "temperature": 0.2,
            "messages": [
                {"role": "user", "content": "hi", "name": "bob", "tool_calls": null},
                {"role": "assistant", "content": "hello",
                 "custom_content": {"state": {"ums_conversation_id": "c1"}, "stages": null}},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}],
                 "custom_content": {"attachments": [{"type": "text/csv", "url": "files/b/r.csv"}]}}
            ]
        });
        let r = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.stream, Some(true));
        assert_eq!(r.messages[0].extra.get("name"), Some(&json!("bob")));
        assert!(
            !r.messages[0].extra.contains_key("tool_calls"),
            "nulls dropped"
        );
        assert_eq!(
            r.messages[1].state(),
            Some(&json!({"ums_conversation_id": "c1"}))
        );
        assert_eq!(r.messages[2].text(), "a\nb");
        // Round trip keeps everything but nulls.
        assert_eq!(
            serde_json::to_value(&r.messages[2]).unwrap(),
            body["messages"][2]
        );
        assert_eq!(
            serde_json::to_value(&r.messages[1]).unwrap(),
            json!({"role": "assistant", "content": "hello",
                   "custom_content": {"state": {"ums_conversation_id": "c1"}}})
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let e = parse_request(b"{\"messages\": [").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("not valid JSON"), "{}", e.message());
        let e = parse_request(b"{} trailing").unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn missing_and_empty_messages_are_rejected() {
        let e = parse_request(b"{\"stream\": true}").unwrap_err();
        assert_eq!(e.message(), "Invalid request: missing field `messages`");
        let e = parse_request(b"{\"messages\": []}").unwrap_err();
        assert_eq!(e.message(), "Invalid request: messages must not be empty");
    }

    #[test]
    fn wrong_types_name_the_path() {
        let e = parse_request(br#"{"messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert!(
            e.message()
                .starts_with("Invalid request: messages[0].content:"),
            "{}",
            e.message()
        );
        let e = parse_request(br#"{"messages": "hi"}"#).unwrap_err();
        assert!(
            e.message().starts_with("Invalid request: messages:"),
            "{}",
            e.message()
        );
        let e = parse_request(br#"{"messages": [{"role": "user"}], "stream": "yes"}"#).unwrap_err();
        assert!(
            e.message().starts_with("Invalid request: stream:"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn last_message_must_be_from_the_user() {
        let e =
            parse_request(br#"{"messages": [{"role": "assistant", "content": "x"}]}"#).unwrap_err();
        assert_eq!(
            e.message(),
            "Invalid request: the last message must have the role \"user\""
        );
    }

    #[test]
    fn append_text_extends_string_or_parts() {
        let mut m = Message::text_message("user", "hello");
        m.append_text("\n\nmore");
        assert_eq!(m.text(), "hello\n\nmore");
        let mut p = Message {
            content: Some(Content::Parts(vec![json!({"type": "text", "text": "a"})])),
            ..Message::text_message("user", "")
        };
        p.append_text("b");
        assert_eq!(p.text(), "a\nb");
    }
}

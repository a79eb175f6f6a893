//! What the coordinator receives from DIAL deployments it calls (the LLM and
//! GPA): streamed `chat.completion.chunk` events and the non-streaming
//! `chat.completion` object. Parsed leniently; only the first choice is read.

use serde::Deserialize;
use serde_json::Value;

use super::response::Attachment;
use super::usage::Usage;

/// One streamed event from a DIAL deployment.
#[derive(Debug, Default, Deserialize)]
pub struct StreamChunk {
    /// The choices; the coordinator reads index 0. `null` counts as none.
    #[serde(default)]
    pub choices: Option<Vec<ChunkChoice>>,
    /// Set when the deployment reports a failure inside the stream.
    #[serde(default)]
    pub error: Option<Value>,
    /// Token usage, normally on the last chunk.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A choice inside a streamed chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(default)]
    pub index: usize,
    /// The update.
    #[serde(default)]
    pub delta: Option<ChunkDelta>,
}

/// The update carried by a chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkDelta {
    /// Text piece.
    #[serde(default)]
    pub content: Option<String>,
    /// DIAL extensions.
    #[serde(default)]
    pub custom_content: Option<ChunkCustomContent>,
}

/// `custom_content` of a streamed update.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkCustomContent {
    /// Stage updates.
    #[serde(default)]
    pub stages: Option<Vec<StageUpdate>>,
    /// Choice-level attachments.
    #[serde(default)]
    pub attachments: Option<Vec<Attachment>>,
    /// The deployment's state (sent once, at the end).
    #[serde(default)]
    pub state: Option<Value>,
}

/// One stage update from a deployment, in its own index space.
#[derive(Debug, Default, Deserialize)]
pub struct StageUpdate {
    /// The deployment's stage index.
    pub index: usize,
    /// Name (on open) or a name piece.
    #[serde(default)]
    pub name: Option<String>,
    /// Content piece.
    #[serde(default)]
    pub content: Option<String>,
    /// Attachments added to the stage.
    #[serde(default)]
    pub attachments: Option<Vec<Attachment>>,
    /// `completed` or `failed` when the stage closes.
    #[serde(default)]
    pub status: Option<String>,
    /// Parent stage, in the deployment's index space (nested stages).
    #[serde(default)]
    pub parent_stage_index: Option<usize>,
}

impl StreamChunk {
    /// The delta of choice 0, if any.
    pub fn into_delta(self) -> Option<ChunkDelta> {
        self.choices
            .into_iter()
            .flatten()
            .find(|c| c.index == 0)
            .and_then(|c| c.delta)
    }
}

/// The text of an error object inside a stream or an error body.
pub fn error_text(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned),
        other => other.to_string(),
    }
}

/// A non-streaming `chat.completion` answer; only the first message's content is used.
#[derive(Debug, Deserialize)]
pub struct Completion {
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl Completion {
    /// The first choice's text (empty when there is none) and the usage.
    pub fn into_text_and_usage(self) -> (String, Option<Usage>) {
        let text = self
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        (text, self.usage)
    }
}

/// A choice of a non-streaming answer.
#[derive(Debug, Deserialize)]
pub struct CompletionChoice {
    /// The answer message.
    pub message: CompletionMessage,
}

/// The message of a non-streaming answer.
#[derive(Debug, Deserialize)]
pub struct CompletionMessage {
    /// The text (absent for tool calls).
    #[serde(default)]
    pub content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_gpa_stage_chunk_and_ignores_unknown_fields() {
        let chunk: StreamChunk = serde_json::from_value(json!({
            "choices": [{"index": 0, "finish_reason": null, "delta": {"custom_content": {"stages": [
                {"index": 3, "name": "web_search", "status": null, "parent_stage_index": 1, "extra": 1}]}}}],
            "usage": null, "id": "x", "created": 1, "object": "chat.completion.chunk"
        }))
        .unwrap();
        let delta = chunk.into_delta().unwrap();
        let stages = delta.custom_content.unwrap().stages.unwrap();
        assert_eq!(stages[0].index, 3);
        assert_eq!(stages[0].name.as_deref(), Some("web_search"));
        assert_eq!(stages[0].parent_stage_index, Some(1));
        assert_eq!(stages[0].status, None);
    }

    #[test]
    fn null_choices_and_usage_are_read() {
        let chunk: StreamChunk = serde_json::from_value(json!({
            "choices": null, "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
        }))
        .unwrap();
        assert_eq!(chunk.usage, Some(Usage::new(2, 1)));
        assert!(chunk.into_delta().is_none());
    }

    #[test]
    fn error_text_prefers_the_message() {
        assert_eq!(
            error_text(&json!({"message": "boom", "code": "500"})),
            "boom"
        );
        assert_eq!(error_text(&json!("plain")), "plain");
    }
}

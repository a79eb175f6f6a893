//! What an application streams back (docs/protocol.md §2): the chunk envelope, stage
//! and attachment deltas, state, the stop chunk, the error event and `[DONE]`,
//! plus the non-streaming merge of the same deltas (§2.8).
//!
//! [`Delta`] is one update of the single choice. [`SseEncoder`] turns deltas into
//! SSE bytes; [`MessageAccumulator`] folds them into the merged message exactly as
//! aidial-sdk's `merge_chunks` would fold the streamed chunks. Neither knows about
//! the rules of *when* a delta may be sent: that is `emitter::Emitter`'s job.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ErrorBody;
use super::usage::UsageReport;

/// An attachment of the choice or of a stage. Empty fields are omitted, as the SDK does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// MIME type; the SDK's default is `text/markdown`.
    #[serde(rename = "type", default, skip_serializing_if = "is_blank")]
    pub kind: Option<String>,
    /// Title shown in DIAL Chat.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub title: Option<String>,
    /// Inline content (exclusive with `url`).
    #[serde(default, skip_serializing_if = "is_blank")]
    pub data: Option<String>,
    /// A DIAL file path or absolute URL (exclusive with `data`).
    #[serde(default, skip_serializing_if = "is_blank")]
    pub url: Option<String>,
    /// MIME type of the source the attachment refers to.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub reference_type: Option<String>,
    /// URL of the source the attachment refers to.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub reference_url: Option<String>,
}

// serde's skip_serializing_if passes a reference to the field.
#[allow(clippy::ref_option)]
fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

impl Attachment {
    /// Normalizes an attachment received from an agent: a missing type becomes
    /// `text/markdown` (the SDK default); `None` when it has neither `data` nor `url`
    /// or both, which aidial-sdk would reject.
    pub fn normalized(mut self) -> Option<Attachment> {
        let has_data = !is_blank(&self.data);
        let has_url = !is_blank(&self.url);
        if has_data == has_url {
            return None;
        }
        if is_blank(&self.kind) {
            self.kind = Some("text/markdown".to_owned());
        }
        Some(self)
    }

    /// The bytes of its fields together (what the byte budgets of
    /// `limits.rs` count).
    pub fn byte_len(&self) -> usize {
        [
            &self.kind,
            &self.title,
            &self.data,
            &self.url,
            &self.reference_type,
            &self.reference_url,
        ]
        .into_iter()
        .map(|f| f.as_deref().map_or(0, str::len))
        .sum()
    }
}

/// A closed stage's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// The stage finished its work.
    Completed,
    /// The stage's work failed.
    Failed,
}

impl StageStatus {
    fn as_str(self) -> &'static str {
        match self {
            StageStatus::Completed => "completed",
            StageStatus::Failed => "failed",
        }
    }
}

/// One update of the choice; each becomes exactly one chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// `{"role":"assistant"}`: the first chunk.
    Role,
    /// A piece of the answer text.
    Content(String),
    /// A stage opens; `parent` is the parent stage's index (nested stages, §2.4a).
    StageOpen {
        /// Stage index.
        index: usize,
        /// Stage name.
        name: String,
        /// Parent stage index.
        parent: Option<usize>,
    },
    /// More text for a stage's name.
    StageName {
        /// Stage index.
        index: usize,
        /// Name piece.
        name: String,
    },
    /// A piece of a stage's content.
    StageContent {
        /// Stage index.
        index: usize,
        /// Content piece.
        content: String,
    },
    /// An attachment of a stage, with its per-stage index.
    StageAttachment {
        /// Stage index.
        index: usize,
        /// Attachment index within the stage.
        attachment_index: usize,
        /// The attachment.
        attachment: Attachment,
    },
    /// A stage closes.
    StageClose {
        /// Stage index.
        index: usize,
        /// Outcome.
        status: StageStatus,
    },
    /// An attachment of the choice, with its per-choice index.
    Attachment {
        /// Attachment index within the choice.
        index: usize,
        /// The attachment.
        attachment: Attachment,
    },
    /// The choice's state (sent once).
    State(Value),
    /// The choice's form (DIAL's buttons, `wire/form.rs`), sent once.
    FormSchema(Value),
}

#[derive(Serialize)]
struct IndexedAttachment<'a> {
    index: usize,
    #[serde(flatten)]
    attachment: &'a Attachment,
}

impl Delta {
    /// The `delta` object of this update, as compact JSON.
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Delta::Role => raw(out, r#"{"role":"assistant"}"#),
            Delta::Content(text) => {
                raw(out, r#"{"content":"#);
                ser(out, text);
                raw(out, "}");
            }
            Delta::StageOpen {
                index,
                name,
                parent,
            } => {
                raw(out, r#"{"custom_content":{"stages":[{"index":"#);
                ser(out, index);
                raw(out, r#","name":"#);
                ser(out, name);
                raw(out, r#","status":null"#);
                if let Some(p) = parent {
                    raw(out, r#","parent_stage_index":"#);
                    ser(out, p);
                }
                raw(out, "}]}}");
            }
            Delta::StageName { index, name } => {
                raw(out, r#"{"custom_content":{"stages":[{"index":"#);
                ser(out, index);
                raw(out, r#","name":"#);
                ser(out, name);
                raw(out, r#","status":null}]}}"#);
            }
            Delta::StageContent { index, content } => {
                raw(out, r#"{"custom_content":{"stages":[{"index":"#);
                ser(out, index);
                raw(out, r#","content":"#);
                ser(out, content);
                raw(out, r#","status":null}]}}"#);
            }
            Delta::StageAttachment {
                index,
                attachment_index,
                attachment,
            } => {
                raw(out, r#"{"custom_content":{"stages":[{"index":"#);
                ser(out, index);
                raw(out, r#","attachments":["#);
                ser(
                    out,
                    &IndexedAttachment {
                        index: *attachment_index,
                        attachment,
                    },
                );
                raw(out, r#"],"status":null}]}}"#);
            }
            Delta::StageClose { index, status } => {
                raw(out, r#"{"custom_content":{"stages":[{"index":"#);
                ser(out, index);
                raw(out, r#","status":"#);
                ser(out, &status.as_str());
                raw(out, "}]}}");
            }
            Delta::Attachment { index, attachment } => {
                raw(out, r#"{"custom_content":{"attachments":["#);
                ser(
                    out,
                    &IndexedAttachment {
                        index: *index,
                        attachment,
                    },
                );
                raw(out, "]}}");
            }
            Delta::State(state) => {
                raw(out, r#"{"custom_content":{"state":"#);
                ser(out, state);
                raw(out, "}}");
            }
            Delta::FormSchema(schema) => {
                raw(out, r#"{"custom_content":{"form_schema":"#);
                ser(out, schema);
                raw(out, "}}");
            }
        }
    }
}

fn raw(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(json.as_bytes());
}

fn ser<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Writes chunks of one response as SSE events (`data: <json>\n\n`).
///
/// The envelope (`id`, `created`) is fixed per response, so its tail is built once.
#[derive(Debug, Clone)]
pub struct SseEncoder {
    tail: Vec<u8>,
}

const USAGE_NULL: &[u8] = br#","usage":null"#;
const CHUNK_HEAD: &[u8] = br#"data: {"choices":[{"index":0,"finish_reason":null,"delta":"#;
const STOP_CHUNK_HEAD: &[u8] =
    br#"data: {"choices":[{"index":0,"finish_reason":"stop","delta":{}}]"#;

impl SseEncoder {
    /// An encoder for the response `id` created at `created` (unix seconds).
    pub fn new(id: &str, created: u64) -> SseEncoder {
        let mut tail = USAGE_NULL.to_vec();
        tail.extend_from_slice(br#","id":"#);
        let _ = serde_json::to_writer(&mut tail, id);
        tail.extend_from_slice(br#","created":"#);
        tail.extend_from_slice(created.to_string().as_bytes());
        tail.extend_from_slice(br#","object":"chat.completion.chunk"}"#);
        tail.extend_from_slice(b"\n\n");
        SseEncoder { tail }
    }

    /// Appends the chunk carrying `delta`.
    pub fn delta(&self, out: &mut Vec<u8>, delta: &Delta) {
        out.extend_from_slice(CHUNK_HEAD);
        delta.write_json(out);
        out.extend_from_slice(b"}]");
        out.extend_from_slice(&self.tail);
    }

    /// Appends the closing chunk of the choice (`finish_reason: "stop"`), with
    /// the response's usage when any was reported (aidial-sdk merges usage and
    /// statistics into this last chunk).
    pub fn stop(&self, out: &mut Vec<u8>, usage: &UsageReport) {
        out.extend_from_slice(STOP_CHUNK_HEAD);
        if usage.is_empty() {
            out.extend_from_slice(&self.tail);
        } else {
            out.extend_from_slice(br#","usage":"#);
            ser(out, &usage.total());
            out.extend_from_slice(br#","statistics":"#);
            ser(out, &usage.statistics());
            // The tail starts with `,"usage":null`: skip that part.
            out.extend_from_slice(&self.tail[USAGE_NULL.len()..]);
        }
    }

    /// Appends one error event.
    pub fn error(out: &mut Vec<u8>, error: &ErrorBody) {
        out.extend_from_slice(b"data: ");
        ser(out, error);
        out.extend_from_slice(b"\n\n");
    }

    /// Appends the end-of-stream marker.
    pub fn done(out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// A stage as merged for the non-streaming answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct MergedStage {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_stage_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StageStatus>,
}

/// Folds deltas into the non-streaming message, as aidial-sdk's `merge_chunks`
/// folds the same chunks: strings concatenate, status is replaced, indexed lists
/// merge by index, and every `index` key inside a list is dropped (state included).
#[derive(Debug, Clone, Default)]
pub struct MessageAccumulator {
    role: bool,
    content: Option<String>,
    stages: Vec<MergedStage>,
    attachments: Vec<Attachment>,
    state: Option<Value>,
    form_schema: Option<Value>,
}

impl MessageAccumulator {
    /// Folds one delta in.
    pub fn apply(&mut self, delta: Delta) {
        match delta {
            Delta::Role => self.role = true,
            Delta::Content(t) => self.content.get_or_insert_with(String::new).push_str(&t),
            Delta::StageOpen {
                index,
                name,
                parent,
            } => {
                let s = self.stage(index);
                s.name.push_str(&name);
                if parent.is_some() {
                    s.parent_stage_index = parent;
                }
            }
            Delta::StageName { index, name } => self.stage(index).name.push_str(&name),
            Delta::StageContent { index, content } => self
                .stage(index)
                .content
                .get_or_insert_with(String::new)
                .push_str(&content),
            Delta::StageAttachment {
                index,
                attachment_index,
                attachment,
            } => {
                let list = &mut self.stage(index).attachments;
                if list.len() <= attachment_index {
                    list.resize(attachment_index + 1, Attachment::default());
                }
                list[attachment_index] = attachment;
            }
            Delta::StageClose { index, status } => self.stage(index).status = Some(status),
            Delta::Attachment { index, attachment } => {
                if self.attachments.len() <= index {
                    self.attachments.resize(index + 1, Attachment::default());
                }
                self.attachments[index] = attachment;
            }
            Delta::State(v) => self.state = Some(v),
            Delta::FormSchema(v) => self.form_schema = Some(v),
        }
    }

    fn stage(&mut self, index: usize) -> &mut MergedStage {
        if self.stages.len() <= index {
            self.stages.resize(index + 1, MergedStage::default());
        }
        &mut self.stages[index]
    }

    /// The merged `chat.completion` object, with the response's usage.
    pub fn into_response(self, id: &str, created: u64, usage: &UsageReport) -> Value {
        let mut message = Map::new();
        if self.role {
            message.insert("role".into(), Value::from("assistant"));
        }
        let mut custom = Map::new();
        if !self.stages.is_empty() {
            custom.insert("stages".into(), to_value(&self.stages));
        }
        if !self.attachments.is_empty() {
            custom.insert("attachments".into(), to_value(&self.attachments));
        }
        if let Some(state) = self.state {
            custom.insert("state".into(), state);
        }
        if let Some(schema) = self.form_schema {
            custom.insert("form_schema".into(), schema);
        }
        if !custom.is_empty() {
            message.insert("custom_content".into(), Value::Object(custom));
        }
        if let Some(content) = self.content {
            message.insert("content".into(), Value::String(content));
        }
        let mut message = Value::Object(message);
        cleanup_indices(&mut message);
        let mut response = serde_json::json!({
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": null,
            "id": id,
            "created": created,
            "object": "chat.completion",
        });
        if !usage.is_empty() {
            response["usage"] = to_value(&usage.total());
            response["statistics"] = to_value(&usage.statistics());
        }
        response
    }
}

/// Drops `index` from every object inside a list, at any depth — what
/// aidial-sdk's `cleanup_indices` does to the merged message (state
/// included): the non-streaming answer equals the SDK's fold of the stream,
/// and a state's signed form is the same before and after a client's merge.
pub fn cleanup_indices(value: &mut Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                if let Value::Object(o) = item {
                    o.remove("index");
                }
                cleanup_indices(item);
            }
        }
        Value::Object(o) => o.values_mut().for_each(cleanup_indices),
        _ => {}
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::super::usage::Usage;
    use super::*;
    use serde_json::json;

    fn encode(d: &Delta) -> String {
        let enc = SseEncoder::new("id-1", 1_730_000_000);
        let mut out = Vec::new();
        enc.delta(&mut out, d);
        String::from_utf8(out).unwrap()
    }

    const TAIL: &str =
        r#""usage":null,"id":"id-1","created":1730000000,"object":"chat.completion.chunk"}"#;

    #[test]
    fn role_chunk_matches_the_sdk_bytes() {
        assert_eq!(
            encode(&Delta::Role),
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"finish_reason\":null,\"delta\":{{\"role\":\"assistant\"}}}}],{TAIL}\n\n"
            )
        );
    }

    #[test]
    fn stage_chunks_match_protocol_shapes() {
        let cases = [
            (
                Delta::StageOpen {
                    index: 0,
                    name: "Coordination Request".into(),
                    parent: None,
                },
                r#"{"custom_content":{"stages":[{"index":0,"name":"Coordination Request","status":null}]}}"#,
            ),
            (
                Delta::StageOpen {
                    index: 5,
                    name: "web_search".into(),
                    parent: Some(1),
                },
                r#"{"custom_content":{"stages":[{"index":5,"name":"web_search","status":null,"parent_stage_index":1}]}}"#,
            ),
            (
                Delta::StageContent {
                    index: 1,
                    content: "line \"q\"\n".into(),
                },
                r#"{"custom_content":{"stages":[{"index":1,"content":"line \"q\"\n","status":null}]}}"#,
            ),
            (
                Delta::StageAttachment {
                    index: 2,
                    attachment_index: 0,
                    attachment: Attachment {
                        kind: Some("image/png".into()),
                        title: Some("Image".into()),
                        url: Some("files/b/a.png".into()),
                        ..Attachment::default()
                    },
                },
                r#"{"custom_content":{"stages":[{"index":2,"attachments":[{"index":0,"type":"image/png","title":"Image","url":"files/b/a.png"}],"status":null}]}}"#,
            ),
            (
                Delta::StageClose {
                    index: 2,
                    status: StageStatus::Failed,
                },
                r#"{"custom_content":{"stages":[{"index":2,"status":"failed"}]}}"#,
            ),
            (
                Delta::Attachment {
                    index: 1,
                    attachment: Attachment {
                        kind: Some("text/markdown".into()),
                        data: Some("# hi".into()),
                        ..Attachment::default()
                    },
                },
                r##"{"custom_content":{"attachments":[{"index":1,"type":"text/markdown","data":"# hi"}]}}"##,
            ),
            (
                Delta::State(json!({"is_gpa": true, "gpa_messages": null})),
                r#"{"custom_content":{"state":{"gpa_messages":null,"is_gpa":true}}}"#,
            ),
            (Delta::Content("héllo".into()), r#"{"content":"héllo"}"#),
        ];
        for (delta, expected) in cases {
            let line = encode(&delta);
            let json: Value =
                serde_json::from_str(line.strip_prefix("data: ").unwrap().trim_end()).unwrap();
            assert_eq!(
                json["choices"][0]["delta"],
                serde_json::from_str::<Value>(expected).unwrap()
            );
            assert!(line.contains(expected), "{line}");
        }
    }

    fn test_error() -> ErrorBody {
        ErrorBody {
            error: super::super::error::ErrorDetail {
                message: "m".into(),
                kind: "invalid_request_error",
                code: "400".into(),
                display_message: "d".into(),
            },
        }
    }

    #[test]
    fn stop_chunk_carries_usage_and_statistics_when_reported() {
        let enc = SseEncoder::new("x", 1);
        let mut usage = UsageReport::default();
        usage.add("gpt-4o", Usage::new(10, 5));
        usage.add("general-purpose-agent", Usage::new(7, 3));
        usage.add("gpt-4o", Usage::new(2, 1));
        let mut out = Vec::new();
        enc.stop(&mut out, &usage);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"delta\":{}}],\
             \"usage\":{\"prompt_tokens\":19,\"completion_tokens\":9,\"total_tokens\":28},\
             \"statistics\":{\"usage_per_model\":[\
             {\"index\":0,\"model\":\"gpt-4o\",\"prompt_tokens\":12,\"completion_tokens\":6,\"total_tokens\":18},\
             {\"index\":1,\"model\":\"general-purpose-agent\",\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}]},\
             \"id\":\"x\",\"created\":1,\"object\":\"chat.completion.chunk\"}\n\n"
        );
    }

    #[test]
    fn stop_error_and_done_events() {
        let enc = SseEncoder::new("x", 1);
        let mut out = Vec::new();
        enc.stop(&mut out, &UsageReport::default());
        SseEncoder::error(&mut out, &test_error());
        SseEncoder::done(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"delta\":{}}],\"usage\":null,\"id\":\"x\",\"created\":1,\"object\":\"chat.completion.chunk\"}\n\n\
             data: {\"error\":{\"message\":\"m\",\"type\":\"invalid_request_error\",\"code\":\"400\",\"display_message\":\"d\"}}\n\n\
             data: [DONE]\n\n"
        );
    }

    #[test]
    fn accumulator_merges_like_merge_chunks() {
        let mut acc = MessageAccumulator::default();
        let png = Attachment {
            kind: Some("image/png".into()),
            url: Some("files/a.png".into()),
            ..Attachment::default()
        };
        for d in [
            Delta::Role,
            Delta::StageOpen {
                index: 0,
                name: "Coordination Request".into(),
                parent: None,
            },
            Delta::StageContent {
                index: 0,
                content: "a".into(),
            },
            Delta::StageContent {
                index: 0,
                content: "b".into(),
            },
            Delta::StageClose {
                index: 0,
                status: StageStatus::Completed,
            },
            Delta::StageOpen {
                index: 1,
                name: "child".into(),
                parent: Some(0),
            },
            Delta::StageAttachment {
                index: 1,
                attachment_index: 0,
                attachment: png.clone(),
            },
            Delta::StageClose {
                index: 1,
                status: StageStatus::Failed,
            },
            Delta::Attachment {
                index: 0,
                attachment: png,
            },
            Delta::State(json!({"ums_conversation_id": "c", "calls": [{"index": 0, "id": "x"}]})),
            Delta::Content("Hello ".into()),
            Delta::Content("world".into()),
        ] {
            acc.apply(d);
        }
        assert_eq!(
            acc.into_response("r", 7, &UsageReport::default()),
            json!({"choices":[{"index":0,"finish_reason":"stop","message":{
                "role":"assistant",
                "custom_content":{
                    "stages":[
                        {"name":"Coordination Request","content":"ab","status":"completed"},
                        {"name":"child","parent_stage_index":0,"attachments":[{"type":"image/png","url":"files/a.png"}],"status":"failed"}],
                    "attachments":[{"type":"image/png","url":"files/a.png"}],
                    "state":{"ums_conversation_id":"c","calls":[{"id":"x"}]}},
                "content":"Hello world"}}],
                "usage":null,"id":"r","created":7,"object":"chat.completion"})
        );
    }

    #[test]
    fn attachment_normalization() {
        let a = Attachment {
            url: Some("files/x".into()),
            ..Attachment::default()
        };
        assert_eq!(
            a.normalized().unwrap().kind.as_deref(),
            Some("text/markdown")
        );
        assert_eq!(Attachment::default().normalized(), None);
        let both = Attachment {
            url: Some("u".into()),
            data: Some("d".into()),
            ..Attachment::default()
        };
        assert_eq!(both.normalized(), None);
    }
}

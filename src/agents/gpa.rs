//! The General Purpose Agent: a DIAL deployment called through DIAL Core.
//!
//! History: GPA sees only its own past turns (PROTOCOL.md §3.6): for every
//! earlier assistant message whose state has `is_gpa`, the user message before it
//! and that assistant message with GPA's own state (`gpa_messages`) restored;
//! then the current user message with its attachments and the routing's
//! additional instructions. Stream: GPA's text goes into our GPA stage; its
//! stages are mirrored live as our stages under the GPA stage ([`StageMirror`]);
//! its choice attachments become ours; its state becomes
//! `{"is_gpa": true, "gpa_messages": <GPA's state>}`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{Agent, AgentCall};
use crate::calls::{call, parse_event, pump_events, Next};
use crate::client::{Host, OutboundRequest};
use crate::coordinator::FlowError;
use crate::dial::request::{ChatBody, CustomContent, Message};
use crate::dial::response::StageStatus;
use crate::dial::upstream::{error_text, StageUpdate, StreamChunk};
use crate::emitter::{Emitter, StageId, Transport};
use crate::error::{Upstream, UpstreamFault};
use crate::state::trusted_state;

/// State key marking an assistant turn served by GPA.
pub const IS_GPA: &str = "is_gpa";
/// State key holding GPA's own state.
pub const GPA_MESSAGES: &str = "gpa_messages";

/// The GPA agent.
#[derive(Debug)]
pub struct Gpa;

/// GPA's own state stored on an assistant turn that GPA served: `Some(None)`
/// for a GPA turn without state, `None` when the turn is not GPA's (or its state
/// is untrusted or malformed: `is_gpa` must be `true`, `gpa_messages` an object
/// or null).
fn gpa_turn_state<'a>(
    message: &'a Message,
    trust: &StateTrust<'_>,
) -> Option<Option<&'a RawValue>> {
    /// The fields of our GPA state, read without building a tree.
    #[derive(Deserialize)]
    struct View<'a> {
        #[serde(default)]
        is_gpa: Option<Value>,
        #[serde(default, borrow)]
        gpa_messages: Option<&'a RawValue>,
    }
    // Cheap text checks first: most messages are not GPA turns.
    if message.role != "assistant" || !message.state()?.get().contains(IS_GPA) {
        return None;
    }
    let state = trusted_state(message, trust.secret, trust.binding)?;
    let view: View<'a> = serde_json::from_str(state.get()).ok()?;
    if view.is_gpa != Some(Value::Bool(true)) {
        return None;
    }
    match view.gpa_messages {
        None => Some(None),
        Some(raw) if raw.get().starts_with('{') => Some(Some(raw)),
        Some(_) => None,
    }
}

/// How to trust states in the history: the signing secret and the conversation
/// they must belong to (see `state.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StateTrust<'a> {
    /// `STATE_SECRET`, when signing is on.
    pub secret: Option<&'a str>,
    /// The conversation binding (`X-CONVERSATION-ID` or empty).
    pub binding: &'a str,
}

/// The messages GPA receives for `history` (whose last message is the request).
pub fn gpa_history(
    history: &[Message],
    additional_instructions: Option<&str>,
    trust: &StateTrust<'_>,
) -> Vec<Message> {
    let Some((current, earlier)) = history.split_last() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, message) in earlier.iter().enumerate() {
        let Some(gpa_state) = gpa_turn_state(message, trust) else {
            continue;
        };
        if let Some(previous) = i.checked_sub(1).map(|p| &earlier[p]) {
            if previous.role == "user" {
                out.push(previous.clone());
            }
        }
        let mut restored = message.clone();
        restored.custom_content = gpa_state.map(|state| CustomContent {
            state: Some(state.to_owned()),
            ..CustomContent::default()
        });
        out.push(restored);
    }
    let mut last = current.clone();
    if let Some(extra) = additional_instructions {
        last.append_text(&format!("\n\n{extra}"));
    }
    out.push(last);
    out
}

/// Our state for a GPA turn.
pub fn gpa_state(gpa_state: Option<Value>) -> Value {
    json!({IS_GPA: true, GPA_MESSAGES: gpa_state.unwrap_or(Value::Null)})
}

/// Mirrors GPA's stages as ours: fresh indices, opened under our GPA stage,
/// GPA's own nesting kept (its parent indices remapped).
#[derive(Debug)]
pub struct StageMirror {
    parent: StageId,
    map: HashMap<usize, StageId>,
}

impl StageMirror {
    /// A mirror whose top-level stages go under `parent`.
    pub fn new(parent: StageId) -> StageMirror {
        StageMirror {
            parent,
            map: HashMap::new(),
        }
    }

    /// Applies one GPA stage update.
    pub fn apply<T: Transport>(&mut self, update: StageUpdate, out: &mut Emitter<T>) {
        let ours = match self.map.get(&update.index) {
            Some(id) => {
                if let Some(name) = &update.name {
                    out.stage_name(*id, name);
                }
                *id
            }
            None => {
                let parent = update
                    .parent_stage_index
                    .and_then(|p| self.map.get(&p).copied())
                    .filter(|p| out.is_open(*p))
                    .unwrap_or(self.parent);
                let id = out.open_stage(update.name.as_deref().unwrap_or(""), Some(parent));
                self.map.insert(update.index, id);
                id
            }
        };
        if let Some(content) = &update.content {
            out.stage_content(ours, content);
        }
        for attachment in update.attachments.into_iter().flatten() {
            if let Some(a) = attachment.normalized() {
                out.stage_attachment(ours, a);
            }
        }
        match update.status.as_deref() {
            Some("completed") => out.close_stage(ours, StageStatus::Completed),
            Some("failed") => out.close_stage(ours, StageStatus::Failed),
            _ => {}
        }
    }

    /// Closes the mirrored stages GPA left open (completed), children first.
    pub fn close_leftovers<T: Transport>(&self, out: &mut Emitter<T>) {
        let mut ids: Vec<StageId> = self.map.values().copied().collect();
        ids.sort_by_key(|id| std::cmp::Reverse(id.0));
        for id in ids {
            out.close_stage(id, StageStatus::Completed);
        }
    }
}

/// What one GPA stream produced besides the live events.
#[derive(Debug, Default)]
pub struct GpaTurn {
    /// GPA's answer text.
    pub text: String,
    /// GPA's last state.
    pub state: Option<Value>,
}

impl GpaTurn {
    /// Handles one streamed event: text into `stage`, stages mirrored, choice
    /// attachments forwarded, state remembered.
    pub fn on_chunk<T: Transport>(
        &mut self,
        chunk: StreamChunk,
        stage: StageId,
        mirror: &mut StageMirror,
        out: &mut Emitter<T>,
    ) -> Result<(), String> {
        if let Some(error) = &chunk.error {
            return Err(error_text(error));
        }
        let Some(delta) = chunk.into_delta() else {
            return Ok(());
        };
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.stage_content(stage, &text);
            self.text.push_str(&text);
        }
        if let Some(custom) = delta.custom_content {
            for update in custom.stages.into_iter().flatten() {
                mirror.apply(update, out);
            }
            for attachment in custom.attachments.into_iter().flatten() {
                if let Some(a) = attachment.normalized() {
                    out.attachment(a);
                }
            }
            if custom.state.is_some() {
                self.state = custom.state;
            }
        }
        Ok(())
    }
}

impl Agent for Gpa {
    async fn run<H: Host, T: Transport>(
        call_ctx: AgentCall<'_, H>,
        out: &mut Emitter<T>,
    ) -> Result<String, FlowError> {
        let caller = call_ctx.caller;
        let ctx = caller.ctx;
        let trust = ctx.state_trust();
        let messages = gpa_history(
            &ctx.request.messages,
            call_ctx.decision.additional_instructions.as_deref(),
            &trust,
        );
        let targets = ctx.config.gpa_targets();
        let answered = call(caller, Upstream::Gpa, &targets, |deployment| {
            let body = ChatBody {
                messages: &messages,
                model: deployment,
                stream: true,
                response_format: None,
            };
            let mut request =
                OutboundRequest::post_json(ctx.config.deployment_url(deployment), body.to_vec())
                    .header("api-key", &ctx.api_key);
            if let Some(id) = &ctx.conversation_id {
                request = request.header("x-conversation-id", id);
            }
            request
        })
        .await?;
        if let Some(note) = answered.failover_note() {
            out.stage_content(call_ctx.stage, &note);
        }

        let site = answered.site;
        let stage = call_ctx.stage;
        let mut turn = GpaTurn::default();
        let mut mirror = StageMirror::new(stage);
        pump_events(answered, out, |data, out| {
            let chunk: StreamChunk = parse_event(site, data)?;
            turn.on_chunk(chunk, stage, &mut mirror, out)
                .map_err(|e| site.error(UpstreamFault::ErrorEvent(site.redact(&e))))?;
            Ok(Next::Continue)
        })
        .await?;
        mirror.close_leftovers(out);
        out.set_state(crate::state::sign(
            gpa_state(turn.state),
            trust.secret,
            trust.binding,
        ));
        Ok(turn.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emitter::BufferTransport;

    fn msg(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn gpa_history_excludes_ums_turns_and_restores_gpa_state() {
        let history = vec![
            msg(json!({"role": "user", "content": "Do we have Ada?"})),
            msg(
                json!({"role": "assistant", "content": "No.", "custom_content": {"state": {"ums_conversation_id": "c1"}}}),
            ),
            msg(
                json!({"role": "user", "content": "Weather in Kyiv", "custom_content": {"attachments": [{"url": "files/a.csv"}]}}),
            ),
            msg(
                json!({"role": "assistant", "content": "Rainy.", "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": [1]}}}}),
            ),
            msg(json!({"role": "user", "content": "Add her"})),
            msg(
                json!({"role": "assistant", "content": "Done.", "custom_content": {"state": {"ums_conversation_id": "c1"}}}),
            ),
            msg(json!({"role": "user", "content": "Now a picture"})),
        ];
        let got: Vec<Value> = gpa_history(&history, Some("Be brief."), &StateTrust::default())
            .iter()
            .map(|m| serde_json::to_value(m).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                json!({"role": "user", "content": "Weather in Kyiv", "custom_content": {"attachments": [{"url": "files/a.csv"}]}}),
                json!({"role": "assistant", "content": "Rainy.", "custom_content": {"state": {"tool_call_history": [1]}}}),
                json!({"role": "user", "content": "Now a picture\n\nBe brief."}),
            ]
        );
    }

    #[test]
    fn gpa_turn_with_null_state_is_sent_without_custom_content() {
        let history = vec![
            msg(json!({"role": "user", "content": "q"})),
            msg(
                json!({"role": "assistant", "content": "a", "custom_content": {"state": {"is_gpa": true, "gpa_messages": null}}}),
            ),
            msg(json!({"role": "user", "content": "next"})),
        ];
        let got = gpa_history(&history, None, &StateTrust::default());
        assert!(got[1].custom_content.is_none());
        assert_eq!(got.len(), 3);
    }

    /// Feeds GPA chunks through a mirror under stage 1 and returns the merged
    /// message and the turn.
    fn run_mirror(chunks: Vec<Value>) -> (Value, GpaTurn) {
        let mut out: Emitter<BufferTransport> = Emitter::collecting();
        out.role();
        let s0 = out.open_stage("Coordination Request", None);
        out.close_stage(s0, StageStatus::Completed);
        let stage = out.open_stage("Call GPA Agent", None);
        let mut mirror = StageMirror::new(stage);
        let mut turn = GpaTurn::default();
        for c in chunks {
            let chunk: StreamChunk = serde_json::from_value(c).unwrap();
            turn.on_chunk(chunk, stage, &mut mirror, &mut out).unwrap();
        }
        mirror.close_leftovers(&mut out);
        out.close_stage(stage, StageStatus::Completed);
        let merged = out.into_merged("i", 1).unwrap();
        (merged["choices"][0]["message"].clone(), turn)
    }

    fn chunk(delta: Value) -> Value {
        json!({"choices": [{"index": 0, "finish_reason": null, "delta": delta}]})
    }

    #[test]
    fn mirror_remaps_indices_nesting_and_closes_leftovers() {
        let (message, turn) = run_mirror(vec![
            chunk(json!({"role": "assistant"})),
            chunk(json!({"content": "Hi "})),
            chunk(
                json!({"custom_content": {"stages": [{"index": 0, "name": "planner", "status": null}]}}),
            ),
            chunk(
                json!({"custom_content": {"stages": [{"index": 1, "name": "step", "status": null, "parent_stage_index": 0}]}}),
            ),
            chunk(
                json!({"custom_content": {"stages": [{"index": 1, "attachments": [{"index": 0, "url": "files/x.png", "type": "image/png"}], "status": null}]}}),
            ),
            chunk(
                json!({"custom_content": {"stages": [{"index": 1, "attachments": [{"index": 1, "url": "files/doc"}], "status": null}]}}),
            ),
            chunk(json!({"custom_content": {"stages": [{"index": 1, "status": "failed"}]}})),
            chunk(
                json!({"custom_content": {"stages": [{"index": 2, "name": "left_open", "content": "first fragment", "status": null}]}}),
            ),
            chunk(
                json!({"custom_content": {"attachments": [{"index": 0, "url": "files/y.png", "type": "image/png"}]}}),
            ),
            chunk(
                json!({"custom_content": {"attachments": [{"index": 1, "title": "no url or data"}]}}),
            ),
            chunk(json!({"custom_content": {"state": {"tool_call_history": []}}})),
            chunk(json!({"content": "there"})),
        ]);
        assert_eq!(turn.text, "Hi there");
        assert_eq!(turn.state, Some(json!({"tool_call_history": []})));
        assert_eq!(
            message["custom_content"]["stages"],
            json!([
                {"name": "Coordination Request", "status": "completed"},
                {"name": "Call GPA Agent", "content": "Hi there", "status": "completed"},
                {"name": "planner", "parent_stage_index": 1, "status": "completed"},
                {"name": "step", "parent_stage_index": 2, "status": "failed",
                 "attachments": [{"type": "image/png", "url": "files/x.png"}, {"type": "text/markdown", "url": "files/doc"}]},
                {"name": "left_open", "parent_stage_index": 1, "content": "first fragment", "status": "completed"},
            ])
        );
        assert_eq!(
            message["custom_content"]["attachments"],
            json!([{"type": "image/png", "url": "files/y.png"}])
        );
    }

    #[test]
    fn gpa_error_event_is_reported() {
        let mut out: Emitter<BufferTransport> = Emitter::collecting();
        let stage = out.open_stage("Call GPA Agent", None);
        let mut mirror = StageMirror::new(stage);
        let chunk: StreamChunk =
            serde_json::from_value(json!({"error": {"message": "tool crashed", "code": "500"}}))
                .unwrap();
        let err = GpaTurn::default()
            .on_chunk(chunk, stage, &mut mirror, &mut out)
            .unwrap_err();
        assert_eq!(err, "tool crashed");
    }

    #[test]
    fn malformed_or_unsigned_gpa_states_are_ignored() {
        let history = vec![
            msg(json!({"role": "user", "content": "q1"})),
            msg(
                json!({"role": "assistant", "content": "a1", "custom_content": {"state": {"is_gpa": "yes", "gpa_messages": {}}}}),
            ),
            msg(json!({"role": "user", "content": "q2"})),
            msg(
                json!({"role": "assistant", "content": "a2", "custom_content": {"state": {"is_gpa": true, "gpa_messages": "not an object"}}}),
            ),
            msg(json!({"role": "user", "content": "q3"})),
            msg(
                json!({"role": "assistant", "content": "a3", "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": []}}}}),
            ),
            msg(json!({"role": "user", "content": "now"})),
        ];
        let got = gpa_history(&history, None, &StateTrust::default());
        let texts: Vec<String> = got.iter().map(Message::text).collect();
        assert_eq!(texts, vec!["q3", "a3", "now"]);
        let signed = StateTrust {
            secret: Some("0123456789abcdef"),
            binding: "c",
        };
        let got = gpa_history(&history, None, &signed);
        assert_eq!(
            got.len(),
            1,
            "unsigned states are ignored when signing is on"
        );
    }

    #[test]
    fn our_state_wraps_gpa_state() {
        assert_eq!(
            gpa_state(Some(json!({"tool_call_history": [1]}))),
            json!({"is_gpa": true, "gpa_messages": {"tool_call_history": [1]}})
        );
        assert_eq!(
            gpa_state(None),
            json!({"is_gpa": true, "gpa_messages": null})
        );
    }
}

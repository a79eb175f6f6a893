//! An agent with the UMS conversation API, called directly (never with DIAL
//! credentials): `POST /conversations`, then `POST /conversations/{id}/chat`
//! streaming.
//!
//! UMS keeps its own history per conversation, so it receives only the current
//! request (plus the task text). The conversation id and a tag of the endpoint
//! that holds it live in our state (`memory/`): the newest valid one in the
//! history is reused, on its own endpoint first; otherwise a conversation is
//! created, and the stage says so. If the endpoint no longer knows the id (the
//! chat call fails and `GET /conversations/{id}` answers 404), one new
//! conversation is created and the stage says that too; that failure is never
//! counted against the endpoint's breaker. The id is validated and
//! percent-encoded into the path. The conversation is remembered as soon as
//! the chat call is accepted, so a stream that fails later keeps it.

use serde::Deserialize;
use serde_json::{json, Value};

use super::kinds::{
    endpoint_probes, message_with_task, AgentVars, Assignment, Builtin, Kind, Probe,
};
use super::{parse_event, AnswerText, Read, Say, Session, Step};
use crate::calls::{CallFailed, CallSpec, Replay, RequestTemplate};
use crate::client::{endpoint_targets, Method, Target};
use crate::config::parse_endpoint;
use crate::config::registry::{AgentSpec, StateSlot};
use crate::context::RequestContext;
use crate::error::{CoordError, UpstreamFault};
use crate::limits::MAX_CONTEXT_BYTES_PER_RESULT;
use crate::memory::{self, endpoint_tag, is_valid_conversation_id, Conversation, Memory};
use crate::wire::upstream::error_text;

/// The `ums` kind: an agent with the UMS conversation API, called directly.
pub const KIND: Kind = Kind {
    name: "ums",
    about: "the UMS conversation API",
    read,
    builtin: Some(Builtin {
        name: "UMS",
        target: "http://localhost:8042",
        legacy: ["UMS_AGENT_ENDPOINT", "UMS_AGENT_BACKUP_ENDPOINTS"],
        description: UMS_DESCRIPTION,
        display_name: "the User Management agent",
        slot: StateSlot::Ums,
    }),
    session,
    probes,
    // A conversation is one thread.
    serial: true,
    discover: None,
};

/// UMS's description in the coordination prompt.
pub const UMS_DESCRIPTION: &str = "Users Management Service agent: everything about the users stored in the \
Users Management Service: checking whether a person is a user, searching and listing users, showing a \
user's details, creating, updating and deleting users. It can also search the web to complete a user's \
profile.";

/// `AGENT_<NAME>_ENDPOINT` and `AGENT_<NAME>_BACKUPS`: base URLs.
fn read(vars: &AgentVars<'_>) -> Vec<Target> {
    endpoint_targets(&vars.targets("ENDPOINT", parse_endpoint))
}

fn session(a: Assignment<'_>) -> Box<dyn Session + '_> {
    Box::new(UmsSession::new(
        a.ctx,
        a.agent,
        a.task.as_deref(),
        a.conversation,
    ))
}

/// Every endpoint's `/health`, primary and backups.
fn probes(agent: &AgentSpec) -> Vec<Probe> {
    endpoint_probes(agent, "/health")
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

/// The newest valid conversation of `agent` kept in the history's trusted
/// state: its id and the tag of its endpoint.
pub fn find_conversation(ctx: &RequestContext, agent: &AgentSpec) -> Option<Conversation> {
    let marker = match agent.slot {
        StateSlot::Ums => memory::UMS_CONVERSATION_ID,
        _ => memory::AGENTS,
    };
    ctx.recall()
        .states(&ctx.request.messages)
        .rev()
        // A cheap text check first: most states in a long history are not this agent's.
        .filter(|(_, state)| state.get().contains(marker))
        .find_map(|(_, state)| memory::conversation(state, agent))
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
    choices: Option<Vec<UmsChoice>>,
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

#[derive(Debug)]
enum Phase {
    Start,
    /// Creating a conversation; `lost` is the id UMS no longer knew.
    Creating {
        lost: Option<String>,
    },
    /// Created `id` on `endpoint`; the chat call comes next.
    Created {
        id: String,
        endpoint: usize,
    },
    /// The chat call on `id` is under way.
    Chatting {
        id: String,
        stored: bool,
    },
    /// The chat on a stored id failed with `failed`: is the conversation gone?
    Probing {
        id: String,
        failed: CallFailed,
    },
    /// The probe said the conversation is gone.
    Lost {
        id: String,
    },
    Streaming,
    Failed(CoordError),
    Done,
}

/// One request to a UMS-kind agent (see the module docs).
#[derive(Debug)]
pub struct UmsSession<'a> {
    agent: &'a AgentSpec,
    endpoints: Vec<Target>,
    message: String,
    known: Option<Conversation>,
    phase: Phase,
    text: AnswerText,
    /// Which endpoint created the conversation (the chat goes there).
    created_on: usize,
}

impl<'a> UmsSession<'a> {
    /// A request to `agent`: the user's message with `task` appended, in the
    /// conversation `known` (id, endpoint tag) when there is one.
    pub fn new(
        ctx: &RequestContext,
        agent: &'a AgentSpec,
        task: Option<&str>,
        known: Option<Conversation>,
    ) -> UmsSession<'a> {
        let message = message_with_task(ctx, task);
        let endpoints = agent.targets.clone();
        UmsSession {
            agent,
            endpoints,
            message,
            known,
            phase: Phase::Start,
            text: AnswerText::new(MAX_CONTEXT_BYTES_PER_RESULT),
            created_on: 0,
        }
    }

    fn spec(
        &self,
        targets: Vec<Target>,
        request: RequestTemplate,
        replay: Replay,
        defer_blame: bool,
    ) -> CallSpec {
        CallSpec {
            service: self.agent.service(),
            targets,
            request,
            replay,
            defer_blame,
        }
    }

    fn create(&self) -> CallSpec {
        let body = serde_json::to_vec(&json!({"title": conversation_title(&self.message)}))
            .unwrap_or_default();
        self.spec(
            self.endpoints.clone(),
            RequestTemplate::endpoint(Method::Post, "/conversations", body),
            Replay::NotStarted,
            false,
        )
    }

    fn chat(&self, id: &str, targets: Vec<Target>, defer_blame: bool) -> CallSpec {
        let body = serde_json::to_vec(&json!({
            "message": {"role": "user", "content": self.message},
            "stream": true,
        }))
        .unwrap_or_default();
        let path = format!("/conversations/{}/chat", encode_path_segment(id));
        self.spec(
            targets,
            RequestTemplate::endpoint(Method::Post, &path, body),
            Replay::NotStarted,
            defer_blame,
        )
    }

    /// The endpoints with the one tagged `tag` first.
    fn ordered(&self, tag: Option<&str>) -> Vec<Target> {
        let mut targets = self.endpoints.clone();
        if let Some(i) = tag.and_then(|t| targets.iter().position(|e| endpoint_tag(&e.id) == t)) {
            let home = targets.remove(i);
            targets.insert(0, home);
        }
        targets
    }
}

impl Session for UmsSession<'_> {
    fn step(&mut self, _say: &mut dyn Say) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => match self.known.take() {
                Some((id, tag)) => {
                    let spec = self.chat(&id, self.ordered(tag.as_deref()), true);
                    self.phase = Phase::Chatting { id, stored: true };
                    Step::Call(spec, Read::Events)
                }
                None => {
                    self.phase = Phase::Creating { lost: None };
                    Step::Call(self.create(), Read::Whole)
                }
            },
            Phase::Created { id, endpoint } => {
                let targets = self.endpoints.get(endpoint).cloned().into_iter().collect();
                let spec = self.chat(&id, targets, false);
                self.phase = Phase::Chatting { id, stored: false };
                Step::Call(spec, Read::Events)
            }
            Phase::Probing { id, failed } => {
                // The probe asks the endpoint that failed the chat.
                let target = match &failed.error {
                    CoordError::Upstream { target, .. } => {
                        self.endpoints.iter().find(|e| &e.label == target).cloned()
                    }
                    _ => None,
                };
                let path = format!("/conversations/{}", encode_path_segment(&id));
                let spec = self.spec(
                    target.into_iter().collect(),
                    RequestTemplate::endpoint(Method::Get, &path, Vec::new()),
                    Replay::Safe,
                    false,
                );
                self.phase = Phase::Probing { id, failed };
                Step::Call(spec, Read::Whole)
            }
            Phase::Lost { id } => {
                self.phase = Phase::Creating { lost: Some(id) };
                Step::Call(self.create(), Read::Whole)
            }
            Phase::Failed(e) => Step::Finish(Err(e)),
            Phase::Creating { .. } | Phase::Chatting { .. } | Phase::Streaming | Phase::Done => {
                Step::Finish(Ok(
                    std::mem::replace(&mut self.text, AnswerText::new(0)).finish()
                ))
            }
        }
    }

    fn on_open(&mut self, target: &Target, say: &mut dyn Say) {
        if let Phase::Creating { .. } = &self.phase {
            self.created_on = self
                .endpoints
                .iter()
                .position(|e| e.id == target.id)
                .unwrap_or(0);
        }
        if let Phase::Chatting { id, .. } = &self.phase {
            say.remember(Memory::Conversation {
                id: id.clone(),
                endpoint: endpoint_tag(&target.id),
            });
            self.phase = Phase::Streaming;
        }
    }

    fn on_failed(&mut self, failed: CallFailed, say: &mut dyn Say) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Chatting { id, stored: true }
                if matches!(failed.error.fault(), Some(UpstreamFault::Status(..))) =>
            {
                Phase::Probing { id, failed }
            }
            Phase::Probing { id, failed: chat } => {
                if matches!(failed.error.fault(), Some(UpstreamFault::Status(404, _))) {
                    // Gone: the chat's failure was not the endpoint's.
                    Phase::Lost { id }
                } else {
                    // The probe's own failure was counted; the chat's is not counted twice.
                    Phase::Failed(chat.error)
                }
            }
            _ => {
                if let Some(b) = &failed.blame {
                    say.blame(b.clone());
                }
                Phase::Failed(failed.error)
            }
        };
    }

    fn on_body(&mut self, body: &[u8], say: &mut dyn Say) -> Result<(), CoordError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Creating { lost } => {
                let created: CreatedConversation = serde_json::from_slice(body).map_err(|_| {
                    say.error(UpstreamFault::malformed(
                        "the created conversation has no id",
                    ))
                })?;
                let id = match created.id.as_str() {
                    Some(id) if is_valid_conversation_id(id) => id.to_owned(),
                    _ => {
                        return Err(say.error(UpstreamFault::malformed(
                            "the created conversation id is not a valid id",
                        )))
                    }
                };
                let note = match lost {
                    Some(old) => format!(
                        "_{} no longer knows conversation {old}; created new {} conversation: {id}_\n\n",
                        self.agent.name, self.agent.name
                    ),
                    None => format!("_Created new {} conversation: {id}_\n\n", self.agent.name),
                };
                say.text(&note);
                // Chat where it was created: a backup does not know the primary's conversations.
                self.phase = Phase::Created {
                    id,
                    endpoint: self.created_on,
                };
            }
            Phase::Probing { failed, .. } => {
                // The conversation exists: the chat failed for another reason, and that counts.
                if let Some(b) = &failed.blame {
                    say.blame(b.clone());
                }
                self.phase = Phase::Failed(failed.error);
            }
            other => self.phase = other,
        }
        Ok(())
    }

    fn on_event(&mut self, data: &str, say: &mut dyn Say) -> Result<(), CoordError> {
        let event: UmsEvent = parse_event(data, say)?;
        if let Some(error) = &event.error {
            return Err(say.error(UpstreamFault::ErrorEvent(say.redact(&error_text(error)))));
        }
        if event.conversation_id.is_some() {
            return Ok(());
        }
        let piece = event
            .choices
            .into_iter()
            .flatten()
            .next()
            .and_then(|c| c.delta)
            .and_then(|d| d.content)
            .unwrap_or_default();
        say.text(&piece);
        self.text.push(&piece);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("abc-1_2.~"), "abc-1_2.~");
        assert_eq!(encode_path_segment("a/b?c#d %"), "a%2Fb%3Fc%23d%20%25");
    }

    #[test]
    fn titles_are_the_first_line() {
        assert_eq!(conversation_title("\n  first line \nsecond"), "first line");
        assert_eq!(conversation_title(""), "MAS coordinator conversation");
        assert_eq!(conversation_title(&"x".repeat(100)).len(), 80);
    }
}

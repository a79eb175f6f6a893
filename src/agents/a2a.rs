//! An agent that speaks the Agent2Agent protocol (A2A, as the official SDKs
//! 1.x serve it), called directly by its base URL and never with DIAL
//! credentials.
//!
//! A call reads the agent's card first (`GET <base>/.well-known/agent-card.json`,
//! failing over across the agent's endpoints), which says where its JSON-RPC
//! endpoint is (on the same origin as the card, else the card is refused),
//! which protocol version it speaks (1.0, sent with `A2A-Version: 1.0`, else
//! 0.3) and whether it streams. Then the user's message (with the task text)
//! goes to the agent with the streaming method when the card says so, else the
//! blocking one:
//!
//! - status updates' messages stream into the agent's stage as they arrive;
//! - text artifacts (joined across `append` chunks) are the answer the
//!   synthesis reads, and stream into the stage too;
//! - file parts become attachments of the response (inline bytes that are
//!   UTF-8 text as `data`, links as `url`, with title and type; other inline
//!   bytes are left out and the stage says so); data parts are shown in the
//!   stage as JSON;
//! - `failed`, `rejected` and `canceled` end the subtask as failed with the
//!   agent's message; `input-required` and `auth-required` end it with the
//!   agent's question as its answer.
//!
//! The `contextId` the agent returns is kept in our state under
//! `agents.<NAME>` (with a tag of the endpoint) and sent with the agent's next
//! subtask, in this turn or a later one, so the agent continues its own
//! conversation; it never sees another agent's turns. Headers from
//! `AGENT_<NAME>_AUTH_HEADER` / `AGENT_<NAME>_AUTH_VALUE` go with every call.

use serde_json::{json, Value};

use super::kinds::{
    endpoint_probes, message_with_task, AgentVars, Assignment, Discover, Kind, Probe,
};
use super::{parse_event, AnswerText, Read, Say, Session, Step};
use crate::calls::{CallFailed, CallSpec, Replay, RequestTemplate};
use crate::client::{endpoint_targets, Method, Target};
use crate::config::parse_endpoint;
use crate::config::registry::AgentSpec;
use crate::error::{CoordError, UpstreamFault};
use crate::limits::MAX_CONTEXT_BYTES_PER_RESULT;
use crate::memory::pending::{AgentQuestion, Resume};
use crate::memory::state::fnv1a;
use crate::memory::{endpoint_tag, is_valid_conversation_id, Conversation, Memory};
use crate::wire::response::Attachment;

/// The `a2a` kind.
pub const KIND: Kind = Kind {
    name: "a2a",
    about: "an Agent2Agent protocol server",
    read,
    builtin: None,
    session,
    probes,
    // A context is one conversation: its subtasks of a turn run in order.
    serial: true,
    discover: Some(Discover {
        what: "agent card",
        path: CARD_PATH,
        read: describe,
    }),
};

/// Largest card accepted (as discovery accepts).
const MAX_CARD_BYTES: usize = 64 * 1024;

/// Where an A2A server publishes its card, under its base URL.
pub const CARD_PATH: &str = "/.well-known/agent-card.json";

/// `AGENT_<NAME>_ENDPOINT`, `AGENT_<NAME>_BACKUPS` (base URLs), and the
/// agent's own credential: `AGENT_<NAME>_AUTH_HEADER` names the header,
/// `AGENT_<NAME>_AUTH_VALUE` (a secret) is its value.
fn read(vars: &AgentVars<'_>) -> Vec<Target> {
    let targets = endpoint_targets(&vars.targets("ENDPOINT", parse_endpoint));
    let (header_var, value_var) = (vars.var("AUTH_HEADER"), vars.var("AUTH_VALUE"));
    match (vars.value("AUTH_HEADER"), vars.value("AUTH_VALUE")) {
        (Some(header), Some(value)) => {
            let header = header.trim();
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if header.is_empty() || !header.chars().all(token) {
                vars.problem(&header_var, "must be an HTTP header name");
            } else if value.chars().any(|c| c.is_control()) {
                vars.problem(&value_var, "must be one line of printable characters");
            } else {
                vars.add_header(header, value.trim().to_owned());
            }
        }
        (Some(_), None) => vars.problem(
            &value_var,
            format!("is required with {header_var}: the value of the agent's credential"),
        ),
        (None, Some(_)) => vars.problem(
            &header_var,
            format!("is required with {value_var}: the header that carries it"),
        ),
        (None, None) => {}
    }
    targets
}

fn session(a: Assignment<'_>) -> Box<dyn Session + '_> {
    let message = message_with_task(a.ctx, a.task.as_deref());
    // The user's message answers this agent's question: it goes to the task
    // that waits for it.
    let waiting = match &a.ctx.resume {
        Resume::Agent(q) if q.agent == a.agent.name => Some(q.clone()),
        _ => None,
    };
    // Unique per request, agent and message (several subtasks of one agent).
    let message_id = format!(
        "{}-{}-{:08x}",
        a.ctx.trace.span_id,
        a.agent.name.to_ascii_lowercase(),
        fnv1a(message.as_bytes()) & 0xffff_ffff
    );
    let mut session = A2aSession::new(a.agent, message, message_id, a.conversation);
    if let Some(q) = waiting {
        session.known = Some((q.context, Some(q.endpoint)));
        session.task = Some(q.task);
    }
    // The card read before the coordination call: no second read.
    if let Some(found) = a.discovered {
        if let Ok(interface) = interface(&found.doc, &found.target.id) {
            session.base = Some(found.target);
            session.interface = Some(interface);
        }
    }
    Box::new(session)
}

/// Most skills, and examples of a skill, a card's description tells the prompt.
const MAX_SKILLS: usize = 8;
const MAX_EXAMPLES: usize = 3;
/// Longest piece of a card (a description, a skill's name or description, an
/// example) and longest whole description, in characters.
const MAX_CARD_TEXT: usize = 300;
const MAX_DESCRIPTION: usize = 2_000;

/// One line of at most `max` characters.
fn line(text: &str, max: usize) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        return one;
    }
    let cut: String = one.chars().take(max).collect();
    format!("{cut}…")
}

/// The description of an agent from its card (for the coordination prompt):
/// its description, then each skill's name, description and examples, on one
/// line and bounded; or why the card cannot be used.
pub fn describe(card: &Value, base: &str) -> Result<String, String> {
    interface(card, base)?;
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(|t| line(t, MAX_CARD_TEXT))
            .filter(|t| !t.is_empty())
    };
    let mut out = text(card, "description")
        .or_else(|| text(card, "name"))
        .unwrap_or_default();
    let skills: Vec<String> = card
        .get("skills")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .take(MAX_SKILLS)
                .filter_map(|skill| {
                    let mut s = text(skill, "name")?;
                    if let Some(d) = text(skill, "description") {
                        s.push_str(": ");
                        s.push_str(&d);
                    }
                    let examples: Vec<String> = skill
                        .get("examples")
                        .and_then(Value::as_array)
                        .map(|e| {
                            e.iter()
                                .filter_map(Value::as_str)
                                .take(MAX_EXAMPLES)
                                .map(|x| format!("\"{}\"", line(x, MAX_CARD_TEXT)))
                                .collect()
                        })
                        .unwrap_or_default();
                    if !examples.is_empty() {
                        s.push_str(&format!(" (e.g. {})", examples.join(", ")));
                    }
                    Some(s)
                })
                .collect()
        })
        .unwrap_or_default();
    if !skills.is_empty() {
        if !out.is_empty() && !out.ends_with('.') {
            out.push('.');
        }
        let skills = skills.join("; ");
        out.push_str(&format!(" Skills: {}.", skills.trim_end_matches('.')));
    }
    let out = line(&out, MAX_DESCRIPTION);
    if out.is_empty() {
        return Err("describes nothing (no description, name or skill)".to_owned());
    }
    Ok(out)
}

/// Every endpoint's card.
fn probes(agent: &AgentSpec) -> Vec<Probe> {
    endpoint_probes(agent, CARD_PATH)
}

/// The protocol version a card offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 1.0: `SendMessage`, `SendStreamingMessage`, with `A2A-Version: 1.0`.
    V1,
    /// 0.3: `message/send`, `message/stream`.
    V03,
}

/// What a card says about calling the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The JSON-RPC endpoint (absolute, on the card's origin).
    pub url: String,
    /// The protocol version.
    pub version: Version,
    /// Whether it streams (`capabilities.streaming`).
    pub streaming: bool,
}

/// `scheme://authority` of an absolute http(s) URL.
fn origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| &url[..url.len() - rest.len() + authority.len()])
}

/// Reads a card fetched from `base`: its JSON-RPC interface (1.0 preferred,
/// else 0.3, else the 0.3 card's own `url`), or why it cannot be used.
pub fn interface(card: &Value, base: &str) -> Result<Interface, String> {
    if !card.is_object() {
        return Err("is not a JSON object".to_owned());
    }
    let jsonrpc = |i: &&Value| {
        i.get("protocolBinding")
            .and_then(Value::as_str)
            .is_none_or(|b| b.eq_ignore_ascii_case("JSONRPC"))
    };
    let version_of = |i: &Value| {
        i.get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let interfaces: Vec<&Value> = card
        .get("supportedInterfaces")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter(jsonrpc).collect())
        .unwrap_or_default();
    let chosen = interfaces
        .iter()
        .find(|i| version_of(i).starts_with("1."))
        .map(|i| (*i, Version::V1))
        .or_else(|| {
            interfaces
                .iter()
                .find(|i| version_of(i).starts_with("0.3"))
                .map(|i| (*i, Version::V03))
        });
    let (url, version) = match chosen {
        Some((i, version)) => (i.get("url").and_then(Value::as_str), version),
        None => {
            let transport = card.get("preferredTransport").and_then(Value::as_str);
            if transport.is_some_and(|t| !t.eq_ignore_ascii_case("JSONRPC")) {
                return Err("offers no JSON-RPC interface".to_owned());
            }
            (card.get("url").and_then(Value::as_str), Version::V03)
        }
    };
    let url = url.ok_or("names no JSON-RPC endpoint")?.trim();
    let url = if url.starts_with('/') {
        format!("{}{url}", origin(base).ok_or("was read from a bad URL")?)
    } else {
        url.to_owned()
    };
    match (origin(&url), origin(base)) {
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
        _ => {
            return Err("puts its JSON-RPC endpoint on another origin than its endpoint".to_owned())
        }
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("names a malformed JSON-RPC endpoint".to_owned());
    }
    let streaming = card
        .pointer("/capabilities/streaming")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Interface {
        url,
        version,
        streaming,
    })
}

/// The JSON-RPC request that sends `text` (continuing `context` when known,
/// and answering the waiting `task` when there is one).
pub fn send_body(
    text: &str,
    message_id: &str,
    context: Option<&str>,
    task: Option<&str>,
    version: Version,
    streaming: bool,
) -> Value {
    let (method, mut message) = match (version, streaming) {
        (Version::V1, true) => (
            "SendStreamingMessage",
            json!({"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": text}]}),
        ),
        (Version::V1, false) => (
            "SendMessage",
            json!({"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": text}]}),
        ),
        (Version::V03, true) => (
            "message/stream",
            json!({"kind": "message", "messageId": message_id, "role": "user",
                   "parts": [{"kind": "text", "text": text}]}),
        ),
        (Version::V03, false) => (
            "message/send",
            json!({"kind": "message", "messageId": message_id, "role": "user",
                   "parts": [{"kind": "text", "text": text}]}),
        ),
    };
    if let Some(context) = context {
        message["contextId"] = json!(context);
    }
    if let Some(task) = task {
        message["taskId"] = json!(task);
    }
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}})
}

/// One update of a task, in either protocol version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update<'v> {
    /// The task (first event of a stream, or a blocking call's result).
    Task(&'v Value),
    /// A status update.
    Status(&'v Value),
    /// An artifact update.
    Artifact(&'v Value),
    /// A message (an agent that answers without a task).
    Message(&'v Value),
}

/// The update a JSON-RPC `result` carries: 0.3 names it by `kind`, 1.0 by
/// its only key.
pub fn update(result: &Value) -> Option<Update<'_>> {
    if let Some(kind) = result.get("kind").and_then(Value::as_str) {
        return match kind {
            "task" => Some(Update::Task(result)),
            "status-update" => Some(Update::Status(result)),
            "artifact-update" => Some(Update::Artifact(result)),
            "message" => Some(Update::Message(result)),
            _ => None,
        };
    }
    let object = result.as_object()?;
    if let Some(v) = object.get("task") {
        Some(Update::Task(v))
    } else if let Some(v) = object.get("statusUpdate") {
        Some(Update::Status(v))
    } else if let Some(v) = object.get("artifactUpdate") {
        Some(Update::Artifact(v))
    } else {
        object.get("message").map(Update::Message)
    }
}

/// A task state, the same in both versions: `TASK_STATE_INPUT_REQUIRED` and
/// `input-required` are both `input-required`.
pub fn state_of(status: &Value) -> Option<String> {
    let state = status.get("state")?.as_str()?;
    let state = state.strip_prefix("TASK_STATE_").unwrap_or(state);
    Some(state.to_ascii_lowercase().replace('_', "-"))
}

/// One part of a message or an artifact.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text.
    Text(String),
    /// A file: inline base64 bytes or a link.
    File {
        /// Its name.
        name: Option<String>,
        /// Its media type.
        media_type: Option<String>,
        /// Inline bytes, base64.
        bytes: Option<String>,
        /// A link.
        uri: Option<String>,
    },
    /// Structured data.
    Data(Value),
}

/// The parts of a message or artifact, in either version (unknown ones skipped).
pub fn parts(of: &Value) -> Vec<Part> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    of.get("parts")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| {
                    if let Some(t) = text(p, "text") {
                        return Some(Part::Text(t));
                    }
                    if let Some(file) = p.get("file").filter(|f| f.is_object()) {
                        return Some(Part::File {
                            name: text(file, "name"),
                            media_type: text(file, "mimeType"),
                            bytes: text(file, "bytes"),
                            uri: text(file, "uri"),
                        });
                    }
                    if p.get("raw").is_some() || p.get("url").is_some() {
                        return Some(Part::File {
                            name: text(p, "filename"),
                            media_type: text(p, "mediaType"),
                            bytes: text(p, "raw"),
                            uri: text(p, "url"),
                        });
                    }
                    p.get("data").map(|d| Part::Data(d.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Standard base64 (padding optional) decoded, or `None`.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Card,
    Sending,
    Done,
}

/// One subtask for an A2A agent (see the module docs).
#[derive(Debug)]
pub struct A2aSession<'a> {
    agent: &'a AgentSpec,
    text: String,
    message_id: String,
    known: Option<Conversation>,
    phase: Phase,
    /// The endpoint that served the card (the call goes to its origin).
    base: Option<Target>,
    interface: Option<Interface>,
    /// Text artifacts, by id, in order of arrival.
    artifacts: Vec<(String, AnswerText)>,
    /// The latest status message's text (the question of an input-required task).
    status_text: String,
    state: Option<String>,
    context_remembered: bool,
    failed: Option<CoordError>,
    /// The task: the one waiting for the user's answer, then the one the agent works on.
    task: Option<String>,
    /// The context the agent works in.
    context_id: Option<String>,
}

impl<'a> A2aSession<'a> {
    /// A subtask of `agent`: `text` goes to it as one message with the id
    /// `message_id`, continuing the context `known` when there is one.
    pub fn new(
        agent: &'a AgentSpec,
        text: String,
        message_id: String,
        known: Option<Conversation>,
    ) -> A2aSession<'a> {
        A2aSession {
            agent,
            text,
            message_id,
            known,
            phase: Phase::Start,
            base: None,
            interface: None,
            artifacts: Vec::new(),
            status_text: String::new(),
            state: None,
            context_remembered: false,
            failed: None,
            task: None,
            context_id: None,
        }
    }

    fn card_call(&self) -> CallSpec {
        let mut request = RequestTemplate::endpoint(Method::Get, CARD_PATH, Vec::new());
        for (name, value) in &self.agent.headers {
            request = request.header(name, &value.0);
        }
        CallSpec {
            service: self.agent.service(),
            targets: self.ordered(),
            request,
            replay: Replay::Safe,
            defer_blame: false,
        }
    }

    /// The agent's endpoints, the one holding the known context first.
    fn ordered(&self) -> Vec<Target> {
        let mut targets = self.agent.targets.clone();
        let tag = self.known.as_ref().and_then(|(_, tag)| tag.as_deref());
        if let Some(i) = tag.and_then(|t| targets.iter().position(|e| endpoint_tag(&e.id) == t)) {
            let home = targets.remove(i);
            targets.insert(0, home);
        }
        targets
    }

    fn send_call(&self, base: &Target, interface: &Interface) -> CallSpec {
        // A context is continued only on the endpoint that holds it.
        let context = self.known.as_ref().and_then(|(id, tag)| {
            let here = tag.as_deref().is_none_or(|t| t == endpoint_tag(&base.id));
            here.then_some(id.as_str())
        });
        let task = context.and(self.task.as_deref());
        let body = send_body(
            &self.text,
            &self.message_id,
            context,
            task,
            interface.version,
            interface.streaming,
        );
        let mut request = RequestTemplate::endpoint(
            Method::Post,
            "",
            serde_json::to_vec(&body).unwrap_or_default(),
        );
        request = request.header(
            "accept",
            if interface.streaming {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
        if interface.version == Version::V1 {
            request = request.header("a2a-version", "1.0");
        }
        for (name, value) in &self.agent.headers {
            request = request.header(name, &value.0);
        }
        let mut targets = vec![Target {
            id: interface.url.clone(),
            label: base.label.clone(),
            identity: base.identity.clone(),
        }];
        // Backups are the same agent elsewhere: the JSON-RPC endpoint at the
        // same path under each other endpoint. A context lives on one endpoint
        // only, so its messages go nowhere else.
        if context.is_none() {
            if let Some(path) = interface.url.strip_prefix(base.id.as_str()) {
                targets.extend(
                    self.agent
                        .targets
                        .iter()
                        .filter(|t| t.id != base.id)
                        .map(|t| Target {
                            id: format!("{}{path}", t.id),
                            label: t.label.clone(),
                            identity: t.identity.clone(),
                        }),
                );
            }
        }
        CallSpec {
            service: self.agent.service(),
            targets,
            request,
            // The agent may act on the message: sent to a backup only when it
            // provably did not start.
            replay: Replay::NotStarted,
            defer_blame: false,
        }
    }

    /// Keeps the context the agent works in (once, when it is a valid id).
    fn context(&mut self, of: &Value, say: &mut dyn Say) {
        // A task names itself `id`; its updates name it `taskId`.
        let task = of
            .get("taskId")
            .or_else(|| of.get("id").filter(|_| of.get("status").is_some()));
        if let Some(task) = task.and_then(Value::as_str) {
            self.task = Some(task.to_owned());
        }
        if let Some(context) = of.get("contextId").and_then(Value::as_str) {
            self.context_id = Some(context.to_owned());
        }
        if self.context_remembered {
            return;
        }
        let (Some(id), Some(base)) = (of.get("contextId").and_then(Value::as_str), &self.base)
        else {
            return;
        };
        if is_valid_conversation_id(id) {
            self.context_remembered = true;
            say.remember(Memory::Conversation {
                id: id.to_owned(),
                endpoint: endpoint_tag(&base.id),
            });
        }
    }

    /// Shows a status (its message in the stage) and keeps its state.
    fn status(&mut self, status: &Value, say: &mut dyn Say) {
        if let Some(state) = state_of(status) {
            self.state = Some(state);
        }
        if let Some(message) = status.get("message").filter(|m| m.is_object()) {
            self.status_text.clear();
            for part in parts(message) {
                if let Part::Text(text) = &part {
                    self.status_text.push_str(text);
                }
                self.show(part, say);
            }
            say.text("\n\n");
        }
    }

    /// Shows one part in the stage (files as attachments of the response).
    fn show(&mut self, part: Part, say: &mut dyn Say) {
        match part {
            Part::Text(text) => say.text(&text),
            Part::Data(data) => {
                let pretty = serde_json::to_string_pretty(&data).unwrap_or_default();
                say.text(&format!("\n```json\n{pretty}\n```\n"));
            }
            Part::File {
                name,
                media_type,
                bytes,
                uri,
            } => {
                let title = name.clone().unwrap_or_else(|| "file".to_owned());
                let data = match bytes.as_deref().map(base64) {
                    None => None,
                    Some(Some(raw)) => match String::from_utf8(raw) {
                        Ok(text) => Some(text),
                        Err(e) => {
                            say.text(&format!(
                                "_File \"{title}\" ({} bytes) was left out: it is not text, and only text can be attached inline._\n\n",
                                e.as_bytes().len()
                            ));
                            return;
                        }
                    },
                    Some(None) => {
                        say.text(&format!(
                            "_File \"{title}\" was left out: its bytes are not base64._\n\n"
                        ));
                        return;
                    }
                };
                // Only web links: an agent's `javascript:` or `file:` link never
                // reaches the user's client.
                let uri = uri.filter(|u| data.is_none() && origin(u.trim()).is_some());
                if data.is_none() && uri.is_none() {
                    say.text(&format!(
                        "_File \"{title}\" was left out: it has neither text nor an http(s) link._\n\n"
                    ));
                    return;
                }
                let attachment = Attachment {
                    kind: media_type,
                    title: name,
                    url: uri,
                    data,
                    ..Attachment::default()
                };
                if attachment.data.is_some() || attachment.url.is_some() {
                    say.attachment(attachment);
                }
            }
        }
    }

    /// An artifact update: text joins the answer (and the stage), the rest is shown.
    fn artifact(&mut self, update: &Value, say: &mut dyn Say) {
        let Some(artifact) = update
            .get("artifact")
            .or(Some(update))
            .filter(|a| a.is_object())
        else {
            return;
        };
        let id = artifact
            .get("artifactId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // An update with `append` continues the artifact of its id; the text
        // parts of one update (a stored task joins its chunks so) are one text.
        let mut append = update.get("append").and_then(Value::as_bool) == Some(true);
        for part in parts(artifact) {
            match part {
                Part::Text(text) => {
                    let known = self.artifacts.iter().position(|(a, _)| *a == id);
                    let index = match known {
                        Some(i) if append => i,
                        _ => {
                            self.artifacts
                                .push((id.clone(), AnswerText::new(MAX_CONTEXT_BYTES_PER_RESULT)));
                            self.artifacts.len() - 1
                        }
                    };
                    append = true;
                    self.artifacts[index].1.push(&text);
                    say.text(&text);
                }
                other => self.show(other, say),
            }
        }
    }

    fn apply(&mut self, update: Update<'_>, say: &mut dyn Say) {
        match update {
            Update::Task(task) => {
                self.context(task, say);
                if let Some(status) = task.get("status") {
                    self.status(status, say);
                }
                // A blocking call's task carries its artifacts.
                if let Some(list) = task.get("artifacts").and_then(Value::as_array) {
                    for artifact in list {
                        self.artifact(artifact, say);
                    }
                }
            }
            Update::Status(update) => {
                self.context(update, say);
                if let Some(status) = update.get("status") {
                    self.status(status, say);
                }
            }
            Update::Artifact(update) => {
                self.context(update, say);
                self.artifact(update, say);
            }
            Update::Message(message) => {
                self.context(message, say);
                let mut answer = AnswerText::new(MAX_CONTEXT_BYTES_PER_RESULT);
                for part in parts(message) {
                    match part {
                        Part::Text(text) => {
                            answer.push(&text);
                            say.text(&text);
                        }
                        other => self.show(other, say),
                    }
                }
                self.artifacts.push((String::new(), answer));
                self.state = Some("completed".to_owned());
            }
        }
    }

    /// One JSON-RPC response: its error, or its update applied.
    fn response(&mut self, response: &Value, say: &mut dyn Say) -> Result<(), CoordError> {
        if let Some(error) = response.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("an error without a message");
            return Err(say.error(UpstreamFault::ErrorEvent(say.redact(message))));
        }
        let Some(update) = response.get("result").and_then(update) else {
            return Err(say.error(UpstreamFault::malformed(
                "an answer is neither a task, a status or artifact update, nor a message",
            )));
        };
        self.apply(update, say);
        Ok(())
    }

    /// How the subtask ended, once the call is over.
    fn outcome(&mut self, say: &mut dyn Say) -> Result<String, CoordError> {
        let texts: Vec<String> = std::mem::take(&mut self.artifacts)
            .into_iter()
            .map(|(_, t)| t.finish())
            .filter(|t| !t.trim().is_empty())
            .collect();
        match self.state.as_deref() {
            Some("completed") => {
                let text = texts.join("\n\n");
                Ok(if text.is_empty() {
                    self.status_text.clone()
                } else {
                    text
                })
            }
            Some(state @ ("failed" | "rejected" | "canceled")) => {
                let what = match state {
                    "failed" => "its task failed",
                    "rejected" => "it rejected the task",
                    _ => "its task was canceled",
                };
                let why = match self.status_text.trim() {
                    "" => what.to_owned(),
                    message => format!("{what}: {message}"),
                };
                Err(say.error(UpstreamFault::ErrorEvent(say.redact(&why))))
            }
            Some(state @ ("input-required" | "auth-required")) => {
                let question = match self.status_text.trim() {
                    "" if state == "auth-required" => "The agent needs you to sign in first.",
                    "" => "The agent needs more information to go on.",
                    text => text,
                }
                .to_owned();
                let ids = (self.task.clone(), self.context_id.clone(), &self.base);
                if let (Some(task), Some(context), Some(base)) = ids {
                    if is_valid_conversation_id(&context) && is_valid_conversation_id(&task) {
                        say.remember(Memory::Asked(AgentQuestion {
                            agent: self.agent.name.clone(),
                            task,
                            context,
                            endpoint: endpoint_tag(&base.id),
                            question: question.clone(),
                        }));
                    }
                }
                Ok(question)
            }
            _ => Err(say.error(UpstreamFault::Truncated(
                "the agent's answer ended before its task finished".to_owned(),
            ))),
        }
    }
}

impl Session for A2aSession<'_> {
    fn step(&mut self, say: &mut dyn Say) -> Step {
        if let Some(e) = self.failed.take() {
            self.phase = Phase::Done;
            return Step::Finish(Err(e));
        }
        match self.phase {
            Phase::Start if self.interface.is_none() => {
                self.phase = Phase::Card;
                Step::Call(self.card_call(), Read::Whole)
            }
            Phase::Start | Phase::Card => match (&self.base, &self.interface) {
                (Some(base), Some(interface)) => {
                    let spec = self.send_call(base, interface);
                    let read = if interface.streaming {
                        Read::EventsToEnd
                    } else {
                        Read::Whole
                    };
                    self.phase = Phase::Sending;
                    Step::Call(spec, read)
                }
                _ => Step::Finish(Err(CoordError::Internal(
                    "the agent card was not read".to_owned(),
                ))),
            },
            Phase::Sending | Phase::Done => {
                self.phase = Phase::Done;
                Step::Finish(self.outcome(say))
            }
        }
    }

    fn on_open(&mut self, target: &Target, _say: &mut dyn Say) {
        match self.phase {
            Phase::Card => self.base = Some(target.clone()),
            // The endpoint that took the message holds its context.
            Phase::Sending => {
                if let Some(endpoint) = self
                    .agent
                    .targets
                    .iter()
                    .find(|t| t.identity == target.identity)
                {
                    self.base = Some(endpoint.clone());
                }
            }
            Phase::Start | Phase::Done => {}
        }
    }

    fn on_failed(&mut self, failed: CallFailed, _say: &mut dyn Say) {
        self.failed = Some(failed.error);
    }

    fn on_event(&mut self, data: &str, say: &mut dyn Say) -> Result<(), CoordError> {
        let response: Value = parse_event(data, say)?;
        self.response(&response, say)
    }

    fn on_body(&mut self, body: &[u8], say: &mut dyn Say) -> Result<(), CoordError> {
        let text = String::from_utf8_lossy(body);
        let value: Value = parse_event(&text, say)?;
        if self.phase == Phase::Card {
            if body.len() > MAX_CARD_BYTES {
                return Err(say.error(UpstreamFault::Oversized(format!(
                    "its agent card is larger than {MAX_CARD_BYTES} bytes"
                ))));
            }
            let base = self.base.as_ref().map_or("", |b| b.id.as_str());
            let interface = interface(&value, base).map_err(|why| {
                say.error(UpstreamFault::malformed(format!("its agent card {why}")))
            })?;
            self.interface = Some(interface);
            return Ok(());
        }
        self.response(&value, say)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The card the SDK serves with both versions (its 0.3 fields filled in).
    fn sdk_card() -> Value {
        json!({"name": "Weather Agent", "description": "Answers weather questions for any city.",
            "supportedInterfaces": [
                {"url": "http://127.0.0.1:9/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "http://127.0.0.1:9/", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}],
            "version": "1.0.0", "capabilities": {"streaming": true},
            "skills": [{"id": "w", "name": "Weather", "description": "Tells the weather.", "tags": []}],
            "preferredTransport": "JSONRPC", "protocolVersion": "0.3", "url": "http://127.0.0.1:9/"})
    }

    #[test]
    fn cards_of_both_versions() {
        let base = "http://127.0.0.1:9";
        assert_eq!(
            interface(&sdk_card(), base),
            Ok(Interface {
                url: "http://127.0.0.1:9/".into(),
                version: Version::V1,
                streaming: true
            })
        );
        // Only 0.3 offered (the SDK with its 1.0 interface left out).
        let mut only_03 = sdk_card();
        only_03["supportedInterfaces"] = json!([{"url": "http://127.0.0.1:9/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}]);
        only_03["capabilities"] = json!({});
        assert_eq!(
            interface(&only_03, base),
            Ok(Interface {
                url: "http://127.0.0.1:9/a2a".into(),
                version: Version::V03,
                streaming: false
            })
        );
        // A 0.3 card without interfaces: its own url, a relative one resolved on the base.
        let legacy = json!({"name": "x", "url": "/rpc", "protocolVersion": "0.3.0"});
        assert_eq!(
            interface(&legacy, "http://127.0.0.1:9/agents/x").map(|i| (i.url, i.version)),
            Ok(("http://127.0.0.1:9/rpc".to_owned(), Version::V03))
        );
    }

    #[test]
    fn bad_cards_say_why() {
        let base = "http://127.0.0.1:9";
        let with = |f: &dyn Fn(&mut Value)| {
            let mut card = sdk_card();
            f(&mut card);
            interface(&card, base).unwrap_err()
        };
        assert_eq!(
            interface(&json!([1]), base).unwrap_err(),
            "is not a JSON object"
        );
        assert_eq!(
            with(&|c| {
                c["supportedInterfaces"] = json!([]);
                c.as_object_mut().unwrap().remove("url");
            }),
            "names no JSON-RPC endpoint"
        );
        assert_eq!(
            with(&|c| {
                c["supportedInterfaces"] = json!([{"url": "http://127.0.0.1:9/", "protocolBinding": "GRPC", "protocolVersion": "1.0"}]);
                c["preferredTransport"] = json!("GRPC");
            }),
            "offers no JSON-RPC interface"
        );
        for elsewhere in [
            "http://127.0.0.1:10/",
            "https://127.0.0.1:9/",
            "http://evil.test/",
        ] {
            assert_eq!(
                with(&|c| {
                    c["supportedInterfaces"] = json!([{"url": elsewhere, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]);
                }),
                "puts its JSON-RPC endpoint on another origin than its endpoint",
                "{elsewhere}"
            );
        }
        assert_eq!(
            with(&|c| {
                c["supportedInterfaces"] = json!([{"url": "http://127.0.0.1:9/a b", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]);
            }),
            "names a malformed JSON-RPC endpoint"
        );
    }

    #[test]
    fn a_card_s_description_is_bounded_and_on_one_line() {
        let base = "http://127.0.0.1:9";
        assert_eq!(
            describe(&sdk_card(), base).unwrap(),
            "Answers weather questions for any city. Skills: Weather: Tells the weather."
        );
        let mut big = sdk_card();
        big["description"] = json!("line one\nline two");
        big["skills"] = json!((0..20)
            .map(
                |i| json!({"name": format!("s{i}"), "description": "d".repeat(1000),
                            "examples": ["a", "b", "c", "d"]})
            )
            .collect::<Vec<_>>());
        let text = describe(&big, base).unwrap();
        assert!(!text.contains('\n'));
        assert!(text.starts_with("line one line two. Skills: s0: ddd"));
        assert!(text.chars().count() <= 2_001, "{}", text.chars().count());
        let mut empty = sdk_card();
        empty["description"] = json!("");
        empty["name"] = json!(" ");
        empty["skills"] = json!([]);
        assert!(describe(&empty, base).is_err());
    }

    #[test]
    fn answers_of_both_versions_are_the_same_updates() {
        let v1 =
            json!({"statusUpdate": {"taskId": "t", "status": {"state": "TASK_STATE_WORKING"}}});
        let v03 = json!({"kind": "status-update", "taskId": "t", "status": {"state": "working"}});
        assert!(matches!(update(&v1), Some(Update::Status(_))));
        assert!(matches!(update(&v03), Some(Update::Status(_))));
        assert!(matches!(
            update(&json!({"task": {}})),
            Some(Update::Task(_))
        ));
        assert!(matches!(
            update(&json!({"kind": "artifact-update"})),
            Some(Update::Artifact(_))
        ));
        assert_eq!(update(&json!({"other": 1})), None);
        assert_eq!(update(&json!({"kind": "other"})), None);
        let parts_v1 = json!({"parts": [{"text": "a"}, {"raw": "aGk=", "filename": "f", "mediaType": "text/plain"},
                                        {"url": "https://x/y", "filename": "y"}, {"data": {"k": 1}}]});
        let parts_03 = json!({"parts": [{"kind": "text", "text": "a"},
            {"kind": "file", "file": {"bytes": "aGk=", "name": "f", "mimeType": "text/plain"}},
            {"kind": "file", "file": {"uri": "https://x/y", "name": "y"}}, {"kind": "data", "data": {"k": 1}}]});
        assert_eq!(parts(&parts_v1), parts(&parts_03));
        assert_eq!(parts(&parts_v1).len(), 4);
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64("aGk=").unwrap(), b"hi");
        assert_eq!(base64("").unwrap(), b"");
        assert_eq!(base64("a$b"), None);
    }

    #[test]
    fn origins() {
        assert_eq!(origin("http://a:1/x/y"), Some("http://a:1"));
        assert_eq!(origin("https://a.b"), Some("https://a.b"));
        assert_eq!(origin("ftp://a"), None);
        assert_eq!(origin("http:///x"), None);
    }

    #[test]
    fn states_of_both_versions() {
        for (state, expected) in [
            ("TASK_STATE_INPUT_REQUIRED", "input-required"),
            ("input-required", "input-required"),
            ("TASK_STATE_COMPLETED", "completed"),
            ("canceled", "canceled"),
        ] {
            assert_eq!(
                state_of(&json!({"state": state})).as_deref(),
                Some(expected)
            );
        }
    }
}

//! What the coordinator remembers between turns: the layout of the state on
//! its assistant messages, written once per response and read back from the
//! history.
//!
//! DIAL Chat sends our assistant messages back with their `state` only (no
//! stages, no attachments), and their content is our synthesised answer, which
//! mixes every agent's results. So what an agent needs to see its own earlier
//! turns is kept in the state, per agent, bounded (`limits.rs`):
//!
//! ```json
//! {
//!   "is_gpa": true, "gpa_messages": {"tool_call_history": [...]},
//!   "ums_conversation_id": "8c1f…", "ums_endpoint": "5b1c0e3f2a9d4e71",
//!   "agents": {
//!     "GPA": [{"answer": "GPA's own text", "attachments": [...]}],
//!     "RAG": [{"asked": "…", "answer": "…", "attachments": [...], "state": {...}}],
//!     "CRM": {"conversation_id": "…", "endpoint": "…"}
//!   },
//!   "signature": "…"
//! }
//! ```
//!
//! - GPA and UMS keep the Python reference's keys (`is_gpa` + `gpa_messages`,
//!   `ums_conversation_id`), so conversations it started carry on and states
//!   we write stay readable by it. GPA's state of its first exchange of a turn
//!   lives in `gpa_messages`; further exchanges (several GPA subtasks in one
//!   turn) carry theirs inline.
//! - A DIAL agent's exchange: what it was `asked` (left out when it was exactly
//!   the user's message), its `answer`, its choice `attachments` and its own
//!   `state`. Any other agent lives under `agents.<NAME>`.
//! - A UMS-kind agent's conversation: its id and a tag of the endpoint that
//!   holds it (a hash, so the state never shows internal URLs).
//!
//! Reading is lenient and defensive: an entry that does not have the expected
//! shape is ignored, as if absent.

pub mod gpa;
pub mod pending;
pub mod state;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::config::registry::{AgentSpec, StateSlot};
use crate::limits::{
    truncate_marked, MAX_REMEMBERED_ATTACHMENTS, MAX_REMEMBERED_ATTACHMENT_BYTES,
    MAX_REMEMBERED_TEXT_BYTES,
};
use crate::memory::gpa::{Agents, GpaMessages, GpaState};
use crate::memory::state::{fnv1a, StateTrust, Trusted, Verifier};
use crate::wire::request::{Message, WriteJson};
use crate::wire::response::Attachment;

/// State key marking an assistant turn served by GPA.
pub const IS_GPA: &str = "is_gpa";
/// State key holding GPA's own state.
pub const GPA_MESSAGES: &str = "gpa_messages";
/// State key holding the UMS conversation id.
pub const UMS_CONVERSATION_ID: &str = "ums_conversation_id";
/// State key holding the tag of the UMS endpoint that holds the conversation.
pub const UMS_ENDPOINT: &str = "ums_endpoint";
/// State key of every other agent's memory.
pub const AGENTS: &str = "agents";
/// Longest accepted conversation id.
pub const MAX_ID_LEN: usize = 128;
/// Most exchanges of one agent read from one turn.
const MAX_EXCHANGES_PER_TURN: usize = 16;

/// One exchange with a DIAL agent: what it was asked and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// What it was asked, when that was not exactly the user's message.
    pub asked: Option<String>,
    /// Its answer text.
    pub answer: String,
    /// Its choice attachments.
    pub attachments: Vec<Attachment>,
    /// Its own state.
    pub state: Option<Value>,
}

/// What one agent call leaves for later turns.
#[derive(Debug, Clone, PartialEq)]
pub enum Memory {
    /// A DIAL agent's exchange.
    Exchange(Exchange),
    /// A question the agent asked the user: the turn ends with it, and it is
    /// kept as what is pending (`pending.rs`), not as memory.
    Asked(pending::AgentQuestion),
    /// A UMS-kind agent's conversation, and the tag of the endpoint holding it.
    Conversation {
        /// The conversation id.
        id: String,
        /// [`endpoint_tag`] of the endpoint.
        endpoint: String,
    },
}

/// What a request remembers: the messages of its history whose state it
/// trusts, found once per request (`RequestContext::recall`), so that every
/// signature is verified once however many agents read the history. A signed
/// state is kept as the canonical bytes its signature covers, and those are
/// what agents read.
#[derive(Debug, Clone, Default)]
pub struct Recall {
    trusted: Vec<(usize, Trusted)>,
}

impl Recall {
    /// Reads which of `messages` carry a state `trust` accepts.
    pub fn read(messages: &[Message], trust: &StateTrust<'_>) -> Recall {
        let verifier = Verifier::new(trust);
        Recall {
            trusted: messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| Some((i, verifier.trusted(m)?)))
                .collect(),
        }
    }

    /// The trusted states of `messages` (the history `read` was given),
    /// oldest first, with their message's index.
    pub fn states<'m>(
        &'m self,
        messages: &'m [Message],
    ) -> impl DoubleEndedIterator<Item = (usize, &'m RawValue)> + 'm {
        self.trusted
            .iter()
            .filter_map(|(i, trusted)| match trusted {
                Trusted::AsSent => Some((*i, messages.get(*i)?.state()?)),
                Trusted::Signed(bytes) => Some((*i, &**bytes)),
            })
    }
}

/// A conversation an agent keeps on its side: its id, and the tag of the
/// endpoint holding it ([`endpoint_tag`]) when known.
pub type Conversation = (String, Option<String>);

/// A short, stable tag of an endpoint URL for the state.
pub fn endpoint_tag(endpoint: &str) -> String {
    format!("{:016x}", fnv1a(endpoint.as_bytes()))
}

/// Whether `id` is an acceptable conversation id: 1 to 128 of `A-Z a-z 0-9 - _`.
/// Anything else (slashes, dots, `%`, spaces) is refused, so a tampered state
/// can never reach another path or host.
pub fn is_valid_conversation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Room the signature (`memory::state`) takes in a signed state:
/// `,"signature":"<8 hex key id>.<unix seconds>.<64 hex digits>"` is about 100 bytes.
const SIGNATURE_ROOM: usize = 128;

/// The bytes of `value` as compact JSON, counted without writing them.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The attachments an exchange keeps: each that still fits in
/// `MAX_REMEMBERED_ATTACHMENT_BYTES` (its JSON), in order, at most
/// `MAX_REMEMBERED_ATTACHMENTS`.
fn remembered_attachments(all: &[Attachment]) -> Vec<&Attachment> {
    let mut room = MAX_REMEMBERED_ATTACHMENT_BYTES;
    all.iter()
        .filter(|a| {
            let bytes = json_len(a);
            let fits = bytes <= room;
            if fits {
                room -= bytes;
            }
            fits
        })
        .take(MAX_REMEMBERED_ATTACHMENTS)
        .collect()
}

fn exchange_record(e: &Exchange, with_state: bool, with_attachments: bool) -> Value {
    let mut record = Map::new();
    if let Some(asked) = &e.asked {
        record.insert(
            "asked".into(),
            Value::String(truncate_marked(asked, MAX_REMEMBERED_TEXT_BYTES, "request")),
        );
    }
    record.insert(
        "answer".into(),
        Value::String(truncate_marked(
            &e.answer,
            MAX_REMEMBERED_TEXT_BYTES,
            "answer",
        )),
    );
    let kept = remembered_attachments(&e.attachments);
    if with_attachments && !kept.is_empty() {
        record.insert("attachments".into(), json!(kept));
    }
    if with_state {
        if let Some(state) = &e.state {
            record.insert("state".into(), state.clone());
        }
    }
    Value::Object(record)
}

/// One memory being composed, and what of it is kept.
struct Part<'a> {
    agent: &'a AgentSpec,
    memory: &'a Memory,
    kept: bool,
    state: bool,
    attachments: bool,
}

/// What trimming takes from a part.
#[derive(Clone, Copy)]
enum Trim {
    State,
    Attachments,
    Exchange,
}

/// The state of our assistant message for what the agents of this turn left
/// behind, in the order given; `None` when nothing is to be remembered.
///
/// Each agent keeps at most as many exchanges of one turn as a later turn
/// reads (16). The state, once signed, fits in `max_bytes`
/// (`limits::state_budget`); a state that would not is trimmed, in this
/// order, until it fits: the agents' own states, largest first (GPA's first
/// becomes `gpa_messages: null`); then the exchanges' attachments, largest
/// first; then whole exchanges, the latest first. What the agents were asked
/// and answered stays longest, and a UMS-kind conversation is always kept.
pub fn compose<'a>(
    memories: impl IntoIterator<Item = (&'a AgentSpec, &'a Memory)>,
    max_bytes: usize,
) -> Option<Value> {
    let mut exchanges_of: Vec<(&str, usize)> = Vec::new();
    let mut parts: Vec<Part<'a>> = memories
        .into_iter()
        .map(|(agent, memory)| {
            let mut kept = true;
            if matches!(memory, Memory::Exchange(_)) {
                let i = match exchanges_of.iter().position(|(n, _)| *n == agent.name) {
                    Some(i) => i,
                    None => {
                        exchanges_of.push((&agent.name, 0));
                        exchanges_of.len() - 1
                    }
                };
                exchanges_of[i].1 += 1;
                kept = exchanges_of[i].1 <= MAX_EXCHANGES_PER_TURN;
            }
            Part {
                agent,
                memory,
                kept,
                state: true,
                attachments: true,
            }
        })
        .collect();
    let budget = max_bytes.saturating_sub(SIGNATURE_ROOM);
    let mut state = build(&parts)?;
    let mut size = json_len(&state);
    let mut trims = trims(&parts).into_iter();
    while size > budget {
        // What a state or attachments take is known to the byte; after an
        // exchange is dropped the state is measured again.
        let mut trimmed = false;
        while size > budget {
            let Some((i, trim, saving)) = trims.next() else {
                break;
            };
            trimmed = true;
            let part = &mut parts[i];
            match trim {
                Trim::State => part.state = false,
                Trim::Attachments => part.attachments = false,
                Trim::Exchange => {
                    part.kept = false;
                    break;
                }
            }
            size = size.saturating_sub(saving);
        }
        if !trimmed {
            break;
        }
        state = build(&parts)?;
        size = json_len(&state);
    }
    Some(state)
}

/// Everything trimming may take, in the order it is taken (see [`compose`]),
/// with the bytes it saves (for an exchange, at least).
fn trims(parts: &[Part<'_>]) -> Vec<(usize, Trim, usize)> {
    let exchanges = || {
        parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p.memory {
                Memory::Exchange(e) if p.kept => Some((i, e)),
                _ => None,
            })
    };
    let gpa_first = parts.iter().position(|p| {
        p.kept && p.agent.slot == StateSlot::Gpa && matches!(p.memory, Memory::Exchange(_))
    });
    let largest_first = |mut list: Vec<(usize, Trim, usize)>| {
        list.sort_by_key(|&(i, _, saving)| (std::cmp::Reverse(saving), std::cmp::Reverse(i)));
        list
    };
    // GPA's first state leaves `null` behind; any other leaves with its
    // `,"state":`; attachments with their `,"attachments":`.
    let mut out = largest_first(
        exchanges()
            .filter_map(|(i, e)| {
                let bytes = json_len(e.state.as_ref()?);
                let saving = if Some(i) == gpa_first {
                    bytes.saturating_sub("null".len())
                } else {
                    bytes + r#","state":"#.len()
                };
                Some((i, Trim::State, saving))
            })
            .collect(),
    );
    out.extend(largest_first(
        exchanges()
            .map(|(i, e)| (i, remembered_attachments(&e.attachments)))
            .filter(|(_, kept)| !kept.is_empty())
            .map(|(i, kept)| {
                (
                    i,
                    Trim::Attachments,
                    json_len(&kept) + r#","attachments":"#.len(),
                )
            })
            .collect(),
    ));
    // By then the exchanges have neither states nor attachments.
    let mut latest_first: Vec<(usize, Trim, usize)> = exchanges()
        .map(|(i, e)| {
            (
                i,
                Trim::Exchange,
                json_len(&exchange_record(e, false, false)),
            )
        })
        .collect();
    latest_first.reverse();
    out.extend(latest_first);
    out
}

/// The state of the parts that are kept (see [`compose`]).
fn build(parts: &[Part<'_>]) -> Option<Value> {
    let mut state = Map::new();
    let mut agents = Map::new();
    for part in parts.iter().filter(|p| p.kept) {
        let (agent, memory) = (part.agent, part.memory);
        match (agent.slot, memory) {
            (StateSlot::Gpa, Memory::Exchange(e)) => {
                let first = !state.contains_key(IS_GPA);
                if first {
                    state.insert(IS_GPA.into(), Value::Bool(true));
                    let own = e.state.clone().filter(|_| part.state);
                    state.insert(GPA_MESSAGES.into(), own.unwrap_or(Value::Null));
                }
                let record = exchange_record(e, !first && part.state, part.attachments);
                push_exchange(&mut agents, &agent.name, record);
            }
            (StateSlot::Ums, Memory::Conversation { id, endpoint }) => {
                if !state.contains_key(UMS_CONVERSATION_ID) {
                    state.insert(UMS_CONVERSATION_ID.into(), Value::String(id.clone()));
                    state.insert(UMS_ENDPOINT.into(), Value::String(endpoint.clone()));
                }
            }
            (StateSlot::Agents, Memory::Exchange(e)) => {
                let record = exchange_record(e, part.state, part.attachments);
                push_exchange(&mut agents, &agent.name, record);
            }
            (StateSlot::Agents, Memory::Conversation { id, endpoint }) => {
                agents
                    .entry(agent.name.clone())
                    .or_insert_with(|| json!({"conversation_id": id, "endpoint": endpoint}));
            }
            // A slot always matches its agent's kind (agents/kinds.rs); a
            // question is kept as what is pending.
            (StateSlot::Gpa, Memory::Conversation { .. })
            | (StateSlot::Ums, Memory::Exchange(_))
            | (_, Memory::Asked(_)) => {}
        }
    }
    if !agents.is_empty() {
        state.insert(AGENTS.into(), Value::Object(agents));
    }
    (!state.is_empty()).then_some(Value::Object(state))
}

fn push_exchange(agents: &mut Map<String, Value>, name: &str, record: Value) {
    if let Value::Array(list) = agents
        .entry(name.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        list.push(record);
    }
}

/// One earlier exchange of a DIAL agent, read from a turn's state.
#[derive(Debug, Clone)]
pub struct ExchangeView<'a> {
    /// What it was asked; `None`: the user's message of that turn.
    pub asked: Option<String>,
    /// Its answer; `None` (states of the Python reference): the assistant
    /// message's content.
    pub answer: Option<String>,
    /// Its attachments (a JSON list of valid attachments).
    pub attachments: Vec<Attachment>,
    /// Its own state, read from the bytes that were trusted.
    pub state: Option<AgentState<'a>>,
}

/// An agent's own state as read from a turn: as raw JSON, or GPA's, read
/// and checked in one pass ([`gpa`]).
#[derive(Debug, Clone)]
pub enum AgentState<'a> {
    /// Raw JSON, checked by the agent's kind.
    Raw(&'a RawValue),
    /// GPA's state in `gpa_messages`, with GPA's shape.
    Gpa(GpaState<'a>),
}

impl AgentState<'_> {
    /// About how many bytes the state takes as JSON.
    pub fn json_size(&self) -> usize {
        match self {
            AgentState::Raw(raw) => raw.get().len(),
            AgentState::Gpa(state) => state.json_size(),
        }
    }

    /// The state as owned raw JSON.
    pub fn to_raw(&self) -> Option<Box<RawValue>> {
        match self {
            AgentState::Raw(raw) => Some((*raw).to_owned()),
            AgentState::Gpa(state) => serde_json::value::to_raw_value(state).ok(),
        }
    }
}

impl WriteJson for AgentState<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            AgentState::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
            AgentState::Gpa(state) => state.write_json(out),
        }
    }
}

impl serde::Serialize for AgentState<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AgentState::Raw(raw) => raw.serialize(s),
            AgentState::Gpa(state) => state.serialize(s),
        }
    }
}

/// The parts of our state an agent may read, borrowed from the trusted bytes.
#[derive(Deserialize)]
struct StateView<'a> {
    #[serde(default)]
    ums_conversation_id: Option<Value>,
    #[serde(default)]
    ums_endpoint: Option<Value>,
    #[serde(default, borrow)]
    agents: Option<Agents<'a>>,
}

#[derive(Deserialize)]
struct RecordView<'a> {
    #[serde(default)]
    asked: Option<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    attachments: Option<Vec<Attachment>>,
    #[serde(default, borrow)]
    state: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ConversationView {
    conversation_id: String,
    #[serde(default)]
    endpoint: Option<String>,
}

fn parse_view(state: &RawValue) -> Option<StateView<'_>> {
    serde_json::from_str(state.get()).ok()
}

fn records<'a>(agents: Option<&Agents<'a>>, name: &str) -> Vec<RecordView<'a>> {
    let Some(raw) = agents.and_then(|a| a.get(name)) else {
        return Vec::new();
    };
    let Ok(list) = serde_json::from_str::<Vec<&'a RawValue>>(raw.get()) else {
        return Vec::new();
    };
    list.into_iter()
        .take(MAX_EXCHANGES_PER_TURN)
        .filter_map(|r| serde_json::from_str::<RecordView<'a>>(r.get()).ok())
        .collect()
}

fn exchange_of<'a>(record: RecordView<'a>, state: Option<AgentState<'a>>) -> ExchangeView<'a> {
    ExchangeView {
        asked: record.asked,
        answer: record.answer,
        attachments: record
            .attachments
            .unwrap_or_default()
            .into_iter()
            .take(MAX_REMEMBERED_ATTACHMENTS)
            .filter_map(Attachment::normalized)
            .collect(),
        state,
    }
}

/// The exchanges `agent` (a DIAL agent) had in the turn whose trusted state is
/// `state`. GPA's state in `gpa_messages` is checked as it is read
/// ([`gpa`]); `valid_state` checks every other state an exchange keeps
/// inline before it is used.
pub fn exchanges<'a>(
    state: &'a RawValue,
    agent: &AgentSpec,
    valid_state: impl Fn(&RawValue) -> bool,
) -> Vec<ExchangeView<'a>> {
    let checked = |s: Option<&'a RawValue>| {
        s.filter(|s| s.get() != "null" && valid_state(s))
            .map(AgentState::Raw)
    };
    match agent.slot {
        StateSlot::Gpa => {
            let Some(view) = gpa::read_turn(state.get()) else {
                return Vec::new();
            };
            if !view.is_gpa {
                return Vec::new();
            }
            // gpa_messages must be an object or null (the Python reference's rule).
            let first_state = match view.gpa_messages {
                Some(GpaMessages::Object(s)) => s.is_valid().then_some(AgentState::Gpa(s)),
                None => None,
                Some(GpaMessages::Other) => return Vec::new(),
            };
            let mut records = records(view.agents.as_ref(), &agent.name);
            if records.is_empty() {
                // Written by the Python reference: one exchange, text from the message.
                return vec![ExchangeView {
                    asked: None,
                    answer: None,
                    attachments: Vec::new(),
                    state: first_state,
                }];
            }
            let first = records.remove(0);
            let mut out = vec![exchange_of(first, first_state)];
            out.extend(records.into_iter().map(|r| {
                let s = checked(r.state);
                exchange_of(r, s)
            }));
            out
        }
        StateSlot::Agents => {
            let Some(view) = parse_view(state) else {
                return Vec::new();
            };
            records(view.agents.as_ref(), &agent.name)
                .into_iter()
                .map(|r| {
                    let s = checked(r.state);
                    exchange_of(r, s)
                })
                .collect()
        }
        StateSlot::Ums => Vec::new(),
    }
}

/// The conversation `agent` (a UMS-kind agent) kept in the turn whose trusted
/// state is `state`: its id and the tag of its endpoint (when known).
pub fn conversation(state: &RawValue, agent: &AgentSpec) -> Option<Conversation> {
    let view = parse_view(state)?;
    let (id, endpoint) = match agent.slot {
        StateSlot::Ums => match view.ums_conversation_id {
            Some(Value::String(id)) => (
                id,
                view.ums_endpoint
                    .and_then(|e| e.as_str().map(str::to_owned)),
            ),
            _ => return None,
        },
        StateSlot::Agents => {
            let raw = view.agents.as_ref()?.get(&agent.name)?;
            let c: ConversationView = serde_json::from_str(raw.get()).ok()?;
            (c.conversation_id, c.endpoint)
        }
        StateSlot::Gpa => return None,
    };
    let endpoint = endpoint.filter(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()));
    is_valid_conversation_id(&id).then_some((id, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_keeps_the_messages_whose_state_is_trusted() {
        use crate::memory::state::{sign, Binding};
        use crate::wire::request::CustomContent;
        let trust = StateTrust {
            secret: Some("0123456789abcdef-secret"),
            binding: Binding {
                conversation: "conv-1",
                subject: "",
                application: "",
            },
            now_s: 1_700_000_000,
            ..StateTrust::default()
        };
        let with_state = |role: &str, state: Value| {
            let mut m = Message::text_message(role, "x");
            m.custom_content = Some(CustomContent {
                state: Some(raw(&state)),
                ..CustomContent::default()
            });
            m
        };
        let signed = sign(json!({"ums_conversation_id": "c1"}), &trust);
        let mut forged = signed.clone();
        forged["ums_conversation_id"] = json!("c2");
        let messages = vec![
            Message::text_message("user", "hi"),
            with_state("assistant", signed.clone()),
            with_state("assistant", forged),
            Message::text_message("assistant", "no state"),
            with_state("assistant", json!({"ums_conversation_id": "unsigned"})),
            with_state("user", signed),
        ];
        let recall = Recall::read(&messages, &trust);
        let kept: Vec<usize> = recall.states(&messages).map(|(i, _)| i).collect();
        assert_eq!(kept, [1, 5]);
        let newest: Vec<usize> = recall.states(&messages).rev().map(|(i, _)| i).collect();
        assert_eq!(newest, [5, 1]);
        // What is read of a signed state is its canonical form, without the signature.
        let first = recall.states(&messages).next().map(|(_, s)| s.get());
        assert_eq!(first, Some(r#"{"ums_conversation_id":"c1"}"#));
        // Unsigned states are read only when allowed; a bad signature never.
        let lenient = StateTrust {
            allow_unsigned: true,
            ..trust
        };
        let read = |trust: &StateTrust<'_>| -> Vec<usize> {
            Recall::read(&messages, trust)
                .states(&messages)
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(read(&lenient), [1, 4, 5]);
        // Without a secret: nothing, unless unsigned states are allowed;
        // then every state is taken as it comes.
        let unsigned_off = StateTrust {
            secret: None,
            ..trust
        };
        assert_eq!(read(&unsigned_off), Vec::<usize>::new());
        let open = StateTrust {
            secret: None,
            allow_unsigned: true,
            ..trust
        };
        assert_eq!(read(&open), [1, 2, 4, 5]);
    }

    /// What the memory reads of an agent: its name and slot.
    fn agent(name: &str, slot: StateSlot) -> AgentSpec {
        AgentSpec {
            name: name.to_owned(),
            kind: if slot == StateSlot::Ums {
                "ums"
            } else {
                "dial"
            },
            targets: Vec::new(),
            description: String::new(),
            display_name: String::new(),
            confirm: false,
            headers: Vec::new(),
            slot,
        }
    }

    /// An agent's state as it is sent on.
    fn json_of(state: &Option<AgentState<'_>>) -> Option<String> {
        state.as_ref().map(|s| serde_json::to_string(s).unwrap())
    }

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn any(_: &RawValue) -> bool {
        true
    }

    fn png(url: &str) -> Attachment {
        Attachment {
            kind: Some("image/png".into()),
            url: Some(url.into()),
            ..Attachment::default()
        }
    }

    #[test]
    fn a_gpa_turn_keeps_the_reference_keys_and_its_own_answer() {
        let gpa = agent("GPA", StateSlot::Gpa);
        let m = Memory::Exchange(Exchange {
            asked: None,
            answer: "Here is the image.".into(),
            attachments: vec![png("files/a.png")],
            state: Some(json!({"tool_call_history": []})),
        });
        let state = compose([(&gpa, &m)], usize::MAX).unwrap();
        assert_eq!(
            state,
            json!({
                "is_gpa": true,
                "gpa_messages": {"tool_call_history": []},
                "agents": {"GPA": [{"answer": "Here is the image.", "attachments": [{"type": "image/png", "url": "files/a.png"}]}]}
            })
        );
        let r = raw(&state);
        let views = exchanges(&r, &gpa, any);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].answer.as_deref(), Some("Here is the image."));
        assert_eq!(views[0].attachments, vec![png("files/a.png")]);
        assert_eq!(
            json_of(&views[0].state).as_deref(),
            Some(r#"{"tool_call_history":[]}"#)
        );
    }

    #[test]
    fn reference_states_are_read() {
        let gpa = agent("GPA", StateSlot::Gpa);
        let ums = agent("UMS", StateSlot::Ums);
        // GPA's state is sent on as it came, but for insignificant whitespace.
        let text = r#"{"is_gpa": true, "gpa_messages": { "version" : 2, "tool_call_history": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "web_search", "arguments": "{\"q\": 1}"}}]},
            {"role": "tool", "content": "+5\u00b0C \"rain\"", "tool_call_id": "c1", "name": "web_search"}]}}"#;
        let r = RawValue::from_string(text.to_owned()).unwrap();
        let views = exchanges(&r, &gpa, any);
        assert_eq!(views.len(), 1);
        assert_eq!((&views[0].asked, &views[0].answer), (&None, &None));
        assert!(views[0].attachments.is_empty());
        assert_eq!(
            json_of(&views[0].state).as_deref(),
            Some(concat!(
                r#"{"version":2,"tool_call_history":["#,
                r#"{"role":"assistant","content":null,"tool_calls":[{"id": "c1", "type": "function","#,
                "\n             \"function\": {\"name\": \"web_search\", \"arguments\": \"{\\\"q\\\": 1}\"}}]},",
                r#"{"role":"tool","content":"+5\u00b0C \"rain\"","tool_call_id":"c1","name":"web_search"}]}"#
            ))
        );
        let sent: Value = serde_json::from_str(&json_of(&views[0].state).unwrap()).unwrap();
        let came: Value = serde_json::from_str(text).unwrap();
        assert_eq!(sent, came["gpa_messages"]);
        // A history GPA could not read is not sent, but the exchange is kept.
        let r = raw(&json!({"is_gpa": true, "gpa_messages": {"tool_call_history": [1]}}));
        let views = exchanges(&r, &gpa, any);
        assert_eq!(views.len(), 1);
        assert!(views[0].state.is_none());
        let r = raw(&json!({"is_gpa": true, "gpa_messages": null}));
        assert!(exchanges(&r, &gpa, any)[0].state.is_none());
        for bad in [
            json!({"is_gpa": "yes", "gpa_messages": {}}),
            json!({"is_gpa": true, "gpa_messages": "text"}),
            json!({"ums_conversation_id": "c1"}),
        ] {
            assert!(exchanges(&raw(&bad), &gpa, any).is_empty(), "{bad}");
        }
        let r = raw(&json!({"ums_conversation_id": "conv-1"}));
        assert_eq!(conversation(&r, &ums), Some(("conv-1".into(), None)));
        assert_eq!(conversation(&r, &gpa), None);
        let r = raw(&json!({"ums_conversation_id": "../admin"}));
        assert_eq!(conversation(&r, &ums), None);
    }

    #[test]
    fn invalid_agent_states_are_dropped_but_the_exchange_is_kept() {
        let gpa = agent("GPA", StateSlot::Gpa);
        let r = raw(&json!({"is_gpa": true, "gpa_messages": {"tool_call_history": "forged"}}));
        let views = exchanges(&r, &gpa, |s| !s.get().contains("forged"));
        assert_eq!(views.len(), 1);
        assert!(views[0].state.is_none());
    }

    #[test]
    fn several_agents_share_one_state_each_in_its_own_place() {
        let gpa = agent("GPA", StateSlot::Gpa);
        let ums = agent("UMS", StateSlot::Ums);
        let rag = agent("RAG", StateSlot::Agents);
        let crm = AgentSpec {
            kind: "ums",
            ..agent("CRM", StateSlot::Agents)
        };
        let e = |answer: &str, state: Option<Value>| {
            Memory::Exchange(Exchange {
                asked: Some(format!("task: {answer}")),
                answer: answer.into(),
                attachments: vec![],
                state,
            })
        };
        let g1 = e("g1", Some(json!({"tool_call_history": [1]})));
        let g2 = e("g2", Some(json!({"tool_call_history": [2]})));
        let r1 = e("r1", Some(json!({"rag_turn": 1})));
        let u = Memory::Conversation {
            id: "conv-9".into(),
            endpoint: endpoint_tag("http://ums"),
        };
        let c = Memory::Conversation {
            id: "crm-1".into(),
            endpoint: endpoint_tag("http://crm"),
        };
        let state = compose(
            [
                (&gpa, &g1),
                (&ums, &u),
                (&rag, &r1),
                (&gpa, &g2),
                (&crm, &c),
            ],
            usize::MAX,
        )
        .unwrap();
        assert_eq!(state["gpa_messages"], json!({"tool_call_history": [1]}));
        assert_eq!(state["ums_conversation_id"], "conv-9");
        assert_eq!(state["ums_endpoint"], endpoint_tag("http://ums"));
        assert_eq!(
            state["agents"]["GPA"],
            json!([{"asked": "task: g1", "answer": "g1"}, {"asked": "task: g2", "answer": "g2", "state": {"tool_call_history": [2]}}])
        );
        assert_eq!(
            state["agents"]["RAG"],
            json!([{"asked": "task: r1", "answer": "r1", "state": {"rag_turn": 1}}])
        );
        let r = raw(&state);
        let g = exchanges(&r, &gpa, any);
        assert_eq!(g.len(), 2);
        assert_eq!(
            json_of(&g[1].state).as_deref(),
            Some(r#"{"tool_call_history":[2]}"#)
        );
        assert_eq!(exchanges(&r, &rag, any)[0].answer.as_deref(), Some("r1"));
        assert_eq!(
            conversation(&r, &ums),
            Some(("conv-9".into(), Some(endpoint_tag("http://ums"))))
        );
        assert_eq!(
            conversation(&r, &crm),
            Some(("crm-1".into(), Some(endpoint_tag("http://crm"))))
        );
        assert!(compose(std::iter::empty(), usize::MAX).is_none());
    }

    #[test]
    fn remembered_text_is_bounded() {
        let rag = agent("RAG", StateSlot::Agents);
        let m = Memory::Exchange(Exchange {
            asked: None,
            answer: "x".repeat(MAX_REMEMBERED_TEXT_BYTES + 10),
            attachments: (0..40).map(|i| png(&format!("files/{i}.png"))).collect(),
            state: None,
        });
        let state = compose([(&rag, &m)], usize::MAX).unwrap();
        let answer = state["agents"]["RAG"][0]["answer"].as_str().unwrap();
        assert!(answer.ends_with(" bytes shown]"), "{answer}");
        assert_eq!(
            state["agents"]["RAG"][0]["attachments"]
                .as_array()
                .unwrap()
                .len(),
            MAX_REMEMBERED_ATTACHMENTS
        );
    }

    fn exchange(answer: &str, attachments: Vec<Attachment>, state: Option<Value>) -> Memory {
        Memory::Exchange(Exchange {
            asked: None,
            answer: answer.into(),
            attachments,
            state,
        })
    }

    /// The budget `compose` needs for `state` to fit exactly once signed.
    fn budget_for(state: &Value) -> usize {
        serde_json::to_string(state).unwrap().len() + SIGNATURE_ROOM
    }

    #[test]
    fn a_state_past_its_budget_drops_agent_states_largest_first_and_keeps_the_answers() {
        let gpa = agent("GPA", StateSlot::Gpa);
        let rag = agent("RAG", StateSlot::Agents);
        let pad = |n: usize| Some(json!({"tool_call_history": [], "pad": "x".repeat(n)}));
        let g1 = exchange("g1", vec![], pad(300));
        let r1 = exchange("r1", vec![], pad(400));
        let g2 = exchange("g2", vec![], pad(500));
        let memories = [(&gpa, &g1), (&rag, &r1), (&gpa, &g2)];
        let full = compose(memories, usize::MAX).unwrap();
        assert_eq!(compose(memories, budget_for(&full)).unwrap(), full);
        // One byte over: the largest state (GPA's second) goes, nothing else.
        let state = compose(memories, budget_for(&full) - 1).unwrap();
        assert_eq!(
            state,
            json!({"is_gpa": true, "gpa_messages": pad(300), "agents": {
                "GPA": [{"answer": "g1"}, {"answer": "g2"}],
                "RAG": [{"answer": "r1", "state": pad(400)}],
            }})
        );
        // Every state gone, GPA's first as `null`: the answers fit exactly.
        let bare = json!({"is_gpa": true, "gpa_messages": null, "agents": {
            "GPA": [{"answer": "g1"}, {"answer": "g2"}],
            "RAG": [{"answer": "r1"}],
        }});
        assert_eq!(compose(memories, budget_for(&bare)).unwrap(), bare);
    }

    #[test]
    fn then_attachments_go_largest_first_then_the_latest_exchanges() {
        let rag = agent("RAG", StateSlot::Agents);
        let ums = agent("UMS", StateSlot::Ums);
        let r1 = exchange("r1", vec![png("files/a-much-longer-name.png")], None);
        let r2 = exchange("r2", vec![png("files/b.png")], None);
        let u = Memory::Conversation {
            id: "conv-1".into(),
            endpoint: endpoint_tag("http://ums"),
        };
        let memories = [(&rag, &r1), (&ums, &u), (&rag, &r2)];
        let full = compose(memories, usize::MAX).unwrap();
        let state = compose(memories, budget_for(&full) - 1).unwrap();
        assert_eq!(
            state["agents"]["RAG"],
            json!([{"answer": "r1"}, {"answer": "r2", "attachments": [{"type": "image/png", "url": "files/b.png"}]}])
        );
        let first_only = json!({
            "ums_conversation_id": "conv-1", "ums_endpoint": endpoint_tag("http://ums"),
            "agents": {"RAG": [{"answer": "r1"}]},
        });
        assert_eq!(
            compose(memories, budget_for(&first_only)).unwrap(),
            first_only
        );
        // A conversation is never dropped.
        let only_ums =
            json!({"ums_conversation_id": "conv-1", "ums_endpoint": endpoint_tag("http://ums")});
        assert_eq!(compose(memories, 0).unwrap(), only_ums);
    }

    #[test]
    fn an_exchange_keeps_the_attachments_that_fit_and_an_agent_sixteen_exchanges() {
        let rag = agent("RAG", StateSlot::Agents);
        let inline = Attachment {
            kind: Some("text/plain".into()),
            data: Some("d".repeat(MAX_REMEMBERED_ATTACHMENT_BYTES)),
            ..Attachment::default()
        };
        let m = exchange(
            "r",
            vec![png("files/1.png"), inline, png("files/2.png")],
            None,
        );
        assert_eq!(
            compose([(&rag, &m)], usize::MAX).unwrap()["agents"]["RAG"][0]["attachments"],
            json!([{"type": "image/png", "url": "files/1.png"}, {"type": "image/png", "url": "files/2.png"}])
        );
        let many: Vec<Memory> = (0..20)
            .map(|i| exchange(&format!("r{i}"), vec![], None))
            .collect();
        let state = compose(many.iter().map(|m| (&rag, m)), usize::MAX).unwrap();
        let kept = state["agents"]["RAG"].as_array().unwrap();
        assert_eq!(kept.len(), MAX_EXCHANGES_PER_TURN);
        assert_eq!(kept[15], json!({"answer": "r15"}));
    }
}

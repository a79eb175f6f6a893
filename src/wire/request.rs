//! The request DIAL Core sends to an application (docs/protocol.md §1.3).
//!
//! Parsed leniently: unknown fields are tolerated and kept, `content` is a
//! string or a list of parts. Everything the coordinator only passes on
//! (content, attachments, state, unknown fields) is kept as raw JSON text
//! ([`RawValue`]): it is checked to be valid JSON of the right kind once, never
//! turned into a tree, and written out again by copying. That keeps a long
//! history with large agent states cheap. Wrong types for the fields we use are
//! errors with the JSON path that failed.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The chat-completion request body, with the fields the coordinator uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation, oldest first; the last message is the user's request.
    pub messages: Vec<Message>,
    /// Whether the client wants SSE (`true`) or one merged JSON answer.
    #[serde(default)]
    pub stream: Option<bool>,
    /// How many choices the client asks for (only 1 is served).
    #[serde(default)]
    pub n: Option<u64>,
    /// DIAL's `custom_fields`: the conversation's settings.
    #[serde(default)]
    pub custom_fields: Option<RequestCustomFields>,
}

/// `custom_fields` of a request: what the coordinator reads of it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestCustomFields {
    /// The conversation's settings, as the user set them against the schema
    /// of the configuration endpoint.
    #[serde(default)]
    pub configuration: Option<Value>,
}

/// Other fields of an object, in order, as raw JSON (nulls dropped).
pub type RawFields = Vec<(String, Box<RawValue>)>;

/// One message of the conversation.
#[derive(Debug, Clone)]
pub struct Message {
    /// `user`, `assistant`, `system`, ...
    pub role: String,
    /// Text (a JSON string) or content parts (a JSON array), as raw JSON.
    pub content: Option<Box<RawValue>>,
    /// DIAL extensions: attachments, stages, state.
    pub custom_content: Option<CustomContent>,
    /// Every other field, passed on unchanged.
    pub extra: RawFields,
}

/// `custom_content` of a message.
#[derive(Debug, Clone, Default)]
pub struct CustomContent {
    /// Attachments (a JSON array), kept as sent: the agent that needs them reads them.
    pub attachments: Option<Box<RawValue>>,
    /// The application state stored on an assistant message.
    pub state: Option<Box<RawValue>>,
    /// Stages, form values and anything else.
    pub extra: RawFields,
}

/// Message content, parsed when its text is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type":"text","text":...}`, images, ...).
    Parts(Vec<Value>),
}

fn raw(v: &impl Serialize) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(v).ok()
}

impl Message {
    /// A message with a role and plain text.
    pub fn text_message(role: &str, text: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: raw(&text.into()),
            custom_content: None,
            extra: Vec::new(),
        }
    }

    /// The content, parsed.
    pub fn parsed_content(&self) -> Option<Content> {
        serde_json::from_str(self.content.as_ref()?.get()).ok()
    }

    /// The message's text: the string content, or the text parts joined with newlines.
    pub fn text(&self) -> String {
        match self.parsed_content() {
            None => String::new(),
            Some(Content::Text(t)) => t,
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

    /// The state stored on this message, as raw JSON.
    pub fn state(&self) -> Option<&RawValue> {
        self.custom_content.as_ref()?.state.as_deref()
    }

    /// The state stored on this message, parsed (tests and tools; the
    /// request path reads only the fields it needs).
    pub fn state_value(&self) -> Option<Value> {
        serde_json::from_str(self.state()?.get()).ok()
    }

    /// Appends text to the content: to the string, or as one more text part.
    pub fn append_text(&mut self, text: &str) {
        let content = match self.parsed_content() {
            None => Content::Text(text.to_owned()),
            Some(Content::Text(mut t)) => {
                t.push_str(text);
                Content::Text(t)
            }
            Some(Content::Parts(mut parts)) => {
                parts.push(serde_json::json!({"type": "text", "text": text}));
                Content::Parts(parts)
            }
        };
        self.content = raw(&content);
    }

    /// This message as sent to an LLM: everything but `custom_content`,
    /// serialized without copying.
    pub fn without_custom_content(&self) -> WithoutCustomContent<'_> {
        WithoutCustomContent(self)
    }
}

/// A message serialized without its `custom_content` (see
/// [`Message::without_custom_content`]).
#[derive(Debug, Clone, Copy)]
pub struct WithoutCustomContent<'a>(&'a Message);

fn write_message<S: Serializer>(m: &Message, with_custom: bool, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    map.serialize_entry("role", &m.role)?;
    if let Some(c) = &m.content {
        map.serialize_entry("content", c)?;
    }
    if with_custom {
        if let Some(cc) = &m.custom_content {
            map.serialize_entry("custom_content", cc)?;
        }
    }
    for (k, v) in &m.extra {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_message(self, true, s)
    }
}

/// A message serialized with other text as its content and no `custom_content`
/// (the text is written straight into the output, not copied first).
struct WithText<'a>(&'a Message, &'a str);

impl Serialize for WithText<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("role", &self.0.role)?;
        map.serialize_entry("content", self.1)?;
        for (k, v) in &self.0.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Serialize for WithoutCustomContent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_message(self.0, false, s)
    }
}

impl Serialize for CustomContent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(a) = &self.attachments {
            map.serialize_entry("attachments", a)?;
        }
        if let Some(st) = &self.state {
            map.serialize_entry("state", st)?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `None` for a JSON null.
fn non_null(v: Box<RawValue>) -> Option<Box<RawValue>> {
    (v.get() != "null").then_some(v)
}

/// A raw value checked to be of one JSON kind (or null) as part of reading it,
/// so that a wrong type is reported at its own path.
struct Kinded<const KIND: u8>(Option<Box<RawValue>>);

const STRING_OR_LIST: u8 = 0;
const LIST: u8 = 1;

impl<'de, const KIND: u8> Deserialize<'de> for Kinded<KIND> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = non_null(Box::<RawValue>::deserialize(d)?);
        let checked = if KIND == STRING_OR_LIST {
            expect_kind(v, b"\"[", "a string or a list of content parts")?
        } else {
            expect_kind(v, b"[", "a list")?
        };
        Ok(Kinded(checked))
    }
}

/// Checks the kind of a raw value by its first character.
fn expect_kind<E: de::Error>(
    v: Option<Box<RawValue>>,
    allowed: &[u8],
    what: &str,
) -> Result<Option<Box<RawValue>>, E> {
    match &v {
        Some(r) if !allowed.contains(&r.get().as_bytes()[0]) => Err(E::invalid_type(
            de::Unexpected::Other(kind_name(r.get())),
            &what,
        )),
        _ => Ok(v),
    }
}

fn kind_name(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'[') => "list",
        Some(b'{') => "object",
        Some(b't' | b'f') => "boolean",
        _ => "number",
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut role = None;
                let mut content = None;
                let mut custom_content = None;
                let mut extra = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "role" => role = Some(map.next_value::<String>()?),
                        "content" => content = map.next_value::<Kinded<STRING_OR_LIST>>()?.0,
                        "custom_content" => {
                            custom_content = map.next_value::<Option<CustomContent>>()?
                        }
                        _ => {
                            if let Some(v) = non_null(map.next_value()?) {
                                extra.push((key, v));
                            }
                        }
                    }
                }
                Ok(Message {
                    role: role.ok_or_else(|| de::Error::missing_field("role"))?,
                    content,
                    custom_content,
                    extra,
                })
            }
        }
        d.deserialize_map(MessageVisitor)
    }
}

impl<'de> Deserialize<'de> for CustomContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CustomContent, D::Error> {
        struct CustomVisitor;
        impl<'de> Visitor<'de> for CustomVisitor {
            type Value = CustomContent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a custom_content object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CustomContent, A::Error> {
                let mut out = CustomContent::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "attachments" => out.attachments = map.next_value::<Kinded<LIST>>()?.0,
                        "state" => out.state = non_null(map.next_value()?),
                        _ => {
                            if let Some(v) = non_null(map.next_value()?) {
                                out.extra.push((key, v));
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(CustomVisitor)
    }
}

/// Why a request body is not a valid chat-completion request: a sentence that
/// names the JSON path that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(pub String);

/// The roles a message may have (DIAL's and OpenAI's chat roles).
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "function"];

/// Parses and validates a request body.
///
/// Errors are sentences for people: they name the JSON path that failed and
/// what it must be, e.g. `messages[1].content must be a string or a list of
/// content parts, not a number`.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, RequestError> {
    check_top_level(body)?;
    // The common case, a valid body, parses without tracking the path (about a
    // tenth faster for a long history); only a failure is parsed again with
    // the path, to say where it failed.
    let fast = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    let request: ChatRequest = match fast {
        Ok(request) => request,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let request: ChatRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                RequestError(describe(&path, e.inner()))
            })?;
            de.end()
                .map_err(|e| RequestError(format!("the body is not valid JSON: {e}")))?;
            request
        }
    };
    if request.messages.is_empty() {
        return Err(RequestError(
            "messages must not be empty: it needs at least the user's message".to_owned(),
        ));
    }
    for (i, m) in request.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(RequestError(format!(
                "messages[{i}].role must be one of {}, not {}",
                quoted_roles(),
                quote_cut(&m.role)
            )));
        }
    }
    match request.messages.last().map(|m| m.role.as_str()) {
        Some("user") => Ok(request),
        other => Err(RequestError(format!(
            "the last message must be the user's (role \"user\"), not {}",
            quote_cut(other.unwrap_or_default())
        ))),
    }
}

const BODY_SHAPE: &str = "a JSON object with a \"messages\" list, \
    e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}";

/// The body must be an object: anything else would reach serde's derive as a
/// sequence or a scalar and be described in its words.
fn check_top_level(body: &[u8]) -> Result<(), RequestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(RequestError(format!(
            "the body is empty: it must be {BODY_SHAPE}"
        ))),
        Some(b'{') => Ok(()),
        Some(&b) => match serde_json::from_slice::<de::IgnoredAny>(body) {
            Ok(_) => Err(RequestError(format!(
                "the body must be {BODY_SHAPE}, not {}",
                kind_words(kind_name(&(b as char).to_string()))
            ))),
            Err(e) => Err(RequestError(format!("the body is not valid JSON: {e}"))),
        },
    }
}

/// What the value at `path` must be, in words (`[N]` indices generalised).
fn expected_at(path: &str) -> &'static str {
    let mut generic = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                generic.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => generic.push(c),
        }
    }
    match generic.as_str() {
        "." => BODY_SHAPE,
        "messages" => "a list of messages",
        "messages[]" => "a message object such as {\"role\": \"user\", \"content\": \"Hello\"}",
        "messages[].role" => {
            "a string: \"system\", \"user\", \"assistant\", \"tool\" or \"function\""
        }
        "messages[].content" => "a string or a list of content parts",
        "messages[].custom_content" => "an object (DIAL's attachments, state and stages)",
        "messages[].custom_content.attachments" => "a list of attachments",
        "stream" => "true or false",
        "n" => "a whole number, at least 1",
        _ => "",
    }
}

/// A serde error turned into a sentence about `path`.
fn describe(path: &str, e: &serde_json::Error) -> String {
    if e.is_syntax() || e.is_eof() {
        return format!("the body is not valid JSON: {e}");
    }
    let text = without_location(e);
    let at = if path == "." { "the body" } else { path };
    let expected = expected_at(path);
    if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|f| f.strip_suffix('`'))
    {
        return match (path, expected_at(&format!("{path}.{field}"))) {
            (".", _) => format!("the body has no \"{field}\" field: it must be {BODY_SHAPE}"),
            (_, "") => format!("{at} has no \"{field}\" field"),
            (_, what) => format!("{at} has no \"{field}\" field (it must be {what})"),
        };
    }
    if let Some(rest) = text.strip_prefix("invalid type: ") {
        let got = rest.split(", expected").next().unwrap_or(rest);
        let got = got.split(' ').next().unwrap_or(got);
        if !expected.is_empty() {
            return format!("{at} must be {expected}, not {}", kind_words(got));
        }
        return format!("{at} has the wrong type ({})", kind_words(got));
    }
    if expected.is_empty() {
        format!("{at} is not valid")
    } else {
        format!("{at} must be {expected}")
    }
}

/// serde's name of a JSON kind (or ours from [`kind_name`]) in plain words.
fn kind_words(kind: &str) -> &'static str {
    match kind {
        "string" => "a string",
        "integer" | "floating" | "number" => "a number",
        "map" | "object" => "an object",
        "sequence" | "list" => "a list",
        "boolean" => "true or false",
        "null" | "unit" => "null",
        _ => "a value of another kind",
    }
}

/// A serde error without its " at line L column C" suffix (the path says where).
fn without_location(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn quoted_roles() -> String {
    let quoted: Vec<String> = ROLES.iter().map(|r| format!("\"{r}\"")).collect();
    quoted.join(", ")
}

/// `"text"`, cut to 32 characters: user text echoed in an error stays short.
fn quote_cut(text: &str) -> String {
    let cut: String = text.chars().take(32).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_debug())
}

/// The body of a chat-completions call the coordinator makes (same shape as
/// the requests it receives), serialized straight from borrowed parts. The
/// deployment's `model` is added per target by the caller.
#[derive(Debug)]
pub struct ChatBody<M> {
    /// The messages.
    pub messages: M,
    /// Streaming or not.
    pub stream: bool,
    /// Structured output, for the routing call.
    pub response_format: Option<Value>,
}

impl<M: WriteJson + JsonSize> ChatBody<M> {
    /// The body as JSON bytes, written into a buffer sized for them up
    /// front: a long history's body is about a MiB, and growing a buffer to
    /// that by doubling copies it again and again into fresh memory.
    pub fn to_vec(&self) -> Vec<u8> {
        let format = if self.response_format.is_some() {
            FORMAT_SIZE
        } else {
            0
        };
        let mut out = Vec::with_capacity(self.messages.json_size() + format + BODY_SLACK);
        out.extend_from_slice(b"{\"messages\":");
        self.messages.write_json(&mut out);
        out.extend_from_slice(if self.stream {
            b",\"stream\":true"
        } else {
            b",\"stream\":false"
        });
        if let Some(format) = &self.response_format {
            out.extend_from_slice(b",\"response_format\":");
            if serde_json::to_writer(&mut out, format).is_err() {
                return Vec::new();
            }
        }
        out.push(b'}');
        out
    }
}

/// Writes itself as JSON straight into a body: what the request holds as raw
/// JSON is copied as it is, text is escaped. serde could not do the first for
/// a part of a text that was read already (its `RawValue` can only be made by
/// parsing that part again), and a long history's body is mostly such parts.
pub trait WriteJson {
    /// Appends the JSON text to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// Appends `text` as a JSON string.
pub fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Keys and roles are short and plain: copied between quotes when nothing
    // in them needs an escape.
    if text.len() <= 64 && text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a string into a Vec fails only for a serializer error, which a
    // string never gives.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// An object being written: its fields, comma-separated.
#[derive(Debug)]
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    /// Opens an object.
    pub fn open(out: &'o mut Vec<u8>) -> ObjectWriter<'o> {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    /// Starts a field and returns where its value goes.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
        write_json_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// A field whose value is raw JSON.
    pub fn raw(&mut self, key: &str, json: &str) {
        self.key(key).extend_from_slice(json.as_bytes());
    }

    /// Closes the object.
    pub fn close(self) {
        self.out.push(b'}');
    }
}

impl WriteJson for Message {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.write_parts(out, true, None);
    }
}

impl Message {
    /// The message as [`Serialize`] writes it, with or without its custom
    /// content, and with `text` as its content when given.
    fn write_parts(&self, out: &mut Vec<u8>, with_custom: bool, text: Option<&str>) {
        let mut o = ObjectWriter::open(out);
        write_json_str(o.key("role"), &self.role);
        match (text, &self.content) {
            (Some(text), _) => write_json_str(o.key("content"), text),
            (None, Some(c)) => o.raw("content", c.get()),
            (None, None) => {}
        }
        if with_custom {
            if let Some(cc) = &self.custom_content {
                cc.write_json(o.key("custom_content"));
            }
        }
        for (k, v) in &self.extra {
            o.raw(k, v.get());
        }
        o.close();
    }
}

impl WriteJson for WithoutCustomContent<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.0.write_parts(out, false, None);
    }
}

impl WriteJson for CustomContent {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = ObjectWriter::open(out);
        if let Some(a) = &self.attachments {
            o.raw("attachments", a.get());
        }
        if let Some(st) = &self.state {
            o.raw("state", st.get());
        }
        for (k, v) in &self.extra {
            o.raw(k, v.get());
        }
        o.close();
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

/// Room left in a body's buffer for its framing and the `model` each
/// target adds.
const BODY_SLACK: usize = 256;

/// Room for a structured-output schema (a few KiB with a dozen agents).
const FORMAT_SIZE: usize = 8 * 1024;

/// About how many bytes a value takes as JSON: what its raw parts hold plus a
/// little framing. A capacity, not a promise: escaping may take more, and the
/// buffer then grows as any other.
pub trait JsonSize {
    /// The estimate, in bytes.
    fn json_size(&self) -> usize;
}

/// Keys, quotes and punctuation of one message besides its values.
const MESSAGE_FRAMING: usize = 48;

fn raw_size(v: &Option<Box<RawValue>>) -> usize {
    v.as_ref().map_or(0, |v| v.get().len())
}

fn fields_size(fields: &RawFields) -> usize {
    fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum()
}

impl Message {
    /// [`JsonSize`] of the message without its custom content.
    fn size_without_custom(&self) -> usize {
        self.role.len() + raw_size(&self.content) + fields_size(&self.extra) + MESSAGE_FRAMING
    }
}

impl JsonSize for Message {
    fn json_size(&self) -> usize {
        let custom = self.custom_content.as_ref().map_or(0, |c| {
            raw_size(&c.attachments) + raw_size(&c.state) + fields_size(&c.extra) + MESSAGE_FRAMING
        });
        self.size_without_custom() + custom
    }
}

impl<T: JsonSize> JsonSize for [T] {
    fn json_size(&self) -> usize {
        self.iter().map(JsonSize::json_size).sum::<usize>() + self.len()
    }
}

impl<T: JsonSize> JsonSize for Vec<T> {
    fn json_size(&self) -> usize {
        self.as_slice().json_size()
    }
}

impl<T: JsonSize + ?Sized> JsonSize for &T {
    fn json_size(&self) -> usize {
        (**self).json_size()
    }
}

/// The messages of an LLM call: our system prompt, then the history without
/// `custom_content`; the last message's text replaced when `last_text` is set.
#[derive(Debug, Clone, Copy)]
pub struct LlmMessages<'a> {
    /// The system prompt.
    pub system: &'a str,
    /// The conversation.
    pub history: &'a [Message],
    /// A replacement for the last message's content.
    pub last_text: Option<&'a str>,
}

impl JsonSize for LlmMessages<'_> {
    fn json_size(&self) -> usize {
        self.system.len()
            + self.last_text.map_or(0, str::len)
            + self
                .history
                .iter()
                .map(Message::size_without_custom)
                .sum::<usize>()
            + MESSAGE_FRAMING
    }
}

impl WriteJson for LlmMessages<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        // As `json!` orders it: keys sorted.
        let mut system = ObjectWriter::open(out);
        write_json_str(system.key("content"), self.system);
        system.raw("role", "\"system\"");
        system.close();
        let (last, earlier) = match (self.last_text, self.history.split_last()) {
            (Some(text), Some((last, earlier))) => (Some((last, text)), earlier),
            _ => (None, self.history),
        };
        for m in earlier {
            out.push(b',');
            m.write_parts(out, false, None);
        }
        if let Some((m, text)) = last {
            out.push(b',');
            m.write_parts(out, false, Some(text));
        }
        out.push(b']');
    }
}

impl Serialize for LlmMessages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.history.len() + 1))?;
        seq.serialize_element(&serde_json::json!({"role": "system", "content": self.system}))?;
        let (last, earlier) = match (self.last_text, self.history.split_last()) {
            (Some(text), Some((last, earlier))) => (Some((last, text)), earlier),
            _ => (None, self.history),
        };
        for m in earlier {
            seq.serialize_element(&m.without_custom_content())?;
        }
        if let Some((m, text)) = last {
            seq.serialize_element(&WithText(m, text))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_written_byte_for_byte_as_serde_writes_them() {
        let body = json!({"messages": [
            {"role": "system", "content": "Be \"brief\"\n"},
            {"role": "user", "content": [{"type": "text", "text": "a"}], "name": "bob",
             "custom_content": {"attachments": [{"url": "f/x.png"}], "state": {"k": [1, {}]},
                                "form_value": {"answer": "yes"}}},
            {"role": "assistant", "custom_content": {}},
            {"role": "tool", "content": "ü \u{1} ok", "tool_call_id": "c1"},
            {"role": "user", "content": "last"},
        ]});
        let r = parse_request(body.to_string().as_bytes()).unwrap();
        let serde_body = |messages: String, stream: bool, format: Option<&Value>| {
            let format = format.map_or(String::new(), |f| format!(",\"response_format\":{f}"));
            format!("{{\"messages\":{messages},\"stream\":{stream}{format}}}")
        };
        let agent = ChatBody {
            messages: &r.messages,
            stream: true,
            response_format: None,
        };
        assert_eq!(
            String::from_utf8(agent.to_vec()).unwrap(),
            serde_body(serde_json::to_string(&r.messages).unwrap(), true, None)
        );
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"b": 1, "a": [true]}}});
        for last_text in [None, Some("the \"last\" text")] {
            let messages = LlmMessages {
                system: "You plan.\n\tCarefully: \"quoted\"",
                history: &r.messages,
                last_text,
            };
            let llm = ChatBody {
                messages,
                stream: false,
                response_format: Some(format.clone()),
            };
            assert_eq!(
                String::from_utf8(llm.to_vec()).unwrap(),
                serde_body(
                    serde_json::to_string(&messages).unwrap(),
                    false,
                    Some(&format)
                )
            );
        }
        let empty = LlmMessages {
            system: "s",
            history: &[],
            last_text: Some("ignored"),
        };
        let mut out = Vec::new();
        empty.write_json(&mut out);
        assert_eq!(out, serde_json::to_vec(&empty).unwrap());
    }

    #[test]
    fn a_body_is_written_into_a_buffer_that_never_grows() {
        // A turn with a state, attachments and other fields, then text with
        // characters JSON escapes or keeps as UTF-8.
        let state = json!({"is_gpa": true, "gpa_messages": {"tool_call_history": [
            {"role": "tool", "content": "Kyiv: +5°C ".repeat(200), "tool_call_id": "c1"}]}});
        let body = json!({"messages": [
            {"role": "user", "content": "weather?", "name": "bob"},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}],
             "custom_content": {"state": state, "attachments": [{"url": "f/x.png"}],
                                "stages": [{"name": "s"}]}},
            {"role": "user", "content": "line\n\"quoted\" ü ".repeat(50)},
        ]});
        let r = parse_request(body.to_string().as_bytes()).unwrap();
        let agent = ChatBody {
            messages: &r.messages,
            stream: true,
            response_format: None,
        };
        let bytes = agent.to_vec();
        assert_eq!(bytes.capacity(), r.messages.json_size() + BODY_SLACK);
        assert!(bytes.len() + 64 <= bytes.capacity(), "room for the model");
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["messages"], body["messages"]);

        let llm = ChatBody {
            messages: LlmMessages {
                system: "You plan.",
                history: &r.messages,
                last_text: Some("the last \"text\""),
            },
            stream: false,
            response_format: Some(json!({"type": "json_schema"})),
        };
        let bytes = llm.to_vec();
        assert_eq!(
            bytes.capacity(),
            llm.messages.json_size() + FORMAT_SIZE + BODY_SLACK
        );
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["messages"][3]["content"], "the last \"text\"");
    }

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
        assert_eq!(r.messages[0].extra.len(), 1, "nulls dropped");
        assert_eq!(r.messages[0].extra[0].0, "name");
        assert_eq!(
            r.messages[1].state().map(RawValue::get),
            Some(r#"{"ums_conversation_id":"c1"}"#)
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
        assert_eq!(
            serde_json::to_value(r.messages[1].without_custom_content()).unwrap(),
            json!({"role": "assistant", "content": "hello"})
        );
    }

    #[test]
    fn raw_values_are_written_back_byte_for_byte() {
        let body = br#"{"messages":[{"role":"user","content":"caf\u00e9 \"q\"","x":{"b":1,"a":[1.50,2]}}]}"#;
        let r = parse_request(body).unwrap();
        assert_eq!(
            serde_json::to_string(&r.messages[0]).unwrap(),
            r#"{"role":"user","content":"caf\u00e9 \"q\"","x":{"b":1,"a":[1.50,2]}}"#
        );
        assert_eq!(r.messages[0].text(), "café \"q\"");
    }

    fn error_of(body: &str) -> String {
        parse_request(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert_eq!(
            error_of("{\"messages\": ["),
            "the body is not valid JSON: EOF while parsing a list at line 1 column 14"
        );
        assert_eq!(
            error_of(r#"{"messages":[{"role":"user"}]} trailing"#),
            "the body is not valid JSON: trailing characters at line 1 column 32"
        );
        assert_eq!(
            error_of("nope"),
            "the body is not valid JSON: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_described_in_plain_words() {
        let shape = "a JSON object with a \"messages\" list, e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}";
        assert_eq!(
            error_of("[1]"),
            format!("the body must be {shape}, not a list")
        );
        assert_eq!(
            error_of(r#"["a", true]"#),
            format!("the body must be {shape}, not a list")
        );
        assert_eq!(
            error_of(" 42"),
            format!("the body must be {shape}, not a number")
        );
        assert_eq!(
            error_of("\"hi\""),
            format!("the body must be {shape}, not a string")
        );
        assert_eq!(
            error_of(""),
            format!("the body is empty: it must be {shape}")
        );
        assert_eq!(
            error_of(r#"{"stream": true}"#),
            format!("the body has no \"messages\" field: it must be {shape}")
        );
    }

    #[test]
    fn missing_and_empty_messages_are_rejected() {
        assert_eq!(
            error_of(r#"{"messages": []}"#),
            "messages must not be empty: it needs at least the user's message"
        );
    }

    #[test]
    fn wrong_types_name_the_path_and_the_expected_shape() {
        for (body, message) in [
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                "messages[0].content must be a string or a list of content parts, not a number",
            ),
            (r#"{"messages": "hi"}"#, "messages must be a list of messages, not a string"),
            (r#"{"messages": {"role": "user"}}"#, "messages must be a list of messages, not an object"),
            (
                r#"{"messages": [1]}"#,
                "messages[0] must be a message object such as {\"role\": \"user\", \"content\": \"Hello\"}, not a number",
            ),
            (
                r#"{"messages": [{"role": "user"}], "stream": "yes"}"#,
                "stream must be true or false, not a string",
            ),
            (
                r#"{"messages": [{"role": "user", "custom_content": {"attachments": {}}}]}"#,
                "messages[0].custom_content.attachments must be a list of attachments, not an object",
            ),
            (
                r#"{"messages": [{"role": "user", "custom_content": []}]}"#,
                "messages[0].custom_content must be an object (DIAL's attachments, state and stages), not a list",
            ),
            (
                r#"{"messages": [{"role": "user"}, {"content": "x"}]}"#,
                "messages[1] has no \"role\" field (it must be a string: \"system\", \"user\", \"assistant\", \"tool\" or \"function\")",
            ),
            (
                r#"{"messages": [{"role": 1}]}"#,
                "messages[0].role must be a string: \"system\", \"user\", \"assistant\", \"tool\" or \"function\", not a number",
            ),
        ] {
            assert_eq!(error_of(body), message, "{body}");
        }
    }

    #[test]
    fn unknown_roles_are_rejected() {
        assert_eq!(
            error_of(r#"{"messages": [{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]}"#),
            "messages[0].role must be one of \"system\", \"user\", \"assistant\", \"tool\", \"function\", not \"robot\""
        );
        let long = "r".repeat(40);
        assert_eq!(
            error_of(&format!(r#"{{"messages": [{{"role": "{long}"}}]}}"#)),
            format!("messages[0].role must be one of \"system\", \"user\", \"assistant\", \"tool\", \"function\", not \"{}…\"", "r".repeat(32))
        );
        for role in ROLES {
            let body = format!(r#"{{"messages": [{{"role": "{role}"}}, {{"role": "user"}}]}}"#);
            assert!(parse_request(body.as_bytes()).is_ok(), "{role}");
        }
    }

    #[test]
    fn last_message_must_be_from_the_user() {
        assert_eq!(
            error_of(r#"{"messages": [{"role": "assistant", "content": "x"}]}"#),
            "the last message must be the user's (role \"user\"), not \"assistant\""
        );
    }

    #[test]
    fn append_text_to_a_string_or_to_parts() {
        let mut m = Message::text_message("user", "hello");
        m.append_text("\n\nmore");
        assert_eq!(m.text(), "hello\n\nmore");
        let mut p: Message = serde_json::from_value(
            json!({"role": "user", "content": [{"type": "text", "text": "a"}]}),
        )
        .unwrap();
        p.append_text("b");
        assert_eq!(p.text(), "a\nb");
    }
}

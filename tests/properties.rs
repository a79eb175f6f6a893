//! Property tests of the two parsers that read untrusted bytes: the SSE decoder
//! (upstream streams, split anywhere by the network) and the request parser
//! (whatever DIAL Core, or anyone, posts). Bounded so the file runs in seconds.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use mas_coordinator::app::{prepare, Incoming};
use mas_coordinator::config::Config;
use mas_coordinator::error::CoordError;
use mas_coordinator::trace::Trace;
use mas_coordinator::wire::request::parse_request;
use mas_coordinator::wire::sse::{SseDecoder, SseError};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

/// `cases` cases; no regression files are written (the failures found so far
/// are kept as plain tests below).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// SSE decoder

/// What a decoder makes of `chunks`: the events, and the first error (after
/// which the caller stops feeding it, as `calls::pump_events` does).
fn decode(mut decoder: SseDecoder, chunks: &[&[u8]]) -> (Vec<String>, Option<SseError>) {
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(e) = decoder.push(chunk, &mut events) {
            return (events, Some(e));
        }
    }
    (events, None)
}

/// `bytes` cut at `cuts` (any positions, any order, duplicates give empty chunks).
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// Bytes that look like an event stream often enough to reach every branch:
/// field names, colons, spaces, CR, LF, multi-byte UTF-8 and invalid bytes.
fn sse_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(b"data".to_vec()),
        2 => Just(b"data: ".to_vec()),
        1 => Just(b"event".to_vec()),
        1 => Just(b"id".to_vec()),
        3 => Just(b":".to_vec()),
        2 => Just(b" ".to_vec()),
        5 => Just(b"\n".to_vec()),
        5 => Just(b"\r".to_vec()),
        3 => Just(b"\r\n".to_vec()),
        2 => Just(b"x".to_vec()),
        1 => Just("é€😀".as_bytes().to_vec()),
        1 => Just(b"[DONE]".to_vec()),
        1 => Just(vec![0xff]),
        1 => Just(vec![0xe2, 0x82]),
        2 => any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// A line ending, as a server might choose per line.
fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

/// One line of event data: no CR or LF.
fn data_line() -> impl Strategy<Value = String> {
    "[^\r\n]{0,12}"
}

/// A well-formed stream: events (each 1 to 3 data lines, joined with `\n` when
/// decoded), with comments and `event:`/`id:` fields mixed in, any line endings.
#[derive(Debug, Clone)]
struct Stream {
    events: Vec<String>,
    bytes: Vec<u8>,
}

fn well_formed_stream() -> impl Strategy<Value = Stream> {
    let line = (data_line(), line_end(), 0..6u8);
    let event = (prop::collection::vec(line, 1..4), line_end());
    prop::collection::vec(event, 0..8).prop_map(|events| {
        let mut bytes = String::new();
        let mut previous_end = "\n";
        let mut push_line = |bytes: &mut String, text: &str, end: &'static str| {
            // A lone CR followed by an empty LF-terminated line would read as one
            // CRLF: a server cannot mean that, so it writes CRLF there.
            let end = if previous_end == "\r" && text.is_empty() && end == "\n" {
                "\r\n"
            } else {
                end
            };
            bytes.push_str(text);
            bytes.push_str(end);
            previous_end = end;
        };
        let mut expected = Vec::new();
        for (lines, blank_end) in events {
            let mut data = Vec::new();
            for (text, end, extra) in lines {
                match extra {
                    0 => push_line(&mut bytes, ": a comment", end),
                    1 => push_line(&mut bytes, "event: update", end),
                    2 => push_line(&mut bytes, "id: 7", end),
                    _ => {}
                }
                push_line(&mut bytes, &format!("data: {text}"), end);
                data.push(text);
            }
            push_line(&mut bytes, "", blank_end);
            expected.push(data.join("\n"));
        }
        Stream {
            events: expected,
            bytes: bytes.into_bytes(),
        }
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes, any split: no panic, and the same events and error as in one push.
    #[test]
    fn sse_any_bytes_any_split_same_events(
        bytes in prop_oneof![sse_like_bytes(), prop::collection::vec(any::<u8>(), 0..64)],
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let whole = decode(SseDecoder::default(), &[&bytes]);
        let parts = decode(SseDecoder::default(), &split(&bytes, &cuts));
        prop_assert_eq!(&parts, &whole, "chunks {:?}", split(&bytes, &cuts));
        let byte_by_byte: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(decode(SseDecoder::default(), &byte_by_byte), whole);
    }

    /// A small event limit never panics, and never changes an event: the
    /// decoder gives the same events as without a limit, or stops with
    /// `EventTooLarge` after a prefix of them; for a limit no event or line
    /// reaches, it gives exactly the same events.
    #[test]
    fn sse_event_limit_never_panics_or_alters_events(
        bytes in sse_like_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        limit in 0usize..16,
    ) {
        let limited = decode(SseDecoder::new(limit), &split(&bytes, &cuts));
        let unlimited = decode(SseDecoder::default(), &[&bytes]);
        match &limited.1 {
            Some(SseError::EventTooLarge(l)) => {
                prop_assert_eq!(*l, limit);
                prop_assert!(unlimited.0.starts_with(&limited.0), "{:?} vs {:?}", limited, unlimited);
            }
            _ => prop_assert_eq!(&limited, &unlimited),
        }
        if bytes.len() <= limit {
            prop_assert_eq!(limited, unlimited);
        }
    }

    /// A well-formed stream gives back exactly its events' data, however split.
    #[test]
    fn sse_well_formed_streams_round_trip(
        stream in well_formed_stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let mut decoder = SseDecoder::default();
        let (events, error) = {
            let mut events = Vec::new();
            let mut error = None;
            for chunk in split(&stream.bytes, &cuts) {
                if let Err(e) = decoder.push(chunk, &mut events) {
                    error = Some(e);
                    break;
                }
            }
            (events, error)
        };
        prop_assert_eq!(error, None);
        prop_assert_eq!(&events, &stream.events, "bytes {:?}", String::from_utf8_lossy(&stream.bytes));
        prop_assert!(decoder.is_idle(), "the stream ended between events");
    }
}

/// The smallest case the split property found: CR at the end of one chunk,
/// then a chunk that is just LF (the rest of that CRLF), then a blank line.
#[test]
fn sse_crlf_split_before_a_blank_line() {
    let bytes = b"data: a\r\n\ndata: b\n\n";
    let whole = decode(SseDecoder::default(), &[bytes]);
    assert_eq!(whole, (vec!["a".to_owned(), "b".to_owned()], None));
    let split = decode(
        SseDecoder::default(),
        &[&bytes[..8], &bytes[8..9], &bytes[9..]],
    );
    assert_eq!(
        split, whole,
        "split as \"data: a\\r\" | \"\\n\" | \"\\ndata: b\\n\\n\""
    );
}

// ---------------------------------------------------------------------------
// Request parser

/// Object keys: the ones the parser looks at, and anything else.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "messages", "role", "content", "custom_content", "state", "stream",
            "attachments", "type", "text", "name", "ums_conversation_id", "is_gpa",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{0,6}",
    ]
}

/// Any JSON value, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("user".to_owned()),
            Just("assistant".to_owned()),
            ".{0,8}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object shaped roughly like a request: a `messages` list of
/// message-like objects with fields of any type.
fn request_like() -> impl Strategy<Value = Value> {
    let message = (
        prop_oneof![Just(json!("user")), Just(json!("assistant")), json_value()],
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(role, content, custom)| {
            let mut m = Map::new();
            m.insert("role".into(), role);
            if let Some(c) = content {
                m.insert("content".into(), c);
            }
            if let Some(c) = custom {
                m.insert("custom_content".into(), c);
            }
            Value::Object(m)
        });
    (
        prop::collection::vec(message, 0..4),
        prop::option::of(json_value()),
    )
        .prop_map(|(messages, stream)| {
            let mut r = json!({"messages": messages});
            if let Some(s) = stream {
                r["stream"] = s;
            }
            r
        })
}

/// What every rejected body must look like: a 400 with a message and a DIAL body.
fn check_rejection(e: &CoordError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status(), 400, "{}", e.message());
    prop_assert!(
        e.message().starts_with("Invalid request: "),
        "{}",
        e.message()
    );
    prop_assert!(e.message().len() > "Invalid request: ".len());
    let body: Value = serde_json::from_slice(&e.body_json()).unwrap();
    prop_assert_eq!(&body["error"]["type"], "invalid_request_error");
    prop_assert_eq!(&body["error"]["code"], "400");
    prop_assert!(body["error"]["display_message"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    Ok(())
}

/// What every accepted request must satisfy.
fn check_accepted(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(body) {
        Ok(r) => {
            prop_assert!(!r.messages.is_empty());
            prop_assert_eq!(r.messages.last().map(|m| m.role.as_str()), Some("user"));
        }
        Err(e) => check_rejection(&CoordError::from(e))?,
    }
    Ok(())
}

fn trace() -> Trace {
    Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_bytes_parse_or_get_a_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_accepted(&bytes)?;
    }

    #[test]
    fn any_json_parses_or_gets_a_400(value in json_value()) {
        check_accepted(value.to_string().as_bytes())?;
    }

    #[test]
    fn request_like_json_parses_or_gets_a_400(value in request_like()) {
        check_accepted(value.to_string().as_bytes())?;
    }

    /// Through `prepare` (what the host calls): 413 exactly when the body is
    /// over the limit, else the parser's answer, then the key check.
    #[test]
    fn prepare_answers_400_or_413(
        value in prop_oneof![request_like(), json_value()],
        limit in 1usize..200,
        key in prop::option::of("[ -~]{0,6}"),
    ) {
        let body = value.to_string().into_bytes();
        let config = Config { max_request_bytes: limit, ..Config::default() };
        let header = |name: &str| if name == "api-key" { key.clone() } else { None };
        let incoming = Incoming {
            path: "/openai/deployments/mas-coordinator/chat/completions",
            trace: trace(),
            start_ms: 0,
            unix_ms: 0,
        };
        match prepare(config, header, &body, incoming) {
            Ok(ctx) => {
                prop_assert!(body.len() <= limit);
                prop_assert_eq!(ctx.api_key.as_str(), key.as_deref().unwrap().trim());
            }
            Err(CoordError::PayloadTooLarge(l)) => {
                prop_assert_eq!(l, limit);
                prop_assert!(body.len() > limit);
                prop_assert_eq!(CoordError::PayloadTooLarge(l).status(), 413);
            }
            Err(CoordError::MissingApiKey) => {
                prop_assert!(key.as_deref().is_none_or(|k| k.trim().is_empty()));
                prop_assert!(parse_request(&body).is_ok());
            }
            Err(e) => {
                prop_assert!(body.len() <= limit);
                check_rejection(&e)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Round trip

/// A state value: any JSON but null (null means "no state").
fn state_value() -> impl Strategy<Value = Value> {
    json_value().prop_filter("not null", |v| !v.is_null())
}

/// A message's content as sent, and the text the coordinator must read from it.
fn content() -> impl Strategy<Value = (Value, String)> {
    let text = ".{0,16}";
    let part = prop_oneof![
        text.prop_map(|t| (json!({"type": "text", "text": t}), Some(t))),
        Just((
            json!({"type": "image_url", "image_url": {"url": "files/b/x.png"}}),
            None
        )),
    ];
    prop_oneof![
        text.prop_map(|t| (Value::String(t.clone()), t)),
        prop::collection::vec(part, 0..4).prop_map(|parts| {
            let texts: Vec<String> = parts.iter().filter_map(|(_, t)| t.clone()).collect();
            (
                Value::Array(parts.into_iter().map(|(p, _)| p).collect()),
                texts.join("\n"),
            )
        }),
    ]
}

/// A valid message: role, content, optionally a state and an extra field.
fn message(role: &'static str) -> impl Strategy<Value = (Value, String)> {
    (
        content(),
        prop::option::of(state_value()),
        prop::option::of("[a-z]{1,8}"),
    )
        .prop_map(move |((content, text), state, name)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(s) = state {
                m["custom_content"] = json!({"state": s});
            }
            if let Some(n) = name {
                m["name"] = json!(n);
            }
            (m, text)
        })
}

/// A valid request: any roles, the last one `user`.
fn valid_request() -> impl Strategy<Value = (Value, Vec<(Value, String)>)> {
    let role = prop::sample::select(vec!["system", "user", "assistant", "tool"]);
    (
        prop::collection::vec(role.prop_flat_map(message), 0..5),
        message("user"),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(mut messages, last, stream)| {
            messages.push(last);
            let mut body = json!({
                "model": "mas-coordinator",
                "messages": messages.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
            });
            if let Some(s) = stream {
                body["stream"] = json!(s);
            }
            (body, messages)
        })
}

/// JSON text parsed as a value (both sides of a comparison go through the
/// same parser, so a float compares equal when its text was kept).
fn reparse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_requests_parse_and_keep_roles_texts_and_states((body, messages) in valid_request()) {
        let parsed = parse_request(body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(parsed.stream, body["stream"].as_bool());
        prop_assert_eq!(parsed.messages.len(), messages.len());
        for (got, (sent, text)) in parsed.messages.iter().zip(&messages) {
            prop_assert_eq!(&got.role, sent["role"].as_str().unwrap());
            prop_assert_eq!(&got.text(), text);
            // The state is kept as the exact text that was sent.
            prop_assert_eq!(
                got.state().map(|raw| raw.get().to_owned()),
                sent.pointer("/custom_content/state").map(Value::to_string)
            );
            // The message is passed on to agents unchanged.
            let out = serde_json::to_string(got).unwrap();
            prop_assert_eq!(reparse(&out), reparse(&sent.to_string()));
        }
    }
}

/// States are copied, not rebuilt: a float keeps its exact text (a parsed
/// tree would round it when serde_json lacks `float_roundtrip`), and so do
/// key order and nested nulls.
#[test]
fn states_pass_through_as_sent() {
    let state = r#"{"z": 3.4547540234224906e+203, "a": null, "n": [1.0, -0.0]}"#;
    let body = format!(
        r#"{{"messages": [{{"role": "user", "content": "x", "custom_content": {{"state": {state}}}}}]}}"#
    );
    let parsed = parse_request(body.as_bytes()).unwrap();
    assert_eq!(parsed.messages[0].state().unwrap().get(), state);
}

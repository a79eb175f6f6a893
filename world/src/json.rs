//! Small helpers for writing JSON with a fixed key order (the wire formats are
//! byte-exact, and `serde_json::Map` would sort keys), plus text and time utilities.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// A JSON string literal (compact, raw UTF-8).
pub(crate) fn s(v: &str) -> String {
    Value::String(v.to_owned()).to_string()
}

/// A compact JSON object from already-encoded values, keys in the given order.
pub(crate) fn obj(pairs: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s(k));
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    out
}

/// A compact JSON array from already-encoded values.
pub(crate) fn arr(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// A JSON string literal as Python's `json.dumps` writes it (`ensure_ascii=True`).
pub(crate) fn py_s(v: &str) -> String {
    let mut out = String::new();
    for c in s(v).chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A JSON object with Python's default `json.dumps` separators (`", "` and `": "`).
pub(crate) fn py_obj(pairs: &[(&str, String)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {v}", py_s(k)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// A JSON array with Python's default separators.
pub(crate) fn py_arr(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// `{"error":{"message":..,"type":..,"code":"<status>"}}`, the DIAL error body.
pub(crate) fn dial_error_body(status: u16, kind: &str, message: &str) -> String {
    let error = obj(&[
        ("message", s(message)),
        ("type", s(kind)),
        ("code", s(&status.to_string())),
    ]);
    obj(&[("error", error)])
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current UTC time as Python's `datetime.now(timezone.utc).isoformat()` prints it,
/// e.g. `2025-10-24T10:00:00.123456+00:00`.
pub(crate) fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs(), now.subsec_micros())
}

pub(crate) fn format_rfc3339(secs: u64, micros: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Splits `text` after every run of whitespace, so that the pieces concatenate back to
/// `text` exactly: `"a  b c"` → `["a  ", "b ", "c"]`.
pub(crate) fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            pieces.push(std::mem::take(&mut current));
            in_space = false;
        }
        current.push(c);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// The text of a message: a string `content`, or the `text` of every `{"type":"text"}`
/// part joined with `"\n"`; anything else is empty.
pub(crate) fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of the last message whose role is `user` (empty if there is none).
pub(crate) fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default()
}

pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// `P` of the usage: the words in the texts of all request messages.
pub(crate) fn prompt_tokens(messages: &[Value]) -> u64 {
    messages.iter().map(|m| word_count(&message_text(m))).sum()
}

/// Decodes `%XX` escapes (used for fault targets in control-API paths).
pub(crate) fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_round_trips() {
        for text in ["", "a", "a b", "  a  b ", "Hello, world!\nNext\tline", "x "] {
            assert_eq!(split_words(text).concat(), text);
        }
        assert_eq!(split_words("a  b c"), ["a  ", "b ", "c"]);
        assert_eq!(split_words(" a"), [" ", "a"]);
    }

    #[test]
    fn python_json() {
        assert_eq!(py_s("+5°C"), r#""+5\u00b0C""#);
        assert_eq!(py_s("😀"), r#""\ud83d\ude00""#);
        assert_eq!(
            py_obj(&[
                ("a", "1".into()),
                ("b", py_arr(&["null".into(), "2".into()]))
            ]),
            r#"{"a": 1, "b": [null, 2]}"#
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            format_rfc3339(1_761_300_000, 123_456),
            "2025-10-24T10:00:00.123456+00:00"
        );
        assert_eq!(
            format_rfc3339(951_782_400, 1),
            "2000-02-29T00:00:00.000001+00:00"
        );
    }

    #[test]
    fn texts() {
        let m: Value = serde_json::json!({"role":"user","content":[
            {"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]});
        assert_eq!(message_text(&m), "a\nb");
        assert_eq!(
            percent_decode("deployment%3Agpa-backup"),
            "deployment:gpa-backup"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41"), "A");
    }
}

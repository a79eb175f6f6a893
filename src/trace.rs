//! Distributed tracing: the trace a request belongs to, and the headers every
//! upstream call carries.
//!
//! Incoming: W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent span>-<flags>`)
//! and/or `X-Trace-ID`. The W3C trace id comes from a valid `traceparent`, else
//! from an `X-Trace-ID` that is itself 32 lowercase hex, else it is new. The
//! `X-Trace-ID` value is the incoming one when it is a safe token, else the W3C
//! trace id. The request gets its own span id; every upstream call gets a new
//! span id, sent as the parent in `traceparent` and as `X-Parent-Span-ID`.
//! Ids are generated outside (randomness is the host's); this module is pure.

/// The tracing identity of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The value of `X-Trace-ID` (incoming, or the W3C trace id).
    pub trace_id: String,
    /// The W3C trace id: 32 lowercase hex digits.
    pub w3c_trace_id: String,
    /// The caller's span (from `traceparent`), if any.
    pub parent_span_id: Option<String>,
    /// This request's span id: 16 lowercase hex digits.
    pub span_id: String,
    /// W3C trace flags (`01` = sampled).
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// A 16-hex span id from 64 random bits (never all zeros).
pub fn span_id(random: u64) -> String {
    format!("{:016x}", random.max(1))
}

/// A 32-hex trace id from 128 random bits (never all zeros).
pub fn trace_id(high: u64, low: u64) -> String {
    format!("{:016x}{:016x}", high, low.max(1))
}

/// Parses `traceparent` (version 00 format; unknown versions are read by their
/// first four fields, as the spec asks). Returns (trace id, parent span, flags).
pub fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if !is_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !is_hex(trace, 32)
        || is_zero(trace)
        || !is_hex(span, 16)
        || is_zero(span)
        || !is_hex(flags, 2)
    {
        return None;
    }
    Some((trace.to_owned(), span.to_owned(), flags.to_owned()))
}

/// Whether an `X-Trace-ID` value can be passed on: 1–128 of `A-Z a-z 0-9 - _ . :`.
pub fn is_safe_trace_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Trace {
    /// The trace of a request from its headers; `fresh_trace` and `span` are new random ids.
    pub fn from_headers(
        traceparent: Option<&str>,
        x_trace_id: Option<&str>,
        fresh_trace: String,
        span: String,
    ) -> Trace {
        let parsed = traceparent.and_then(parse_traceparent);
        let x_trace = x_trace_id.map(str::trim).filter(|v| is_safe_trace_id(v));
        let (w3c, parent, flags) = match parsed {
            Some((t, p, f)) => (t, Some(p), f),
            None => match x_trace {
                Some(x) if is_hex(x, 32) && !is_zero(x) => (x.to_owned(), None, "01".to_owned()),
                _ => (fresh_trace, None, "01".to_owned()),
            },
        };
        Trace {
            trace_id: x_trace.map_or_else(|| w3c.clone(), str::to_owned),
            w3c_trace_id: w3c,
            parent_span_id: parent,
            span_id: span,
            flags,
        }
    }

    /// The tracing headers of an upstream call made in span `call_span`.
    pub fn call_headers(&self, call_span: &str) -> [(&'static str, String); 3] {
        [
            ("x-trace-id", self.trace_id.clone()),
            ("x-parent-span-id", call_span.to_owned()),
            (
                "traceparent",
                format!("00-{}-{call_span}-{}", self.w3c_trace_id, self.flags),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_parsed_and_validated() {
        assert_eq!(
            parse_traceparent(TP),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                "01".into()
            ))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version may carry more fields.
        assert!(parse_traceparent(&format!("01{}-more", &TP[2..])).is_some());
    }

    #[test]
    fn incoming_traceparent_sets_the_trace_and_parent() {
        let t = Trace::from_headers(Some(TP), None, "f".repeat(32), "1111111111111111".into());
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        let h = t.call_headers("2222222222222222");
        assert_eq!(
            h[0],
            ("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736".to_owned())
        );
        assert_eq!(h[1], ("x-parent-span-id", "2222222222222222".to_owned()));
        assert_eq!(
            h[2],
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-2222222222222222-01".to_owned()
            )
        );
    }

    #[test]
    fn x_trace_id_is_kept_and_a_fresh_w3c_trace_is_made_when_needed() {
        let t = Trace::from_headers(None, Some("req-42"), "a".repeat(32), "1".repeat(16));
        assert_eq!(t.trace_id, "req-42");
        assert_eq!(t.w3c_trace_id, "a".repeat(32));
        let hex = "0123456789abcdef0123456789abcdef";
        let t = Trace::from_headers(None, Some(hex), "a".repeat(32), "1".repeat(16));
        assert_eq!(t.w3c_trace_id, hex);
        let t = Trace::from_headers(None, Some("bad id\r\nx"), "a".repeat(32), "1".repeat(16));
        assert_eq!(
            t.trace_id,
            "a".repeat(32),
            "unsafe values are not passed on"
        );
    }

    #[test]
    fn generated_ids_have_the_w3c_shape() {
        assert_eq!(span_id(0), "0000000000000001");
        assert_eq!(trace_id(1, 2), "00000000000000010000000000000002");
        assert!(is_hex(&span_id(u64::MAX), 16));
    }
}

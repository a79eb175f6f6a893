//! A push-bytes / pull-events decoder for server-sent events, as upstreams send
//! them (the HTML Living Standard's event-stream rules, the parts DIAL uses).
//!
//! Bytes arrive in chunks that may split anywhere: mid-line, between CR and LF,
//! inside a multi-byte UTF-8 character. A partial line is kept until its end
//! arrives; that is a normal state, not an error. Only `data` fields matter here:
//! `event`, `id`, `retry` and comments are ignored; several `data` lines of one
//! event are joined with `\n`; an event is dispatched at a blank line. Lines are
//! split on bytes before UTF-8 decoding, which is safe because LF and CR never
//! occur inside a multi-byte sequence.

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line is not valid UTF-8.
    InvalidUtf8,
    /// An event (its lines together) grew past the limit.
    EventTooLarge(usize),
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::InvalidUtf8 => f.write_str("event stream is not valid UTF-8"),
            SseError::EventTooLarge(n) => write!(f, "an event is larger than {n} bytes"),
        }
    }
}

/// Incremental SSE decoder.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// `data` of the event being built; `None` when it has no data line yet.
    data: Option<String>,
    /// The previous chunk ended with CR, so a leading LF belongs to that line end.
    after_cr: bool,
    max_event: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(crate::limits::MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder that rejects events (the current line plus the data lines
    /// gathered so far, however they are split into lines) larger than
    /// `max_event` bytes.
    pub fn new(max_event: usize) -> SseDecoder {
        SseDecoder {
            line: Vec::new(),
            data: None,
            after_cr: false,
            max_event,
        }
    }

    /// Feeds bytes; appends the `data` of every event completed by them to `events`.
    pub fn push(&mut self, mut bytes: &[u8], events: &mut Vec<String>) -> Result<(), SseError> {
        if self.after_cr {
            // The previous chunk ended with CR: an LF right after it belongs to
            // that line end, whichever chunk it comes in.
            if bytes.is_empty() {
                return Ok(());
            }
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let is_cr = bytes[end] == b'\r';
            if self.line.is_empty() {
                self.check_len(end)?;
                self.line_done(&bytes[..end], events)?;
            } else {
                self.check_len(end)?;
                self.line.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, events)?;
                self.line = line;
                self.line.clear();
            }
            bytes = &bytes[end + 1..];
            if is_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.check_len(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn check_len(&self, more: usize) -> Result<(), SseError> {
        let data = self.data.as_ref().map_or(0, String::len);
        if data + self.line.len() + more > self.max_event {
            Err(SseError::EventTooLarge(self.max_event))
        } else {
            Ok(())
        }
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) -> Result<(), SseError> {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(data);
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(())
    }

    /// True when no partial line or undispatched event is pending: the stream
    /// could have ended here cleanly.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.data.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out).unwrap();
        }
        out
    }

    const SAMPLE: &str = "data: {\"a\":1}\n\n: comment\r\nevent: x\r\ndata: line1\r\ndata:line2\r\n\r\ndata: é€😀\r\rdata\n\nid: 7\ndata: [DONE]\n\n";

    fn expected() -> Vec<String> {
        vec![
            "{\"a\":1}".to_owned(),
            "line1\nline2".to_owned(),
            "é€😀".to_owned(),
            String::new(),
            "[DONE]".to_owned(),
        ]
    }

    #[test]
    fn decodes_spec_line_endings_and_fields() {
        assert_eq!(decode_all(&[SAMPLE.as_bytes()]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = SAMPLE.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let got = decode_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, expected(), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let chunks: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
        assert_eq!(decode_all(&chunks), expected());
    }

    #[test]
    fn crlf_split_before_a_blank_line_keeps_two_events() {
        // Found by the property tests: "\r" | "\n" | "\n..." once merged events.
        assert_eq!(
            decode_all(&[b"data: a\r", b"\n", b"\ndata: b\n\n"]),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(
            decode_all(&[b"data: a\r", b"", b"\n", b"\r\n"]),
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn idle_only_between_events() {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        assert!(d.is_idle());
        d.push(b"data: x", &mut out).unwrap();
        assert!(!d.is_idle());
        d.push(b"\n", &mut out).unwrap();
        assert!(!d.is_idle(), "event not yet dispatched");
        d.push(b"\n", &mut out).unwrap();
        assert!(d.is_idle());
        assert_eq!(out, vec!["x".to_owned()]);
    }

    #[test]
    fn rejects_invalid_utf8_and_oversized_events() {
        let mut d = SseDecoder::default();
        assert_eq!(
            d.push(b"data: \xff\xfe\n", &mut Vec::new()),
            Err(SseError::InvalidUtf8)
        );
        let mut d = SseDecoder::new(8);
        assert_eq!(
            d.push(b"data: 0123456789", &mut Vec::new()),
            Err(SseError::EventTooLarge(8))
        );
        // Many short data lines without a blank line between them are one
        // event: their sum is bounded, not each line.
        let mut d = SseDecoder::new(64);
        let mut events = Vec::new();
        let mut result = Ok(());
        for _ in 0..20 {
            result = d.push(b"data: xxxxxx\n", &mut events);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge(64)));
        assert!(events.is_empty());
        // A keep-alive with empty data is an empty event, not an error.
        let mut d = SseDecoder::new(64);
        let mut events = Vec::new();
        d.push(b"data:\n\ndata: x\n\n", &mut events).unwrap();
        assert_eq!(events, vec![String::new(), "x".to_owned()]);
    }
}

//! Streamed Core answers in the aidial-sdk chunk format (docs/protocol.md §2.2), built as lazy
//! [`Steps`]: small parts are formatted eagerly, bulk parts (`[gpa:stages=N]` and
//! friends) are generators that run only while the body is being sent, so a 100 MiB
//! answer never sits in memory.

use crate::http::{Step, Steps};
use crate::json::{arr, obj, s, unix_now};
use crate::state::Shared;
use std::sync::Arc;

/// An encoded JSON value that [`Chunks::filled_custom`] replaces by `x` bytes: a raw NUL
/// cannot occur in encoded JSON (it is always escaped), so the hole is unambiguous.
pub(crate) const FILL_HOLE: &str = "\"\0\"";

/// The bytes of one content delta of [`Chunks::bulk_content`].
const CONTENT_PIECE: usize = 1024;

/// `{"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C}`.
pub(crate) fn usage(prompt: u64, completion: u64) -> String {
    obj(&[
        ("prompt_tokens", prompt.to_string()),
        ("completion_tokens", completion.to_string()),
        ("total_tokens", (prompt + completion).to_string()),
    ])
}

/// The per-response part of every chunk; cheap to clone into lazy generators.
#[derive(Clone, Debug)]
struct Envelope {
    id: Arc<str>,
    created: u64,
}

impl Envelope {
    fn chunk(&self, delta: &str, finish_reason: &str, usage: &str) -> String {
        let choice = obj(&[
            ("index", "0".into()),
            ("finish_reason", finish_reason.into()),
            ("delta", delta.into()),
        ]);
        obj(&[
            ("choices", arr(&[choice])),
            ("usage", usage.into()),
            ("id", s(&self.id)),
            ("created", self.created.to_string()),
            ("object", s("chat.completion.chunk")),
        ])
    }

    fn delta(&self, delta: &str) -> Step {
        Step::Event(self.delta_text(delta))
    }

    fn delta_text(&self, delta: &str) -> String {
        self.chunk(delta, "null", "null")
    }
}

fn custom_delta(custom_content: String) -> String {
    obj(&[("custom_content", custom_content)])
}

fn stage_delta(stage: String) -> String {
    custom_delta(obj(&[("stages", arr(&[stage]))]))
}

fn stage_open(index: u64, name: &str, parent: Option<u64>) -> String {
    let mut fields = vec![
        ("index", index.to_string()),
        ("name", s(name)),
        ("status", "null".to_owned()),
    ];
    if let Some(parent) = parent {
        fields.push(("parent_stage_index", parent.to_string()));
    }
    stage_delta(obj(&fields))
}

fn stage_close(index: u64, status: &str) -> String {
    stage_delta(obj(&[("index", index.to_string()), ("status", s(status))]))
}

/// Counts whitespace-separated words across pieces exactly like `split_whitespace` on
/// their concatenation (pieces may split a word), without keeping the text.
#[derive(Debug, Default)]
struct WordCount {
    words: u64,
    in_word: bool,
}

impl WordCount {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_whitespace() {
                self.in_word = false;
            } else if !self.in_word {
                self.in_word = true;
                self.words += 1;
            }
        }
    }
}

/// The chunks of one streamed response, in order.
pub(crate) struct Chunks {
    env: Envelope,
    /// Formatted steps not yet sealed into `segments`.
    eager: Vec<Step>,
    segments: Vec<Steps>,
    words: WordCount,
    next_stage: u64,
}

impl Chunks {
    /// Starts a response (new id) with the role chunk.
    pub(crate) fn new(shared: &Shared) -> Chunks {
        let mut chunks = Chunks {
            env: Envelope {
                id: shared.next_response_id().into(),
                created: unix_now(),
            },
            eager: Vec::new(),
            segments: Vec::new(),
            words: WordCount::default(),
            next_stage: 0,
        };
        chunks.delta(&obj(&[("role", s("assistant"))]));
        chunks
    }

    fn seal(&mut self) {
        if !self.eager.is_empty() {
            let eager = std::mem::take(&mut self.eager);
            self.segments.push(Steps::new(eager.into_iter()));
        }
    }

    /// Appends steps that are generated only when the stream reaches them.
    fn lazy(&mut self, steps: impl Iterator<Item = Step> + Send + 'static) {
        self.seal();
        self.segments.push(Steps::new(steps));
    }

    pub(crate) fn delta(&mut self, delta: &str) {
        let step = self.env.delta(delta);
        self.eager.push(step);
    }

    /// An event that is not a chunk (e.g. an `{"error":..}` object).
    pub(crate) fn raw_event(&mut self, payload: &str) {
        self.eager.push(Step::Event(payload.to_owned()));
    }

    /// A pause in the stream.
    pub(crate) fn sleep(&mut self, ms: u64) {
        self.eager.push(Step::Sleep(ms));
    }

    pub(crate) fn content(&mut self, text: &str) {
        self.words.feed(text);
        self.delta(&obj(&[("content", s(text))]));
    }

    pub(crate) fn custom(&mut self, custom_content: String) {
        self.delta(&custom_delta(custom_content));
    }

    /// A `custom_content` delta whose [`FILL_HOLE`] is sent as `fill` bytes of `x`.
    pub(crate) fn filled_custom(&mut self, custom_content: String, fill: usize) {
        let event = self.env.delta_text(&custom_delta(custom_content));
        // The hole's quotes stay in the prefix and suffix; only the NUL is replaced.
        let step = match event.split_once('\0') {
            Some((prefix, suffix)) => Step::Filled {
                prefix: prefix.to_owned(),
                fill,
                suffix: suffix.to_owned(),
            },
            None => Step::Event(event),
        };
        self.eager.push(step);
    }

    pub(crate) fn stage(&mut self, stage: String) {
        self.delta(&stage_delta(stage));
    }

    /// Opens a stage and returns its index.
    pub(crate) fn open_stage(&mut self, name: &str, parent: Option<u64>) -> u64 {
        let index = self.next_stage;
        self.next_stage += 1;
        self.delta(&stage_open(index, name, parent));
        index
    }

    pub(crate) fn stage_content(&mut self, index: u64, content: &str) {
        self.stage(obj(&[
            ("index", index.to_string()),
            ("content", s(content)),
            ("status", "null".into()),
        ]));
    }

    pub(crate) fn close_stage(&mut self, index: u64, status: &str) {
        self.delta(&stage_close(index, status));
    }

    /// `n` stages `<prefix><i>` (i from 0), each opened and closed `completed`.
    pub(crate) fn bulk_stages(&mut self, prefix: &'static str, n: u64) {
        let base = self.next_stage;
        self.next_stage += n;
        let env = self.env.clone();
        self.lazy((0..n).flat_map(move |i| {
            let index = base + i;
            [
                env.delta(&stage_open(index, &format!("{prefix}{i}"), None)),
                env.delta(&stage_close(index, "completed")),
            ]
        }));
    }

    /// `len` bytes of `x` as choice content, in deltas of [`CONTENT_PIECE`] bytes.
    pub(crate) fn bulk_content(&mut self, len: usize) {
        if len > 0 {
            self.words.feed("x");
        }
        let env = self.env.clone();
        let piece = "x".repeat(CONTENT_PIECE);
        self.lazy((0..len.div_ceil(CONTENT_PIECE)).map(move |i| {
            let size = CONTENT_PIECE.min(len - i * CONTENT_PIECE);
            env.delta(&obj(&[("content", s(&piece[..size]))]))
        }));
    }

    /// One `custom_content.attachments` delta per `attachment(i)`, i in `0..n`.
    pub(crate) fn bulk_attachments(
        &mut self,
        n: u64,
        attachment: impl Fn(u64) -> String + Send + 'static,
    ) {
        let env = self.env.clone();
        self.lazy((0..n).map(move |i| {
            env.delta(&custom_delta(obj(&[(
                "attachments",
                arr(&[attachment(i)]),
            )])))
        }));
    }

    fn into_steps(mut self) -> Steps {
        self.seal();
        Steps::new(self.segments.into_iter().flatten())
    }

    /// Ends the response with the stop chunk (usage: `prompt` and the content's words).
    pub(crate) fn stop(mut self, prompt: u64) -> Steps {
        let stop = self
            .env
            .chunk("{}", &s("stop"), &usage(prompt, self.words.words));
        self.eager.push(Step::Event(stop));
        self.into_steps()
    }

    /// Ends the response without a stop chunk (a crashed answer).
    pub(crate) fn abandon(self) -> Steps {
        self.into_steps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_count_spans_pieces() {
        let mut count = WordCount::default();
        for piece in ["Work", "ing. ", "x", "xx", "GPA[a] got", " 1\n", "  "] {
            count.feed(piece);
        }
        assert_eq!(count.words, 4);
        assert_eq!(
            count.words,
            "Working. xxxGPA[a] got 1\n  ".split_whitespace().count() as u64
        );
    }
}

//! The UMS stand-in's in-memory conversation store: one per UMS instance (primary and
//! backup), kept in the world's state.

use crate::json::{arr, obj, s};
use std::collections::BTreeMap;

/// The in-memory state of one UMS instance.
#[derive(Debug)]
pub(crate) struct UmsState {
    /// Conversation ids are `<prefix><NNNN>`.
    pub(crate) prefix: &'static str,
    pub(crate) next_id: u64,
    pub(crate) next_update: u64,
    pub(crate) conversations: BTreeMap<String, Conversation>,
}

/// One conversation of a UMS instance.
#[derive(Debug)]
pub(crate) struct Conversation {
    pub(crate) id: String,
    pub(crate) title: Option<String>,
    pub(crate) messages: Vec<(String, String)>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// Monotonic update counter, for "newest updated first" listing.
    pub(crate) update_seq: u64,
}

impl UmsState {
    pub(crate) fn new(prefix: &'static str) -> UmsState {
        UmsState {
            prefix,
            next_id: 0,
            next_update: 0,
            conversations: BTreeMap::new(),
        }
    }
}

impl Conversation {
    /// The conversation as UMS returns it (`GET /conversations/{id}`).
    pub(crate) fn record(&self) -> String {
        let messages: Vec<String> = self
            .messages
            .iter()
            .map(|(role, content)| obj(&[("role", s(role)), ("content", s(content))]))
            .collect();
        obj(&[
            ("id", s(&self.id)),
            ("title", title_json(self.title.as_deref())),
            ("messages", arr(&messages)),
            ("created_at", s(&self.created_at)),
            ("updated_at", s(&self.updated_at)),
        ])
    }
}

/// A conversation title as JSON (`null` when there is none).
pub(crate) fn title_json(title: Option<&str>) -> String {
    title.map_or_else(|| "null".to_owned(), s)
}

/// What the A2A weather agent keeps (`a2a.rs`): a counter for ids, the number of
/// messages of each context, and the tasks waiting for a city (task → context).
#[derive(Debug, Default)]
pub(crate) struct A2aState {
    pub(crate) next: u64,
    pub(crate) turns: std::collections::BTreeMap<String, u64>,
    pub(crate) waiting: std::collections::BTreeMap<String, String>,
}

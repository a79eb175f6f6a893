//! mas-eval: measures whether the coordinator picks the right agents.
//!
//! It runs only the coordination step of the MAS coordinator — the exact
//! request the component sends first (prompt, schema, registry, body, headers,
//! built by the library's own code) — against a DIAL endpoint, for every case
//! of a labelled JSON Lines file, judges each answer with the coordinator's own
//! parsers, and reports accuracy, a confusion matrix by direction, the
//! misrouted cases, fallbacks, flaky cases, latency and tokens
//! (see docs/eval.md).

pub mod cases;
pub mod cli;
pub mod client;
pub mod judge;
pub mod report;
pub mod run;

//! Shared test support.
#![allow(unreachable_pub, dead_code, clippy::unwrap_used)]

pub mod fakes;
pub mod flow;
pub mod host;
/// Sessions driven by hand (tests/sessions.rs, tests/scheduler.rs).
pub mod say;
/// Whole turns end to end: only the e2e tier (the `e2e` feature) runs them.
#[cfg(feature = "e2e")]
pub mod turns;
pub mod wire;

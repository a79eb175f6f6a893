//! Shared test support.
#![allow(unreachable_pub, dead_code, clippy::unwrap_used)]

pub mod fakes;
pub mod flow;
pub mod host;
/// Whole turns end to end: only the e2e tier (the `e2e` feature) runs them.
#[cfg(feature = "e2e")]
pub mod turns;
pub mod wire;

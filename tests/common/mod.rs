//! Shared test support.
#![allow(unreachable_pub, dead_code, clippy::unwrap_used)]

pub mod fakes;
pub mod flow;
pub mod host;
pub mod wire;

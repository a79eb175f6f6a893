//! mas-coordinator: a multi-agent coordinator for EPAM AI DIAL, shipped as a
//! WASI HTTP component (Spin, `wasmtime serve`, any wasi:http host).
//!
//! The tree is the architecture, from the top (see docs/architecture.md):
//!
//! - [`host`] (Wasm only) adapts wasi:http to [`app`], which decides every
//!   answer: endpoints, the body limit, health, refusals, stream or collect.
//! - [`flow`]: one request's steps in order — coordination, the agents'
//!   subtasks (the scheduler), synthesis — each a session run by the one
//!   driver, which alone writes the response.
//! - [`agents`]: the agent kinds, one file and one table row each, as sans-IO
//!   sessions.
//! - [`calls`]: upstream calls and their resilience (failover, the circuit
//!   breaker, timeouts).
//! - [`memory`]: what the coordinator keeps between turns in the message
//!   state, and how that state is signed and trusted.
//! - [`config`]: the configuration and the registry of agents.
//! - [`wire`]: the DIAL wire format.
//!
//! Beside them: the request's shared [`context`], the one [`error`] type,
//! every bound ([`limits`]), the seam to the host ([`client`]), tracing
//! ([`trace`]) and the own-time [`meter`]. Everything except `host` is plain
//! Rust that runs natively in tests.

pub mod agents;
pub mod app;
pub mod calls;
pub mod client;
pub mod config;
pub mod context;
pub mod error;
pub mod flow;
pub mod limits;
pub mod memory;
pub mod meter;
pub mod trace;
pub mod wire;

// spin-sdk's `http_component` macro expands to `unsafe` handle conversions;
// this is the only place the crate allows it.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host;

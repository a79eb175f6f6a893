//! mas-coordinator: a multi-agent coordinator for EPAM AI DIAL, shipped as a
//! WASI HTTP component (Spin, `wasmtime serve`, any wasi:http host).
//!
//! A request goes through three steps (see README "Architecture"):
//! coordination (`routing`), the agents of the registry (`registry`,
//! `agents::dial`, `agents::ums`) and synthesis (`synthesis`), run by
//! `coordinator` through one `driver`, which owns the response (`emitter`,
//! in the DIAL wire format of `dial`) and every upstream call (`calls`).
//! Everything except `host` is plain Rust that runs natively in tests; `host`
//! adapts it to wasi:http and is compiled only for the Wasm target.

pub mod agents;
pub mod app;
pub mod breaker;
pub mod calls;
pub mod client;
pub mod config;
pub mod context;
pub mod coordination;
pub mod coordinator;
pub mod dial;
pub mod driver;
pub mod emitter;
pub mod error;
pub mod health;
pub mod limits;
pub mod memory;
pub mod meter;
pub mod plan;
pub mod registry;
pub mod routing;
pub mod sse;
pub mod state;
pub mod synthesis;
pub mod tasks;
pub mod trace;

// spin-sdk's `http_component` macro expands to `unsafe` handle conversions;
// this is the only place the crate allows it.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host;

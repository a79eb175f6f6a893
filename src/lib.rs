//! mas-coordinator: a multi-agent coordinator for EPAM AI DIAL, shipped as a
//! WASI HTTP component (Spin, `wasmtime serve`, any wasi:http host).
//!
//! A request from DIAL Core goes through three steps (see README "Architecture"):
//! routing (`routing`), the chosen agent (`agents::gpa`, `agents::ums`), and
//! synthesis (`synthesis`), driven by `coordinator` and written by `emitter`
//! in the DIAL wire format (`dial`). Everything except `host` is plain Rust that
//! runs natively in tests; `host` adapts it to wasi:http and is compiled only
//! for the Wasm target.

pub mod agents;
pub mod calls;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod dial;
pub mod emitter;
pub mod error;
pub mod resilience;
pub mod routing;
pub mod sse;
pub mod state;
pub mod synthesis;
pub mod trace;

// spin-sdk's `http_component` macro expands to `unsafe` handle conversions;
// this is the only place the crate allows it.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host;

//! The DIAL wire protocol: the request an application receives, the chunks it
//! streams back, and the merged non-streaming message. Pure code: no I/O, no
//! clock, no randomness (ids and timestamps come in as arguments).

pub mod error;
pub mod form;
pub mod request;
pub mod response;
pub mod sse;
pub mod upstream;
pub mod usage;

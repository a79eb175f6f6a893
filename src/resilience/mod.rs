//! Production behaviour around upstream calls: the circuit breaker state
//! machine and its store. Timeouts and failover live with the calls
//! (`calls.rs`), tracing in `trace.rs`.

pub mod breaker;
pub mod health;

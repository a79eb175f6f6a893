//! "1,000-message history": what a long conversation costs, as the difference
//! between the 1,000-message GPA scenario and the 1-message one (added and
//! coordinated latency, the floor's own extra work, wasmtime's CPU).

use std::fmt::Write as _;

use super::cells::{f3, kib};
use super::results::{LatencyResult, LongHistoryResult, Results};

impl LongHistoryResult {
    pub fn from_runs(runs: &[LatencyResult], short: &str, long: &str) -> Option<LongHistoryResult> {
        let s = runs.iter().find(|r| r.scenario == short)?;
        let l = runs.iter().find(|r| r.scenario == long)?;
        Some(LongHistoryResult {
            short: short.to_owned(),
            long: long.to_owned(),
            request_bytes: l.request_bytes,
            agent_body_bytes: l.agent_body_bytes,
            coordinated_delta_p50_ms: l.coordinated.p50_ms - s.coordinated.p50_ms,
            coordinated_delta_p99_ms: l.coordinated.p99_ms - s.coordinated.p99_ms,
            floor_delta_p50_ms: l.floor.p50_ms - s.floor.p50_ms,
            added_delta_p50_ms: l.added_p50_ms - s.added_p50_ms,
            added_delta_p99_ms: l.added_p99_ms - s.added_p99_ms,
            cpu_delta_ms_per_request: l.wasmtime_cpu_ms_per_request - s.wasmtime_cpu_ms_per_request,
        })
    }
}

pub(super) fn long_table(r: &Results) -> String {
    let Some(h) = &r.long_history else {
        return "Not measured.\n".to_owned();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Request to the coordinator: {}; GPA call body: {}.\n",
        kib(h.request_bytes),
        kib(h.agent_body_bytes)
    );
    s.push_str("| 1,000 messages minus 1 message | p50 | p99 |\n|---|---:|---:|\n");
    let _ = writeln!(
        s,
        "| **added latency (coordinator's own cost)** | **{}** | **{}** |",
        f3(h.added_delta_p50_ms),
        f3(h.added_delta_p99_ms)
    );
    let _ = writeln!(
        s,
        "| coordinated latency (includes the world parsing the bigger bodies) | {} | {} |",
        f3(h.coordinated_delta_p50_ms),
        f3(h.coordinated_delta_p99_ms)
    );
    let _ = writeln!(
        s,
        "| floor latency (the world's own extra work) | {} | |",
        f3(h.floor_delta_p50_ms)
    );
    let _ = writeln!(
        s,
        "| wasmtime CPU per request | {} | |",
        f3(h.cpu_delta_ms_per_request)
    );
    s
}

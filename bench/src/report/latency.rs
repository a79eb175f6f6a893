//! "Latency at 1 client" and "the coordinator's own time, by phase": per
//! scenario the floor, the coordinated request and what it adds (p50 / p99),
//! time to first byte, the kept-alive floor, wasmtime's CPU per request; then
//! the component's own time per phase from its request log lines.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::Results;

pub(super) fn latency_table(r: &Results) -> String {
    let mut s = String::from(
        "| scenario | upstream calls (checked byte for byte) | floor p50 / p99 | coordinated p50 / p99 | **added p50 / p99** | own time p50 / p99 (µs) | TTFB p50 / p99 | floor, kept-alive p50 / p99 | wasmtime CPU / request (kernel share) | other load, cores | requests | failures |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &r.latency {
        let keepalive = if l.floor_keepalive.n == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} / {}",
                f3(l.floor_keepalive.p50_ms),
                f3(l.floor_keepalive.p99_ms)
            )
        };
        let checked = if l.verified_requests == l.upstream_calls {
            "all".to_owned()
        } else {
            l.verified_requests.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {} ({}) | {} / {} | {} / {} | **{} / {}** | {} / {} | {} / {} | {} | {} ({:.0}%) | {:.2} | {} | {} |",
            l.scenario,
            l.upstream_calls,
            checked,
            f3(l.floor.p50_ms),
            f3(l.floor.p99_ms),
            f3(l.coordinated.p50_ms),
            f3(l.coordinated.p99_ms),
            f3(l.added_p50_ms),
            f3(l.added_p99_ms),
            l.own.p50_us,
            l.own.p99_us,
            f3(l.ttfb.p50_ms),
            f3(l.ttfb.p99_ms),
            keepalive,
            f3(l.wasmtime_cpu_ms_per_request),
            l.wasmtime_kernel_share * 100.0,
            l.other_cores,
            l.coordinated.n,
            l.failures
        );
    }
    s
}

/// The own time's phases by scenario (p50 of each phase; they need not add up
/// to the p50 of the total).
pub(super) fn own_time_table(r: &Results) -> String {
    let names: Vec<String> = r
        .latency
        .iter()
        .find(|l| !l.own.phases_p50_us.is_empty())
        .map(|l| l.own.phases_p50_us.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return "(no request line carried its own time)\n".to_owned();
    }
    let mut s = format!(
        "| scenario | own time p50 (µs) | {} | polls p50 | client writes p50 |\n|---|---:|{}---:|---:|\n",
        names.join(" p50 | ") + " p50",
        "---:|".repeat(names.len())
    );
    for l in &r.latency {
        let phases: Vec<String> = names
            .iter()
            .map(|n| {
                l.own
                    .phases_p50_us
                    .iter()
                    .find(|(m, _)| m == n)
                    .map_or("-".to_owned(), |(_, us)| us.to_string())
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            l.scenario,
            l.own.p50_us,
            phases.join(" | "),
            l.own.polls_p50,
            l.own.writes_p50
        );
    }
    s
}

/// Host calls per request by kind (p50 of each), per 1-client scenario; none
/// when no request line counted them. Kinds in the order they first appear
/// across the scenarios, `total` last; `-` where a scenario lacks a kind.
pub(super) fn host_calls_table(r: &Results) -> Option<String> {
    let mut kinds: Vec<&str> = Vec::new();
    for l in &r.latency {
        for (k, _) in &l.own.host_calls_p50 {
            if !kinds.contains(&k.as_str()) {
                kinds.push(k);
            }
        }
    }
    if kinds.is_empty() {
        return None;
    }
    if let Some(at) = kinds.iter().position(|k| *k == "total") {
        let total = kinds.remove(at);
        kinds.push(total);
    }
    let mut s = format!(
        "| scenario | {} |\n|---|{}\n",
        kinds.join(" | "),
        "---:|".repeat(kinds.len())
    );
    for l in r
        .latency
        .iter()
        .filter(|l| !l.own.host_calls_p50.is_empty())
    {
        let cells: Vec<String> = kinds
            .iter()
            .map(|k| {
                l.own
                    .host_calls_p50
                    .iter()
                    .find(|(m, _)| m == k)
                    .map_or("-".to_owned(), |(_, n)| n.to_string())
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", l.scenario, cells.join(" | "));
    }
    Some(s)
}

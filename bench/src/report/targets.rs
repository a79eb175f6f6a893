//! "Targets": the figures the issue set targets for (added latency, time to
//! first byte, CPU per request, throughput at 32 clients, the 1,000-message
//! history, the `.wasm` size), judged when the results are made and stored
//! with them, then shown beside the previous run's verdicts; and the
//! throughput target judged again under the recommended production flag,
//! from the variant run with instance reuse.

use std::fmt::Write as _;

use super::cells::mark;
use super::results::{Results, TargetCheck};

/// Every target judged on `r`, in the order of the report's table.
pub(super) fn targets(r: &Results) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let mut check = |target: &str, figure: String, value: f64, unit: &str, met: bool| {
        out.push(TargetCheck {
            target: target.to_owned(),
            figure,
            value: format!("{value:.3} {unit}").replace(".000 req/s", " req/s"),
            met,
        });
    };
    for s in ["gpa", "ums", "ums_first_turn"] {
        if let Some(l) = r.latency_of(s) {
            check(
                "added latency p50 ≤ 2 ms",
                format!("{s}, 1 client"),
                l.added_p50_ms,
                "ms",
                l.added_p50_ms <= 2.0,
            );
        }
    }
    for s in ["gpa", "ums", "ums_first_turn"] {
        if let Some(l) = r.latency_of(s) {
            check(
                "added latency p99 ≤ 5 ms",
                format!("{s}, 1 client"),
                l.added_p99_ms,
                "ms",
                l.added_p99_ms <= 5.0,
            );
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.latency_of(s) {
            check(
                "time to first byte p50 ≤ 2 ms",
                format!("{s}, 1 client"),
                l.ttfb.p50_ms,
                "ms",
                l.ttfb.p50_ms <= 2.0,
            );
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.latency_of(s) {
            check(
                "CPU per request ≤ 1 ms",
                format!("{s}, wasmtime process, 1 client"),
                l.wasmtime_cpu_ms_per_request,
                "ms",
                l.wasmtime_cpu_ms_per_request <= 1.0,
            );
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.load_of(s, 32) {
            check(
                "CPU per request ≤ 1 ms",
                format!("{s}, wasmtime process, 32 clients"),
                l.wasmtime_cpu_ms_per_request,
                "ms",
                l.wasmtime_cpu_ms_per_request <= 1.0,
            );
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.load_of(s, 32) {
            check(
                "≥ 1,000 req/s at 32 clients",
                format!("{s}, 32 clients"),
                l.requests_per_s.round(),
                "req/s",
                l.requests_per_s >= 1000.0,
            );
        }
    }
    if let Some(h) = &r.long_history {
        check(
            "1,000-message history adds ≤ 5 ms",
            "added latency p50, 1,000 vs 1 message (GPA)".to_owned(),
            h.added_delta_p50_ms,
            "ms",
            h.added_delta_p50_ms <= 5.0,
        );
        check(
            "1,000-message history adds ≤ 5 ms",
            "coordinated latency p50, 1,000 vs 1 message (GPA), upstreams' own extra work included"
                .to_owned(),
            h.coordinated_delta_p50_ms,
            "ms",
            h.coordinated_delta_p50_ms <= 5.0,
        );
    }
    let mib = r.wasm_bytes as f64 / 1024.0 / 1024.0;
    check(
        ".wasm ≤ 1.5 MiB",
        "release component".to_owned(),
        mib,
        "MiB",
        mib <= 1.5,
    );
    out
}

pub(super) fn targets_table(r: &Results) -> String {
    let Some(prev) = &r.previous else {
        let mut s = String::from("| target | figure | measured | |\n|---|---|---:|---|\n");
        for t in &r.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.target,
                t.figure,
                t.value,
                mark(t.met)
            );
        }
        return s;
    };
    let mut s = String::from(
        "| target | figure | measured | | previous run | |\n|---|---|---:|---|---:|---|\n",
    );
    for t in &r.targets {
        let before = prev
            .targets
            .iter()
            .find(|p| p.target == t.target && p.figure == t.figure);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            t.target,
            t.figure,
            t.value,
            mark(t.met),
            before.map_or("-", |p| p.value.as_str()),
            before.map_or("", |p| mark(p.met))
        );
    }
    s
}

/// The throughput target under the recommended production flags
/// (docs/deploying.md, "wasmtime serve": instance reuse), from a variant run of the same benchmark.
pub(super) fn production_throughput(others: &[Results]) -> Option<String> {
    let variant = others
        .iter()
        .find(|o| o.meta.wasmtime_args.contains("--max-instance-reuse-count"))?;
    let mut s = format!(
        "With the recommended production flag (`{}`, the `wasmtime serve` command of docs/deploying.md; the \
variant run below):\n\n| target | figure | measured | |\n|---|---|---:|---|\n",
        variant.meta.wasmtime_args
    );
    for name in ["gpa", "ums"] {
        if let Some(l) = variant.load_of(name, 32) {
            let _ = writeln!(
                s,
                "| ≥ 1,000 req/s at 32 clients | {name}, 32 clients | {:.0} req/s | {} |",
                l.requests_per_s,
                mark(l.requests_per_s >= 1000.0)
            );
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{committed, markdown};

    #[test]
    fn the_throughput_target_is_also_judged_under_the_production_flags() {
        let main = committed();
        let mut variant = committed();
        assert_eq!(
            production_throughput(&[variant.clone()]),
            None,
            "no reuse flag"
        );
        variant.meta.wasmtime_args = "--max-instance-reuse-count 1000".to_owned();
        for l in &mut variant.load {
            l.requests_per_s = if l.scenario == "ums" { 1024.4 } else { 896.0 };
        }
        let md = markdown(&main, &[variant], &crate::workspace_root());
        assert!(
            md.contains("With the recommended production flag (`--max-instance-reuse-count 1000`"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ≥ 1,000 req/s at 32 clients | gpa, 32 clients | 896 req/s | **not met** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| ≥ 1,000 req/s at 32 clients | ums, 32 clients | 1024 req/s | met |"),
            "{md}"
        );
    }
}

//! "Targets": the figures the issues set targets for (added latency, time to
//! first byte, CPU per request in milliseconds and against the host floor,
//! the component's own time, its host calls, throughput at 32 clients with
//! instance reuse, the 1,000-message history, the `.wasm` size), judged when
//! the results are made and stored with them, then shown beside the previous
//! run's verdicts. The floor ratios, own time and history are judged again on
//! the run with instance reuse when one is compared.
//! A missed target points to the paragraph of `bench/observations.md` that
//! explains it.

use std::fmt::Write as _;

use super::cells::mark;
use super::results::{Results, TargetCheck};

/// The flag that makes `wasmtime serve` reuse instances (docs/deploying.md).
pub(super) const REUSE_FLAG: &str = "--max-instance-reuse-count";

/// How far the coordinator's CPU per request may be above the host floor's
/// four exchanges.
pub(super) const FLOOR_CPU_RATIO: f64 = 1.7;

/// The throughput target (requests/s at 32 clients, with instance reuse).
pub(super) const REUSE_THROUGHPUT: f64 = 1500.0;

/// The most wasi host calls a GPA request may make (the component's own
/// count, `host_calls.total` of its log line).
pub(super) const HOST_CALLS: u64 = 100;

/// Every target judged on `r` (and on the run with instance reuse among
/// `others`: throughput, and the floor ratios, own time and long history
/// judged again there), in the order of the report's table.
pub(super) fn targets(r: &Results, others: &[Results]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for s in ["gpa", "ums", "ums_first_turn"] {
        if let Some(l) = r.latency_of(s) {
            out.push(judged(
                "added latency p50 ≤ 2 ms",
                format!("{s}, 1 client"),
                l.added_p50_ms,
                "ms",
                l.added_p50_ms <= 2.0,
            ));
        }
    }
    for s in ["gpa", "ums", "ums_first_turn"] {
        if let Some(l) = r.latency_of(s) {
            out.push(judged(
                "added latency p99 ≤ 5 ms",
                format!("{s}, 1 client"),
                l.added_p99_ms,
                "ms",
                l.added_p99_ms <= 5.0,
            ));
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.latency_of(s) {
            out.push(judged(
                "time to first byte p50 ≤ 2 ms",
                format!("{s}, 1 client"),
                l.ttfb.p50_ms,
                "ms",
                l.ttfb.p50_ms <= 2.0,
            ));
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.latency_of(s) {
            out.push(judged(
                "CPU per request ≤ 1 ms",
                format!("{s}, wasmtime process, 1 client"),
                l.wasmtime_cpu_ms_per_request,
                "ms",
                l.wasmtime_cpu_ms_per_request <= 1.0,
            ));
        }
    }
    for s in ["gpa", "ums"] {
        if let Some(l) = r.load_of(s, 32) {
            out.push(judged(
                "CPU per request ≤ 1 ms",
                format!("{s}, wasmtime process, 32 clients"),
                l.wasmtime_cpu_ms_per_request,
                "ms",
                l.wasmtime_cpu_ms_per_request <= 1.0,
            ));
        }
    }
    out.extend(floor_ratios(r, ""));
    out.extend(own_times(r, ""));
    let gpa_calls = r.latency_of("gpa").and_then(|l| {
        l.own
            .host_calls_p50
            .iter()
            .find(|(kind, _)| kind == "total")
    });
    if let Some((_, calls)) = gpa_calls {
        out.push(TargetCheck {
            target: format!("≤ {HOST_CALLS} host calls per GPA request"),
            figure: "gpa, 1 client, p50 (`host_calls.total`)".to_owned(),
            value: calls.to_string(),
            met: *calls <= HOST_CALLS,
            info: false,
        });
    }
    let reused = r.meta.wasmtime_args.contains(REUSE_FLAG);
    let reuse_run = if reused {
        Some(r)
    } else {
        others
            .iter()
            .find(|o| o.meta.wasmtime_args.contains(REUSE_FLAG))
    };
    // The same judged on the run with instance reuse (not when this is it).
    let reuse_rows = match reuse_run {
        Some(v) if !reused => {
            let flags = format!(", `{}`", v.meta.wasmtime_args);
            let mut rows = floor_ratios(v, &flags);
            rows.extend(own_times(v, &flags));
            rows.extend(history(v, &flags));
            rows
        }
        _ => Vec::new(),
    };
    if let Some(v) = reuse_run {
        for s in ["gpa", "ums"] {
            if let Some(l) = v.load_of(s, 32) {
                out.push(judged(
                    "≥ 1,500 req/s at 32 clients with instance reuse",
                    format!("{s}, 32 clients, `{}`", v.meta.wasmtime_args),
                    l.requests_per_s.round(),
                    "req/s",
                    l.requests_per_s >= REUSE_THROUGHPUT,
                ));
            }
        }
    }
    if !reused {
        for s in ["gpa", "ums"] {
            if let Some(l) = r.load_of(s, 32) {
                out.push(TargetCheck {
                    target: "req/s at 32 clients, wasmtime's defaults (for information)".to_owned(),
                    figure: format!("{s}, 32 clients"),
                    value: format!("{:.0} req/s", l.requests_per_s),
                    met: true,
                    info: true,
                });
            }
        }
    }
    out.extend(history(r, ""));
    out.extend(reuse_rows);
    let mib = r.wasm_bytes as f64 / 1024.0 / 1024.0;
    out.push(judged(
        ".wasm ≤ 1.5 MiB",
        "release component".to_owned(),
        mib,
        "MiB",
        mib <= 1.5,
    ));
    out
}

/// Our CPU per request against the floor of the same host and flags: four
/// exchanges (GPA and the UMS follow-up both make three upstream calls).
/// `flags` ends each figure (the run's `wasmtime serve` flags when they are
/// not the main run's).
fn floor_ratios(r: &Results, flags: &str) -> Vec<TargetCheck> {
    let Some(f) = r.wasmtime_floor() else {
        return Vec::new();
    };
    let cases = ["gpa", "ums"]
        .into_iter()
        .filter_map(|s| Some((s, "1 client", r.latency_of(s)?.wasmtime_cpu_ms_per_request)))
        .map(|(s, c, cpu)| (s, c, cpu, f.derived.four_cpu_ms))
        .chain(["gpa", "ums"].into_iter().filter_map(|s| {
            let cpu = r.load_of(s, 32)?.wasmtime_cpu_ms_per_request;
            Some((s, "32 clients", cpu, f.derived.four_cpu_ms_32))
        }));
    let mut out = Vec::new();
    for (s, clients, cpu, floor) in cases {
        let ratio = if floor > 0.0 {
            cpu / floor
        } else {
            f64::INFINITY
        };
        out.push(TargetCheck {
            target: format!("CPU per request ≤ {FLOOR_CPU_RATIO}× the four-exchange floor"),
            figure: format!("{s}, wasmtime process, {clients}{flags}"),
            value: format!("{ratio:.2}× ({cpu:.3} / {floor:.3} ms)"),
            met: ratio <= FLOOR_CPU_RATIO,
            info: false,
        });
    }
    out
}

/// The component's own time, p50, of the 1-message requests.
fn own_times(r: &Results, flags: &str) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for s in ["gpa", "ums_first_turn"] {
        if let Some(l) = r.latency_of(s).filter(|l| l.own.n > 0) {
            let ms = l.own.p50_us as f64 / 1e3;
            out.push(judged(
                "own time p50 ≤ 0.25 ms, 1-message request",
                format!("{s}, 1 client{flags}"),
                ms,
                "ms",
                ms <= 0.25,
            ));
        }
    }
    out
}

/// What a 1,000-message history adds.
fn history(r: &Results, flags: &str) -> Vec<TargetCheck> {
    let Some(h) = &r.long_history else {
        return Vec::new();
    };
    vec![
        judged(
            "1,000-message history adds ≤ 5 ms",
            format!("added latency p50, 1,000 vs 1 message (GPA){flags}"),
            h.added_delta_p50_ms,
            "ms",
            h.added_delta_p50_ms <= 5.0,
        ),
        judged(
            "1,000-message history adds ≤ 5 ms",
            format!(
                "coordinated latency p50, 1,000 vs 1 message (GPA), upstreams' own extra work included{flags}"
            ),
            h.coordinated_delta_p50_ms,
            "ms",
            h.coordinated_delta_p50_ms <= 5.0,
        ),
    ]
}

/// A judged target: `value` with three decimals and its unit (req/s whole).
fn judged(target: &str, figure: String, value: f64, unit: &str, met: bool) -> TargetCheck {
    TargetCheck {
        target: target.to_owned(),
        figure,
        value: format!("{value:.3} {unit}").replace(".000 req/s", " req/s"),
        met,
        info: false,
    }
}

/// The paragraph of `bench/observations.md` (its bold title) that explains
/// why a target is missed.
pub(super) fn explained_in(target: &str) -> Option<&'static str> {
    let t = target;
    if t.starts_with("added latency") || t.starts_with("time to first byte") {
        Some("Where a short request's time goes")
    } else if t.contains("four-exchange floor") {
        Some("The floor ratios, now")
    } else if t.starts_with("CPU per request") {
        Some("CPU per request, now")
    } else if t.contains("host calls") {
        Some("Host calls, now")
    } else if t.starts_with("own time") {
        Some("Own time, now")
    } else if t.contains("req/s") {
        Some("Throughput, now")
    } else if t.starts_with("1,000-message history") {
        Some("Long histories, now")
    } else {
        None
    }
}

/// A target's verdict: met, for information, or not met with where the
/// reason is written down.
fn verdict(t: &TargetCheck) -> String {
    if t.info {
        return "for information".to_owned();
    }
    if t.met {
        return mark(true).to_owned();
    }
    let link = "see [bench/observations.md](bench/observations.md)";
    match explained_in(&t.target) {
        Some(title) => format!("{}: {link}, *{title}*", mark(false)),
        None => format!("{}: {link}", mark(false)),
    }
}

/// The previous run's verdict, without the pointer (the row has it).
fn short_verdict(t: &TargetCheck) -> &'static str {
    if t.info {
        ""
    } else {
        mark(t.met)
    }
}

pub(super) fn targets_table(r: &Results) -> String {
    let mut s = match &r.previous {
        None => {
            let mut s = String::from("| target | figure | measured | |\n|---|---|---:|---|\n");
            for t in &r.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    t.target,
                    t.figure,
                    t.value,
                    verdict(t)
                );
            }
            s
        }
        Some(prev) => {
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
                    verdict(t),
                    before.map_or("-", |p| p.value.as_str()),
                    before.map_or("", short_verdict)
                );
            }
            s
        }
    };
    if !r
        .targets
        .iter()
        .any(|t| t.target.contains("instance reuse"))
    {
        let _ = writeln!(
            s,
            "\nThe throughput target (≥ 1,500 req/s at 32 clients) is judged on a run with \
instance reuse (`{REUSE_FLAG} 1000`, the variant run of `scripts/bench.sh`): none was given."
        );
    }
    if r.wasmtime_floor().is_none() && !r.targets.is_empty() {
        let _ = writeln!(
            s,
            "\nThe CPU target against the host floor is not judged: this run measured no floor."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{committed, markdown};

    #[test]
    fn the_throughput_target_is_judged_on_the_run_with_instance_reuse() {
        let main = committed();
        let mut variant = committed();
        variant.meta.wasmtime_args = String::new();
        assert!(
            !targets(&main, &[variant.clone()])
                .iter()
                .any(|t| t.target.contains("instance reuse")),
            "no reuse flag"
        );
        variant.meta.wasmtime_args = "--max-instance-reuse-count 1000".to_owned();
        for l in &mut variant.load {
            l.requests_per_s = if l.scenario == "ums" { 1524.4 } else { 896.0 };
        }
        let mut judged = main.clone();
        judged.targets = targets(&main, &[variant.clone()]);
        let md = markdown(&judged, &[variant]);
        assert!(
            md.contains(
                "| ≥ 1,500 req/s at 32 clients with instance reuse | gpa, 32 clients, `--max-instance-reuse-count 1000` | 896 req/s | **not met**: see [bench/observations.md](bench/observations.md), *Throughput, now* |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| ≥ 1,500 req/s at 32 clients with instance reuse | ums, 32 clients, `--max-instance-reuse-count 1000` | 1524 req/s | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| req/s at 32 clients, wasmtime's defaults (for information) | gpa, 32 clients |"
            ),
            "{md}"
        );
        // The floor ratios, own time and long history are judged on the
        // reuse run too, against its own floor, its flags in the figure.
        let reuse = ", `--max-instance-reuse-count 1000`";
        let long = main
            .long_history
            .as_ref()
            .expect("long history")
            .added_delta_p50_ms;
        let row = |target: &str, figure: String| {
            judged
                .targets
                .iter()
                .find(|t| t.target == target && t.figure == figure)
                .cloned()
        };
        let h = row(
            "1,000-message history adds ≤ 5 ms",
            format!("added latency p50, 1,000 vs 1 message (GPA){reuse}"),
        )
        .expect("the reuse run's history row");
        assert_eq!(h.value, format!("{long:.3} ms"));
        assert_eq!(h.met, long <= 5.0);
        assert!(row(
            "CPU per request ≤ 1.7× the four-exchange floor",
            format!("gpa, wasmtime process, 1 client{reuse}")
        )
        .is_some());
        assert!(row(
            "own time p50 ≤ 0.25 ms, 1-message request",
            format!("gpa, 1 client{reuse}")
        )
        .is_some());
        // Judged on the reuse run itself, nothing is judged twice.
        let mut reuse_run = committed();
        reuse_run.meta.wasmtime_args = "--max-instance-reuse-count 1000".to_owned();
        let own = targets(&reuse_run, &[]);
        assert!(!own
            .iter()
            .any(|t| !t.target.contains("req/s") && t.figure.ends_with(reuse)));
    }

    /// Every paragraph a missed target points to is in bench/observations.md.
    #[test]
    fn missed_targets_point_to_paragraphs_that_exist() {
        let notes = std::fs::read_to_string(crate::workspace_root().join("bench/observations.md"))
            .expect("bench/observations.md");
        let mut r = committed();
        r.targets = targets(&r, &[]);
        for t in &r.targets {
            if let Some(title) = explained_in(&t.target) {
                assert!(
                    notes.contains(&format!("**{title}")),
                    "{}: no paragraph **{title}... in bench/observations.md",
                    t.target
                );
            }
        }
        assert_eq!(
            explained_in("CPU per request ≤ 1.7× the four-exchange floor"),
            Some("The floor ratios, now")
        );
    }

    #[test]
    fn the_host_calls_of_a_gpa_request_are_judged_on_their_p50_total() {
        let mut r = committed();
        let gpa = r.latency.iter_mut().find(|l| l.scenario == "gpa").unwrap();
        gpa.own.host_calls_p50 = vec![("http".to_owned(), 80), ("total".to_owned(), 367)];
        r.targets = targets(&r, &[]);
        let md = markdown(&r, &[]);
        assert!(
            md.contains(
                "| ≤ 100 host calls per GPA request | gpa, 1 client, p50 (`host_calls.total`) | 367 | **not met**: see [bench/observations.md](bench/observations.md), *Host calls, now* |"
            ),
            "{md}"
        );
        let gpa = r.latency.iter_mut().find(|l| l.scenario == "gpa").unwrap();
        gpa.own.host_calls_p50 = vec![("total".to_owned(), 100)];
        let judged = targets(&r, &[]);
        let calls = judged
            .iter()
            .find(|t| t.target.contains("host calls"))
            .unwrap();
        assert_eq!((calls.value.as_str(), calls.met), ("100", true));
        // A run whose log lines had no host calls judges nothing.
        let gpa = r.latency.iter_mut().find(|l| l.scenario == "gpa").unwrap();
        gpa.own.host_calls_p50.clear();
        assert!(!targets(&r, &[])
            .iter()
            .any(|t| t.target.contains("host calls")));
    }
}

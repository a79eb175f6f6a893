//! "wasmtime serve variants": this run beside the runs given with `--compare`
//! (other `wasmtime serve` flags), one row of key figures each.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::{LatencyResult, Results};

pub(super) fn run_label(r: &Results) -> String {
    r.meta.label.clone().unwrap_or_else(|| {
        if r.meta.wasmtime_args.is_empty() {
            "defaults".to_owned()
        } else {
            format!("`{}`", r.meta.wasmtime_args)
        }
    })
}

pub(super) fn compare_table(main: &Results, others: &[Results]) -> String {
    let mut s = String::from(
        "| wasmtime serve flags | GPA added p50 / p99 | UMS added p50 / p99 | GPA TTFB p50 | GPA CPU / req (1 client) | `/health` p50 / CPU | GPA req/s @8 / 32 / 128 | UMS req/s @32 | GPA CPU / req @32 | peak RSS | failures |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in std::iter::once(main).chain(others) {
        let lat = |sc: &str| r.latency_of(sc);
        let rps = |sc: &str, c: usize| {
            r.load_of(sc, c)
                .map_or_else(|| "-".to_owned(), |l| format!("{:.0}", l.requests_per_s))
        };
        let pair = |l: Option<&LatencyResult>| {
            l.map_or_else(
                || "-".to_owned(),
                |l| format!("{} / {}", f3(l.added_p50_ms), f3(l.added_p99_ms)),
            )
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} / {} | {} / {} / {} | {} | {} | {:.1} MiB | {} |",
            run_label(r),
            if r.meta.quick { " (quick)" } else { "" },
            pair(lat("gpa")),
            pair(lat("ums")),
            lat("gpa").map_or_else(|| "-".to_owned(), |l| f3(l.ttfb.p50_ms)),
            lat("gpa").map_or_else(|| "-".to_owned(), |l| f3(l.wasmtime_cpu_ms_per_request)),
            f3(r.health.latency.p50_ms),
            f3(r.health.wasmtime_cpu_ms_per_request),
            rps("gpa", 8),
            rps("gpa", 32),
            rps("gpa", 128),
            rps("ums", 32),
            r.load_of("gpa", 32)
                .map_or_else(|| "-".to_owned(), |l| f3(l.wasmtime_cpu_ms_per_request)),
            r.wasmtime_peak_rss_kib as f64 / 1024.0,
            r.failures_total
        );
    }
    s
}

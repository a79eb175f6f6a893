//! "What moved since the previous run": the key figures a reader compares
//! between runs (added latency, own time, polls, writes and host calls, CPU
//! per request, req/s, the long history's cost, the host floor, the
//! component's size), kept from the
//! results file a new run replaces and shown beside this run's with the
//! change in percent.

use std::fmt::Write as _;

use super::results::{Figure, PreviousRun, Results};

impl PreviousRun {
    pub fn of(r: &Results) -> PreviousRun {
        PreviousRun {
            date: r.meta.date.clone(),
            source: r.meta.source.clone(),
            command: r.meta.command.clone(),
            wasmtime_args: r.meta.wasmtime_args.clone(),
            targets: r.targets.clone(),
            figures: key_figures(r),
        }
    }
}

/// The figures a reader compares between runs: per scenario the added
/// latency, the own time, polls, writes, host calls and CPU; per load level
/// req/s and CPU; the long history's cost; the host floor under this run's
/// flags (the host's own speed moves between runs too); the component's size.
pub fn key_figures(r: &Results) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut add = |name: String, unit: &str, value: f64| {
        out.push(Figure {
            name,
            unit: unit.to_owned(),
            value,
        });
    };
    for l in &r.latency {
        let s = &l.scenario;
        add(format!("{s}: added latency p50"), "ms", l.added_p50_ms);
        add(format!("{s}: added latency p99"), "ms", l.added_p99_ms);
        if l.own.n > 0 {
            add(format!("{s}: own time p50"), "µs", l.own.p50_us as f64);
        }
        if l.own.polls_p50 > 0 {
            add(format!("{s}: polls p50"), "", l.own.polls_p50 as f64);
            add(
                format!("{s}: client writes p50"),
                "",
                l.own.writes_p50 as f64,
            );
        }
        if let Some((_, total)) = l.own.host_calls_p50.iter().find(|(k, _)| k == "total") {
            add(format!("{s}: host calls p50"), "", *total as f64);
        }
        add(
            format!("{s}: wasmtime CPU / request, 1 client"),
            "ms",
            l.wasmtime_cpu_ms_per_request,
        );
    }
    for l in &r.load {
        let s = format!("{} @ {} clients", l.scenario, l.clients);
        add(format!("{s}: req/s"), "req/s", l.requests_per_s.round());
        add(
            format!("{s}: wasmtime CPU / request"),
            "ms",
            l.wasmtime_cpu_ms_per_request,
        );
    }
    if let Some(h) = &r.long_history {
        add(
            "1,000 vs 1 message: added latency p50".to_owned(),
            "ms",
            h.added_delta_p50_ms,
        );
    }
    if let Some(f) = r.wasmtime_floor() {
        add(
            "host floor: fixed CPU / request, 1 client".to_owned(),
            "ms",
            f.fixed_cpu_ms_per_request,
        );
        add(
            "host floor: four exchanges' CPU / request, 1 client".to_owned(),
            "ms",
            f.derived.four_cpu_ms,
        );
        add(
            "host floor: four exchanges' latency p50".to_owned(),
            "ms",
            f.derived.four_p50_ms,
        );
    }
    add(
        ".wasm size".to_owned(),
        "MiB",
        r.wasm_bytes as f64 / 1024.0 / 1024.0,
    );
    out
}

pub(super) fn value_text(value: f64, unit: &str) -> String {
    let number = match unit {
        "req/s" | "µs" | "" => format!("{value:.0}"),
        _ => format!("{value:.3}"),
    };
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

/// Every key figure of this run beside the previous run's.
pub(super) fn moved_table(r: &Results, prev: &PreviousRun) -> String {
    let mut s =
        String::from("| figure | previous run | this run | change |\n|---|---:|---:|---:|\n");
    for now in key_figures(r) {
        let before = prev.figures.iter().find(|f| f.name == now.name);
        let change = match before {
            Some(b) if b.value != 0.0 => {
                format!("{:+.0} %", (now.value - b.value) / b.value.abs() * 100.0)
            }
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            now.name,
            before.map_or("-".to_owned(), |b| value_text(b.value, &b.unit)),
            value_text(now.value, &now.unit),
            change
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::cells::mark;
    use crate::report::{committed, load, markdown, save};

    #[test]
    fn the_report_puts_the_previous_run_beside_this_one() {
        let mut now = committed();
        let mut before = committed();
        before.meta.date = "2026-11-30 10:00:00 UTC".to_owned();
        before.latency[0].added_p50_ms = now.latency[0].added_p50_ms * 2.0;
        before.targets[0].value = "9.999 ms".to_owned();
        before.targets[0].met = false;
        now.previous = Some(PreviousRun::of(&before));
        let md = markdown(&now, &[]);
        assert!(md.contains("## What moved since the previous run"), "{md}");
        assert!(
            md.contains("The previous run: 2026-11-30 10:00:00 UTC"),
            "{md}"
        );
        let scenario = &now.latency[0].scenario;
        let row = format!(
            "| {scenario}: added latency p50 | {:.3} ms | {:.3} ms | -50 % |",
            before.latency[0].added_p50_ms, now.latency[0].added_p50_ms
        );
        assert!(md.contains(&row), "{row} in {md}");
        let t = &now.targets[0];
        let target_row = format!(
            "| {} | {} | {} | {} | 9.999 ms | **not met** |",
            t.target,
            t.figure,
            t.value,
            mark(t.met)
        );
        assert!(md.contains(&target_row), "{target_row} in {md}");
        // Without a previous run the tables keep their plain form.
        now.previous = None;
        let plain = markdown(&now, &[]);
        assert!(!plain.contains("## What moved since the previous run"));
        assert!(plain.contains("| target | figure | measured | |\n"));
    }

    #[test]
    fn a_previous_run_survives_the_results_file() {
        let mut r = committed();
        r.previous = Some(PreviousRun::of(&committed()));
        let path = std::env::temp_dir().join(format!("mas-bench-prev-{}.json", std::process::id()));
        save(&path, &r).unwrap();
        let back = load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let prev = back.previous.expect("kept");
        let want = key_figures(&r);
        assert_eq!(prev.figures.len(), want.len());
        for (got, want) in prev.figures.iter().zip(&want) {
            assert_eq!((&got.name, &got.unit), (&want.name, &want.unit));
            assert!((got.value - want.value).abs() <= 1e-9 * want.value.abs().max(1.0));
        }
        assert!(prev
            .figures
            .iter()
            .any(|f| f.name == "gpa @ 32 clients: req/s" && f.unit == "req/s"));
    }
}

//! "Host floor": what the host alone costs per HTTP exchange, from the two
//! bench-only components of `bench/floor` served like the coordinator, under
//! each host configuration (this run's `wasmtime serve` flags, the variant
//! run's, `spin up`); the four exchanges of a coordinated GPA request derived
//! from them, and the coordinator's GPA figures beside them, as ratios.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::{FloorResult, HostFloor, Results, WASMTIME_SERVE};

/// `relay`'s added latency (ms) from which a Spin row is read as waiting
/// for delayed ACKs.
const SPIN_STALL_MS: f64 = 20.0;

/// Takes the `wasmtime serve` floor rows of the runs given with `--compare`
/// (each run's own row, under its own flags) into `results`, so that the
/// results file holds every row its report shows.
pub fn adopt_floors(results: &mut Results, others: &[Results]) {
    for other in others {
        let Some(row) = other.wasmtime_floor() else {
            continue;
        };
        let floor = results.floor.get_or_insert_with(FloorResult::default);
        let known = floor
            .rows
            .iter()
            .any(|f| f.host == row.host && f.flags == row.flags);
        if !known {
            floor.rows.push(row.clone());
        }
    }
}

/// `wasmtime serve, defaults`, `wasmtime serve, \`FLAGS\``, `spin up`.
fn host_label(f: &HostFloor) -> String {
    let quick = if f.quick { " (quick)" } else { "" };
    if f.host != WASMTIME_SERVE {
        format!("{}{quick}", f.host)
    } else if f.flags.is_empty() {
        format!("{}, defaults{quick}", f.host)
    } else {
        format!("{}, `{}`{quick}", f.host, f.flags)
    }
}

/// `value (ratio×)` of the coordinator's figure against the floor's.
fn against(ours: Option<f64>, floor: f64) -> String {
    match ours {
        None => "-".to_owned(),
        Some(v) if floor > 0.0 => format!("{} ({:.2}×)", f3(v), v / floor),
        Some(v) => format!("{} (-)", f3(v)),
    }
}

pub(super) fn floor_tables(f: &FloorResult) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "**Host floor: skipped** ({why}).\n");
    }
    if let Some(why) = &f.spin_skipped {
        let _ = writeln!(s, "**spin up: skipped** ({why}).\n");
    }
    if f.rows.is_empty() {
        s.truncate(s.trim_end().len());
        s.push('\n');
        return s;
    }
    s.push_str(
        "| host | `fixed` p50 / p99 | `fixed` CPU / request | `fixed` @32: req/s (CPU / request) | direct GPA call p50 | `relay` p50 | `relay` added over direct p50 / p99 | `relay` CPU / request | `relay` @32: req/s (CPU / request) | other load, cores | failures |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &f.rows {
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {:.0} ({}) | {} | {} | {} / {} | {} | {:.0} ({}) | {:.2} | {} |",
            host_label(r),
            f3(r.fixed.p50_ms),
            f3(r.fixed.p99_ms),
            f3(r.fixed_cpu_ms_per_request),
            r.fixed_load.requests_per_s,
            f3(r.fixed_load.cpu_ms_per_request),
            f3(r.direct.p50_ms),
            f3(r.relay.p50_ms),
            f3(r.relay_added_p50_ms),
            f3(r.relay_added_p99_ms),
            f3(r.relay_cpu_ms_per_request),
            r.relay_load.requests_per_s,
            f3(r.relay_load.cpu_ms_per_request),
            r.other_cores,
            r.failures
        );
    }
    s.push_str(
        "\nThe four exchanges of a coordinated GPA request (the inbound one and three outbound: \
coordination, the agent, synthesis) and the coordinator's GPA figures under the same host \
and flags, with their ratio to the floor:\n\n\
| host | one outbound exchange: CPU / request, 1 / 32 clients | one outbound exchange: latency p50 | **four exchanges: CPU / request, 1 client** | four exchanges: CPU / request @32 | **four exchanges: latency p50** | our GPA CPU / request, 1 client (× floor) | our GPA CPU / request @32 (× floor) | our GPA added p50 (× floor) |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut clamped = false;
    for r in &f.rows {
        let d = &r.derived;
        let outbound_latency = if d.outbound_p50_measured_ms < 0.0 {
            clamped = true;
            format!(
                "{} (measured {}, clamped)",
                f3(0.0),
                f3(d.outbound_p50_measured_ms)
            )
        } else {
            f3(d.outbound_p50_ms)
        };
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | **{}** | {} | **{}** | {} | {} | {} |",
            host_label(r),
            f3(d.outbound_cpu_ms),
            f3(d.outbound_cpu_ms_32),
            outbound_latency,
            f3(d.four_cpu_ms),
            f3(d.four_cpu_ms_32),
            f3(d.four_p50_ms),
            against(r.gpa.cpu_ms_1_client, d.four_cpu_ms),
            against(r.gpa.cpu_ms_32_clients, d.four_cpu_ms_32),
            against(r.gpa.added_p50_ms, d.four_p50_ms),
        );
    }
    // Spin 4.0.2's listener sets no TCP_NODELAY: on a kept-alive connection
    // every write of a streamed answer after the first waits for the client's
    // delayed ACK. `fixed` answers in one write, `relay` streams.
    for r in f.rows.iter().filter(|r| r.host == "spin up") {
        if r.relay_added_p50_ms >= SPIN_STALL_MS {
            let _ = writeln!(
                s,
                "\nUnder `{}`, `relay` adds {} ms over the direct call at p50: on a kept-alive \
connection Spin sends each write of a streamed answer after the first only once the client \
has acknowledged the one before (no `TCP_NODELAY` on its listener; a delayed ACK is about \
40 ms; bench/observations.md, *Spin 4.0.2*). `fixed` answers in one write and does not wait, \
`relay` streams as the coordinator does, so this row's outbound-exchange latency is mostly that \
wait, not the outbound call.",
                host_label(r),
                f3(r.relay_added_p50_ms)
            );
        }
    }
    if clamped {
        s.push_str(
            "\nClamped: where `relay` p50 − direct p50 − `fixed` p50 came out negative (the \
three are measured separately and each varies), one outbound exchange's latency counts as 0 \
and the four exchanges' latency as `fixed` p50 alone.\n",
        );
    }
    s
}

/// The floor's rows that failed requests, for the report's failures list.
pub(super) fn floor_errors(r: &Results) -> Vec<String> {
    r.floor
        .iter()
        .flat_map(|f| &f.rows)
        .flat_map(|row| {
            row.errors
                .iter()
                .map(move |e| format!("host floor, {}: {e}", host_label(row)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::committed;

    #[test]
    fn the_variant_runs_floor_row_is_taken_once() {
        let fixtures = crate::workspace_root().join("bench/fixtures/results.json");
        let full = crate::report::load(&fixtures).expect("fixture");
        let mine = full.wasmtime_floor().expect("a wasmtime row").clone();
        let mut variant = full.clone();
        variant.meta.wasmtime_args = "--max-instance-reuse-count 1000".to_owned();
        let mut row = mine.clone();
        row.flags = variant.meta.wasmtime_args.clone();
        row.fixed_cpu_ms_per_request = 0.123;
        variant.floor = Some(FloorResult {
            rows: vec![row],
            ..FloorResult::default()
        });
        let mut main = committed();
        main.floor = Some(FloorResult {
            rows: vec![mine],
            ..FloorResult::default()
        });
        adopt_floors(&mut main, &[variant.clone()]);
        adopt_floors(&mut main, &[variant]);
        let rows = &main.floor.as_ref().expect("floor").rows;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[1].flags, "--max-instance-reuse-count 1000");
        assert!((rows[1].fixed_cpu_ms_per_request - 0.123).abs() < 1e-12);
        let table = floor_tables(main.floor.as_ref().expect("floor"));
        assert!(
            table.contains("| wasmtime serve, `--max-instance-reuse-count 1000` | "),
            "{table}"
        );
    }
}

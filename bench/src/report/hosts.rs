//! "Hosts and client connections": `gpa` and `ums` at 1 client under
//! `wasmtime serve` and `spin up`, on kept-alive and on new connections, with
//! the host's CPU per request and its busiest process; or why Spin was
//! skipped.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::HostsResult;

pub(super) fn hosts_table(h: &HostsResult) -> String {
    let mut s = String::new();
    if let Some(version) = &h.spin_version {
        let _ = writeln!(
            s,
            "Spin: `{version}` (the binary given by `--spin`, `$SPIN` or the PATH; where no \
             registry has Spin, as on the machine of the committed run, it is built from Spin's \
             tagged sources, see bench/observations.md, *Spin 4.0.2*; it is never committed).\n"
        );
    }
    if let Some(why) = &h.spin_skipped {
        let _ = writeln!(s, "**spin up: skipped** ({why}).\n");
    }
    s.push_str(
        "| host | client connections | scenario | floor p50 | coordinated p50 / p99 | added p50 / p99 | host CPU / request | busiest process (CPU / request) | failures |\n\
|---|---|---|---:|---:|---:|---:|---|---:|\n",
    );
    for r in &h.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} | **{} / {}** | {} | {} ({}) | {} |",
            r.host,
            r.connections,
            r.scenario,
            f3(r.floor.p50_ms),
            f3(r.coordinated.p50_ms),
            f3(r.coordinated.p99_ms),
            f3(r.added_p50_ms),
            f3(r.added_p99_ms),
            f3(r.cpu_ms_per_request),
            r.busiest_process,
            f3(r.busiest_cpu_ms_per_request),
            r.failures
        );
    }
    s
}

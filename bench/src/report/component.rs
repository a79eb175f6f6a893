//! "Component size and instantiation": the release `.wasm` size, spawn to
//! the first `GET /health` with and without the compile cache, the cost of
//! `GET /health` itself, and wasmtime's peak RSS.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::Results;

pub(super) fn component_table(r: &Results) -> String {
    let mut s = String::from("| figure | value |\n|---|---:|\n");
    let _ = writeln!(
        s,
        "| release `.wasm` size | {} bytes ({:.3} MiB) |",
        r.wasm_bytes,
        r.wasm_bytes as f64 / 1024.0 / 1024.0
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "| spawn → first `GET /health` 200, `-C cache=n` (compile every start), median | {:.0} ms (runs: {} ms) |",
        r.startup.no_cache_median_ms,
        list(&r.startup.no_cache_ms)
    );
    let _ = writeln!(
        s,
        "| spawn → first `GET /health` 200, default compile cache, median | {:.0} ms (runs: {} ms) |",
        r.startup.cached_median_ms,
        list(&r.startup.cached_ms)
    );
    let h = &r.health;
    let _ = writeln!(
        s,
        "| `GET /health` at 1 client (fresh instance per request) p50 / p99 | {} / {} ms ({} requests) |",
        f3(h.latency.p50_ms),
        f3(h.latency.p99_ms),
        h.latency.n
    );
    let _ = writeln!(
        s,
        "| `GET /health` wasmtime CPU per request (kernel share) | {} ms ({:.0}%) |",
        f3(h.wasmtime_cpu_ms_per_request),
        h.wasmtime_kernel_share * 100.0
    );
    let _ = writeln!(
        s,
        "| wasmtime peak RSS (VmHWM) after the 1-client runs | {:.1} MiB |",
        r.wasmtime_rss_after_latency_kib as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "| wasmtime peak RSS (VmHWM) after the 128-client runs | {:.1} MiB |",
        r.wasmtime_peak_rss_kib as f64 / 1024.0
    );
    s
}

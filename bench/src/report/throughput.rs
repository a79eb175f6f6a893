//! "Throughput": each load level (clients × scenario) with req/s, the latency
//! distribution and where the CPU went (wasmtime, the world, the benchmark
//! client, interrupts, other processes).

use std::fmt::Write as _;

use super::cells::f3;
use super::results::Results;

pub(super) fn load_table(r: &Results) -> String {
    let mut s = String::from(
        "| scenario | clients | req/s | p50 | p90 | p99 | max | wasmtime CPU / request (kernel share) | wasmtime cores | world cores | world CPU / request | bench client cores | interrupts cores | other load, cores | requests | failures |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &r.load {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} ({:.0}%) | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
            l.scenario,
            l.clients,
            l.requests_per_s,
            f3(l.latency.p50_ms),
            f3(l.latency.p90_ms),
            f3(l.latency.p99_ms),
            f3(l.latency.max_ms),
            f3(l.wasmtime_cpu_ms_per_request),
            l.wasmtime_kernel_share * 100.0,
            l.wasmtime_cores,
            l.world_cores,
            f3(l.world_cpu_ms_per_request),
            l.bench_client_cores,
            l.irq_cores,
            l.other_cores,
            l.requests,
            l.failures
        );
    }
    s
}

//! The results file (`bench/results.json`): every figure a run measured, as
//! serialized, and the only input of the report. `mas-bench report` re-renders
//! `BENCHMARKS.md` from it alone, and a new run keeps the key figures of the
//! file it replaces ([`PreviousRun`]); the fields added after the first runs
//! are `#[serde(default)]`, so older files still load.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::targets::targets;

/// The host name of `wasmtime serve` rows.
pub const WASMTIME_SERVE: &str = "wasmtime serve";
use crate::stats::{Dist, OwnTime};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub rustc: String,
    pub wasmtime: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    /// The command that produced the results.
    pub command: String,
    pub quick: bool,
    /// Extra `wasmtime serve` flags of this run.
    pub wasmtime_args: String,
    pub label: Option<String>,
    pub wasm_path: String,
    pub machine: Machine,
    /// Cores busy on the machine during the second before the run (other work).
    #[serde(default)]
    pub busy_cores_before: f64,
    /// The commit measured, and whether the component's sources had local changes.
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartupResult {
    pub no_cache_median_ms: f64,
    pub no_cache_ms: Vec<f64>,
    pub cached_median_ms: f64,
    pub cached_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthResult {
    pub latency: Dist,
    pub failures: usize,
    pub wasmtime_cpu_ms_per_request: f64,
    #[serde(default)]
    pub wasmtime_kernel_share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyResult {
    pub scenario: String,
    pub description: String,
    pub upstream_calls: usize,
    /// Bytes of the request body sent to the coordinator.
    pub request_bytes: usize,
    /// Bytes of the agent calls' bodies (GPA messages or UMS chat; all agents).
    pub agent_body_bytes: usize,
    /// Upstream requests of one floor run found identical, byte for byte, to
    /// those of one coordinated run (as the world recorded them).
    #[serde(default)]
    pub verified_requests: usize,
    /// Their body bytes.
    #[serde(default)]
    pub verified_body_bytes: usize,
    /// The upstream calls made directly, each on a new connection (as wasmtime
    /// does): coordination + the slowest agent path + synthesis (with one agent,
    /// every call one after the other).
    pub floor: Dist,
    /// The upstream calls made directly on kept-alive connections.
    pub floor_keepalive: Dist,
    pub coordinated: Dist,
    pub ttfb: Dist,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    pub wasmtime_cpu_ms_per_request: f64,
    /// Share of wasmtime's CPU time spent in the kernel.
    #[serde(default)]
    pub wasmtime_kernel_share: f64,
    /// Cores used by other processes during the run (should be ~0).
    #[serde(default)]
    pub other_cores: f64,
    pub failures: usize,
    pub errors: Vec<String>,
    /// The coordinator's own time, from its request log lines.
    #[serde(default)]
    pub own: OwnTime,
    /// Scenarios whose plan has several independent subtasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelResult>,
}

/// One agent path of a plan, measured directly (fresh connections).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentPathResult {
    /// `task <n>: <AGENT>`.
    pub task: String,
    /// Its upstream calls (UMS on a first turn: create + chat).
    pub calls: usize,
    /// The world's pause between two events of this agent's stream.
    pub world_chunk_delay_ms: u64,
    pub path: Dist,
}

/// Independent subtasks run at once: the coordinated request against the
/// direct floor of the slower agent path and of all paths one after the other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParallelResult {
    pub agents: Vec<AgentPathResult>,
    /// Coordination + the slower agent path + synthesis, per floor run.
    pub slower_floor: Dist,
    /// Coordination + every agent path one after the other + synthesis.
    pub sum_floor: Dist,
    pub added_over_slower_p50_ms: f64,
    pub added_over_slower_p90_ms: f64,
    pub added_over_slower_p99_ms: f64,
    /// Negative: what running the agents at once saves over one after the other.
    pub coordinated_minus_sum_p50_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LongHistoryResult {
    pub short: String,
    pub long: String,
    pub request_bytes: usize,
    pub agent_body_bytes: usize,
    pub coordinated_delta_p50_ms: f64,
    pub coordinated_delta_p99_ms: f64,
    pub floor_delta_p50_ms: f64,
    pub added_delta_p50_ms: f64,
    pub added_delta_p99_ms: f64,
    pub cpu_delta_ms_per_request: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadResult {
    pub scenario: String,
    pub clients: usize,
    pub measure_s: f64,
    pub requests: usize,
    /// Failed requests during the whole level (warm-up included).
    pub failures: usize,
    pub errors: Vec<String>,
    pub requests_per_s: f64,
    pub latency: Dist,
    pub wasmtime_cpu_ms_per_request: f64,
    #[serde(default)]
    pub wasmtime_kernel_share: f64,
    pub wasmtime_cores: f64,
    pub world_cores: f64,
    pub world_cpu_ms_per_request: f64,
    pub bench_client_cores: f64,
    /// Interrupt time (loopback network processing), charged to no process.
    #[serde(default)]
    pub irq_cores: f64,
    /// Other processes.
    #[serde(default)]
    pub other_cores: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub figure: String,
    pub value: String,
    pub met: bool,
    /// Shown for information beside a target, not judged (`met` means nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub info: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CriterionBench {
    pub id: String,
    pub median_ns: f64,
    pub median_low_ns: f64,
    pub median_high_ns: f64,
    pub mean_ns: f64,
    /// `("Bytes" | "Elements" | ..., n)` per iteration.
    pub throughput: Option<(String, u64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub wasm_bytes: u64,
    pub startup: StartupResult,
    pub health: HealthResult,
    pub latency: Vec<LatencyResult>,
    pub long_history: Option<LongHistoryResult>,
    pub load: Vec<LoadResult>,
    pub wasmtime_rss_after_latency_kib: u64,
    pub wasmtime_peak_rss_kib: u64,
    pub run_seconds: f64,
    pub failures_total: usize,
    pub targets: Vec<TargetCheck>,
    #[serde(default)]
    pub micro: Vec<CriterionBench>,
    /// Allocations per upstream chunk (`cargo bench --bench allocations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<Allocations>,
    /// The same scenarios under each host (wasmtime serve; spin up when there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostsResult>,
    /// The key figures of the run this one replaced (the results file it
    /// overwrote), so the report shows what moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousRun>,
    /// The host floor: what the host alone costs per HTTP exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<FloorResult>,
}

/// The host floor (BENCHMARKS.md, "Host floor"): the two bench-only
/// components of `bench/floor` served by the same host with the same flags as
/// the coordinator. `fixed` answers a fixed SSE body (one inbound exchange);
/// `relay` forwards the `gpa` scenario's GPA call to the world and streams the
/// answer back (one inbound and one outbound exchange).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FloorResult {
    /// One row per host configuration: this run's `wasmtime serve` (with its
    /// flags), `spin up` when it ran, then the `wasmtime serve` rows of the
    /// runs given with `--compare` (the variant run with instance reuse).
    pub rows: Vec<HostFloor>,
    /// Why this run measured no floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why `spin up` did not serve the floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spin_skipped: Option<String>,
}

/// The host floor under one host configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostFloor {
    /// `wasmtime serve` or `spin up`.
    pub host: String,
    /// The run's `wasmtime serve` flags (empty: wasmtime's defaults).
    pub flags: String,
    /// Measured by a `--quick` run.
    pub quick: bool,
    /// `fixed` at 1 client on a kept-alive connection.
    pub fixed: Dist,
    /// The host's CPU per `fixed` request at 1 client.
    pub fixed_cpu_ms_per_request: f64,
    /// The `gpa` scenario's GPA call made straight to the world, a new
    /// connection per call (as the host makes it), interleaved with `relay`.
    pub direct: Dist,
    /// The same call through `relay` at 1 client on a kept-alive connection.
    pub relay: Dist,
    /// relay − direct, per percentile.
    pub relay_added_p50_ms: f64,
    pub relay_added_p99_ms: f64,
    /// The host's CPU per `relay` request at 1 client.
    pub relay_cpu_ms_per_request: f64,
    /// `fixed` at 32 clients.
    pub fixed_load: FloorLoad,
    /// `relay` at 32 clients.
    pub relay_load: FloorLoad,
    /// One outbound exchange and the four exchanges of a coordinated GPA request.
    pub derived: FloorDerived,
    /// The coordinator's GPA figures under the same host and flags.
    pub gpa: CoordinatorGpa,
    /// The most other processes used during any phase of the floor, in cores.
    pub other_cores: f64,
    /// Failed requests (a wrong answer is a failure), warm-ups included.
    pub failures: usize,
    pub errors: Vec<String>,
}

/// A floor component at N clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FloorLoad {
    pub clients: usize,
    pub requests: usize,
    pub requests_per_s: f64,
    pub cpu_ms_per_request: f64,
    pub latency: Dist,
}

/// What the floor says an HTTP exchange costs the host. A coordinated GPA
/// request has four: the inbound one and three outbound (coordination, the
/// agent, synthesis).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FloorDerived {
    /// One outbound exchange's CPU: relay − fixed, 1 client.
    pub outbound_cpu_ms: f64,
    /// fixed + 3 × (relay − fixed), 1 client.
    pub four_cpu_ms: f64,
    /// The same at 32 clients.
    pub outbound_cpu_ms_32: f64,
    pub four_cpu_ms_32: f64,
    /// One inbound exchange's latency: fixed p50.
    pub inbound_p50_ms: f64,
    /// relay p50 − direct p50 − fixed p50, as measured (may be negative).
    pub outbound_p50_measured_ms: f64,
    /// The same, clamped at 0.
    pub outbound_p50_ms: f64,
    /// inbound + 3 × outbound.
    pub four_p50_ms: f64,
}

impl FloorDerived {
    pub fn of(
        fixed: (&Dist, f64, &FloorLoad),
        relay: (&Dist, f64, &FloorLoad),
        direct: &Dist,
    ) -> FloorDerived {
        let (fixed_latency, fixed_cpu, fixed_load) = fixed;
        let (relay_latency, relay_cpu, relay_load) = relay;
        let outbound_cpu_ms = relay_cpu - fixed_cpu;
        let outbound_cpu_ms_32 = relay_load.cpu_ms_per_request - fixed_load.cpu_ms_per_request;
        let measured = relay_latency.p50_ms - direct.p50_ms - fixed_latency.p50_ms;
        let outbound_p50_ms = measured.max(0.0);
        FloorDerived {
            outbound_cpu_ms,
            four_cpu_ms: fixed_cpu + 3.0 * outbound_cpu_ms,
            outbound_cpu_ms_32,
            four_cpu_ms_32: fixed_load.cpu_ms_per_request + 3.0 * outbound_cpu_ms_32,
            inbound_p50_ms: fixed_latency.p50_ms,
            outbound_p50_measured_ms: measured,
            outbound_p50_ms,
            four_p50_ms: fixed_latency.p50_ms + 3.0 * outbound_p50_ms,
        }
    }
}

/// The coordinator's `gpa` figures measured under the host configuration of
/// a floor row (none where that run did not measure them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CoordinatorGpa {
    #[serde(default)]
    pub added_p50_ms: Option<f64>,
    #[serde(default)]
    pub cpu_ms_1_client: Option<f64>,
    #[serde(default)]
    pub cpu_ms_32_clients: Option<f64>,
    #[serde(default)]
    pub requests_per_s_32: Option<f64>,
}

/// What `benches/allocations.rs` counted per upstream content chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Allocations {
    pub events: usize,
    pub steps: Vec<AllocationStep>,
    pub per_chunk_allocations: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocationStep {
    pub step: String,
    pub allocations: f64,
    pub bytes: f64,
}

/// The same scenarios under each host, on kept-alive and on new connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostsResult {
    /// `spin --version`, when Spin ran.
    pub spin_version: Option<String>,
    /// Why the Spin runs did not happen.
    pub spin_skipped: Option<String>,
    pub runs: Vec<HostRun>,
}

/// One scenario under one host with one kind of client connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRun {
    /// `wasmtime serve` or `spin up`.
    pub host: String,
    /// `kept alive` (one connection for every request, as DIAL Core does) or
    /// `new per request`.
    pub connections: String,
    pub scenario: String,
    pub floor: Dist,
    pub coordinated: Dist,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// CPU of every process of the host (Spin: `spin up` and its children).
    pub cpu_ms_per_request: f64,
    /// The process that used the most of it.
    pub busiest_process: String,
    pub busiest_cpu_ms_per_request: f64,
    pub failures: usize,
    pub errors: Vec<String>,
}

/// The key figures of an earlier run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousRun {
    pub date: String,
    pub source: String,
    pub command: String,
    pub wasmtime_args: String,
    pub targets: Vec<TargetCheck>,
    pub figures: Vec<Figure>,
}

/// One figure compared between runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub value: f64,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        meta: Meta,
        wasm_bytes: u64,
        startup: StartupResult,
        health: HealthResult,
        latency: Vec<LatencyResult>,
        long_history: Option<LongHistoryResult>,
        load: Vec<LoadResult>,
        wasmtime_rss_after_latency_kib: u64,
        wasmtime_peak_rss_kib: u64,
        run_seconds: f64,
    ) -> Results {
        let failures_total = health.failures
            + latency.iter().map(|r| r.failures).sum::<usize>()
            + load.iter().map(|r| r.failures).sum::<usize>();
        let mut results = Results {
            meta,
            wasm_bytes,
            startup,
            health,
            latency,
            long_history,
            load,
            wasmtime_rss_after_latency_kib,
            wasmtime_peak_rss_kib,
            run_seconds,
            failures_total,
            targets: Vec::new(),
            micro: Vec::new(),
            allocations: None,
            hosts: None,
            previous: None,
            floor: None,
        };
        results.targets = targets(&results, &[]);
        results
    }

    /// This run's own floor row under `wasmtime serve` (its flags).
    pub(super) fn wasmtime_floor(&self) -> Option<&HostFloor> {
        self.floor
            .as_ref()?
            .rows
            .iter()
            .find(|f| f.host == WASMTIME_SERVE && f.flags == self.meta.wasmtime_args)
    }

    pub(super) fn latency_of(&self, scenario: &str) -> Option<&LatencyResult> {
        self.latency.iter().find(|r| r.scenario == scenario)
    }

    pub(super) fn load_of(&self, scenario: &str, clients: usize) -> Option<&LoadResult> {
        self.load
            .iter()
            .find(|r| r.scenario == scenario && r.clients == clients)
    }
}

pub fn save(path: &Path, results: &Results) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut json = serde_json::to_string_pretty(results)?;
    json.push('\n');
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

pub fn load(path: &Path) -> anyhow::Result<Results> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a results file", path.display()))
}

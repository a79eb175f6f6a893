//! Results: the JSON file, the printed summary, `BENCHMARKS.md`, the targets of
//! the issue, and the criterion micro-benchmark estimates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::{Dist, OwnTime};
use crate::Opts;

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

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `<commit>`, plus a note when `src/`, `Cargo.toml` or `wit/` differ from it.
fn source_version() -> String {
    let root = crate::workspace_root();
    let root = root.display().to_string();
    let commit = command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        return "unknown (not a git checkout)".to_owned();
    }
    let dirty = command_output(
        "git",
        &[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "wit",
        ],
    );
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} + uncommitted changes in src/, Cargo.toml or wit/")
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Meta {
    pub fn collect(opts: &Opts) -> anyhow::Result<Meta> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let args: Vec<String> = opts.args.iter().map(|a| shell_quote(a)).collect();
        let command = match std::env::var("MAS_BENCH_COMMAND") {
            Ok(c) if !c.trim().is_empty() => c,
            _ if std::env::var_os("CARGO").is_some() => {
                let mut c = "cargo run --release -p mas-bench".to_owned();
                if !args.is_empty() {
                    c.push_str(" -- ");
                    c.push_str(&args.join(" "));
                }
                c
            }
            _ => {
                let exe = std::env::args()
                    .next()
                    .unwrap_or_else(|| "mas-bench".to_owned());
                std::iter::once(exe)
                    .chain(args)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        Ok(Meta {
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            command,
            quick: opts.quick,
            wasmtime_args: opts.wasmtime_args.join(" "),
            label: opts.label.clone(),
            wasm_path: opts.wasm.display().to_string(),
            busy_cores_before: 0.0,
            source: source_version(),
            machine: Machine {
                nproc: std::thread::available_parallelism().map_or(0, usize::from),
                cpu_model,
                mem_total_gib: mem_kib / 1024.0 / 1024.0,
                kernel: command_output("uname", &["-sr"]),
                rustc: command_output("rustc", &["--version"]),
                wasmtime: command_output(&opts.wasmtime.display().to_string(), &["--version"]),
            },
        })
    }
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

impl LongHistoryResult {
    pub fn from_runs(runs: &[LatencyResult], short: &str, long: &str) -> Option<LongHistoryResult> {
        let s = runs.iter().find(|r| r.scenario == short)?;
        let l = runs.iter().find(|r| r.scenario == long)?;
        Some(LongHistoryResult {
            short: short.to_owned(),
            long: long.to_owned(),
            request_bytes: l.request_bytes,
            agent_body_bytes: l.agent_body_bytes,
            coordinated_delta_p50_ms: l.coordinated.p50_ms - s.coordinated.p50_ms,
            coordinated_delta_p99_ms: l.coordinated.p99_ms - s.coordinated.p99_ms,
            floor_delta_p50_ms: l.floor.p50_ms - s.floor.p50_ms,
            added_delta_p50_ms: l.added_p50_ms - s.added_p50_ms,
            added_delta_p99_ms: l.added_p99_ms - s.added_p99_ms,
            cpu_delta_ms_per_request: l.wasmtime_cpu_ms_per_request - s.wasmtime_cpu_ms_per_request,
        })
    }
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

/// `target/mas-bench/allocations.json`, when the allocation count ran.
pub fn read_allocations(path: &Path) -> Option<Allocations> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn allocations_table(a: &Allocations) -> String {
    let mut s = String::from(
        "| step | allocations per chunk | bytes allocated per chunk |\n|---|---:|---:|\n",
    );
    for step in &a.steps {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.0} |",
            step.step, step.allocations, step.bytes
        );
    }
    let _ = writeln!(
        s,
        "| **per chunk, one read per event** | **{:.2}** | |",
        a.per_chunk_allocations
    );
    s
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
/// latency, the own time, polls, writes and CPU; per load level req/s and CPU;
/// the long history's cost; the component's size.
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
    add(
        ".wasm size".to_owned(),
        "MiB",
        r.wasm_bytes as f64 / 1024.0 / 1024.0,
    );
    out
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
        };
        results.targets = targets(&results);
        results
    }

    fn latency_of(&self, scenario: &str) -> Option<&LatencyResult> {
        self.latency.iter().find(|r| r.scenario == scenario)
    }

    fn load_of(&self, scenario: &str, clients: usize) -> Option<&LoadResult> {
        self.load
            .iter()
            .find(|r| r.scenario == scenario && r.clients == clients)
    }
}

fn targets(r: &Results) -> Vec<TargetCheck> {
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

/// Every `<dir>/**/new/{benchmark,estimates}.json` criterion left, sorted by id;
/// benchmarks older than the latest `cargo bench` run (renamed or removed since)
/// are left out.
pub fn read_criterion(dir: &Path) -> Vec<CriterionBench> {
    let mut found: Vec<(CriterionBench, std::time::SystemTime)> = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let new = d.join("new");
        if let Some(b) = read_one(&new) {
            let modified = std::fs::metadata(new.join("estimates.json"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((b, modified));
            continue;
        }
        if depth >= 4 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() && p.file_name().is_some_and(|n| n != "report") {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    let latest = found.iter().map(|(_, t)| *t).max();
    let mut out: Vec<CriterionBench> = found
        .into_iter()
        .filter(|(_, t)| {
            latest.is_some_and(|l| {
                l.duration_since(*t).unwrap_or_default() < std::time::Duration::from_secs(900)
            })
        })
        .map(|(b, _)| b)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_one(new: &Path) -> Option<CriterionBench> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(new.join(name)).ok()?).ok()
    };
    let bench = read("benchmark.json")?;
    let est = read("estimates.json")?;
    let throughput = bench["throughput"].as_object().and_then(|o| {
        let (kind, n) = o.iter().next()?;
        Some((kind.clone(), n.as_u64()?))
    });
    Some(CriterionBench {
        id: bench["full_id"].as_str()?.to_owned(),
        median_ns: est["median"]["point_estimate"].as_f64()?,
        median_low_ns: est["median"]["confidence_interval"]["lower_bound"].as_f64()?,
        median_high_ns: est["median"]["confidence_interval"]["upper_bound"].as_f64()?,
        mean_ns: est["mean"]["point_estimate"].as_f64()?,
        throughput,
    })
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn kib(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

fn targets_table(r: &Results) -> String {
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

/// The throughput target under the recommended production flags (README,
/// "wasmtime serve": instance reuse), from a variant run of the same benchmark.
fn production_throughput(others: &[Results]) -> Option<String> {
    let variant = others
        .iter()
        .find(|o| o.meta.wasmtime_args.contains("--max-instance-reuse-count"))?;
    let mut s = format!(
        "With the recommended production flag (`{}`, the README's `wasmtime serve` command; the \
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

fn value_text(value: f64, unit: &str) -> String {
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

fn hosts_table(h: &HostsResult) -> String {
    let mut s = String::new();
    if let Some(version) = &h.spin_version {
        let _ = writeln!(s, "Spin: `{version}`.\n");
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

/// Every key figure of this run beside the previous run's.
fn moved_table(r: &Results, prev: &PreviousRun) -> String {
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

fn latency_table(r: &Results) -> String {
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
fn own_time_table(r: &Results) -> String {
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

fn load_table(r: &Results) -> String {
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

/// The scenario with several independent agents, if measured.
fn parallel_of(r: &Results) -> Option<(&LatencyResult, &ParallelResult)> {
    r.latency
        .iter()
        .find_map(|l| l.parallel.as_ref().map(|p| (l, p)))
}

fn parallel_table(r: &Results) -> String {
    let Some((l, p)) = parallel_of(r) else {
        return "Not measured.\n".to_owned();
    };
    let mut s = String::new();
    let dist = |s: &mut String, name: &str, d: &Dist| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            f3(d.p50_ms),
            f3(d.p90_ms),
            f3(d.p99_ms),
            d.n
        );
    };
    s.push_str("| figure | p50 | p90 | p99 | samples |\n|---|---:|---:|---:|---:|\n");
    dist(&mut s, "coordinated (both agents at once)", &l.coordinated);
    dist(
        &mut s,
        "floor, slower agent path (coordination + slower agent path + synthesis)",
        &p.slower_floor,
    );
    dist(
        &mut s,
        "floor, both agent paths one after the other (coordination + both + synthesis)",
        &p.sum_floor,
    );
    for a in &p.agents {
        let calls = if a.calls == 1 {
            "1 call".to_owned()
        } else {
            format!("{} calls", a.calls)
        };
        dist(
            &mut s,
            &format!(
                "agent path {} alone ({calls}, world: {} ms between events)",
                a.task, a.world_chunk_delay_ms
            ),
            &a.path,
        );
    }
    let _ = writeln!(
        s,
        "| **added over the slower floor** | **{}** | **{}** | **{}** | |",
        f3(p.added_over_slower_p50_ms),
        f3(p.added_over_slower_p90_ms),
        f3(p.added_over_slower_p99_ms)
    );
    let _ = writeln!(
        s,
        "| coordinated − sum floor | {} | | | |",
        f3(p.coordinated_minus_sum_p50_ms)
    );
    let slowest = p
        .agents
        .iter()
        .max_by(|a, b| a.path.p50_ms.total_cmp(&b.path.p50_ms))
        .map_or("?", |a| a.task.as_str());
    let _ = writeln!(
        s,
        "\nTwo independent agents cost about the slower one, not the sum: the coordinated request (p50 {} ms) takes {} ms more than the direct floor of its slower agent path ({slowest}, {} ms with coordination and synthesis), and {} ms less than the same calls one after the other ({} ms).",
        f3(l.coordinated.p50_ms),
        f3(p.added_over_slower_p50_ms),
        f3(p.slower_floor.p50_ms),
        f3(-p.coordinated_minus_sum_p50_ms),
        f3(p.sum_floor.p50_ms)
    );
    s
}

fn long_table(r: &Results) -> String {
    let Some(h) = &r.long_history else {
        return "Not measured.\n".to_owned();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Request to the coordinator: {}; GPA call body: {}.\n",
        kib(h.request_bytes),
        kib(h.agent_body_bytes)
    );
    s.push_str("| 1,000 messages minus 1 message | p50 | p99 |\n|---|---:|---:|\n");
    let _ = writeln!(
        s,
        "| **added latency (coordinator's own cost)** | **{}** | **{}** |",
        f3(h.added_delta_p50_ms),
        f3(h.added_delta_p99_ms)
    );
    let _ = writeln!(
        s,
        "| coordinated latency (includes the world parsing the bigger bodies) | {} | {} |",
        f3(h.coordinated_delta_p50_ms),
        f3(h.coordinated_delta_p99_ms)
    );
    let _ = writeln!(
        s,
        "| floor latency (the world's own extra work) | {} | |",
        f3(h.floor_delta_p50_ms)
    );
    let _ = writeln!(
        s,
        "| wasmtime CPU per request | {} | |",
        f3(h.cpu_delta_ms_per_request)
    );
    s
}

fn component_table(r: &Results) -> String {
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

fn machine_table(r: &Results) -> String {
    let m = &r.meta.machine;
    let mut s = String::from("| | |\n|---|---|\n");
    let _ = writeln!(s, "| date | {} |", r.meta.date);
    let _ = writeln!(s, "| command | `{}` |", r.meta.command);
    let _ = writeln!(s, "| source measured | {} |", r.meta.source);
    let _ = writeln!(s, "| `nproc` | {} |", m.nproc);
    let _ = writeln!(s, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(s, "| memory | {:.1} GiB |", m.mem_total_gib);
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(s, "| rustc | {} |", m.rustc);
    let _ = writeln!(s, "| wasmtime | {} |", m.wasmtime);
    let args = if r.meta.wasmtime_args.is_empty() {
        "(none: defaults, a fresh instance per request)".to_owned()
    } else {
        format!("`{}`", r.meta.wasmtime_args)
    };
    let _ = writeln!(s, "| extra `wasmtime serve` flags | {args} |");
    let _ = writeln!(
        s,
        "| other processes' load before the run | {:.2} cores |",
        r.meta.busy_cores_before
    );
    let _ = writeln!(
        s,
        "| run | {}{:.0} s, {} failed requests |",
        if r.meta.quick { "`--quick`, " } else { "" },
        r.run_seconds,
        r.failures_total
    );
    s
}

fn run_label(r: &Results) -> String {
    r.meta.label.clone().unwrap_or_else(|| {
        if r.meta.wasmtime_args.is_empty() {
            "defaults".to_owned()
        } else {
            format!("`{}`", r.meta.wasmtime_args)
        }
    })
}

fn compare_table(main: &Results, others: &[Results]) -> String {
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

fn micro_table(micro: &[CriterionBench]) -> String {
    if micro.is_empty() {
        return "Not run yet: `cargo bench --bench hot_paths`, then `cargo run --release -p mas-bench -- report`.\n".to_owned();
    }
    let mut s = String::from(
        "| benchmark | median | 95% CI of the median | mean | throughput |\n|---|---:|---:|---:|---:|\n",
    );
    for b in micro {
        let throughput = match &b.throughput {
            Some((kind, n)) if kind == "Bytes" || kind == "BytesDecimal" => {
                format!(
                    "{:.0} MiB/s",
                    *n as f64 / (b.median_ns / 1e9) / 1024.0 / 1024.0
                )
            }
            Some((kind, n)) if kind == "Elements" => {
                format!("{} / element", ns(b.median_ns / *n as f64))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} – {} | {} | {} |",
            b.id,
            ns(b.median_ns),
            ns(b.median_low_ns),
            ns(b.median_high_ns),
            ns(b.mean_ns),
            throughput
        );
    }
    s
}

/// The tables printed at the end of a run.
pub fn summary(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Latency at 1 client (ms)\n\n{}", latency_table(r));
    let _ = writeln!(s, "## Own time by phase (µs)\n\n{}", own_time_table(r));
    let _ = writeln!(s, "## 1,000-message history\n\n{}", long_table(r));
    if parallel_of(r).is_some() {
        let _ = writeln!(s, "## Two agents in parallel\n\n{}", parallel_table(r));
    }
    let _ = writeln!(s, "## Throughput\n\n{}", load_table(r));
    let _ = writeln!(s, "## Component\n\n{}", component_table(r));
    let _ = writeln!(s, "## Targets\n\n{}", targets_table(r));
    s
}

const METHOD: &str = "\
- **World**: `mas-world` runs inside the benchmark process on its own 2-thread Tokio runtime \
(threads `mas-world*`), with no delays or faults: every upstream answers as fast as it can \
(except in `two_agents`, where the world pauses between the events of both agents' streams). \
The benchmark client, the world and `wasmtime serve` share the machine's cores.
- **Component**: `wasmtime serve -Scli --addr 127.0.0.1:PORT --env DIAL_ENDPOINT=… --env \
UMS_AGENT_ENDPOINT=… [extra flags] mas_coordinator.wasm`, the release build.
- **Floor**: the scenario's upstream calls as the coordinator makes them in its default \
`COORDINATION_MODE=plan` (the planning call, the agent call(s) of the plan the world answers, \
synthesis) made by the benchmark client itself, one after the other, with the request bodies \
built by the coordinator's own functions (`plan::request_body`, `plan::task_text`, \
`agent_history`, `conversation_title`, `plan::sections`, `synthesis::request_body`, the target's \
`model` added as the coordinator adds it) from the configuration the component gets, every \
answer read to its end and checked. With several independent agents the floor is \
coordination + the slowest agent path + synthesis of each run (each call timed on its own). \
The *floor* opens a new TCP connection per call, as wasmtime does for every outbound request; \
*floor, kept-alive* reuses one connection per upstream (what a pooled client could reach).
- **Same bytes**: before a scenario is measured, one floor run and one coordinated run are \
recorded by the world and compared call by call (the agent calls between the coordination \
call and the synthesis in any order): service, method, path and query, the `content-type`, \
`api-key` and `x-conversation-id` headers and the body must be identical byte for byte, UMS \
conversation ids and turn numbers aside (`ums-conv-<n>#<turn>`, different per conversation by \
design); anything else stops the run.
- **Coordinated**: the streaming request to the component on a kept-alive connection, read to \
the end. **Added latency** = coordinated − floor, per percentile (p50 − p50, p99 − p99). \
Floor, kept-alive floor and coordinated requests are interleaved one by one, so all see the \
same conditions. **TTFB**: from handing the request to the connection to the first non-empty \
body frame of the response.
- **Checks**: every measured coordinated response must be `200`, contain the stage of every \
agent the plan chose and the synthesized answer (for `two_agents`, with both task sections), \
carry no error event and end with `data: [DONE]`; every floor call must be 200 and its stream \
end with `data: [DONE]`. Anything else is a failure and is \
counted (warm-up included for the load levels).
- **Throughput**: N clients, each on its own kept-alive connection, sending back to back for a \
warm-up, then a measured window; req/s = responses completed in the window ÷ its length.
- **CPU**: utime + stime of the wasmtime process from `/proc/<pid>/stat` (all threads), delta over \
a run ÷ completed requests; the world's share from `/proc/self/task/*/stat` of the `mas-world*` \
threads; \"bench client\" is the rest of the benchmark process. 1 core = 1.00. \
Peak RSS is `VmHWM` from `/proc/<pid>/status`.
- **Other load**: the machine may be shared (builds, tests). Before each phase the tool waits \
(at most 3 minutes over the whole run) until other processes use less than 0.2 cores, and \
a phase during which they used more than 0.2 cores is measured again (3 attempts at most); \
every table shows the other processes' load during the phase (machine busy time from \
`/proc/stat` minus interrupts, wasmtime and the benchmark process): rows where it is above \
~0.1 cores are skewed.
- **Percentiles**: nearest rank over all samples of the window.";

/// `BENCHMARKS.md`.
pub fn markdown(r: &Results, others: &[Results], root: &Path) -> String {
    let micro = &r.micro;
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str(
        "The coordinator's own cost: what it adds on top of the upstream calls it has to make. \
Generated by `mas-bench` (`bench/`, see `scripts/bench.sh`); the raw figures are in \
`bench/results.json`. All times are milliseconds unless marked.\n\n",
    );
    let _ = writeln!(s, "## Machine and command\n\n{}", machine_table(r));
    let _ = writeln!(s, "## Targets\n\n{}", targets_table(r));
    if let Some(rows) = production_throughput(others) {
        let _ = writeln!(s, "{rows}");
    }
    if let Some(prev) = &r.previous {
        let args = if prev.wasmtime_args.is_empty() {
            "wasmtime's defaults".to_owned()
        } else {
            format!("`{}`", prev.wasmtime_args)
        };
        let _ = writeln!(
            s,
            "## What moved since the previous run\n\nThe previous run: {}, source {}, `{}`, {}. \
Full runs on a shared VM vary (see Observations): treat changes of a few tens of percent in \
latency or throughput as noise unless back-to-back `--quick` runs confirm them.\n\n{}",
            prev.date,
            prev.source,
            prev.command,
            args,
            moved_table(r, prev)
        );
    }
    let _ = writeln!(
        s,
        "## Latency at 1 client\n\nScenarios: {}.\n\n{}",
        r.latency
            .iter()
            .map(|l| format!("`{}` = {}", l.scenario, l.description))
            .collect::<Vec<_>>()
            .join("; "),
        latency_table(r)
    );
    let _ = writeln!(
        s,
        "## The coordinator's own time, by phase (µs)\n\nWhat the component reports itself in \
each request's log line (`own_us`, `phases_us`: the time spent inside polls of the request's \
future, i.e. working, not waiting; warm-up requests left out). The added latency above also \
holds wasmtime's own HTTP and instance work, which the component cannot see.\n\n{}",
        own_time_table(r)
    );
    let _ = writeln!(s, "## 1,000-message history (GPA)\n\n{}", long_table(r));
    if let Some((l, _)) = parallel_of(r) {
        let _ = writeln!(
            s,
            "## Two agents in parallel\n\n`{}` = {}. The world plans two independent subtasks, \
the coordinator runs both agents at once and then synthesizes both results. To make the \
parallelism visible the world pauses between the events of each agent's stream (the LLM calls \
stay instant), and the floor measures each agent path on its own, one after the other, in the \
same run: the *slower floor* is coordination + the slower agent path + synthesis of each floor \
run, the *sum floor* the same calls with both agent paths. A coordinator that runs independent \
agents at once costs the slower floor plus its own overhead; one that runs them in turn costs \
the sum.\n\n{}",
            l.scenario,
            l.description,
            parallel_table(r)
        );
    }
    let _ = writeln!(
        s,
        "## Throughput\n\n`gpa` and `ums` (follow-up) as above, streaming, each client on its own connection.\n\n{}",
        load_table(r)
    );
    if let Some(h) = &r.hosts {
        let _ = writeln!(
            s,
            "## Hosts and client connections\n\n`gpa` and `ums` at 1 client under each host, once \
on one kept-alive connection (as DIAL Core calls an application) and once with a new connection \
per request; the floor is measured in the same loop. Under Spin the CPU is that of `spin up` \
and every process it started (it runs the HTTP trigger as a child process). Spin runs \
`spin.toml` as shipped (the `spin-kv` build, breakers in Spin's key-value store).\n\n{}",
            hosts_table(h)
        );
    }
    let _ = writeln!(
        s,
        "## Component size and instantiation\n\n{}",
        component_table(r)
    );
    if !others.is_empty() {
        let _ = writeln!(
            s,
            "## wasmtime serve variants\n\nThe same benchmark with other `wasmtime serve` flags (`--wasmtime-args`).\n\n{}",
            compare_table(r, others)
        );
    }
    if let Some(a) = &r.allocations {
        let _ = writeln!(
            s,
            "## Allocations per upstream chunk (native)\n\n`cargo bench --bench allocations` \
(`benches/allocations.rs`): a counting allocator around the steps every content chunk of an \
upstream stream goes through ({} events of a GPA-like stream); counts, the same on every \
machine. Bytes are what was requested, including buffers that are reused afterwards.\n\n{}",
            a.events,
            allocations_table(a)
        );
    }
    let _ = writeln!(
        s,
        "## Micro-benchmarks (native, criterion)\n\n`cargo bench --bench hot_paths` (`benches/hot_paths.rs`): the hot pure code, \
compiled natively (`opt-level=3`), so absolute figures are lower than inside wasmtime.\n\n{}",
        micro_table(micro)
    );
    if let Ok(notes) = std::fs::read_to_string(root.join("bench/observations.md")) {
        let _ = writeln!(s, "{}\n", notes.trim_end());
    }
    let _ = writeln!(s, "## Method\n\n{METHOD}");
    let errors: Vec<String> = r
        .latency
        .iter()
        .flat_map(|l| l.errors.iter().map(move |e| format!("{}: {e}", l.scenario)))
        .chain(r.load.iter().flat_map(|l| {
            l.errors
                .iter()
                .map(move |e| format!("{} @{}: {e}", l.scenario, l.clients))
        }))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\n## Failures (first errors)\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> Results {
        load(&crate::workspace_root().join("bench/results.json")).expect("bench/results.json")
    }

    #[test]
    fn the_report_puts_the_previous_run_beside_this_one() {
        let mut now = committed();
        let mut before = committed();
        before.meta.date = "2026-11-30 10:00:00 UTC".to_owned();
        before.latency[0].added_p50_ms = now.latency[0].added_p50_ms * 2.0;
        before.targets[0].value = "9.999 ms".to_owned();
        before.targets[0].met = false;
        now.previous = Some(PreviousRun::of(&before));
        let md = markdown(&now, &[], &crate::workspace_root());
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
        let plain = markdown(&now, &[], &crate::workspace_root());
        assert!(!plain.contains("## What moved since the previous run"));
        assert!(plain.contains("| target | figure | measured | |\n"));
    }

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

    /// The rendering of fixed inputs, pinned byte for byte: `bench/fixtures/`
    /// holds a full results file (every section: the previous run, hosts,
    /// allocations, micro-benchmarks, two agents) and what `markdown` and
    /// `summary` made of it, and of a bare variant of it (no previous run, no
    /// optional section, Spin skipped, failures listed). A change of the
    /// report's text shows here as a diff of the expected files; after an
    /// intended one, `MAS_BENCH_BLESS=1 cargo test -p mas-bench` rewrites them.
    #[test]
    fn the_report_of_fixed_inputs_is_pinned() {
        let fixtures = crate::workspace_root().join("bench/fixtures");
        let full = load(&fixtures.join("results.json")).expect("bench/fixtures/results.json");
        let mut variant = full.clone();
        variant.meta.wasmtime_args = "--max-instance-reuse-count 1000".to_owned();
        variant.meta.quick = true;
        variant.previous = None;
        let mut labelled = variant.clone();
        labelled.meta.label = Some("labelled run".to_owned());
        labelled.load.retain(|l| l.clients != 8);
        labelled.latency.retain(|l| l.scenario != "ums");

        let mut bare = full.clone();
        bare.previous = None;
        bare.micro.clear();
        bare.allocations = None;
        bare.long_history = None;
        bare.hosts = Some(HostsResult {
            spin_version: None,
            spin_skipped: Some("no `spin` on the PATH".to_owned()),
            runs: full.hosts.as_ref().expect("hosts").runs[..2].to_vec(),
        });
        for l in &mut bare.latency {
            l.parallel = None;
            l.own = OwnTime::default();
        }
        bare.latency[1].floor_keepalive = Dist::default();
        bare.latency[1].verified_requests = 1;
        bare.latency[0].errors = vec!["first error".to_owned(), "second error".to_owned()];
        bare.load[2].errors = vec!["connect: refused".to_owned()];

        // A root with its own observations, so the notes section is pinned too.
        let root = std::env::temp_dir().join(format!("mas-bench-pinned-{}", std::process::id()));
        std::fs::create_dir_all(root.join("bench")).unwrap();
        std::fs::write(
            root.join("bench/observations.md"),
            "## Observations\n\nA note of the fixture.\n\n",
        )
        .unwrap();
        let rendered = [
            ("full.md", markdown(&full, &[variant, labelled], &root)),
            ("full-summary.txt", summary(&full)),
            ("bare.md", markdown(&bare, &[], &root)),
            ("bare-summary.txt", summary(&bare)),
        ];
        std::fs::remove_dir_all(&root).ok();
        let bless = std::env::var_os("MAS_BENCH_BLESS").is_some();
        for (name, got) in rendered {
            let path = fixtures.join(name);
            if bless {
                std::fs::write(&path, &got).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                got == want,
                "the report rendered for {name} differs from {}:\n{}",
                path.display(),
                first_difference(&want, &got)
            );
        }
    }

    /// The first line where `want` and `got` differ, both shown.
    fn first_difference(want: &str, got: &str) -> String {
        let (mut w, mut g) = (want.lines(), got.lines());
        for n in 1.. {
            match (w.next(), g.next()) {
                (None, None) => return "(only the line ends differ)".to_owned(),
                (a, b) if a == b => {}
                (a, b) => {
                    return format!("line {n}:\n  expected: {a:?}\n  rendered: {b:?}");
                }
            }
        }
        unreachable!()
    }
}

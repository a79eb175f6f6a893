//! `mas-bench`: measures the MAS coordinator's own cost.
//!
//! It starts the local DIAL world in-process (zero delay) and the release component
//! under `wasmtime serve` on a free loopback port (its default `COORDINATION_MODE`,
//! `plan`), then measures, for the GPA and UMS flows: the floor (the same upstream
//! calls made directly, checked byte for byte against what the coordinator sends),
//! the coordinated latency and time to first byte at 1 client, the added latency,
//! throughput at 8/32/128 clients, wasmtime's CPU time per request and peak RSS, the
//! world's CPU share, a 1,000-message history, a two-agent plan whose agents run at
//! once (with the world slowing both agents: added latency over the slower agent's
//! floor, next to the sum of both), the .wasm size and the instantiation cost. Every
//! measured response is checked. Results go to `bench/results.json` and
//! `BENCHMARKS.md`.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p mas-coordinator
//! cargo run --release -p mas-bench -- [--quick] [--wasmtime-args "--max-instance-reuse-count 1000"]
//!     [--wasm PATH] [--wasmtime PATH] [--out PATH] [--markdown PATH | --no-markdown]
//!     [--compare OTHER_RESULTS.json]... [--criterion DIR] [--label TEXT] [--spin PATH] [--no-hosts]
//! cargo run --release -p mas-bench -- report [--out PATH] [--markdown PATH] [--compare ...]
//! ```

mod http;
mod procfs;
mod report;
mod scenario;
mod spin;
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mas_coordinator::config::{Config, CoordinationMode};
use mas_world::{World, WorldOptions};

use crate::http::{send_fresh, Conn, Req};
use crate::procfs::{Clock, CpuSnap, CpuUse};
use crate::report::{
    AgentPathResult, HealthResult, HostRun, HostsResult, LatencyResult, LoadResult,
    LongHistoryResult, ParallelResult, Results, StartupResult,
};
use crate::scenario::{
    create_conversation, verify_bytes, Floor, FloorConns, FloorRun, Scenario, Verified,
};
use crate::stats::{Dist, OwnTime};

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub report_only: bool,
    pub quick: bool,
    pub wasmtime_args: Vec<String>,
    pub wasm: PathBuf,
    pub wasmtime: PathBuf,
    pub out: PathBuf,
    pub markdown: Option<PathBuf>,
    pub compare: Vec<PathBuf>,
    pub criterion: PathBuf,
    pub label: Option<String>,
    /// The `spin` binary for the Spin runs (else `$SPIN`, else the PATH).
    pub spin: Option<PathBuf>,
    /// Skip the host comparison (wasmtime on both kinds of connections, Spin).
    pub no_hosts: bool,
    /// The command line as given (for the report).
    pub args: Vec<String>,
}

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn default_wasmtime() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wasmtime"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".cargo/bin/wasmtime")
    })
}

const USAGE: &str = "usage: mas-bench [report] [--quick] [--wasmtime-args \"ARGS\"] [--wasm PATH] \
[--wasmtime PATH] [--out PATH] [--markdown PATH | --no-markdown] [--compare RESULTS.json]... \
[--criterion DIR] [--label TEXT]";

fn parse_args() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let mut opts = Opts {
        report_only: false,
        quick: false,
        wasmtime_args: Vec::new(),
        wasm: target_dir().join("wasm32-wasip2/release/mas_coordinator.wasm"),
        wasmtime: default_wasmtime(),
        out: root.join("bench/results.json"),
        markdown: Some(root.join("BENCHMARKS.md")),
        compare: Vec::new(),
        criterion: target_dir().join("criterion"),
        label: None,
        spin: None,
        no_hosts: false,
        args: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "report" => opts.report_only = true,
            "--quick" => opts.quick = true,
            "--wasmtime-args" => {
                opts.wasmtime_args = value("--wasmtime-args")?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            "--wasm" => opts.wasm = value("--wasm")?.into(),
            "--wasmtime" => opts.wasmtime = value("--wasmtime")?.into(),
            "--out" => opts.out = value("--out")?.into(),
            "--markdown" => opts.markdown = Some(value("--markdown")?.into()),
            "--no-markdown" => opts.markdown = None,
            "--compare" => opts.compare.push(value("--compare")?.into()),
            "--criterion" => opts.criterion = value("--criterion")?.into(),
            "--label" => opts.label = Some(value("--label")?),
            "--spin" => opts.spin = Some(value("--spin")?.into()),
            "--no-hosts" => opts.no_hosts = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(opts)
}

/// How long each part runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    startup_trials: usize,
    health_budget: Duration,
    warmup_iters: usize,
    latency_budget: Duration,
    latency_max: usize,
    long_budget: Duration,
    long_max: usize,
    load_warmup: Duration,
    load_measure: Duration,
    /// The two-agent scenario (each iteration takes a few hundred ms).
    parallel_warmup: usize,
    parallel_budget: Duration,
    parallel_max: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                startup_trials: 2,
                health_budget: Duration::from_millis(500),
                warmup_iters: 10,
                latency_budget: Duration::from_millis(1500),
                latency_max: 1000,
                long_budget: Duration::from_millis(1500),
                long_max: 100,
                load_warmup: Duration::from_millis(500),
                load_measure: Duration::from_secs(2),
                parallel_warmup: 2,
                parallel_budget: Duration::from_secs(4),
                parallel_max: 100,
            }
        } else {
            Plan {
                startup_trials: 3,
                health_budget: Duration::from_secs(2),
                warmup_iters: 30,
                latency_budget: Duration::from_secs(5),
                latency_max: 3000,
                long_budget: Duration::from_secs(5),
                long_max: 300,
                load_warmup: Duration::from_secs(1),
                load_measure: Duration::from_secs(5),
                parallel_warmup: 5,
                parallel_budget: Duration::from_secs(40),
                parallel_max: 300,
            }
        }
    }
}

const LOAD_LEVELS: [usize; 3] = [8, 32, 128];
/// The longest the whole run waits for other processes to go quiet.
const IDLE_WAIT: Duration = Duration::from_secs(180);
/// How often a phase disturbed by other processes is measured, at most.
const MAX_ATTEMPTS: usize = 3;
const LONG_HISTORY_MESSAGES: usize = 1000;
const LONG_HISTORY_STATE_BYTES: usize = 2048;

fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("not an http://IP:PORT url: {url}"))
}

/// The environment `wasmtime serve` passes to the component; the floors are
/// built from the configuration it gives (`Config::from_lookup`), so they follow
/// the coordinator's defaults (`COORDINATION_MODE=plan` among them).
fn coordinator_env(world: &World) -> Vec<(&'static str, String)> {
    vec![
        ("DIAL_ENDPOINT", world.core_url()),
        ("UMS_AGENT_ENDPOINT", world.ums_url()),
    ]
}

/// The component's configuration: [`coordinator_env`], then every
/// `--env NAME=VALUE` of `--wasmtime-args` (later ones win), so that e.g.
/// `--wasmtime-args "--env COORDINATION_MODE=route"` builds route-mode floors.
fn coordinator_config(world: &World, wasmtime_args: &[String]) -> anyhow::Result<Config> {
    let mut env: Vec<(String, String)> = coordinator_env(world)
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    env.extend(env_args(wasmtime_args));
    Config::from_lookup(|name| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    })
    .map_err(|e| anyhow::anyhow!("the coordinator's configuration: {}", e.message()))
}

/// Every `--env NAME=VALUE` (or `--env=NAME=VALUE`) of `wasmtime_args`, in order.
fn env_args(wasmtime_args: &[String]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut args = wasmtime_args.iter();
    while let Some(arg) = args.next() {
        let pair = match arg.strip_prefix("--env=") {
            Some(pair) => Some(pair),
            None if arg == "--env" => args.next().map(String::as_str),
            None => None,
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    env
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running `wasmtime serve`; killed on drop.
#[derive(Debug)]
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts the component and waits until `GET /health` answers 200; returns the
    /// server and the time from spawn to that first 200.
    async fn start(
        opts: &Opts,
        world: &World,
        extra: &[&str],
        log: &Path,
    ) -> anyhow::Result<(Server, Duration)> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(&opts.wasmtime);
        cmd.arg("serve")
            .arg("-Scli")
            .arg("--addr")
            .arg(addr.to_string());
        for (name, value) in coordinator_env(world) {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        cmd.args(extra)
            .args(&opts.wasmtime_args)
            .arg(&opts.wasm)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", opts.wasmtime.display()))?;
        let mut server = Server { child, addr };
        let ready = until_healthy(&mut server.child, addr, "wasmtime serve", log, spawned).await?;
        Ok((server, ready))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Waits until the server `child` (spawned at `spawned`) answers `GET /health`
/// with 200 on `addr`; the time from spawn to that answer. Fails when the
/// child exits first or nothing answers within 120 s.
pub(crate) async fn until_healthy(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
    spawned: Instant,
) -> anyhow::Result<Duration> {
    let health = Req::get("/health");
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before answering; see {}",
                log.display()
            );
        }
        let probe = tokio::time::timeout(Duration::from_secs(5), send_fresh(addr, &health));
        if let Ok(Ok(resp)) = probe.await {
            if resp.status == 200 {
                return Ok(spawned.elapsed());
            }
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!("{what} did not answer within 120 s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(samples: &[Duration]) -> f64 {
    Dist::of(samples).p50_ms
}

/// Instantiation: spawn-to-first-200 with and without the compile cache.
async fn startup(
    opts: &Opts,
    world: &World,
    plan: Plan,
    log: &Path,
) -> anyhow::Result<StartupResult> {
    let mut no_cache = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..plan.startup_trials {
        no_cache.push(Server::start(opts, world, &["-C", "cache=n"], log).await?.1);
        cached.push(Server::start(opts, world, &[], log).await?.1);
    }
    Ok(StartupResult {
        no_cache_median_ms: median(&no_cache),
        no_cache_ms: no_cache.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        cached_median_ms: median(&cached),
        cached_ms: cached.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
    })
}

/// Per-request overhead of the trivial `GET /health` at 1 client.
async fn health(server: &Server, plan: Plan, clock: Clock) -> anyhow::Result<HealthResult> {
    let mut conn = Conn::connect(server.addr).await?;
    let req = Req::get("/health");
    for _ in 0..50 {
        conn.send(&req).await?;
    }
    let mut samples = Vec::new();
    let mut failures = 0;
    let before = CpuSnap::take(&[server.pid()]);
    let start = Instant::now();
    while start.elapsed() < plan.health_budget && samples.len() < 20_000 {
        let resp = conn.send(&req).await?;
        if resp.status == 200 && resp.text().contains("ok") {
            samples.push(resp.total);
        } else {
            failures += 1;
        }
    }
    let cpu = CpuUse::between(&before, &CpuSnap::take(&[server.pid()]), clock);
    let n = samples.len().max(1);
    Ok(HealthResult {
        latency: Dist::of(&samples),
        failures,
        wasmtime_cpu_ms_per_request: cpu.wasmtime_s * 1e3 / n as f64,
        wasmtime_kernel_share: share(cpu.wasmtime_system_s, cpu.wasmtime_s),
    })
}

/// What one 1-client run measured.
#[derive(Debug, Default)]
struct LatencyRun {
    floor: Vec<FloorRun>,
    floor_keepalive: Vec<FloorRun>,
    coordinated: Vec<Duration>,
    ttfb: Vec<Duration>,
    failures: usize,
    errors: Vec<String>,
    cpu: CpuUse,
    /// The serving process that used the most CPU, and how much.
    busiest: Option<(String, Duration)>,
}

/// What a 1-client run talks to: an address, the processes that serve it
/// (for their CPU time), and whether each request opens a new connection.
#[derive(Clone, Copy)]
struct Served {
    addr: SocketAddr,
    root_pid: u32,
    fresh_connections: bool,
}

impl Served {
    fn of(server: &Server) -> Served {
        Served {
            addr: server.addr,
            root_pid: server.pid(),
            fresh_connections: false,
        }
    }

    fn pids(&self) -> Vec<u32> {
        procfs::process_tree(self.root_pid)
    }
}

fn note_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
    }
}

/// How long a 1-client run lasts: warm-up iterations, then until the time or
/// the count runs out.
#[derive(Debug, Clone, Copy)]
struct Budget {
    warmup: usize,
    time: Duration,
    max: usize,
    /// Whether to measure the kept-alive floor too.
    keepalive: bool,
}

/// 1 client, sequential: floor (fresh connections), floor (kept-alive
/// connections) and the coordinated request, interleaved so all three see the
/// same conditions.
async fn latency_run(
    server: &Served,
    world: &World,
    scenario: &Scenario,
    floor: &Floor,
    budget: Budget,
    clock: Clock,
) -> anyhow::Result<LatencyRun> {
    let Budget {
        warmup,
        time: budget,
        max,
        keepalive,
    } = budget;
    let mut conn = Conn::connect(server.addr).await?;

    let mut conns = FloorConns::connect(floor).await?;
    for _ in 0..warmup {
        floor.run(None).await?;
        if keepalive {
            floor.run(Some(&mut conns)).await?;
        }
        let resp = send_to(server, &mut conn, &scenario.request).await?;
        scenario
            .check(&resp)
            .map_err(|e| anyhow::anyhow!("{}: warm-up request failed: {e}", scenario.name))?;
        world.clear_requests();
    }
    let mut run = LatencyRun::default();
    // wasmtime only works for the coordinated requests (the floor bypasses it), so
    // its CPU time over the whole run is theirs, instance teardown included.
    let pids = server.pids();
    let cpu_before = CpuSnap::take(&pids);
    let per_pid_before: Vec<u64> = pids.iter().map(|&p| procfs::process_ticks(p)).collect();
    let start = Instant::now();
    while start.elapsed() < budget && run.coordinated.len() + run.failures < max {
        match floor.run(None).await {
            Ok(d) => run.floor.push(d),
            Err(e) => {
                run.failures += 1;
                note_error(&mut run.errors, format!("floor: {e:#}"));
            }
        }
        if keepalive {
            match floor.run(Some(&mut conns)).await {
                Ok(d) => run.floor_keepalive.push(d),
                Err(e) => {
                    run.failures += 1;
                    note_error(&mut run.errors, format!("floor (keep-alive): {e:#}"));
                    conns = FloorConns::connect(floor).await?;
                }
            }
        }
        let sent = send_to(server, &mut conn, &scenario.request).await;
        match sent {
            Ok(resp) => match scenario.check(&resp) {
                Ok(()) => {
                    run.coordinated.push(resp.total);
                    run.ttfb.push(resp.ttfb);
                }
                Err(e) => {
                    run.failures += 1;
                    note_error(&mut run.errors, e);
                }
            },
            Err(e) => {
                run.failures += 1;
                note_error(&mut run.errors, format!("{e:#}"));
                conn = Conn::connect(server.addr).await?;
            }
        }
        world.clear_requests();
    }
    // Let the last instance be torn down before reading the counter.
    tokio::time::sleep(Duration::from_millis(20)).await;
    run.cpu = CpuUse::between(&cpu_before, &CpuSnap::take(&pids), clock);
    // The process that did the most of the work (Spin: its trigger child).
    run.busiest = pids
        .iter()
        .zip(&per_pid_before)
        .map(|(&p, &before)| (p, procfs::process_ticks(p).saturating_sub(before)))
        .max_by_key(|&(_, ticks)| ticks)
        .map(|(p, ticks)| (procfs::command(p), clock.duration(ticks)));
    Ok(run)
}

/// One request: on the kept-alive `conn`, or on a new connection.
async fn send_to(server: &Served, conn: &mut Conn, req: &Req) -> anyhow::Result<http::Resp> {
    if server.fresh_connections {
        send_fresh(server.addr, req).await
    } else {
        conn.send(req).await
    }
}

fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// With several agent paths: each path, the slower and the sum floors, and
/// what the coordinated request adds over the slower floor.
fn parallel_result(
    scenario: &Scenario,
    floor: &Floor,
    run: &LatencyRun,
    coordinated: &Dist,
) -> Option<ParallelResult> {
    if floor.agents.len() < 2 {
        return None;
    }
    let agents = floor
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let samples: Vec<Duration> = run
                .floor
                .iter()
                .filter_map(|r| r.agents.get(i).copied())
                .collect();
            AgentPathResult {
                task: a.label.clone(),
                calls: a.calls,
                world_chunk_delay_ms: scenario
                    .faults
                    .iter()
                    .find(|(t, _)| *t == a.fault_target)
                    .map_or(0, |(_, f)| f.chunk_delay_ms),
                path: Dist::of(&samples),
            }
        })
        .collect();
    let slower = Dist::of(&run.floor.iter().map(FloorRun::slower).collect::<Vec<_>>());
    let sum = Dist::of(&run.floor.iter().map(FloorRun::sum).collect::<Vec<_>>());
    Some(ParallelResult {
        agents,
        added_over_slower_p50_ms: coordinated.p50_ms - slower.p50_ms,
        added_over_slower_p90_ms: coordinated.p90_ms - slower.p90_ms,
        added_over_slower_p99_ms: coordinated.p99_ms - slower.p99_ms,
        coordinated_minus_sum_p50_ms: coordinated.p50_ms - sum.p50_ms,
        slower_floor: slower,
        sum_floor: sum,
    })
}

/// The own time the request lines written to `log` after byte `from` report
/// (the first `warmup` lines, the warm-up, left out).
fn own_time_since(log: &Path, from: u64, warmup: usize) -> anyhow::Result<OwnTime> {
    let bytes = std::fs::read(log)?;
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    Ok(OwnTime::from_log(
        &String::from_utf8_lossy(&bytes[start..]),
        warmup,
    ))
}

fn latency_result(
    scenario: &Scenario,
    floor: &Floor,
    verified: Verified,
    run: &LatencyRun,
) -> LatencyResult {
    // The floor is coordination + the slowest agent path + synthesis (with one
    // agent: every call one after the other).
    let floor_dist = Dist::of(&run.floor.iter().map(FloorRun::slower).collect::<Vec<_>>());
    let coordinated = Dist::of(&run.coordinated);
    let n = run.coordinated.len().max(1);
    LatencyResult {
        scenario: scenario.name.to_owned(),
        description: scenario.description.clone(),
        upstream_calls: floor.calls(),
        request_bytes: scenario.request.body.len(),
        agent_body_bytes: floor.agent_body_bytes,
        verified_requests: verified.requests,
        verified_body_bytes: verified.body_bytes,
        added_p50_ms: coordinated.p50_ms - floor_dist.p50_ms,
        added_p99_ms: coordinated.p99_ms - floor_dist.p99_ms,
        parallel: parallel_result(scenario, floor, run, &coordinated),
        floor: floor_dist,
        floor_keepalive: Dist::of(
            &run.floor_keepalive
                .iter()
                .map(FloorRun::slower)
                .collect::<Vec<_>>(),
        ),
        coordinated,
        ttfb: Dist::of(&run.ttfb),
        wasmtime_cpu_ms_per_request: run.cpu.wasmtime_s * 1e3 / n as f64,
        wasmtime_kernel_share: share(run.cpu.wasmtime_system_s, run.cpu.wasmtime_s),
        other_cores: run.cpu.cores(run.cpu.other_s),
        failures: run.failures,
        errors: run.errors.clone(),
        own: OwnTime::default(),
    }
}

/// What one worker saw in a load run.
#[derive(Debug, Default)]
struct WorkerRun {
    latencies: Vec<Duration>,
    failures: usize,
    errors: Vec<String>,
}

async fn worker(
    addr: SocketAddr,
    scenario: Arc<Scenario>,
    measure_from: Instant,
    end: Instant,
) -> WorkerRun {
    let mut run = WorkerRun::default();
    let mut conn: Option<Conn> = None;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    run.failures += 1;
                    note_error(&mut run.errors, format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = c.send(&scenario.request).await;
        let done = Instant::now();
        let in_window = done >= measure_from && done < end;
        match sent {
            Ok(resp) => match scenario.check(&resp) {
                Ok(()) if in_window => run.latencies.push(resp.total),
                Ok(()) => {}
                Err(e) => {
                    run.failures += 1;
                    note_error(&mut run.errors, e);
                }
            },
            Err(e) => {
                run.failures += 1;
                note_error(&mut run.errors, format!("{e:#}"));
                conn = None;
            }
        }
    }
    run
}

/// `clients` concurrent clients, each on its own kept-alive connection, for
/// warm-up + measure; counts the requests completed inside the measure window.
async fn load_run(
    server: &Server,
    world: &World,
    scenario: Arc<Scenario>,
    clients: usize,
    plan: Plan,
    clock: Clock,
) -> anyhow::Result<LoadResult> {
    let measure_from = Instant::now() + plan.load_warmup;
    let end = measure_from + plan.load_measure;
    let handles: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(worker(server.addr, scenario.clone(), measure_from, end)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    world.clear_requests();
    let a = CpuSnap::take(&[server.pid()]);
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        world.clear_requests();
    }
    let cpu = CpuUse::between(&a, &CpuSnap::take(&[server.pid()]), clock);
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut errors = Vec::new();
    for h in handles {
        let run = h.await?;
        latencies.extend(run.latencies);
        failures += run.failures;
        for e in run.errors {
            note_error(&mut errors, e);
        }
    }
    world.clear_requests();
    let n = latencies.len();
    let per_request = |seconds: f64| seconds * 1e3 / n.max(1) as f64;
    Ok(LoadResult {
        scenario: scenario.name.to_owned(),
        clients,
        measure_s: cpu.wall_s,
        requests: n,
        failures,
        errors,
        requests_per_s: n as f64 / cpu.wall_s,
        latency: Dist::of(&latencies),
        wasmtime_cpu_ms_per_request: per_request(cpu.wasmtime_s),
        wasmtime_kernel_share: share(cpu.wasmtime_system_s, cpu.wasmtime_s),
        wasmtime_cores: cpu.cores(cpu.wasmtime_s),
        world_cores: cpu.cores(cpu.world_s),
        world_cpu_ms_per_request: per_request(cpu.world_s),
        bench_client_cores: cpu.cores(cpu.client_s),
        irq_cores: cpu.cores(cpu.irq_s),
        other_cores: cpu.cores(cpu.other_s),
    })
}

fn say(text: &str) {
    eprintln!("[mas-bench] {text}");
}

/// Cores used by other processes (not this one, not `wasmtime_pid`) over `window`.
async fn other_load(wasmtime_pid: Option<u32>, window: Duration, clock: Clock) -> f64 {
    let ours = || {
        procfs::process_ticks(std::process::id()) + wasmtime_pid.map_or(0, procfs::process_ticks)
    };
    let (busy_a, irq_a) = procfs::machine_ticks();
    let ours_a = ours();
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (busy_b, irq_b) = procfs::machine_ticks();
    let others = (busy_b - busy_a)
        .saturating_sub(irq_b - irq_a)
        .saturating_sub(ours().saturating_sub(ours_a));
    clock.duration(others).as_secs_f64() / start.elapsed().as_secs_f64()
}

/// Whether a phase should be measured again because other processes used the
/// cores meanwhile (at most `MAX_ATTEMPTS` times in all).
fn disturbed(other_cores: f64, attempt: &mut usize) -> bool {
    if other_cores <= 0.2 || *attempt >= MAX_ATTEMPTS {
        return false;
    }
    say(&format!(
        "other processes used {other_cores:.2} cores meanwhile: measuring again"
    ));
    *attempt += 1;
    true
}

/// Before a phase: waits, within what is left of `budget`, until other processes
/// leave the cores alone (a build next door skews every figure).
async fn wait_idle(wasmtime_pid: Option<u32>, budget: &mut Duration, clock: Clock) {
    let start = Instant::now();
    let mut warned = false;
    while other_load(wasmtime_pid, Duration::from_millis(300), clock).await > 0.2 {
        if start.elapsed() >= *budget {
            say("other processes keep the cores busy; measuring anyway (see the other-load columns)");
            break;
        }
        if !warned {
            say("waiting for other processes to leave the cores alone...");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    *budget = budget.saturating_sub(start.elapsed());
}

async fn run(opts: &Opts) -> anyhow::Result<Results> {
    if !opts.wasm.is_file() {
        bail!(
            "{} not found: build the component first with\n  rustup target add wasm32-wasip2\n  cargo build --release --target wasm32-wasip2 -p mas-coordinator",
            opts.wasm.display()
        );
    }
    if !opts.wasmtime.is_file() {
        bail!(
            "wasmtime not found at {}: install it with\n  cargo install --locked wasmtime-cli --version 48.0.8\n(or pass --wasmtime PATH)",
            opts.wasmtime.display()
        );
    }
    let plan = Plan::new(opts.quick);
    let clock = Clock::new();
    let logs = target_dir().join("mas-bench");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join("wasmtime.log");
    std::fs::write(&log, b"")?;
    let mut meta = report::Meta::collect(opts)?;
    // Other work on the machine skews every figure: measure it, and wait (at most
    // `IDLE_WAIT` over the whole run) for it to stop before each phase.
    let mut idle_budget = IDLE_WAIT;
    meta.busy_cores_before = other_load(None, Duration::from_secs(1), clock).await;
    if meta.busy_cores_before > 0.2 {
        say(&format!(
            "the machine is already {:.2} cores busy with other work",
            meta.busy_cores_before
        ));
    }
    wait_idle(None, &mut idle_budget, clock).await;
    let wasm_bytes = std::fs::metadata(&opts.wasm)?.len();
    let total = Instant::now();

    let world = World::start(WorldOptions::default()).await?;
    let (core, ums) = (addr_of(&world.core_url())?, addr_of(&world.ums_url())?);
    let config = coordinator_config(&world, &opts.wasmtime_args)?;

    say("instantiation: spawn until GET /health answers, with and without the compile cache");
    let startup = startup(opts, &world, plan, &log).await?;

    let (server, _) = Server::start(opts, &world, &[], &log).await?;
    say(&format!(
        "wasmtime serve (pid {}) on {}, world core {core}, ums {ums}",
        server.pid(),
        server.addr
    ));

    wait_idle(Some(server.pid()), &mut idle_budget, clock).await;
    say("GET /health at 1 client");
    let health = health(&server, plan, clock).await?;

    let mut latency = Vec::new();
    let gpa = Scenario::gpa()?;
    let ums_conv = create_conversation(ums).await?;
    let short = Budget {
        warmup: plan.warmup_iters,
        time: plan.latency_budget,
        max: plan.latency_max,
        keepalive: true,
    };
    let mut one_client: Vec<(Scenario, Budget)> = vec![
        (gpa.clone(), short),
        (Scenario::ums(&ums_conv)?, short),
        (
            Scenario::ums_first_turn()?,
            Budget {
                time: short.time / 2,
                max: short.max / 2,
                ..short
            },
        ),
        (
            Scenario::gpa_long_history(LONG_HISTORY_MESSAGES, LONG_HISTORY_STATE_BYTES)?,
            Budget {
                warmup: plan.warmup_iters / 6,
                time: plan.long_budget,
                max: plan.long_max,
                keepalive: true,
            },
        ),
    ];
    if config.coordination_mode == CoordinationMode::Plan {
        one_client.push((
            Scenario::two_agents()?,
            // The world's delays dominate: no kept-alive floor.
            Budget {
                warmup: plan.parallel_warmup,
                time: plan.parallel_budget,
                max: plan.parallel_max,
                keepalive: false,
            },
        ));
    } else {
        say("two_agents skipped: the coordinator is not in COORDINATION_MODE=plan");
    }
    for (scenario, budget) in &one_client {
        say(&format!("1 client: {}", scenario.description));
        world.clear_faults();
        for (target, fault) in &scenario.faults {
            world.set_fault(target, fault.clone());
        }
        let floor = Floor::new(scenario, &config, core, ums).await?;
        let verified = verify_bytes(&world, server.addr, scenario, &floor)
            .await
            .with_context(|| {
                format!(
                    "{}: the floor does not send what the coordinator sends",
                    scenario.name
                )
            })?;
        say(&format!(
            "  floor = coordinator: {} upstream requests ({} body bytes) identical",
            verified.requests, verified.body_bytes
        ));
        let mut attempt = 1;
        let result = loop {
            wait_idle(Some(server.pid()), &mut idle_budget, clock).await;
            let log_start = std::fs::metadata(&log)?.len();
            let run = latency_run(
                &Served::of(&server),
                &world,
                scenario,
                &floor,
                *budget,
                clock,
            )
            .await?;
            let mut result = latency_result(scenario, &floor, verified, &run);
            result.own = own_time_since(&log, log_start, budget.warmup)?;
            if !disturbed(result.other_cores, &mut attempt) {
                break result;
            }
        };
        world.clear_faults();
        latency.push(result);
    }
    let rss_after_latency = procfs::status_kib(server.pid(), "VmHWM").unwrap_or(0);

    let mut load = Vec::new();
    for clients in LOAD_LEVELS {
        for name in ["gpa", "ums"] {
            let scenario = if name == "gpa" {
                gpa.clone()
            } else {
                // A fresh conversation per run keeps UMS's stored history short.
                Scenario::ums(&create_conversation(ums).await?)?
            };
            say(&format!("{clients} clients: {}", scenario.description));
            let scenario = Arc::new(scenario);
            let mut attempt = 1;
            let result = loop {
                wait_idle(Some(server.pid()), &mut idle_budget, clock).await;
                let result =
                    load_run(&server, &world, scenario.clone(), clients, plan, clock).await?;
                if !disturbed(result.other_cores, &mut attempt) {
                    break result;
                }
            };
            load.push(result);
        }
    }
    let peak_rss_kib = procfs::status_kib(server.pid(), "VmHWM").unwrap_or(0);

    let hosts = if opts.no_hosts {
        None
    } else {
        let scenarios = [
            (gpa.clone(), Floor::new(&gpa, &config, core, ums).await?),
            {
                let s = Scenario::ums(&create_conversation(ums).await?)?;
                let f = Floor::new(&s, &config, core, ums).await?;
                (s, f)
            },
        ];
        let budget = Budget {
            warmup: plan.warmup_iters,
            time: plan.latency_budget / 2,
            max: plan.latency_max,
            keepalive: false,
        };
        let mut hosts = HostsResult::default();
        let runs = HostRuns {
            world: &world,
            scenarios: &scenarios,
            budget,
            clock,
        };
        let wasmtime = Served::of(&server);
        hosts.runs = runs
            .measure("wasmtime serve", &wasmtime, &mut idle_budget)
            .await?;
        drop(server);
        if let Err(why) = spin_runs(opts, &runs, &mut hosts, &mut idle_budget).await {
            say(&format!("spin up: skipped: {why}"));
            hosts.spin_skipped = Some(why);
        }
        Some(hosts)
    };

    let long_history = LongHistoryResult::from_runs(&latency, "gpa", "gpa_1000_messages");
    say(&format!("done in {:.1} s", total.elapsed().as_secs_f64()));
    let mut results = Results::new(
        meta,
        wasm_bytes,
        startup,
        health,
        latency,
        long_history,
        load,
        rss_after_latency,
        peak_rss_kib,
        total.elapsed().as_secs_f64(),
    );
    results.hosts = hosts;
    Ok(results)
}

fn connections_name(fresh: bool) -> &'static str {
    if fresh {
        "new per request"
    } else {
        "kept alive"
    }
}

fn host_run(host: &str, fresh: bool, scenario: &Scenario, run: &LatencyRun) -> HostRun {
    let floor = Dist::of(&run.floor.iter().map(FloorRun::slower).collect::<Vec<_>>());
    let coordinated = Dist::of(&run.coordinated);
    let n = run.coordinated.len().max(1) as f64;
    let (busiest, busiest_cpu) = run
        .busiest
        .clone()
        .unwrap_or_else(|| ("?".to_owned(), Duration::ZERO));
    HostRun {
        host: host.to_owned(),
        connections: connections_name(fresh).to_owned(),
        scenario: scenario.name.to_owned(),
        added_p50_ms: coordinated.p50_ms - floor.p50_ms,
        added_p99_ms: coordinated.p99_ms - floor.p99_ms,
        floor,
        coordinated,
        cpu_ms_per_request: run.cpu.wasmtime_s * 1e3 / n,
        busiest_process: busiest,
        busiest_cpu_ms_per_request: busiest_cpu.as_secs_f64() * 1e3 / n,
        failures: run.failures,
        errors: run.errors.clone(),
    }
}

/// The host comparison: the same scenarios, on kept-alive and on new
/// connections, under one host.
struct HostRuns<'a> {
    world: &'a World,
    scenarios: &'a [(Scenario, Floor)],
    budget: Budget,
    clock: Clock,
}

impl HostRuns<'_> {
    async fn measure(
        &self,
        host: &str,
        server: &Served,
        idle_budget: &mut Duration,
    ) -> anyhow::Result<Vec<HostRun>> {
        let mut runs = Vec::new();
        for fresh in [false, true] {
            let served = Served {
                fresh_connections: fresh,
                ..*server
            };
            for (scenario, floor) in self.scenarios {
                say(&format!(
                    "{host}, {}: {}",
                    connections_name(fresh),
                    scenario.name
                ));
                wait_idle(Some(served.root_pid), idle_budget, self.clock).await;
                let run = latency_run(
                    &served,
                    self.world,
                    scenario,
                    floor,
                    self.budget,
                    self.clock,
                )
                .await?;
                runs.push(host_run(host, fresh, scenario, &run));
            }
        }
        Ok(runs)
    }
}

/// The same runs under `spin up`; why they could not happen otherwise.
async fn spin_runs(
    opts: &Opts,
    runs: &HostRuns<'_>,
    hosts: &mut HostsResult,
    idle_budget: &mut Duration,
) -> Result<(), String> {
    let spin =
        spin::find(opts.spin.as_deref()).ok_or("no `spin` on the PATH (nor $SPIN, nor --spin)")?;
    let wasm = target_dir().join("wasm32-wasip2/spin-kv/mas_coordinator.wasm");
    if !wasm.is_file() {
        return Err(format!(
            "{} is missing: cargo build --profile spin-kv --features spin-kv --target wasm32-wasip2 -p mas-coordinator",
            wasm.display()
        ));
    }
    let failed = |e: anyhow::Error| format!("failed: {e:#}");
    hosts.spin_version = Some(spin::version(&spin).map_err(failed)?);
    let dir = target_dir().join("mas-bench");
    let state_dir = dir.join("spin-state");
    let _ = std::fs::remove_dir_all(&state_dir);
    let log = dir.join("spin.log");
    std::fs::write(&log, b"").map_err(|e| failed(e.into()))?;
    // Spin reads the component's configuration from its variables (spin.toml
    // maps each one), so the same settings go in as SPIN_VARIABLE_*.
    let mut variables: Vec<(String, String)> = coordinator_env(runs.world)
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    variables.extend(env_args(&opts.wasmtime_args));
    let manifest = workspace_root().join("spin.toml");
    let server = spin::SpinServer::start(&spin, &manifest, &variables, &state_dir, &log)
        .await
        .map_err(failed)?;
    say(&format!(
        "spin up (pid {}, {}) on {}",
        server.pid(),
        hosts.spin_version.as_deref().unwrap_or("?"),
        server.addr
    ));
    let served = Served {
        addr: server.addr,
        root_pid: server.pid(),
        fresh_connections: false,
    };
    let measured = runs
        .measure("spin up", &served, idle_budget)
        .await
        .map_err(failed)?;
    hosts.runs.extend(measured);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    let mut results = if opts.report_only {
        report::load(&opts.out)?
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("mas-bench-client")
            .enable_all()
            .build()?;
        let results = runtime.block_on(run(&opts))?;
        runtime.shutdown_timeout(Duration::from_secs(1));
        results
    };
    // The latest criterion estimates (if `cargo bench --bench hot_paths` ran) go
    // into the results file too.
    let criterion = report::read_criterion(&opts.criterion);
    if !criterion.is_empty() {
        results.micro = criterion;
    }
    if let Some(a) = report::read_allocations(&target_dir().join("mas-bench/allocations.json")) {
        results.allocations = Some(a);
    }
    // A new run keeps the key figures of the one it replaces (`report` keeps
    // what the file already holds).
    if !opts.report_only {
        results.previous = report::load(&opts.out)
            .ok()
            .map(|p| report::PreviousRun::of(&p));
    }
    report::save(&opts.out, &results)?;
    say(&format!("wrote {}", opts.out.display()));
    let others: Vec<Results> = opts
        .compare
        .iter()
        .map(|p| report::load(p))
        .collect::<anyhow::Result<_>>()?;
    println!("{}", report::summary(&results));
    if let Some(path) = &opts.markdown {
        let md = report::markdown(&results, &others, &workspace_root());
        std::fs::write(path, md).with_context(|| format!("cannot write {}", path.display()))?;
        say(&format!("wrote {}", path.display()));
    }
    let failures = results.failures_total;
    if failures > 0 {
        bail!("{failures} measured requests failed; see the errors in the report");
    }
    Ok(())
}

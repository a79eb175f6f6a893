//! One client, one request at a time: the floor (new and kept-alive
//! connections) and the coordinated request interleaved so all see the same
//! conditions, with wasmtime's CPU over the run; what a scenario's result is
//! made of (added latency per percentile, the agent paths of a parallel plan,
//! the component's own time from its log); and `GET /health` alone.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mas_world::World;

use crate::http::{self, send_fresh, Conn, Req};
use crate::procfs::{self, Clock, CpuSnap, CpuUse};
use crate::report::{AgentPathResult, HealthResult, LatencyResult, ParallelResult};
use crate::run::Plan;
use crate::scenario::{Floor, FloorConns, FloorRun, Scenario, Verified};
use crate::server::Server;
use crate::stats::{Dist, OwnTime};

/// Per-request overhead of the trivial `GET /health` at 1 client.
pub(crate) async fn health(
    server: &Server,
    plan: Plan,
    clock: Clock,
) -> anyhow::Result<HealthResult> {
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
pub(crate) struct LatencyRun {
    pub(crate) floor: Vec<FloorRun>,
    pub(crate) floor_keepalive: Vec<FloorRun>,
    pub(crate) coordinated: Vec<Duration>,
    pub(crate) ttfb: Vec<Duration>,
    pub(crate) failures: usize,
    pub(crate) errors: Vec<String>,
    pub(crate) cpu: CpuUse,
    /// The serving process that used the most CPU, and how much.
    pub(crate) busiest: Option<(String, Duration)>,
}

/// What a 1-client run talks to: an address, the processes that serve it
/// (for their CPU time), and whether each request opens a new connection.
#[derive(Clone, Copy)]
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) root_pid: u32,
    pub(crate) fresh_connections: bool,
}

impl Served {
    pub(crate) fn of(server: &Server) -> Served {
        Served {
            addr: server.addr,
            root_pid: server.pid(),
            fresh_connections: false,
        }
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        procfs::process_tree(self.root_pid)
    }
}

pub(crate) fn note_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
    }
}

/// How long a 1-client run lasts: warm-up iterations, then until the time or
/// the count runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) warmup: usize,
    pub(crate) time: Duration,
    pub(crate) max: usize,
    /// Whether to measure the kept-alive floor too.
    pub(crate) keepalive: bool,
}

/// 1 client, sequential: floor (fresh connections), floor (kept-alive
/// connections) and the coordinated request, interleaved so all three see the
/// same conditions.
pub(crate) async fn latency_run(
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
pub(crate) async fn send_to(
    server: &Served,
    conn: &mut Conn,
    req: &Req,
) -> anyhow::Result<http::Resp> {
    if server.fresh_connections {
        send_fresh(server.addr, req).await
    } else {
        conn.send(req).await
    }
}

pub(crate) fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// With several agent paths: each path, the slower and the sum floors, and
/// what the coordinated request adds over the slower floor.
pub(crate) fn parallel_result(
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
pub(crate) fn own_time_since(log: &Path, from: u64, warmup: usize) -> anyhow::Result<OwnTime> {
    let bytes = std::fs::read(log)?;
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    Ok(OwnTime::from_log(
        &String::from_utf8_lossy(&bytes[start..]),
        warmup,
    ))
}

pub(crate) fn latency_result(
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

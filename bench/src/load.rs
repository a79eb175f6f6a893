//! Throughput: N clients, each on its own kept-alive connection, sending back
//! to back through a warm-up and then a measured window; req/s, the latency
//! of the window and where the CPU went.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mas_world::World;

use crate::http::{Conn, Req, Resp};
use crate::latency::{note_error, share};
use crate::procfs::{Clock, CpuSnap, CpuUse};
use crate::report::LoadResult;
use crate::run::Plan;
use crate::scenario::Scenario;
use crate::server::Server;
use crate::stats::Dist;

/// Whether a response is a correct answer (else why not).
pub(crate) type Check = Arc<dyn Fn(&Resp) -> Result<(), String> + Send + Sync>;

/// What one worker saw in a load run.
#[derive(Debug, Default)]
pub(crate) struct WorkerRun {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) failures: usize,
    pub(crate) errors: Vec<String>,
}

pub(crate) async fn worker(
    addr: SocketAddr,
    req: Arc<Req>,
    check: Check,
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
        let sent = c.send(&req).await;
        let done = Instant::now();
        let in_window = done >= measure_from && done < end;
        match sent {
            Ok(resp) => match check(&resp) {
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

/// What one load window measured.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Latencies of the requests completed inside the window.
    pub(crate) latencies: Vec<Duration>,
    /// Failed requests, warm-up included.
    pub(crate) failures: usize,
    pub(crate) errors: Vec<String>,
    /// CPU over the window (`wasmtime_s`: the serving processes `pids`).
    pub(crate) cpu: CpuUse,
}

/// `clients` concurrent clients sending `req` to `addr`, each on its own
/// kept-alive connection, for warm-up + measure; every answer goes through
/// `check`. The CPU of `pids` (the serving processes) is read over the window.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn window(
    addr: SocketAddr,
    pids: &[u32],
    world: &World,
    req: Arc<Req>,
    check: Check,
    clients: usize,
    plan: Plan,
    clock: Clock,
) -> anyhow::Result<Window> {
    let measure_from = Instant::now() + plan.load_warmup;
    let end = measure_from + plan.load_measure;
    let handles: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(worker(addr, req.clone(), check.clone(), measure_from, end)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    world.clear_requests();
    let a = CpuSnap::take(pids);
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        world.clear_requests();
    }
    let mut w = Window {
        cpu: CpuUse::between(&a, &CpuSnap::take(pids), clock),
        ..Window::default()
    };
    for h in handles {
        let run = h.await?;
        w.latencies.extend(run.latencies);
        w.failures += run.failures;
        for e in run.errors {
            note_error(&mut w.errors, e);
        }
    }
    world.clear_requests();
    Ok(w)
}

/// `clients` concurrent clients sending the scenario's request to the
/// coordinator; counts the requests completed inside the measure window.
pub(crate) async fn load_run(
    server: &Server,
    world: &World,
    scenario: Arc<Scenario>,
    clients: usize,
    plan: Plan,
    clock: Clock,
) -> anyhow::Result<LoadResult> {
    let checked = scenario.clone();
    let check: Check = Arc::new(move |resp: &Resp| checked.check(resp));
    let w = window(
        server.addr,
        &[server.pid()],
        world,
        Arc::new(scenario.request.clone()),
        check,
        clients,
        plan,
        clock,
    )
    .await?;
    let cpu = w.cpu;
    let n = w.latencies.len();
    let per_request = |seconds: f64| seconds * 1e3 / n.max(1) as f64;
    Ok(LoadResult {
        scenario: scenario.name.to_owned(),
        clients,
        measure_s: cpu.wall_s,
        requests: n,
        failures: w.failures,
        errors: w.errors,
        requests_per_s: n as f64 / cpu.wall_s,
        latency: Dist::of(&w.latencies),
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

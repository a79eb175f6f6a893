//! The host comparison: `gpa` and `ums` at 1 client on kept-alive and on new
//! connections under `wasmtime serve`, then the same under `spin up` (the
//! shipped `spin.toml`, the `spin-kv` build) when a `spin` binary is there,
//! or why it was skipped.

use std::time::Duration;

use mas_world::World;

use crate::cli::Opts;
use crate::idle::wait_idle;
use crate::latency::{latency_run, Budget, LatencyRun, Served};
use crate::procfs::Clock;
use crate::report::{HostRun, HostsResult};
use crate::scenario::{Floor, FloorRun, Scenario};
use crate::server::{coordinator_env, env_args, Ready};
use crate::stats::Dist;
use crate::{say, spin, target_dir, workspace_root};

pub(crate) fn connections_name(fresh: bool) -> &'static str {
    if fresh {
        "new per request"
    } else {
        "kept alive"
    }
}

pub(crate) fn host_run(host: &str, fresh: bool, scenario: &Scenario, run: &LatencyRun) -> HostRun {
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
pub(crate) struct HostRuns<'a> {
    pub(crate) world: &'a World,
    pub(crate) scenarios: &'a [(Scenario, Floor)],
    pub(crate) budget: Budget,
    pub(crate) clock: Clock,
}

impl HostRuns<'_> {
    pub(crate) async fn measure(
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
pub(crate) async fn spin_runs(
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
    // spin.toml requires `state_secret`: a bench secret, unless the arguments
    // give one (signing what a request emits costs one HMAC of its small state).
    variables.insert(
        0,
        (
            "STATE_SECRET".to_owned(),
            "mas-bench-state-secret".to_owned(),
        ),
    );
    variables.extend(env_args(&opts.wasmtime_args));
    let manifest = workspace_root().join("spin.toml");
    let server = spin::SpinServer::start(
        &spin,
        &manifest,
        &variables,
        &state_dir,
        &log,
        Ready::Health,
    )
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

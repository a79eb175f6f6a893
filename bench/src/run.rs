//! One whole benchmark run, phase by phase: instantiation, `GET /health`, the
//! 1-client scenarios (each floor first checked byte for byte against the
//! coordinator), the load levels, the host comparison; each phase after a
//! wait for an idle machine and measured again when other work disturbed it.
//! [`Plan`] says how long each part runs (`--quick` or not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mas_coordinator::config::CoordinationMode;
use mas_world::{World, WorldOptions};

use crate::cli::Opts;
use crate::floor::{spin_floor, wasmtime_floor, FloorBench, FloorWasm};
use crate::hosts::{spin_runs, HostRuns};
use crate::idle::{disturbed, other_load, wait_idle, IDLE_WAIT};
use crate::latency::{health, latency_result, latency_run, own_time_since, Budget, Served};
use crate::load::load_run;
use crate::procfs::{self, Clock};
use crate::report::{
    self, CoordinatorGpa, FloorResult, HostsResult, LatencyResult, LoadResult, LongHistoryResult,
    Results,
};
use crate::scenario::{create_conversation, verify_bytes, Floor, Scenario};
use crate::server::{addr_of, coordinator_config, startup, Server};
use crate::{say, target_dir};

/// How long each part runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) startup_trials: usize,
    pub(crate) health_budget: Duration,
    pub(crate) warmup_iters: usize,
    pub(crate) latency_budget: Duration,
    pub(crate) latency_max: usize,
    pub(crate) long_budget: Duration,
    pub(crate) long_max: usize,
    pub(crate) load_warmup: Duration,
    pub(crate) load_measure: Duration,
    /// The two-agent scenario (each iteration takes a few hundred ms).
    pub(crate) parallel_warmup: usize,
    pub(crate) parallel_budget: Duration,
    pub(crate) parallel_max: usize,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Plan {
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

pub(crate) const LOAD_LEVELS: [usize; 3] = [8, 32, 128];

pub(crate) const LONG_HISTORY_MESSAGES: usize = 1000;

pub(crate) const LONG_HISTORY_STATE_BYTES: usize = 2048;

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Results> {
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

    // The host floor, under the same host and flags as the coordinator.
    let mut floor = FloorResult::default();
    let mut floor_failed = 0;
    let floor_wasm = if opts.no_floor {
        Err("--no-floor".to_owned())
    } else {
        FloorWasm::find(&opts.floor)
    };
    let floor_bench = match &floor_wasm {
        Ok(_) => {
            let f = Floor::new(&gpa, &config, core, ums).await?;
            let (at, call) = f
                .dial_agent_call()
                .context("gpa: the floor has no DIAL agent call")?;
            Some(FloorBench {
                world: &world,
                core: at,
                inbound: gpa.request.clone(),
                call: call.clone(),
                plan,
                clock,
            })
        }
        Err(_) => None,
    };
    match (&floor_wasm, &floor_bench) {
        (Ok(wasm), Some(bench)) => {
            match wasmtime_floor(opts, bench, wasm, &mut idle_budget).await {
                Ok(mut row) => {
                    row.gpa = gpa_figures(&latency, &load);
                    floor.rows.push(row);
                }
                Err(e) => {
                    say(&format!("host floor: failed: {e:#}"));
                    floor.skipped = Some(format!("failed: {e:#}"));
                    floor_failed = 1;
                }
            }
        }
        _ => {
            let why = why_not(&floor_wasm);
            say(&format!("host floor: skipped: {why}"));
            floor.skipped = Some(why);
        }
    }

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
        if let (Ok(wasm), Some(bench)) = (&floor_wasm, &floor_bench) {
            match spin_floor(opts, bench, wasm, &mut idle_budget).await {
                Ok(mut row) => {
                    row.gpa = spin_gpa_figures(&hosts);
                    floor.rows.push(row);
                }
                Err(why) => {
                    say(&format!("host floor under spin up: skipped: {why}"));
                    floor.spin_skipped = Some(why);
                }
            }
        }
        Some(hosts)
    };
    if opts.no_hosts && floor_wasm.is_ok() {
        floor.spin_skipped = Some("--no-hosts".to_owned());
    }

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
    results.failures_total += floor_failed + floor.rows.iter().map(|f| f.failures).sum::<usize>();
    results.floor = Some(floor);
    Ok(results)
}

/// Why the floor was not measured.
fn why_not(wasm: &Result<FloorWasm, String>) -> String {
    match wasm {
        Err(why) => why.clone(),
        Ok(_) => "no GPA call to relay".to_owned(),
    }
}

/// The coordinator's `gpa` figures of this run, beside its floor row.
fn gpa_figures(latency: &[LatencyResult], load: &[LoadResult]) -> CoordinatorGpa {
    let one = latency.iter().find(|l| l.scenario == "gpa");
    let at32 = load.iter().find(|l| l.scenario == "gpa" && l.clients == 32);
    CoordinatorGpa {
        added_p50_ms: one.map(|l| l.added_p50_ms),
        cpu_ms_1_client: one.map(|l| l.wasmtime_cpu_ms_per_request),
        cpu_ms_32_clients: at32.map(|l| l.wasmtime_cpu_ms_per_request),
        requests_per_s_32: at32.map(|l| l.requests_per_s),
    }
}

/// The coordinator's `gpa` figures under `spin up` (1 client, kept alive).
fn spin_gpa_figures(hosts: &HostsResult) -> CoordinatorGpa {
    let run = hosts
        .runs
        .iter()
        .find(|r| r.host == "spin up" && r.scenario == "gpa" && r.connections == "kept alive");
    CoordinatorGpa {
        added_p50_ms: run.map(|r| r.added_p50_ms),
        cpu_ms_1_client: run.map(|r| r.cpu_ms_per_request),
        ..CoordinatorGpa::default()
    }
}

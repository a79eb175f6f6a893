//! The host floor: what the host alone costs per HTTP exchange, measured with
//! the two bench-only components of `bench/floor` served by the same host with
//! the same flags as the coordinator (`wasmtime serve` with the run's
//! `--wasmtime-args`; `spin up` with a small generated manifest when a `spin`
//! binary is there).
//!
//! `fixed` answers a fixed SSE body: one inbound exchange. It gets the `gpa`
//! scenario's request, so the host reads what it reads for the coordinator.
//! `relay` forwards the `gpa` scenario's GPA call (path, headers, body) to the
//! world (`RELAY_ORIGIN`) and streams the answer back: one inbound and one
//! outbound exchange, with the upstream work of the coordinator's GPA call.
//! Both run at 1 client on a kept-alive connection (`relay` interleaved with
//! the same call made straight to the world on a new connection, as the host
//! makes it) and at 32 clients. Every answer is checked: `fixed`'s against its
//! body, `relay`'s against the direct answer, byte for byte (the world's
//! per-answer id and creation time aside); a wrong answer is a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use mas_world::World;

use crate::cli::Opts;
use crate::http::{send_fresh, Conn, Req, Resp};
use crate::idle::{disturbed, wait_idle};
use crate::latency::{note_error, Served};
use crate::load::{window, Check, Window};
use crate::procfs::{Clock, CpuSnap, CpuUse};
use crate::report::{CoordinatorGpa, FloorDerived, FloorLoad, HostFloor};
use crate::run::Plan;
use crate::scenario::same_request;
use crate::server::{Ready, Server};
use crate::spin::{self, SpinServer};
use crate::stats::Dist;
use crate::{say, target_dir};

/// `fixed`'s answer: the file the component includes.
pub(crate) const FIXED_BODY: &str = include_str!("../floor/fixed/body.sse");

/// The components, as `cargo build --release --target wasm32-wasip2
/// --manifest-path bench/floor/Cargo.toml` names them.
pub(crate) const FIXED_WASM: &str = "mas_floor_fixed.wasm";
pub(crate) const RELAY_WASM: &str = "mas_floor_relay.wasm";

/// The clients of the throughput phase.
pub(crate) const FLOOR_CLIENTS: usize = 32;

/// The two built components.
#[derive(Debug, Clone)]
pub(crate) struct FloorWasm {
    pub(crate) fixed: PathBuf,
    pub(crate) relay: PathBuf,
}

impl FloorWasm {
    /// Both components in `dir`, or why not.
    pub(crate) fn find(dir: &Path) -> Result<FloorWasm, String> {
        let wasm = FloorWasm {
            fixed: dir.join(FIXED_WASM),
            relay: dir.join(RELAY_WASM),
        };
        for path in [&wasm.fixed, &wasm.relay] {
            if !path.is_file() {
                return Err(format!(
                    "{} is missing: build it with cargo build --release --target wasm32-wasip2 \
--manifest-path bench/floor/Cargo.toml --target-dir target/floor (scripts/bench.sh does)",
                    path.display()
                ));
            }
        }
        Ok(wasm)
    }
}

/// The world's answers carry a per-answer id (`chatcmpl-world-<n>`) and
/// creation time (`"created":<unix seconds>`): both replaced, so that two
/// answers to the same call compare equal.
pub(crate) fn normalize_answer(text: &str) -> String {
    let mut out = text.to_owned();
    for marker in ["chatcmpl-world-", "\"created\":"] {
        let mut next = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(marker) {
            let (before, after) = rest.split_at(at + marker.len());
            next.push_str(before);
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                next.push('N');
            }
            rest = &after[digits..];
        }
        next.push_str(rest);
        out = next;
    }
    out
}

/// `fixed`'s answer is its body, byte for byte.
fn check_fixed(resp: &Resp) -> Result<(), String> {
    if resp.status != 200 {
        return Err(format!("fixed: status {}", resp.status));
    }
    if resp.body != FIXED_BODY.as_bytes() {
        return Err(format!(
            "fixed: the body differs from bench/floor/fixed/body.sse ({} bytes instead of {})",
            resp.body.len(),
            FIXED_BODY.len()
        ));
    }
    Ok(())
}

/// `relay`'s answer is the direct answer (status and body; the body
/// normalized by [`normalize_answer`]).
fn check_relay(resp: &Resp, direct: (u16, &str)) -> Result<(), String> {
    if resp.status != direct.0 {
        return Err(format!(
            "relay: status {} (direct: {})",
            resp.status, direct.0
        ));
    }
    if normalize_answer(resp.text()) != direct.1 {
        return Err(format!(
            "relay: the answer differs from the direct one ({} bytes against {})",
            resp.body.len(),
            direct.1.len()
        ));
    }
    Ok(())
}

/// The two components under one host.
pub(crate) struct Hosted {
    pub(crate) fixed: Served,
    pub(crate) relay: Served,
}

/// What the floor's phases send, where and for how long.
pub(crate) struct FloorBench<'a> {
    pub(crate) world: &'a World,
    /// The world's DIAL Core, where the GPA call goes directly.
    pub(crate) core: SocketAddr,
    /// The `gpa` scenario's request to the coordinator (what `fixed` gets).
    pub(crate) inbound: Req,
    /// The `gpa` scenario's GPA call (what `relay` gets and forwards).
    pub(crate) call: Req,
    pub(crate) plan: Plan,
    pub(crate) clock: Clock,
}

/// What a 1-client phase measured.
#[derive(Debug, Default)]
struct OneClient {
    latencies: Vec<Duration>,
    direct: Vec<Duration>,
    failures: usize,
    errors: Vec<String>,
    cpu: CpuUse,
    requests: usize,
}

impl OneClient {
    fn fail(&mut self, e: String) {
        self.failures += 1;
        note_error(&mut self.errors, e);
    }

    fn cpu_ms_per_request(&self) -> f64 {
        self.cpu.wasmtime_s * 1e3 / self.latencies.len().max(1) as f64
    }
}

/// A load window as the floor's row keeps it.
fn floor_load(w: &Window) -> FloorLoad {
    let n = w.latencies.len();
    FloorLoad {
        clients: FLOOR_CLIENTS,
        requests: n,
        requests_per_s: if w.cpu.wall_s > 0.0 {
            n as f64 / w.cpu.wall_s
        } else {
            0.0
        },
        cpu_ms_per_request: w.cpu.wasmtime_s * 1e3 / n.max(1) as f64,
        latency: Dist::of(&w.latencies),
    }
}

impl FloorBench<'_> {
    /// The direct answer to the GPA call: status and normalized body.
    async fn direct_answer(&self) -> anyhow::Result<(u16, String)> {
        let resp = send_fresh(self.core, &self.call).await?;
        ensure!(
            resp.status == 200,
            "the direct GPA call: status {}",
            resp.status
        );
        Ok((resp.status, normalize_answer(resp.text())))
    }

    /// Before measuring: `relay` sends the world the very request the direct
    /// call sends, and hands the same answer back.
    async fn verify_relay(&self, relay: SocketAddr) -> anyhow::Result<()> {
        self.world.clear_requests();
        let (status, direct) = self.direct_answer().await?;
        let ours = self.world.requests();
        self.world.clear_requests();
        let resp = Conn::connect(relay).await?.send(&self.call).await?;
        let theirs = self.world.requests();
        self.world.clear_requests();
        ensure!(
            ours.len() == 1 && theirs.len() == 1,
            "relay: {} upstream requests for the direct call's {}",
            theirs.len(),
            ours.len()
        );
        same_request(&theirs[0], &ours[0])
            .map_err(|e| anyhow::anyhow!("relay: its upstream request differs: {e}"))?;
        check_relay(&resp, (status, &direct)).map_err(|e| anyhow::anyhow!(e))
    }

    /// `fixed` at 1 client on a kept-alive connection.
    async fn fixed_one_client(&self, fixed: &Served) -> anyhow::Result<OneClient> {
        let plan = self.plan;
        let mut conn = Conn::connect(fixed.addr).await?;
        let mut run = OneClient::default();
        for _ in 0..plan.warmup_iters {
            match conn.send(&self.inbound).await {
                Ok(resp) => {
                    if let Err(e) = check_fixed(&resp) {
                        run.fail(format!("warm-up: {e}"));
                    }
                }
                Err(e) => {
                    run.fail(format!("warm-up: fixed: {e:#}"));
                    conn = Conn::connect(fixed.addr).await?;
                }
            }
        }
        let pids = fixed.pids();
        let before = CpuSnap::take(&pids);
        let start = Instant::now();
        while start.elapsed() < plan.latency_budget && run.requests < plan.latency_max {
            run.requests += 1;
            match conn.send(&self.inbound).await {
                Ok(resp) => match check_fixed(&resp) {
                    Ok(()) => run.latencies.push(resp.total),
                    Err(e) => run.fail(e),
                },
                Err(e) => {
                    run.fail(format!("fixed: {e:#}"));
                    conn = Conn::connect(fixed.addr).await?;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        run.cpu = CpuUse::between(&before, &CpuSnap::take(&pids), self.clock);
        Ok(run)
    }

    /// `relay` at 1 client on a kept-alive connection, each call interleaved
    /// with the same call made straight to the world on a new connection.
    async fn relay_one_client(&self, relay: &Served) -> anyhow::Result<OneClient> {
        let plan = self.plan;
        let mut conn = Conn::connect(relay.addr).await?;
        let mut run = OneClient::default();
        for _ in 0..plan.warmup_iters {
            let (status, direct) = self.direct_answer().await?;
            match conn.send(&self.call).await {
                Ok(resp) => {
                    if let Err(e) = check_relay(&resp, (status, &direct)) {
                        run.fail(format!("warm-up: {e}"));
                    }
                }
                Err(e) => {
                    run.fail(format!("warm-up: relay: {e:#}"));
                    conn = Conn::connect(relay.addr).await?;
                }
            }
            self.world.clear_requests();
        }
        let pids = relay.pids();
        let before = CpuSnap::take(&pids);
        let start = Instant::now();
        while start.elapsed() < plan.latency_budget && run.requests < plan.latency_max {
            run.requests += 1;
            let direct = match send_fresh(self.core, &self.call).await {
                Ok(resp) if resp.status == 200 => {
                    run.direct.push(resp.total);
                    (resp.status, normalize_answer(resp.text()))
                }
                Ok(resp) => {
                    run.fail(format!("direct GPA call: status {}", resp.status));
                    continue;
                }
                Err(e) => {
                    run.fail(format!("direct GPA call: {e:#}"));
                    continue;
                }
            };
            match conn.send(&self.call).await {
                Ok(resp) => match check_relay(&resp, (direct.0, &direct.1)) {
                    Ok(()) => run.latencies.push(resp.total),
                    Err(e) => run.fail(e),
                },
                Err(e) => {
                    run.fail(format!("relay: {e:#}"));
                    conn = Conn::connect(relay.addr).await?;
                }
            }
            self.world.clear_requests();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        run.cpu = CpuUse::between(&before, &CpuSnap::take(&pids), self.clock);
        Ok(run)
    }

    /// One phase, after a wait for an idle machine, measured again (a few
    /// times at most) when other processes disturbed it; the most they used.
    async fn phase<T, F, Fut>(
        &self,
        served: &Served,
        idle_budget: &mut Duration,
        other_cores: &mut f64,
        cpu_of: fn(&T) -> CpuUse,
        measure: F,
    ) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            wait_idle(Some(served.root_pid), idle_budget, self.clock).await;
            let run = measure().await?;
            let cpu = cpu_of(&run);
            let other = cpu.cores(cpu.other_s);
            if !disturbed(other, &mut attempt) {
                *other_cores = other_cores.max(other);
                return Ok(run);
            }
        }
    }

    /// Both components at 1 client and at 32 clients under one host.
    pub(crate) async fn measure(
        &self,
        host: &str,
        flags: &str,
        quick: bool,
        served: &Hosted,
        idle_budget: &mut Duration,
    ) -> anyhow::Result<HostFloor> {
        self.world.clear_faults();
        self.verify_relay(served.relay.addr)
            .await
            .context("relay does not hand the direct call on as it is")?;
        say(&format!(
            "  relay = direct: the same upstream request and the same answer ({host})"
        ));
        let mut other_cores: f64 = 0.0;
        say(&format!("{host}, host floor: fixed at 1 client"));
        let fixed = self
            .phase(
                &served.fixed,
                idle_budget,
                &mut other_cores,
                |r: &OneClient| r.cpu,
                || self.fixed_one_client(&served.fixed),
            )
            .await?;
        say(&format!(
            "{host}, host floor: relay at 1 client (and the direct call)"
        ));
        let relay = self
            .phase(
                &served.relay,
                idle_budget,
                &mut other_cores,
                |r: &OneClient| r.cpu,
                || self.relay_one_client(&served.relay),
            )
            .await?;
        say(&format!(
            "{host}, host floor: fixed at {FLOOR_CLIENTS} clients"
        ));
        let fixed_check: Check = Arc::new(check_fixed);
        let fixed_pids = served.fixed.pids();
        let fixed_load = self
            .phase(
                &served.fixed,
                idle_budget,
                &mut other_cores,
                |w: &Window| w.cpu,
                || {
                    window(
                        served.fixed.addr,
                        &fixed_pids,
                        self.world,
                        Arc::new(self.inbound.clone()),
                        fixed_check.clone(),
                        FLOOR_CLIENTS,
                        self.plan,
                        self.clock,
                    )
                },
            )
            .await?;
        say(&format!(
            "{host}, host floor: relay at {FLOOR_CLIENTS} clients"
        ));
        let (status, direct) = self.direct_answer().await?;
        let relay_check: Check = Arc::new(move |resp: &Resp| check_relay(resp, (status, &direct)));
        let relay_pids = served.relay.pids();
        let relay_load = self
            .phase(
                &served.relay,
                idle_budget,
                &mut other_cores,
                |w: &Window| w.cpu,
                || {
                    window(
                        served.relay.addr,
                        &relay_pids,
                        self.world,
                        Arc::new(self.call.clone()),
                        relay_check.clone(),
                        FLOOR_CLIENTS,
                        self.plan,
                        self.clock,
                    )
                },
            )
            .await?;
        Ok(host_floor(
            host,
            flags,
            quick,
            (fixed, relay),
            (fixed_load, relay_load),
            other_cores,
        ))
    }
}

fn host_floor(
    host: &str,
    flags: &str,
    quick: bool,
    (fixed, relay): (OneClient, OneClient),
    (fixed_load, relay_load): (Window, Window),
    other_cores: f64,
) -> HostFloor {
    let fixed_dist = Dist::of(&fixed.latencies);
    let relay_dist = Dist::of(&relay.latencies);
    let direct = Dist::of(&relay.direct);
    let (fixed_cpu, relay_cpu) = (fixed.cpu_ms_per_request(), relay.cpu_ms_per_request());
    let (fl, rl) = (floor_load(&fixed_load), floor_load(&relay_load));
    let derived = FloorDerived::of(
        (&fixed_dist, fixed_cpu, &fl),
        (&relay_dist, relay_cpu, &rl),
        &direct,
    );
    let mut errors = Vec::new();
    for e in fixed
        .errors
        .into_iter()
        .chain(relay.errors)
        .chain(fixed_load.errors.into_iter().map(|e| format!("@32: {e}")))
        .chain(relay_load.errors.into_iter().map(|e| format!("@32: {e}")))
    {
        note_error(&mut errors, e);
    }
    HostFloor {
        host: host.to_owned(),
        flags: flags.to_owned(),
        quick,
        relay_added_p50_ms: relay_dist.p50_ms - direct.p50_ms,
        relay_added_p99_ms: relay_dist.p99_ms - direct.p99_ms,
        fixed: fixed_dist,
        fixed_cpu_ms_per_request: fixed_cpu,
        direct,
        relay: relay_dist,
        relay_cpu_ms_per_request: relay_cpu,
        fixed_load: fl,
        relay_load: rl,
        derived,
        gpa: CoordinatorGpa::default(),
        other_cores,
        failures: fixed.failures + relay.failures + fixed_load.failures + relay_load.failures,
        errors,
    }
}

/// The floor under `wasmtime serve` with the run's flags: `fixed` and
/// `relay` each in a `wasmtime serve` of its own (`relay` with `--env
/// RELAY_ORIGIN=<the world's Core>`).
pub(crate) async fn wasmtime_floor(
    opts: &Opts,
    bench: &FloorBench<'_>,
    wasm: &FloorWasm,
    idle_budget: &mut Duration,
) -> anyhow::Result<HostFloor> {
    let log = target_dir().join("mas-bench/floor-wasmtime.log");
    std::fs::write(&log, b"")?;
    let origin = vec![("RELAY_ORIGIN".to_owned(), format!("http://{}", bench.core))];
    let (fixed, _) = Server::serve(opts, &wasm.fixed, &[], &[], &log, Ready::Answers).await?;
    let (relay, _) = Server::serve(opts, &wasm.relay, &origin, &[], &log, Ready::Answers).await?;
    say(&format!(
        "host floor under wasmtime serve: fixed (pid {}) on {}, relay (pid {}) on {}",
        fixed.pid(),
        fixed.addr,
        relay.pid(),
        relay.addr
    ));
    let served = Hosted {
        fixed: Served::of(&fixed),
        relay: Served::of(&relay),
    };
    bench
        .measure(
            crate::report::WASMTIME_SERVE,
            &opts.wasmtime_args.join(" "),
            opts.quick,
            &served,
            idle_budget,
        )
        .await
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Spin manifest serving `wasm` on every path, allowed to call `origin`
/// (given to it as `RELAY_ORIGIN`) when there is one.
pub(crate) fn spin_manifest(name: &str, wasm: &Path, origin: Option<&str>) -> String {
    let mut s = format!(
        "# Generated by mas-bench for the host floor (bench/src/floor.rs).\n\
spin_manifest_version = 2\n\n\
[application]\n\
name = \"mas-floor-{name}\"\n\
version = \"0.1.0\"\n\n\
[[trigger.http]]\n\
route = \"/...\"\n\
component = \"{name}\"\n\n\
[component.{name}]\n\
source = {}\n",
        toml_string(&wasm.display().to_string())
    );
    if let Some(origin) = origin {
        let origin = toml_string(origin);
        s.push_str(&format!(
            "allowed_outbound_hosts = [{origin}]\nenvironment = {{ RELAY_ORIGIN = {origin} }}\n"
        ));
    }
    s
}

/// The floor under `spin up`, when a `spin` binary is there; why not otherwise.
pub(crate) async fn spin_floor(
    opts: &Opts,
    bench: &FloorBench<'_>,
    wasm: &FloorWasm,
    idle_budget: &mut Duration,
) -> Result<HostFloor, String> {
    let spin =
        spin::find(opts.spin.as_deref()).ok_or("no `spin` on the PATH (nor $SPIN, nor --spin)")?;
    let failed = |e: anyhow::Error| format!("failed: {e:#}");
    let dir = target_dir().join("mas-bench/floor-spin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| failed(e.into()))?;
    let log = dir.join("spin.log");
    let origin = format!("http://{}", bench.core);
    let mut servers = Vec::new();
    for (name, wasm, origin) in [
        ("fixed", &wasm.fixed, None),
        ("relay", &wasm.relay, Some(origin.as_str())),
    ] {
        let manifest = dir.join(format!("{name}.spin.toml"));
        std::fs::write(&manifest, spin_manifest(name, wasm, origin))
            .map_err(|e| failed(e.into()))?;
        let server = SpinServer::start(
            &spin,
            &manifest,
            &[],
            &dir.join(format!("state-{name}")),
            &log,
            Ready::Answers,
        )
        .await
        .map_err(failed)?;
        servers.push(server);
    }
    let served = |s: &SpinServer| Served {
        addr: s.addr,
        root_pid: s.pid(),
        fresh_connections: false,
    };
    say(&format!(
        "host floor under spin up: fixed on {}, relay on {}",
        servers[0].addr, servers[1].addr
    ));
    let hosted = Hosted {
        fixed: served(&servers[0]),
        relay: served(&servers[1]),
    };
    bench
        .measure("spin up", "", opts.quick, &hosted, idle_budget)
        .await
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_answers_compare_without_their_id_and_time() {
        let a = r#"data: {"id":"chatcmpl-world-12","created":1764000000,"x":1}"#;
        let b = r#"data: {"id":"chatcmpl-world-3","created":1764000001,"x":1}"#;
        assert_eq!(normalize_answer(a), normalize_answer(b));
        assert_eq!(
            normalize_answer(a),
            r#"data: {"id":"chatcmpl-world-N","created":N,"x":1}"#
        );
        assert_ne!(
            normalize_answer(a),
            normalize_answer(&a.replace("\"x\":1", "\"x\":2"))
        );
    }

    #[test]
    fn the_spin_manifest_serves_every_path_and_allows_the_origin() {
        let m = spin_manifest(
            "relay",
            Path::new("/t/mas_floor_relay.wasm"),
            Some("http://127.0.0.1:4000"),
        );
        assert!(m.contains("route = \"/...\"\ncomponent = \"relay\""), "{m}");
        assert!(m.contains("source = \"/t/mas_floor_relay.wasm\""), "{m}");
        assert!(
            m.contains("allowed_outbound_hosts = [\"http://127.0.0.1:4000\"]"),
            "{m}"
        );
        assert!(
            m.contains("environment = { RELAY_ORIGIN = \"http://127.0.0.1:4000\" }"),
            "{m}"
        );
        assert!(!spin_manifest("fixed", Path::new("/f.wasm"), None).contains("allowed"));
    }

    #[test]
    fn the_fixed_body_is_a_complete_stream() {
        assert!(FIXED_BODY.starts_with("data: {"));
        assert!(FIXED_BODY.ends_with("data: [DONE]\n\n"));
    }
}

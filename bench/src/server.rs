//! `wasmtime serve` running the component: the configuration it gets (and
//! the floors are built from), a free loopback port, the wait until
//! `GET /health` answers, and the instantiation figures (spawn to that first
//! answer, with and without the compile cache).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mas_coordinator::config::Config;
use mas_world::World;

use crate::cli::Opts;
use crate::http::{send_fresh, Req};
use crate::report::StartupResult;
use crate::run::Plan;
use crate::stats::Dist;

pub(crate) fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("not an http://IP:PORT url: {url}"))
}

/// The environment `wasmtime serve` passes to the component; the floors are
/// built from the configuration it gives (`Config::from_lookup`), so they follow
/// the coordinator's defaults (`COORDINATION_MODE=plan` among them), except
/// that unsigned states are read: the UMS follow-up and the long GPA history
/// carry states written unsigned, as the seed's conversations do, and the
/// figures measure the work of reading them (as every earlier run did).
pub(crate) fn coordinator_env(world: &World) -> Vec<(&'static str, String)> {
    vec![
        ("DIAL_ENDPOINT", world.core_url()),
        ("UMS_AGENT_ENDPOINT", world.ums_url()),
        ("ALLOW_UNSIGNED_STATE", "true".to_owned()),
    ]
}

/// The component's configuration: [`coordinator_env`], then every
/// `--env NAME=VALUE` of `--wasmtime-args` (later ones win), so that e.g.
/// `--wasmtime-args "--env COORDINATION_MODE=route"` builds route-mode floors.
pub(crate) fn coordinator_config(
    world: &World,
    wasmtime_args: &[String],
) -> anyhow::Result<Config> {
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
pub(crate) fn env_args(wasmtime_args: &[String]) -> Vec<(String, String)> {
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
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

/// When a freshly started server counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// `GET /health` answers 200 (the coordinator).
    Health,
    /// `GET /health` gets any answer (a floor component: `fixed` answers
    /// everything, `relay` hands the world's answer on).
    Answers,
}

impl Server {
    /// Starts the component and waits until `GET /health` answers 200; returns the
    /// server and the time from spawn to that first 200.
    pub(crate) async fn start(
        opts: &Opts,
        world: &World,
        extra: &[&str],
        log: &Path,
    ) -> anyhow::Result<(Server, Duration)> {
        let env: Vec<(String, String)> = coordinator_env(world)
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        Server::serve(opts, &opts.wasm, &env, extra, log, Ready::Health).await
    }

    /// Starts `wasmtime serve` for `wasm` with `env` (each as `--env`), then
    /// `extra` and the run's `--wasmtime-args`, and waits until it is `ready`;
    /// returns the server and the time from spawn to then.
    pub(crate) async fn serve(
        opts: &Opts,
        wasm: &Path,
        env: &[(String, String)],
        extra: &[&str],
        log: &Path,
        ready: Ready,
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
        for (name, value) in env {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        cmd.args(extra)
            .args(&opts.wasmtime_args)
            .arg(wasm)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", opts.wasmtime.display()))?;
        let mut server = Server { child, addr };
        let ready = until_ready(
            &mut server.child,
            addr,
            "wasmtime serve",
            log,
            spawned,
            ready,
        )
        .await?;
        Ok((server, ready))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Waits until the server `child` (spawned at `spawned`) is `ready` on
/// `addr`; the time from spawn to then. Fails when the child exits first or
/// is not ready within 120 s.
pub(crate) async fn until_ready(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
    spawned: Instant,
    ready: Ready,
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
            if resp.status == 200 || ready == Ready::Answers {
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

pub(crate) fn median(samples: &[Duration]) -> f64 {
    Dist::of(samples).p50_ms
}

/// Instantiation: spawn-to-first-200 with and without the compile cache.
pub(crate) async fn startup(
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

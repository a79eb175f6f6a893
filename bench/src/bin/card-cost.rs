//! What an A2A agent's card costs a request: the same request routed to the local
//! world's A2A weather agent, measured with the card read for every request
//! (`CARD_TTL_S=0`: cold) and kept in the breakers' store (warm), under
//! `wasmtime serve` with and without instance reuse (a fresh instance per request
//! has a fresh instance-memory store, so only reuse, or a shared store such as
//! Spin's key-value store, keeps a card warm).
//!
//! ```sh
//! cargo run --release -p mas-bench --bin card-cost -- [REQUESTS]
//! ```
//!
//! Prints, per configuration, the time to the last byte of `REQUESTS` sequential
//! streaming requests (default 200, after 20 unmeasured), p50 and p90 in ms, and
//! how many card reads the agent received. A benchmark: it prints numbers and
//! asserts nothing about them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mas_world::{World, WorldOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: &str = r#"{"stream": true, "messages": [{"role": "user", "content": "@WEATHER What is the weather in Kyiv?"}]}"#;
const WARMUP: usize = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(world: &World, ttl: &str, reuse: bool) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let core = world.core_url();
    let wasmtime = std::env::var_os("WASMTIME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/wasmtime")))
        .context("set WASMTIME")?;
    let wasm = root().join("target/wasm32-wasip2/release/mas_coordinator.wasm");
    let mut cmd = Command::new(wasmtime);
    cmd.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")]);
    if reuse {
        cmd.args(["--max-instance-reuse-count", "1000"]);
    }
    for (k, v) in [
        ("DIAL_ENDPOINT", core.clone()),
        ("UMS_AGENT_ENDPOINT", world.ums_url()),
        ("AGENTS", "GPA,UMS,WEATHER".to_owned()),
        ("AGENT_WEATHER_KIND", "a2a".to_owned()),
        ("AGENT_WEATHER_ENDPOINT", format!("{core}/a2a/weather")),
        ("CARD_TTL_S", ttl.to_owned()),
        (
            "STATE_SECRET",
            "card-cost-bench-secret-0123456789".to_owned(),
        ),
    ] {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    let child = cmd
        .arg(wasm)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wasmtime serve")?;
    let server = Server(child, port);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(reply) = exchange(port, "GET /health HTTP/1.1\r\n", "").await {
            if reply.starts_with("HTTP/1.1 200") {
                return Ok(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("wasmtime serve did not answer /health")
}

/// One request on a fresh connection, read to its end.
async fn exchange(port: u16, head: &str, body: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{head}Host: 127.0.0.1:{port}\r\nApi-Key: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(world: &World, ttl: &str, reuse: bool, n: usize) -> anyhow::Result<()> {
    let server = start(world, ttl, reuse).await?;
    let card_reads = || {
        world
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/agent-card.json"))
            .count()
    };
    let mut times = Vec::with_capacity(n);
    let head = "POST /openai/deployments/mas-coordinator/chat/completions HTTP/1.1\r\n";
    for i in 0..WARMUP + n {
        if i == WARMUP {
            world.clear_requests();
        }
        let started = Instant::now();
        let reply = exchange(server.1, head, BODY).await?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        if !reply.contains("Forecast for Kyiv") || !reply.contains("data: [DONE]") {
            bail!("the A2A agent did not answer: {reply}");
        }
        if i >= WARMUP {
            times.push(took);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "| CARD_TTL_S={ttl:<3} | {:<27} | {n} | {:.2} | {:.2} | {} |",
        if reuse {
            "--max-instance-reuse-count 1000"
        } else {
            "defaults (fresh instance)"
        },
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        card_reads()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("REQUESTS must be a number")?
        .unwrap_or(200);
    let world = World::start(WorldOptions::default()).await?;
    println!("| cards | wasmtime serve | requests | p50 ms | p90 ms | card reads |");
    println!("|---|---|---|---|---|---|");
    for (ttl, reuse) in [("0", false), ("300", false), ("0", true), ("300", true)] {
        measure(&world, ttl, reuse, n).await?;
    }
    Ok(())
}

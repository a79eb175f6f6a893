//! End-to-end harness: the BUILT component served by a real WASI HTTP host
//! (`wasmtime serve` as a child process), and a small HTTP/1.1 client that
//! records when each body frame arrives (to prove that streaming is real).
//!
//! The tests never build the component themselves; build it first with
//! `cargo build --release --target wasm32-wasip2 -p mas-coordinator`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mas_world::{World, WorldOptions};
use serde_json::Value;

/// How long the host may take to answer its first `GET /health`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for any one test request (a hang fails the test instead of blocking it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The path DIAL Core posts to (docs/protocol.md §1.1).
pub const CHAT_PATH: &str = "/openai/deployments/mas-coordinator/chat/completions";

/// The component, as built by `cargo build --release --target wasm32-wasip2`.
pub fn wasm_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let wasm = target.join("wasm32-wasip2/release/mas_coordinator.wasm");
    let build = "cargo build --release --target wasm32-wasip2 -p mas-coordinator";
    let Ok(meta) = std::fs::metadata(&wasm) else {
        panic!(
            "the component is not built: {} does not exist.\n\
             Build it first (from {}):\n    {build}",
            wasm.display(),
            env!("CARGO_MANIFEST_DIR")
        );
    };
    // A component older than its own sources would test yesterday's code.
    if let Some(source) = newer_source(&wasm, meta.modified().ok()) {
        panic!(
            "the component {} is older than {}: rebuild it with\n    {build}",
            wasm.display(),
            source.display()
        );
    }
    wasm
}

/// A source file of this package (under `src/` or `wit/`), listed in cargo's
/// dep-info file next to the component (`mas_coordinator.d`), that changed after
/// the component was built.
fn newer_source(wasm: &Path, built: Option<SystemTime>) -> Option<PathBuf> {
    let built = built?;
    let dep_info = std::fs::read_to_string(wasm.with_extension("d")).ok()?;
    let (_, deps) = dep_info.lines().next()?.split_once(": ")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (src, wit) = (root.join("src"), root.join("wit"));
    // Paths are separated by spaces; a space inside a path is escaped as "\ ".
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => paths.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    paths.push(current);
    paths
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&src) || p.starts_with(&wit))
        .find(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        })
}

/// `wasmtime`: `$WASMTIME`, else cargo's bin folder, else the `PATH`.
pub fn wasmtime_path() -> PathBuf {
    if let Some(explicit) = std::env::var_os("WASMTIME") {
        return PathBuf::from(explicit);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut candidates: Vec<PathBuf> = cargo_home
        .into_iter()
        .map(|h| h.join("bin/wasmtime"))
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/wasmtime"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("wasmtime")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "wasmtime not found (looked at $WASMTIME, $CARGO_HOME/bin, ~/.cargo/bin and PATH).\n\
                 Install it with:\n    cargo install wasmtime-cli --version 48.0.8 --locked"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

/// The component running under `wasmtime serve` on `127.0.0.1`; the process is
/// killed when this is dropped.
#[derive(Debug)]
pub struct WasiHost {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl WasiHost {
    /// Starts `wasmtime serve -Scli --addr 127.0.0.1:PORT --env K=V... <wasm>` on a
    /// free port, its stdout and stderr going to a log file, and waits until
    /// `GET /health` answers 200.
    pub async fn start(env: &[(&str, &str)]) -> WasiHost {
        WasiHost::start_with_args(&[], env).await
    }

    /// Like [`WasiHost::start`], with extra `wasmtime serve` flags placed before
    /// the component (e.g. `["--max-instance-reuse-count", "1000"]`).
    pub async fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> WasiHost {
        let wasm = wasm_path();
        let wasmtime = wasmtime_path();
        // The port is picked by binding and releasing it, so another process may
        // take it in between: then wasmtime exits at once and we try another.
        for attempt in 1..=3 {
            let mut host = WasiHost::spawn(&wasmtime, &wasm, args, env);
            match host.wait_healthy().await {
                Ok(()) => return host,
                Err(logs) if attempt < 3 && logs.contains("in use") => continue,
                Err(logs) => panic!(
                    "`wasmtime serve` did not become healthy on port {}.\n\
                     wasmtime: {}\ncomponent: {}\nits output:\n{logs}",
                    host.port,
                    wasmtime.display(),
                    wasm.display()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn(wasmtime: &Path, wasm: &Path, args: &[&str], env: &[(&str, &str)]) -> WasiHost {
        let port = free_port();
        let n = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
        let log_path = std::env::temp_dir().join(format!(
            "mas-coordinator-wasi-host-{}-{port}-{n}.log",
            std::process::id()
        ));
        let log = File::create(&log_path).unwrap();
        let mut command = Command::new(wasmtime);
        command
            .arg("serve")
            .arg("-Scli")
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"));
        command.args(args);
        // Tests written for the seed's single-agent flow run in `route` mode;
        // plan-mode tests say COORDINATION_MODE=plan (the product's default).
        if !env.iter().any(|(k, _)| *k == "COORDINATION_MODE") {
            command.arg("--env").arg("COORDINATION_MODE=route");
        }
        // The fault matrix reads every upstream call's line; tests of the
        // default level say LOG_LEVEL=info.
        if !env.iter().any(|(k, _)| *k == "LOG_LEVEL") {
            command.arg("--env").arg("LOG_LEVEL=debug");
        }
        // The seed's conversations carry states written unsigned (as the
        // Python reference writes them): read them, as a deployment serving
        // such conversations is configured, unless the test signs or says.
        if !env
            .iter()
            .any(|(k, _)| *k == "STATE_SECRET" || *k == "ALLOW_UNSIGNED_STATE")
        {
            command.arg("--env").arg("ALLOW_UNSIGNED_STATE=true");
        }
        for (k, v) in env {
            command.arg("--env").arg(format!("{k}={v}"));
        }
        command
            .arg(wasm)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", wasmtime.display()));
        WasiHost {
            child,
            port,
            log_path,
        }
    }

    /// Polls `GET /health`; on failure returns the host's output.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let health = format!("{}/health", self.url());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", self.logs()));
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                send("GET", &health, &[], Vec::new()),
            )
            .await;
            // Any answer means the host serves the component (a misconfigured
            // coordinator answers its health check with 500).
            if let Ok(Ok(_)) = probe {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(no healthy answer within {STARTUP_TIMEOUT:?})\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The chat-completions URL of the `mas-coordinator` deployment.
    pub fn chat_url(&self) -> String {
        format!("{}{CHAT_PATH}", self.url())
    }

    /// Everything the host and the component wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The component's JSON log lines so far (wasmtime prefixes each line with
    /// `stderr [N] :: `; lines that hold no JSON object are skipped).
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| {
                let start = line.find('{')?;
                serde_json::from_str::<Value>(&line[start..])
                    .ok()
                    .filter(Value::is_object)
            })
            .collect()
    }
}

impl Drop for WasiHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "wasmtime serve output kept in {}:\n{}",
                self.log_path.display(),
                self.logs()
            );
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// A fresh local DIAL world and the component pointed at it (`DIAL_ENDPOINT`,
/// `UMS_AGENT_ENDPOINT`, plus `extra_env`).
#[derive(Debug)]
pub struct Stack {
    pub world: World,
    pub host: WasiHost,
}

impl Stack {
    pub async fn start(extra_env: &[(&str, &str)]) -> Stack {
        Stack::start_with_args(&[], extra_env).await
    }

    /// Like [`Stack::start`], with extra `wasmtime serve` flags.
    pub async fn start_with_args(args: &[&str], extra_env: &[(&str, &str)]) -> Stack {
        let world = World::start(WorldOptions::default()).await.unwrap();
        let core = world.core_url();
        let ums = world.ums_url();
        let mut env = vec![
            ("DIAL_ENDPOINT", core.as_str()),
            ("UMS_AGENT_ENDPOINT", ums.as_str()),
        ];
        env.extend_from_slice(extra_env);
        let host = WasiHost::start_with_args(args, &env).await;
        Stack { world, host }
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response whose body frames were timed as they arrived.
#[derive(Debug, Clone)]
pub struct TimedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// When the request was handed to the client.
    pub sent_at: Instant,
    /// When the response head arrived.
    pub head_at: Instant,
    /// Each body frame with its arrival time, in order.
    pub frames: Vec<(Instant, Vec<u8>)>,
}

impl TimedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    pub fn body(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.clone()).collect()
    }

    /// Arrival of the last frame (the head when there was no body).
    pub fn finished_at(&self) -> Instant {
        self.frames.last().map_or(self.head_at, |(t, _)| *t)
    }

    /// The SSE events' `data` payloads, each with the arrival time of the frame
    /// that completed it.
    pub fn timed_events(&self) -> Vec<(Instant, String)> {
        let mut pending = String::new();
        let mut out = Vec::new();
        for (at, bytes) in &self.frames {
            pending.push_str(std::str::from_utf8(bytes).expect("UTF-8 frames"));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                out.push((*at, event_data(&event)));
            }
        }
        assert!(
            pending.is_empty(),
            "the body ends inside an event: {pending:?}"
        );
        out
    }

    /// The SSE events' `data` payloads.
    pub fn events(&self) -> Vec<String> {
        self.timed_events().into_iter().map(|(_, e)| e).collect()
    }
}

/// The `data` of one SSE event (`data: ...` then a blank line; one data line).
fn event_data(event: &str) -> String {
    let line = event.trim_end_matches('\n');
    assert!(
        !line.contains('\n'),
        "an event has one data line, got {event:?}"
    );
    line.strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not a data line: {event:?}"))
        .to_owned()
}

/// Splits a whole SSE body into its events' `data` payloads.
pub fn sse_events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    assert!(
        text.ends_with("\n\n"),
        "an SSE body ends with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|e| event_data(&format!("{e}\n\n")))
        .collect()
}

fn build_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    let has_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !has_type {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

fn header_list(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Sends one request and reads the whole answer.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = build_request(method, url, headers, body);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = header_list(response.headers());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no complete answer within {REQUEST_TIMEOUT:?}"))?
}

/// `POST url` with a JSON body; panics on a transport failure.
pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
    send("POST", url, headers, body.to_string().into_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

/// `GET url`; panics on a transport failure.
pub async fn get(url: &str) -> HttpResponse {
    send("GET", url, &[], Vec::new())
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

/// `POST url` with a JSON body, reading the answer frame by frame and timing
/// each frame's arrival.
pub async fn post_json_timed(url: &str, headers: &[(&str, &str)], body: &Value) -> TimedResponse {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = build_request("POST", url, headers, body.to_string().into_bytes());
    let exchange = async {
        let sent_at = Instant::now();
        let response = client.request(request).await.unwrap();
        let head_at = Instant::now();
        let status = response.status().as_u16();
        let headers = header_list(response.headers());
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("the body broke: {e}"));
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    frames.push((Instant::now(), data.to_vec()));
                }
            }
        }
        TimedResponse {
            status,
            headers,
            sent_at,
            head_at,
            frames,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("POST {url}: no complete answer within {REQUEST_TIMEOUT:?}"))
}

//! `make run` (scripts/run.sh) as a user runs it: every port is checked before
//! anything is built or started, and a taken one is named with how to pick
//! another; "ready" comes only once the script's own coordinator answers; a
//! chat goes through it and its log line comes out of `scripts/logs.sh`; Ctrl-C
//! (SIGINT to the process group, as a terminal sends it) stops everything with
//! "stopped" and status 0; a child that dies is named with its status (exit 1)
//! and the other one is stopped.
//!
//! Each test gives the script ports of its own (PORT, WORLD_CORE_PORT,
//! WORLD_UMS_PORT, WORLD_UMS_BACKUP_PORT), a LOG_DIR of its own and the wasmtime
//! the other e2e tests use (`$WASMTIME`, else cargo's bin folder). The script
//! builds the component and the world in release itself: no-ops once
//! scripts/test.sh has built them (a nested cargo works: `cargo test` releases
//! the build directory's lock before it runs the tests).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::host::{get, post_json, wasmtime_path, CHAT_PATH};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Safety net for reaching "ready" (the builds are no-ops after scripts/test.sh).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Safety net for the script's exit once it has been told to stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Every variable run.sh passes on to the coordinator (and HOST): removed from
/// the script's environment, so a developer's own settings never change what is
/// tested. `AGENT_*` variables are removed as well.
const CONFIG_VARS: &[&str] = &[
    "HOST",
    "DIAL_ENDPOINT",
    "DEPLOYMENT_NAME",
    "UMS_AGENT_ENDPOINT",
    "GPA_DEPLOYMENT_NAME",
    "DIAL_API_VERSION",
    "MAX_REQUEST_BYTES",
    "MAX_MESSAGES",
    "BACKUP_DEPLOYMENT_NAMES",
    "GPA_BACKUP_DEPLOYMENTS",
    "UMS_AGENT_BACKUP_ENDPOINTS",
    "UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
    "UPSTREAM_IDLE_TIMEOUT_MS",
    "UPSTREAM_TOTAL_TIMEOUT_MS",
    "REQUEST_DEADLINE_MS",
    "BREAKER_FAILURE_THRESHOLD",
    "BREAKER_WINDOW_MS",
    "BREAKER_OPEN_MS",
    "BREAKER_MIN_CALLERS",
    "STATE_SECRET",
    "STATE_MAX_AGE_S",
    "HEALTH_TOKEN",
    "AGENTS",
    "COORDINATION_MODE",
    "MAX_PLAN_ROUNDS",
    "MAX_SUBTASKS",
    "MAX_PARALLEL",
];

/// The four ports of one run.
#[derive(Debug, Clone, Copy)]
struct Ports {
    coordinator: u16,
    core: u16,
    ums: u16,
    backup: u16,
}

impl Ports {
    fn all(&self) -> [u16; 4] {
        [self.coordinator, self.core, self.ums, self.backup]
    }
}

/// Ports handed out in this process, never handed out twice.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Four distinct free ports (held together while chosen, so they differ).
fn fresh_ports() -> Ports {
    let mut handed = HANDED_OUT.lock().unwrap();
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        held.push(listener);
        if !handed.contains(&port) {
            handed.push(port);
            ports.push(port);
        }
    }
    Ports {
        coordinator: ports[0],
        core: ports[1],
        ums: ports[2],
        backup: ports[3],
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One `scripts/run.sh` in a process group of its own.
struct Run {
    child: Child,
    pgid: u32,
    ports: Ports,
    log_dir: PathBuf,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The stdout lines read so far.
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Run {
    /// Starts the script on `ports` with `env` on top of a clean configuration.
    fn start(ports: Ports, env: &[(&str, &str)]) -> Run {
        let log_dir = std::env::temp_dir().join(format!(
            "mas-run-script-{}-{}",
            std::process::id(),
            ports.coordinator
        ));
        // A terminal's foreground job has SIGINT at its default; `env
        // --default-signal` restores it in case this test runs where SIGINT is
        // ignored (a background job of a script), since bash cannot trap a
        // signal that was ignored when it started.
        let mut command = Command::new("env");
        command
            .arg("--default-signal=INT")
            .arg("bash")
            .arg(root().join("scripts/run.sh"))
            .current_dir(root());
        for var in CONFIG_VARS {
            command.env_remove(var);
        }
        for (var, _) in std::env::vars() {
            if var.starts_with("AGENT_") {
                command.env_remove(var);
            }
        }
        command
            .env("PORT", ports.coordinator.to_string())
            .env("WORLD_CORE_PORT", ports.core.to_string())
            .env("WORLD_UMS_PORT", ports.ums.to_string())
            .env("WORLD_UMS_BACKUP_PORT", ports.backup.to_string())
            .env("LOG_DIR", &log_dir)
            .env("WASMTIME", wasmtime_path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().expect("cannot start bash scripts/run.sh");
        let pgid = child.id().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Run {
            child,
            pgid,
            ports,
            log_dir,
            stdout,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    fn coordinator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.coordinator)
    }

    /// The line that says the coordinator is ready, exactly.
    fn ready_line(&self) -> String {
        let p = self.ports;
        format!(
            "The coordinator is ready on http://127.0.0.1:{} (DIAL Core: http://127.0.0.1:{}, UMS: http://127.0.0.1:{}).",
            p.coordinator, p.core, p.ums
        )
    }

    /// Reads stdout until the ready line and the rest of the message, which
    /// ends with "Press Ctrl-C to stop."; panics with everything the script
    /// said if it ends first.
    async fn wait_ready(&mut self) {
        let ready = self.ready_line();
        let reading = async {
            let mut is_ready = false;
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                is_ready |= line == ready;
                let last = line == "Press Ctrl-C to stop.";
                self.seen.push(line);
                if last {
                    return is_ready;
                }
            }
            false
        };
        let found = tokio::time::timeout(READY_TIMEOUT, reading).await;
        if found != Ok(true) {
            self.signal("KILL");
            let (status, stdout, stderr) = self.finish().await;
            panic!(
                "run.sh did not print {ready:?} ({status:?})\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
    }

    /// Sends a signal to the script's whole process group, as a terminal does.
    fn signal(&self, signal: &str) {
        assert!(
            kill(signal, &format!("-{}", self.pgid)),
            "kill -{signal} -- -{}",
            self.pgid
        );
    }

    /// The pid of the group's process named `name` (the world or wasmtime).
    fn pid_of(&self, name: &str) -> u32 {
        let out = std::process::Command::new("pgrep")
            .args(["-g", &self.pgid.to_string(), "-x", name])
            .output()
            .expect("pgrep");
        let pids = String::from_utf8_lossy(&out.stdout);
        let pids: Vec<u32> = pids.lines().map(|p| p.trim().parse().unwrap()).collect();
        assert_eq!(pids.len(), 1, "one {name} in the script's group: {pids:?}");
        pids[0]
    }

    /// Waits for the script's exit: its status, all its stdout, all its stderr.
    async fn finish(&mut self) -> (ExitStatus, String, String) {
        let status = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("run.sh did not exit within {EXIT_TIMEOUT:?}"))
            .unwrap();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            self.seen.push(line);
        }
        let stderr = self.stderr.take().unwrap().await.unwrap();
        (status, self.seen.join("\n"), stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever happened, nothing of this run outlives the test.
        if std::thread::panicking() {
            kill("KILL", &format!("-{}", self.pgid));
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// `kill -SIGNAL -- TARGET` (a pid, or `-PGID` for a process group); whether it worked.
fn kill(signal: &str, target: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether every port can be listened on again (nothing of the run holds one).
fn assert_free(ports: &[u16]) {
    for port in ports {
        TcpListener::bind(("127.0.0.1", *port))
            .unwrap_or_else(|e| panic!("port {port} is still taken after the run: {e}"));
    }
}

/// Why run.sh says a port is taken: python3's bind error, or its fallback.
fn in_use_reason() -> &'static str {
    let python = std::process::Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if python {
        "Address already in use"
    } else {
        "something accepts connections on it"
    }
}

/// Runs the script to its end (it is expected to stop by itself).
async fn run_to_end(ports: Ports, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut run = Run::start(ports, env);
    run.finish().await
}

/// Checks the two lines run.sh prints for a taken port: the exact first one,
/// and a suggested port that is none of the run's own.
fn assert_taken_message(stderr: &str, port: u16, var: &str, what: &str, ports: &Ports) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "two lines:\n{stderr}");
    assert_eq!(
        lines[0],
        format!(
            "error: port {port} ({var}, for {what}) is already in use on 127.0.0.1: {}.",
            in_use_reason()
        )
    );
    let suggestion = lines[1]
        .strip_prefix(&format!(
            "Stop what listens there, or pick another port, e.g.: {var}="
        ))
        .and_then(|rest| rest.strip_suffix(" make run"))
        .unwrap_or_else(|| panic!("unexpected second line: {:?}", lines[1]));
    let suggested: u16 = suggestion.parse().unwrap();
    assert!(suggested > port, "{suggested} follows {port}");
    assert!(
        !ports.all().contains(&suggested),
        "{suggested} is not a port of this run"
    );
}

#[tokio::test]
async fn a_taken_port_is_named_before_anything_is_built_or_started() {
    // A world port (the script starts the world: no endpoints given).
    let ports = fresh_ports();
    let _taken = TcpListener::bind(("127.0.0.1", ports.ums)).unwrap();
    let (status, stdout, stderr) = run_to_end(ports, &[]).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "", "nothing was built or started");
    assert_taken_message(
        &stderr,
        ports.ums,
        "WORLD_UMS_PORT",
        "the local world's UMS stand-in",
        &ports,
    );

    // The coordinator's port, serving given endpoints (no world: its ports are
    // not checked, so one of them being taken does not matter).
    let ports = fresh_ports();
    let _taken = TcpListener::bind(("127.0.0.1", ports.coordinator)).unwrap();
    let _world_port_taken = TcpListener::bind(("127.0.0.1", ports.core)).unwrap();
    let endpoints = [
        ("DIAL_ENDPOINT", "http://127.0.0.1:9"),
        ("UMS_AGENT_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let (status, stdout, stderr) = run_to_end(ports, &endpoints).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "");
    assert_taken_message(
        &stderr,
        ports.coordinator,
        "PORT",
        "the coordinator",
        &ports,
    );
}

#[tokio::test]
async fn ready_serves_a_chat_and_ctrl_c_stops_everything_with_status_0() {
    const SECRET: &str = "run-script-state-secret-0123456789";
    const TOKEN: &str = "run-script-health-token-0123456789";
    let mut run = Run::start(
        fresh_ports(),
        &[("STATE_SECRET", SECRET), ("HEALTH_TOKEN", TOKEN)],
    );
    run.wait_ready().await;
    let url = run.coordinator_url();

    let health = get(&format!("{url}/health")).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["breaker_store"], "instance-memory");
    // The secrets reached the component, and not through wasmtime's command
    // line, which every local user can read.
    assert_eq!(health.json()["state_signing"], "on");
    let deep = get(&format!("{url}/health?deep=1")).await;
    assert_eq!(deep.status, 401, "the token is required");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.pid_of("wasmtime"))).unwrap();
    let args: Vec<String> = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .map(str::to_owned)
        .collect();
    for (var, value) in [("STATE_SECRET", SECRET), ("HEALTH_TOKEN", TOKEN)] {
        assert!(
            args.windows(2).any(|w| w[0] == "--env" && w[1] == var),
            "{var} is inherited: {args:?}"
        );
        assert!(args.iter().all(|a| !a.contains(value)), "{args:?}");
    }
    let chat = post_json(
        &format!("{url}{CHAT_PATH}"),
        &[("Api-Key", "local-test-key")],
        &json!({"stream": true, "messages": [{"role": "user", "content": "Do we have Andrej Karpathy as a user?"}]}),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    let text = chat.text();
    assert!(
        text.contains("UMS[ums-conv-0001#1]"),
        "UMS answered: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // The world's A2A agent is in the registry, described by its card.
    let weather = post_json(
        &format!("{url}{CHAT_PATH}"),
        &[("Api-Key", "local-test-key")],
        &json!({"stream": true, "messages": [{"role": "user", "content": "@WEATHER What is the weather in Kyiv?"}]}),
    )
    .await;
    let text = weather.text();
    assert!(
        text.contains("Call WEATHER Agent")
            && text.contains("WEATHER[world-ctx-1#1]: Forecast for Kyiv: +5°C, light rain."),
        "the A2A agent answered: {text}"
    );

    // The request's log line, out of wasmtime's prefixed output.
    let log = run.log_dir.join("coordinator.log");
    let logs = std::process::Command::new("bash")
        .arg(root().join("scripts/logs.sh"))
        .arg(&log)
        .arg("event=request")
        .output()
        .unwrap();
    assert!(logs.status.success());
    let lines: Vec<Value> = String::from_utf8(logs.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "two requests: {lines:?}");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["agent"], "UMS");
    assert_eq!(lines[1]["agent"], "WEATHER");
    // wasmtime's own line goes to stderr, not into the JSON lines.
    let stderr = String::from_utf8(logs.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "Serving HTTP on http://127.0.0.1:{}/\n",
            run.ports.coordinator
        )
    );

    // The world's Core runs two instances of this coordinator: a chat through one
    // reaches our coordinator with the instance's name and properties.
    let core = format!("http://127.0.0.1:{}", run.ports.core);
    let instance = |name: &str| format!("{core}/openai/deployments/{name}/chat/completions");
    assert!(
        run.seen.iter().any(|line| line.contains(&format!(
            "{} and {}",
            instance("hr-assistant"),
            instance("travel-assistant")
        ))),
        "the instances are shown: {:?}",
        run.seen
    );
    let chat = post_json(
        &instance("hr-assistant"),
        &[("Api-Key", "local-test-key")],
        &json!({"stream": true, "messages": [{"role": "user", "content": "Do we have Andrej Karpathy as a user?"}]}),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    assert!(chat.text().ends_with("data: [DONE]\n\n"), "{}", chat.text());
    let recorded = get(&format!("{core}/_world/requests")).await.json();
    let forwarded = recorded
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "app")
        .expect("the call forwarded to the coordinator is recorded");
    assert_eq!(
        forwarded["path"],
        "/openai/deployments/hr-assistant/chat/completions"
    );
    let header = |name: &str| {
        forwarded["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .and_then(|h| h[1].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        header("x-dial-application-id").as_deref(),
        Some("hr-assistant")
    );
    let properties: Value =
        serde_json::from_str(&header("x-dial-application-properties").unwrap()).unwrap();
    assert_eq!(
        properties,
        json!({
            "agents": [
                {"name": "GPA", "kind": "dial", "deployment": "general-purpose-agent"},
                {"name": "UMS", "kind": "ums", "endpoint": format!("http://127.0.0.1:{}", run.ports.ums)},
            ],
            "plan_approval": "never",
        })
    );
    assert_eq!(
        header("host"),
        Some(format!("127.0.0.1:{}", run.ports.coordinator))
    );

    run.signal("INT");
    let (status, stdout, stderr) = run.finish().await;
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout.lines().last(), Some("==> stopped"));
    assert!(!stderr.contains("error"), "{stderr}");
    assert_free(&run.ports.all());
}

#[tokio::test]
async fn a_world_that_dies_is_named_and_the_coordinator_stopped() {
    let mut run = Run::start(fresh_ports(), &[]);
    run.wait_ready().await;
    let pid = run.pid_of("mas-world");
    assert!(kill("KILL", &pid.to_string()));
    let (status, stdout, stderr) = run.finish().await;
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let named = format!(
        "error: the local DIAL world (mas-world, pid {pid}) was killed by SIGKILL. The end of {}:",
        run.log_dir.join("world.log").display()
    );
    assert!(
        stderr.lines().any(|l| l == named),
        "{named:?} in:\n{stderr}"
    );
    // Only the script's own report: not bash's "line N: PID Killed ..." too.
    assert!(!stderr.contains("Killed"), "{stderr}");
    assert_eq!(stdout.lines().last(), Some("==> stopped"));
    assert_free(&run.ports.all());
}

#[tokio::test]
async fn a_wasmtime_that_dies_is_named_and_the_world_stopped() {
    let mut run = Run::start(fresh_ports(), &[]);
    run.wait_ready().await;
    let pid = run.pid_of("wasmtime");
    assert!(kill("TERM", &pid.to_string()));
    let (status, stdout, stderr) = run.finish().await;
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let log = run.log_dir.join("coordinator.log");
    let named = format!(
        "error: the coordinator (wasmtime serve, pid {pid}) was killed by SIGTERM. The end of {}:",
        log.display()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == named)
        .unwrap_or_else(|| panic!("{named:?} in:\n{stderr}"));
    // Then the end of its log, indented.
    assert_eq!(
        lines.get(at + 1).copied(),
        Some(
            format!(
                "    Serving HTTP on http://127.0.0.1:{}/",
                run.ports.coordinator
            )
            .as_str()
        )
    );
    assert_eq!(stdout.lines().last(), Some("==> stopped"));
    assert_free(&run.ports.all());
}

#[tokio::test]
async fn a_misconfigured_coordinator_is_never_ready() {
    let (status, stdout, stderr) = run_to_end(fresh_ports(), &[("AGENTS", "FOO")]).await;
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("is ready"), "{stdout}");
    let reported = stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: the coordinator is misconfigured: "))
        .unwrap_or_else(|| panic!("no misconfiguration reported:\n{stderr}"));
    let body: Value = serde_json::from_str(reported).unwrap();
    assert_eq!(body["status"], "misconfigured");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AGENT_FOO_KIND"),
        "{body}"
    );
    assert_eq!(stdout.lines().last(), Some("==> stopped"));
}

#[test]
fn the_script_passes_on_every_configuration_variable() {
    // scripts/run.sh names the variables it hands to wasmtime with --env; one
    // it forgot would be silently ignored by `make run`.
    let script = std::fs::read_to_string(root().join("scripts/run.sh")).unwrap();
    let list = script
        .split("for var in ")
        .nth(1)
        .and_then(|rest| rest.split("; do").next())
        .expect("run.sh has its `for var in ...; do` list");
    let mut passed: Vec<&str> = list.split_whitespace().filter(|w| *w != "\\").collect();
    passed.sort_unstable();
    let mut read: Vec<&str> = mas_coordinator::config::VARIABLES.to_vec();
    read.sort_unstable();
    assert_eq!(passed, read);
}

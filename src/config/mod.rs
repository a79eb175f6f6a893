//! Configuration, read from environment variables once per request.
//!
//! Environment variables are the one configuration channel every WASI host has
//! (`wasmtime serve --env`, `spin up -e`, `environment` in `spin.toml`). The
//! portable build reads nothing else: importing Spin's variables interface
//! would stop plain WASI hosts from starting it. The `spin-kv` build, which is
//! Spin-only anyway, also reads a Spin variable of the same name in lower case
//! for what the environment does not set (`host.rs`); [`VARIABLES`] is the
//! list `spin.toml` declares. The names of the Python reference are kept so
//! that existing set-ups carry over. The agents are a table of their own
//! (`config/registry.rs`), read by their kinds (`agents/kinds.rs`, which is why
//! `Config::from_lookup` lives there). Parsing is pure: it takes a lookup
//! function, and reports every malformed variable at once.

pub mod registry;

use crate::client::{dial_targets, Target};
use crate::config::registry::Registry;
use crate::error::{CoordError, Problems};

/// Every configuration variable the coordinator reads, in the README's order,
/// except the per-agent `AGENT_<NAME>_<FIELD>` ones of the registry.
pub const VARIABLES: &[&str] = &[
    "DIAL_ENDPOINT",
    "DEPLOYMENT_NAME",
    "BACKUP_DEPLOYMENT_NAMES",
    "AGENTS",
    "UMS_AGENT_ENDPOINT",
    "UMS_AGENT_BACKUP_ENDPOINTS",
    "GPA_DEPLOYMENT_NAME",
    "GPA_BACKUP_DEPLOYMENTS",
    "COORDINATION_MODE",
    "PLAN_APPROVAL",
    "MAX_PLAN_ROUNDS",
    "MAX_SUBTASKS",
    "MAX_PARALLEL",
    "CARD_TTL_S",
    "COORDINATION_PROMPT",
    "SYNTHESIS_PROMPT",
    "ALLOWED_AGENT_HOSTS",
    "PUBLIC_URL",
    "DIAL_API_VERSION",
    "MAX_REQUEST_BYTES",
    "MAX_MESSAGES",
    "UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
    "UPSTREAM_IDLE_TIMEOUT_MS",
    "UPSTREAM_TOTAL_TIMEOUT_MS",
    "REQUEST_DEADLINE_MS",
    "HEARTBEAT_INTERVAL_MS",
    "BREAKER_FAILURE_THRESHOLD",
    "BREAKER_WINDOW_MS",
    "BREAKER_MIN_CALLERS",
    "BREAKER_OPEN_MS",
    "STATE_SECRET",
    "STATE_SECRET_PREVIOUS",
    "ALLOW_UNSIGNED_STATE",
    "STATE_MAX_AGE_S",
    "HEALTH_TOKEN",
    "LOG_LEVEL",
];

/// The variables of [`VARIABLES`] that hold secrets.
pub const SECRET_VARIABLES: &[&str] = &["STATE_SECRET", "STATE_SECRET_PREVIOUS", "HEALTH_TOKEN"];

/// Default DIAL Core base URL.
pub const DEFAULT_DIAL_ENDPOINT: &str = "http://localhost:8080";
/// Default LLM deployment for coordination and synthesis.
pub const DEFAULT_DEPLOYMENT_NAME: &str = "gpt-4o";
/// Default request body limit: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default deadline of a whole request: 5 minutes.
pub const DEFAULT_REQUEST_DEADLINE_MS: u64 = 300_000;
/// Default limit on the number of messages in a request.
pub const DEFAULT_MAX_MESSAGES: usize = 2_000;

/// Timeouts of every upstream call, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the response head arrives (covers connecting; for non-streaming
    /// calls the whole answer is generated before the head).
    pub first_byte_ms: u64,
    /// Longest silence between two body chunks.
    pub idle_ms: u64,
    /// Longest whole call, head and body.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte_ms: 30_000,
            idle_ms: 120_000,
            total_ms: 300_000,
        }
    }
}

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// The failures must happen within this many milliseconds.
    pub window_ms: u64,
    /// How long the breaker stays open before a trial call.
    pub open_ms: u64,
    /// Distinct callers (users of the forwarded token; without one, requests)
    /// the failures must come from (1 to 4).
    pub min_callers: u8,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window_ms: 60_000,
            open_ms: 60_000,
            min_callers: 2,
        }
    }
}

/// How the coordination step decides which agents serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinationMode {
    /// A plan of subtasks over the agents, run in parallel where it can be,
    /// re-planned when the plan asks for it (the default).
    Plan,
    /// One decision: one agent and optional additional instructions (the seed).
    Route,
}

/// When a plan waits for the user's approval before it runs
/// (`PLAN_APPROVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanApproval {
    /// Plans run at once (the default).
    Never,
    /// Plans of more than one subtask, and plans with a subtask for an agent
    /// marked `AGENT_<NAME>_CONFIRM=true`, wait.
    MultiAgent,
    /// Every plan waits.
    Always,
}

/// Which log lines the coordinator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// One line per request, plus a line for every upstream call that did not
    /// succeed (the default).
    Info,
    /// Also a line for every successful upstream call.
    Debug,
}

/// The typed configuration of one request. Its `Debug` says whether the
/// secrets are set, never what they are.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// DIAL Core base URL, without a trailing slash.
    pub dial_endpoint: String,
    /// LLM deployment used for coordination and synthesis.
    pub deployment_name: String,
    /// Backup LLM deployments, tried in order when the primary fails.
    pub llm_backups: Vec<String>,
    /// The agents.
    pub registry: Registry,
    /// `plan` or `route`.
    pub coordination_mode: CoordinationMode,
    /// Which plans wait for the user's approval.
    pub plan_approval: PlanApproval,
    /// Most coordination rounds of a plan (the first one and re-plans).
    pub max_plan_rounds: usize,
    /// Most subtasks of one plan.
    pub max_subtasks: usize,
    /// Most subtasks running at once.
    pub max_parallel: usize,
    /// How long an agent's card (what it publishes about itself) is kept in
    /// the store, in seconds; 0: read for every request.
    pub card_ttl_s: u64,
    /// The application's instructions for the coordination call, added to
    /// the built-in prompt (`COORDINATION_PROMPT`).
    pub coordination_prompt: Option<String>,
    /// The application's instructions for the synthesis call, added to the
    /// built-in prompt (`SYNTHESIS_PROMPT`).
    pub synthesis_prompt: Option<String>,
    /// Origins (`scheme://host:port`) that agent endpoints named in
    /// application properties may use, besides the origins of the endpoints
    /// the environment configures (`ALLOWED_AGENT_HOSTS`).
    pub allowed_agent_hosts: Vec<String>,
    /// The coordinator's public base URL, as DIAL Core reaches it
    /// (`PUBLIC_URL`): what the application type schema names.
    pub public_url: Option<String>,
    /// `api-version` query sent on calls into DIAL Core, if set.
    pub api_version: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest accepted number of messages.
    pub max_messages: usize,
    /// Upstream call timeouts.
    pub timeouts: Timeouts,
    /// Longest whole request, in milliseconds (`REQUEST_DEADLINE_MS`).
    pub request_deadline_ms: u64,
    /// How long a stream may stay quiet, in milliseconds, before an SSE
    /// comment keeps proxies from cutting it (`HEARTBEAT_INTERVAL_MS`); 0: never.
    pub heartbeat_interval_ms: u64,
    /// Circuit-breaker settings (per upstream target).
    pub breaker: BreakerConfig,
    /// Secret for signing the state we emit; `None` disables signing.
    pub state_secret: Option<String>,
    /// The secret before the last rotation: still verifies what it signed.
    pub state_secret_previous: Option<String>,
    /// Whether a state without a signature is read (`ALLOW_UNSIGNED_STATE`).
    pub allow_unsigned_state: bool,
    /// Signed states older than this many seconds are ignored.
    pub state_max_age_s: Option<u64>,
    /// Token `GET /health?deep=1` requires (`Authorization: Bearer <token>`).
    pub health_token: Option<String>,
    /// `info` or `debug`.
    pub log_level: LogLevel,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: &Option<String>| secret.as_ref().map(|_| "***");
        f.debug_struct("Config")
            .field("dial_endpoint", &self.dial_endpoint)
            .field("deployment_name", &self.deployment_name)
            .field("llm_backups", &self.llm_backups)
            .field("registry", &self.registry)
            .field("coordination_mode", &self.coordination_mode)
            .field("plan_approval", &self.plan_approval)
            .field("max_plan_rounds", &self.max_plan_rounds)
            .field("max_subtasks", &self.max_subtasks)
            .field("max_parallel", &self.max_parallel)
            .field("card_ttl_s", &self.card_ttl_s)
            .field("coordination_prompt", &self.coordination_prompt)
            .field("synthesis_prompt", &self.synthesis_prompt)
            .field("allowed_agent_hosts", &self.allowed_agent_hosts)
            .field("public_url", &self.public_url)
            .field("api_version", &self.api_version)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_messages", &self.max_messages)
            .field("timeouts", &self.timeouts)
            .field("request_deadline_ms", &self.request_deadline_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("breaker", &self.breaker)
            .field("state_secret", &set(&self.state_secret))
            .field("state_secret_previous", &set(&self.state_secret_previous))
            .field("allow_unsigned_state", &self.allow_unsigned_state)
            .field("state_max_age_s", &self.state_max_age_s)
            .field("health_token", &set(&self.health_token))
            .field("log_level", &self.log_level)
            .finish()
    }
}

/// Reads the agents of the registry: `(get, dial_endpoint, problems)`, where
/// `get` is a variable's value (empty counts as unset) and `dial_endpoint` is
/// DIAL Core's base URL (what `dial` agents' targets are keyed by).
pub type ReadAgents<'r> = &'r dyn Fn(&dyn Fn(&str) -> Option<String>, &str, &Problems) -> Registry;

impl Config {
    /// Reads the configuration through `lookup` (a variable's value, if set),
    /// the agents through `read_agents` (the kinds' reader,
    /// `agents::kinds::read_registry`, which also provides
    /// `Config::from_lookup`, `Config::from_env` and `Config::default`). An
    /// empty value counts as unset. Every malformed variable is reported at
    /// once, in one [`CoordError::Config`].
    pub fn read(
        lookup: impl Fn(&str) -> Option<String>,
        read_agents: ReadAgents<'_>,
    ) -> Result<Config, CoordError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let problems = Problems::default();
        let endpoint = |var: &'static str, default: &str| match get(var) {
            Some(v) => problems.take(parse_endpoint(var, &v), String::new()),
            None => default.to_owned(),
        };
        let deployment = |var: &'static str, default: &str| match get(var) {
            Some(v) => problems.take(parse_deployment(var, &v), String::new()),
            None => default.to_owned(),
        };
        let range = |var: &'static str, default: u64, min: u64, max: u64| -> u64 {
            let Some(v) = get(var) else {
                return default;
            };
            match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    let reason = if max == u64::MAX {
                        format!("must be a whole number, at least {min}")
                    } else {
                        format!("must be a whole number from {min} to {max}")
                    };
                    problems.add(CoordError::config(var, reason));
                    default
                }
            }
        };
        let number = |var: &'static str, default: u64, min: u64| range(var, default, min, u64::MAX);
        // Read in the order of the README's table, so problems are listed in it.
        let dial_endpoint = endpoint("DIAL_ENDPOINT", DEFAULT_DIAL_ENDPOINT);
        let deployment_name = deployment("DEPLOYMENT_NAME", DEFAULT_DEPLOYMENT_NAME);
        let llm_backups = match get("BACKUP_DEPLOYMENT_NAMES") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    problems.take(
                        parse_deployment("BACKUP_DEPLOYMENT_NAMES", s),
                        String::new(),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let d = Timeouts::default();
        let b = BreakerConfig::default();
        let secret = |var: &'static str| match get(var) {
            Some(v) if v.len() < 16 => {
                problems.add(CoordError::config(
                    var,
                    "must be at least 16 characters long",
                ));
                None
            }
            other => other,
        };
        let registry = read_agents(&get, &dial_endpoint, &problems);
        let coordination_mode =
            match get("COORDINATION_MODE").map(|v| v.trim().to_ascii_lowercase()) {
                None => CoordinationMode::Plan,
                Some(v) if v == "plan" => CoordinationMode::Plan,
                Some(v) if v == "route" => CoordinationMode::Route,
                Some(_) => {
                    problems.add(CoordError::config(
                        "COORDINATION_MODE",
                        "must be plan or route",
                    ));
                    CoordinationMode::Plan
                }
            };
        let plan_approval = match get("PLAN_APPROVAL").map(|v| v.trim().to_ascii_lowercase()) {
            None => PlanApproval::Never,
            Some(v) if v == "never" => PlanApproval::Never,
            Some(v) if v == "multi-agent" => PlanApproval::MultiAgent,
            Some(v) if v == "always" => PlanApproval::Always,
            Some(_) => {
                problems.add(CoordError::config(
                    "PLAN_APPROVAL",
                    "must be never, multi-agent or always",
                ));
                PlanApproval::Never
            }
        };
        let config = Config {
            coordination_mode,
            plan_approval,
            max_plan_rounds: to_usize(range("MAX_PLAN_ROUNDS", 3, 1, 10)),
            max_subtasks: to_usize(range("MAX_SUBTASKS", 8, 1, 32)),
            max_parallel: to_usize(range("MAX_PARALLEL", 4, 1, 16)),
            card_ttl_s: range("CARD_TTL_S", 300, 0, 86_400),
            coordination_prompt: get("COORDINATION_PROMPT").map(|v| {
                problems.take(parse_instructions("COORDINATION_PROMPT", &v), String::new())
            }),
            synthesis_prompt: get("SYNTHESIS_PROMPT")
                .map(|v| problems.take(parse_instructions("SYNTHESIS_PROMPT", &v), String::new())),
            allowed_agent_hosts: get("ALLOWED_AGENT_HOSTS").map_or_else(Vec::new, |list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        problems.take(
                            parse_endpoint("ALLOWED_AGENT_HOSTS", s).and_then(|url| {
                                origin(&url).ok_or_else(|| {
                                    CoordError::config(
                                        "ALLOWED_AGENT_HOSTS",
                                        "must list origins such as https://agents.example.com:8443",
                                    )
                                })
                            }),
                            String::new(),
                        )
                    })
                    .collect()
            }),
            public_url: get("PUBLIC_URL")
                .map(|v| problems.take(parse_endpoint("PUBLIC_URL", &v), String::new())),
            dial_endpoint,
            deployment_name,
            llm_backups,
            registry,
            api_version: get("DIAL_API_VERSION")
                .map(|v| problems.take(parse_token("DIAL_API_VERSION", &v), String::new())),
            max_request_bytes: to_usize(number(
                "MAX_REQUEST_BYTES",
                DEFAULT_MAX_REQUEST_BYTES as u64,
                1024,
            )),
            max_messages: to_usize(number("MAX_MESSAGES", DEFAULT_MAX_MESSAGES as u64, 1)),
            timeouts: Timeouts {
                first_byte_ms: number("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", d.first_byte_ms, 1),
                idle_ms: number("UPSTREAM_IDLE_TIMEOUT_MS", d.idle_ms, 1),
                total_ms: number("UPSTREAM_TOTAL_TIMEOUT_MS", d.total_ms, 1),
            },
            request_deadline_ms: number("REQUEST_DEADLINE_MS", DEFAULT_REQUEST_DEADLINE_MS, 1),
            heartbeat_interval_ms: range("HEARTBEAT_INTERVAL_MS", 15_000, 0, 600_000),
            breaker: BreakerConfig {
                failure_threshold: u32::try_from(number(
                    "BREAKER_FAILURE_THRESHOLD",
                    u64::from(b.failure_threshold),
                    1,
                ))
                .unwrap_or(u32::MAX),
                window_ms: number("BREAKER_WINDOW_MS", b.window_ms, 1),
                open_ms: number("BREAKER_OPEN_MS", b.open_ms, 1),
                min_callers: u8::try_from(range(
                    "BREAKER_MIN_CALLERS",
                    u64::from(b.min_callers),
                    1,
                    4,
                ))
                .unwrap_or(b.min_callers),
            },
            state_secret: secret("STATE_SECRET"),
            state_secret_previous: secret("STATE_SECRET_PREVIOUS"),
            allow_unsigned_state: match get("ALLOW_UNSIGNED_STATE")
                .map(|v| v.trim().to_ascii_lowercase())
            {
                None => false,
                Some(v) if v == "true" => true,
                Some(v) if v == "false" => false,
                Some(_) => {
                    problems.add(CoordError::config(
                        "ALLOW_UNSIGNED_STATE",
                        "must be true or false",
                    ));
                    false
                }
            },
            state_max_age_s: get("STATE_MAX_AGE_S").map(|_| number("STATE_MAX_AGE_S", 0, 60)),
            health_token: secret("HEALTH_TOKEN"),
            log_level: match get("LOG_LEVEL").map(|v| v.trim().to_ascii_lowercase()) {
                None => LogLevel::Info,
                Some(v) if v == "info" => LogLevel::Info,
                Some(v) if v == "debug" => LogLevel::Debug,
                Some(_) => {
                    problems.add(CoordError::config("LOG_LEVEL", "must be info or debug"));
                    LogLevel::Info
                }
            },
        };
        if config.state_secret_previous.is_some() && config.state_secret.is_none() {
            problems.add(CoordError::config(
                "STATE_SECRET_PREVIOUS",
                "needs STATE_SECRET: it only verifies what an earlier secret signed",
            ));
        }
        if config.plan_approval != PlanApproval::Never && config.state_secret.is_none() {
            problems.add(CoordError::config(
                "PLAN_APPROVAL",
                "needs STATE_SECRET: a plan waiting for approval is kept in the signed state",
            ));
        }
        problems.into_result(config)
    }

    /// The LLM deployments' targets: primary, then backups.
    pub fn llm_targets(&self) -> Vec<Target> {
        let deployments: Vec<String> = std::iter::once(self.deployment_name.clone())
            .chain(self.llm_backups.iter().cloned())
            .collect();
        dial_targets(&self.dial_endpoint, &deployments)
    }
}

/// Longest application instructions (`COORDINATION_PROMPT`, `SYNTHESIS_PROMPT`).
pub const MAX_INSTRUCTIONS_CHARS: usize = 4_000;

/// Instructions added to a prompt: at most [`MAX_INSTRUCTIONS_CHARS`]
/// characters, lines and tabs allowed, no other control character.
pub fn parse_instructions(var: &str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if v.chars().count() > MAX_INSTRUCTIONS_CHARS
        || v.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(CoordError::config(
            var,
            format!(
                "must be text of at most {MAX_INSTRUCTIONS_CHARS} characters (lines and tabs allowed, no other control characters)"
            ),
        ));
    }
    Ok(v.replace("\r\n", "\n"))
}

/// The origin of an endpoint URL (as [`parse_endpoint`] returns it):
/// `scheme://host:port`, lower case, the port written even when it is the
/// scheme's default. `None` when the port is not a number.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split('/').next()?.to_ascii_lowercase();
    let default_port = if scheme == "https" { "443" } else { "80" };
    // An IPv6 literal keeps its colons inside the brackets.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], &authority[i + 1..]),
        _ => (authority.as_str(), default_port),
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    Some(format!("{scheme}://{host}:{port}"))
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An `http(s)://host[:port][/base]` URL: printable ASCII a URI can hold, no
/// query, fragment, credentials or spaces.
pub fn parse_endpoint(var: &str, value: &str) -> Result<String, CoordError> {
    let bad = |reason: &str| CoordError::config(var, reason);
    let v = value.trim();
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("must name a host"));
    }
    // RFC 3986: only these ASCII characters may appear in a URI unescaped.
    let uri_char = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | '~'
                    | ':'
                    | '/'
                    | '['
                    | ']'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
            )
    };
    if !v.chars().all(uri_char) {
        return Err(bad(
            "must be a plain base URL (ASCII URI characters only; no spaces, query, fragment or credentials)",
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// A deployment name: it is put into a URL path, so only URL-safe characters.
pub fn parse_deployment(var: &str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if v.is_empty()
        || v.len() > 256
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || v == "."
        || v == ".."
    {
        return Err(CoordError::config(
            var,
            "must be a deployment name made of letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(v.to_owned())
}

fn parse_token(var: &str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CoordError::config(
            var,
            "must contain only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, CoordError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_python_reference() {
        assert_eq!(cfg(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().dial_endpoint, "http://localhost:8080");
        assert_eq!(
            Config::default().registry.get("UMS").unwrap().target_ids(),
            ["http://localhost:8042"]
        );
    }

    #[test]
    fn values_are_read_and_trailing_slash_dropped() {
        let c = cfg(&[
            ("DIAL_ENDPOINT", "https://core.example.com/"),
            ("DEPLOYMENT_NAME", "gpt-4.1"),
            ("UMS_AGENT_ENDPOINT", "http://127.0.0.1:9000"),
            ("GPA_DEPLOYMENT_NAME", "gpa"),
            ("DIAL_API_VERSION", "2025-01-01-preview"),
        ])
        .unwrap();
        assert_eq!(c.dial_endpoint, "https://core.example.com");
        assert_eq!(c.api_version.as_deref(), Some("2025-01-01-preview"));
        assert_eq!(
            c.registry.get("UMS").unwrap().target_ids(),
            ["http://127.0.0.1:9000"]
        );
        assert_eq!(c.registry.get("GPA").unwrap().target_ids(), ["gpa"]);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let e = cfg(&[("DIAL_ENDPOINT", "core:8080")]).unwrap_err();
        assert_eq!(e.status(), 500);
        assert!(e.message().contains("DIAL_ENDPOINT"), "{}", e.message());
        let e = cfg(&[("GPA_DEPLOYMENT_NAME", "a/b")]).unwrap_err();
        assert!(e.message().contains("GPA_DEPLOYMENT_NAME"));
        let e = cfg(&[("UMS_AGENT_ENDPOINT", "http://user:pw@host")]).unwrap_err();
        assert!(e.message().contains("UMS_AGENT_ENDPOINT"));
        assert!(!e.message().contains("pw"), "value must not be echoed");
        let e = cfg(&[("MAX_REQUEST_BYTES", "lots")]).unwrap_err();
        assert!(e.message().contains("MAX_REQUEST_BYTES"));
        let e = cfg(&[("GPA_BACKUP_DEPLOYMENTS", "ok, bad/name")]).unwrap_err();
        assert!(e.message().contains("GPA_BACKUP_DEPLOYMENTS"));
        let e = cfg(&[("STATE_SECRET", "short")]).unwrap_err();
        assert!(e.message().contains("STATE_SECRET"));
        assert!(!e.message().contains("short"), "the secret is never echoed");
        let e = cfg(&[("UPSTREAM_IDLE_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(e.message().contains("UPSTREAM_IDLE_TIMEOUT_MS"));
        for bad in [
            "http://ums:8042/ä",
            "http://ums<x>",
            "http://ums:8042/a\"b",
            "http://ums/{x}",
        ] {
            let e = cfg(&[("UMS_AGENT_ENDPOINT", bad)]).unwrap_err();
            assert!(
                e.message().contains("UMS_AGENT_ENDPOINT"),
                "{bad}: {}",
                e.message()
            );
        }
        let e = cfg(&[("HEALTH_TOKEN", "short")]).unwrap_err();
        assert!(e.message().contains("HEALTH_TOKEN"));
        let e = cfg(&[("BREAKER_MIN_CALLERS", "9")]).unwrap_err();
        assert!(e.message().contains("BREAKER_MIN_CALLERS"));
        for (var, value) in [
            ("COORDINATION_MODE", "both"),
            ("MAX_PLAN_ROUNDS", "0"),
            ("MAX_PLAN_ROUNDS", "11"),
            ("MAX_SUBTASKS", "33"),
            ("MAX_PARALLEL", "x"),
            ("LOG_LEVEL", "verbose"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert!(e.message().contains(var), "{}", e.message());
        }
        let e = cfg(&[("AGENTS", "GPA,RAG")]).unwrap_err();
        assert!(e.message().contains("AGENT_RAG_KIND"), "{}", e.message());
    }

    #[test]
    fn plan_approval_is_read_and_needs_a_state_secret() {
        let secret = ("STATE_SECRET", "0123456789abcdef");
        for (value, expected) in [
            ("never", PlanApproval::Never),
            ("Multi-Agent", PlanApproval::MultiAgent),
            (" always ", PlanApproval::Always),
        ] {
            let c = cfg(&[("PLAN_APPROVAL", value), secret]).unwrap();
            assert_eq!(c.plan_approval, expected, "{value}");
        }
        let e = cfg(&[("PLAN_APPROVAL", "sometimes"), secret]).unwrap_err();
        assert!(
            e.message()
                .contains("PLAN_APPROVAL must be never, multi-agent or always"),
            "{}",
            e.message()
        );
        let e = cfg(&[("PLAN_APPROVAL", "always")]).unwrap_err();
        assert!(
            e.message().contains("PLAN_APPROVAL needs STATE_SECRET"),
            "{}",
            e.message()
        );
        // Without approval no secret is needed.
        assert!(cfg(&[("PLAN_APPROVAL", "never")]).is_ok());
    }

    #[test]
    fn heartbeat_interval_is_read_and_zero_turns_it_off() {
        assert_eq!(Config::default().heartbeat_interval_ms, 15_000);
        for (value, expected) in [("0", 0), (" 250 ", 250), ("600000", 600_000)] {
            let c = cfg(&[("HEARTBEAT_INTERVAL_MS", value)]).unwrap();
            assert_eq!(c.heartbeat_interval_ms, expected, "{value}");
        }
        for bad in ["600001", "-1", "15s"] {
            let e = cfg(&[("HEARTBEAT_INTERVAL_MS", bad)]).unwrap_err();
            assert_eq!(
                e.message(),
                "Invalid configuration: HEARTBEAT_INTERVAL_MS must be a whole number from 0 to 600000",
                "{bad}"
            );
        }
    }

    #[test]
    fn variables_lists_exactly_what_is_read() {
        let read = std::cell::RefCell::new(Vec::<String>::new());
        Config::from_lookup(|name| {
            read.borrow_mut().push(name.to_owned());
            None
        })
        .unwrap();
        let mut read: Vec<String> = read
            .into_inner()
            .into_iter()
            .filter(|n| !n.starts_with("AGENT_"))
            .collect();
        read.sort();
        read.dedup();
        let mut listed: Vec<String> = VARIABLES.iter().map(|v| (*v).to_owned()).collect();
        listed.sort();
        assert_eq!(read, listed);
        assert!(SECRET_VARIABLES.iter().all(|s| VARIABLES.contains(s)));
    }

    #[test]
    fn every_malformed_variable_is_reported_at_once() {
        let e = cfg(&[
            ("DIAL_ENDPOINT", "core:8080"),
            ("MAX_PARALLEL", "99"),
            ("STATE_SECRET", "short"),
            ("AGENTS", "GPA,UMS,RAG"),
            ("UMS_AGENT_ENDPOINT", "ftp://ums"),
        ])
        .unwrap_err();
        let CoordError::Config(problems) = &e else {
            panic!("not a configuration error: {e:?}")
        };
        let vars: Vec<&str> = problems.iter().map(|p| p.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "DIAL_ENDPOINT",
                "UMS_AGENT_ENDPOINT",
                "AGENT_RAG_KIND",
                "AGENT_RAG_DESCRIPTION",
                "MAX_PARALLEL",
                "STATE_SECRET"
            ]
        );
        assert_eq!(
            e.message(),
            "Invalid configuration: DIAL_ENDPOINT must start with http:// or https://; \
             UMS_AGENT_ENDPOINT must start with http:// or https://; \
             AGENT_RAG_KIND is required for agent RAG listed in AGENTS (dial, ums or a2a); \
             AGENT_RAG_DESCRIPTION is required for agent RAG: the coordination prompt says what it is for; \
             MAX_PARALLEL must be a whole number from 1 to 16; \
             STATE_SECRET must be at least 16 characters long"
        );
        assert_eq!(
            e.display_message(),
            "The coordinator is misconfigured (DIAL_ENDPOINT, UMS_AGENT_ENDPOINT, \
             AGENT_RAG_KIND, AGENT_RAG_DESCRIPTION, MAX_PARALLEL, STATE_SECRET). \
             Please tell the administrator."
        );
    }

    #[test]
    fn state_trust_settings_are_read_and_checked() {
        let d = Config::default();
        assert_eq!(
            (
                &d.state_secret,
                &d.state_secret_previous,
                d.allow_unsigned_state
            ),
            (&None, &None, false)
        );
        let c = cfg(&[
            ("STATE_SECRET", "0123456789abcdef"),
            ("STATE_SECRET_PREVIOUS", "fedcba9876543210"),
            ("ALLOW_UNSIGNED_STATE", " TRUE "),
        ])
        .unwrap();
        assert_eq!(c.state_secret_previous.as_deref(), Some("fedcba9876543210"));
        assert!(c.allow_unsigned_state);
        assert!(
            !cfg(&[("ALLOW_UNSIGNED_STATE", "false")])
                .unwrap()
                .allow_unsigned_state
        );
        let e = cfg(&[
            ("STATE_SECRET_PREVIOUS", "fedcba9876543210"),
            ("ALLOW_UNSIGNED_STATE", "yes"),
        ])
        .unwrap_err();
        assert_eq!(
            e.message(),
            "Invalid configuration: ALLOW_UNSIGNED_STATE must be true or false; \
             STATE_SECRET_PREVIOUS needs STATE_SECRET: it only verifies what an earlier secret signed"
        );
        let e = cfg(&[
            ("STATE_SECRET", "0123456789abcdef"),
            ("STATE_SECRET_PREVIOUS", "short"),
        ])
        .unwrap_err();
        assert_eq!(
            e.message(),
            "Invalid configuration: STATE_SECRET_PREVIOUS must be at least 16 characters long"
        );
    }

    #[test]
    fn resilience_settings_are_read() {
        let c = cfg(&[
            ("GPA_BACKUP_DEPLOYMENTS", "gpa-b1, gpa-b2"),
            ("BACKUP_DEPLOYMENT_NAMES", "gpt-4o-mini"),
            ("UMS_AGENT_BACKUP_ENDPOINTS", "http://ums2:8042/"),
            ("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "500"),
            ("BREAKER_FAILURE_THRESHOLD", "3"),
            ("MAX_MESSAGES", "10"),
            ("STATE_SECRET", "0123456789abcdef"),
            ("STATE_MAX_AGE_S", "86400"),
            ("BREAKER_MIN_CALLERS", "3"),
        ])
        .unwrap();
        assert_eq!(c.state_max_age_s, Some(86_400));
        let d = Config::default();
        assert_eq!(d.coordination_mode, CoordinationMode::Plan);
        assert_eq!(
            (d.max_plan_rounds, d.max_subtasks, d.max_parallel),
            (3, 8, 4)
        );
        let r = cfg(&[("COORDINATION_MODE", "Route"), ("MAX_PARALLEL", "2")]).unwrap();
        assert_eq!(r.coordination_mode, CoordinationMode::Route);
        assert_eq!(r.max_parallel, 2);
        assert_eq!(d.plan_approval, PlanApproval::Never);
        assert_eq!(c.breaker.min_callers, 3);
        assert_eq!(
            c.registry.get("GPA").unwrap().target_ids(),
            ["general-purpose-agent", "gpa-b1", "gpa-b2"]
        );
        assert_eq!(c.llm_backups, vec!["gpt-4o-mini"]);
        assert_eq!(
            c.registry.get("UMS").unwrap().target_ids(),
            ["http://localhost:8042", "http://ums2:8042"]
        );
        assert_eq!(c.timeouts.first_byte_ms, 500);
        assert_eq!(c.timeouts.idle_ms, Timeouts::default().idle_ms);
        assert_eq!(c.breaker.failure_threshold, 3);
        assert_eq!(c.max_messages, 10);
        assert_eq!(c.state_secret.as_deref(), Some("0123456789abcdef"));
    }
}

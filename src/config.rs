//! Configuration, read from environment variables once per request.
//!
//! Environment variables are the one configuration channel every WASI host has
//! (`wasmtime serve --env`, `spin up -e`, `environment` in `spin.toml`). Spin
//! variables are deliberately not used: their import stops plain WASI hosts from
//! starting the component. The names of the Python reference are kept so that
//! existing set-ups carry over. The agents are a table of their own
//! (`registry.rs`). Parsing is pure: it takes a lookup function.

use crate::breaker::BreakerConfig;
use crate::error::CoordError;
use crate::registry::Registry;

/// Default DIAL Core base URL.
pub const DEFAULT_DIAL_ENDPOINT: &str = "http://localhost:8080";
/// Default LLM deployment for coordination and synthesis.
pub const DEFAULT_DEPLOYMENT_NAME: &str = "gpt-4o";
/// Default request body limit: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
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

/// How the coordination step decides which agents serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinationMode {
    /// A plan of subtasks over the agents, run in parallel where it can be,
    /// re-planned when the plan asks for it (the default).
    Plan,
    /// One decision: one agent and optional additional instructions (the seed).
    Route,
}

/// The typed configuration of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Most coordination rounds of a plan (the first one and re-plans).
    pub max_plan_rounds: usize,
    /// Most subtasks of one plan.
    pub max_subtasks: usize,
    /// Most subtasks running at once.
    pub max_parallel: usize,
    /// `api-version` query sent on calls into DIAL Core, if set.
    pub api_version: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest accepted number of messages.
    pub max_messages: usize,
    /// Upstream call timeouts.
    pub timeouts: Timeouts,
    /// Circuit-breaker settings (per upstream target).
    pub breaker: BreakerConfig,
    /// Secret for signing the state we emit; `None` disables signing.
    pub state_secret: Option<String>,
    /// Signed states older than this many seconds are ignored.
    pub state_max_age_s: Option<u64>,
    /// Token `GET /health?deep=1` requires (`Authorization: Bearer <token>`).
    pub health_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        // The built-in defaults are valid (see the test `defaults_match_the_python_reference`).
        Config::from_lookup(|_| None).expect("the built-in defaults are a valid configuration")
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, CoordError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, if set).
    /// An empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, CoordError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let endpoint = |var: &'static str, default: &str| match get(var) {
            Some(v) => parse_endpoint(var, &v),
            None => Ok(default.to_owned()),
        };
        let deployment = |var: &'static str, default: &str| match get(var) {
            Some(v) => parse_deployment(var, &v),
            None => Ok(default.to_owned()),
        };
        let api_version = match get("DIAL_API_VERSION") {
            Some(v) => Some(parse_token("DIAL_API_VERSION", &v)?),
            None => None,
        };
        let number = |var: &'static str, default: u64, min: u64| -> Result<u64, CoordError> {
            match get(var) {
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(CoordError::Config {
                        var: var.to_owned(),
                        reason: format!("must be a whole number, at least {min}"),
                    }),
                },
                None => Ok(default),
            }
        };
        let optional_number = |var: &'static str, min: u64| -> Result<Option<u64>, CoordError> {
            match get(var) {
                Some(_) => number(var, 0, min).map(Some),
                None => Ok(None),
            }
        };
        let llm_backups = match get("BACKUP_DEPLOYMENT_NAMES") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| parse_deployment("BACKUP_DEPLOYMENT_NAMES", s))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let max_request_bytes = to_usize(number(
            "MAX_REQUEST_BYTES",
            DEFAULT_MAX_REQUEST_BYTES as u64,
            1024,
        )?);
        let max_messages = to_usize(number("MAX_MESSAGES", DEFAULT_MAX_MESSAGES as u64, 1)?);
        let d = Timeouts::default();
        let timeouts = Timeouts {
            first_byte_ms: number("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", d.first_byte_ms, 1)?,
            idle_ms: number("UPSTREAM_IDLE_TIMEOUT_MS", d.idle_ms, 1)?,
            total_ms: number("UPSTREAM_TOTAL_TIMEOUT_MS", d.total_ms, 1)?,
        };
        let b = BreakerConfig::default();
        let breaker = BreakerConfig {
            failure_threshold: u32::try_from(number(
                "BREAKER_FAILURE_THRESHOLD",
                u64::from(b.failure_threshold),
                1,
            )?)
            .unwrap_or(u32::MAX),
            window_ms: number("BREAKER_WINDOW_MS", b.window_ms, 1)?,
            open_ms: number("BREAKER_OPEN_MS", b.open_ms, 1)?,
            min_callers: match number("BREAKER_MIN_CALLERS", u64::from(b.min_callers), 1)? {
                n @ 1..=4 => n as u8,
                _ => {
                    return Err(CoordError::Config {
                        var: "BREAKER_MIN_CALLERS".to_owned(),
                        reason: "must be a whole number from 1 to 4".to_owned(),
                    })
                }
            },
        };
        let secret = |var: &'static str| match get(var) {
            Some(v) if v.len() < 16 => Err(CoordError::Config {
                var: var.to_owned(),
                reason: "must be at least 16 characters long".to_owned(),
            }),
            other => Ok(other),
        };
        let registry = Registry::from_lookup(&get, parse_endpoint, parse_deployment)?;
        let coordination_mode =
            match get("COORDINATION_MODE").map(|v| v.trim().to_ascii_lowercase()) {
                None => CoordinationMode::Plan,
                Some(v) if v == "plan" => CoordinationMode::Plan,
                Some(v) if v == "route" => CoordinationMode::Route,
                Some(_) => {
                    return Err(CoordError::Config {
                        var: "COORDINATION_MODE".to_owned(),
                        reason: "must be plan or route".to_owned(),
                    })
                }
            };
        let bounded = |var: &'static str, default: u64, max: u64| -> Result<usize, CoordError> {
            let n = number(var, default, 1)?;
            if n > max {
                return Err(CoordError::Config {
                    var: var.to_owned(),
                    reason: format!("must be a whole number from 1 to {max}"),
                });
            }
            Ok(to_usize(n))
        };
        Ok(Config {
            coordination_mode,
            max_plan_rounds: bounded("MAX_PLAN_ROUNDS", 3, 10)?,
            max_subtasks: bounded("MAX_SUBTASKS", 8, 32)?,
            max_parallel: bounded("MAX_PARALLEL", 4, 16)?,
            dial_endpoint: endpoint("DIAL_ENDPOINT", DEFAULT_DIAL_ENDPOINT)?,
            deployment_name: deployment("DEPLOYMENT_NAME", DEFAULT_DEPLOYMENT_NAME)?,
            llm_backups,
            registry,
            api_version,
            max_request_bytes,
            max_messages,
            timeouts,
            breaker,
            state_secret: secret("STATE_SECRET")?,
            state_max_age_s: optional_number("STATE_MAX_AGE_S", 60)?,
            health_token: secret("HEALTH_TOKEN")?,
        })
    }

    /// The LLM deployments: primary, then backups.
    pub fn llm_targets(&self) -> Vec<String> {
        std::iter::once(self.deployment_name.clone())
            .chain(self.llm_backups.iter().cloned())
            .collect()
    }

    /// URL of a deployment's chat-completions endpoint in DIAL Core.
    pub fn deployment_url(&self, deployment: &str) -> String {
        let mut url = format!(
            "{}/openai/deployments/{deployment}/chat/completions",
            self.dial_endpoint
        );
        if let Some(v) = &self.api_version {
            url.push_str("?api-version=");
            url.push_str(v);
        }
        url
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An `http(s)://host[:port][/base]` URL: printable ASCII a URI can hold, no
/// query, fragment, credentials or spaces.
pub fn parse_endpoint(var: &str, value: &str) -> Result<String, CoordError> {
    let bad = |reason: &str| CoordError::Config {
        var: var.to_owned(),
        reason: reason.to_owned(),
    };
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
        return Err(CoordError::Config {
            var: var.to_owned(),
            reason: "must be a deployment name made of letters, digits, '-', '_' and '.'"
                .to_owned(),
        });
    }
    Ok(v.to_owned())
}

fn parse_token(var: &str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CoordError::Config {
            var: var.to_owned(),
            reason: "must contain only letters, digits, '-', '_' and '.'".to_owned(),
        });
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
            Config::default().registry.get("UMS").unwrap().targets(),
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
        assert_eq!(
            c.deployment_url("gpa"),
            "https://core.example.com/openai/deployments/gpa/chat/completions?api-version=2025-01-01-preview"
        );
        assert_eq!(
            c.registry.get("UMS").unwrap().targets(),
            ["http://127.0.0.1:9000"]
        );
        assert_eq!(c.registry.get("GPA").unwrap().targets(), ["gpa"]);
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
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert!(e.message().contains(var), "{}", e.message());
        }
        let e = cfg(&[("AGENTS", "GPA,RAG")]).unwrap_err();
        assert!(e.message().contains("AGENT_RAG_KIND"), "{}", e.message());
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
        assert_eq!(c.breaker.min_callers, 3);
        assert_eq!(
            c.registry.get("GPA").unwrap().targets(),
            ["general-purpose-agent", "gpa-b1", "gpa-b2"]
        );
        assert_eq!(c.llm_backups, vec!["gpt-4o-mini"]);
        assert_eq!(
            c.registry.get("UMS").unwrap().targets(),
            ["http://localhost:8042", "http://ums2:8042"]
        );
        assert_eq!(c.timeouts.first_byte_ms, 500);
        assert_eq!(c.timeouts.idle_ms, Timeouts::default().idle_ms);
        assert_eq!(c.breaker.failure_threshold, 3);
        assert_eq!(c.max_messages, 10);
        assert_eq!(c.state_secret.as_deref(), Some("0123456789abcdef"));
    }
}

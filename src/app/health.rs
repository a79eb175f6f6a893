//! `GET /health`: the coordinator itself, and with `?deep=1` a probe of every
//! upstream the configuration names (DIAL Core, every endpoint of every
//! UMS-kind agent, primary and backups) plus the state of every breaker.
//!
//! The deep check fans out, so it is guarded: with `HEALTH_TOKEN` set it needs
//! `Authorization: Bearer <token>`, and its report is kept for
//! [`DEEP_CACHE_MS`] in the breaker store, so a burst of checks costs one
//! round of probes (per instance with the instance-memory store, per
//! deployment with a shared one). Probes run in parallel, each bounded by the
//! first-byte timeout and at most 5 s.

use futures::future::{join_all, select, Either};
use serde_json::{json, Value};

use crate::agents::kinds;
use crate::calls::breaker;
use crate::calls::breaker_key;
use crate::client::{Host, OutboundRequest, Target};
use crate::config::Config;
use crate::error::CoordError;

/// Longest wait for one probe.
const PROBE_TIMEOUT_MS: u64 = 5_000;
/// How long a deep report is reused.
pub const DEEP_CACHE_MS: u64 = 5_000;
/// The one store key of the deep report's cache.
pub const DEEP_CACHE_KEY: &str = "health:deep";
/// The coordinator deployment whose breakers are reported when the query names none.
pub const DEFAULT_DEPLOYMENT: &str = "mas-coordinator";

/// The shallow report: the coordinator answers, where its breakers live,
/// whether states are signed and unsigned ones read, and the request deadline
/// in force.
pub fn shallow<H: Host>(host: &H, config: &Config) -> Value {
    json!({
        "status": "ok",
        "breaker_store": host.store().kind(),
        "state_signing": state_signing(config),
        "unsigned_state": unsigned_state(config),
        "request_deadline_ms": config.request_deadline_ms,
    })
}

/// Whether the states we emit are signed: `on` or `off`.
fn state_signing(config: &Config) -> &'static str {
    if config.state_secret.is_some() {
        "on"
    } else {
        "off"
    }
}

/// What becomes of a state without a signature: `read` (`ALLOW_UNSIGNED_STATE`)
/// or `ignored`.
fn unsigned_state(config: &Config) -> &'static str {
    if config.allow_unsigned_state {
        "read"
    } else {
        "ignored"
    }
}

/// The report of a configuration that cannot be used (served with 500, so a
/// liveness probe fails): the error, and each bad variable with its reason.
pub fn misconfigured(error: &CoordError) -> Value {
    let problems: Vec<Value> = match error {
        CoordError::Config(problems) => problems
            .iter()
            .map(|p| json!({"variable": p.var, "reason": p.reason}))
            .collect(),
        _ => Vec::new(),
    };
    json!({"status": "misconfigured", "error": error.body().error, "problems": problems})
}

/// Whether `name` can name a coordinator deployment (in a path or a query):
/// 1–128 of letters, digits, `-`, `_` and `.`.
pub fn is_coordinator_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn query_value<'q>(path_and_query: &'q str, key: &str) -> Option<&'q str> {
    let (_, query) = path_and_query.split_once('?')?;
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Whether the query asks for the deep check (`deep=1` or `deep=true`).
pub fn wants_deep(path_and_query: &str) -> bool {
    matches!(query_value(path_and_query, "deep"), Some("1" | "true"))
}

/// Checks the deep check's token (constant time), when one is configured.
pub fn authorize(config: &Config, authorization: Option<&str>) -> Result<(), CoordError> {
    let Some(token) = &config.health_token else {
        return Ok(());
    };
    let given = authorization
        .and_then(|a| a.trim().strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(CoordError::Unauthorized(
            "GET /health?deep=1 needs Authorization: Bearer <HEALTH_TOKEN>".to_owned(),
        ))
    }
}

/// Every breaker of the configuration, by service, as `calls` keys them.
fn breakers(config: &Config) -> Vec<(String, Target)> {
    let mut all: Vec<(String, Target)> = config
        .llm_targets()
        .into_iter()
        .map(|t| ("LLM".to_owned(), t))
        .collect();
    for agent in config.registry.agents() {
        all.extend(
            agent
                .targets
                .iter()
                .map(|t| (agent.name.clone(), t.clone())),
        );
    }
    all
}

async fn probe<H: Host>(
    host: &H,
    service: &str,
    base: &str,
    url: String,
    timeout_ms: u64,
) -> Value {
    let start = host.now_ms();
    let request = OutboundRequest::get(url);
    let (up, status, error) =
        match select(std::pin::pin!(host.send(request)), host.sleep(timeout_ms)).await {
            // Only a 2xx health answer is "up": a 404 says the URL is not a
            // health endpoint (a wrong base URL, a proxy), not that it serves.
            Either::Left((Ok(r), _)) => ((200..300).contains(&r.status), Some(r.status), None),
            Either::Left((Err(e), _)) => (false, None, Some(e.message)),
            Either::Right(_) => (
                false,
                None,
                Some(format!("no answer within {timeout_ms} ms")),
            ),
        };
    json!({
        "service": service,
        "target": base,
        "up": up,
        "status": status,
        "latency_ms": host.now_ms().saturating_sub(start),
        "error": error,
    })
}

/// The deep report for the coordinator deployment named in the query
/// (`deployment=<name>`, default [`DEFAULT_DEPLOYMENT`]).
pub async fn deep<H: Host>(host: &H, config: &Config, path_and_query: &str) -> Value {
    let deployment = query_value(path_and_query, "deployment")
        .filter(|d| is_coordinator_name(d))
        .unwrap_or(DEFAULT_DEPLOYMENT);
    // One key, whatever deployment is asked for: a report for another
    // deployment replaces it, so the names a caller makes up never add keys.
    let cache_key = DEEP_CACHE_KEY;
    let now = host.unix_ms();
    if let Some(cached) = host
        .store()
        .get(cache_key)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|c| c["deployment"] == deployment)
    {
        let at = cached["at_ms"].as_u64().unwrap_or(0);
        if at <= now && now - at < DEEP_CACHE_MS {
            let mut report = cached["report"].clone();
            report["cached_ms_ago"] = json!(now - at);
            return report;
        }
    }
    let timeout = config.timeouts.first_byte_ms.min(PROBE_TIMEOUT_MS);
    let core = &config.dial_endpoint;
    let agent_probes: Vec<(&str, kinds::Probe)> = config
        .registry
        .agents()
        .iter()
        .flat_map(|a| kinds::probes(a).into_iter().map(|p| (a.name.as_str(), p)))
        .collect();
    let mut probes = vec![probe(
        host,
        "DIAL Core",
        core,
        format!("{core}/health"),
        timeout,
    )];
    for (agent, p) in &agent_probes {
        probes.push(probe(host, agent, &p.target, p.url.clone(), timeout));
    }
    let checks = join_all(probes).await;
    let all_up = checks.iter().all(|c| c["up"] == true);
    let breakers: Vec<Value> = breakers(config)
        .into_iter()
        .map(|(service, target)| {
            let state = breaker::load(
                host.store(),
                &breaker_key(deployment, &service, &target.identity),
            );
            json!({"service": service, "target": target.id, "state": state.name()})
        })
        .collect();
    let report = json!({
        "status": if all_up { "ok" } else { "degraded" },
        "breaker_store": host.store().kind(),
        "state_signing": state_signing(config),
        "unsigned_state": unsigned_state(config),
        "deployment": deployment,
        "checks": checks,
        "breakers": breakers,
    });
    if let Ok(bytes) =
        serde_json::to_vec(&json!({"deployment": deployment, "at_ms": now, "report": report}))
    {
        host.store().set(cache_key, &bytes);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flag_and_deployment_are_read_from_the_query() {
        assert!(wants_deep("/health?deep=1"));
        assert!(wants_deep("/health?x=2&deep=true"));
        assert!(!wants_deep("/health"));
        assert!(!wants_deep("/health?deep=0"));
        assert_eq!(
            query_value("/health?deep=1&deployment=mas", "deployment"),
            Some("mas")
        );
    }

    #[test]
    fn the_token_is_required_when_configured() {
        let open = Config::default();
        assert!(authorize(&open, None).is_ok());
        let guarded = Config {
            health_token: Some("0123456789abcdef".into()),
            ..Config::default()
        };
        assert_eq!(authorize(&guarded, None).unwrap_err().status(), 401);
        assert!(authorize(&guarded, Some("Bearer 0123456789abcdeX")).is_err());
        assert!(authorize(&guarded, Some("Bearer 0123456789abcdef")).is_ok());
    }

    #[test]
    fn breakers_cover_every_service_primaries_and_backups() {
        let vars = [
            ("AGENTS", "GPA,UMS,RAG"),
            ("AGENT_RAG_KIND", "dial"),
            ("AGENT_RAG_DEPLOYMENT", "rag"),
            ("AGENT_RAG_DESCRIPTION", "docs"),
            ("GPA_BACKUP_DEPLOYMENTS", "gpa-b"),
            ("UMS_AGENT_BACKUP_ENDPOINTS", "http://ums2"),
        ];
        let c = Config::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let got: Vec<(String, String)> = breakers(&c).into_iter().map(|(s, t)| (s, t.id)).collect();
        let want: Vec<(String, String)> = [
            ("LLM", "gpt-4o"),
            ("GPA", "general-purpose-agent"),
            ("GPA", "gpa-b"),
            ("UMS", "http://localhost:8042"),
            ("UMS", "http://ums2"),
            ("RAG", "rag"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
    }
}

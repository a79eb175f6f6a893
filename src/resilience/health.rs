//! `GET /health`: the coordinator itself, and with `?deep=1` a probe of every
//! configured upstream (DIAL Core and UMS endpoints, primary and backups) plus
//! the state of every breaker. Probes run in parallel, each bounded by the
//! first-byte timeout (at most 5 s).

use futures::future::{join_all, select, Either};
use serde_json::{json, Value};

use crate::client::{Host, OutboundRequest};
use crate::config::Config;

/// Longest wait for one probe.
const PROBE_TIMEOUT_MS: u64 = 5_000;

/// The shallow report: the coordinator answers, and where its breakers live.
pub fn shallow<H: Host>(host: &H) -> Value {
    json!({"status": "ok", "breaker_store": host.breakers().kind()})
}

/// Whether the query asks for the deep check (`deep=1` or `deep=true`).
pub fn wants_deep(path_and_query: &str) -> bool {
    path_and_query
        .split_once('?')
        .map(|(_, q)| q.split('&').any(|kv| kv == "deep=1" || kv == "deep=true"))
        .unwrap_or(false)
}

/// Every breaker key of the configuration, as `calls` names them.
fn breaker_keys(config: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    for (agent, targets) in [
        ("LLM", config.llm_targets()),
        ("GPA", config.gpa_targets()),
        ("UMS", config.ums_targets()),
    ] {
        keys.extend(targets.into_iter().map(|t| format!("{agent}:{t}")));
    }
    keys
}

async fn probe<H: Host>(host: &H, service: &str, base: &str, timeout_ms: u64) -> Value {
    let start = host.now_ms();
    let request = OutboundRequest::get(format!("{base}/health"));
    let (up, status, error) =
        match select(std::pin::pin!(host.send(request)), host.sleep(timeout_ms)).await {
            // Any HTTP answer below 500 shows the service is there and serving.
            Either::Left((Ok(r), _)) => (r.status < 500, Some(r.status), None),
            Either::Left((Err(e), _)) => (false, None, Some(e.0)),
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

/// The deep report.
pub async fn deep<H: Host>(host: &H, config: &Config) -> Value {
    let timeout = config.timeouts.first_byte_ms.min(PROBE_TIMEOUT_MS);
    let mut probes = vec![probe(host, "DIAL Core", &config.dial_endpoint, timeout)];
    for e in config.ums_targets() {
        probes.push(probe(host, "UMS", e, timeout));
    }
    let checks = join_all(probes).await;
    let all_up = checks.iter().all(|c| c["up"] == true);
    let breakers: Vec<Value> = breaker_keys(config)
        .into_iter()
        .map(|key| {
            let state = host.breakers().load(&key);
            json!({"target": key, "state": state.name()})
        })
        .collect();
    json!({
        "status": if all_up { "ok" } else { "degraded" },
        "breaker_store": host.breakers().kind(),
        "checks": checks,
        "breakers": breakers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flag_is_read_from_the_query() {
        assert!(wants_deep("/health?deep=1"));
        assert!(wants_deep("/health?x=2&deep=true"));
        assert!(!wants_deep("/health"));
        assert!(!wants_deep("/health?deep=0"));
    }

    #[test]
    fn breaker_keys_cover_primaries_and_backups() {
        let c = Config {
            gpa_backups: vec!["gpa-b".into()],
            ums_backups: vec!["http://ums2".into()],
            ..Config::default()
        };
        assert_eq!(
            breaker_keys(&c),
            vec![
                "LLM:gpt-4o",
                "GPA:general-purpose-agent",
                "GPA:gpa-b",
                "UMS:http://localhost:8042",
                "UMS:http://ums2"
            ]
        );
    }
}

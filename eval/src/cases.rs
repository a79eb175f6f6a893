//! The labelled cases: one JSON object per line (JSON Lines).
//!
//! ```json
//! {"id": "ums-find", "messages": [{"role": "user", "content": "Do we have user John?"}], "expected": ["UMS"]}
//! ```
//!
//! * `id` — unique, non-empty;
//! * `messages` — the conversation as a client sends it to the coordinator
//!   (the last message is the user's request); validated by the coordinator's
//!   own `prepare`, so a case the component would refuse is refused here;
//! * `expected` — the set of agents a correct plan uses (in `route` mode, the
//!   one agent), each registered;
//! * `expected_order` (optional) — groups of agents, e.g. `[["UMS"], ["GPA"]]`:
//!   every agent of a later group must have a subtask that depends, directly
//!   or through other subtasks, on a subtask of each earlier group; together
//!   the groups name exactly the agents of `expected`;
//! * `note` (optional) — why the label is what it is, for the people who read
//!   the file and the report.
//!
//! Blank lines are skipped; any other field is an error (a typo such as
//! `expect` must not silently drop a label).

use std::collections::BTreeSet;

use mas_coordinator::app::{prepare, Incoming, RequestContext};
use mas_coordinator::config::Config;
use mas_coordinator::trace::Trace;
use serde::Deserialize;
use serde_json::Value;

/// The path the cases are "sent" to: the coordinator's deployment.
pub const COORDINATOR_PATH: &str = "/openai/deployments/mas-coordinator/chat/completions";

/// One labelled case, validated.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its id.
    pub id: String,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The agents a correct answer uses, as listed (no duplicates).
    pub expected: Vec<String>,
    /// The dependency groups (empty: no order required).
    pub expected_order: Vec<Vec<String>>,
    /// Why the label is what it is.
    pub note: Option<String>,
    /// The text of the last (user) message.
    pub request: String,
    /// The request as the coordinator validated it, under the run's configuration.
    pub ctx: RequestContext,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseLine {
    id: String,
    messages: Value,
    expected: Vec<String>,
    #[serde(default)]
    expected_order: Option<Vec<Vec<String>>>,
    #[serde(default)]
    note: Option<String>,
}

/// Most problems listed when a file is refused.
const MAX_PROBLEMS: usize = 20;

/// Reads and validates every case of `text` (the file `source`) for `config`'s
/// registry, with `api_key` as the request's key. Every problem is reported
/// at once (the first [`MAX_PROBLEMS`]), as `source:line: ...`.
pub fn parse_cases(
    text: &str,
    source: &str,
    config: &Config,
    api_key: &str,
) -> anyhow::Result<Vec<Case>> {
    let mut cases: Vec<Case> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match parse_case(raw, line, config, api_key) {
            Ok(case) => {
                if cases.iter().any(|c| c.id == case.id) {
                    problems.push(format!(
                        "{source}:{line}: the id {:?} is already used",
                        case.id
                    ));
                } else {
                    cases.push(case);
                }
            }
            Err(problem) => problems.push(format!("{source}:{line}: {problem}")),
        }
    }
    if problems.is_empty() && cases.is_empty() {
        problems.push(format!("{source}: no case in the file"));
    }
    if problems.is_empty() {
        return Ok(cases);
    }
    let shown = problems.len().min(MAX_PROBLEMS);
    let mut message = format!("the cases of {source} are not valid:\n");
    for p in &problems[..shown] {
        message.push_str("  ");
        message.push_str(p);
        message.push('\n');
    }
    if problems.len() > shown {
        message.push_str(&format!("  ... and {} more\n", problems.len() - shown));
    }
    Err(anyhow::anyhow!("{}", message.trim_end()))
}

fn parse_case(raw: &str, line: usize, config: &Config, api_key: &str) -> Result<Case, String> {
    let case: CaseLine = serde_json::from_str(raw).map_err(|e| format!("not a case: {e}"))?;
    if case.id.trim().is_empty() {
        return Err("the id is empty".to_owned());
    }
    let registry = &config.registry;
    let names = registry.names().join(", ");
    if case.expected.is_empty() {
        return Err("expected names no agent".to_owned());
    }
    let mut seen = BTreeSet::new();
    for agent in &case.expected {
        if registry.get(agent).is_none() {
            return Err(format!(
                "expected names {agent:?}, which is not a registered agent (the registry has {names})"
            ));
        }
        if !seen.insert(agent.as_str()) {
            return Err(format!("expected lists {agent:?} twice"));
        }
    }
    let groups = case.expected_order.unwrap_or_default();
    if !groups.is_empty() {
        let mut in_groups = BTreeSet::new();
        for group in &groups {
            if group.is_empty() {
                return Err("expected_order has an empty group".to_owned());
            }
            for agent in group {
                if !seen.contains(agent.as_str()) {
                    return Err(format!(
                        "expected_order names {agent:?}, which expected does not list"
                    ));
                }
                if !in_groups.insert(agent.as_str()) {
                    return Err(format!("expected_order lists {agent:?} twice"));
                }
            }
        }
        if in_groups != seen {
            return Err("expected_order must name every agent of expected".to_owned());
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({ "messages": case.messages }))
        .map_err(|e| e.to_string())?;
    let header = |name: &str| (name == "api-key").then(|| api_key.to_owned());
    let line_u64 = u64::try_from(line).unwrap_or(u64::MAX);
    let incoming = Incoming {
        path: COORDINATOR_PATH,
        trace: Trace::from_headers(
            None,
            None,
            mas_coordinator::trace::trace_id(fresh(line_u64), line_u64),
            mas_coordinator::trace::span_id(fresh(line_u64 ^ 0x5bd1)),
        ),
        start_ms: 0,
        unix_ms: now_unix_ms(),
    };
    let ctx = prepare(config.clone(), header, &body, incoming).map_err(|e| {
        format!(
            "the coordinator would answer HTTP {}: {}",
            e.status(),
            e.message()
        )
    })?;
    let request = ctx.request_text();
    Ok(Case {
        id: case.id,
        line,
        expected: case.expected,
        expected_order: groups,
        note: case.note,
        request,
        ctx,
    })
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 64 bits that differ from run to run and call to call (for trace and span
/// ids only: not a secret).
pub fn fresh(salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&nanos.to_le_bytes());
    bytes.extend_from_slice(&salt.to_le_bytes());
    bytes.extend_from_slice(&std::process::id().to_le_bytes());
    mas_coordinator::memory::state::fnv1a(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<Case>> {
        parse_cases(text, "cases.jsonl", &Config::default(), "key")
    }

    #[test]
    fn a_valid_file_is_read_with_its_labels() {
        let cases = parse(concat!(
            r#"{"id": "a", "messages": [{"role": "user", "content": "Do we have user John?"}], "expected": ["UMS"]}"#,
            "\n\n",
            r#"{"id": "b", "messages": [{"role": "user", "content": "x"}], "expected": ["UMS", "GPA"], "expected_order": [["UMS"], ["GPA"]], "note": "why"}"#,
            "\n"
        ))
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].request, "Do we have user John?");
        assert_eq!(cases[0].line, 1);
        assert_eq!(cases[1].line, 3);
        assert_eq!(cases[1].expected_order, vec![vec!["UMS"], vec!["GPA"]]);
        assert_eq!(cases[1].note.as_deref(), Some("why"));
        assert_eq!(cases[1].ctx.api_key, "key");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let err = parse(concat!(
            r#"{"id": "a", "messages": [{"role": "user", "content": "x"}], "expected": ["RAG"]}"#,
            "\n",
            r#"{"id": "b", "messages": [{"role": "user", "content": "x"}], "expect": ["GPA"]}"#,
            "\n",
            r#"{"id": "c", "messages": [{"role": "assistant", "content": "x"}], "expected": ["GPA"]}"#,
            "\n",
            r#"{"id": "d", "messages": [{"role": "user", "content": "x"}], "expected": ["GPA", "UMS"], "expected_order": [["GPA"]]}"#,
            "\n",
            r#"{"id": "e", "messages": [{"role": "user", "content": "x"}], "expected": ["GPA", "GPA"]}"#,
            "\n",
            r#"{"id": "f", "messages": [{"role": "user", "content": "x"}], "expected": []}"#,
            "\n",
            r#"{"id": "f", "messages": [{"role": "user", "content": "x"}], "expected": ["GPA"]}"#,
            "\n",
            r#"{"id": "f", "messages": [{"role": "user", "content": "x"}], "expected": ["GPA"]}"#,
            "\n",
            "not json\n",
        ))
        .unwrap_err()
        .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], "the cases of cases.jsonl are not valid:");
        assert_eq!(lines.len(), 9, "{err}");
        assert_eq!(
            lines[1],
            "  cases.jsonl:1: expected names \"RAG\", which is not a registered agent (the registry has GPA, UMS)"
        );
        assert!(
            lines[2].starts_with("  cases.jsonl:2: not a case: unknown field `expect`"),
            "{err}"
        );
        assert_eq!(
            lines[3],
            "  cases.jsonl:3: the coordinator would answer HTTP 400: Invalid request: the last message must be the user's (role \"user\"), not \"assistant\""
        );
        assert_eq!(
            lines[4],
            "  cases.jsonl:4: expected_order must name every agent of expected"
        );
        assert_eq!(lines[5], "  cases.jsonl:5: expected lists \"GPA\" twice");
        assert_eq!(lines[6], "  cases.jsonl:6: expected names no agent");
        assert_eq!(lines[7], "  cases.jsonl:8: the id \"f\" is already used");
        assert!(
            lines[8].starts_with("  cases.jsonl:9: not a case:"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        let err = parse("\n\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "the cases of cases.jsonl are not valid:\n  cases.jsonl: no case in the file"
        );
    }
}

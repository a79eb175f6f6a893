//! `mas-eval` end to end: the binary against the local DIAL world (its
//! deterministic LLM makes every figure exact), against small stub endpoints
//! (answers that change between repeats, error statuses that echo the key)
//! and against nothing at all. No assertion is about time.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use mas_coordinator::calls::RequestTemplate;
use mas_coordinator::config::Config;
use mas_eval::cases::parse_cases;
use mas_eval::run::coordination_body;
use mas_world::{World, WorldOptions};
use serde_json::{json, Value};

const KEY: &str = "eval-test-key-4f1c";
const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn shipped(name: &str) -> String {
    format!("{MANIFEST}/{name}")
}

/// A fresh, empty folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("eval-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with exactly `env` (nothing inherited) and `args`.
fn mas_eval(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mas-eval"));
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn cells(report: &Value) -> Vec<(String, String, u64)> {
    report["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["expected"].as_str().unwrap().to_owned(),
                c["chosen"].as_str().unwrap().to_owned(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn cell(e: &str, c: &str, n: u64) -> (String, String, u64) {
    (e.to_owned(), c.to_owned(), n)
}

fn world_env(world: &World) -> Vec<(&'static str, String)> {
    vec![
        ("DIAL_ENDPOINT", world.core_url()),
        ("DIAL_API_KEY", KEY.to_owned()),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The variables of `eval/rag.env` (`NAME=value` lines, `"` quotes removed).
fn rag_env() -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(shipped("rag.env")).unwrap();
    let vars: Vec<(&'static str, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let name: &'static str = Box::leak(k.to_owned().into_boxed_str());
            (name, v.trim_matches('"').to_owned())
        })
        .collect();
    assert_eq!(vars.len(), 4, "{vars:?}");
    vars
}

/// The misrouted cases of the shipped set in plan mode, in file order.
const PLAN_MISROUTED: [&str; 30] = [
    "ums-create-register",
    "ums-create-sign-up",
    "ums-find-by-email",
    "ums-find-database",
    "ums-find-typo",
    "ums-find-ukrainian",
    "ums-details-phone",
    "ums-update-address",
    "ums-delete-remove",
    "ums-delete-records",
    "ums-list-sorted",
    "ums-followup-confirm-delete",
    "ums-followup-his-email",
    "ums-followup-her-email",
    "ums-followup-change-it",
    "ums-followup-second-one",
    "ums-followup-also-grace",
    "gpa-trap-user-interface",
    "gpa-trap-google-account",
    "gpa-trap-user-story",
    "gpa-trap-instagram-users",
    "gpa-trap-user-agent",
    "gpa-followup-what-users-say",
    "amb-tell-me-about-john",
    "two-indep-list-weather",
    "two-indep-delete-capital",
    "two-indep-after-history",
    "two-dep-city-then-weather",
    "two-dep-also-there",
    "gpa-trap-new-user-here",
];

/// The figures of the shipped set in plan mode against the local world.
fn assert_shipped_plan_figures(report: &Value) {
    assert_eq!(report["mode"], "plan");
    assert_eq!(report["agents"], json!(["GPA", "UMS"]));
    assert_eq!(report["cases_in_file"], 92);
    assert_eq!(report["cases"], 92);
    assert_eq!(report["skipped"], json!([]));
    assert_eq!(report["answers"], 92);
    assert_eq!(report["correct"], 62);
    assert_eq!(report["accuracy"].as_f64().unwrap(), 62.0 / 92.0);
    assert_eq!(report["fallbacks"], 0);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["replans"], 0);
    assert_eq!(report["flaky"], json!([]));
    assert_eq!(
        cells(report),
        vec![
            cell("GPA", "GPA", 45),
            cell("GPA", "UMS", 6),
            cell("GPA", "(missing)", 2),
            cell("UMS", "GPA", 18),
            cell("UMS", "UMS", 35),
            cell("UMS", "(missing)", 2),
            cell("(extra)", "UMS", 1),
        ]
    );
    assert_eq!(ids(&report["misrouted"]), PLAN_MISROUTED);
    // The natural request the keyword router gets wrong, in the matrix's GPA → UMS cell.
    let trap = report["misrouted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpa-trap-user-interface")
        .unwrap();
    assert_eq!(trap["expected"], json!(["GPA"]));
    assert_eq!(trap["chosen"], json!(["UMS"]));
    assert_eq!(
        trap["decision"]["plan"]["subtasks"][0]["agent_name"], "UMS",
        "{trap}"
    );
    // Right agents, missing dependency.
    let order = report["misrouted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "two-dep-also-there")
        .unwrap();
    assert_eq!(order["chosen"], json!(["UMS", "GPA"]));
    assert_eq!(order["order_respected"], false);
    assert_eq!(
        report["tokens"],
        json!({"prompt": 37891, "completion": 702, "total": 38593, "answers_with_usage": 92, "mean_total_per_answer": 419.5})
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 92);
    let total: u64 = results
        .iter()
        .map(|r| r["tokens"]["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 38593);
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap()
            <= report["latency_ms"]["p99"].as_f64().unwrap()
    );
}

/// The number of whitespace-separated words in the messages of a recorded
/// body: the world's prompt tokens.
fn prompt_words(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match &m["content"] {
            Value::String(s) => s.split_whitespace().count() as u64,
            other => panic!("content {other}"),
        })
        .sum()
}

#[tokio::test]
async fn the_shipped_cases_against_the_local_world() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    let out = scratch("shipped");
    let env = world_env(&world);
    let output = mas_eval(
        &["--out", out.to_str().unwrap(), "--concurrency", "4"],
        &as_refs(&env),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_shipped_plan_figures(&report);
    assert_eq!(report["endpoint"], world.core_url());
    assert_eq!(report["deployment"], "gpt-4o");

    // Exactly the requests the component would send, one per case.
    let config =
        Config::from_lookup(|n| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())).unwrap();
    let cases = parse_cases(
        &std::fs::read_to_string(shipped("cases.jsonl")).unwrap(),
        "cases.jsonl",
        &config,
        KEY,
    )
    .unwrap();
    let target = &config.llm_targets()[0];
    let mut expected: Vec<String> = cases
        .iter()
        .map(|c| {
            text(
                &RequestTemplate::dial_chat(&c.ctx, coordination_body(c))
                    .build(target)
                    .body,
            )
        })
        .collect();
    let recorded = world.requests();
    assert_eq!(recorded.len(), 92);
    let mut bodies: Vec<String> = recorded.iter().map(|r| r.body.clone()).collect();
    for r in &recorded {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/openai/deployments/gpt-4o/chat/completions");
        assert_eq!(r.header("api-key"), Some(KEY));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("traceparent").is_some());
        assert_eq!(r.json()["model"], "gpt-4o");
        assert_eq!(r.json()["stream"], false);
        assert_eq!(
            r.json()["response_format"]["json_schema"]["name"],
            "coordination_plan"
        );
    }
    // The world counts words: the report's prompt tokens are the words sent.
    let words: u64 = recorded.iter().map(|r| prompt_words(&r.json())).sum();
    assert_eq!(words, report["tokens"]["prompt"].as_u64().unwrap());
    expected.sort();
    bodies.sort();
    assert_eq!(bodies, expected);

    // The Markdown report and what was printed.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let stdout = text(&output.stdout);
    for doc in [&md, &stdout] {
        assert!(doc.starts_with("# Coordination evaluation\n"), "{doc}");
        assert!(
            doc.contains("| **accuracy** | **62/92 = 67.4%** |"),
            "{doc}"
        );
        assert!(doc.contains(
            "| expected ↓ / chosen → | GPA | UMS | (missing) | (fallback) |\n|---|---:|---:|---:|---:|\n| GPA | 45 | 6 | 2 | 0 |\n| UMS | 18 | 35 | 2 | 0 |\n| (extra) | 0 | 1 |  |  |\n"
        ), "{doc}");
        assert!(doc.contains("## Misrouted (30)\n"), "{doc}");
        assert!(doc.contains(
            "- `gpa-trap-user-interface`: expected GPA, chose UMS — “What is the best user interface library for Rust?”\n  - 1. UMS: “What is the best user interface library for Rust?”\n"
        ), "{doc}");
        assert!(doc.contains(
            "- `two-dep-also-there`: expected UMS + GPA (in the order UMS → GPA), chose UMS + GPA, order not respected"
        ), "{doc}");
        assert!(doc.contains("| tokens | 37891 prompt + 702 completion = 38593 total; 419.5 per answer (92 of 92 answers reported usage) |"), "{doc}");
    }
    assert!(md.contains("## Every answer\n"));
    assert!(
        md.contains("| `two-dep-add-then-news` | 1 | right | UMS, GPA | GPA after UMS, UMS |"),
        "{md}"
    );
    assert!(!stdout.contains("## Every answer"));
    assert!(stdout.ends_with(&format!(
        "\nReport written to {} and {}\n",
        out.join("report.json").display(),
        out.join("report.md").display()
    )));
    assert!(!stdout.contains(KEY) && !md.contains(KEY));
    assert_eq!(text(&output.stderr), "", "no progress bar off a terminal");
}

#[tokio::test]
async fn route_mode_skips_the_cases_that_need_several_agents() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    let out = scratch("route");
    let env = world_env(&world);
    let output = mas_eval(
        &["--out", out.to_str().unwrap(), "--mode", "route"],
        &as_refs(&env),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_eq!(report["mode"], "route");
    assert_eq!(report["cases"], 76);
    assert_eq!(
        report["skipped"],
        json!([
            "two-indep-user-weather",
            "two-indep-list-weather",
            "two-indep-image-user",
            "two-indep-calc-count",
            "two-indep-delete-capital",
            "two-indep-user-news",
            "two-indep-three-parts",
            "two-indep-after-history",
            "two-dep-add-then-news",
            "two-dep-search-then-add",
            "two-dep-email-then-image",
            "two-dep-city-then-weather",
            "two-dep-users-then-chart",
            "two-dep-create-then-interviews",
            "two-dep-news-then-add",
            "two-dep-also-there"
        ])
    );
    assert_eq!(report["answers"], 76);
    assert_eq!(report["correct"], 51);
    assert_eq!(report["accuracy"].as_f64().unwrap(), 51.0 / 76.0);
    assert_eq!(report["fallbacks"], 0);
    assert_eq!(
        cells(&report),
        vec![
            cell("GPA", "GPA", 30),
            cell("GPA", "UMS", 7),
            cell("UMS", "GPA", 18),
            cell("UMS", "UMS", 21),
        ]
    );
    let mut misrouted: Vec<&str> = PLAN_MISROUTED[..24].to_vec();
    misrouted.push("gpa-trap-new-user-here");
    assert_eq!(ids(&report["misrouted"]), misrouted);
    assert_eq!(
        report["misrouted"][0]["decision"],
        json!({"route": {"agent_name": "GPA", "additional_instructions": null}})
    );
    assert_eq!(report["tokens"]["prompt"], 21868);
    assert_eq!(report["tokens"]["completion"], 76);
    assert_eq!(report["tokens"]["total"], 21944);
    let recorded = world.requests();
    assert_eq!(recorded.len(), 76);
    assert!(recorded
        .iter()
        .all(|r| r.json()["response_format"]["json_schema"]["name"] == "routing_decision"));
    assert!(text(&output.stdout).contains(
        "(92 cases; 76 run, 16 skipped: they expect several agents and route mode picks one)"
    ));
}

#[tokio::test]
async fn the_rag_cases_with_the_rag_registry() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    let out = scratch("rag");
    let mut env = world_env(&world);
    env.extend(rag_env());
    let cases = shipped("cases-rag.jsonl");
    let output = mas_eval(
        &["--out", out.to_str().unwrap(), "--cases", &cases],
        &as_refs(&env),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_eq!(report["agents"], json!(["GPA", "UMS", "RAG"]));
    assert_eq!(report["answers"], 11);
    assert_eq!(report["correct"], 5);
    assert_eq!(
        cells(&report),
        vec![
            cell("GPA", "GPA", 4),
            cell("UMS", "UMS", 2),
            cell("RAG", "GPA", 5),
            cell("RAG", "RAG", 1),
            cell("RAG", "(missing)", 1),
        ]
    );
    assert_eq!(
        ids(&report["misrouted"]),
        [
            "rag-vacation-days",
            "rag-expenses",
            "rag-vpn",
            "rag-followup-contractors",
            "rag-two-indep",
            "rag-two-dep"
        ]
    );
    assert_eq!(report["tokens"]["total"], 4773);
    let schema = &world.requests()[0].json()["response_format"]["json_schema"]["schema"];
    assert_eq!(
        schema["$defs"]["Subtask"]["properties"]["agent_name"]["enum"],
        json!(["GPA", "UMS", "RAG"])
    );

    // Without the RAG registry, the file is refused before any call.
    let plain = world_env(&world);
    let output = mas_eval(
        &["--out", out.to_str().unwrap(), "--cases", &cases],
        &as_refs(&plain),
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("mas-eval: the cases of {cases} are not valid:\n  {cases}:1: expected names \"RAG\", which is not a registered agent (the registry has GPA, UMS)\n")), "{stderr}");
    assert_eq!(world.requests().len(), 11);
}

/// Cases the world answers unusably, or with repairs, or by re-planning.
const FIXTURE: &str = r#"{"id": "garbage", "messages": [{"role": "user", "content": "Tell me a joke [plan:garbage]"}], "expected": ["GPA"]}
{"id": "unknown-agent", "messages": [{"role": "user", "content": "[plan:unknown-agent] Do we have user John?"}], "expected": ["UMS"]}
{"id": "cycle", "messages": [{"role": "user", "content": "[plan:cycle] the weather in Kyiv"}], "expected": ["GPA"]}
{"id": "many", "messages": [{"role": "user", "content": "[plan:many] twelve things"}], "expected": ["GPA"]}
{"id": "replan", "messages": [{"role": "user", "content": "[plan:replan-once] the weather in Kyiv"}], "expected": ["GPA"]}
{"id": "trap", "messages": [{"role": "user", "content": "What is the best user interface library for Rust?"}], "expected": ["GPA"]}
"#;

#[tokio::test]
async fn fallbacks_repairs_and_repeats_are_counted() {
    let world = World::start(WorldOptions::default()).await.unwrap();
    let dir = scratch("fixture");
    let cases = dir.join("cases.jsonl");
    std::fs::write(&cases, FIXTURE).unwrap();
    let out = dir.join("out");
    let env = world_env(&world);
    let output = mas_eval(
        &[
            "--out",
            out.to_str().unwrap(),
            "--cases",
            cases.to_str().unwrap(),
            "--repeat",
            "3",
        ],
        &as_refs(&env),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_eq!(report["repeat"], 3);
    assert_eq!(report["cases"], 6);
    assert_eq!(report["answers"], 18);
    assert_eq!(report["correct"], 6);
    assert_eq!(report["accuracy"].as_f64().unwrap(), 6.0 / 18.0);
    assert_eq!(report["fallbacks"], 9);
    assert_eq!(report["replans"], 3);
    assert_eq!(
        report["flaky"],
        json!([]),
        "the world answers the same every time"
    );
    assert_eq!(
        cells(&report),
        vec![
            cell("GPA", "GPA", 6),
            cell("GPA", "UMS", 3),
            cell("GPA", "(fallback)", 6),
            cell("UMS", "(fallback)", 3),
        ]
    );
    let fallbacks = report["fallback_answers"].as_array().unwrap();
    let reasons: Vec<(&str, u64, &str)> = fallbacks
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap(),
                f["repeat"].as_u64().unwrap(),
                f["reason"].as_str().unwrap(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for repeat in 1..=3 {
        expected.push(("garbage", repeat, "the plan was not a valid plan"));
        expected.push(("unknown-agent", repeat, "the plan named an unknown agent"));
        expected.push(("cycle", repeat, "the plan's dependencies form a cycle"));
    }
    assert_eq!(reasons, expected);
    assert_eq!(fallbacks[0]["answer"], "this is not json");
    assert_eq!(ids(&report["misrouted"]), ["trap", "trap", "trap"]);
    let many = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "many")
        .unwrap();
    assert_eq!(many["correct"], true);
    assert_eq!(
        many["repairs"],
        json!(["The plan had 12 subtasks; the first 8 are run."])
    );
    assert_eq!(world.requests().len(), 18);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Fallbacks (9)\n\n- `garbage` (repeat 1): the plan was not a valid plan — answer: “this is not json”\n"), "{md}");
    assert!(
        md.contains(
            "## Flaky cases (0)\n\nNone: every case got the same answer in every repeat.\n"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| re-plans | 3 (plans asking for another round; only the first round is judged) |"
        ),
        "{md}"
    );

    // Route mode's fallbacks.
    std::fs::write(
        &cases,
        r#"{"id": "garbage", "messages": [{"role": "user", "content": "[route:garbage]"}], "expected": ["GPA"]}
{"id": "unknown", "messages": [{"role": "user", "content": "[route:unknown]"}], "expected": ["UMS"]}
"#,
    )
    .unwrap();
    let output = mas_eval(
        &[
            "--out",
            out.to_str().unwrap(),
            "--cases",
            cases.to_str().unwrap(),
            "--mode",
            "route",
        ],
        &as_refs(&env),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_eq!(report["correct"], 0);
    assert_eq!(report["fallbacks"], 2);
    assert_eq!(
        report["fallback_answers"][1]["reason"],
        "the routing answer named an unknown agent"
    );
    assert_eq!(
        cells(&report),
        vec![cell("GPA", "(fallback)", 1), cell("UMS", "(fallback)", 1)]
    );
}

/// A stub DIAL Core: every request (one per connection) is recorded and
/// answered by `answer(n, request)`.
struct Stub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn stub(answer: impl Fn(usize, &str) -> (u16, String) + Send + 'static) -> Stub {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request = format!("{head}\r\n{}", String::from_utf8_lossy(&body));
            let (status, reply) = answer(n, &request);
            seen.lock().unwrap().push(request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    Stub { url, requests }
}

fn completion(content: &str) -> String {
    json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    })
    .to_string()
}

fn one_agent_plan(agent: &str) -> String {
    json!({"subtasks": [{"task_id": 1, "agent_name": agent, "task_description": "x", "depends_on": []}], "replan": false}).to_string()
}

#[test]
fn answers_that_change_across_repeats_make_a_case_flaky_and_errors_are_listed() {
    let stub = stub(|n, _| match n % 3 {
        0 => (200, completion(&one_agent_plan("UMS"))),
        1 => (200, completion(&one_agent_plan("GPA"))),
        _ => (
            429,
            format!("{{\"error\":{{\"message\":\"slow down, {KEY}\"}}}}"),
        ),
    });
    let dir = scratch("flaky");
    let cases = dir.join("cases.jsonl");
    std::fs::write(
        &cases,
        r#"{"id": "john", "messages": [{"role": "user", "content": "Do we have user John?"}], "expected": ["UMS"]}"#,
    )
    .unwrap();
    let out = dir.join("out");
    let output = mas_eval(
        &[
            "--out",
            out.to_str().unwrap(),
            "--cases",
            cases.to_str().unwrap(),
            "--repeat",
            "3",
            "--concurrency",
            "1",
        ],
        &[
            ("DIAL_ENDPOINT", &stub.url),
            ("DIAL_API_KEY", KEY),
            ("DEPLOYMENT_NAME", "my-llm"),
            ("DIAL_API_VERSION", "2024-02-01"),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_eq!(report["answers"], 3);
    assert_eq!(report["correct"], 1);
    assert_eq!(report["errors"], 1);
    assert_eq!(
        report["flaky"],
        json!([{"id": "john", "variants": [
            {"shape": "UMS", "count": 1, "correct": true},
            {"shape": "GPA", "count": 1, "correct": false},
        ]}])
    );
    assert_eq!(
        report["error_answers"],
        json!([{"id": "john", "repeat": 3, "error": format!(
            "{}/openai/deployments/my-llm/chat/completions?api-version=2024-02-01 answered HTTP 429: {{\"error\":{{\"message\":\"slow down, ***\"}}}}",
            stub.url
        )}])
    );
    assert_eq!(
        cells(&report),
        vec![cell("UMS", "GPA", 1), cell("UMS", "UMS", 1)]
    );
    assert_eq!(
        report["tokens"],
        json!({"prompt": 200, "completion": 20, "total": 220, "answers_with_usage": 2, "mean_total_per_answer": 110.0})
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Flaky cases (1)\n\n- `john`: UMS ×1 (right); GPA ×1 (wrong)\n"),
        "{md}"
    );
    assert!(!md.contains(KEY) && !text(&output.stdout).contains(KEY));
    let requests = stub.requests.lock().unwrap();
    assert_eq!(requests.len(), 3);
    let first = requests[0].to_ascii_lowercase();
    assert!(
        first.starts_with(
            "post /openai/deployments/my-llm/chat/completions?api-version=2024-02-01 http/1.1\r\n"
        ),
        "{first}"
    );
    assert!(first.contains(&format!("\r\napi-key: {}\r\n", KEY.to_ascii_lowercase())));
    assert!(first.contains("\r\ncontent-type: application/json\r\n"));
    assert!(first.contains("\r\ntraceparent: 00-"));
    assert!(
        requests[0].ends_with(r#""model":"my-llm"}"#),
        "{}",
        requests[0]
    );
}

#[test]
fn min_accuracy_sets_the_exit_status() {
    let stub = stub(|n, _| {
        let agent = if n % 4 == 3 { "GPA" } else { "UMS" };
        (200, completion(&one_agent_plan(agent)))
    });
    let dir = scratch("min-accuracy");
    let cases = dir.join("cases.jsonl");
    let lines: Vec<String> = (1..=4)
        .map(|i| {
            format!(r#"{{"id": "c{i}", "messages": [{{"role": "user", "content": "user {i}"}}], "expected": ["UMS"]}}"#)
        })
        .collect();
    std::fs::write(&cases, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let run = |min: &str| {
        mas_eval(
            &[
                "--out",
                out.to_str().unwrap(),
                "--cases",
                cases.to_str().unwrap(),
                "--concurrency",
                "1",
                "--min-accuracy",
                min,
            ],
            &[("DIAL_ENDPOINT", &stub.url), ("DIAL_API_KEY", KEY)],
        )
    };
    let pass = run("0.75");
    assert_eq!(pass.status.code(), Some(0), "{}", text(&pass.stderr));
    assert_eq!(read_report(&out)["accuracy"], 0.75);
    let _ = std::fs::remove_dir_all(&out);
    let fail = run("0.76");
    assert_eq!(fail.status.code(), Some(1));
    assert_eq!(
        text(&fail.stderr),
        "mas-eval: accuracy 3/4 = 0.7500 is below --min-accuracy 0.76\n"
    );
    assert_eq!(
        read_report(&out)["correct"],
        3,
        "the report is written all the same"
    );
    assert!(text(&fail.stdout).contains("| **accuracy** | **3/4 = 75.0%** |"));
}

#[test]
fn an_unreachable_endpoint_stops_the_run_with_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = scratch("unreachable").join("out");
    let url = format!("http://127.0.0.1:{port}");
    let output = mas_eval(
        &["--out", out.to_str().unwrap()],
        &[("DIAL_ENDPOINT", &url), ("DIAL_API_KEY", KEY)],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!("mas-eval: cannot connect to 127.0.0.1:{port}: ")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(KEY));
    assert!(!out.exists(), "no report for a run that could not start");
    assert_eq!(text(&output.stdout), "");
}

#[test]
fn a_refused_key_stops_the_run_at_the_first_answer_without_showing_the_key() {
    let stub = stub(|_, request| {
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("api-key: "))
            .unwrap_or("")
            .to_owned();
        (
            401,
            format!("{{\"error\":{{\"message\":\"key {key} is not valid\"}}}}"),
        )
    });
    let out = scratch("refused").join("out");
    let output = mas_eval(
        &["--out", out.to_str().unwrap(), "--concurrency", "1"],
        &[("DIAL_ENDPOINT", &stub.url), ("DIAL_API_KEY", KEY)],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        format!("mas-eval: {}/openai/deployments/gpt-4o/chat/completions answered HTTP 401: {{\"error\":{{\"message\":\"key *** is not valid\"}}}} (check DIAL_API_KEY: the key is not accepted for this deployment)\n", stub.url)
    );
    assert_eq!(stub.requests.lock().unwrap().len(), 1);
    assert!(!out.exists());
}

#[test]
fn local_world_runs_with_no_configuration_at_all() {
    let out = scratch("local-world").join("out");
    let output = mas_eval(&["--local-world", "--out", out.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report = read_report(&out);
    assert_shipped_plan_figures(&report);
    assert!(
        report["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("the local world at http://127.0.0.1:"),
        "{}",
        report["endpoint"]
    );
}

#[test]
fn missing_configuration_and_bad_flags_are_errors() {
    let output = mas_eval(&[], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "mas-eval: DIAL_ENDPOINT is not set: set it to your DIAL Core's URL (with DEPLOYMENT_NAME and DIAL_API_KEY), or run against the local world with --local-world\n"
    );
    let output = mas_eval(&[], &[("DIAL_ENDPOINT", "http://127.0.0.1:9")]);
    assert_eq!(
        text(&output.stderr),
        "mas-eval: DIAL_API_KEY is not set: the coordination calls need a DIAL API key\n"
    );
    let output = mas_eval(
        &["--local-world"],
        &[("COORDINATION_MODE", "auto"), ("MAX_SUBTASKS", "0")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "mas-eval: the configuration is not valid: Invalid configuration: COORDINATION_MODE must be plan or route; MAX_SUBTASKS must be a whole number from 1 to 32\n"
    );
    let output = mas_eval(&["--repeat", "0"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr)
            .starts_with("error: invalid value '0' for '--repeat <N>': 0 is not in 1..=100\n"),
        "{}",
        text(&output.stderr)
    );
    let output = mas_eval(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).starts_with("mas-eval: runs the coordinator's coordination step"));
}

/// A TLS stub on 127.0.0.1 with the certificate of `tests/tls` (`localhost`,
/// issued by the test CA `tests/tls/ca.pem`), answering every call with a
/// plan for UMS. Returns its port.
async fn tls_stub() -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = Path::new(MANIFEST).join("tests/tls");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("localhost.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got);
                    let Some(end) = text.find("\r\n\r\n") else {
                        return false;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    got.len() >= end + 4 + length
                };
                while !complete(&got) {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = completion(&one_agent_plan("UMS"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn https_endpoints_are_verified_against_mozilla_roots_and_ssl_cert_file() {
    let port = tls_stub().await;
    let dir = scratch("tls");
    let cases = dir.join("cases.jsonl");
    std::fs::write(
        &cases,
        r#"{"id": "john", "messages": [{"role": "user", "content": "Do we have user John?"}], "expected": ["UMS"]}"#,
    )
    .unwrap();
    let out = dir.join("out");
    let url = format!("https://localhost:{port}");
    let args = [
        "--out",
        out.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
    ];
    // The test CA is not one of Mozilla's.
    let untrusted = mas_eval(&args, &[("DIAL_ENDPOINT", &url), ("DIAL_API_KEY", KEY)]);
    assert_eq!(untrusted.status.code(), Some(2));
    assert_eq!(
        text(&untrusted.stderr),
        format!("mas-eval: the TLS handshake with localhost:{port} failed: invalid peer certificate: UnknownIssuer\n")
    );
    let ca = Path::new(MANIFEST).join("tests/tls/ca.pem");
    let trusted = mas_eval(
        &args,
        &[
            ("DIAL_ENDPOINT", &url),
            ("DIAL_API_KEY", KEY),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ],
    );
    assert_eq!(trusted.status.code(), Some(0), "{}", text(&trusted.stderr));
    let report = read_report(&out);
    assert_eq!(report["correct"], 1);
    assert_eq!(report["endpoint"], url);
}

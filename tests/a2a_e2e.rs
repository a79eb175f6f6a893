//! The `a2a` kind end to end: the built component in `wasmtime serve`, the
//! local DIAL world for the LLM and GPA, and a real A2A agent made with the
//! official Python SDK (`tests/a2a/server.py`, a2a-sdk 1.3 in the tests'
//! `.venv`, made by scripts/setup.sh): routed to it, its stages streamed, its
//! files attached, its context kept across turns, its question answered on
//! the next turn, a failing task beside a working GPA subtask, the blocking
//! method and protocol 0.3, and where credentials go.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::host::Stack;
use common::turns::{as_history, chat_stream};
use common::wire::*;
use mas_world::World;
use serde_json::{json, Value};

const KEY: &str = "sk-a2a-e2e-PER-REQUEST-5e1b";
const SECRET: (&str, &str) = ("STATE_SECRET", "a2a-e2e-state-secret-0123456789");

/// One `tests/a2a/server.py`, stopped when dropped.
struct Agent {
    child: Child,
    url: String,
    record: PathBuf,
}

impl Agent {
    fn start(args: &[&str]) -> Agent {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run scripts/setup.sh (it installs the A2A SDK into .venv)",
            python.display()
        );
        let record = std::env::temp_dir().join(format!(
            "a2a-record-{}-{}.jsonl",
            std::process::id(),
            args.join("_").replace(['/', '='], "-")
        ));
        let _ = std::fs::remove_file(&record);
        let mut child = Command::new(python)
            .arg(root.join("tests/a2a/server.py"))
            .args(["--port", "0", "--record"])
            .arg(&record)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tests/a2a/server.py");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the A2A server said {line:?}"))
            .to_owned();
        Agent { child, url, record }
    }

    /// Every request it received: (method, path, headers, body).
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.record);
    }
}

/// The coordinator with the WEATHER agent at `agent` (described by its card:
/// no description variable), and `extra` variables.
async fn stack(agent: &Agent, extra: &[(&str, &str)]) -> Stack {
    let mut env = vec![
        ("AGENTS", "GPA,UMS,WEATHER"),
        ("AGENT_WEATHER_KIND", "a2a"),
        ("AGENT_WEATHER_ENDPOINT", agent.url.as_str()),
        SECRET,
    ];
    env.extend_from_slice(extra);
    Stack::start(&env).await
}

fn stage_text(d: &[Value], index: usize) -> String {
    d.iter()
        .filter_map(|e| e.pointer("/custom_content/stages/0"))
        .filter(|s| s["index"] == index)
        .filter_map(|s| s["content"].as_str())
        .collect()
}

fn stage_status(d: &[Value], index: usize) -> Option<Value> {
    d.iter()
        .filter_map(|e| e.pointer("/custom_content/stages/0"))
        .find(|s| s["index"] == index && !s["status"].is_null())
        .map(|s| s["status"].clone())
}

fn synthesis_context(world: &World) -> String {
    let llm = world
        .requests()
        .into_iter()
        .filter(|r| r.path == "/openai/deployments/gpt-4o/chat/completions")
        .rfind(|r| r.json()["stream"] == true)
        .unwrap()
        .json();
    let last = llm["messages"].as_array().unwrap().last().unwrap().clone();
    last["content"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_agent_routed_by_its_card_is_mirrored_and_keeps_its_context() {
    let agent = Agent::start(&["--rpc-path", "/a2a/jsonrpc", "--skill-examples"]);
    let s = stack(&agent, &[]).await;
    let conv = Some("chat-a2a-1");
    let mut history = vec![user("@WEATHER Weather in Paris?")];
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    assert_eq!(d[4], stage_open(1, "Call WEATHER Agent", None));
    assert_eq!(
        stage_text(&d, 1),
        "Looking into it.\n\nA2A[1]: @WEATHER Weather in Paris?"
    );
    assert_eq!(stage_status(&d, 1), Some(json!("completed")));
    assert!(synthesis_context(&s.world)
        .starts_with("## CONTEXT:\nA2A[1]: @WEATHER Weather in Paris?\n---"));
    // The coordination call was told what the agent is from its card.
    let routing = s
        .world
        .requests()
        .into_iter()
        .find(|r| r.json()["response_format"]["type"] == "json_schema")
        .unwrap()
        .json();
    let prompt = routing["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = prompt
        .lines()
        .find(|l| l.starts_with("- WEATHER: "))
        .unwrap_or_else(|| panic!("{prompt}"));
    assert!(
        line.starts_with("- WEATHER: Answers weather questions for any city. Skills: "),
        "{line}"
    );
    assert!(line.contains("(e.g. \""), "{line}");
    let state = as_history(&r.events())["custom_content"]["state"].clone();
    let context = state["agents"]["WEATHER"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    history.push(as_history(&r.events()));
    history.push(user("@WEATHER And in Rome?"));
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    // The agent counts the messages of the context: the same context continued.
    assert_eq!(
        stage_text(&d, 1),
        "Looking into it.\n\nA2A[2]: @WEATHER And in Rome?"
    );
    let received = agent.received();
    let sends: Vec<&Value> = received.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(sends.len(), 2);
    let second: Value = serde_json::from_str(sends[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(second["params"]["message"]["contextId"], json!(context));
    assert_eq!(sends[1]["path"], "/a2a/jsonrpc");
    // Neither DIAL's key nor the user's token ever reached the agent.
    for r in &received {
        let headers = r["headers"].to_string().to_lowercase();
        assert!(!headers.contains("api-key"), "{r}");
        assert!(!headers.contains("authorization"), "{r}");
        assert!(!r.to_string().contains(KEY), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_become_attachments_and_a_question_is_answered_on_the_next_turn() {
    let agent = Agent::start(&[]);
    let s = stack(&agent, &[]).await;
    let r = chat_stream(&s.host, KEY, &[user("@WEATHER [a2a:file] report")], None).await;
    let d = deltas(&r.events());
    let attachments: Vec<Value> = d
        .iter()
        .filter_map(|e| e.pointer("/custom_content/attachments/0").cloned())
        .collect();
    assert_eq!(
        attachments,
        [
            json!({"index": 0, "type": "text/plain", "title": "hello.txt", "data": "hello"}),
            json!({"index": 1, "type": "application/pdf", "title": "report.pdf", "url": "https://example.com/report.pdf"}),
        ]
    );

    let conv = Some("chat-a2a-ask");
    let mut history = vec![user("@WEATHER [a2a:ask] the forecast, please")];
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    let answer = as_history(&r.events());
    assert_eq!(answer["content"], "Which city?");
    assert_eq!(
        answer["custom_content"]["state"]["pending"]["kind"],
        "agent"
    );
    assert_eq!(stage_status(&d, 1), Some(json!("completed")));
    let llm_calls = |w: &World| {
        w.requests()
            .into_iter()
            .filter(|r| r.path == "/openai/deployments/gpt-4o/chat/completions")
            .count()
    };
    // The question is the answer: no synthesis.
    assert_eq!(llm_calls(&s.world), 3, "2 + 1 routing calls, 1 synthesis");

    history.push(answer);
    history.push(user("Kyiv"));
    let r = chat_stream(&s.host, KEY, &history, conv).await;
    let d = deltas(&r.events());
    assert!(
        stage_text(&d, 1).contains("Forecast for Kyiv: sunny"),
        "{d:?}"
    );
    assert_eq!(
        llm_calls(&s.world),
        4,
        "no coordination call, one synthesis"
    );
    assert!(as_history(&r.events())["custom_content"]["state"]
        .get("pending")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_beside_a_working_gpa_subtask_fails_alone() {
    let agent = Agent::start(&[]);
    let s = stack(&agent, &[("COORDINATION_MODE", "plan")]).await;
    let r = chat_stream(
        &s.host,
        KEY,
        &[user(
            "@WEATHER [a2a:fail] Paris? Also, search the weather in Kyiv",
        )],
        None,
    )
    .await;
    let d = deltas(&r.events());
    assert_eq!(d[4], stage_open(1, "Call WEATHER Agent (task 1)", None));
    assert_eq!(stage_status(&d, 1), Some(json!("failed")));
    assert!(stage_text(&d, 1).contains("The agent failed on purpose."));
    assert_eq!(stage_status(&d, 2), Some(json!("completed")));
    // The stream ends normally; the synthesis says what failed.
    assert_eq!(d[d.len() - 2..], [json!("STOP"), json!("[DONE]")]);
    assert!(!d.iter().any(|e| e.get("error").is_some()));
    let context = synthesis_context(&s.world);
    assert!(
        context.contains(
            "### Task 1 (WEATHER): @WEATHER [a2a:fail] Paris?\nFAILED: The WEATHER agent reported an error."
        ),
        "{context}"
    );
    assert!(
        context.contains("### Task 2 (GPA): search the weather in Kyiv\nWeather in Kyiv"),
        "{context}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_method_protocol_0_3_and_the_agent_s_own_credential() {
    for args in [
        &["--no-streaming"][..],
        &["--protocol", "0.3"][..],
        &["--auth-header", "X-API-Key=weather-secret-77"][..],
    ] {
        let agent = Agent::start(args);
        let auth: &[(&str, &str)] = if args[0] == "--auth-header" {
            &[
                ("AGENT_WEATHER_AUTH_HEADER", "X-API-Key"),
                ("AGENT_WEATHER_AUTH_VALUE", "weather-secret-77"),
            ]
        } else {
            &[]
        };
        let s = stack(&agent, auth).await;
        let r = chat_stream(&s.host, KEY, &[user("@WEATHER Weather in Oslo?")], None).await;
        let d = deltas(&r.events());
        assert!(
            stage_text(&d, 1).ends_with("A2A[1]: @WEATHER Weather in Oslo?"),
            "{args:?}: {d:?}"
        );
        assert_eq!(stage_status(&d, 1), Some(json!("completed")), "{args:?}");
        let received = agent.received();
        let send = received.iter().find(|r| r["method"] == "POST").unwrap();
        let body: Value = serde_json::from_str(send["body"].as_str().unwrap()).unwrap();
        let expected = match args[0] {
            "--no-streaming" => "SendMessage",
            "--protocol" => "message/stream",
            _ => "SendStreamingMessage",
        };
        assert_eq!(body["method"], expected, "{args:?}");
        if !auth.is_empty() {
            for r in &received {
                assert_eq!(r["headers"]["x-api-key"], "weather-secret-77", "{r}");
            }
            // The credential is the agent's alone: never in the coordinator's logs.
            assert!(!s.host.logs().contains("weather-secret-77"));
            let core = s.world.requests();
            assert!(core.iter().all(|r| r.header("x-api-key").is_none()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_health_reads_the_card_and_a_dead_agent_is_left_out_of_requests() {
    let agent = Agent::start(&[]);
    let s = stack(&agent, &[("CARD_TTL_S", "0")]).await;
    let deep = common::host::get(&format!("{}/health?deep=1", s.host.url()))
        .await
        .json();
    let card = deep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "WEATHER")
        .cloned()
        .unwrap();
    assert_eq!(card["target"], json!(agent.url));
    assert_eq!(card["up"], true);
    assert!(agent
        .received()
        .iter()
        .any(|r| r["path"] == "/.well-known/agent-card.json"));
    // The agent goes away: requests go on without it, and stage 0 says so.
    let url = agent.url.clone();
    drop(agent);
    let r = chat_stream(&s.host, KEY, &[user("hello")], None).await;
    let d = deltas(&r.events());
    let stage0 = stage_text(&d, 0);
    assert!(
        stage0.starts_with("_Agent WEATHER is unavailable for this request: WEATHER (primary endpoint) could not be reached"),
        "{stage0}"
    );
    assert_eq!(d[d.len() - 2..], [json!("STOP"), json!("[DONE]")]);
    let deep = common::host::get(&format!("{}/health?deep=1", s.host.url()))
        .await
        .json();
    assert_eq!(deep["status"], "degraded");
    assert!(deep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["service"] == "WEATHER" && c["up"] == false && c["target"] == json!(url)));
}

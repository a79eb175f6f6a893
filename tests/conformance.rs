//! Conformance with the official clients: the `openai` Python client consumes the
//! BUILT component's stream (served by `wasmtime serve`, backed by the local DIAL
//! world), aidial-sdk's own merge folds the chunks, and the result must equal the
//! component's non-streaming answer (ids and `created` aside). The Python side is
//! `tests/conformance/merge_check.py`.
//!
//! Needs the component built (`cargo build --release --target wasm32-wasip2 -p
//! mas-coordinator`) and the venv:
//! `python3 -m venv .venv && .venv/bin/pip install -r tests/conformance/requirements.txt`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::path::{Path, PathBuf};

use common::host::Stack;
use serde_json::{json, Value};

const KEY: &str = "sk-conformance-PER-REQUEST-51b2";

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing. Create the conformance venv first (from {}):\n    \
         python3 -m venv .venv && .venv/bin/pip install -r tests/conformance/requirements.txt",
        python.display(),
        root.display()
    );
    python
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/merge_check.py")
}

/// Runs merge_check.py for `messages`: streamed from one fresh stack, the
/// non-streaming answer from another (so both see a world in the same state).
/// Returns the script's report.
async fn check(messages: Value) -> Value {
    let python = python();
    let streamed = Stack::start(&[]).await;
    let block = Stack::start(&[]).await;
    let output = tokio::process::Command::new(&python)
        .arg(script())
        .arg("--stream-url")
        .arg(streamed.host.url())
        .arg("--block-url")
        .arg(block.host.url())
        .arg("--api-key")
        .arg(KEY)
        .arg("--messages")
        .arg(messages.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "merge_check.py failed ({}):\n{stderr}\nstdout:\n{stdout}",
        output.status
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("merge_check.py printed no JSON report ({e}):\n{stdout}"));

    // Both requests really went through the component (path, key, api-version).
    for stack in [&streamed, &block] {
        let routing = &stack.world.requests()[0];
        assert_eq!(routing.header("api-key"), Some(KEY));
    }
    report
}

fn without_envelope(v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    assert!(o.remove("id").unwrap().as_str().is_some());
    assert!(o.remove("created").unwrap().is_u64());
    if let Some(state) = v.pointer_mut("/choices/0/message/custom_content/state") {
        without_endpoint_tag(state);
    }
    v
}

/// A state without the UMS endpoint tag: the streamed and the non-streaming
/// answers come from two worlds, whose UMS listen on other ports.
fn without_endpoint_tag(state: &mut Value) {
    if let Some(tag) = state.as_object_mut().and_then(|o| o.remove("ums_endpoint")) {
        assert_eq!(tag.as_str().map(str::len), Some(16), "{tag}");
    }
}

fn assert_conformant(report: &Value) -> &Value {
    let merged = &report["merged"];
    let block = &report["block"];
    assert_eq!(without_envelope(merged), without_envelope(block));
    assert_eq!(block["object"], "chat.completion");
    // The state as aidial-sdk folds it (its `cleanup_indices` reaches inside).
    let mut block_state = block["choices"][0]["message"]["custom_content"]["state"].clone();
    let mut sdk_state = report["sdk_state"].clone();
    without_endpoint_tag(&mut block_state);
    without_endpoint_tag(&mut sdk_state);
    assert_eq!(block_state, sdk_state);
    assert_eq!(block["choices"][0]["finish_reason"], "stop");
    let message = &block["choices"][0]["message"];
    // The typed view of the openai client saw the same answer text.
    assert_eq!(report["typed_content"], message["content"]);
    assert!(report["chunks"].as_u64().unwrap() > 10);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_and_aidial_merge_agree_on_a_gpa_answer() {
    let report = check(json!([
        {"role": "user", "content": "Search weather in Kyiv and generate a picture"}
    ]))
    .await;
    let message = assert_conformant(&report);
    let url = "files/world-bucket/images/image-1.png";
    let stages = message["custom_content"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    assert_eq!(stages[2]["name"], "web_search");
    assert_eq!(stages[3]["parent_stage_index"], 1);
    assert_eq!(
        stages[3]["attachments"],
        json!([{"type": "image/png", "title": "Generated image", "url": url}])
    );
    assert_eq!(
        message["custom_content"]["attachments"],
        json!([{"type": "image/png", "title": "image-1.png", "url": url}])
    );
    assert_eq!(message["custom_content"]["state"]["is_gpa"], true);
    // aidial-sdk drops the `index` of GPA's tool calls inside the state, and so
    // does the coordinator's non-streaming answer; the stream keeps it.
    assert_eq!(
        report["streamed_state"]["gpa_messages"]["tool_call_history"][0]["tool_calls"][0]["index"],
        0
    );
    assert_eq!(
        report["sdk_state"]["gpa_messages"]["tool_call_history"][0]["tool_calls"][0].get("index"),
        None
    );
    assert_eq!(
        message["custom_content"]["state"]["gpa_messages"]["tool_call_history"][0]["tool_calls"][0]
            .get("index"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_and_aidial_merge_agree_on_a_ums_answer() {
    let report = check(json!([
        {"role": "user", "content": "Do we have Andrej Karpathy as a user?"}
    ]))
    .await;
    let message = assert_conformant(&report);
    let mut state = message["custom_content"]["state"].clone();
    without_endpoint_tag(&mut state);
    assert_eq!(state, json!({"ums_conversation_id": "ums-conv-0001"}));
    assert_eq!(
        message["content"],
        "Based on the agent's answer: UMS[ums-conv-0001#1]: No user named Andrej Karpathy was found."
    );
    assert_eq!(report["sdk_state"], report["streamed_state"]);
}

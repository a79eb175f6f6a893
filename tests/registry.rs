//! Agents as configuration, natively against scripted fakes: a third DIAL
//! agent that exists only in the environment, routed to, mirrored, remembered
//! and kept apart from the other agents both ways; and a registry of GPA alone.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::fakes::*;
use common::flow::*;
use common::wire::{stage_close, stage_content, stage_open};
use mas_coordinator::config::Config;
use serde_json::{json, Value};

const LLM: &str = "/deployments/gpt-4o/chat/completions";
const GPA: &str = "/deployments/general-purpose-agent/chat/completions";
const RAG: &str = "/deployments/rag-agent/chat/completions";
const RAG_DESCRIPTION: &str =
    "Answers questions from the company knowledge base (policies, handbooks).";
const POLICY: &str = "What is our vacation policy?";
const WEATHER: &str = "What is the weather in Kyiv?";

fn rag_config() -> Config {
    config_with(&[
        ("AGENTS", "GPA,UMS,RAG"),
        ("AGENT_RAG_KIND", "dial"),
        ("AGENT_RAG_DEPLOYMENT", "rag-agent"),
        ("AGENT_RAG_DESCRIPTION", RAG_DESCRIPTION),
    ])
}

fn rag_answer(text: &str, turn: u64) -> Reply {
    Reply::sse(&[
        chunk(json!({"role": "assistant"})),
        chunk(
            json!({"custom_content": {"stages": [{"index": 0, "name": "retrieve", "status": null}]}}),
        ),
        chunk(
            json!({"custom_content": {"stages": [{"index": 0, "attachments": [{"index": 0, "type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}], "status": null}]}}),
        ),
        chunk(json!({"custom_content": {"stages": [{"index": 0, "status": "completed"}]}})),
        chunk(json!({"content": text})),
        chunk(
            json!({"custom_content": {"attachments": [{"index": 0, "type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}]}}),
        ),
        chunk(json!({"custom_content": {"state": {"rag_turn": turn}}})),
        stop_chunk(),
    ])
}

#[test]
fn a_third_dial_agent_works_by_configuration_alone() {
    let client = FakeClient::new()
        .on(LLM, routing_reply("RAG", None))
        .on(RAG, rag_answer("25 days a year.", 1))
        .on(LLM, llm_stream(&["You get 25 days."]));
    let ctx = context_with(rag_config(), ask(POLICY), Some("c1"));
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[4..11].to_vec(),
        vec![
            stage_open(1, "Call RAG Agent", None),
            stage_open(2, "retrieve", Some(1)),
            json!({"custom_content": {"stages": [{"index": 2, "attachments": [{"index": 0, "type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}], "status": null}]}}),
            stage_close(2, "completed"),
            stage_content(1, "25 days a year."),
            json!({"custom_content": {"attachments": [{"index": 0, "type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}]}}),
            stage_close(1, "completed"),
        ]
    );
    assert_eq!(
        state_of(&events),
        json!({"agents": {"RAG": [{"answer": "25 days a year.",
            "attachments": [{"type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}],
            "state": {"rag_turn": 1}}]}})
    );
    let reqs = client.requests();
    // Routing: its name in the schema, its description in the prompt.
    let routing = body_json(&reqs[0]);
    let schema = &routing["response_format"]["json_schema"]["schema"];
    assert_eq!(
        schema["properties"]["agent_name"]["enum"],
        json!(["GPA", "UMS", "RAG"])
    );
    let prompt = routing["messages"][0]["content"].as_str().unwrap();
    assert!(
        prompt.contains(&format!("- RAG: {RAG_DESCRIPTION}\n")),
        "{prompt}"
    );
    // The agent: through DIAL Core with the key and the conversation id.
    assert_eq!(
        reqs[1].url,
        format!("{CORE}/openai/deployments/rag-agent/chat/completions")
    );
    assert_eq!(reqs[1].header_value("api-key"), Some(KEY));
    assert_eq!(reqs[1].header_value("x-conversation-id"), Some("c1"));
    assert_eq!(body_json(&reqs[1])["model"], "rag-agent");
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[test]
fn each_agent_sees_only_its_own_earlier_turns_both_ways() {
    // Turn 1: RAG.
    let client = FakeClient::new()
        .on(LLM, routing_reply("RAG", None))
        .on(RAG, rag_answer("25 days a year.", 1))
        .on(LLM, llm_stream(&["You get 25 days."]));
    let first = [json!({"role": "user", "content": POLICY})];
    let (events, _) = run_stream(
        &context_with(
            rag_config(),
            json!({"stream": true, "messages": first}),
            None,
        ),
        &client,
    );
    let rag_turn = json!({"role": "assistant", "content": "You get 25 days.", "custom_content": {"state": state_of(&events)}});

    // Turn 2: GPA, which must not see RAG's turn.
    let mut history = vec![
        first[0].clone(),
        rag_turn.clone(),
        json!({"role": "user", "content": WEATHER}),
    ];
    let client = FakeClient::new()
        .on(LLM, routing_reply("GPA", None))
        .on(
            GPA,
            Reply::sse(&[
                chunk(json!({"content": "+5°C."})),
                chunk(json!({"custom_content": {"state": {"tool_call_history": []}}})),
                stop_chunk(),
            ]),
        )
        .on(LLM, llm_stream(&["It is +5°C."]));
    let (events, _) = run_stream(
        &context_with(
            rag_config(),
            json!({"stream": true, "messages": history}),
            None,
        ),
        &client,
    );
    assert_eq!(
        body_json(&client.requests()[1])["messages"],
        json!([{"role": "user", "content": WEATHER}]),
        "GPA never sees RAG's exchange"
    );
    history.push(json!({"role": "assistant", "content": "It is +5°C.", "custom_content": {"state": state_of(&events)}}));

    // Turn 3: RAG again, with its own turn restored and GPA's left out.
    history.push(json!({"role": "user", "content": "And the sick leave?"}));
    let client = FakeClient::new()
        .on(LLM, routing_reply("RAG", None))
        .on(RAG, rag_answer("10 days.", 2))
        .on(LLM, llm_stream(&["10 days."]));
    let (events, _) = run_stream(
        &context_with(
            rag_config(),
            json!({"stream": true, "messages": history}),
            None,
        ),
        &client,
    );
    assert_eq!(
        body_json(&client.requests()[1])["messages"],
        json!([
            {"role": "user", "content": POLICY},
            {"role": "assistant", "content": "25 days a year.", "custom_content": {
                "attachments": [{"type": "text/markdown", "title": "policy.md", "url": "files/kb/policy.md"}],
                "state": {"rag_turn": 1}}},
            {"role": "user", "content": "And the sick leave?"},
        ])
    );
    assert_eq!(
        state_of(&events)["agents"]["RAG"][0]["state"],
        json!({"rag_turn": 2})
    );
}

#[test]
fn a_registry_of_gpa_alone_sends_everything_to_gpa() {
    let config = config_with(&[("AGENTS", "GPA")]);
    let client = FakeClient::new()
        .on(LLM, routing_reply("UMS", None))
        .on(
            GPA,
            Reply::sse(&[
                chunk(json!({"content": "No user tools here."})),
                stop_chunk(),
            ]),
        )
        .on(LLM, llm_stream(&["ok"]));
    let ctx = context_with(config, ask("Do we have user Ada?"), None);
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[2],
        stage_content(
            0,
            &format!(
                "_Routing fallback: the routing answer named an unknown agent, so the General Purpose Agent (GPA) was chosen._\n\n{}",
                decision_block("GPA", Value::Null)
            )
        )
    );
    assert_eq!(d[4], stage_open(1, "Call GPA Agent", None));
    let routing = body_json(&client.requests()[0]);
    assert_eq!(
        routing["response_format"]["json_schema"]["schema"]["properties"]["agent_name"]["enum"],
        json!(["GPA"])
    );
    assert!(!routing["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("UMS"));
    assert!(client.requests().iter().all(|r| !r.url.starts_with(UMS)));
}

#[test]
fn a_ums_kind_agent_of_the_registry_keeps_its_conversation_under_its_own_key() {
    let config = config_with(&[
        ("AGENTS", "GPA,UMS,CRM"),
        ("AGENT_CRM_KIND", "ums"),
        ("AGENT_CRM_ENDPOINT", "http://crm.test"),
        ("AGENT_CRM_DESCRIPTION", "Customer records."),
    ]);
    let client = FakeClient::new()
        .on(LLM, routing_reply("CRM", None))
        .on(
            "crm.test/conversations",
            Reply::json(200, json!({"id": "crm-1"})),
        )
        .on(
            "crm.test/conversations/crm-1/chat",
            ums_stream("crm-1", &["Found."]),
        )
        .on(LLM, llm_stream(&["ok"]));
    let ctx = context_with(config, ask("Find ACME"), None);
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[5],
        stage_content(1, "_Created new CRM conversation: crm-1_\n\n")
    );
    assert_eq!(
        state_of(&events),
        json!({"agents": {"CRM": {"conversation_id": "crm-1", "endpoint": mas_coordinator::memory::endpoint_tag("http://crm.test")}}})
    );
    assert!(client.requests()[1..3]
        .iter()
        .all(|r| r.header_value("api-key").is_none()));
}

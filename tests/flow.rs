//! The whole flow natively against in-process fakes on a virtual clock: exact
//! chunk sequences and exact upstream requests for the seed's three examples,
//! non-streaming mode, and failures before and after the first byte.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::fakes::*;
use common::flow::*;
use common::wire::{content, stage_close, stage_content, stage_open};
use mas_coordinator::app::{stream_response, RequestContext};
use mas_coordinator::flow::emitter::{ClientGone, Emitter, Transport};
use mas_coordinator::memory::endpoint_tag;
use mas_coordinator::wire::response::SseEncoder;
use serde_json::{json, Value};

const KARPATHY: &str = "Do we have Andrej Karpathy as a user?";
const WEATHER: &str = "Search weather in Kyiv and generate a picture";

fn ums_state(id: &str) -> Value {
    json!({"custom_content": {"state": {"ums_conversation_id": id, "ums_endpoint": endpoint_tag(UMS)}}})
}

fn seed1_client() -> FakeClient {
    FakeClient::new()
        .on("/deployments/gpt-4o/chat/completions", routing_reply("UMS", None))
        .on("/conversations", Reply::json(200, json!({"id": "conv-1", "title": KARPATHY, "messages": [], "created_at": "t", "updated_at": "t"})))
        .on("/conversations/conv-1/chat", ums_stream("conv-1", &["No user ", "named Andrej Karpathy ", "was found."]))
        .on("/deployments/gpt-4o/chat/completions", llm_stream(&["Andrej Karpathy ", "is not a user."]))
}

#[test]
fn seed1_ums_query_streams_exact_chunks() {
    let ctx = context(ask(KARPATHY), None);
    let client = seed1_client();
    let (events, writes) = run_stream(&ctx, &client);
    assert_eq!(
        deltas(&events),
        vec![
            json!({"role": "assistant"}),
            stage_open(0, "Coordination Request", None),
            stage_content(0, &decision_block("UMS", Value::Null)),
            stage_close(0, "completed"),
            stage_open(1, "Call UMS Agent", None),
            stage_content(1, "_Created new UMS conversation: conv-1_\n\n"),
            stage_content(1, "No user "),
            stage_content(1, "named Andrej Karpathy "),
            stage_content(1, "was found."),
            stage_close(1, "completed"),
            ums_state("conv-1"),
            content("Andrej Karpathy "),
            content("is not a user."),
            json!("STOP"),
            json!("[DONE]"),
        ]
    );
    assert!(
        writes >= 5,
        "events are flushed as they happen, got {writes} writes"
    );

    let reqs = client.requests();
    assert_eq!(reqs.len(), 4);
    // 1. routing: per-request key, structured output, history without custom_content.
    assert_eq!(
        reqs[0].url,
        format!("{CORE}/openai/deployments/gpt-4o/chat/completions")
    );
    assert_eq!(reqs[0].header_value("api-key"), Some(KEY));
    let routing = body_json(&reqs[0]);
    assert_eq!(routing["stream"], false);
    assert_eq!(routing["model"], "gpt-4o");
    assert_eq!(routing["response_format"]["type"], "json_schema");
    assert_eq!(
        routing["response_format"]["json_schema"]["schema"],
        mas_coordinator::flow::routing::decision_schema(&config().registry)
    );
    assert_eq!(routing["messages"][0]["role"], "system");
    assert_eq!(
        routing["messages"][1],
        json!({"role": "user", "content": KARPATHY})
    );
    // 2. UMS create, 3. UMS chat: never the DIAL key.
    assert_eq!(reqs[1].url, format!("{UMS}/conversations"));
    assert_eq!(body_json(&reqs[1]), json!({"title": KARPATHY}));
    assert_eq!(reqs[2].url, format!("{UMS}/conversations/conv-1/chat"));
    assert_eq!(
        body_json(&reqs[2]),
        json!({"message": {"role": "user", "content": KARPATHY}, "stream": true})
    );
    for r in &reqs[1..3] {
        assert_eq!(r.header_value("api-key"), None);
        assert_eq!(r.header_value("authorization"), None);
        assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
    }
    // 4. synthesis: streaming, CONTEXT template.
    let synth = body_json(&reqs[3]);
    assert_eq!(synth["stream"], true);
    assert_eq!(reqs[3].header_value("api-key"), Some(KEY));
    assert_eq!(
        synth["messages"][1],
        json!({"role": "user", "content": format!("## CONTEXT:\nNo user named Andrej Karpathy was found.\n---\n## USER_REQUEST:\n{KARPATHY}")})
    );
}

#[test]
fn the_last_chunk_carries_the_usage_of_every_call() {
    let ctx = context(ask(KARPATHY), None);
    let client = seed1_client();
    let (events, _) = run_stream(&ctx, &client);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    // Routing 10/5, synthesis 1/1, both gpt-4o; UMS reports none.
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17})
    );
    assert_eq!(
        last["statistics"],
        json!({"usage_per_model": [{"index": 0, "model": "gpt-4o", "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}]})
    );
}

fn gpa_events() -> Vec<Value> {
    vec![
        chunk(json!({"role": "assistant"})),
        chunk(json!({"content": "Searching. "})),
        chunk(
            json!({"custom_content": {"stages": [{"index": 0, "name": "web_search", "status": null}]}}),
        ),
        chunk(
            json!({"custom_content": {"stages": [{"index": 0, "content": "Kyiv: +5°C", "status": null}]}}),
        ),
        chunk(json!({"custom_content": {"stages": [{"index": 0, "status": "completed"}]}})),
        chunk(
            json!({"custom_content": {"stages": [{"index": 1, "name": "image_generation_tool", "status": null}]}}),
        ),
        chunk(
            json!({"custom_content": {"stages": [{"index": 1, "attachments": [{"index": 0, "type": "image/png", "title": "Generated image", "url": "files/b/img.png"}], "status": null}]}}),
        ),
        chunk(json!({"content": "\n\r![image](files/b/img.png)\n\r"})),
        chunk(json!({"custom_content": {"stages": [{"index": 1, "status": "completed"}]}})),
        chunk(
            json!({"custom_content": {"attachments": [{"index": 0, "type": "image/png", "title": "img.png", "url": "files/b/img.png"}]}}),
        ),
        chunk(
            json!({"custom_content": {"state": {"tool_call_history": [{"role": "assistant", "tool_calls": []}]}}}),
        ),
        stop_chunk_with(7, 3),
    ]
}

fn seed2_client() -> FakeClient {
    FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&gpa_events()),
        )
        .on(
            "/deployments/gpt-4o/chat/completions",
            llm_stream(&["It is +5°C in Kyiv; ", "here is the picture."]),
        )
}

const GPA_TEXT: &str = "Searching. \n\r![image](files/b/img.png)\n\r";

#[test]
fn seed2_gpa_stages_are_mirrored_with_attachments_and_state() {
    let ctx = context(ask(WEATHER), Some("conv%2F42"));
    let client = seed2_client();
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        deltas(&events),
        vec![
            json!({"role": "assistant"}),
            stage_open(0, "Coordination Request", None),
            stage_content(0, &decision_block("GPA", Value::Null)),
            stage_close(0, "completed"),
            stage_open(1, "Call GPA Agent", None),
            stage_content(1, "Searching. "),
            stage_open(2, "web_search", Some(1)),
            stage_content(2, "Kyiv: +5°C"),
            stage_close(2, "completed"),
            stage_open(3, "image_generation_tool", Some(1)),
            json!({"custom_content": {"stages": [{"index": 3, "attachments": [{"index": 0, "type": "image/png", "title": "Generated image", "url": "files/b/img.png"}], "status": null}]}}),
            stage_content(1, "\n\r![image](files/b/img.png)\n\r"),
            stage_close(3, "completed"),
            json!({"custom_content": {"attachments": [{"index": 0, "type": "image/png", "title": "img.png", "url": "files/b/img.png"}]}}),
            stage_close(1, "completed"),
            json!({"custom_content": {"state": {
                "is_gpa": true,
                "gpa_messages": {"tool_call_history": [{"role": "assistant", "tool_calls": []}]},
                "agents": {"GPA": [{"answer": GPA_TEXT, "attachments": [{"type": "image/png", "title": "img.png", "url": "files/b/img.png"}]}]}
            }}}),
            content("It is +5°C in Kyiv; "),
            content("here is the picture."),
            json!("STOP"),
            json!("[DONE]"),
        ]
    );
    let reqs = client.requests();
    let gpa = &reqs[1];
    assert_eq!(
        gpa.url,
        format!("{CORE}/openai/deployments/general-purpose-agent/chat/completions")
    );
    assert_eq!(gpa.header_value("api-key"), Some(KEY));
    assert_eq!(gpa.header_value("x-conversation-id"), Some("conv%2F42"));
    assert_eq!(
        body_json(gpa),
        json!({"messages": [{"role": "user", "content": WEATHER}], "model": "general-purpose-agent", "stream": true})
    );
    let synth = body_json(&reqs[2]);
    assert_eq!(
        synth["messages"][1]["content"],
        format!("## CONTEXT:\n{GPA_TEXT}\n---\n## USER_REQUEST:\n{WEATHER}")
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        last["statistics"]["usage_per_model"],
        json!([
            {"index": 0, "model": "gpt-4o", "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
            {"index": 1, "model": "general-purpose-agent", "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        ])
    );
}

#[test]
fn gpa_works_without_conversation_id_header() {
    let ctx = context(ask(WEATHER), None);
    let client = seed2_client();
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| !e.contains("\"error\"")));
    assert_eq!(client.requests()[1].header_value("x-conversation-id"), None);
}

/// Seed example 3: four turns as DIAL Chat sends them (assistant messages carry
/// only their state), written by the Python reference.
fn four_turn_history(turn: usize) -> Vec<Value> {
    let all = [
        json!({"role": "user", "content": KARPATHY}),
        json!({"role": "assistant", "content": "No, he is not a user.", "custom_content": {"state": {"ums_conversation_id": "conv-1"}}}),
        json!({"role": "user", "content": WEATHER}),
        json!({"role": "assistant", "content": "It is +5°C; here is the picture.", "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": [
            {"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "web_search", "arguments": "{}"}}]},
            {"role": "tool", "content": "Kyiv: +5°C", "tool_call_id": "call_1"}]}}}}),
        json!({"role": "user", "content": "Add Andrej Karpathy as a user"}),
        json!({"role": "assistant", "content": "Added.", "custom_content": {"state": {"ums_conversation_id": "conv-1"}}}),
        json!({"role": "user", "content": "Make the picture a night scene", "custom_content": {"attachments": [{"type": "image/png", "url": "files/b/img.png"}]}}),
    ];
    all[..turn * 2 - 1].to_vec()
}

#[test]
fn seed3_ums_turn_reuses_the_stored_conversation() {
    let ctx = context(
        json!({"stream": true, "messages": four_turn_history(3)}),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("UMS", None),
        )
        .on(
            "/conversations/conv-1/chat",
            ums_stream("conv-1", &["Added ", "Andrej Karpathy."]),
        )
        .on(
            "/deployments/gpt-4o/chat/completions",
            llm_stream(&["Done."]),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_content(1, "Added "));
    assert_eq!(d[8], ums_state("conv-1"));
    let reqs = client.requests();
    let urls: Vec<&str> = reqs.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        vec![
            "http://core.test/openai/deployments/gpt-4o/chat/completions",
            "http://ums.test/conversations/conv-1/chat",
            "http://core.test/openai/deployments/gpt-4o/chat/completions",
        ],
        "no new conversation is created"
    );
    // Routing sees the whole history, without custom_content.
    let routing = body_json(&reqs[0]);
    let sent: Vec<Value> = routing["messages"].as_array().unwrap()[1..].to_vec();
    let expected: Vec<Value> = four_turn_history(3)
        .into_iter()
        .map(|mut m| {
            m.as_object_mut().unwrap().remove("custom_content");
            m
        })
        .collect();
    assert_eq!(sent, expected);
}

#[test]
fn seed3_gpa_turn_sees_only_its_own_turns_with_state_restored() {
    let ctx = context(
        json!({"stream": true, "messages": four_turn_history(4)}),
        Some("chat-7"),
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", Some("Keep the same city.")),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[
                chunk(json!({"role": "assistant"})),
                chunk(json!({"content": "Night picture."})),
                chunk(json!({"custom_content": {"state": {"tool_call_history": []}}})),
                stop_chunk(),
            ]),
        )
        .on(
            "/deployments/gpt-4o/chat/completions",
            llm_stream(&["Here it is."]),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let gpa = body_json(&client.requests()[1]);
    assert_eq!(
        gpa["messages"],
        json!([
            {"role": "user", "content": WEATHER},
            {"role": "assistant", "content": "It is +5°C; here is the picture.",
             "custom_content": {"state": four_turn_history(4)[3]["custom_content"]["state"]["gpa_messages"]}},
            {"role": "user", "content": "Make the picture a night scene\n\nKeep the same city.",
             "custom_content": {"attachments": [{"type": "image/png", "url": "files/b/img.png"}]}},
        ])
    );
    let d = deltas(&events);
    assert!(d.contains(&json!({"custom_content": {"state": {
        "is_gpa": true, "gpa_messages": {"tool_call_history": []},
        "agents": {"GPA": [{"asked": "Make the picture a night scene\n\nKeep the same city.", "answer": "Night picture."}]}
    }}})));
    assert!(d.contains(&stage_content(
        0,
        &decision_block("GPA", json!("Keep the same city."))
    )));
}

#[test]
fn an_earlier_gpa_turn_comes_back_with_its_own_answer_and_attachments() {
    // What this coordinator wrote on turn 2 of seed 3 (see the GPA test above).
    let history = json!([
        {"role": "user", "content": WEATHER},
        {"role": "assistant", "content": "The synthesised answer, mixing everything.",
         "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": []},
            "agents": {"GPA": [{"answer": GPA_TEXT, "attachments": [{"type": "image/png", "title": "img.png", "url": "files/b/img.png"}]}]}}}},
        {"role": "user", "content": "Make the image brighter"},
    ]);
    let ctx = context(json!({"stream": true, "messages": history}), None);
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[chunk(json!({"content": "Brighter."})), stop_chunk()]),
        )
        .on("/deployments/gpt-4o/chat/completions", llm_stream(&["ok"]));
    run_stream(&ctx, &client);
    assert_eq!(
        body_json(&client.requests()[1])["messages"],
        json!([
            {"role": "user", "content": WEATHER},
            {"role": "assistant", "content": GPA_TEXT, "custom_content": {
                "attachments": [{"type": "image/png", "title": "img.png", "url": "files/b/img.png"}],
                "state": {"tool_call_history": []}}},
            {"role": "user", "content": "Make the image brighter"},
        ])
    );
}

#[test]
fn non_streaming_returns_the_merged_message() {
    let ctx = context(
        json!({"messages": [{"role": "user", "content": KARPATHY}]}),
        None,
    );
    let client = seed1_client();
    let merged = client.run(collect(&ctx, &client, "resp-9", 5)).unwrap();
    assert_eq!(
        merged,
        json!({
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant",
                "custom_content": {
                    "stages": [
                        {"name": "Coordination Request", "content": decision_block("UMS", Value::Null), "status": "completed"},
                        {"name": "Call UMS Agent", "content": "_Created new UMS conversation: conv-1_\n\nNo user named Andrej Karpathy was found.", "status": "completed"}
                    ],
                    "state": {"ums_conversation_id": "conv-1", "ums_endpoint": endpoint_tag(UMS)}
                },
                "content": "Andrej Karpathy is not a user."
            }}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
            "statistics": {"usage_per_model": [{"index": 0, "model": "gpt-4o", "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}]},
            "id": "resp-9", "created": 5, "object": "chat.completion"
        })
    );
}

#[test]
fn gpa_error_mid_stream_fails_open_stages_and_keeps_what_was_sent() {
    let ctx = context(ask(WEATHER), None);
    let client = FakeClient::new()
        .on("/deployments/gpt-4o/chat/completions", routing_reply("GPA", None))
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[
                chunk(json!({"role": "assistant"})),
                chunk(json!({"content": "Partial "})),
                chunk(json!({"custom_content": {"stages": [{"index": 0, "name": "web_search", "status": null}]}})),
                json!({"error": {"message": "search tool crashed with key sk-per-request-123", "code": "500"}}),
            ]),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[5..].to_vec(),
        vec![
            stage_content(1, "Partial "),
            stage_open(2, "web_search", Some(1)),
            stage_close(2, "failed"),
            stage_close(1, "failed"),
            json!("STOP"),
            json!({"error": {
                "message": "GPA (general-purpose-agent) reported an error: search tool crashed with key ***",
                "type": "runtime_error", "code": "500",
                "display_message": "The General Purpose Agent reported an error. Please try again in a moment."}}),
            json!("[DONE]"),
        ]
    );
    assert!(
        !events.concat().contains(KEY),
        "the key never reaches the client"
    );
    assert_eq!(
        client.requests().len(),
        2,
        "no synthesis after a failed agent"
    );
}

#[test]
fn gpa_connection_dropped_mid_stream_is_a_truncation_error() {
    let ctx = context(ask(WEATHER), None);
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::Http(
                200,
                vec![
                    Ok(format!("data: {}\n\n", chunk(json!({"content": "Half"}))).into_bytes()),
                    Err(mas_coordinator::client::TransportError::other(
                        "connection reset",
                    )),
                ],
            ),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        error_of(&events)["message"],
        "GPA (general-purpose-agent) stopped before finishing its answer: connection reset"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("\"content\":\"Half\""))
            .count(),
        1,
        "nothing duplicated"
    );
}

#[test]
fn llm_down_before_routing_fails_stage_zero_in_stream_and_is_500_without_stream() {
    let ctx = context(ask("hi"), None);
    let client = FakeClient::new().on("/deployments/gpt-4o/chat/completions", Reply::Refused);
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        deltas(&events),
        vec![
            json!({"role": "assistant"}),
            stage_open(0, "Coordination Request", None),
            stage_close(0, "failed"),
            json!("STOP"),
            json!({"error": {
                "message": "LLM (gpt-4o) could not be reached: ConnectionRefused",
                "type": "runtime_error", "code": "500",
                "display_message": "The coordinator's language model is unreachable right now. Please try again in a moment."}}),
            json!("[DONE]"),
        ]
    );
    let ctx = context(
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        None,
    );
    let client = FakeClient::new().on("/deployments/gpt-4o/chat/completions", Reply::Refused);
    let err = client.run(collect(&ctx, &client, "x", 1)).unwrap_err();
    assert_eq!(err.status(), 500);
}

#[test]
fn unusable_routing_answer_falls_back_to_gpa_and_says_so() {
    let ctx = context(ask("hi"), None);
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            completion(r#"{"agent_name":"XYZ"}"#),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse(&[chunk(json!({"content": "ok"}))]),
        )
        .on("/deployments/gpt-4o/chat/completions", llm_stream(&["ok"]));
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
}

#[test]
fn ums_lost_conversation_is_recreated_once_and_said() {
    let ctx = context(
        json!({"stream": true, "messages": four_turn_history(3)}),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("UMS", None),
        )
        .on(
            "/conversations/conv-1/chat",
            Reply::Http(500, vec![Ok(b"Internal Server Error".to_vec())]),
        )
        .on(
            "/conversations/conv-1",
            Reply::json(404, json!({"detail": "Conversation not found"})),
        )
        .on("/conversations", Reply::json(200, json!({"id": "conv-2"})))
        .on(
            "/conversations/conv-2/chat",
            ums_stream("conv-2", &["Added."]),
        )
        .on(
            "/deployments/gpt-4o/chat/completions",
            llm_stream(&["Done."]),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[5],
        stage_content(
            1,
            "_UMS no longer knows conversation conv-1; created new UMS conversation: conv-2_\n\n"
        )
    );
    assert_eq!(d[6], stage_content(1, "Added."));
    assert_eq!(d[8], ums_state("conv-2"));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let paths: Vec<(bool, String)> = client
        .requests()
        .iter()
        .map(|r| (is_post(r), r.url.clone()))
        .collect();
    assert_eq!(
        paths[1..5].to_vec(),
        vec![
            (true, format!("{UMS}/conversations/conv-1/chat")),
            (false, format!("{UMS}/conversations/conv-1")),
            (true, format!("{UMS}/conversations")),
            (true, format!("{UMS}/conversations/conv-2/chat")),
        ]
    );
}

#[test]
fn ums_500_on_a_known_conversation_is_an_error_not_a_new_conversation() {
    let ctx = context(
        json!({"stream": true, "messages": four_turn_history(3)}),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("UMS", None),
        )
        .on(
            "/conversations/conv-1/chat",
            Reply::Http(500, vec![Ok(b"Internal Server Error".to_vec())]),
        )
        .on(
            "/conversations/conv-1",
            Reply::json(200, json!({"id": "conv-1"})),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        error_of(&events)["message"],
        "UMS (primary endpoint) answered HTTP 500"
    );
    // What UMS said is the operator's: in the failed call's log line.
    let failed: Vec<(Value, Value)> = client
        .logs()
        .into_iter()
        .filter(|l| l["event"] == "upstream_call")
        .map(|l| (l["path"].clone(), l["detail"].clone()))
        .collect();
    assert_eq!(
        failed,
        [(
            json!("/conversations/conv-1/chat"),
            json!("Internal Server Error")
        )]
    );
    assert!(
        events.iter().all(|e| !e.contains("\"state\"")),
        "no state for a failed UMS turn"
    );
    assert!(
        events.iter().all(|e| !e.contains("ums.test")),
        "no internal URL reaches the user"
    );
}

#[test]
fn tampered_conversation_id_is_ignored_and_never_reaches_a_path() {
    let ctx = context(
        json!({"stream": true, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "custom_content": {"state": {"ums_conversation_id": "../../admin?x=1"}}},
            {"role": "user", "content": KARPATHY}]}),
        None,
    );
    let client = seed1_client();
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(events.last().unwrap(), "[DONE]");
    for r in client.requests() {
        assert!(!r.url.contains("admin"), "{}", r.url);
    }
}

#[test]
fn synthesis_stream_without_done_is_an_error_after_the_answer_so_far() {
    let ctx = context(ask(KARPATHY), None);
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("UMS", None),
        )
        .on("/conversations", Reply::json(200, json!({"id": "conv-1"})))
        .on("/conversations/conv-1/chat", ums_stream("conv-1", &["x"]))
        .on(
            "/deployments/gpt-4o/chat/completions",
            Reply::Http(
                200,
                vec![Ok(format!(
                    "data: {}\n\n",
                    chunk(json!({"content": "Partial answer"}))
                )
                .into_bytes())],
            ),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    let n = d.len();
    assert_eq!(d[n - 4], content("Partial answer"));
    assert_eq!(d[n - 3], json!("STOP"));
    assert_eq!(
        d[n - 2]["error"]["message"],
        "LLM (gpt-4o) stopped before finishing its answer: the stream ended without [DONE]"
    );
    assert_eq!(d[n - 1], json!("[DONE]"));
}

// ---------------------------------------------------------------------------
// Production behaviour: failover, timeouts on the virtual clock, tracing, logs.

fn gpa_ok() -> Reply {
    Reply::sse(&[
        chunk(json!({"role": "assistant"})),
        chunk(json!({"content": "ok"})),
        stop_chunk(),
    ])
}

#[test]
fn gpa_fails_over_to_the_backup_on_503_and_says_so() {
    let ctx = context_with(
        config_with(&[("GPA_BACKUP_DEPLOYMENTS", "gpa-backup")]),
        ask(WEATHER),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::json(503, json!({"error": {"message": "overloaded"}})),
        )
        .on("/deployments/gpa-backup/chat/completions", gpa_ok())
        .on(
            "/deployments/gpt-4o/chat/completions",
            llm_stream(&["fine"]),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(
        d[5],
        stage_content(
            1,
            "_general-purpose-agent was unavailable (HTTP 503); answered by gpa-backup._\n\n"
        )
    );
    assert_eq!(d[6], stage_content(1, "ok"));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let reqs = client.requests();
    assert_eq!(
        reqs[1].url,
        format!("{CORE}/openai/deployments/general-purpose-agent/chat/completions")
    );
    assert_eq!(
        reqs[2].url,
        format!("{CORE}/openai/deployments/gpa-backup/chat/completions")
    );
    assert_eq!(body_json(&reqs[2])["model"], "gpa-backup");
}

#[test]
fn a_client_error_from_gpa_is_not_failed_over() {
    let ctx = context_with(
        config_with(&[("GPA_BACKUP_DEPLOYMENTS", "gpa-backup")]),
        ask(WEATHER),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::json(
                404,
                json!({"error": {"message": "Deployment not found", "code": "DeploymentNotFound"}}),
            ),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        error_of(&events)["message"],
        "GPA (general-purpose-agent) answered HTTP 404"
    );
    assert_eq!(client.requests().len(), 2, "no call to the backup");
}

#[test]
fn after_the_first_chunk_there_is_no_replay_on_the_backup() {
    let ctx = context_with(
        config_with(&[("GPA_BACKUP_DEPLOYMENTS", "gpa-backup")]),
        ask(WEATHER),
        None,
    );
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::Http(
                200,
                vec![
                    Ok(
                        format!("data: {}\n\n", chunk(json!({"content": "Half an answer"})))
                            .into_bytes(),
                    ),
                    Err(mas_coordinator::client::TransportError::other(
                        "connection reset",
                    )),
                ],
            ),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("Half an answer"))
            .count(),
        1
    );
    assert_eq!(
        error_of(&events)["message"],
        "GPA (general-purpose-agent) stopped before finishing its answer: connection reset"
    );
    assert_eq!(
        client.requests().len(),
        2,
        "the backup is not called after a chunk was forwarded"
    );
}

#[test]
fn gpa_that_never_answers_times_out_after_the_first_byte_timeout() {
    let ctx = context(ask(WEATHER), None);
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::Hang,
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_close(1, "failed"));
    assert_eq!(
        error_of(&events),
        json!({"message": "GPA (general-purpose-agent) did not answer in time: no response within 30000 ms",
               "type": "runtime_error", "code": "500",
               "display_message": "The General Purpose Agent did not answer in time. Please try again in a moment."})
    );
    assert_eq!(
        client.clock.now(),
        30_000,
        "the timeout took 30 virtual seconds"
    );
}

#[test]
fn gpa_that_goes_silent_mid_stream_hits_the_idle_timeout() {
    let ctx = context(ask(WEATHER), None);
    let client = FakeClient::new()
        .on("/deployments/gpt-4o/chat/completions", routing_reply("GPA", None))
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::HangAfter(200, vec![Ok(format!("data: {}\n\n", chunk(json!({"custom_content": {"stages": [{"index": 0, "name": "python", "status": null}]}}))).into_bytes())]),
        );
    let (events, _) = run_stream(&ctx, &client);
    let d = deltas(&events);
    assert_eq!(d[5], stage_open(2, "python", Some(1)));
    assert_eq!(d[6], stage_close(2, "failed"));
    assert_eq!(d[7], stage_close(1, "failed"));
    assert_eq!(
        error_of(&events)["message"],
        "GPA (general-purpose-agent) did not answer in time: no data for 120000 ms"
    );
    assert_eq!(client.clock.now(), 120_000);
}

/// A call's body has one timer for its idle and total deadlines: a chunk
/// moves the idle deadline on without arming a new one, so a long stream of
/// quick chunks arms no more timers than a short one (arming one costs host
/// calls in the component).
#[test]
fn one_timer_serves_a_whole_stream_of_quick_chunks() {
    let ctx = context(ask(WEATHER), None);
    let run = |events: usize| {
        let pieces: Vec<Value> = (0..events)
            .map(|i| chunk(json!({"content": format!("{i} ")})))
            .collect();
        let client = FakeClient::new()
            .on(
                "/deployments/gpt-4o/chat/completions",
                routing_reply("GPA", None),
            )
            .on(
                "/deployments/general-purpose-agent/chat/completions",
                Reply::sse_timed(10, &pieces),
            )
            .on(
                "/deployments/gpt-4o/chat/completions",
                llm_stream(&["It is +5°C in Kyiv."]),
            );
        let (events, _) = run_stream(&ctx, &client);
        assert!(error_of(&events).is_null(), "{events:?}");
        client.sleeps.get()
    };
    assert_eq!(run(40), run(1));
}

#[test]
fn a_slow_but_steady_stream_is_cut_at_the_total_deadline() {
    let ctx = context_with(
        config_with(&[
            ("UPSTREAM_IDLE_TIMEOUT_MS", "1000"),
            ("UPSTREAM_TOTAL_TIMEOUT_MS", "5000"),
        ]),
        ask(WEATHER),
        None,
    );
    let pieces: Vec<Value> = (0..20)
        .map(|i| chunk(json!({"content": format!("{i} ")})))
        .collect();
    let client = FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("GPA", None),
        )
        .on(
            "/deployments/general-purpose-agent/chat/completions",
            Reply::sse_timed(900, &pieces),
        );
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(
        error_of(&events)["message"],
        "GPA (general-purpose-agent) did not answer in time: the call exceeded its total time"
    );
    assert_eq!(client.clock.now(), 5_000);
    let streamed = deltas(&events)
        .iter()
        .filter(|d| {
            d["custom_content"]["stages"][0]["index"] == 1
                && d["custom_content"]["stages"][0]["content"].is_string()
        })
        .count();
    assert_eq!(
        streamed, 5,
        "pieces at 0.9, 1.8, 2.7, 3.6 and 4.5 s arrived before the deadline"
    );
}

#[test]
fn every_upstream_call_carries_trace_headers_with_its_own_span() {
    let ctx = context(ask(KARPATHY), None);
    let client = seed1_client();
    run_stream(&ctx, &client);
    let mut spans = std::collections::BTreeSet::new();
    for r in client.requests() {
        assert_eq!(r.header_value("x-trace-id"), Some("trace-abc"));
        let span = r.header_value("x-parent-span-id").unwrap().to_owned();
        assert_eq!(span.len(), 16);
        assert_eq!(
            r.header_value("traceparent").unwrap(),
            format!("00-{}-{span}-01", "a".repeat(32))
        );
        spans.insert(span);
    }
    assert_eq!(spans.len(), 4, "a new span per call");
}

#[test]
fn by_default_one_log_line_per_request_and_none_per_successful_call() {
    let ctx = context(ask(KARPATHY), None);
    let client = seed1_client();
    run_stream(&ctx, &client);
    let logs = client.logs();
    let events: Vec<&str> = logs.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["config", "request"]);
}

#[test]
fn at_debug_one_log_line_per_upstream_call_and_per_request_without_secrets_or_content() {
    let ctx = context_with(config_with(&[("LOG_LEVEL", "debug")]), ask(KARPATHY), None);
    let client = seed1_client();
    run_stream(&ctx, &client);
    let logs = client.logs();
    let calls: Vec<&Value> = logs
        .iter()
        .filter(|l| l["event"] == "upstream_call")
        .collect();
    let requests: Vec<&Value> = logs.iter().filter(|l| l["event"] == "request").collect();
    assert_eq!(calls.len(), 4);
    assert_eq!(requests.len(), 1);
    let targets: Vec<(&str, &str, &str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c["agent"].as_str().unwrap(),
                c["target"].as_str().unwrap(),
                c["path"].as_str().unwrap(),
                c["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            (
                "LLM",
                "gpt-4o",
                "/openai/deployments/gpt-4o/chat/completions",
                "ok"
            ),
            ("UMS", UMS, "/conversations", "ok"),
            ("UMS", UMS, "/conversations/conv-1/chat", "ok"),
            (
                "LLM",
                "gpt-4o",
                "/openai/deployments/gpt-4o/chat/completions",
                "ok"
            ),
        ]
    );
    for c in &calls {
        assert_eq!(c["level"], "debug");
        assert_eq!(c["trace_id"], "trace-abc");
        assert_eq!(c["parent_span_id"], "1".repeat(16));
        assert_eq!(c["status"], 200);
    }
    assert_eq!(requests[0]["agent"], "UMS");
    assert_eq!(requests[0]["agents"], json!(["UMS"]));
    assert_eq!(requests[0]["outcome"], "ok");
    assert_eq!(requests[0]["mode"], "stream");
    let all = client.logs.borrow().join("\n");
    assert!(!all.contains(KEY), "the key never reaches the logs");
    assert!(!all.contains("Karpathy"), "message content is not logged");
}

#[test]
fn without_a_secret_a_warning_is_logged_once_per_instance() {
    let client = seed1_client()
        .on(
            "/deployments/gpt-4o/chat/completions",
            routing_reply("UMS", None),
        )
        .on("/conversations", Reply::json(200, json!({"id": "conv-1"})))
        .on("/conversations/conv-1/chat", ums_stream("conv-1", &["x"]))
        .on("/deployments/gpt-4o/chat/completions", llm_stream(&["y"]));
    let ctx = context(ask(KARPATHY), None);
    run_stream(&ctx, &client);
    let warnings = |c: &FakeClient| c.logs().iter().filter(|l| l["event"] == "config").count();
    assert_eq!(warnings(&client), 1);
    let _ = client.run(collect(&ctx, &client, "x", 1));
    assert_eq!(warnings(&client), 1, "once per instance");
}

/// GPA's body is written from borrowed parts of the request; it must be the
/// very bytes of the owned history (`agent_history`), for every kind of
/// earlier turn: a state of the Python reference, a turn with GPA's own
/// answer, attachments and state, a second exchange in one turn with what GPA
/// was asked, a user message with attachments, and a task on the current one.
#[test]
fn the_borrowed_gpa_history_writes_the_same_bytes_as_the_owned_one() {
    use mas_coordinator::agents::dial::{agent_history, agent_messages};
    use mas_coordinator::wire::request::ChatBody;
    let tool = json!({"tool_call_history": [
        {"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "web_search", "arguments": "{\"query\":\"kyiv\"}"}}]},
        {"role": "tool", "content": "Kyiv: +5°C \"light\" rain", "tool_call_id": "call_1", "name": "web_search"},
    ]});
    let png = json!({"type": "image/png", "title": "a", "url": "files/a.png"});
    let body = json!({"stream": true, "messages": [
        {"role": "user", "content": "first", "custom_content": {"attachments": [png]}},
        {"role": "assistant", "content": "synthesised one",
         "custom_content": {"state": {"is_gpa": true, "gpa_messages": tool}}},
        {"role": "user", "content": [{"type": "text", "text": "second"}], "name": "u"},
        {"role": "assistant", "content": "synthesised two", "custom_content": {"state": {
            "is_gpa": true,
            "gpa_messages": tool,
            "agents": {"GPA": [
                {"answer": "GPA's own answer", "attachments": [png]},
                {"asked": "second\n\nAlso this", "answer": "more", "state": {"tool_call_history": []}},
            ]},
        }}},
        {"role": "user", "content": "third"},
    ]});
    let ctx = context(body, Some("conv-1"));
    let gpa = ctx.config.registry.get("GPA").unwrap().clone();
    let borrowed = agent_messages(&ctx, &gpa, Some("Be brief."));
    let owned = agent_history(&ctx, &gpa, Some("Be brief."));
    assert_eq!(borrowed.len(), 7, "{owned:?}");
    assert_eq!(
        String::from_utf8(serde_json::to_vec(&borrowed).unwrap()).unwrap(),
        String::from_utf8(serde_json::to_vec(&owned).unwrap()).unwrap()
    );
    // The call's body is written by the coordinator's own writer, GPA's
    // states copied from the request: the same bytes.
    let body = ChatBody {
        messages: &borrowed,
        stream: true,
        response_format: None,
    }
    .to_vec();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(
            "{{\"messages\":{},\"stream\":true}}",
            serde_json::to_string(&owned).unwrap()
        )
    );
    // And what GPA sees: its own answers, attachments and states.
    let seen: Value = serde_json::to_value(&borrowed).unwrap();
    assert_eq!(seen[1]["custom_content"]["state"], tool);
    assert_eq!(seen[3]["content"], "GPA's own answer");
    assert_eq!(
        seen[3]["custom_content"]["attachments"][0]["url"],
        "files/a.png"
    );
    assert_eq!(seen[4]["content"], "second\n\nAlso this");
    assert_eq!(seen[3]["custom_content"]["state"], tool);
    assert_eq!(
        seen[5]["custom_content"]["state"],
        json!({"tool_call_history": []})
    );
    assert_eq!(seen[6]["content"], "third\n\nBe brief.");
}

/// Agents read the history through the request's one recall: once it is
/// read, every agent takes the states it holds and no state is verified or
/// trusted again (here a recall that trusts nothing hides a valid GPA turn
/// and a valid UMS conversation alike).
#[test]
fn agents_read_the_history_through_the_requests_one_recall() {
    use mas_coordinator::agents::dial::agent_history;
    use mas_coordinator::agents::ums::find_conversation;
    use mas_coordinator::memory::Recall;
    let body = json!({"stream": true, "messages": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one",
         "custom_content": {"state": {"is_gpa": true, "gpa_messages": {"tool_call_history": []},
                                      "ums_conversation_id": "conv-7"}}},
        {"role": "user", "content": "second"},
    ]});
    let ctx = context(body.clone(), None);
    let gpa = ctx.config.registry.get("GPA").unwrap().clone();
    let ums = ctx.config.registry.get("UMS").unwrap().clone();
    assert_eq!(agent_history(&ctx, &gpa, None).len(), 3);
    assert_eq!(
        find_conversation(&ctx, &ums).map(|(id, _)| id).as_deref(),
        Some("conv-7")
    );
    let blind = context(body, None);
    blind.recall.set(Recall::default()).unwrap();
    assert_eq!(agent_history(&blind, &gpa, None).len(), 1);
    assert_eq!(find_conversation(&blind, &ums), None);
}

/// A request has a deadline of its own: an agent that dribbles its answer
/// (each event inside the idle timeout, the call inside its total) is
/// stopped when the request's time is up; its stage closes as failed, the
/// answer ends with the deadline's error, and its upstream is not blamed.
#[test]
fn a_request_is_stopped_at_its_deadline_however_its_calls_behave() {
    let ctx = context_with(
        config_with(&[("REQUEST_DEADLINE_MS", "2500")]),
        ask(WEATHER),
        None,
    );
    let pieces: Vec<Value> = (0..20)
        .map(|i| chunk(json!({"content": format!("{i} ")})))
        .collect();
    // GPA sends an event a second, twenty of them.
    let dribbling = || {
        FakeClient::new()
            .on(
                "/deployments/gpt-4o/chat/completions",
                routing_reply("GPA", None),
            )
            .on(
                "/deployments/general-purpose-agent/chat/completions",
                Reply::sse_timed(1_000, &pieces),
            )
    };
    let client = dribbling();
    let (events, _) = run_stream(&ctx, &client);
    assert_eq!(client.clock.now(), 2_500, "stopped at the deadline");
    let d = deltas(&events);
    let tail = &d[d.len() - 4..];
    assert_eq!(
        tail,
        [
            stage_close(1, "failed"),
            json!("STOP"),
            json!({"error": {
                "message": "The request ran past its deadline of 2500 ms (REQUEST_DEADLINE_MS): every call under way was stopped",
                "type": "runtime_error",
                "code": "500",
                "display_message": "The request took too long and was stopped after 3 s. Please try again, or ask for less at once."
            }}),
            json!("[DONE]"),
        ]
    );
    // What GPA sent before the deadline reached the user, once.
    let streamed: Vec<&str> = d
        .iter()
        .filter_map(|d| d["custom_content"]["stages"][0]["content"].as_str())
        .filter(|c| c.ends_with(' ') && c.trim().parse::<u32>().is_ok())
        .collect();
    assert_eq!(streamed, ["0 ", "1 "]);
    let breaker = mas_coordinator::calls::breaker::load(
        &*client.store,
        "breaker:mas-coordinator:GPA:http://core.test/openai/deployments/general-purpose-agent",
    );
    assert_eq!(
        breaker,
        mas_coordinator::calls::breaker::BreakerState::default()
    );
    let line = client
        .logs()
        .into_iter()
        .find(|l| l["event"] == "upstream_call")
        .unwrap();
    assert_eq!(line["outcome"], "deadline");
    // Without streaming, the same deadline is the HTTP error.
    let ctx = context_with(
        config_with(&[("REQUEST_DEADLINE_MS", "2500")]),
        json!({"messages": [{"role": "user", "content": WEATHER}]}),
        None,
    );
    let client = dribbling();
    let e = client.run(collect(&ctx, &client, "x", 1)).unwrap_err();
    assert_eq!(e.status(), 500);
    assert_eq!(
        e,
        mas_coordinator::error::CoordError::DeadlineExceeded(2500)
    );
}

// ---------------------------------------------------------------------------
// Heartbeats: a quiet stream gets `: heartbeat` comments, and nothing else changes

const HEARTBEAT: &str = ": heartbeat\n\n";

/// The seed-1 turn, its coordination call answering after `routing_ms`.
fn slow_routing_client(routing_ms: u64) -> FakeClient {
    FakeClient::new()
        .on(
            "/deployments/gpt-4o/chat/completions",
            Reply::Late(routing_ms, Box::new(routing_reply("UMS", None))),
        )
        .on("/conversations", Reply::json(200, json!({"id": "conv-1", "title": KARPATHY, "messages": [], "created_at": "t", "updated_at": "t"})))
        .on("/conversations/conv-1/chat", ums_stream("conv-1", &["No user ", "named Andrej Karpathy ", "was found."]))
        .on("/deployments/gpt-4o/chat/completions", llm_stream(&["Andrej Karpathy ", "is not a user."]))
}

fn beating(ms: &str, body: Value) -> RequestContext {
    context_with(config_with(&[("HEARTBEAT_INTERVAL_MS", ms)]), body, None)
}

/// Where the heartbeat writes are among `writes`.
fn heartbeats(writes: &[String]) -> Vec<usize> {
    (0..writes.len())
        .filter(|i| writes[*i] == HEARTBEAT)
        .collect()
}

#[test]
fn a_slow_coordination_call_gets_a_heartbeat_each_interval_unless_they_are_off() {
    let quiet_client = slow_routing_client(3_500);
    let quiet = run_stream_writes(&beating("0", ask(KARPATHY)), &quiet_client);
    assert!(
        quiet.iter().all(|w| w.starts_with("data: ")),
        "no comment at all: {quiet:?}"
    );

    let client = slow_routing_client(3_500);
    let writes = run_stream_writes(&beating("1000", ask(KARPATHY)), &client);
    assert_eq!(client.clock.now(), 3_500);
    // The role chunk and stage 0 went first; then one comment a second, each
    // a write of its own, until the decision; the rest is the same stream.
    assert!(writes[0].starts_with("data: "), "{writes:?}");
    assert_eq!(writes[0], quiet[0]);
    assert_eq!(heartbeats(&writes), [1, 2, 3]);
    assert_eq!(writes[4..], quiet[1..]);
    // One timer for the wait, armed again only when it rang: three ticks.
    assert_eq!(client.sleeps.get(), quiet_client.sleeps.get() + 3);
}

#[test]
fn chunks_faster_than_the_interval_get_no_heartbeat_and_one_timer_serves_every_wait() {
    let pieces: Vec<Value> = (0..10)
        .map(|i| chunk(json!({"content": format!("{i} ")})))
        .collect();
    let client = || {
        FakeClient::new()
            .on(
                "/deployments/gpt-4o/chat/completions",
                routing_reply("GPA", None),
            )
            .on(
                "/deployments/general-purpose-agent/chat/completions",
                Reply::sse_timed(450, &pieces),
            )
            .on(
                "/deployments/gpt-4o/chat/completions",
                llm_stream(&["Done."]),
            )
    };
    let quiet_client = client();
    let quiet = run_stream_writes(&beating("0", ask(WEATHER)), &quiet_client);
    let beating_client = client();
    let writes = run_stream_writes(&beating("1000", ask(WEATHER)), &beating_client);
    assert_eq!(beating_client.clock.now(), 4_950);
    assert_eq!(writes, quiet);
    assert!(writes.len() > 10, "GPA's events went out as they came");
    // Eleven waits on GPA's body, and the one timer rang four times (at 1, 2,
    // 3 and 4 s), each time finding the stream busy.
    assert_eq!(beating_client.sleeps.get(), quiet_client.sleeps.get() + 4);
}

#[test]
fn an_agent_slow_to_answer_gets_heartbeats_under_its_stage() {
    let pieces = [chunk(json!({"content": "Sunny."}))];
    let client = || {
        FakeClient::new()
            .on(
                "/deployments/gpt-4o/chat/completions",
                routing_reply("GPA", None),
            )
            .on(
                "/deployments/general-purpose-agent/chat/completions",
                Reply::Late(2_500, Box::new(Reply::sse(&pieces))),
            )
            .on(
                "/deployments/gpt-4o/chat/completions",
                llm_stream(&["Sunny in Kyiv."]),
            )
    };
    let quiet = run_stream_writes(&beating("0", ask(WEATHER)), &client());
    let writes = run_stream_writes(&beating("1000", ask(WEATHER)), &client());
    let at = heartbeats(&writes);
    assert_eq!(at.len(), 2, "{writes:?}");
    assert_eq!(at[1], at[0] + 1);
    // They come right after GPA's stage opened, before anything GPA said.
    assert!(
        writes[at[0] - 1].contains(r#""name":"Call GPA Agent""#),
        "{writes:?}"
    );
    let without: Vec<&String> = writes.iter().filter(|w| *w != HEARTBEAT).collect();
    assert_eq!(without, quiet.iter().collect::<Vec<_>>());
}

#[test]
fn a_collected_answer_gets_no_heartbeat_and_arms_no_timer_for_one() {
    let body = json!({"messages": [{"role": "user", "content": KARPATHY}]});
    let quiet_client = slow_routing_client(3_500);
    let ctx = beating("0", body.clone());
    let quiet = quiet_client
        .run(collect(&ctx, &quiet_client, "x", 1))
        .unwrap();
    let client = slow_routing_client(3_500);
    let ctx = beating("1000", body);
    let answer = client.run(collect(&ctx, &client, "x", 1)).unwrap();
    assert_eq!(answer, quiet);
    assert_eq!(client.sleeps.get(), quiet_client.sleeps.get());
}

#[test]
fn the_deadline_is_kept_to_the_millisecond_between_heartbeats() {
    let ctx = context_with(
        config_with(&[
            ("HEARTBEAT_INTERVAL_MS", "1000"),
            ("REQUEST_DEADLINE_MS", "2500"),
        ]),
        ask(KARPATHY),
        None,
    );
    let client = FakeClient::new().on("/deployments/gpt-4o/chat/completions", Reply::Hang);
    let writes = run_stream_writes(&ctx, &client);
    assert_eq!(client.clock.now(), 2_500);
    assert_eq!(heartbeats(&writes), [1, 2]);
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert!(
        writes[3].contains("REQUEST_DEADLINE_MS") && writes[3].ends_with("data: [DONE]\n\n"),
        "{writes:?}"
    );
}

/// A client that goes away after `stays_for` writes.
struct Leaving {
    writes: Vec<Vec<u8>>,
    stays_for: usize,
}

impl Transport for Leaving {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        if self.writes.len() == self.stays_for {
            return Err(ClientGone);
        }
        self.writes.push(bytes.to_vec());
        Ok(())
    }
}

#[test]
fn a_heartbeat_that_cannot_be_written_ends_the_request_as_client_gone() {
    let client = slow_routing_client(3_500);
    let ctx = beating("1000", ask(KARPATHY));
    let mut out = Emitter::streaming(
        SseEncoder::new("resp-1", 1),
        Leaving {
            writes: Vec::new(),
            stays_for: 2,
        },
    );
    client.run(stream_response(&ctx, &client, &mut out));
    // The first heartbeat went out at 1 s; the second found the client gone.
    assert_eq!(client.clock.now(), 2_000);
    let transport = out.into_transport().unwrap();
    assert_eq!(transport.writes[1], HEARTBEAT.as_bytes());
    assert_eq!(client.requests().len(), 1, "nothing is called after");
    let line = client
        .logs()
        .into_iter()
        .find(|l| l["event"] == "request")
        .unwrap();
    assert_eq!(line["outcome"], "client_gone");
}

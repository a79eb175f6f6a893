//! End to end: one running component serving several DIAL application
//! instances, told apart by the headers DIAL Core sends
//! (`X-DIAL-APPLICATION-PROPERTIES`, `X-DIAL-APPLICATION-ID`). The local
//! world's Core forwards each instance's calls with its properties, as DIAL
//! Core does for an application of our type; the built component runs in
//! `wasmtime serve`.
//!
//! Build the component first:
//! `cargo build --release --target wasm32-wasip2 -p mas-coordinator`.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use common::host::{get, post_json, send, Stack};
use common::turns::as_history;
use common::wire::user;
use mas_world::{App, Recorded, World};
use serde_json::{json, Value};

const KEY: &str = "sk-apps-PER-REQUEST-51c0";
const SECRET: &str = "apps-state-secret-0123456789";
const RAG_DESCRIPTION: &str = "Answers questions from the travel policy documents.";
const LLM_PATH: &str = "/openai/deployments/gpt-4o/chat/completions";
const GPA_PATH: &str = "/openai/deployments/general-purpose-agent/chat/completions";
const RAG_PATH: &str = "/openai/deployments/rag-agent/chat/completions";

/// The environment's registry is GPA and UMS, planned; two instances:
/// `hr-assistant` (GPA, UMS) and `travel-assistant` (GPA and a RAG agent,
/// routed, with instructions of its own).
async fn setup() -> Stack {
    let s = Stack::start(&[("COORDINATION_MODE", "plan"), ("STATE_SECRET", SECRET)]).await;
    let base = s.host.url();
    let ums = s.world.ums_url();
    let app = |name: &str, properties: Value| {
        App::new(
            name,
            format!("{base}/openai/deployments/{name}/chat/completions"),
        )
        .with_configuration_endpoint(format!("{base}/openai/deployments/{name}/configuration"))
        .with_properties(properties)
    };
    s.world
        .set_app(app(
            "hr-assistant",
            json!({"agents": [
                {"name": "GPA", "kind": "dial", "deployment": "general-purpose-agent"},
                {"name": "UMS", "kind": "ums", "endpoint": ums},
            ]}),
        ))
        .unwrap();
    s.world
        .set_app(app(
            "travel-assistant",
            json!({
                "agents": [
                    {"name": "GPA"},
                    {"name": "RAG", "kind": "dial", "deployment": "rag-agent", "description": RAG_DESCRIPTION},
                ],
                "coordination_mode": "route",
                "coordination_prompt": "Travel policy questions go to RAG.",
                "synthesis_prompt": "Sign every answer as the travel desk.",
            }),
        ))
        .unwrap();
    s
}

/// A streamed chat with `messages` through the world's Core to `app`.
async fn chat_via_core(world: &World, app: &str, messages: &[Value], conv: &str) -> Vec<String> {
    let url = format!(
        "{}/openai/deployments/{app}/chat/completions",
        world.core_url()
    );
    let r = post_json(
        &url,
        &[("Api-Key", KEY), ("X-CONVERSATION-ID", conv)],
        &json!({"stream": true, "messages": messages}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = common::host::sse_events(&r.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events
}

/// The coordinator's calls to the world's Core since `from`, to `path`.
fn calls_to(world: &World, path: &str, from: usize) -> Vec<Recorded> {
    world
        .requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.service == "core" && r.path == path)
        .collect()
}

/// The agent names a coordination call's schema offers.
fn offered(call: &Recorded) -> Vec<String> {
    let schema = call.json()["response_format"]["json_schema"]["schema"].to_string();
    ["GPA", "UMS", "RAG"]
        .iter()
        .filter(|n| schema.contains(&format!("\"{n}\"")))
        .map(|n| (*n).to_owned())
        .collect()
}

fn system_prompt(call: &Recorded) -> String {
    call.json()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_component_serves_two_instances_by_the_header_alone() {
    let s = setup().await;
    let w = &s.world;

    // travel-assistant: RAG offered and described, one routing decision (no
    // plan), its instructions in both prompts.
    let n = w.requests().len();
    chat_via_core(
        w,
        "travel-assistant",
        &[user("@RAG What is our travel policy?")],
        "t1",
    )
    .await;
    let coordination = calls_to(w, LLM_PATH, n);
    assert_eq!(coordination.len(), 2, "routing and synthesis");
    assert_eq!(offered(&coordination[0]), ["GPA", "RAG"]);
    let schema = &coordination[0].json()["response_format"]["json_schema"];
    assert_eq!(schema["name"], "routing_decision");
    let prompt = system_prompt(&coordination[0]);
    assert!(
        prompt.contains(&format!("- RAG: {RAG_DESCRIPTION}\n")),
        "{prompt}"
    );
    assert!(
        prompt
            .ends_with("\n\n## Instructions of this assistant\nTravel policy questions go to RAG."),
        "{prompt}"
    );
    assert!(system_prompt(&coordination[1])
        .ends_with("\n\n## Instructions of this assistant\nSign every answer as the travel desk."));
    assert_eq!(calls_to(w, RAG_PATH, n).len(), 1);
    let forwarded: Vec<Recorded> = w
        .requests()
        .into_iter()
        .filter(|r| r.service == "app")
        .collect();
    assert_eq!(
        forwarded[0].header("x-dial-application-id"),
        Some("travel-assistant")
    );

    // hr-assistant: no RAG anywhere, UMS offered; planned (the environment's mode).
    let n = w.requests().len();
    chat_via_core(w, "hr-assistant", &[user("Do we have user John?")], "h1").await;
    let coordination = calls_to(w, LLM_PATH, n);
    assert_eq!(offered(&coordination[0]), ["GPA", "UMS"]);
    assert_eq!(
        coordination[0].json()["response_format"]["json_schema"]["name"],
        "coordination_plan"
    );
    let prompt = system_prompt(&coordination[0]);
    assert!(
        !prompt.contains("- RAG:") && !prompt.contains("## Instructions"),
        "{prompt}"
    );
    assert!(calls_to(w, RAG_PATH, n).is_empty());
    assert!(
        w.requests().iter().skip(n).any(|r| r.service == "ums"),
        "UMS served the user question"
    );

    // Called directly, without the header: the environment's registry.
    let n = w.requests().len();
    let r = post_json(
        &s.host.chat_url(),
        &[("Api-Key", KEY)],
        &json!({"stream": true, "messages": [user("@RAG What is our travel policy?")]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let coordination = calls_to(w, LLM_PATH, n);
    assert_eq!(offered(&coordination[0]), ["GPA", "UMS"]);
    assert!(calls_to(w, RAG_PATH, n).is_empty());

    // The request lines name the instance.
    let lines: Vec<Value> = s
        .host
        .json_logs()
        .into_iter()
        .filter(|l| l["event"] == "request")
        .collect();
    let apps: Vec<&Value> = lines.iter().map(|l| &l["application"]).collect();
    assert_eq!(
        apps,
        [
            &json!("travel-assistant"),
            &json!("hr-assistant"),
            &Value::Null
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_properties_are_a_400_naming_the_property_and_the_next_request_is_unaffected() {
    let s = setup().await;
    let r = send(
        "POST",
        &s.host.chat_url(),
        &[
            ("Api-Key", KEY),
            ("Content-Type", "application/json"),
            ("X-DIAL-APPLICATION-ID", "owner-app"),
            (
                "X-DIAL-APPLICATION-PROPERTIES",
                r#"{"agents":[{"name":"UMS","endpoint":"http://169.254.169.254/latest"},{"name":"X","kind":"mcp"}]}"#,
            ),
        ],
        json!({"messages": [user("hi")]}).to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {
            "message": "Invalid application properties: agents[1].kind must be one of dial, ums, a2a",
            "type": "invalid_request_error",
            "code": "400",
            "display_message": "This application's settings are invalid (agents[1].kind). Please tell the application's owner."
        }})
    );
    // Once the kinds are right, the endpoint is checked against the allowed origins.
    let r = send(
        "POST",
        &s.host.chat_url(),
        &[
            ("Api-Key", KEY),
            ("X-DIAL-APPLICATION-ID", "owner-app"),
            (
                "X-DIAL-APPLICATION-PROPERTIES",
                r#"{"agents":[{"name":"UMS","endpoint":"http://169.254.169.254/latest"}]}"#,
            ),
        ],
        json!({"messages": [user("hi")]}).to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Invalid application properties: agents[0].endpoint is on http://169.254.169.254:80, \
         which this deployment does not allow for agents (the operator allows origins in ALLOWED_AGENT_HOSTS)"
    );
    assert!(
        !s.world.requests().iter().any(|r| r.path.contains("latest")),
        "nothing was called"
    );
    let rejected: Vec<Value> = s
        .host
        .json_logs()
        .into_iter()
        .filter(|l| l["outcome"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (&rejected[0]["application"], &rejected[0]["status"]),
        (&json!("owner-app"), &json!(400))
    );
    // A good instance right after is served.
    chat_via_core(
        &s.world,
        "hr-assistant",
        &[user("Do we have user John?")],
        "h2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_schema_and_each_instances_configuration_are_served() {
    let s = setup().await;
    let r = get(&format!("{}/v1/schema", s.host.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    let schema = r.json();
    let base = s.host.url();
    assert_eq!(
        schema["$schema"],
        "https://dial.epam.com/application_type_schemas/schema#"
    );
    assert_eq!(schema["$id"], format!("{base}/v1/schema"));
    assert_eq!(
        schema["dial:applicationTypeCompletionEndpoint"],
        format!("{base}/openai/deployments/mas-coordinator/chat/completions")
    );
    assert_eq!(
        schema["properties"]["agents"]["dial:meta"]["dial:propertyOrder"],
        0
    );

    // Through DIAL Core, each instance's own agents and mode.
    let configuration = |app: &'static str| {
        let core = s.world.core_url();
        async move {
            let url = format!("{core}/v1/deployments/{app}/configuration");
            let r = send("GET", &url, &[("Api-Key", KEY)], Vec::new())
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let travel = configuration("travel-assistant").await;
    assert_eq!(
        travel["properties"]["agents"]["items"]["enum"],
        json!(["GPA", "RAG"])
    );
    assert_eq!(
        travel["properties"]["coordination_mode"]["default"],
        "route"
    );
    let hr = configuration("hr-assistant").await;
    assert_eq!(
        hr["properties"]["agents"]["items"]["enum"],
        json!(["GPA", "UMS"])
    );
    assert_eq!(hr["properties"]["coordination_mode"]["default"], "plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_settings_narrow_the_agents_within_the_instance() {
    let s = setup().await;
    let w = &s.world;
    let url = format!(
        "{}/openai/deployments/hr-assistant/chat/completions",
        w.core_url()
    );
    let n = w.requests().len();
    let r = post_json(
        &url,
        &[("Api-Key", KEY)],
        &json!({"stream": true, "messages": [user("Do we have user John?")],
                "custom_fields": {"configuration": {"agents": ["GPA"], "coordination_mode": "route"}}}),
    )
    .await;
    assert_eq!(r.status, 200);
    let coordination = calls_to(w, LLM_PATH, n);
    assert_eq!(offered(&coordination[0]), ["GPA"]);
    assert_eq!(
        coordination[0].json()["response_format"]["json_schema"]["name"],
        "routing_decision"
    );
    // An agent the instance does not have is refused before the first byte.
    let r = post_json(
        &url,
        &[("Api-Key", KEY)],
        &json!({"stream": true, "messages": [user("hi")],
                "custom_fields": {"configuration": {"agents": ["RAG"]}}}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Invalid request: custom_fields.configuration.agents must name agents of this application (GPA, UMS)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_signed_state_is_read_by_that_instance_only() {
    let s = setup().await;
    let w = &s.world;
    let weather = "Search weather in Kyiv";
    let again = "And tomorrow?";
    let mut history = vec![user(weather)];
    let events = chat_via_core(w, "hr-assistant", &history, "shared-chat").await;
    history.push(as_history(&events));
    history.push(user(again));

    // The same conversation, continued in the instance that wrote it: GPA
    // sees its earlier turn; moved to another instance: it does not.
    let n = w.requests().len();
    chat_via_core(w, "hr-assistant", &history, "shared-chat").await;
    let gpa = calls_to(w, GPA_PATH, n);
    assert_eq!(gpa[0].json()["messages"].as_array().unwrap().len(), 3);
    let n = w.requests().len();
    chat_via_core(w, "travel-assistant", &history, "shared-chat").await;
    let gpa = calls_to(w, GPA_PATH, n);
    assert_eq!(gpa[0].json()["messages"], json!([user(again)]));
}

//! The benchmarked requests, their floors, and the checks that every measured
//! response completed correctly.
//!
//! The floor of a scenario is the same upstream calls the coordinator makes for it,
//! sent by the benchmark itself, one after the other, with the bodies built by the
//! coordinator's own functions (`routing::request_body`, `agent_history`,
//! `synthesis::request_body`, each with its target's `model` added as the
//! coordinator adds it), so floor and coordinated runs move the same bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use mas_coordinator::agents::dial::agent_history;
use mas_coordinator::calls::{dial_targets, RequestTemplate};
use mas_coordinator::config::Config;
use mas_coordinator::context::RequestContext;
use mas_coordinator::dial::request::{parse_request, ChatBody, ChatRequest, Message};
use mas_coordinator::trace::Trace;
use mas_coordinator::{routing, synthesis};
use serde_json::{json, Value};

use crate::http::{send_fresh, Conn, Req, Resp};

/// The per-request DIAL key the benchmark sends (the world only checks it is there).
pub const API_KEY: &str = "bench-dial-key";
/// The coordinator's chat-completions path, as DIAL Core calls it.
pub const COORDINATOR_PATH: &str = "/openai/deployments/mas-coordinator/chat/completions";
const LLM: &str = "gpt-4o";
const GPA: &str = "general-purpose-agent";

pub const GPA_REQUEST: &str = "Search weather in Kyiv";
pub const UMS_REQUEST: &str = "Do we have Andrej Karpathy as a user?";

/// The coordinator's view of a request with `messages` (default configuration).
fn context(messages: &[Message]) -> RequestContext {
    RequestContext {
        config: Config::default(),
        api_key: API_KEY.to_owned(),
        conversation_id: None,
        subject: None,
        coordinator: "mas-coordinator".to_owned(),
        request: ChatRequest {
            messages: messages.to_vec(),
            stream: Some(true),
        },
        trace: Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16)),
        start_ms: 0,
        unix_s: 0,
    }
}

/// A DIAL Core body as the coordinator sends it to `deployment`.
fn dial_body(ctx: &RequestContext, deployment: &str, body: Vec<u8>) -> Vec<u8> {
    let target = &dial_targets(&ctx.config, &[deployment.to_owned()])[0];
    RequestTemplate::dial_chat(ctx, body).build(target).body
}

fn deployment_path(name: &str) -> String {
    format!("/openai/deployments/{name}/chat/completions")
}

/// Which agent a scenario routes to, and how UMS finds its conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Agent {
    Gpa,
    /// UMS with the conversation id in the history's state (no create call).
    UmsExisting(String),
    /// UMS on a first turn: the coordinator creates a conversation every time.
    UmsFirstTurn,
}

impl Agent {
    pub fn label(&self) -> &'static str {
        match self {
            Agent::Gpa => "GPA",
            Agent::UmsExisting(_) | Agent::UmsFirstTurn => "UMS",
        }
    }

    pub fn upstream_calls(&self) -> usize {
        match self {
            Agent::Gpa | Agent::UmsExisting(_) => 3,
            Agent::UmsFirstTurn => 4,
        }
    }
}

/// One benchmarked coordinator request.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub description: String,
    pub agent: Agent,
    /// The history as the coordinator parses it.
    pub messages: Vec<Message>,
    /// The streaming request to the coordinator.
    pub request: Req,
}

impl Scenario {
    fn new(
        name: &'static str,
        description: String,
        agent: Agent,
        messages: Vec<Value>,
    ) -> anyhow::Result<Scenario> {
        let body = serde_json::to_vec(&json!({
            "model": "mas-coordinator",
            "messages": messages,
            "stream": true,
        }))?;
        let parsed = parse_request(&body).map_err(|e| anyhow::anyhow!("{}", e.0))?;
        Ok(Scenario {
            name,
            description,
            agent,
            messages: parsed.messages,
            request: Req::post_json(COORDINATOR_PATH, body, Some(API_KEY)),
        })
    }

    /// "Search weather in Kyiv" on a fresh conversation.
    pub fn gpa() -> anyhow::Result<Scenario> {
        Scenario::new(
            "gpa",
            format!("GPA: \"{GPA_REQUEST}\", 1 message"),
            Agent::Gpa,
            vec![json!({"role": "user", "content": GPA_REQUEST})],
        )
    }

    /// The UMS question as a follow-up: the conversation id is in the state.
    pub fn ums(conversation_id: &str) -> anyhow::Result<Scenario> {
        Scenario::new(
            "ums",
            format!("UMS: \"{UMS_REQUEST}\", follow-up (id in state), 3 messages"),
            Agent::UmsExisting(conversation_id.to_owned()),
            vec![
                json!({"role": "user", "content": UMS_REQUEST}),
                json!({"role": "assistant", "content": "No user named Andrej Karpathy was found.",
                       "custom_content": {"state": {"ums_conversation_id": conversation_id}}}),
                json!({"role": "user", "content": UMS_REQUEST}),
            ],
        )
    }

    /// The UMS question on a first turn: the coordinator creates a conversation.
    pub fn ums_first_turn() -> anyhow::Result<Scenario> {
        Scenario::new(
            "ums_first_turn",
            format!("UMS: \"{UMS_REQUEST}\", first turn (creates a conversation), 1 message"),
            Agent::UmsFirstTurn,
            vec![json!({"role": "user", "content": UMS_REQUEST})],
        )
    }

    /// The GPA request after a long conversation: `total` messages, alternating
    /// assistant/user, every earlier assistant turn a GPA turn carrying a
    /// `tool_call_history` state of about `state_bytes` bytes.
    pub fn gpa_long_history(total: usize, state_bytes: usize) -> anyhow::Result<Scenario> {
        ensure!(
            total >= 2 && total % 2 == 0,
            "the history length must be even"
        );
        let mut messages = vec![json!({"role": "assistant", "content": "Hello! How can I help?"})];
        for k in 0..(total - 2) / 2 {
            messages
                .push(json!({"role": "user", "content": format!("{GPA_REQUEST}, question {k}")}));
            messages.push(json!({
                "role": "assistant",
                "content": format!("Weather in Kyiv: +5°C, light rain (answer {k})."),
                "custom_content": {"state": {"is_gpa": true, "gpa_messages": gpa_state(k, state_bytes)}},
            }));
        }
        messages.push(json!({"role": "user", "content": GPA_REQUEST}));
        Scenario::new(
            "gpa_1000_messages",
            format!(
                "GPA: \"{GPA_REQUEST}\" after {} messages with ~{} B GPA states",
                total - 1,
                state_bytes
            ),
            Agent::Gpa,
            messages,
        )
    }

    /// Checks one coordinated response: 200, the agent's stage, the synthesized
    /// answer, no error event, and `data: [DONE]` last.
    pub fn check(&self, resp: &Resp) -> Result<(), String> {
        check_stream(resp)?;
        let text = resp.text();
        let stage = format!("Call {} Agent", self.agent.label());
        if !text.contains(&stage) {
            return Err(format!("no \"{stage}\" stage: routed elsewhere"));
        }
        if !text.contains(r#""content":"Based "#) {
            return Err("no synthesized answer".to_owned());
        }
        Ok(())
    }
}

/// A GPA state like the world's: a tool call and its result, padded to ~`bytes`.
fn gpa_state(k: usize, bytes: usize) -> Value {
    let args = json!({"query": format!("{GPA_REQUEST} {k}")}).to_string();
    let call = json!({"role": "assistant", "content": "", "custom_content": {"attachments": []},
        "tool_calls": [{"index": 0, "id": format!("call_{k}"), "type": "function",
                        "function": {"name": "web_search", "arguments": args}}]});
    let overhead = call.to_string().len() + 100;
    let filler = "Kyiv: +5°C, light rain, wind 4 m/s, humidity 87%. ";
    let mut result = String::new();
    while result.len() + overhead < bytes {
        result.push_str(filler);
    }
    let tool = json!({"role": "tool", "content": result, "tool_call_id": format!("call_{k}"), "name": "web_search"});
    json!({"tool_call_history": [call, tool]})
}

/// 200, `data: [DONE]` as the last event, no error event.
pub fn check_stream(resp: &Resp) -> Result<(), String> {
    if resp.status != 200 {
        let excerpt: String = resp.text().chars().take(200).collect();
        return Err(format!("status {}: {excerpt}", resp.status));
    }
    let text = resp.text();
    if !text.ends_with("data: [DONE]\n\n") {
        let tail: String = text
            .chars()
            .rev()
            .take(120)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("does not end with data: [DONE]: ...{tail}"));
    }
    if text.starts_with(r#"data: {"error""#) || text.contains("\ndata: {\"error\"") {
        return Err("an error event was sent".to_owned());
    }
    Ok(())
}

/// The concatenated `choices[0].delta.content` of an SSE body.
fn stream_content(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Kept-alive connections for the floor.
#[derive(Debug)]
pub struct FloorConns {
    core: Conn,
    ums: Conn,
}

impl FloorConns {
    pub async fn connect(floor: &Floor) -> anyhow::Result<FloorConns> {
        Ok(FloorConns {
            core: Conn::connect(floor.core).await?,
            ums: Conn::connect(floor.ums).await?,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Core,
    Ums,
}

/// The upstream calls of a scenario, made directly.
#[derive(Clone, Debug)]
pub struct Floor {
    core: SocketAddr,
    ums: SocketAddr,
    routing: Req,
    agent: FloorAgent,
    synthesis: Req,
    /// Bytes of the agent call's request body.
    pub agent_body_bytes: usize,
}

#[derive(Clone, Debug)]
enum FloorAgent {
    Gpa(Req),
    Ums {
        /// `POST /conversations` first (first turn), else the fixed id.
        create: Option<Req>,
        conversation_id: Option<String>,
        chat_body: Vec<u8>,
    },
}

fn ums_chat(id: &str, body: &[u8]) -> Req {
    Req::post_json(&format!("/conversations/{id}/chat"), body.to_vec(), None)
}

impl Floor {
    /// Builds the calls of `scenario`; one priming run of the agent call gives the
    /// answer that the synthesis body carries.
    pub async fn new(
        scenario: &Scenario,
        core: SocketAddr,
        ums: SocketAddr,
    ) -> anyhow::Result<Floor> {
        let messages = &scenario.messages;
        let ctx = context(messages);
        let routing = Req::post_json(
            &deployment_path(LLM),
            dial_body(&ctx, LLM, routing::request_body(&ctx)),
            Some(API_KEY),
        );
        let (agent, agent_body_bytes) = match &scenario.agent {
            Agent::Gpa => {
                let gpa = ctx
                    .config
                    .registry
                    .get("GPA")
                    .context("GPA is registered")?;
                let history = agent_history(&ctx, gpa, None);
                let body = ChatBody {
                    messages: &history,
                    stream: true,
                    response_format: None,
                }
                .to_vec();
                let body = dial_body(&ctx, GPA, body);
                let len = body.len();
                (
                    FloorAgent::Gpa(Req::post_json(&deployment_path(GPA), body, Some(API_KEY))),
                    len,
                )
            }
            agent @ (Agent::UmsExisting(_) | Agent::UmsFirstTurn) => {
                let text = messages.last().map(Message::text).unwrap_or_default();
                let chat_body = serde_json::to_vec(
                    &json!({"message": {"role": "user", "content": text}, "stream": true}),
                )?;
                let len = chat_body.len();
                let (create, conversation_id) = match agent {
                    Agent::UmsExisting(id) => (None, Some(id.clone())),
                    _ => {
                        let title = serde_json::to_vec(&json!({"title": text}))?;
                        (Some(Req::post_json("/conversations", title, None)), None)
                    }
                };
                (
                    FloorAgent::Ums {
                        create,
                        conversation_id,
                        chat_body,
                    },
                    len,
                )
            }
        };
        let mut floor = Floor {
            core,
            ums,
            routing,
            agent,
            synthesis: Req::get("/"),
            agent_body_bytes,
        };
        let answer = stream_content(floor.agent_call(None).await?.text());
        let request = messages.last().map(Message::text).unwrap_or_default();
        let last = synthesis::final_user_text(&answer, &request);
        floor.synthesis = Req::post_json(
            &deployment_path(LLM),
            dial_body(
                &ctx,
                LLM,
                synthesis::request_body(&ctx, synthesis::SYNTHESIS_PROMPT, &last),
            ),
            Some(API_KEY),
        );
        Ok(floor)
    }

    async fn call(
        &self,
        conns: Option<&mut FloorConns>,
        target: Target,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        match (conns, target) {
            (Some(c), Target::Core) => c.core.send(req).await,
            (Some(c), Target::Ums) => c.ums.send(req).await,
            (None, Target::Core) => send_fresh(self.core, req).await,
            (None, Target::Ums) => send_fresh(self.ums, req).await,
        }
    }

    /// The agent call(s); returns the (checked) streamed answer.
    async fn agent_call(&self, mut conns: Option<&mut FloorConns>) -> anyhow::Result<Resp> {
        let resp = match &self.agent {
            FloorAgent::Gpa(req) => self.call(conns, Target::Core, req).await?,
            FloorAgent::Ums {
                create,
                conversation_id,
                chat_body,
            } => {
                let id = match (create, conversation_id) {
                    (Some(create), _) => {
                        let resp = self.call(conns.as_deref_mut(), Target::Ums, create).await?;
                        ensure!(resp.status == 200, "create conversation: {}", resp.status);
                        let v: Value = serde_json::from_slice(&resp.body)?;
                        v["id"]
                            .as_str()
                            .context("the created conversation has no id")?
                            .to_owned()
                    }
                    (None, Some(id)) => id.clone(),
                    (None, None) => bail!("UMS floor without a conversation"),
                };
                self.call(conns, Target::Ums, &ums_chat(&id, chat_body))
                    .await?
            }
        };
        check_stream(&resp).map_err(|e| anyhow::anyhow!("agent call: {e}"))?;
        Ok(resp)
    }

    /// Runs every call in order, checks each answer; returns the total time.
    pub async fn run(&self, mut conns: Option<&mut FloorConns>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let routed = self
            .call(conns.as_deref_mut(), Target::Core, &self.routing)
            .await?;
        ensure!(
            routed.status == 200 && routed.text().contains("agent_name"),
            "routing call: status {}",
            routed.status
        );
        self.agent_call(conns.as_deref_mut()).await?;
        let synthesized = self.call(conns, Target::Core, &self.synthesis).await?;
        check_stream(&synthesized).map_err(|e| anyhow::anyhow!("synthesis call: {e}"))?;
        Ok(start.elapsed())
    }
}

/// Creates a UMS conversation directly (for the follow-up scenario).
pub async fn create_conversation(ums: SocketAddr) -> anyhow::Result<String> {
    let resp = send_fresh(
        ums,
        &Req::post_json("/conversations", br#"{"title":"mas-bench"}"#.to_vec(), None),
    )
    .await?;
    ensure!(resp.status == 200, "create conversation: {}", resp.status);
    let v: Value = serde_json::from_slice(&resp.body)?;
    Ok(v["id"].as_str().context("no id")?.to_owned())
}

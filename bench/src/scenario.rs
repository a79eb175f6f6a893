//! The benchmarked requests, their floors, and the checks that every measured
//! response completed correctly.
//!
//! The floor of a scenario is the upstream calls the coordinator makes for it in
//! the mode it runs in (`COORDINATION_MODE`, by default `plan`), sent by the
//! benchmark itself with the bodies built by the coordinator's own functions:
//! `plan::request_body` (or `routing::request_body` in `route` mode) for the
//! coordination call, then for every subtask of the plan the world answers the
//! agent's call (`agent_history` for a DIAL agent; `POST /conversations` with
//! `conversation_title` and the chat body for UMS, with `plan::task_text` after
//! the user's message), then `synthesis::request_body` (with `SYNTHESIS_PROMPT`
//! for one result, `PLAN_SYNTHESIS_PROMPT` and `plan::sections` for several).
//! Every DIAL body gets its target's `model` the way the coordinator adds it.
//! [`verify_bytes`] checks, against the requests the world records, that a floor
//! run and a coordinated run send the same bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use mas_coordinator::agents::dial::agent_history;
use mas_coordinator::agents::ums::{conversation_title, encode_path_segment, find_conversation};
use mas_coordinator::calls::RequestTemplate;
use mas_coordinator::client::dial_targets;
use mas_coordinator::config::{Config, CoordinationMode};
use mas_coordinator::context::RequestContext;
use mas_coordinator::flow::plan::{self, Finished, Outcome, PLAN_SYNTHESIS_PROMPT};
use mas_coordinator::flow::routing;
use mas_coordinator::flow::synthesis::{self, SYNTHESIS_PROMPT};
use mas_coordinator::trace::Trace;
use mas_coordinator::wire::request::{parse_request, ChatBody, ChatRequest, Message};
use mas_world::{Fault, FaultKind, Recorded, World};
use serde_json::{json, Value};

use crate::http::{send_fresh, Conn, Req, Resp};

/// The per-request DIAL key the benchmark sends (the world only checks it is there).
pub const API_KEY: &str = "bench-dial-key";
/// The coordinator's chat-completions path, as DIAL Core calls it.
pub const COORDINATOR_PATH: &str = "/openai/deployments/mas-coordinator/chat/completions";

pub const GPA_REQUEST: &str = "Search weather in Kyiv";
pub const UMS_REQUEST: &str = "Do we have Andrej Karpathy as a user?";
/// Two independent asks: the world plans a UMS subtask and a GPA subtask.
pub const TWO_AGENTS_REQUEST: &str = "Do we have user John? Also, search the weather in Kyiv";
/// The world's pause between two events of UMS's chat stream in `two_agents`
/// (about 20 gaps: ~100 ms).
pub const TWO_AGENTS_UMS_DELAY_MS: u64 = 5;
/// The world's pause between two events of GPA's stream in `two_agents`
/// (9 gaps: ~135 ms), so that GPA is the slower agent.
pub const TWO_AGENTS_GPA_DELAY_MS: u64 = 15;

/// The coordinator's view of a request with `messages` under `config`.
fn context(messages: &[Message], config: &Config) -> RequestContext {
    RequestContext {
        config: config.clone(),
        api_key: API_KEY.to_owned(),
        conversation_id: None,
        subject: None,
        application: None,
        coordinator: "mas-coordinator".to_owned(),
        request: ChatRequest {
            messages: messages.to_vec(),
            stream: Some(true),
            n: None,
            custom_fields: None,
        },
        trace: Trace::from_headers(None, None, "a".repeat(32), "b".repeat(16)),
        start_ms: 0,
        unix_s: 0,
        recall: Default::default(),
        resume: Default::default(),
    }
}

/// A DIAL Core body as the coordinator sends it to `deployment`.
fn dial_body(ctx: &RequestContext, deployment: &str, body: Vec<u8>) -> Vec<u8> {
    let target = &dial_targets(&ctx.config.dial_endpoint, &[deployment.to_owned()])[0];
    RequestTemplate::dial_chat(ctx, body).build(target).body
}

fn deployment_path(name: &str) -> String {
    format!("/openai/deployments/{name}/chat/completions")
}

/// One benchmarked coordinator request.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub description: String,
    /// The history as the coordinator parses it.
    pub messages: Vec<Message>,
    /// The streaming request to the coordinator.
    pub request: Req,
    /// Stages every response must contain (the agents it must have called).
    pub stages: Vec<String>,
    /// Pieces the synthesized answer must contain, checked on the decoded
    /// content (empty: only the raw `"content":"Based "` check, cheap under load).
    pub answer_contains: Vec<String>,
    /// World faults (delays) in force while this scenario is measured.
    pub faults: Vec<(String, Fault)>,
}

impl Scenario {
    fn new(
        name: &'static str,
        description: String,
        stages: &[&str],
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
            messages: parsed.messages,
            request: Req::post_json(COORDINATOR_PATH, body, Some(API_KEY)),
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            answer_contains: Vec::new(),
            faults: Vec::new(),
        })
    }

    /// "Search weather in Kyiv" on a fresh conversation.
    pub fn gpa() -> anyhow::Result<Scenario> {
        Scenario::new(
            "gpa",
            format!("GPA: \"{GPA_REQUEST}\", 1 message"),
            &["Call GPA Agent"],
            vec![json!({"role": "user", "content": GPA_REQUEST})],
        )
    }

    /// The UMS question as a follow-up: the conversation id is in the state.
    pub fn ums(conversation_id: &str) -> anyhow::Result<Scenario> {
        Scenario::new(
            "ums",
            format!("UMS: \"{UMS_REQUEST}\", follow-up (id in state), 3 messages"),
            &["Call UMS Agent"],
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
            &["Call UMS Agent"],
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
            &["Call GPA Agent"],
            messages,
        )
    }

    /// Two independent subtasks run at once: the world plans UMS "Do we have user
    /// John?" and GPA "search the weather in Kyiv", and slows both agents (a pause
    /// between the events of their streams) so that each takes ~100-150 ms.
    pub fn two_agents() -> anyhow::Result<Scenario> {
        let mut s = Scenario::new(
            "two_agents",
            format!(
                "UMS + GPA in parallel: \"{TWO_AGENTS_REQUEST}\", first turn, 1 message \
                 (world: {TWO_AGENTS_UMS_DELAY_MS} ms between UMS events, \
                 {TWO_AGENTS_GPA_DELAY_MS} ms between GPA events)"
            ),
            &["Call UMS Agent (task 1)", "Call GPA Agent (task 2)"],
            vec![json!({"role": "user", "content": TWO_AGENTS_REQUEST})],
        )?;
        s.answer_contains = vec![
            "### Task 1 (UMS): Do we have user John?".to_owned(),
            "### Task 2 (GPA): search the weather in Kyiv".to_owned(),
        ];
        let delay = |ms| Fault {
            kind: FaultKind::None,
            chunk_delay_ms: ms,
            ..Fault::default()
        };
        s.faults = vec![
            ("ums".to_owned(), delay(TWO_AGENTS_UMS_DELAY_MS)),
            (
                "deployment:general-purpose-agent".to_owned(),
                delay(TWO_AGENTS_GPA_DELAY_MS),
            ),
        ];
        Ok(s)
    }

    /// Checks one coordinated response: 200, every expected stage, the
    /// synthesized answer, no error event, and `data: [DONE]` last.
    pub fn check(&self, resp: &Resp) -> Result<(), String> {
        check_stream(resp)?;
        let text = resp.text();
        for stage in &self.stages {
            let quoted = format!("\"name\":\"{stage}\"");
            if !text.contains(&quoted) {
                return Err(format!("no \"{stage}\" stage: planned or routed elsewhere"));
            }
        }
        if !text.contains(r#""content":"Based "#) {
            return Err("no synthesized answer".to_owned());
        }
        if !self.answer_contains.is_empty() {
            let answer = stream_content(text);
            for piece in &self.answer_contains {
                if !answer.contains(piece.as_str()) {
                    return Err(format!("the answer lacks {piece:?}"));
                }
            }
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

/// `choices[0].message.content` of a non-streaming answer.
fn completion_content(resp: &Resp) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(&resp.body).context("the answer is not JSON")?;
    Ok(v["choices"][0]["message"]["content"]
        .as_str()
        .context("the answer has no choices[0].message.content")?
        .to_owned())
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

/// The calls of one subtask's agent.
#[derive(Clone, Debug)]
enum AgentCalls {
    Dial(Req),
    Ums {
        /// `POST /conversations` first (first turn), else the id from the state.
        create: Option<Req>,
        conversation_id: Option<String>,
        chat_body: Vec<u8>,
    },
}

/// One agent path of the floor: a subtask of the plan (or the routed agent).
#[derive(Clone, Debug)]
pub struct FloorAgent {
    /// `task <n>: <AGENT>`.
    pub label: String,
    /// The world's fault target of this agent (`ums`, `deployment:<name>`).
    pub fault_target: String,
    /// The number of upstream calls of this path.
    pub calls: usize,
    task_id: u32,
    agent: String,
    description: String,
    call: AgentCalls,
}

/// The upstream calls of a scenario, made directly.
#[derive(Clone, Debug)]
pub struct Floor {
    core: SocketAddr,
    ums: SocketAddr,
    coordination: Req,
    /// What a usable coordination answer contains.
    coordination_marker: &'static str,
    /// The agent paths, in plan order.
    pub agents: Vec<FloorAgent>,
    synthesis: Req,
    /// Bytes of the agent calls' request bodies (all agents).
    pub agent_body_bytes: usize,
}

/// How long the parts of one floor run took, each measured on its own.
#[derive(Clone, Debug, Default)]
pub struct FloorRun {
    pub coordination: Duration,
    /// Each agent path, in plan order.
    pub agents: Vec<Duration>,
    pub synthesis: Duration,
}

impl FloorRun {
    /// Coordination + the slowest agent path + synthesis: the least a
    /// coordinator that runs independent agents at once can take.
    pub fn slower(&self) -> Duration {
        self.coordination + self.agents.iter().max().copied().unwrap_or_default() + self.synthesis
    }

    /// Coordination + every agent path one after the other + synthesis.
    pub fn sum(&self) -> Duration {
        self.coordination + self.agents.iter().sum::<Duration>() + self.synthesis
    }
}

fn ums_chat(id: &str, body: &[u8]) -> Req {
    Req::post_json(
        &format!("/conversations/{}/chat", encode_path_segment(id)),
        body.to_vec(),
        None,
    )
}

/// A subtask as the coordinator runs it: its number, agent, description and
/// the task text appended to the user's message.
struct Planned {
    task_id: u32,
    agent: String,
    description: String,
    task: Option<String>,
}

impl Floor {
    /// Builds the calls of `scenario` as the coordinator configured by `config`
    /// makes them: one priming coordination call gives the plan (or the routing
    /// decision), one priming run of each agent path gives the answers that the
    /// synthesis body carries.
    pub async fn new(
        scenario: &Scenario,
        config: &Config,
        core: SocketAddr,
        ums: SocketAddr,
    ) -> anyhow::Result<Floor> {
        let ctx = context(&scenario.messages, config);
        let registry = &ctx.config.registry;
        let request = scenario
            .messages
            .last()
            .map(Message::text)
            .unwrap_or_default();
        let llm = ctx.config.deployment_name.clone();
        let (body, coordination_marker) = match ctx.config.coordination_mode {
            CoordinationMode::Plan => (plan::request_body(&ctx, &[]), "subtasks"),
            CoordinationMode::Route => (routing::request_body(&ctx), "agent_name"),
        };
        let coordination = Req::post_json(
            &deployment_path(&llm),
            dial_body(&ctx, &llm, body),
            Some(API_KEY),
        );
        let resp = send_fresh(core, &coordination).await?;
        ensure!(resp.status == 200, "coordination call: {}", resp.status);
        let answer = completion_content(&resp)?;
        let planned: Vec<Planned> = match ctx.config.coordination_mode {
            CoordinationMode::Plan => {
                let p = plan::parse_plan(&answer, registry, ctx.config.max_subtasks, &request);
                ensure!(
                    !p.plan.replan,
                    "{}: the plan asks for a re-plan; the floor covers one round",
                    scenario.name
                );
                let mut out = Vec::new();
                // The coordinator numbers a first round's subtasks 1, 2, ... in plan order.
                for (s, n) in p.plan.subtasks.iter().zip(1..) {
                    ensure!(
                        s.depends_on.is_empty(),
                        "{}: the floor covers independent subtasks only",
                        scenario.name
                    );
                    out.push(Planned {
                        task_id: n,
                        agent: s.agent_name.clone(),
                        description: s.task_description.clone(),
                        task: plan::task_text(&s.task_description, &request, &[]),
                    });
                }
                out
            }
            CoordinationMode::Route => {
                let routed = routing::parse_decision(Some(&answer), registry);
                let agent = registry
                    .get(&routed.decision.agent_name)
                    .unwrap_or_else(|| registry.fallback());
                vec![Planned {
                    task_id: 1,
                    agent: agent.name.clone(),
                    description: request.clone(),
                    task: routed.decision.additional_instructions.clone(),
                }]
            }
        };
        let mut agents = Vec::new();
        let mut agent_body_bytes = 0;
        for p in &planned {
            let agent = registry
                .get(&p.agent)
                .unwrap_or_else(|| registry.fallback());
            let label = format!("task {}: {}", p.task_id, agent.name);
            let (call, fault_target, calls) = match agent.kind {
                "dial" => {
                    let deployment = &agent
                        .targets
                        .first()
                        .context("an agent without targets")?
                        .id;
                    let history = agent_history(&ctx, agent, p.task.as_deref());
                    let body = ChatBody {
                        messages: &history,
                        stream: true,
                        response_format: None,
                    }
                    .to_vec();
                    let body = dial_body(&ctx, deployment, body);
                    agent_body_bytes += body.len();
                    (
                        AgentCalls::Dial(Req::post_json(
                            &deployment_path(deployment),
                            body,
                            Some(API_KEY),
                        )),
                        format!("deployment:{deployment}"),
                        1,
                    )
                }
                "ums" => {
                    ensure!(
                        planned.iter().filter(|q| q.agent == p.agent).count() == 1,
                        "{}: two subtasks of one UMS agent share a conversation; not covered",
                        scenario.name
                    );
                    let mut message = request.clone();
                    if let Some(task) = &p.task {
                        message.push_str("\n\n");
                        message.push_str(task);
                    }
                    let chat_body = serde_json::to_vec(
                        &json!({"message": {"role": "user", "content": message}, "stream": true}),
                    )?;
                    agent_body_bytes += chat_body.len();
                    let known = find_conversation(&ctx, agent).map(|(id, _)| id);
                    let create = match known {
                        Some(_) => None,
                        None => {
                            let title = serde_json::to_vec(
                                &json!({"title": conversation_title(&message)}),
                            )?;
                            Some(Req::post_json("/conversations", title, None))
                        }
                    };
                    let calls = 1 + usize::from(create.is_some());
                    (
                        AgentCalls::Ums {
                            create,
                            conversation_id: known,
                            chat_body,
                        },
                        "ums".to_owned(),
                        calls,
                    )
                }
                other => bail!("{}: agents of kind {other} are not covered", scenario.name),
            };
            agents.push(FloorAgent {
                label,
                fault_target,
                calls,
                task_id: p.task_id,
                agent: agent.name.clone(),
                description: p.description.clone(),
                call,
            });
        }
        ensure!(!agents.is_empty(), "{}: nothing to call", scenario.name);
        let mut floor = Floor {
            core,
            ums,
            coordination,
            coordination_marker,
            agents,
            synthesis: Req::get("/"),
            agent_body_bytes,
        };
        let mut finished = Vec::new();
        for (i, a) in floor.agents.iter().enumerate() {
            let answer = stream_content(floor.agent_call(i, None).await?.text());
            finished.push(Finished {
                id: a.task_id,
                agent: a.agent.clone(),
                description: a.description.clone(),
                outcome: Outcome::Done(answer),
            });
        }
        finished.sort_by_key(|f| f.id);
        let (prompt, context) = match finished.as_slice() {
            [only] => match &only.outcome {
                Outcome::Done(answer) => (SYNTHESIS_PROMPT, answer.clone()),
                Outcome::Failed(_) => bail!("the agent failed"),
            },
            all => (PLAN_SYNTHESIS_PROMPT, plan::sections(all)),
        };
        let last = synthesis::final_user_text(&context, &request);
        floor.synthesis = Req::post_json(
            &deployment_path(&llm),
            dial_body(&ctx, &llm, synthesis::request_body(&ctx, prompt, &last)),
            Some(API_KEY),
        );
        Ok(floor)
    }

    /// The first DIAL agent call of the floor (in `gpa`, the GPA call): the
    /// world's address and the request, as the coordinator sends it.
    pub fn dial_agent_call(&self) -> Option<(SocketAddr, &Req)> {
        self.agents.iter().find_map(|a| match &a.call {
            AgentCalls::Dial(req) => Some((self.core, req)),
            AgentCalls::Ums { .. } => None,
        })
    }

    /// Every upstream call of one run: coordination, the agent paths, synthesis.
    pub fn calls(&self) -> usize {
        2 + self.agents.iter().map(|a| a.calls).sum::<usize>()
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

    /// The call(s) of agent path `i`; returns the (checked) streamed answer.
    async fn agent_call(
        &self,
        i: usize,
        mut conns: Option<&mut FloorConns>,
    ) -> anyhow::Result<Resp> {
        let agent = &self.agents[i];
        let resp = match &agent.call {
            AgentCalls::Dial(req) => self.call(conns, Target::Core, req).await?,
            AgentCalls::Ums {
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
        check_stream(&resp).map_err(|e| anyhow::anyhow!("{}: {e}", agent.label))?;
        Ok(resp)
    }

    /// Runs every call one after the other, checks each answer; returns how
    /// long each part took.
    pub async fn run(&self, mut conns: Option<&mut FloorConns>) -> anyhow::Result<FloorRun> {
        let mut run = FloorRun::default();
        let start = Instant::now();
        let coordinated = self
            .call(conns.as_deref_mut(), Target::Core, &self.coordination)
            .await?;
        ensure!(
            coordinated.status == 200 && coordinated.text().contains(self.coordination_marker),
            "coordination call: status {}",
            coordinated.status
        );
        run.coordination = start.elapsed();
        for i in 0..self.agents.len() {
            let start = Instant::now();
            self.agent_call(i, conns.as_deref_mut()).await?;
            run.agents.push(start.elapsed());
        }
        let start = Instant::now();
        let synthesized = self.call(conns, Target::Core, &self.synthesis).await?;
        check_stream(&synthesized).map_err(|e| anyhow::anyhow!("synthesis call: {e}"))?;
        run.synthesis = start.elapsed();
        Ok(run)
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

/// What [`verify_bytes`] compared.
#[derive(Clone, Copy, Debug, Default)]
pub struct Verified {
    /// Upstream requests compared.
    pub requests: usize,
    /// Their body bytes (the coordinator's side).
    pub body_bytes: usize,
}

/// The headers compared besides method, path, query and body.
const COMPARED_HEADERS: [&str; 3] = ["content-type", "api-key", "x-conversation-id"];

/// A recorded request with UMS conversation ids (`...conv-<digits>`) and UMS
/// turn numbers (`#<digits>` right after one) replaced: every first-turn run
/// creates its own conversation, and a follow-up conversation counts its turns,
/// so these differ from run to run by design.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("conv-") {
        let (before, after) = rest.split_at(at + "conv-".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            rest = after;
            continue;
        }
        out.push('N');
        rest = &after[digits..];
        if let Some(turn) = rest.strip_prefix('#') {
            let n = turn.len() - turn.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if n > 0 {
                out.push_str("#T");
                rest = &turn[n..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A recorded request as compared: service, method, path?query, headers, body.
fn comparable(r: &Recorded) -> (String, String, Vec<Option<String>>, String) {
    let target = match &r.query {
        Some(q) => format!("{} {}?{}", r.method, r.path, q),
        None => format!("{} {}", r.method, r.path),
    };
    let headers = COMPARED_HEADERS
        .iter()
        .map(|h| r.header(h).map(str::to_owned))
        .collect();
    (
        r.service.clone(),
        normalize(&target),
        headers,
        normalize(&r.body),
    )
}

/// Whether two recorded requests are the same call: service, method, path
/// and query, the compared headers and the body, byte for byte (as
/// [`verify_bytes`] compares them); else where they differ.
pub fn same_request(a: &Recorded, b: &Recorded) -> Result<(), String> {
    let (x, y) = (comparable(a), comparable(b));
    if x.0 != y.0 || x.1 != y.1 {
        return Err(format!("{} {} instead of {} {}", x.0, x.1, y.0, y.1));
    }
    for (h, (hx, hy)) in COMPARED_HEADERS.iter().zip(x.2.iter().zip(&y.2)) {
        if hx != hy {
            return Err(format!("header {h}: {hx:?} instead of {hy:?}"));
        }
    }
    if x.3 != y.3 {
        return Err(format!(
            "the bodies differ {}",
            first_difference(&x.3, &y.3)
        ));
    }
    Ok(())
}

fn listing(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(|r| format!("{} {} {} ({} B)", r.service, r.method, r.path, r.body.len()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where two texts first differ, with a little context on both sides.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let excerpt = |s: &str| {
        let from = at.saturating_sub(80);
        let to = (at + 80).min(s.len());
        String::from_utf8_lossy(&s.as_bytes()[from..to]).into_owned()
    };
    format!(
        "at byte {at} (lengths {} vs {}):\n  floor:       ...{}...\n  coordinator: ...{}...",
        a.len(),
        b.len(),
        excerpt(a),
        excerpt(b)
    )
}

/// Checks that the floor sends what the coordinator sends: one floor run and one
/// coordinated run (through `coordinator`) are recorded by the world and compared
/// request by request — service, method, path and query, the content-type,
/// api-key and x-conversation-id headers, and the body, byte for byte (UMS
/// conversation ids and turn numbers aside, see [`normalize`]). The coordination
/// call comes first and the synthesis last in both; the agent calls between
/// them may come in any order (independent subtasks run at once).
pub async fn verify_bytes(
    world: &World,
    coordinator: SocketAddr,
    scenario: &Scenario,
    floor: &Floor,
) -> anyhow::Result<Verified> {
    world.clear_requests();
    floor.run(None).await.context("floor run")?;
    let ours = world.requests();
    world.clear_requests();
    let resp = send_fresh(coordinator, &scenario.request).await?;
    scenario
        .check(&resp)
        .map_err(|e| anyhow::anyhow!("coordinated request: {e}"))?;
    let theirs = world.requests();
    world.clear_requests();
    ensure!(
        ours.len() == theirs.len(),
        "{}: the floor makes {} upstream calls, the coordinator {}:\n  floor:       {}\n  coordinator: {}",
        scenario.name,
        ours.len(),
        theirs.len(),
        listing(&ours),
        listing(&theirs)
    );
    let mut a: Vec<_> = ours.iter().map(comparable).collect();
    let mut b: Vec<_> = theirs.iter().map(comparable).collect();
    let n = a.len();
    if n > 2 {
        a[1..n - 1].sort();
        b[1..n - 1].sort();
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let what = format!(
            "{}: upstream call {} of {n} ({} {})",
            scenario.name,
            i + 1,
            y.0,
            y.1
        );
        ensure!(
            x.0 == y.0 && x.1 == y.1,
            "{what}: the floor calls {} {} instead",
            x.0,
            x.1
        );
        for (h, (hx, hy)) in COMPARED_HEADERS.iter().zip(x.2.iter().zip(&y.2)) {
            ensure!(
                hx == hy,
                "{what}: header {h}: floor {hx:?}, coordinator {hy:?}"
            );
        }
        ensure!(
            x.3 == y.3,
            "{what}: the bodies differ {}",
            first_difference(&x.3, &y.3)
        );
    }
    Ok(Verified {
        requests: n,
        body_bytes: theirs.iter().map(|r| r.body.len()).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mas_world::WorldOptions;

    #[test]
    fn conversation_ids_and_turns_are_normalized() {
        assert_eq!(
            normalize(r#"POST /conversations/ums-conv-0012/chat"#),
            "POST /conversations/ums-conv-N/chat"
        );
        assert_eq!(
            normalize("UMS[ums-conv-10001#37]: Noted: x; UMS[ums-b-conv-0002#1]"),
            "UMS[ums-conv-N#T]: Noted: x; UMS[ums-b-conv-N#T]"
        );
        assert_eq!(normalize("conv-x conv-#1 conv-"), "conv-x conv-#1 conv-");
    }

    #[test]
    fn floor_run_parts() {
        let ms = Duration::from_millis;
        let run = FloorRun {
            coordination: ms(1),
            agents: vec![ms(100), ms(130)],
            synthesis: ms(2),
        };
        assert_eq!(run.slower(), ms(133));
        assert_eq!(run.sum(), ms(233));
    }

    /// The benchmark's own configuration of the coordinator.
    fn config(world: &World) -> Config {
        crate::server::coordinator_config(world, &[]).unwrap()
    }

    fn addr(url: &str) -> SocketAddr {
        url.trim_start_matches("http://").parse().unwrap()
    }

    /// The floor of `two_agents` follows the world's plan: the planning call,
    /// UMS (create + chat) and GPA with the task after the user's message, and
    /// the synthesis of both sections.
    #[tokio::test]
    async fn the_two_agent_floor_follows_the_plan() {
        let world = World::start(WorldOptions::default()).await.unwrap();
        let scenario = Scenario::two_agents().unwrap();
        let cfg = config(&world);
        let floor = Floor::new(
            &scenario,
            &cfg,
            addr(&world.core_url()),
            addr(&world.ums_url()),
        )
        .await
        .unwrap();
        assert_eq!(floor.calls(), 5);
        let labels: Vec<&str> = floor.agents.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["task 1: UMS", "task 2: GPA"]);
        let targets: Vec<&str> = floor
            .agents
            .iter()
            .map(|a| a.fault_target.as_str())
            .collect();
        assert_eq!(targets, ["ums", "deployment:general-purpose-agent"]);
        world.clear_requests();
        let run = floor.run(None).await.unwrap();
        assert_eq!(run.agents.len(), 2);
        let seen = world.requests();
        let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths.len(), 5);
        assert_eq!(paths[0], "/openai/deployments/gpt-4o/chat/completions");
        assert_eq!(paths[1], "/conversations");
        assert_eq!(
            seen[1].json(),
            json!({"title": "Do we have user John? Also, search the weather in Kyiv"})
        );
        assert_eq!(
            seen[2].json()["message"]["content"],
            format!("{TWO_AGENTS_REQUEST}\n\nDo we have user John?")
        );
        assert_eq!(
            paths[3],
            "/openai/deployments/general-purpose-agent/chat/completions"
        );
        let gpa = seen[3].json();
        assert_eq!(gpa["model"], "general-purpose-agent");
        let gpa_messages = gpa["messages"].as_array().unwrap();
        assert_eq!(
            gpa_messages.last().unwrap()["content"],
            format!("{TWO_AGENTS_REQUEST}\n\nsearch the weather in Kyiv")
        );
        let synthesis = seen[4].json();
        let messages = synthesis["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], PLAN_SYNTHESIS_PROMPT);
        let last = messages.last().unwrap()["content"].as_str().unwrap();
        assert!(
            last.starts_with("## CONTEXT:\n### Task 1 (UMS): Do we have user John?\nUMS[ums-conv-"),
            "{last}"
        );
        assert!(
            last.contains("\n### Task 2 (GPA): search the weather in Kyiv\nWeather in Kyiv"),
            "{last}"
        );
        assert!(
            last.ends_with(&format!("\n---\n## USER_REQUEST:\n{TWO_AGENTS_REQUEST}")),
            "{last}"
        );
    }

    /// One-subtask plans make the same agent and synthesis calls as routing did.
    #[tokio::test]
    async fn single_agent_floors_keep_the_agent_and_synthesis_calls() {
        let world = World::start(WorldOptions::default()).await.unwrap();
        let cfg = config(&world);
        let (core, ums) = (addr(&world.core_url()), addr(&world.ums_url()));
        let gpa = Floor::new(&Scenario::gpa().unwrap(), &cfg, core, ums)
            .await
            .unwrap();
        assert_eq!(gpa.calls(), 3);
        let first = Floor::new(&Scenario::ums_first_turn().unwrap(), &cfg, core, ums)
            .await
            .unwrap();
        assert_eq!(first.calls(), 4);
        let id = create_conversation(ums).await.unwrap();
        let follow_up = Floor::new(&Scenario::ums(&id).unwrap(), &cfg, core, ums)
            .await
            .unwrap();
        assert_eq!(follow_up.calls(), 3);
        world.clear_requests();
        gpa.run(None).await.unwrap();
        let seen = world.requests();
        let plan_body = seen[0].json();
        assert_eq!(
            plan_body["response_format"]["json_schema"]["name"],
            "coordination_plan"
        );
        let synthesis = seen[2].json();
        assert_eq!(synthesis["messages"][0]["content"], SYNTHESIS_PROMPT);
    }
}

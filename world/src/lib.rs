//! # The local DIAL world
//!
//! `mas-world` stands in for everything the MAS coordinator talks to — DIAL Core (with an
//! LLM deployment and General-purpose-Agent deployments behind it) and the UMS agent —
//! as two small HTTP/1.1 servers on `127.0.0.1`. It is used by the run command, the
//! end-to-end tests and the benchmarks. Every answer is a deterministic function of the
//! request (plus a few per-world counters), every request is recorded, and faults can be
//! injected per target.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mas_world::{Fault, FaultKind, World, WorldOptions};
//! let world = World::start(WorldOptions::default()).await?;
//! // point the coordinator at world.core_url() / world.ums_url() ...
//! world.set_fault("deployment:general-purpose-agent", Fault { kind: FaultKind::Down, ..Fault::default() });
//! let seen = world.requests();
//! # Ok(()) }
//! ```
//!
//! The binary `mas-world [--core-addr 127.0.0.1:8080] [--ums-addr 127.0.0.1:8042]
//! [--llm-deployment gpt-4o] [--gpa-deployment general-purpose-agent]` runs the same
//! world until SIGINT/SIGTERM.
//!
//! ## DIAL Core stand-in
//!
//! `POST /openai/deployments/{name}/chat/completions[?query]` — any deployment name is
//! served: the configured LLM deployment (default `gpt-4o`) behaves as the **LLM**, every
//! other name (the GPA deployment `general-purpose-agent`, backups such as `gpa-backup`,
//! …) behaves as a **GPA**.
//!
//! * A non-empty `api-key` header is required, else 401
//!   `{"error":{"message":"Missing API key","type":"invalid_request_error","code":"401"}}`.
//! * The body must be a JSON object with a `messages` array, else 400 (DIAL error body).
//! * Any other path or method → 404 (DIAL error body).
//! * *Text of a message*: a string `content`, or the `text` of every `{"type":"text"}`
//!   part joined with `"\n"`. *Last user text*: the text of the last message whose role is
//!   `user` (empty if none).
//! * Streaming (`"stream": true`) answers are `200 text/event-stream; charset=utf-8` with
//!   the aidial-sdk chunk format (PROTOCOL §2): each event `data: <compact JSON>\n\n`,
//!   envelope `{"choices":[{"index":0,"finish_reason":null,"delta":{..}}],"usage":null,"id":"chatcmpl-world-<n>","created":<unix secs>,"object":"chat.completion.chunk"}`,
//!   first the role chunk `{"role":"assistant"}`, exactly one kind of update per delta, the
//!   stop chunk last (`"finish_reason":"stop"`, `"delta":{}`, and
//!   `"usage":{"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C}`), then
//!   `data: [DONE]\n\n`. `P` = number of whitespace-separated words in the texts of all
//!   request messages, `C` = the same for all choice content sent. `<n>` is a per-world
//!   counter shared by all responses.
//! * Non-streaming answers: `{"id":..,"object":"chat.completion","created":..,"model":"<name>","choices":[{"index":0,"message":{"role":"assistant","content":".."},"finish_reason":"stop"}],"usage":{..}}`.
//!
//! ### The LLM deployment
//!
//! * **Routing** — non-streaming with `response_format.type == "json_schema"`. On the last
//!   user text, lowercased, the first matching rule decides the content:
//!
//!   | last user text contains | content |
//!   |---|---|
//!   | `[route:garbage]` | `this is not json` |
//!   | `[route:unknown]` | `{"agent_name":"XYZ","additional_instructions":null}` |
//!   | `[route:instructions]` | `{"agent_name":"GPA","additional_instructions":"Be brief."}` |
//!   | `user` or `account` | `{"agent_name":"UMS","additional_instructions":null}` |
//!   | anything else | `{"agent_name":"GPA","additional_instructions":null}` |
//!
//! * Non-streaming without a `json_schema` response format: content
//!   `Hello from the local LLM.`
//! * **Synthesis** — streaming. In the text of the *last* message (whatever its role),
//!   if both `## CONTEXT:` and (after it) `## USER_REQUEST:` occur, *context* = the text
//!   between them, trimmed, with a trailing `---` line removed and trimmed again; the reply
//!   is `Based on the agent's answer: <context>`. Otherwise the reply is
//!   `Hello from the local LLM.` The reply is streamed as one content delta per word, each
//!   keeping its trailing whitespace (split after every run of whitespace, so the pieces
//!   concatenate to the exact reply).
//!
//! ### GPA deployments (every non-LLM name)
//!
//! Streaming only (non-streaming → 400 `stream required`). With `t` = last user text and
//! `tl` = `t` lowercased, after the role chunk, in this order (stage indices count from 0
//! per response, in order of opening):
//!
//! 1. `tl` contains `weather` or `search` → stage `web_search`: open
//!    `{"index":i,"name":"web_search","status":null}`; content
//!    ``## Request arguments: \n```json\n{"query":"<t>"}\n```\n## Response: \n``; content
//!    `Kyiv: +5°C, light rain`; close `{"index":i,"status":"completed"}`; then the choice
//!    content `Weather in Kyiv: +5°C, light rain. `
//! 2. `tl` contains `picture` or `image` → with `n` a per-world counter starting at 1 and
//!    `url` = `files/world-bucket/images/image-<n>.png`: stage `image_generation_tool`
//!    open; content ``## Request arguments: \n```json\n{"prompt":"<t>"}\n```\n``; stage
//!    attachment `{"index":j,"attachments":[{"index":0,"type":"image/png","title":"Generated image","url":"<url>"}],"status":null}`;
//!    choice content `\n\r![image](<url>)\n\r`; close completed.
//! 3. `tl` contains `nested` → stage `planner` (index `p`) open, content `plan`; child
//!    stage `step_one` opened with `"parent_stage_index":p`, content `step`, closed
//!    completed; `planner` closed completed.
//! 4. `tl` contains `[gpa:open-stage]` → stage `left_open` opened with content
//!    `never closed`, never closed. `tl` contains `[gpa:failed-stage]` → stage
//!    `failing_tool` opened and closed with status `failed`.
//! 5. The summary choice content, exactly
//!    `GPA[<deployment>] got <N> messages (<roles joined by ",">), <K> with tool_call_history; request: <t>`
//!    (`N` = number of messages received, `K` = number of assistant messages whose
//!    `custom_content.state.tool_call_history` is an array); then, if step 2 ran, the
//!    choice attachment `{"attachments":[{"index":0,"type":"image/png","title":"image-<n>.png","url":"<url>"}]}`.
//! 6. Exactly one state chunk `{"state":{"tool_call_history":[..]}}`: for each tool of
//!    steps 1–2 (k = 1, 2, … in order) the assistant message
//!    `{"role":"assistant","content":"","custom_content":{"attachments":[]},"tool_calls":[{"index":0,"id":"call_<k>","type":"function","function":{"name":"<tool>","arguments":"<args JSON>"}}]}`
//!    followed by `{"role":"tool","content":"<result>","tool_call_id":"call_<k>","name":"<tool>"}`
//!    (results: `Kyiv: +5°C, light rain` and `Generated image: <url>`); `[]` when no tool
//!    ran.
//! 7. The stop chunk with usage, then `[DONE]`.
//!
//! Stage/state/attachment deltas are wrapped as `{"custom_content":{"stages":[..]}}`,
//! `{"custom_content":{"attachments":[..]}}` and `{"custom_content":{"state":..}}`.
//!
//! ## UMS stand-in (its own port, PROTOCOL §4)
//!
//! * `GET /health` → `{"status":"healthy","conversation_manager_initialized":true}`.
//! * `POST /conversations` — the body must be a JSON object (else 422
//!   `{"detail":[{"type":"missing","loc":["body"],"msg":"Field required"}]}`); `title` is a
//!   string or null. → `{"id":"ums-conv-<NNNN>","title":..,"messages":[],"created_at":"<ISO-8601>","updated_at":"<same>"}`
//!   with a per-world 4-digit counter starting at `0001`.
//! * `GET /conversations` → `[{"id","title","created_at","updated_at","message_count"}]`,
//!   newest updated first.
//! * `GET /conversations/{id}` → the record, messages as `{"role","content"}`; unknown →
//!   404 `{"detail":"Conversation not found"}`. `DELETE /conversations/{id}` →
//!   `{"message":"Conversation deleted successfully"}` or that 404.
//! * `POST /conversations/{id}/chat` with `{"message":{"role":"user","content":".."},"stream":true}`
//!   (`stream` defaults to true; a malformed body → 422): unknown id → 500 `text/plain`
//!   `Internal Server Error`. The reply is `UMS[<id>#<turn>]: <answer>` where `turn` = the
//!   number of user messages in the conversation including this one, and `answer` =
//!   `No user named Andrej Karpathy was found.` if the lowercased message contains
//!   `karpathy`, else `Noted: <message content>`. The message and the reply (role
//!   `assistant`) are stored in the conversation as soon as the request is handled.
//!   Streaming uses Python `json.dumps` formatting (`", "`/`": "` separators, non-ASCII
//!   escaped as `\uXXXX`): `data: {"conversation_id": "<id>"}`, then one
//!   `data: {"choices": [{"delta": {"content": "<piece>"}, "index": 0, "finish_reason": null}]}`
//!   per word (split as for synthesis), then
//!   `data: {"choices": [{"delta": {}, "index": 0, "finish_reason": "stop"}]}` and
//!   `data: [DONE]`. `stream:false` → `{"content":"..","conversation_id":"<id>"}`.
//! * Unknown paths → 404 `{"detail":"Not Found"}`; wrong methods → 405.
//!
//! ## Recording
//!
//! Every request either server receives (except the control API) is recorded as a
//! [`Recorded`] in arrival order, including requests that are then refused or faulted.
//!
//! ## Faults
//!
//! [`World::set_fault`] targets:
//!
//! * `routing` — non-streaming calls of the LLM deployment;
//! * `synthesis` — streaming calls of the LLM deployment;
//! * `deployment:<name>` — every call of that deployment (for the LLM deployment,
//!   `routing`/`synthesis` win when set);
//! * `ums` — every UMS endpoint.
//!
//! Faults apply after the api-key and body checks. [`Fault::first_byte_delay_ms`]
//! delays the response head, [`Fault::chunk_delay_ms`] sleeps between body frames (SSE
//! events), for every kind. Kinds:
//!
//! * `None` — normal answer (only the delays apply);
//! * `Down` — the connection is closed without any response;
//! * `Status` — `status` (default 500) before any body: Core answers
//!   `{"error":{"message":"injected fault","type":"runtime_error","code":"<status>"}}`, UMS
//!   `text/plain` `Internal Server Error`; the handler does not run;
//! * `ErrorMidStream` — streams: the first two events (the role chunk / the UMS
//!   `conversation_id` event, and the next one), then
//!   `data: {"error":{"message":"injected mid-stream error","type":"runtime_error","code":"500"}}`
//!   and `data: [DONE]`; JSON answers: 200 with that error object as the body;
//! * `DropMidStream` — streams: the first two events, then the connection is cut without
//!   terminating the chunked body; JSON answers: the first half of the body, then the cut;
//! * `Garbage` — 200 with an invalid body: streams `data: this is not json` twice then
//!   `data: [DONE]`; JSON answers `<html>not json</html>` (still `application/json`);
//! * `Hang` — no response head until the client goes away (or the world shuts down).
//!
//! Body faults (`ErrorMidStream`, `DropMidStream`, `Garbage`) only alter successful
//! answers; error answers (401, 404, 422, …) are sent unchanged. UMS side effects
//! (creating conversations, storing messages) happen for those kinds, not for `Down`,
//! `Status` or `Hang`.
//!
//! ## Control API (on the Core port, never recorded)
//!
//! * `GET /_world/requests` → JSON array of [`Recorded`]; `DELETE /_world/requests`.
//! * `PUT /_world/faults/<target>` with a [`Fault`] JSON body (missing fields default,
//!   e.g. `{"kind":"status","status":503}`); `GET /_world/faults`;
//!   `DELETE /_world/faults/<target>`; `DELETE /_world/faults`. Unknown targets → 400.

mod core;
mod http;
mod json;
mod ums;

use anyhow::Context as _;
use http::{control_error, Reply};
use json::{arr, obj, s};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, watch};

/// Where the world listens and which deployment names mean what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldOptions {
    /// The DIAL Core stand-in's address (loopback only; port 0 picks a free port).
    pub core_addr: SocketAddr,
    /// The UMS stand-in's address (loopback only; port 0 picks a free port).
    pub ums_addr: SocketAddr,
    /// The deployment served as the LLM; every other deployment name is a GPA.
    pub llm_deployment: String,
    /// The default GPA deployment name (informational: every non-LLM name is a GPA).
    pub gpa_deployment: String,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            core_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ums_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            llm_deployment: "gpt-4o".to_owned(),
            gpa_deployment: "general-purpose-agent".to_owned(),
        }
    }
}

/// One request received by the world.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    /// `"core"` or `"ums"`.
    pub service: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased, in arrival order (values of a repeated name grouped).
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body, UTF-8 lossy.
    pub body: String,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, `Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An injected fault (see the crate docs for the semantics).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Fault {
    pub kind: FaultKind,
    /// For [`FaultKind::Status`]; 500 when absent.
    pub status: Option<u16>,
    /// Delay before the response head, in milliseconds.
    pub first_byte_delay_ms: u64,
    /// Delay between body frames (SSE events), in milliseconds.
    pub chunk_delay_ms: u64,
}

/// The kind of an injected fault.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[default]
    None,
    Down,
    Status,
    ErrorMidStream,
    DropMidStream,
    Garbage,
    Hang,
}

/// Whether `target` names something a fault can apply to.
fn valid_target(target: &str) -> bool {
    matches!(target, "routing" | "synthesis" | "ums")
        || target
            .strip_prefix("deployment:")
            .is_some_and(|name| !name.is_empty())
}

/// State shared by the servers and the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) llm_deployment: String,
    requests: Mutex<Vec<Recorded>>,
    faults: Mutex<BTreeMap<String, Fault>>,
    next_response: AtomicU64,
    next_image: AtomicU64,
    ums: Mutex<ums::UmsState>,
    pub(crate) shutdown: watch::Sender<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn record(&self, request: Recorded) {
        lock(&self.requests).push(request);
    }

    /// The fault of the first of `targets` that has one (default: no fault).
    pub(crate) fn fault_for(&self, targets: &[&str]) -> Fault {
        let faults = lock(&self.faults);
        targets
            .iter()
            .find_map(|t| faults.get(*t).cloned())
            .unwrap_or_default()
    }

    pub(crate) fn next_response_id(&self) -> String {
        let n = self.next_response.fetch_add(1, Ordering::Relaxed) + 1;
        format!("chatcmpl-world-{n}")
    }

    pub(crate) fn next_image(&self) -> u64 {
        self.next_image.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn lock_ums(&self) -> MutexGuard<'_, ums::UmsState> {
        lock(&self.ums)
    }
}

/// Handle to a running world. Cheap to clone; the servers stop when the last handle is
/// dropped (or earlier, on [`World::shutdown`]).
#[derive(Clone)]
pub struct World {
    shared: Arc<Shared>,
    core_addr: SocketAddr,
    ums_addr: SocketAddr,
    /// Dropping the last clone ends the world's runtime thread.
    _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("core_url", &self.core_url())
            .field("ums_url", &self.ums_url())
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the {what} stand-in must listen on a loopback address, not {addr}"
    );
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot bind the {what} stand-in to {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl World {
    /// Binds both servers and starts serving them on a dedicated runtime thread (so the
    /// world keeps answering even if the caller's runtime blocks).
    pub async fn start(opts: WorldOptions) -> anyhow::Result<World> {
        let core = bind(opts.core_addr, "DIAL Core")?;
        let ums = bind(opts.ums_addr, "UMS")?;
        let core_addr = core.local_addr()?;
        let ums_addr = ums.local_addr()?;
        let shared = Arc::new(Shared {
            llm_deployment: opts.llm_deployment,
            requests: Mutex::default(),
            faults: Mutex::default(),
            next_response: AtomicU64::new(0),
            next_image: AtomicU64::new(0),
            ums: Mutex::default(),
            shutdown: watch::Sender::new(false),
        });
        let (alive_tx, alive_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("mas-world".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("mas-world-worker")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ =
                            ready_tx
                                .send(Err(anyhow::Error::new(e)
                                    .context("cannot build the world's runtime")));
                        return;
                    }
                };
                let started = runtime.block_on(async {
                    let core = tokio::net::TcpListener::from_std(core)?;
                    let ums = tokio::net::TcpListener::from_std(ums)?;
                    tokio::spawn(http::serve(
                        core,
                        thread_shared.clone(),
                        http::Service::Core,
                    ));
                    tokio::spawn(http::serve(ums, thread_shared.clone(), http::Service::Ums));
                    anyhow::Ok(())
                });
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if ok {
                    // Serve until every World handle is gone.
                    let _ = runtime.block_on(alive_rx);
                }
                thread_shared.shutdown.send_replace(true);
                runtime.shutdown_background();
            })
            .context("cannot spawn the world's thread")?;
        ready_rx
            .await
            .context("the world's thread died during startup")??;
        Ok(World {
            shared,
            core_addr,
            ums_addr,
            _alive: Arc::new(alive_tx),
        })
    }

    /// `http://127.0.0.1:PORT` of the DIAL Core stand-in (no trailing slash).
    pub fn core_url(&self) -> String {
        format!("http://{}", self.core_addr)
    }

    /// `http://127.0.0.1:PORT` of the UMS stand-in (no trailing slash).
    pub fn ums_url(&self) -> String {
        format!("http://{}", self.ums_addr)
    }

    /// Every request received by either server so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Sets (replaces) the fault of `target`: `routing`, `synthesis`, `ums` or
    /// `deployment:<name>`.
    ///
    /// # Panics
    /// On any other target, so that a typo cannot silently disable a fault test.
    pub fn set_fault(&self, target: &str, fault: Fault) {
        assert!(
            valid_target(target),
            "unknown fault target {target:?}: use routing, synthesis, ums or deployment:<name>"
        );
        lock(&self.shared.faults).insert(target.to_owned(), fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Stops accepting connections; open connections finish their current response and
    /// close (hanging responses are dropped). Best effort and idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// The control API (`/_world/...` on the Core port).
fn control(shared: &Shared, method: &hyper::Method, path: &str, body: &[u8]) -> Reply {
    use hyper::Method;
    let rest = path.trim_start_matches("/_world").trim_start_matches('/');
    match (method, rest) {
        (&Method::GET, "requests") => {
            let requests = lock(&shared.requests);
            match serde_json::to_string(&*requests) {
                Ok(json) => Reply::Json(json),
                Err(e) => control_error(500, &e.to_string()),
            }
        }
        (&Method::DELETE, "requests") => {
            let mut requests = lock(&shared.requests);
            let n = requests.len();
            requests.clear();
            Reply::Json(obj(&[("cleared", n.to_string())]))
        }
        (&Method::GET, "faults") => {
            let faults = lock(&shared.faults);
            match serde_json::to_string(&*faults) {
                Ok(json) => Reply::Json(json),
                Err(e) => control_error(500, &e.to_string()),
            }
        }
        (&Method::DELETE, "faults") => {
            lock(&shared.faults).clear();
            Reply::Json("{}".to_owned())
        }
        (method, rest) if rest.starts_with("faults/") => {
            let target = json::percent_decode(&rest["faults/".len()..]);
            if !valid_target(&target) {
                return control_error(
                    400,
                    &format!(
                        "unknown fault target {target:?}: use routing, synthesis, ums or deployment:<name>"
                    ),
                );
            }
            match *method {
                Method::PUT | Method::POST => match serde_json::from_slice::<Fault>(body) {
                    Ok(fault) => {
                        let reply = serde_json::to_string(&fault).unwrap_or_default();
                        lock(&shared.faults).insert(target.clone(), fault);
                        Reply::Json(obj(&[("target", s(&target)), ("fault", reply)]))
                    }
                    Err(e) => control_error(400, &format!("invalid fault: {e}")),
                },
                Method::DELETE => {
                    lock(&shared.faults).remove(&target);
                    Reply::Json("{}".to_owned())
                }
                _ => control_error(405, "method not allowed"),
            }
        }
        _ => control_error(
            404,
            &format!(
                "unknown control endpoint {method} {path}; try {}",
                arr(&[
                    s("GET /_world/requests"),
                    s("DELETE /_world/requests"),
                    s("PUT /_world/faults/<target>"),
                    s("DELETE /_world/faults")
                ])
            ),
        ),
    }
}

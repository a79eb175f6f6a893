//! # The local DIAL world
//!
//! `mas-world` stands in for everything the MAS coordinator talks to — DIAL Core (with an
//! LLM deployment and General-purpose-Agent / RAG deployments behind it) and the UMS agent
//! (a primary and a backup instance) — as three small HTTP/1.1 servers on `127.0.0.1`. It
//! is used by the run command, the end-to-end tests and the benchmarks. Every answer is a
//! deterministic function of the request (plus a few per-world counters), every request
//! is recorded, and faults can be injected per target.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mas_world::{Fault, FaultKind, World, WorldOptions};
//! let world = World::start(WorldOptions::default()).await?;
//! // point the coordinator at world.core_url() / world.ums_url() / world.ums_backup_url() ...
//! world.set_fault("deployment:general-purpose-agent", Fault { kind: FaultKind::Down, ..Fault::default() });
//! let seen = world.requests();
//! # Ok(()) }
//! ```
//!
//! The binary `mas-world [--core-addr 127.0.0.1:8080] [--ums-addr 127.0.0.1:8042]
//! [--ums-backup-addr 127.0.0.1:8043] [--llm-deployment gpt-4o]
//! [--gpa-deployment general-purpose-agent] [--apps apps.json]` runs the same world until
//! SIGINT/SIGTERM. Every address must be a loopback address ([`WorldOptions`] defaults to
//! port 0, a free port, for all three). `--apps` names a file holding a JSON array of
//! [`App`]s (below).
//!
//! ## DIAL Core stand-in
//!
//! `POST /openai/deployments/{name}/chat/completions[?query]` — any deployment name is
//! served: the configured LLM deployment (default `gpt-4o`) behaves as the **LLM**; every
//! other name starting with `rag` (case-sensitive, e.g. `rag-agent`) behaves as the
//! **RAG** agent; every other name (the GPA deployment `general-purpose-agent`, backups
//! such as `gpa-backup`, …) behaves as a **GPA**.
//!
//! * A non-empty `api-key` header is required, else 401
//!   `{"error":{"message":"Missing API key","type":"invalid_request_error","code":"401"}}`.
//! * The body must be a JSON object with a `messages` array, else 400 (DIAL error body).
//! * Any other path or method → 404 (DIAL error body).
//! * *Text of a message*: a string `content`, or the `text` of every `{"type":"text"}`
//!   part joined with `"\n"`. *Last user text*: the text of the last message whose role is
//!   `user` (empty if none).
//! * Streaming (`"stream": true`) answers are `200 text/event-stream; charset=utf-8` with
//!   the aidial-sdk chunk format (docs/protocol.md §2): each event `data: <compact JSON>\n\n`,
//!   envelope `{"choices":[{"index":0,"finish_reason":null,"delta":{..}}],"usage":null,"id":"chatcmpl-world-<n>","created":<unix secs>,"object":"chat.completion.chunk"}`,
//!   first the role chunk `{"role":"assistant"}`, exactly one kind of update per delta, the
//!   stop chunk last (`"finish_reason":"stop"`, `"delta":{}`, and
//!   `"usage":{"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C}`), then
//!   `data: [DONE]\n\n`. `P` = number of whitespace-separated words in the texts of all
//!   request messages, `C` = the same for the concatenation of all choice content sent
//!   (pieces are not word boundaries). `<n>` is a per-world counter shared by all
//!   responses. Streams are generated while they are sent, so bulk answers (below) never
//!   sit in memory.
//! * Non-streaming answers: `{"id":..,"object":"chat.completion","created":..,"model":"<name>","choices":[{"index":0,"message":{"role":"assistant","content":".."},"finish_reason":"stop"}],"usage":{..}}`
//!   (`C` = the words of `content`).
//!
//! ### The LLM deployment
//!
//! * **Agent names (ENUM)** — of a request with
//!   `response_format: {"type":"json_schema","json_schema":{"name":..,"schema":S}}`: every
//!   object member named `agent_name` anywhere in `S` (the whole document, `$defs`
//!   included) whose value is an object with an `enum` array; the union of those arrays'
//!   strings (other items ignored), in order of first appearance in the request text.
//!   *Mention*: text contains `@<name>` for a name in ENUM, ignoring case (a plain
//!   substring test, so `@gpa_backup` also mentions `GPA`); the first such name in ENUM
//!   order wins and is answered spelled as in ENUM.
//! * **Routing** — non-streaming with `response_format.type == "json_schema"` and no
//!   `subtasks` member in `S.properties`. On the last user text, lowercased, the first
//!   matching rule decides the content:
//!
//!   | last user text contains | content |
//!   |---|---|
//!   | `help me with <who>` (any case; *Asking* below) | `{"agent_name":"GPA","additional_instructions":null,"ask_user":<question>}` |
//!   | a mention of `<name>` | `{"agent_name":"<name>","additional_instructions":null}` |
//!   | `[route:garbage]` | `this is not json` |
//!   | `[route:unknown]` | `{"agent_name":"XYZ","additional_instructions":null}` |
//!   | `[route:instructions]` | `{"agent_name":"GPA","additional_instructions":"Be brief."}` |
//!   | `user` or `account` | `{"agent_name":"UMS","additional_instructions":null}` |
//!   | anything else | `{"agent_name":"GPA","additional_instructions":null}` |
//!
//! * **Plans** — non-streaming `json_schema` requests whose `S.properties` has a
//!   `subtasks` member (the coordinator's plan schema). The content is compact JSON
//!   `{"subtasks":[{"task_id":1,"agent_name":"UMS","task_description":"..","depends_on":[]},..],"replan":false}`.
//!   `L` = the text of the *last* message (whatever its role). If `L` contains
//!   `## COMPLETED SUBTASKS:` this is a *re-plan round*: `t` = the text before the first
//!   `\n\n## COMPLETED SUBTASKS:` (if there is none, before the first marker), untrimmed,
//!   and `k` = the number of occurrences of `### Task ` in `L`; otherwise (first round)
//!   `t` = `L`, `k` = 0. On `tl` = `t` lowercased, the first matching rule decides
//!   (tasks written `{task_id, agent_name, task_description, depends_on}`):
//!
//!   | rule | plan |
//!   |---|---|
//!   | first round, `help me with <who>` (*Asking* below) | `[]`, replan `false`, `"ask_user":<question>` |
//!   | `[plan:garbage]` | content `this is not json` |
//!   | `[plan:replan-forever]` | `[{k+1, "GPA", "round <k+1>", []}]`, replan `true` |
//!   | `[plan:replan-repeat]` | `[{1, "GPA", t, []}]`, replan `true` |
//!   | a re-plan round | `[]`, replan `false` |
//!   | `[plan:cycle]` | `[{1, "GPA", t, [2]}, {2, "GPA", t, [1]}]`, replan `false` |
//!   | `[plan:unknown-agent]` | `[{1, "XYZ", t, []}]`, replan `false` |
//!   | `[plan:many]` | `{i, "GPA", "part <i>", []}` for i = 1..12, replan `false` |
//!   | `[plan:replan-once]` | `[{1, "GPA", t, []}]`, replan `true` |
//!   | anything else | the parts of `t`, replan `false` |
//!
//!   *Parts*: if `tl` contains ` and then `, `t` is split at every ASCII-case-insensitive
//!   ` and then ` and the parts form a chain (task `i` has `depends_on` `[i-1]`, the first
//!   `[]`); otherwise it is split at every ASCII-case-insensitive `also,` and the parts
//!   are independent (`[]`). Parts are trimmed, empty ones dropped, then numbered 1..n.
//!   A part's agent: the name it mentions; else `UMS` if it contains `user` or `account`
//!   (lowercased); else `GPA`. Its `task_description` is the trimmed part. E.g.
//!   `Do we have user John? Also, what's the weather in Paris?` →
//!   `[{1,"UMS","Do we have user John?",[]},{2,"GPA","what's the weather in Paris?",[]}]`
//!   and `Add Andrej Karpathy as a user and then find news about him` →
//!   `[{1,"UMS","Add Andrej Karpathy as a user",[]},{2,"GPA","find news about him",[1]}]`.
//! * **Asking** — only when `S.properties` has an `ask_user` member and the text
//!   mentions no agent: the text contains `help me with ` (ASCII case ignored) followed
//!   by `<who>` = the rest, trimmed, without trailing `?`, `.` or `!` (not empty). Then
//!   `<question>` = `{"question":"Do you mean <who> in the user records, or should I
//!   search the web about <who>?","options":["The user record of <who>","A web search
//!   about <who>"]}`. The answers are planned and routed by the rules above: the first
//!   option mentions `user`, so it goes to UMS; the second goes to GPA.
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
//! ### GPA deployments (every other name)
//!
//! Streaming only (non-streaming → 400 `stream required`). With `t` = last user text and
//! `tl` = `t` lowercased; stage indices count from 0 per response, in order of opening.
//! *Numeric keywords* are written `[gpa:<name>=N]` with `N` decimal digits (only the first
//! `[gpa:<name>=` counts; anything but digits up to the next `]` disables the keyword;
//! values above the cap are capped).
//!
//! 0. `tl` contains `[gpa:http500]` → HTTP 500 before any body, with Core's error body
//!    `{"error":{"message":"GPA failed on this request","type":"runtime_error","code":"500"}}`
//!    (an answer, not a fault: body faults do not alter it). Else, after the role chunk:
//!    `tl` contains `[gpa:crash]` → content `Working. `, then the event
//!    `data: {"error":{"message":"tool crashed","type":"runtime_error","code":"500"}}` and
//!    `data: [DONE]`: no stop chunk, no state, nothing else. Else, `[gpa:slow-tool=MS]`
//!    (cap 600000) → content `Working. `, then the stream pauses `MS` milliseconds, then
//!    goes on with the steps below.
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
//!    `failing_tool` opened and closed with status `failed`. `[gpa:stages=N]` (cap
//!    100000) → `N` stages `bulk_<i>` (i = 0..N-1), each opened
//!    `{"index":..,"name":"bulk_<i>","status":null}` and closed completed.
//! 5. `[gpa:text-bytes=N]` (cap 100 MiB = 104857600) → `N` bytes of `x` as choice
//!    content, in deltas of 1024 bytes (the last one shorter). Then the summary choice
//!    content, exactly
//!    `GPA[<deployment>] got <N> messages (<roles joined by ",">), <K> with tool_call_history; request: <t>`
//!    (`N` = number of messages received, `K` = number of assistant messages whose
//!    `custom_content.state.tool_call_history` is an array); then, if step 2 ran, the
//!    choice attachment `{"attachments":[{"index":0,"type":"image/png","title":"image-<n>.png","url":"<url>"}]}`;
//!    then for `[gpa:attachments=N]` (cap 100000) `N` more choice attachments, one delta
//!    each, `{"attachments":[{"index":<o+i>,"type":"text/plain","title":"a<i>.txt","url":"files/world-bucket/bulk/a<i>.txt"}]}`
//!    for i = 0..N-1, where `o` = 1 if step 2 ran, else 0 (indices continue after the
//!    image's, titles always start at `a0.txt`).
//! 6. Exactly one state chunk `{"state":{"tool_call_history":[..]}}`: for each tool of
//!    steps 1–2 (k = 1, 2, … in order) the assistant message
//!    `{"role":"assistant","content":"","custom_content":{"attachments":[]},"tool_calls":[{"index":0,"id":"call_<k>","type":"function","function":{"name":"<tool>","arguments":"<args JSON>"}}]}`
//!    followed by `{"role":"tool","content":"<result>","tool_call_id":"call_<k>","name":"<tool>"}`
//!    (results: `Kyiv: +5°C, light rain` and `Generated image: <url>`); `[]` when no tool
//!    ran. `[gpa:state-bytes=N]` (cap 100 MiB) adds a second key:
//!    `{"state":{"tool_call_history":[..],"padding":"<N × x>"}}`.
//! 7. The stop chunk with usage, then `[DONE]`.
//!
//! Stage/state/attachment deltas are wrapped as `{"custom_content":{"stages":[..]}}`,
//! `{"custom_content":{"attachments":[..]}}` and `{"custom_content":{"state":..}}`.
//!
//! ### The RAG agent (names starting with `rag`)
//!
//! Streaming only (non-streaming → 400 `stream required`), same envelope and rules as
//! GPA, no keywords. With `t` = last user text, `n` a per-world counter starting at 1
//! (separate from the image counter) and `src` =
//! `{"index":0,"type":"text/markdown","title":"source-<n>.md","url":"files/world-bucket/rag/source-<n>.md"}`,
//! after the role chunk: stage `retrieve` (index 0) opened; stage content
//! `Searching the knowledge base for: <t>`; stage attachment
//! `{"index":0,"attachments":[src],"status":null}`; closed completed; the choice content
//! exactly `RAG[<deployment>] got <N> messages (<roles joined by ",">), <K> with rag state; request: <t>`
//! (`K` = number of assistant messages whose `custom_content.state.rag_turn` is a number);
//! the choice attachment `{"attachments":[src]}`; exactly one state chunk
//! `{"state":{"rag_turn":<K+1>,"sources":["source-<n>.md"]}}`; the stop chunk with usage;
//! `[DONE]`.
//!
//! ## Applications (on the Core port)
//!
//! An [`App`] is an application instance of a custom application type, as DIAL Core runs
//! one: `{"name":"hr-assistant","completion_endpoint":"http://127.0.0.1:8055/openai/deployments/hr-assistant/chat/completions","configuration_endpoint":"http://127.0.0.1:8055/openai/deployments/hr-assistant/configuration","properties":{"plan_approval":"never"}}`
//! (`configuration_endpoint` optional, `properties` a JSON object, default `{}`; unknown
//! fields are errors). The endpoints are full `http://` URLs used as they are, like the
//! type schema's `dial:applicationTypeCompletionEndpoint` and
//! `dial:applicationTypeConfigurationEndpoint`; nothing is appended to them but the
//! client's query string (to the completion call only). They are only configuration: the
//! application need not run before the world starts. Applications come from
//! [`WorldOptions::apps`], [`World::set_app`] (replaces by name; [`World::clear_apps`]) or
//! `--apps`. Only configured names change: a configured name is forwarded even if it
//! is the LLM deployment or starts with `rag`, and every other name keeps the behaviour
//! below.
//!
//! * `POST /openai/deployments/<name>/chat/completions[?query]` → the same method, body
//!   and headers to `completion_endpoint[?query]`, except: the hop-by-hop headers,
//!   `Host` and `Content-Length` are those of the new connection, and any client-sent
//!   `X-DIAL-APPLICATION-ID` / `X-DIAL-APPLICATION-PROPERTIES` (any case) are dropped and
//!   replaced by `X-DIAL-APPLICATION-ID: <name>` and `X-DIAL-APPLICATION-PROPERTIES:
//!   <properties as compact JSON>` (non-ASCII as raw UTF-8, not escaped). The client's
//!   `api-key` goes on as the per-request key, with `Authorization`,
//!   `X-CONVERSATION-ID`, `traceparent` and every other header. The body is not checked.
//! * `GET /v1/deployments/<name>/configuration` → a `GET` to `configuration_endpoint`
//!   with the same headers (no query); with no configuration endpoint, 200 with an empty
//!   body and no content type.
//! * Both need a non-empty `api-key` header, else Core's 401 (nothing is forwarded).
//! * The answer is the application's: status and headers (but the hop-by-hop ones) kept,
//!   the body passed on frame by frame as it arrives, never collected; a body the
//!   application cuts is cut for the client too, and a client that goes away closes the
//!   application's connection. An application that cannot be reached (connection refused,
//!   no response head) → 502 `{"error":{"message":"The application <name> could not be reached: <why>","type":"runtime_error","code":"502"}}`.
//! * Faults do not apply (the application is what is under test).
//!
//! ## UMS stand-ins (each on its own port, docs/protocol.md §3)
//!
//! Two instances with the same API and behaviour, each with its *own* conversation store
//! and counters: the primary ([`World::ums_url`], ids `ums-conv-<NNNN>`, recorded as
//! service `ums`, fault target `ums`) and the backup ([`World::ums_backup_url`], ids
//! `ums-b-conv-<NNNN>`, service `ums-backup`, fault target `ums-backup`). Below, the
//! primary's ids are shown.
//!
//! * `GET /health` → `{"status":"healthy","conversation_manager_initialized":true}`.
//! * `POST /conversations` — the body must be a JSON object (else 422
//!   `{"detail":[{"type":"missing","loc":["body"],"msg":"Field required"}]}`); `title` is a
//!   string or null. → `{"id":"ums-conv-<NNNN>","title":..,"messages":[],"created_at":"<ISO-8601>","updated_at":"<same>"}`
//!   with a per-instance 4-digit counter starting at `0001`.
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
//! ## A2A weather agent (on the Core port)
//!
//! An Agent2Agent protocol 1.0 agent under `/a2a/weather` (its base URL is
//! `<core_url>/a2a/weather`), answering as the official SDK frames it
//! (docs/protocol.md §4a); its requests are recorded as service `core`.
//!
//! * `GET /a2a/weather/.well-known/agent-card.json` → the card: name `Weather Agent`,
//!   description `Answers weather questions for any city.`, one skill (`Forecast`, with an
//!   example), `capabilities.streaming: true`, one interface
//!   `{"url":"http://<Host header>/a2a/weather/rpc","protocolBinding":"JSONRPC","protocolVersion":"1.0"}`.
//! * `POST /a2a/weather/rpc` — without `A2A-Version: 1.0` → JSON-RPC error -32009; a body
//!   that is not JSON → -32700; a method other than `SendStreamingMessage` / `SendMessage`
//!   → -32601 (all with HTTP 200). `text` = the message's text parts joined with `\n`. A
//!   message with a `taskId` must name a task waiting for a city (else -32602); otherwise a
//!   new task `world-task-<n>` in the message's `contextId`, or a new context
//!   `world-ctx-<n>` (one per-world counter for both). `turn` counts the messages of the
//!   context. The city is the resumed message's text (trimmed, without trailing `?.!`), or
//!   the words after the last ` in ` of `text`, the same way. With a city: a status update
//!   `TASK_STATE_WORKING` with the message `Checking the forecast.`, one artifact
//!   `forecast` with the text `WEATHER[<context>#<turn>]: Forecast for <city>: +5°C, light
//!   rain.`, then `TASK_STATE_COMPLETED`. Without one: `TASK_STATE_INPUT_REQUIRED` with the
//!   message `Which city?`, and the task waits. Streams start with the task
//!   (`TASK_STATE_SUBMITTED`), are `text/event-stream` with CRLF line ends and no end
//!   marker; `SendMessage` answers the final task (with its artifact) as JSON.
//!
//! ## Recording
//!
//! Every request any server receives (except the control API) is recorded as a
//! [`Recorded`] in arrival order, including requests that are then refused or faulted;
//! [`Recorded::service`] is `core`, `ums` or `ums-backup`. A call forwarded to an
//! application is recorded a second time, as sent, just before it is sent: service
//! `app`, the endpoint's path and query, the headers as sent (`host` and the two
//! application headers included).
//!
//! ## Faults
//!
//! [`World::set_fault`] targets:
//!
//! * `routing` — non-streaming calls of the LLM deployment (routing and plans);
//! * `synthesis` — streaming calls of the LLM deployment;
//! * `deployment:<name>` — every call of that deployment (for the LLM deployment,
//!   `routing`/`synthesis` win when set);
//! * `ums` — every endpoint of the primary UMS (only);
//! * `ums-backup` — every endpoint of the backup UMS.
//!
//! Faults apply after the api-key and body checks. [`Fault::first_byte_delay_ms`]
//! delays the response head, [`Fault::chunk_delay_ms`] sleeps between body frames (SSE
//! events; a `[gpa:slow-tool]` pause comes on top), for every kind. Kinds (serde
//! `snake_case`, e.g. `"no_event_boundary"`):
//!
//! * `None` — normal answer (only the delays apply);
//! * `Down` — the connection is closed without any response;
//! * `Status` — `status` (default 500) before any body: Core answers
//!   `{"error":{"message":"injected fault","type":"runtime_error","code":"<status>"}}` (a 429
//!   with `Retry-After: 7`), UMS
//!   `text/plain` `Internal Server Error`; [`Fault::message`], when set, replaces
//!   `injected fault` and `Internal Server Error`; the handler does not run;
//! * `ErrorMidStream` — streams: the first two events (the role chunk / the UMS
//!   `conversation_id` event, and the next one; pauses are not events and are skipped),
//!   then
//!   `data: {"error":{"message":"injected mid-stream error","type":"runtime_error","code":"500"}}`
//!   and `data: [DONE]`; JSON answers: 200 with that error object as the body;
//! * `DropMidStream` — streams: the first two events, then the connection is cut without
//!   terminating the chunked body; JSON answers: the first half of the body, then the cut;
//! * `Garbage` — 200 with an invalid body: streams `data: this is not json` twice then
//!   `data: [DONE]`; JSON answers `<html>not json</html>` (still `application/json`);
//! * `Hang` — no response head until the client goes away (or the world shuts down);
//! * `DribbleError` — a response head with `status` (default 503) and
//!   `content-type: text/plain`, then the (chunked) body
//!   `Service Unavailable: the upstream is overloaded, please retry later.` one byte per
//!   frame, `chunk_delay_ms` between bytes (1000 when `chunk_delay_ms` is 0); the handler
//!   does not run;
//! * `NoEventBoundary` — a `200 text/event-stream; charset=utf-8` head, then lines
//!   `data: xxx…\n` of exactly 1024 bytes each (never a blank line, so never a complete
//!   SSE event), 64 lines per frame, `chunk_delay_ms` between frames (0 = as fast as
//!   possible), until 256 MiB (4096 frames) have been sent — then the chunked body ends
//!   normally — or the client goes away, or the world shuts down; the handler does not
//!   run.
//!
//! Body faults (`ErrorMidStream`, `DropMidStream`, `Garbage`) only alter successful
//! answers; error answers (401, 404, 422, `[gpa:http500]`, …) are sent unchanged. Handler
//! side effects (creating UMS conversations, storing messages, the image and source
//! counters) happen for those kinds, not for `Down`, `Status`, `Hang`, `DribbleError` or
//! `NoEventBoundary`.
//!
//! ## Control API (on the Core port, never recorded)
//!
//! * `GET /_world/requests` → JSON array of [`Recorded`]; `DELETE /_world/requests`.
//! * `PUT /_world/faults/<target>` with a [`Fault`] JSON body (missing fields default,
//!   e.g. `{"kind":"status","status":503}`); `GET /_world/faults`;
//!   `DELETE /_world/faults/<target>`; `DELETE /_world/faults`. Unknown targets → 400
//!   `unknown fault target "<target>": use routing, synthesis, ums, ums-backup or deployment:<name>`.

// This file puts the modules together; none of them uses it, and they use each other
// without a cycle (world/tests/architecture.rs).
mod a2a;
mod agents;
mod apps;
mod chunks;
mod conversations;
mod core;
mod fault;
mod http;
mod json;
mod llm;
mod schema;
mod state;
mod ums;

pub use apps::App;
pub use fault::{Fault, FaultKind};
pub use state::Recorded;

use anyhow::Context as _;
use apps::Apps;
use fault::{valid_target, TARGETS};
use http::{control_error, finish, Abort, Body, Reply, Service};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use json::{arr, obj, s};
use state::{lock, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Where the world listens and which deployment names mean what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldOptions {
    /// The DIAL Core stand-in's address (loopback only; port 0 picks a free port).
    pub core_addr: SocketAddr,
    /// The UMS stand-in's address (loopback only; port 0 picks a free port).
    pub ums_addr: SocketAddr,
    /// The backup UMS stand-in's address (loopback only; port 0 picks a free port).
    pub ums_backup_addr: SocketAddr,
    /// The deployment served as the LLM; every other deployment name is a GPA.
    pub llm_deployment: String,
    /// The default GPA deployment name (informational: every non-LLM name is a GPA).
    pub gpa_deployment: String,
    /// Application instances the DIAL Core stand-in forwards to (names must differ).
    pub apps: Vec<App>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            core_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ums_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ums_backup_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            llm_deployment: "gpt-4o".to_owned(),
            gpa_deployment: "general-purpose-agent".to_owned(),
            apps: Vec::new(),
        }
    }
}

/// Handle to a running world. Cheap to clone; the servers stop when the last handle is
/// dropped (or earlier, on [`World::shutdown`]).
#[derive(Clone)]
pub struct World {
    shared: Arc<Shared>,
    apps: Arc<Apps>,
    core_addr: SocketAddr,
    ums_addr: SocketAddr,
    ums_backup_addr: SocketAddr,
    /// Dropping the last clone ends the world's runtime thread.
    _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("core_url", &self.core_url())
            .field("ums_url", &self.ums_url())
            .field("ums_backup_url", &self.ums_backup_url())
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
    /// Binds the three servers and starts serving them on a dedicated runtime thread (so the
    /// world keeps answering even if the caller's runtime blocks).
    pub async fn start(opts: WorldOptions) -> anyhow::Result<World> {
        let apps = Arc::new(Apps::default());
        for (i, app) in opts.apps.iter().enumerate() {
            anyhow::ensure!(
                opts.apps[..i].iter().all(|other| other.name != app.name),
                "application {} is configured twice",
                app.name
            );
            apps.set(app.clone())?;
        }
        let core = bind(opts.core_addr, "DIAL Core")?;
        let ums = bind(opts.ums_addr, "UMS")?;
        let ums_backup = bind(opts.ums_backup_addr, "backup UMS")?;
        let core_addr = core.local_addr()?;
        let ums_addr = ums.local_addr()?;
        let ums_backup_addr = ums_backup.local_addr()?;
        let shared = Arc::new(Shared::new(opts.llm_deployment));
        let (alive_tx, alive_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
        let thread_shared = shared.clone();
        let thread_apps = apps.clone();
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
                    let ums_backup = tokio::net::TcpListener::from_std(ums_backup)?;
                    let servers = [
                        (core, Service::Core),
                        (ums, Service::Ums),
                        (ums_backup, Service::UmsBackup),
                    ];
                    for (listener, service) in servers {
                        let shared = thread_shared.clone();
                        let apps = thread_apps.clone();
                        let shutdown = shared.shutdown.subscribe();
                        tokio::spawn(http::serve(listener, shutdown, move |request| {
                            handle(shared.clone(), apps.clone(), service, request)
                        }));
                    }
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
            apps,
            core_addr,
            ums_addr,
            ums_backup_addr,
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

    /// `http://127.0.0.1:PORT` of the backup UMS stand-in (no trailing slash).
    pub fn ums_backup_url(&self) -> String {
        format!("http://{}", self.ums_backup_addr)
    }

    /// Every request received by any server so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Sets (replaces) the fault of `target`: `routing`, `synthesis`, `ums`, `ums-backup`
    /// or `deployment:<name>`.
    ///
    /// # Panics
    /// On any other target, so that a typo cannot silently disable a fault test.
    pub fn set_fault(&self, target: &str, fault: Fault) {
        assert!(
            valid_target(target),
            "unknown fault target {target:?}: use {TARGETS}"
        );
        lock(&self.shared.faults).insert(target.to_owned(), fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Adds (or replaces, by name) an application the DIAL Core stand-in forwards to.
    /// Fails when the world cannot serve it (a name with `/`, an endpoint that is not an
    /// `http://` URL, properties that are not a JSON object).
    pub fn set_app(&self, app: App) -> anyhow::Result<()> {
        self.apps.set(app)
    }

    /// Removes every application: their names are the scripted deployments again.
    pub fn clear_apps(&self) {
        self.apps.clear();
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
                    &format!("unknown fault target {target:?}: use {TARGETS}"),
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

/// Answers one request to `service`: the control API, or (recorded first) the DIAL
/// Core or UMS stand-in.
async fn handle(
    shared: Arc<Shared>,
    apps: Arc<Apps>,
    service: Service,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Abort("could not read the request body")),
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    if service == Service::Core && (path == "/_world" || path.starts_with("/_world/")) {
        let reply = control(&shared, &parts.method, &path, &body);
        return Ok(finish(reply, &Fault::default()));
    }
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.record(Recorded {
        service: service.name().to_owned(),
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match service {
        Service::Core => {
            let query = parts.uri.query();
            core::handle(
                &shared,
                &apps,
                &parts.method,
                &parts.headers,
                &path,
                query,
                &body,
            )
            .await
        }
        Service::Ums | Service::UmsBackup => {
            ums::handle(&shared, service, &parts.method, &path, &body).await
        }
    }
}

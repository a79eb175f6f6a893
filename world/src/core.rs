//! The DIAL Core stand-in: `POST /openai/deployments/{name}/chat/completions`, where the
//! configured LLM deployment is the scripted LLM and every other name is a scripted GPA.

use crate::http::{finish, pre_fault, Abort, Body, Reply, Service};
use crate::json::{arr, last_user_text, message_text, obj, s, split_words, unix_now, word_count};
use crate::Shared;
use hyper::{HeaderMap, Method, Response};
use serde_json::Value;

/// The text the LLM answers when it has nothing more specific to say.
pub(crate) const LLM_HELLO: &str = "Hello from the local LLM.";
/// The result of GPA's scripted `web_search` tool.
pub(crate) const WEATHER: &str = "Kyiv: +5°C, light rain";
/// GPA's choice content after the `web_search` stage.
pub(crate) const WEATHER_SUMMARY: &str = "Weather in Kyiv: +5°C, light rain. ";

pub(crate) async fn handle(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<Response<Body>, Abort> {
    let no_fault = crate::Fault::default();
    let name = match deployment_of(path) {
        Some(name) if method == Method::POST => name,
        _ => {
            let reply = Reply::dial_error(
                404,
                "invalid_request_error",
                &format!("Not found: {method} {path}"),
            );
            return Ok(finish(reply, &no_fault));
        }
    };
    let has_key = headers
        .get("api-key")
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
    if !has_key {
        let reply = Reply::dial_error(401, "invalid_request_error", "Missing API key");
        return Ok(finish(reply, &no_fault));
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let reply = Reply::dial_error(
                400,
                "invalid_request_error",
                "The request body must be a JSON object",
            );
            return Ok(finish(reply, &no_fault));
        }
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        let reply = Reply::dial_error(
            400,
            "invalid_request_error",
            "The request body must have a `messages` array",
        );
        return Ok(finish(reply, &no_fault));
    };
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let is_llm = name == shared.llm_deployment;
    let deployment_key = format!("deployment:{name}");
    let fault = if is_llm {
        let specific = if stream { "synthesis" } else { "routing" };
        shared.fault_for(&[specific, &deployment_key])
    } else {
        shared.fault_for(&[&deployment_key])
    };
    if let Some(resp) = pre_fault(shared, &fault, Service::Core).await? {
        return Ok(resp);
    }
    let reply = if is_llm {
        llm(shared, name, &request, messages, stream)
    } else {
        gpa(shared, name, messages, stream)
    };
    Ok(finish(reply, &fault))
}

/// `/openai/deployments/{name}/chat/completions` → `name`.
fn deployment_of(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/openai/deployments/")?
        .strip_suffix("/chat/completions")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn usage(prompt: u64, completion: u64) -> String {
    obj(&[
        ("prompt_tokens", prompt.to_string()),
        ("completion_tokens", completion.to_string()),
        ("total_tokens", (prompt + completion).to_string()),
    ])
}

fn prompt_tokens(messages: &[Value]) -> u64 {
    messages.iter().map(|m| word_count(&message_text(m))).sum()
}

/// Builds the chunks of one streamed response (PROTOCOL §2.2 envelope).
struct Chunks {
    id: String,
    created: u64,
    events: Vec<String>,
    completion: String,
    next_stage: u64,
}

impl Chunks {
    fn new(shared: &Shared) -> Chunks {
        let mut chunks = Chunks {
            id: shared.next_response_id(),
            created: unix_now(),
            events: Vec::new(),
            completion: String::new(),
            next_stage: 0,
        };
        chunks.delta(&obj(&[("role", s("assistant"))]));
        chunks
    }

    fn chunk(&mut self, delta: &str, finish_reason: &str, usage: &str) {
        let choice = obj(&[
            ("index", "0".into()),
            ("finish_reason", finish_reason.into()),
            ("delta", delta.into()),
        ]);
        self.events.push(obj(&[
            ("choices", arr(&[choice])),
            ("usage", usage.into()),
            ("id", s(&self.id)),
            ("created", self.created.to_string()),
            ("object", s("chat.completion.chunk")),
        ]));
    }

    fn delta(&mut self, delta: &str) {
        self.chunk(delta, "null", "null");
    }

    fn content(&mut self, text: &str) {
        self.completion.push_str(text);
        self.delta(&obj(&[("content", s(text))]));
    }

    fn custom(&mut self, custom_content: String) {
        self.delta(&obj(&[("custom_content", custom_content)]));
    }

    fn stage(&mut self, stage: String) {
        self.custom(obj(&[("stages", arr(&[stage]))]));
    }

    /// Opens a stage and returns its index.
    fn open_stage(&mut self, name: &str, parent: Option<u64>) -> u64 {
        let index = self.next_stage;
        self.next_stage += 1;
        let mut fields = vec![
            ("index", index.to_string()),
            ("name", s(name)),
            ("status", "null".to_owned()),
        ];
        if let Some(parent) = parent {
            fields.push(("parent_stage_index", parent.to_string()));
        }
        self.stage(obj(&fields));
        index
    }

    fn stage_content(&mut self, index: u64, content: &str) {
        self.stage(obj(&[
            ("index", index.to_string()),
            ("content", s(content)),
            ("status", "null".into()),
        ]));
    }

    fn close_stage(&mut self, index: u64, status: &str) {
        self.stage(obj(&[("index", index.to_string()), ("status", s(status))]));
    }

    fn stop(mut self, prompt: u64) -> Vec<String> {
        let completion = word_count(&self.completion);
        self.chunk("{}", &s("stop"), &usage(prompt, completion));
        self.events
    }
}

fn llm(shared: &Shared, name: &str, request: &Value, messages: &[Value], stream: bool) -> Reply {
    let prompt = prompt_tokens(messages);
    if stream {
        let last = messages.last().map(message_text).unwrap_or_default();
        let reply = synthesis_reply(&last);
        let mut chunks = Chunks::new(shared);
        for piece in split_words(&reply) {
            chunks.content(&piece);
        }
        return Reply::Stream(chunks.stop(prompt));
    }
    let structured = request
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        == Some("json_schema");
    let content = if structured {
        routing_decision(&last_user_text(messages))
    } else {
        LLM_HELLO.to_owned()
    };
    let message = obj(&[("role", s("assistant")), ("content", s(&content))]);
    let choice = obj(&[
        ("index", "0".into()),
        ("message", message),
        ("finish_reason", s("stop")),
    ]);
    Reply::Json(obj(&[
        ("id", s(&shared.next_response_id())),
        ("object", s("chat.completion")),
        ("created", unix_now().to_string()),
        ("model", s(name)),
        ("choices", arr(&[choice])),
        ("usage", usage(prompt, word_count(&content))),
    ]))
}

/// The routing rules (see the crate docs).
pub(crate) fn routing_decision(last_user_text: &str) -> String {
    let t = last_user_text.to_lowercase();
    let decision = |agent: &str, instructions: Option<&str>| {
        obj(&[
            ("agent_name", s(agent)),
            (
                "additional_instructions",
                instructions.map_or_else(|| "null".to_owned(), s),
            ),
        ])
    };
    if t.contains("[route:garbage]") {
        "this is not json".to_owned()
    } else if t.contains("[route:unknown]") {
        decision("XYZ", None)
    } else if t.contains("[route:instructions]") {
        decision("GPA", Some("Be brief."))
    } else if t.contains("user") || t.contains("account") {
        decision("UMS", None)
    } else {
        decision("GPA", None)
    }
}

/// The synthesis rules (see the crate docs).
pub(crate) fn synthesis_reply(last_message_text: &str) -> String {
    const CONTEXT: &str = "## CONTEXT:";
    const REQUEST: &str = "## USER_REQUEST:";
    let Some(start) = last_message_text.find(CONTEXT) else {
        return LLM_HELLO.to_owned();
    };
    let after_context = &last_message_text[start + CONTEXT.len()..];
    let Some(end) = after_context.find(REQUEST) else {
        return LLM_HELLO.to_owned();
    };
    let mut context = after_context[..end].trim();
    if let Some((head, last_line)) = context.rsplit_once('\n') {
        if last_line.trim() == "---" {
            context = head.trim();
        }
    } else if context == "---" {
        context = "";
    }
    format!("Based on the agent's answer: {context}")
}

struct ToolCall {
    tool: &'static str,
    arguments: String,
    result: String,
}

fn gpa(shared: &Shared, name: &str, messages: &[Value], stream: bool) -> Reply {
    if !stream {
        return Reply::dial_error(400, "invalid_request_error", "stream required");
    }
    let t = last_user_text(messages);
    let tl = t.to_lowercase();
    let mut c = Chunks::new(shared);
    let mut calls: Vec<ToolCall> = Vec::new();
    let mut choice_attachment = None;

    if tl.contains("weather") || tl.contains("search") {
        let i = c.open_stage("web_search", None);
        let arguments = obj(&[("query", s(&t))]);
        c.stage_content(
            i,
            &format!("## Request arguments: \n```json\n{arguments}\n```\n## Response: \n"),
        );
        c.stage_content(i, WEATHER);
        c.close_stage(i, "completed");
        c.content(WEATHER_SUMMARY);
        calls.push(ToolCall {
            tool: "web_search",
            arguments,
            result: WEATHER.to_owned(),
        });
    }

    if tl.contains("picture") || tl.contains("image") {
        let n = shared.next_image();
        let url = format!("files/world-bucket/images/image-{n}.png");
        let j = c.open_stage("image_generation_tool", None);
        let arguments = obj(&[("prompt", s(&t))]);
        c.stage_content(
            j,
            &format!("## Request arguments: \n```json\n{arguments}\n```\n"),
        );
        let attachment = obj(&[
            ("index", "0".into()),
            ("type", s("image/png")),
            ("title", s("Generated image")),
            ("url", s(&url)),
        ]);
        c.stage(obj(&[
            ("index", j.to_string()),
            ("attachments", arr(&[attachment])),
            ("status", "null".into()),
        ]));
        c.content(&format!("\n\r![image]({url})\n\r"));
        c.close_stage(j, "completed");
        choice_attachment = Some(obj(&[
            ("index", "0".into()),
            ("type", s("image/png")),
            ("title", s(&format!("image-{n}.png"))),
            ("url", s(&url)),
        ]));
        calls.push(ToolCall {
            tool: "image_generation_tool",
            arguments,
            result: format!("Generated image: {url}"),
        });
    }

    if tl.contains("nested") {
        let p = c.open_stage("planner", None);
        c.stage_content(p, "plan");
        let child = c.open_stage("step_one", Some(p));
        c.stage_content(child, "step");
        c.close_stage(child, "completed");
        c.close_stage(p, "completed");
    }

    if tl.contains("[gpa:open-stage]") {
        let i = c.open_stage("left_open", None);
        c.stage_content(i, "never closed");
    }
    if tl.contains("[gpa:failed-stage]") {
        let i = c.open_stage("failing_tool", None);
        c.close_stage(i, "failed");
    }

    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m.get("role").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    let with_history = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter(|m| {
            m.pointer("/custom_content/state/tool_call_history")
                .is_some_and(Value::is_array)
        })
        .count();
    c.content(&format!(
        "GPA[{name}] got {} messages ({}), {with_history} with tool_call_history; request: {t}",
        messages.len(),
        roles.join(",")
    ));
    if let Some(attachment) = choice_attachment {
        c.custom(obj(&[("attachments", arr(&[attachment]))]));
    }

    let mut history = Vec::new();
    for (k, call) in calls.iter().enumerate() {
        let id = format!("call_{}", k + 1);
        let function = obj(&[("name", s(call.tool)), ("arguments", s(&call.arguments))]);
        let tool_call = obj(&[
            ("index", "0".into()),
            ("id", s(&id)),
            ("type", s("function")),
            ("function", function),
        ]);
        history.push(obj(&[
            ("role", s("assistant")),
            ("content", s("")),
            ("custom_content", obj(&[("attachments", "[]".into())])),
            ("tool_calls", arr(&[tool_call])),
        ]));
        history.push(obj(&[
            ("role", s("tool")),
            ("content", s(&call.result)),
            ("tool_call_id", s(&id)),
            ("name", s(call.tool)),
        ]));
    }
    c.custom(obj(&[(
        "state",
        obj(&[("tool_call_history", arr(&history))]),
    )]));
    Reply::Stream(c.stop(prompt_tokens(messages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_rules() {
        assert_eq!(
            routing_decision("Say [ROUTE:garbage] please"),
            "this is not json"
        );
        assert_eq!(
            routing_decision("[route:unknown] user"),
            r#"{"agent_name":"XYZ","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("[route:instructions] about users"),
            r#"{"agent_name":"GPA","additional_instructions":"Be brief."}"#
        );
        assert_eq!(
            routing_decision("Do we have Andrej Karpathy as a USER?"),
            r#"{"agent_name":"UMS","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("delete the account"),
            r#"{"agent_name":"UMS","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("What is the weather?"),
            r#"{"agent_name":"GPA","additional_instructions":null}"#
        );
    }

    #[test]
    fn synthesis_rules() {
        assert_eq!(
            synthesis_reply("## CONTEXT:\n The agent said hi.\n ---\n ## USER_REQUEST: \n hello"),
            "Based on the agent's answer: The agent said hi."
        );
        assert_eq!(
            synthesis_reply("## CONTEXT:\nline one\nline two\n## USER_REQUEST: x"),
            "Based on the agent's answer: line one\nline two"
        );
        assert_eq!(synthesis_reply("## CONTEXT: only"), LLM_HELLO);
        assert_eq!(synthesis_reply("plain"), LLM_HELLO);
    }

    #[test]
    fn deployment_paths() {
        assert_eq!(
            deployment_of("/openai/deployments/gpt-4o/chat/completions"),
            Some("gpt-4o")
        );
        assert_eq!(deployment_of("/openai/deployments//chat/completions"), None);
        assert_eq!(
            deployment_of("/openai/deployments/a/b/chat/completions"),
            None
        );
        assert_eq!(deployment_of("/openai/deployments/gpt-4o/rate"), None);
    }
}

//! The DIAL Core stand-in: `GET /health`, the configured applications (forwarded by
//! `apps`), and `POST /openai/deployments/{name}/chat/completions`, where the
//! configured LLM deployment is the scripted LLM, names starting with `rag` are the
//! scripted RAG agent and every other name is a scripted GPA.

use crate::agents::{gpa, rag};
use crate::apps::Apps;
use crate::chunks::{usage, Chunks};
use crate::fault::Fault;
use crate::http::{finish, pre_fault, Abort, Body, Reply, Service};
use crate::json::{
    arr, last_user_text, message_text, obj, prompt_tokens, s, split_words, unix_now, word_count,
};
use crate::llm::{plan, routing_decision, synthesis_reply, LLM_HELLO};
use crate::state::Shared;
use bytes::Bytes;
use hyper::{HeaderMap, Method, Response};
use serde_json::Value;

pub(crate) async fn handle(
    shared: &Shared,
    apps: &Apps,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response<Body>, Abort> {
    let no_fault = Fault::default();
    // DIAL Core's own health endpoint: 200 while it serves.
    if path == "/health" && method == Method::GET {
        let reply = Reply::json_status(200, r#"{"status":"ok"}"#.to_owned());
        return Ok(finish(reply, &no_fault));
    }
    // The A2A weather agent lives on this port too.
    if let Some(reply) = crate::a2a::handle(shared, method, headers, path, body) {
        return Ok(finish(reply, &no_fault));
    }
    // A configured application's name is its own, whatever the scripted deployments do.
    if let Some(answer) =
        crate::apps::handle(shared, apps, method, headers, path, query, body).await
    {
        return answer;
    }
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
    if let Some(resp) = pre_fault(&shared.shutdown, &fault, Service::Core).await? {
        return Ok(resp);
    }
    let reply = if is_llm {
        llm(shared, name, &request, body, messages, stream)
    } else if name.starts_with("rag") {
        rag(shared, name, messages, stream)
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

fn llm(
    shared: &Shared,
    name: &str,
    request: &Value,
    body: &[u8],
    messages: &[Value],
    stream: bool,
) -> Reply {
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
        structured_answer(request, body, messages)
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

/// A plan when the schema has a top-level `properties.subtasks` (the coordinator's plan
/// schema), else a routing decision.
fn structured_answer(request: &Value, body: &[u8], messages: &[Value]) -> String {
    let names = crate::schema::agent_names(body);
    let properties = request
        .pointer("/response_format/json_schema/schema/properties")
        .and_then(Value::as_object);
    let is_plan = properties.is_some_and(|p| p.contains_key("subtasks"));
    let can_ask = properties.is_some_and(|p| p.contains_key("ask_user"));
    if is_plan {
        let last = messages.last().map(message_text).unwrap_or_default();
        plan(&last, &names, can_ask)
    } else {
        routing_decision(&last_user_text(messages), &names, can_ask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

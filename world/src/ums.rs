//! The UMS agent stand-in (docs/protocol.md §3): its API over an in-memory conversation
//! store (`conversations`), with a scripted, deterministic assistant. The world runs two instances (primary and backup),
//! each with its own store, counters and fault target.

use crate::conversations::{title_json, Conversation, UmsState};
use crate::http::{finish, pre_fault, Abort, Body, Reply, Service, Steps};
use crate::json::{arr, obj, py_arr, py_obj, py_s, rfc3339_now, s, split_words};
use crate::state::Shared;
use hyper::{Method, Response};
use serde_json::Value;

fn detail(message: &str) -> String {
    obj(&[("detail", s(message))])
}

fn validation_error(loc: &[&str], kind: &str, msg: &str) -> Reply {
    let loc: Vec<String> = loc.iter().map(|l| s(l)).collect();
    let item = obj(&[("type", s(kind)), ("loc", arr(&loc)), ("msg", s(msg))]);
    Reply::json_status(422, obj(&[("detail", arr(&[item]))]))
}

fn missing_body() -> Reply {
    validation_error(&["body"], "missing", "Field required")
}

fn internal_error() -> Reply {
    Reply::Plain {
        status: 500,
        content_type: "text/plain; charset=utf-8",
        body: "Internal Server Error".to_owned(),
    }
}

/// One UMS instance's view of the world.
#[derive(Clone, Copy)]
struct Ums<'a> {
    shared: &'a Shared,
    service: Service,
}

impl Ums<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, UmsState> {
        self.shared.lock_ums(self.service)
    }
}

/// Serves one request of the UMS instance `service` (`Ums` or `UmsBackup`).
pub(crate) async fn handle(
    shared: &Shared,
    service: Service,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Response<Body>, Abort> {
    // The instance's fault target is its service name: `ums` or `ums-backup`.
    let fault = shared.fault_for(&[service.name()]);
    if let Some(resp) = pre_fault(&shared.shutdown, &fault, service).await? {
        return Ok(resp);
    }
    let reply = route(Ums { shared, service }, method, path, body);
    Ok(finish(reply, &fault))
}

fn route(ums: Ums<'_>, method: &Method, path: &str, body: &[u8]) -> Reply {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_allowed = || Reply::json_status(405, detail("Method Not Allowed"));
    match segments.as_slice() {
        ["health"] => match *method {
            Method::GET => Reply::Json(obj(&[
                ("status", s("healthy")),
                ("conversation_manager_initialized", "true".into()),
            ])),
            _ => not_allowed(),
        },
        ["conversations"] => match *method {
            Method::POST => create(ums, body),
            Method::GET => list(ums),
            _ => not_allowed(),
        },
        ["conversations", id] if !id.is_empty() => match *method {
            Method::GET => get(ums, id),
            Method::DELETE => delete(ums, id),
            _ => not_allowed(),
        },
        ["conversations", id, "chat"] if !id.is_empty() => match *method {
            Method::POST => chat(ums, id, body),
            _ => not_allowed(),
        },
        _ => Reply::json_status(404, detail("Not Found")),
    }
}

fn create(ums: Ums<'_>, body: &[u8]) -> Reply {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return missing_body();
    };
    let title = match request.get("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(title)) => Some(title.clone()),
        Some(_) => {
            return validation_error(
                &["body", "title"],
                "string_type",
                "Input should be a valid string",
            )
        }
    };
    let now = rfc3339_now();
    let mut state = ums.lock();
    state.next_id += 1;
    state.next_update += 1;
    let conversation = Conversation {
        id: format!("{}{:04}", state.prefix, state.next_id),
        title,
        messages: Vec::new(),
        created_at: now.clone(),
        updated_at: now,
        update_seq: state.next_update,
    };
    let record = conversation.record();
    state
        .conversations
        .insert(conversation.id.clone(), conversation);
    Reply::Json(record)
}

fn list(ums: Ums<'_>) -> Reply {
    let state = ums.lock();
    let mut conversations: Vec<&Conversation> = state.conversations.values().collect();
    conversations.sort_by_key(|c| std::cmp::Reverse(c.update_seq));
    let items: Vec<String> = conversations
        .iter()
        .map(|c| {
            obj(&[
                ("id", s(&c.id)),
                ("title", title_json(c.title.as_deref())),
                ("created_at", s(&c.created_at)),
                ("updated_at", s(&c.updated_at)),
                ("message_count", c.messages.len().to_string()),
            ])
        })
        .collect();
    Reply::Json(arr(&items))
}

fn get(ums: Ums<'_>, id: &str) -> Reply {
    match ums.lock().conversations.get(id) {
        Some(conversation) => Reply::Json(conversation.record()),
        None => Reply::json_status(404, detail("Conversation not found")),
    }
}

fn delete(ums: Ums<'_>, id: &str) -> Reply {
    match ums.lock().conversations.remove(id) {
        Some(_) => Reply::Json(obj(&[("message", s("Conversation deleted successfully"))])),
        None => Reply::json_status(404, detail("Conversation not found")),
    }
}

/// The scripted answer of the UMS agent (see the crate docs).
pub(crate) fn answer(message: &str) -> String {
    if message.to_lowercase().contains("karpathy") {
        "No user named Andrej Karpathy was found.".to_owned()
    } else {
        format!("Noted: {message}")
    }
}

fn chat(ums: Ums<'_>, id: &str, body: &[u8]) -> Reply {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return missing_body();
    };
    let Some(Value::Object(message)) = request.get("message") else {
        return validation_error(&["body", "message"], "missing", "Field required");
    };
    let Some(role) = message.get("role").and_then(Value::as_str) else {
        return validation_error(&["body", "message", "role"], "missing", "Field required");
    };
    let content = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(content)) => content.clone(),
        Some(_) => {
            return validation_error(
                &["body", "message", "content"],
                "string_type",
                "Input should be a valid string",
            )
        }
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(true);

    let reply = {
        let mut state = ums.lock();
        state.next_update += 1;
        let update_seq = state.next_update;
        let Some(conversation) = state.conversations.get_mut(id) else {
            return internal_error();
        };
        conversation
            .messages
            .push((role.to_owned(), content.clone()));
        let turn = conversation
            .messages
            .iter()
            .filter(|(role, _)| role == "user")
            .count();
        let reply = format!("UMS[{id}#{turn}]: {}", answer(&content));
        conversation
            .messages
            .push(("assistant".to_owned(), reply.clone()));
        conversation.updated_at = rfc3339_now();
        conversation.update_seq = update_seq;
        reply
    };

    if !stream {
        return Reply::Json(obj(&[("content", s(&reply)), ("conversation_id", s(id))]));
    }
    let choice = |delta: String, finish_reason: &str| {
        py_obj(&[(
            "choices",
            py_arr(&[py_obj(&[
                ("delta", delta),
                ("index", "0".into()),
                ("finish_reason", finish_reason.into()),
            ])]),
        )])
    };
    let mut events = vec![py_obj(&[("conversation_id", py_s(id))])];
    for piece in split_words(&reply) {
        events.push(choice(py_obj(&[("content", py_s(&piece))]), "null"));
    }
    events.push(choice("{}".into(), &py_s("stop")));
    Reply::Stream(Steps::events(events))
}

//! The A2A weather agent stand-in, on the Core port under `/a2a/weather` (crate docs,
//! "A2A weather agent"): its card, and JSON-RPC 1.0 `SendStreamingMessage` /
//! `SendMessage` answered as the official SDK frames them.

use crate::http::Reply;
use crate::json::{arr, obj, s};
use crate::state::{lock, Shared};
use hyper::{HeaderMap, Method};
use serde_json::Value;

/// The agent's base path on the Core port.
pub(crate) const BASE: &str = "/a2a/weather";
const CARD: &str = "/a2a/weather/.well-known/agent-card.json";
const RPC: &str = "/a2a/weather/rpc";

fn jsonrpc_error(code: i64, message: &str) -> Reply {
    let error = obj(&[("code", code.to_string()), ("message", s(message))]);
    Reply::json_status(
        200,
        obj(&[
            ("jsonrpc", s("2.0")),
            ("id", "1".to_owned()),
            ("error", error),
        ]),
    )
}

pub(crate) fn handle(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Option<Reply> {
    if path == CARD && method == Method::GET {
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        return Some(Reply::json_status(
            200,
            card(&format!("http://{host}{RPC}")),
        ));
    }
    if path != RPC {
        return path
            .starts_with(BASE)
            .then(|| Reply::json_status(404, obj(&[("detail", s("Not Found"))])));
    }
    if method != Method::POST {
        return Some(Reply::json_status(
            405,
            obj(&[("detail", s("Method Not Allowed"))]),
        ));
    }
    if headers.get("a2a-version").and_then(|v| v.to_str().ok()) != Some("1.0") {
        return Some(jsonrpc_error(-32009, "This agent speaks A2A 1.0 only"));
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Some(jsonrpc_error(-32700, "Parse error"));
    };
    let streaming = match request.get("method").and_then(Value::as_str) {
        Some("SendStreamingMessage") => true,
        Some("SendMessage") => false,
        _ => return Some(jsonrpc_error(-32601, "Method not found")),
    };
    let message = &request["params"]["message"];
    let text: String = message["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let mut state = lock(&shared.a2a);
    let (task, context, resumed) = match message.get("taskId").and_then(Value::as_str) {
        Some(task) => match state.waiting.remove(task) {
            Some(context) => (task.to_owned(), context, true),
            None => {
                return Some(jsonrpc_error(
                    -32602,
                    &format!("Task {task} is in a terminal state or unknown"),
                ))
            }
        },
        None => {
            state.next += 1;
            let task = format!("world-task-{}", state.next);
            let context = match message.get("contextId").and_then(Value::as_str) {
                Some(c) => c.to_owned(),
                None => format!("world-ctx-{}", state.next),
            };
            (task, context, false)
        }
    };
    let turn = {
        let n = state.turns.entry(context.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let city = if resumed {
        Some(
            text.trim()
                .trim_end_matches(['?', '.', '!'])
                .trim()
                .to_owned(),
        )
    } else {
        city_in(&text)
    };
    let ids = [("taskId", s(&task)), ("contextId", s(&context))];
    let agent_message = |words: &str| {
        obj(&[
            ("messageId", s(&format!("{task}-m{turn}"))),
            ("contextId", s(&context)),
            ("taskId", s(&task)),
            ("role", s("ROLE_AGENT")),
            ("parts", arr(&[obj(&[("text", s(words))])])),
        ])
    };
    let status = |state_name: &str, words: Option<&str>| {
        let mut fields = vec![("state", s(state_name))];
        if let Some(w) = words {
            fields.push(("message", agent_message(w)));
        }
        obj(&fields)
    };
    let mut events: Vec<String> = Vec::new();
    let update = |key: &str, fields: &[(&str, String)]| {
        let mut all: Vec<(&str, String)> = ids.to_vec();
        all.extend_from_slice(fields);
        rpc(&obj(&[(key, obj(&all))]))
    };
    let task_object = |st: String, artifacts: Option<String>| {
        let mut fields = vec![("id", s(&task)), ("contextId", s(&context)), ("status", st)];
        if let Some(a) = artifacts {
            fields.push(("artifacts", a));
        }
        obj(&fields)
    };
    match &city {
        None => {
            // Asks back; the next message on this task names the city.
            state.waiting.insert(task.clone(), context.clone());
            let question = "Which city?";
            if !streaming {
                let t = task_object(status("TASK_STATE_INPUT_REQUIRED", Some(question)), None);
                return Some(Reply::json_status(200, rpc(&obj(&[("task", t)]))));
            }
            events.push(rpc(&obj(&[(
                "task",
                task_object(status("TASK_STATE_SUBMITTED", None), None),
            )])));
            events.push(update(
                "statusUpdate",
                &[(
                    "status",
                    status("TASK_STATE_INPUT_REQUIRED", Some(question)),
                )],
            ));
        }
        Some(city) => {
            let answer =
                format!("WEATHER[{context}#{turn}]: Forecast for {city}: +5°C, light rain.");
            let artifact = |parts: &str| {
                obj(&[
                    ("artifactId", s(&format!("{task}-answer"))),
                    ("name", s("forecast")),
                    ("parts", arr(&[obj(&[("text", s(parts))])])),
                ])
            };
            if !streaming {
                let t = task_object(
                    status("TASK_STATE_COMPLETED", None),
                    Some(arr(&[artifact(&answer)])),
                );
                return Some(Reply::json_status(200, rpc(&obj(&[("task", t)]))));
            }
            events.push(rpc(&obj(&[(
                "task",
                task_object(status("TASK_STATE_SUBMITTED", None), None),
            )])));
            events.push(update(
                "statusUpdate",
                &[(
                    "status",
                    status("TASK_STATE_WORKING", Some("Checking the forecast.")),
                )],
            ));
            events.push(update("artifactUpdate", &[("artifact", artifact(&answer))]));
            events.push(update(
                "statusUpdate",
                &[("status", status("TASK_STATE_COMPLETED", None))],
            ));
        }
    }
    let body: String = events
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect();
    Some(Reply::Plain {
        status: 200,
        content_type: "text/event-stream",
        body,
    })
}

fn rpc(result: &str) -> String {
    obj(&[
        ("result", result.to_owned()),
        ("id", "1".to_owned()),
        ("jsonrpc", s("2.0")),
    ])
}

/// The city of "… in <City>" (the words after the last " in ", without trailing
/// punctuation), if any.
fn city_in(text: &str) -> Option<String> {
    let at = text.to_lowercase().rfind(" in ")?;
    // ASCII " in ": `at + 4` is a char boundary of the original text too.
    let city = text[at + 4..]
        .trim()
        .trim_end_matches(['?', '.', '!'])
        .trim();
    (!city.is_empty()).then(|| city.to_owned())
}

fn card(rpc_url: &str) -> String {
    let interface = obj(&[
        ("url", s(rpc_url)),
        ("protocolBinding", s("JSONRPC")),
        ("protocolVersion", s("1.0")),
    ]);
    let skill = obj(&[
        ("id", s("forecast")),
        ("name", s("Forecast")),
        ("description", s("Tells the weather forecast for a city.")),
        ("tags", arr(&[s("weather")])),
        ("examples", arr(&[s("What is the weather in Kyiv?")])),
    ]);
    obj(&[
        ("name", s("Weather Agent")),
        ("description", s("Answers weather questions for any city.")),
        ("supportedInterfaces", arr(&[interface])),
        ("version", s("1.0.0")),
        ("capabilities", obj(&[("streaming", "true".to_owned())])),
        ("defaultInputModes", arr(&[s("text/plain")])),
        ("defaultOutputModes", arr(&[s("text/plain")])),
        ("skills", arr(&[skill])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cities() {
        assert_eq!(
            city_in("What is the weather in Kyiv?").as_deref(),
            Some("Kyiv")
        );
        assert_eq!(
            city_in("weather in  New York ").as_deref(),
            Some("New York")
        );
        assert_eq!(city_in("What is the weather?"), None);
        assert_eq!(city_in("weather in ?"), None);
    }
}

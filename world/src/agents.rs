//! The scripted agents behind the Core stand-in: GPA (every non-LLM deployment) and RAG
//! (non-LLM deployments whose name starts with `rag`). Both stream only.

use crate::chunks::{Chunks, FILL_HOLE};
use crate::http::Reply;
use crate::json::{arr, last_user_text, obj, prompt_tokens, s};
use crate::state::Shared;
use serde_json::Value;

/// The result of GPA's scripted `web_search` tool.
pub(crate) const WEATHER: &str = "Kyiv: +5°C, light rain";
/// GPA's choice content after the `web_search` stage.
pub(crate) const WEATHER_SUMMARY: &str = "Weather in Kyiv: +5°C, light rain. ";
/// GPA's first content for `[gpa:crash]` and `[gpa:slow-tool=MS]`.
const WORKING: &str = "Working. ";
/// The event `[gpa:crash]` ends its stream with.
const CRASH_ERROR: &str =
    r#"{"error":{"message":"tool crashed","type":"runtime_error","code":"500"}}"#;

/// Caps of the numeric GPA keywords, so a typo cannot make the world stream for hours.
const MAX_SLOW_TOOL_MS: u64 = 600_000;
const MAX_BULK_ITEMS: u64 = 100_000;
const MAX_BULK_BYTES: u64 = 100 * 1024 * 1024;

fn stream_required() -> Reply {
    Reply::dial_error(400, "invalid_request_error", "stream required")
}

/// `N` of the first `[gpa:<name>=N]` in `tl`, capped at `max`; `None` when the keyword
/// is absent or `N` is not a decimal number.
pub(crate) fn keyword_number(tl: &str, name: &str, max: u64) -> Option<u64> {
    let start = format!("[gpa:{name}=");
    let rest = &tl[tl.find(&start)? + start.len()..];
    let digits = &rest[..rest.find(']')?];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u64 holds still means "a lot": saturate, then cap.
    let n = digits.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(n.min(max))
}

fn byte_count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The roles of `messages` joined with `,` (`?` for a message without a role).
fn roles(messages: &[Value]) -> String {
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m.get("role").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    roles.join(",")
}

/// How many assistant messages have a value at `pointer` that satisfies `is`.
fn assistants_with(messages: &[Value], pointer: &str, is: fn(&Value) -> bool) -> usize {
    messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter(|m| m.pointer(pointer).is_some_and(is))
        .count()
}

fn stage_attachment(index: u64, attachment: String) -> String {
    obj(&[
        ("index", index.to_string()),
        ("attachments", arr(&[attachment])),
        ("status", "null".into()),
    ])
}

fn attachment(index: u64, kind: &str, title: &str, url: &str) -> String {
    obj(&[
        ("index", index.to_string()),
        ("type", s(kind)),
        ("title", s(title)),
        ("url", s(url)),
    ])
}

struct ToolCall {
    tool: &'static str,
    arguments: String,
    result: String,
}

/// The GPA script (see the crate docs).
pub(crate) fn gpa(shared: &Shared, name: &str, messages: &[Value], stream: bool) -> Reply {
    if !stream {
        return stream_required();
    }
    let t = last_user_text(messages);
    let tl = t.to_lowercase();
    if tl.contains("[gpa:http500]") {
        return Reply::dial_error(500, "runtime_error", "GPA failed on this request");
    }
    let mut c = Chunks::new(shared);
    if tl.contains("[gpa:crash]") {
        c.content(WORKING);
        c.raw_event(CRASH_ERROR);
        return Reply::Stream(c.abandon());
    }
    if let Some(ms) = keyword_number(&tl, "slow-tool", MAX_SLOW_TOOL_MS) {
        c.content(WORKING);
        c.sleep(ms);
    }

    let mut calls: Vec<ToolCall> = Vec::new();
    if tl.contains("weather") || tl.contains("search") {
        calls.push(web_search(&mut c, &t));
    }
    let image = (tl.contains("picture") || tl.contains("image")).then(|| {
        let (call, choice_attachment) = image_generation(&mut c, shared, &t);
        calls.push(call);
        choice_attachment
    });
    special_stages(&mut c, &tl);
    if let Some(n) = keyword_number(&tl, "text-bytes", MAX_BULK_BYTES) {
        c.bulk_content(byte_count(n));
    }

    c.content(&format!(
        "GPA[{name}] got {} messages ({}), {} with tool_call_history; request: {t}",
        messages.len(),
        roles(messages),
        assistants_with(
            messages,
            "/custom_content/state/tool_call_history",
            Value::is_array
        ),
    ));
    // Bulk attachment indices continue after the image's.
    let first_bulk = u64::from(image.is_some());
    if let Some(attachment) = image {
        c.custom(obj(&[("attachments", arr(&[attachment]))]));
    }
    if let Some(n) = keyword_number(&tl, "attachments", MAX_BULK_ITEMS) {
        c.bulk_attachments(n, move |i| bulk_attachment(first_bulk + i, i));
    }

    let history = tool_call_history(&calls);
    match keyword_number(&tl, "state-bytes", MAX_BULK_BYTES) {
        Some(n) => c.filled_custom(
            obj(&[(
                "state",
                obj(&[
                    ("tool_call_history", history),
                    ("padding", FILL_HOLE.to_owned()),
                ]),
            )]),
            byte_count(n),
        ),
        None => c.custom(obj(&[("state", obj(&[("tool_call_history", history)]))])),
    }
    Reply::Stream(c.stop(prompt_tokens(messages)))
}

fn web_search(c: &mut Chunks, t: &str) -> ToolCall {
    let i = c.open_stage("web_search", None);
    let arguments = obj(&[("query", s(t))]);
    c.stage_content(
        i,
        &format!("## Request arguments: \n```json\n{arguments}\n```\n## Response: \n"),
    );
    c.stage_content(i, WEATHER);
    c.close_stage(i, "completed");
    c.content(WEATHER_SUMMARY);
    ToolCall {
        tool: "web_search",
        arguments,
        result: WEATHER.to_owned(),
    }
}

/// The image stage; returns the tool call and the choice attachment to send later.
fn image_generation(c: &mut Chunks, shared: &Shared, t: &str) -> (ToolCall, String) {
    let n = shared.next_image();
    let url = format!("files/world-bucket/images/image-{n}.png");
    let j = c.open_stage("image_generation_tool", None);
    let arguments = obj(&[("prompt", s(t))]);
    c.stage_content(
        j,
        &format!("## Request arguments: \n```json\n{arguments}\n```\n"),
    );
    c.stage(stage_attachment(
        j,
        attachment(0, "image/png", "Generated image", &url),
    ));
    c.content(&format!("\n\r![image]({url})\n\r"));
    c.close_stage(j, "completed");
    let call = ToolCall {
        tool: "image_generation_tool",
        arguments,
        result: format!("Generated image: {url}"),
    };
    (
        call,
        attachment(0, "image/png", &format!("image-{n}.png"), &url),
    )
}

/// The keyword-driven stages: nested, left open, failed, and `[gpa:stages=N]`.
fn special_stages(c: &mut Chunks, tl: &str) {
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
    if let Some(n) = keyword_number(tl, "stages", MAX_BULK_ITEMS) {
        c.bulk_stages("bulk_", n);
    }
}

/// The attachment `a<i>.txt` of `[gpa:attachments=N]` at choice attachment `index`.
fn bulk_attachment(index: u64, i: u64) -> String {
    attachment(
        index,
        "text/plain",
        &format!("a{i}.txt"),
        &format!("files/world-bucket/bulk/a{i}.txt"),
    )
}

/// The `tool_call_history` array of GPA's state.
fn tool_call_history(calls: &[ToolCall]) -> String {
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
    arr(&history)
}

/// The RAG script (see the crate docs).
pub(crate) fn rag(shared: &Shared, name: &str, messages: &[Value], stream: bool) -> Reply {
    if !stream {
        return stream_required();
    }
    let t = last_user_text(messages);
    let n = shared.next_rag_source();
    let title = format!("source-{n}.md");
    let source = attachment(
        0,
        "text/markdown",
        &title,
        &format!("files/world-bucket/rag/{title}"),
    );
    let mut c = Chunks::new(shared);
    let i = c.open_stage("retrieve", None);
    c.stage_content(i, &format!("Searching the knowledge base for: {t}"));
    c.stage(stage_attachment(i, source.clone()));
    c.close_stage(i, "completed");
    let with_state = assistants_with(messages, "/custom_content/state/rag_turn", Value::is_number);
    c.content(&format!(
        "RAG[{name}] got {} messages ({}), {with_state} with rag state; request: {t}",
        messages.len(),
        roles(messages),
    ));
    c.custom(obj(&[("attachments", arr(&[source]))]));
    let state = obj(&[
        ("rag_turn", (with_state + 1).to_string()),
        ("sources", arr(&[s(&title)])),
    ]);
    c.custom(obj(&[("state", state)]));
    Reply::Stream(c.stop(prompt_tokens(messages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_numbers() {
        assert_eq!(
            keyword_number("a [gpa:stages=12] b", "stages", 100),
            Some(12)
        );
        assert_eq!(keyword_number("[gpa:stages=0]", "stages", 100), Some(0));
        assert_eq!(keyword_number("[gpa:stages=101]", "stages", 100), Some(100));
        assert_eq!(
            keyword_number(
                "[gpa:text-bytes=99999999999999999999999]",
                "text-bytes",
                MAX_BULK_BYTES
            ),
            Some(104_857_600)
        );
        assert_eq!(
            keyword_number("[gpa:slow-tool=700000]", "slow-tool", MAX_SLOW_TOOL_MS),
            Some(600_000)
        );
        for bad in [
            "[gpa:stages=]",
            "[gpa:stages=1x]",
            "[gpa:stages=-1]",
            "[gpa:stages=5",
            "stages=5]",
        ] {
            assert_eq!(keyword_number(bad, "stages", 100), None, "{bad}");
        }
        assert_eq!(keyword_number("[gpa:stages=5]", "attachments", 100), None);
    }
}

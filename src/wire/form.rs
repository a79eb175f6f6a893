//! DIAL's buttons: the form an answer offers (`custom_content.form_schema`)
//! and the choice the next user message brings back
//! (`custom_content.form_value`).
//!
//! A form is a JSON Schema object whose properties DIAL Chat renders as
//! widgets; a property with `"dial:widget": "buttons"` is a row of buttons, one
//! per `oneOf` option (`const` is the value, `title` the label). An option's
//! `dial:widgetOptions` say what a click does: `populateText` puts that text in
//! the chat box and `submit: true` sends the message at once. The user's
//! message then carries `form_value: {"<property>": <const>}` beside its text.
//! With no property `required` and `dial:chatMessageInputDisabled: false`, the
//! user may also type an answer instead: that message has no `form_value`.

use serde_json::{json, Map, Value};

use crate::wire::request::Message;

/// One button: the value it sends back and the text it shows and sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Button {
    /// The value `form_value` carries for it.
    pub value: Value,
    /// Its label, also the text the message is sent with.
    pub title: String,
}

/// A form of one row of `buttons` under `property`. Each button sends its
/// title as the message's text at once (`populateText`, `submit`); nothing is
/// required and the chat box stays enabled, so typing is an answer too.
pub fn buttons(property: &str, buttons: &[Button]) -> Value {
    let options: Vec<Value> = buttons
        .iter()
        .map(|b| {
            json!({
                "const": b.value,
                "title": b.title,
                "dial:widgetOptions": {
                    "confirmationMessage": null,
                    "populateText": b.title,
                    "submit": true,
                },
            })
        })
        .collect();
    let kind = match buttons.first().map(|b| &b.value) {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => "integer",
        Some(Value::Number(_)) => "number",
        Some(Value::Bool(_)) => "boolean",
        _ => "string",
    };
    let mut properties = Map::new();
    properties.insert(
        property.to_owned(),
        json!({"type": kind, "dial:widget": "buttons", "oneOf": options}),
    );
    json!({
        "type": "object",
        "dial:chatMessageInputDisabled": false,
        "properties": properties,
    })
}

/// The value a message's `custom_content.form_value` gives `property`, if any.
pub fn form_value(message: &Message, property: &str) -> Option<Value> {
    let cc = message.custom_content.as_ref()?;
    let (_, raw) = cc.extra.iter().find(|(k, _)| k == "form_value")?;
    let form: Map<String, Value> = serde_json::from_str(raw.get()).ok()?;
    form.get(property).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::request::parse_request;

    #[test]
    fn a_row_of_buttons_that_send_their_title_and_leave_typing_enabled() {
        let schema = buttons(
            "plan_approval",
            &[
                Button {
                    value: json!("run"),
                    title: "Run".into(),
                },
                Button {
                    value: json!("cancel"),
                    title: "Cancel".into(),
                },
            ],
        );
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "dial:chatMessageInputDisabled": false,
                "properties": {"plan_approval": {
                    "type": "string", "dial:widget": "buttons",
                    "oneOf": [
                        {"const": "run", "title": "Run", "dial:widgetOptions":
                            {"confirmationMessage": null, "populateText": "Run", "submit": true}},
                        {"const": "cancel", "title": "Cancel", "dial:widgetOptions":
                            {"confirmationMessage": null, "populateText": "Cancel", "submit": true}},
                    ],
                }},
            })
        );
        let numbered = buttons(
            "answer",
            &[Button {
                value: json!(0),
                title: "A".into(),
            }],
        );
        assert_eq!(numbered["properties"]["answer"]["type"], json!("integer"));
    }

    #[test]
    fn reads_the_value_of_one_property_and_nothing_else() {
        let body = json!({"messages": [
            {"role": "user", "content": "Run",
             "custom_content": {"form_value": {"plan_approval": "run", "other": 1}}},
            {"role": "user", "content": "x", "custom_content": {"form_value": "not an object"}},
            {"role": "user", "content": "y"},
        ]});
        let r = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            form_value(&r.messages[0], "plan_approval"),
            Some(json!("run"))
        );
        assert_eq!(form_value(&r.messages[0], "answer"), None);
        assert_eq!(form_value(&r.messages[1], "plan_approval"), None);
        assert_eq!(form_value(&r.messages[2], "plan_approval"), None);
    }
}

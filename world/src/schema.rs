//! The agent names a structured-output request offers (ENUM in the crate docs): every
//! `agent_name` property with an `enum` array anywhere in
//! `response_format.json_schema.schema`, in order of first appearance in the request.
//!
//! `serde_json::Value` sorts object keys (the `preserve_order` feature would change the
//! map type for the whole workspace), so the request is read a second time into a small
//! tree that keeps document order.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A JSON document with object members in document order; only strings keep a value.
#[derive(Debug)]
enum Json {
    Other,
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The member `key` of an object; the last one wins, as in `serde_json::Value`.
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().rev().find(|(k, _)| k == key).map(|m| &m.1),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Json>()? {
            members.push(member);
        }
        Ok(Json::Obj(members))
    }
}

/// ENUM of a chat-completions request body (empty when there is no schema).
pub(crate) fn agent_names(request_body: &[u8]) -> Vec<String> {
    // serde_json's recursion limit bounds the depth, so the walk below cannot overflow.
    let Ok(root) = serde_json::from_slice::<Json>(request_body) else {
        return Vec::new();
    };
    let schema = root
        .get("response_format")
        .and_then(|r| r.get("json_schema"))
        .and_then(|j| j.get("schema"));
    let mut names = Vec::new();
    if let Some(schema) = schema {
        collect(schema, &mut names);
    }
    names
}

/// Pre-order walk: an `agent_name` member's `enum` strings come before anything nested
/// in it or after it.
fn collect(node: &Json, names: &mut Vec<String>) {
    match node {
        Json::Obj(members) => {
            for (key, value) in members {
                if key == "agent_name" {
                    add_enum(value, names);
                }
                collect(value, names);
            }
        }
        Json::Arr(items) => items.iter().for_each(|item| collect(item, names)),
        Json::Other | Json::Str(_) => {}
    }
}

fn add_enum(property: &Json, names: &mut Vec<String>) {
    let Some(Json::Arr(values)) = property.get("enum") else {
        return;
    };
    for value in values {
        if let Json::Str(name) = value {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str) -> Vec<String> {
        agent_names(body.as_bytes())
    }

    #[test]
    fn document_order_union_including_defs() {
        let body = r##"{"messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"plan","schema":{
            "properties":{"subtasks":{"type":"array","items":{"$ref":"#/$defs/Subtask"}},
                          "agent_name":{"enum":["ZED","UMS"]}},
            "$defs":{"Subtask":{"properties":{"agent_name":{"type":"string","enum":["UMS","GPA",7,"RAG"]}}}}}}}}"##;
        assert_eq!(names(body), ["ZED", "UMS", "GPA", "RAG"]);
    }

    #[test]
    fn only_agent_name_properties_with_enum_arrays() {
        let body = r#"{"response_format":{"json_schema":{"schema":{"properties":{
            "agent":{"enum":["NO"]},"agent_name":{"type":"string"},
            "x":{"agent_name":{"enum":"GPA"}},"y":[{"agent_name":{"enum":["A"]}}]}}}}}"#;
        assert_eq!(names(body), ["A"]);
        assert!(names(r#"{"response_format":{"type":"json_schema"}}"#).is_empty());
        assert!(names("not json").is_empty());
        // Outside the schema does not count.
        assert!(names(r#"{"agent_name":{"enum":["A"]},"response_format":{}}"#).is_empty());
    }
}

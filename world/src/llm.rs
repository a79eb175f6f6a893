//! The scripted LLM's answers as pure functions of the request text (see the crate docs):
//! routing decisions, plans and the synthesis reply.

use crate::json::{arr, obj, s};

/// The text the LLM answers when it has nothing more specific to say.
pub(crate) const LLM_HELLO: &str = "Hello from the local LLM.";

/// The first of `names` (ENUM order) that `text` mentions as `@<name>`, ignoring case.
pub(crate) fn mentioned<'a>(text: &str, names: &'a [String]) -> Option<&'a str> {
    let text = text.to_lowercase();
    names
        .iter()
        .find(|name| text.contains(&format!("@{}", name.to_lowercase())))
        .map(String::as_str)
}

/// The phrase that makes the LLM ask which reading the user means.
const ASK_PHRASE: &str = "help me with ";

/// The question for a request that says "help me with <who>", when the schema offers
/// `ask_user` and the request mentions no agent: `{"question":..,"options":[..]}`.
pub(crate) fn question(text: &str, names: &[String], can_ask: bool) -> Option<String> {
    if !can_ask || mentioned(text, names).is_some() {
        return None;
    }
    let at = text.to_lowercase().find(ASK_PHRASE)?;
    // ASCII phrase: `at + len` is a char boundary of the original text too.
    let who = text[at + ASK_PHRASE.len()..]
        .trim()
        .trim_end_matches(['?', '.', '!'])
        .trim();
    if who.is_empty() {
        return None;
    }
    let options = [
        s(&format!("The user record of {who}")),
        s(&format!("A web search about {who}")),
    ];
    Some(obj(&[
        (
            "question",
            s(&format!(
                "Do you mean {who} in the user records, or should I search the web about {who}?"
            )),
        ),
        ("options", arr(&options)),
    ]))
}

/// The routing rules: an `@<name>` mention of an offered agent, then the fixed rules.
/// With `can_ask` (the schema offers `ask_user`) a "help me with <who>" request asks first.
pub(crate) fn routing_decision(last_user_text: &str, names: &[String], can_ask: bool) -> String {
    if let Some(ask) = question(last_user_text, names, can_ask) {
        return obj(&[
            ("agent_name", s("GPA")),
            ("additional_instructions", "null".to_owned()),
            ("ask_user", ask),
        ]);
    }
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
    if let Some(name) = mentioned(last_user_text, names) {
        decision(name, None)
    } else if t.contains("[route:garbage]") {
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

/// One subtask of a plan.
struct Task<'a> {
    id: usize,
    agent: &'a str,
    description: &'a str,
    depends_on: Option<usize>,
}

impl Task<'_> {
    fn json(&self) -> String {
        let deps: Vec<String> = self.depends_on.iter().map(usize::to_string).collect();
        obj(&[
            ("task_id", self.id.to_string()),
            ("agent_name", s(self.agent)),
            ("task_description", s(self.description)),
            ("depends_on", arr(&deps)),
        ])
    }
}

fn task<'a>(
    id: usize,
    agent: &'a str,
    description: &'a str,
    depends_on: Option<usize>,
) -> Task<'a> {
    Task {
        id,
        agent,
        description,
        depends_on,
    }
}

fn plan_json(tasks: &[Task<'_>], replan: bool) -> String {
    let tasks: Vec<String> = tasks.iter().map(Task::json).collect();
    obj(&[("subtasks", arr(&tasks)), ("replan", replan.to_string())])
}

/// The marker of a re-plan round in the last message.
const COMPLETED: &str = "## COMPLETED SUBTASKS:";

/// The planning rules (see the crate docs) on the text of the last message. With
/// `can_ask` (the schema offers `ask_user`) a first-round "help me with <who>" request
/// asks first.
pub(crate) fn plan(last_message_text: &str, names: &[String], can_ask: bool) -> String {
    if !last_message_text.contains(COMPLETED) {
        if let Some(ask) = question(last_message_text, names, can_ask) {
            return obj(&[
                ("subtasks", arr(&[])),
                ("replan", "false".to_owned()),
                ("ask_user", ask),
            ]);
        }
    }
    let replan_round = last_message_text.contains(COMPLETED);
    let (t, k) = if replan_round {
        let cut = last_message_text
            .find(&format!("\n\n{COMPLETED}"))
            .or_else(|| last_message_text.find(COMPLETED))
            .unwrap_or(0);
        let k = last_message_text.matches("### Task ").count();
        (&last_message_text[..cut], k)
    } else {
        (last_message_text, 0)
    };
    let tl = t.to_lowercase();
    if tl.contains("[plan:garbage]") {
        return "this is not json".to_owned();
    }
    if tl.contains("[plan:replan-forever]") {
        let round = format!("round {}", k + 1);
        return plan_json(&[task(k + 1, "GPA", &round, None)], true);
    }
    if tl.contains("[plan:replan-repeat]") {
        return plan_json(&[task(1, "GPA", t, None)], true);
    }
    if replan_round {
        return plan_json(&[], false);
    }
    first_round_plan(t, &tl, names)
}

fn first_round_plan(t: &str, tl: &str, names: &[String]) -> String {
    if tl.contains("[plan:cycle]") {
        return plan_json(
            &[task(1, "GPA", t, Some(2)), task(2, "GPA", t, Some(1))],
            false,
        );
    }
    if tl.contains("[plan:unknown-agent]") {
        return plan_json(&[task(1, "XYZ", t, None)], false);
    }
    if tl.contains("[plan:many]") {
        let parts: Vec<String> = (1..=12).map(|i| format!("part {i}")).collect();
        let tasks: Vec<Task<'_>> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| task(i + 1, "GPA", part, None))
            .collect();
        return plan_json(&tasks, false);
    }
    if tl.contains("[plan:replan-once]") {
        return plan_json(&[task(1, "GPA", t, None)], true);
    }
    split_plan(t, tl, names)
}

/// A plan of the parts of `t`: a chain at " and then ", else independent at "also,".
fn split_plan(t: &str, tl: &str, names: &[String]) -> String {
    let chain = tl.contains(" and then ");
    let separator = if chain { " and then " } else { "also," };
    let parts: Vec<&str> = split_ignore_ascii_case(t, separator)
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    let tasks: Vec<Task<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let depends_on = (chain && i > 0).then_some(i);
            task(i + 1, part_agent(part, names), part, depends_on)
        })
        .collect();
    plan_json(&tasks, false)
}

fn part_agent<'a>(part: &str, names: &'a [String]) -> &'a str {
    if let Some(name) = mentioned(part, names) {
        return name;
    }
    let lower = part.to_lowercase();
    if lower.contains("user") || lower.contains("account") {
        "UMS"
    } else {
        "GPA"
    }
}

/// Splits `text` at every occurrence of the ASCII `separator`, ignoring ASCII case.
/// Working on `text` itself (not a lowercased copy) keeps the parts' original spelling,
/// and an ASCII match always starts and ends on a char boundary.
fn split_ignore_ascii_case<'a>(text: &'a str, separator: &str) -> Vec<&'a str> {
    let (hay, needle) = (text.as_bytes(), separator.as_bytes());
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while !needle.is_empty() && i + needle.len() <= hay.len() {
        if hay[i..i + needle.len()].eq_ignore_ascii_case(needle) {
            parts.push(&text[start..i]);
            i += needle.len();
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&text[start..]);
    parts
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a schema without `ask_user` (the tests below predate it).
    fn routing_decision(text: &str, names: &[String]) -> String {
        super::routing_decision(text, names, false)
    }

    fn plan(text: &str, names: &[String]) -> String {
        super::plan(text, names, false)
    }

    #[test]
    fn help_me_with_asks_when_the_schema_offers_it() {
        let offered = names(&["GPA", "UMS"]);
        let ask = r#"{"question":"Do you mean Alex in the user records, or should I search the web about Alex?","options":["The user record of Alex","A web search about Alex"]}"#;
        assert_eq!(
            super::plan("Can you help me with Alex?", &offered, true),
            format!(r#"{{"subtasks":[],"replan":false,"ask_user":{ask}}}"#)
        );
        assert_eq!(
            super::routing_decision("Can you HELP ME WITH Alex?", &offered, true),
            format!(r#"{{"agent_name":"GPA","additional_instructions":null,"ask_user":{ask}}}"#)
        );
        // Not offered, a mention, nothing after the phrase, a re-plan round: no question.
        assert!(!super::plan("help me with Alex", &offered, false).contains("ask_user"));
        assert!(!super::plan("@ums help me with Alex", &offered, true).contains("ask_user"));
        assert!(!super::plan("help me with ?", &offered, true).contains("ask_user"));
        let replan = "help me with Alex\n\n## COMPLETED SUBTASKS:\n### Task 1";
        assert!(!super::plan(replan, &offered, true).contains("ask_user"));
        // The answers are planned as usual.
        assert!(super::plan("The user record of Alex", &offered, true).contains(r#""UMS""#));
        assert!(super::plan("A web search about Alex", &offered, true).contains(r#""GPA""#));
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn routing_rules() {
        let none: &[String] = &[];
        assert_eq!(
            routing_decision("Say [ROUTE:garbage] please", none),
            "this is not json"
        );
        assert_eq!(
            routing_decision("[route:unknown] user", none),
            r#"{"agent_name":"XYZ","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("[route:instructions] about users", none),
            r#"{"agent_name":"GPA","additional_instructions":"Be brief."}"#
        );
        assert_eq!(
            routing_decision("Do we have Andrej Karpathy as a USER?", none),
            r#"{"agent_name":"UMS","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("delete the account", none),
            r#"{"agent_name":"UMS","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("What is the weather?", none),
            r#"{"agent_name":"GPA","additional_instructions":null}"#
        );
    }

    #[test]
    fn routing_mentions_come_first() {
        let offered = names(&["GPA", "Rag_Agent", "UMS"]);
        assert_eq!(
            routing_decision("ask @rag_AGENT about the user [route:garbage]", &offered),
            r#"{"agent_name":"Rag_Agent","additional_instructions":null}"#
        );
        // ENUM order decides between several mentions; unknown mentions are ignored.
        assert_eq!(
            routing_decision("@ums or @gpa", &offered),
            r#"{"agent_name":"GPA","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("@nobody and a user", &offered),
            r#"{"agent_name":"UMS","additional_instructions":null}"#
        );
        assert_eq!(
            routing_decision("rag_agent without at", &offered),
            r#"{"agent_name":"GPA","additional_instructions":null}"#
        );
    }

    #[test]
    fn plan_splits_independent_and_chained_parts() {
        let offered = names(&["UMS", "GPA", "RAG"]);
        assert_eq!(
            plan(
                "Do we have user John? Also, what's the weather in Paris?",
                &offered
            ),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"UMS","task_description":"Do we have user John?","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"what's the weather in Paris?","depends_on":[]}],"replan":false}"#
            )
        );
        assert_eq!(
            plan(
                "Add Andrej Karpathy as a user and then find news about him",
                &offered
            ),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"UMS","task_description":"Add Andrej Karpathy as a user","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"find news about him","depends_on":[1]}],"replan":false}"#
            )
        );
        // Case-insensitive separators, empty parts dropped, mentions, a chain wins over "also,".
        assert_eq!(
            plan(
                " AND THEN ask @rag, also, the docs And Then  and then check accounts",
                &offered
            ),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"RAG","task_description":"ask @rag, also, the docs","depends_on":[]},"#,
                r#"{"task_id":2,"agent_name":"UMS","task_description":"check accounts","depends_on":[1]}],"replan":false}"#
            )
        );
        assert_eq!(plan("  ", &offered), r#"{"subtasks":[],"replan":false}"#);
    }

    #[test]
    fn plan_keywords() {
        let none: &[String] = &[];
        assert_eq!(plan("[PLAN:garbage]", none), "this is not json");
        assert_eq!(
            plan("x [plan:cycle]", none),
            concat!(
                r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"x [plan:cycle]","depends_on":[2]},"#,
                r#"{"task_id":2,"agent_name":"GPA","task_description":"x [plan:cycle]","depends_on":[1]}],"replan":false}"#
            )
        );
        assert_eq!(
            plan("[plan:unknown-agent]", none),
            r#"{"subtasks":[{"task_id":1,"agent_name":"XYZ","task_description":"[plan:unknown-agent]","depends_on":[]}],"replan":false}"#
        );
        let many = plan("[plan:many]", none);
        assert_eq!(many.matches("\"task_id\":").count(), 12);
        assert!(many.ends_with(r#"{"task_id":12,"agent_name":"GPA","task_description":"part 12","depends_on":[]}],"replan":false}"#));
        assert_eq!(
            plan("[plan:replan-once] go", none),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-once] go","depends_on":[]}],"replan":true}"#
        );
    }

    #[test]
    fn replan_rounds() {
        let none: &[String] = &[];
        let round = |t: &str, tasks: usize| {
            let mut text = format!("{t}\n\n{COMPLETED}\n");
            for i in 1..=tasks {
                text.push_str(&format!("### Task {i}: done\nresult\n"));
            }
            plan(&text, none)
        };
        assert_eq!(
            round("[plan:replan-forever]", 3),
            r#"{"subtasks":[{"task_id":4,"agent_name":"GPA","task_description":"round 4","depends_on":[]}],"replan":true}"#
        );
        assert_eq!(
            plan("[plan:replan-forever]", none),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"round 1","depends_on":[]}],"replan":true}"#
        );
        assert_eq!(
            round("[plan:replan-repeat] again", 1),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-repeat] again","depends_on":[]}],"replan":true}"#
        );
        assert_eq!(
            round("[plan:replan-once] a user", 1),
            r#"{"subtasks":[],"replan":false}"#
        );
        assert_eq!(
            round("[plan:cycle]", 2),
            r#"{"subtasks":[],"replan":false}"#
        );
        assert_eq!(round("[plan:garbage]", 1), "this is not json");
        // Keywords only count before the marker; without "\n\n" the marker itself cuts.
        assert_eq!(
            plan(
                "[plan:replan-repeat] ## COMPLETED SUBTASKS: ### Task 1 [plan:garbage]",
                none
            ),
            r#"{"subtasks":[{"task_id":1,"agent_name":"GPA","task_description":"[plan:replan-repeat] ","depends_on":[]}],"replan":true}"#
        );
    }

    #[test]
    fn ascii_case_split_keeps_unicode_intact() {
        assert_eq!(
            split_ignore_ascii_case("°C ALSO, İx also,", "also,"),
            ["°C ", " İx ", ""]
        );
        assert_eq!(split_ignore_ascii_case("abc", "also,"), ["abc"]);
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
}

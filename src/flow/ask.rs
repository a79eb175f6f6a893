//! Asking the user: a clarifying question the coordination call decided to
//! ask, and a plan that waits for the user's approval (`PLAN_APPROVAL`).
//!
//! Either way no agent runs in this turn: the answer is the question, DIAL
//! Chat shows buttons under it (`wire/form.rs`), and what is pending is kept in
//! the signed state (`memory/pending.rs`) so that the next turn can go on from
//! it. Nothing is kept anywhere else.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::registry::Registry;
use crate::config::PlanApproval;
use crate::flow::plan::Plan;
use crate::limits::truncate_marked;
use crate::memory::pending::{ANSWER_PROPERTY, APPROVAL_PROPERTY, CANCEL, RUN};
use crate::wire::form::{buttons, Button};

/// Most options of a question.
pub const MAX_OPTIONS: usize = 6;
/// Longest question, in bytes (cut with a marker beyond).
const MAX_QUESTION_BYTES: usize = 2_000;
/// Longest option, in bytes (cut with a marker beyond).
const MAX_OPTION_BYTES: usize = 200;

/// A question for the user, when the request cannot be served without their
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AskUser {
    /// The question, in the user's language.
    pub question: String,
    /// Up to 6 short answers the user can pick with one click; empty when the
    /// answer must be typed.
    #[serde(default)]
    #[schemars(length(max = 6))]
    pub options: Vec<String>,
}

impl AskUser {
    /// The question as it is asked: trimmed and bounded, options without
    /// blanks or repeats, at most [`MAX_OPTIONS`]; `None` without a question.
    pub fn cleaned(&self) -> Option<AskUser> {
        let question = self.question.trim();
        if question.is_empty() {
            return None;
        }
        let mut options: Vec<String> = Vec::new();
        for option in &self.options {
            let option = truncate_marked(option.trim(), MAX_OPTION_BYTES, "option");
            if !option.is_empty() && !options.contains(&option) && options.len() < MAX_OPTIONS {
                options.push(option);
            }
        }
        Some(AskUser {
            question: truncate_marked(question, MAX_QUESTION_BYTES, "question"),
            options,
        })
    }

    /// The form of its options (one button each, numbered from 0), `None`
    /// without options.
    pub fn form(&self) -> Option<Value> {
        if self.options.is_empty() {
            return None;
        }
        let options: Vec<Button> = self
            .options
            .iter()
            .enumerate()
            .map(|(i, option)| Button {
                value: json!(i),
                title: option.clone(),
            })
            .collect();
        Some(buttons(ANSWER_PROPERTY, &options))
    }
}

/// The rule of the coordination prompts about `ask_user`.
pub const ASK_RULE: &str = "- ask_user: null, unless the request cannot be served without \
knowing which of a few readings the user means (\"help me with Alex\": the user record, or the \
web?) or a detail the agents need is missing; never to avoid work, nor when the conversation \
already answers it. Then give the question and up to 6 short options (none when the answer must \
be typed), and no agent runs.";

/// Whether `plan` waits for the user's approval under `approval`.
pub fn needs_approval(plan: &Plan, approval: PlanApproval, registry: &Registry) -> bool {
    match approval {
        PlanApproval::Never => false,
        PlanApproval::Always => !plan.subtasks.is_empty(),
        PlanApproval::MultiAgent => {
            plan.subtasks.len() > 1
                || plan
                    .subtasks
                    .iter()
                    .any(|s| registry.get(&s.agent_name).is_some_and(|a| a.confirm))
        }
    }
}

/// The question of a plan waiting for approval: what would run, then "Run
/// this plan?".
pub fn approval_question(plan: &Plan) -> String {
    let mut text = String::from("I would run this plan:\n\n");
    for s in &plan.subtasks {
        text.push_str(&format!(
            "{}. **{}**: {}",
            s.task_id, s.agent_name, s.task_description
        ));
        if !s.depends_on.is_empty() {
            let after: Vec<String> = s.depends_on.iter().map(u32::to_string).collect();
            text.push_str(&format!(" (after {})", after.join(", ")));
        }
        text.push('\n');
    }
    text.push_str("\nRun this plan?");
    text
}

/// The buttons of a plan waiting for approval: `Run` and `Cancel`.
pub fn approval_form() -> Value {
    buttons(
        APPROVAL_PROPERTY,
        &[
            Button {
                value: json!(RUN),
                title: "Run".to_owned(),
            },
            Button {
                value: json!(CANCEL),
                title: "Cancel".to_owned(),
            },
        ],
    )
}

/// The answer when the user cancels a plan.
pub const CANCELLED: &str = "Cancelled: the plan was not run.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::flow::plan::Subtask;

    fn subtask(id: u32, agent: &str, depends_on: &[u32]) -> Subtask {
        Subtask {
            task_id: id,
            agent_name: agent.to_owned(),
            task_description: format!("task {id}"),
            depends_on: depends_on.to_vec(),
        }
    }

    #[test]
    fn a_question_is_trimmed_bounded_and_without_repeats() {
        let ask = AskUser {
            question: "  Which Alex?  ".into(),
            options: ["A", " A ", "", "B", "C", "D", "E", "F", "G"]
                .map(String::from)
                .to_vec(),
        };
        let cleaned = ask.cleaned().unwrap();
        assert_eq!(cleaned.question, "Which Alex?");
        assert_eq!(cleaned.options, ["A", "B", "C", "D", "E", "F"]);
        let blank = AskUser {
            question: " \n".into(),
            options: vec!["A".into()],
        };
        assert_eq!(blank.cleaned(), None);
        let long = AskUser {
            question: "q".repeat(5_000),
            options: vec!["o".repeat(500)],
        };
        let cleaned = long.cleaned().unwrap();
        assert!(cleaned.question.len() < 2_100, "{}", cleaned.question.len());
        assert!(cleaned.options[0].len() < 300);
    }

    #[test]
    fn the_question_s_form_numbers_its_options() {
        let ask = AskUser {
            question: "Which?".into(),
            options: vec!["The user record".into(), "Search the web".into()],
        };
        let form = ask.form().unwrap();
        let options = &form["properties"][ANSWER_PROPERTY]["oneOf"];
        assert_eq!(options[0]["const"], json!(0));
        assert_eq!(options[1]["title"], json!("Search the web"));
        assert_eq!(
            options[1]["dial:widgetOptions"]["populateText"],
            json!("Search the web")
        );
        let typed = AskUser {
            question: "Which?".into(),
            options: Vec::new(),
        };
        assert_eq!(typed.form(), None);
    }

    #[test]
    fn which_plans_wait_for_approval() {
        let mut config = Config::default();
        let one_gpa = Plan {
            subtasks: vec![subtask(1, "GPA", &[])],
            replan: false,
            ask_user: None,
        };
        let two = Plan {
            subtasks: vec![subtask(1, "UMS", &[]), subtask(2, "GPA", &[1])],
            replan: false,
            ask_user: None,
        };
        let one_ums = Plan {
            subtasks: vec![subtask(1, "UMS", &[])],
            replan: false,
            ask_user: None,
        };
        let r = &config.registry;
        for plan in [&one_gpa, &two, &one_ums] {
            assert!(!needs_approval(plan, PlanApproval::Never, r));
            assert!(needs_approval(plan, PlanApproval::Always, r));
        }
        assert!(!needs_approval(&one_gpa, PlanApproval::MultiAgent, r));
        assert!(needs_approval(&two, PlanApproval::MultiAgent, r));
        assert!(!needs_approval(&one_ums, PlanApproval::MultiAgent, r));
        let ums = config
            .registry
            .agents()
            .iter()
            .position(|a| a.name == "UMS")
            .unwrap();
        let mut agents = config.registry.agents().to_vec();
        agents[ums].confirm = true;
        config.registry = Registry::new(agents);
        assert!(needs_approval(
            &one_ums,
            PlanApproval::MultiAgent,
            &config.registry
        ));
        assert_eq!(
            approval_question(&two),
            "I would run this plan:\n\n1. **UMS**: task 1\n2. **GPA**: task 2 (after 1)\n\nRun this plan?"
        );
    }
}

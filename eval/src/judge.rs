//! One answer judged against its case: what the coordinator would do with it
//! (read by the coordinator's own parsers), whether that is right, and the
//! cells of the confusion matrix it adds to.

use std::collections::{BTreeMap, BTreeSet};

use mas_coordinator::config::{Config, CoordinationMode};
use mas_coordinator::flow::plan::{self, Plan};
use mas_coordinator::flow::routing::{self, RoutingDecision};
use serde::Serialize;

use crate::cases::Case;

/// The chosen column of an expected agent no chosen agent stands for.
pub const MISSING: &str = "(missing)";
/// The expected row of a chosen agent no expected agent stands for.
pub const EXTRA: &str = "(extra)";
/// The chosen column of every expected agent of an answer the coordinator
/// could not use (it then falls back to its fallback agent).
pub const FALLBACK: &str = "(fallback)";

/// What the coordinator would run for an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// `plan` mode: the plan, as the coordinator repaired it.
    Plan(Plan),
    /// `route` mode: the decision.
    Route(RoutingDecision),
}

/// An answer, judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judged {
    /// The agents the coordinator would call, each once, in plan order.
    pub chosen: Vec<String>,
    /// What the coordinator would run.
    pub decision: Decision,
    /// Why the answer could not be used, when it could not (the coordinator
    /// then runs its fallback: one subtask for the fallback agent).
    pub fallback: Option<String>,
    /// What the coordinator repaired in the plan (dropped dependencies, cut subtasks).
    pub repairs: Vec<String>,
    /// Whether the plan asks to re-plan (only the first round is evaluated).
    pub replan: bool,
    /// Whether `expected_order` is respected (`None` when the case has none).
    pub order_respected: Option<bool>,
    /// The chosen agents equal the expected ones, the order (if any) is
    /// respected, and the answer was usable.
    pub correct: bool,
    /// The answer's shape (agents and the agents they depend on, without
    /// descriptions): answers of one case with different shapes make it flaky.
    pub shape: String,
}

/// Judges the coordination answer `text` for `case` in `mode` under `config`.
pub fn judge(text: &str, case: &Case, mode: CoordinationMode, config: &Config) -> Judged {
    let registry = &config.registry;
    let (decision, fallback, repairs, replan) = match mode {
        CoordinationMode::Route => {
            let routed = routing::parse_decision(Some(text), registry);
            (
                Decision::Route(routed.decision),
                routed.fallback_reason,
                Vec::new(),
                false,
            )
        }
        CoordinationMode::Plan => {
            let planned = plan::parse_plan(text, registry, config.max_subtasks, &case.request);
            let replan = planned.plan.replan;
            let (fallback, repairs) = if planned.fallback {
                (Some(fallback_reason(&planned.notes)), Vec::new())
            } else {
                (None, planned.notes.iter().map(|n| clean_note(n)).collect())
            };
            (Decision::Plan(planned.plan), fallback, repairs, replan)
        }
    };
    let chosen = chosen_agents(&decision);
    let order_respected =
        (!case.expected_order.is_empty()).then(|| order_respected(&decision, &case.expected_order));
    let same_set = chosen.iter().collect::<BTreeSet<_>>() == case.expected.iter().collect();
    let correct = fallback.is_none() && same_set && order_respected != Some(false);
    let shape = match &fallback {
        Some(_) => format!("fallback to {}", chosen.join(", ")),
        None => shape(&decision),
    };
    Judged {
        chosen,
        decision,
        fallback,
        repairs,
        replan,
        order_respected,
        correct,
        shape,
    }
}

/// The reason inside the coordinator's fallback note
/// (`_Coordination fallback: <reason>, so ... was chosen._`).
fn fallback_reason(notes: &[String]) -> String {
    let note = notes.concat();
    let note = clean_note(&note);
    note.strip_prefix("Coordination fallback: ")
        .and_then(|rest| rest.rsplit_once(", so "))
        .map_or_else(|| note.clone(), |(reason, _)| reason.to_owned())
}

/// A stage note without its Markdown emphasis and blank lines.
fn clean_note(note: &str) -> String {
    note.trim()
        .trim_start_matches('_')
        .trim_end_matches('_')
        .to_owned()
}

/// The agents of a decision, each once, in plan order.
pub fn chosen_agents(decision: &Decision) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    let names: Vec<&str> = match decision {
        Decision::Route(d) => vec![d.agent_name.as_str()],
        Decision::Plan(p) => p.subtasks.iter().map(|s| s.agent_name.as_str()).collect(),
    };
    for name in names {
        if !chosen.iter().any(|c| c == name) {
            chosen.push(name.to_owned());
        }
    }
    chosen
}

/// Whether every agent of each later group has a subtask that depends,
/// directly or through other subtasks, on a subtask of every earlier group. A
/// routing decision (one agent, no dependencies) respects only a single group.
pub fn order_respected(decision: &Decision, groups: &[Vec<String>]) -> bool {
    let plan = match decision {
        Decision::Route(_) => return groups.len() <= 1,
        Decision::Plan(p) => p,
    };
    let ancestors = ancestor_agents(plan);
    groups.iter().enumerate().skip(1).all(|(j, group)| {
        group.iter().all(|agent| {
            plan.subtasks
                .iter()
                .filter(|s| &s.agent_name == agent)
                .any(|s| {
                    let before = &ancestors[&s.task_id];
                    groups[..j]
                        .iter()
                        .all(|earlier| earlier.iter().any(|e| before.contains(e.as_str())))
                })
        })
    })
}

/// For each subtask, the agents of the subtasks it depends on, directly or not.
fn ancestor_agents(plan: &Plan) -> BTreeMap<u32, BTreeSet<&str>> {
    let by_id: BTreeMap<u32, &mas_coordinator::flow::plan::Subtask> =
        plan.subtasks.iter().map(|s| (s.task_id, s)).collect();
    let mut out = BTreeMap::new();
    for s in &plan.subtasks {
        let mut agents = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<u32> = s.depends_on.clone();
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(dep) = by_id.get(&id) {
                agents.insert(dep.agent_name.as_str());
                todo.extend(dep.depends_on.iter().copied());
            }
        }
        out.insert(s.task_id, agents);
    }
    out
}

/// The shape of a usable decision: each subtask as `AGENT` or
/// `AGENT after A+B` (the agents of its direct dependencies), sorted.
pub fn shape(decision: &Decision) -> String {
    let plan = match decision {
        Decision::Route(d) => return d.agent_name.clone(),
        Decision::Plan(p) => p,
    };
    let agent_of: BTreeMap<u32, &str> = plan
        .subtasks
        .iter()
        .map(|s| (s.task_id, s.agent_name.as_str()))
        .collect();
    let mut items: Vec<String> = plan
        .subtasks
        .iter()
        .map(|s| {
            let deps: BTreeSet<&str> = s
                .depends_on
                .iter()
                .filter_map(|d| agent_of.get(d).copied())
                .collect();
            if deps.is_empty() {
                s.agent_name.clone()
            } else {
                let deps: Vec<&str> = deps.into_iter().collect();
                format!("{} after {}", s.agent_name, deps.join("+"))
            }
        })
        .collect();
    items.sort();
    items.join(", ")
}

/// The confusion-matrix cells (expected, chosen) of one answer: each expected
/// agent that was chosen stands for itself; the other expected agents are
/// paired, in the order listed, with the other chosen agents, in plan order;
/// what is left over is [`MISSING`] (expected, not chosen) or [`EXTRA`]
/// (chosen, not expected). Every expected agent of an unusable answer goes to
/// [`FALLBACK`].
pub fn cells(expected: &[String], judged: &Judged) -> Vec<(String, String)> {
    if judged.fallback.is_some() {
        return expected
            .iter()
            .map(|e| (e.clone(), FALLBACK.to_owned()))
            .collect();
    }
    let chosen = &judged.chosen;
    let mut out: Vec<(String, String)> = expected
        .iter()
        .filter(|e| chosen.contains(e))
        .map(|e| (e.clone(), e.clone()))
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|e| !chosen.contains(e)).collect();
    let extra: Vec<&String> = chosen.iter().filter(|c| !expected.contains(c)).collect();
    for i in 0..missing.len().max(extra.len()) {
        let e = missing.get(i).map_or(EXTRA, |s| s.as_str());
        let c = extra.get(i).map_or(MISSING, |s| s.as_str());
        out.push((e.to_owned(), c.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::parse_cases;
    use serde_json::json;

    fn case(expected: &[&str], order: Option<Vec<Vec<&str>>>) -> Case {
        let mut line = json!({
            "id": "c",
            "messages": [{"role": "user", "content": "the request"}],
            "expected": expected,
        });
        if let Some(order) = order {
            line["expected_order"] = json!(order);
        }
        parse_cases(&line.to_string(), "t", &Config::default(), "k")
            .unwrap()
            .remove(0)
    }

    fn plan_text(subtasks: serde_json::Value) -> String {
        json!({"subtasks": subtasks, "replan": false}).to_string()
    }

    fn plan_judged(
        expected: &[&str],
        order: Option<Vec<Vec<&str>>>,
        subtasks: serde_json::Value,
    ) -> Judged {
        judge(
            &plan_text(subtasks),
            &case(expected, order),
            CoordinationMode::Plan,
            &Config::default(),
        )
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn a_plan_with_the_expected_agents_is_correct() {
        let j = plan_judged(
            &["UMS", "GPA"],
            None,
            json!([
                {"task_id": 1, "agent_name": "GPA", "task_description": "a"},
                {"task_id": 2, "agent_name": "UMS", "task_description": "b"},
                {"task_id": 3, "agent_name": "GPA", "task_description": "c"},
            ]),
        );
        assert!(j.correct);
        assert_eq!(j.chosen, vec!["GPA", "UMS"]);
        assert_eq!(j.order_respected, None);
        assert_eq!(j.shape, "GPA, GPA, UMS");
        assert_eq!(
            cells(&["UMS".to_owned(), "GPA".to_owned()], &j),
            pairs(&[("UMS", "UMS"), ("GPA", "GPA")])
        );
    }

    #[test]
    fn missing_and_extra_agents_are_cells_of_their_own() {
        let one = plan_judged(
            &["UMS", "GPA"],
            None,
            json!([{"task_id": 1, "agent_name": "UMS", "task_description": "a"}]),
        );
        assert!(!one.correct);
        assert_eq!(
            cells(&["UMS".to_owned(), "GPA".to_owned()], &one),
            pairs(&[("UMS", "UMS"), ("GPA", MISSING)])
        );
        let two = plan_judged(
            &["UMS"],
            None,
            json!([
                {"task_id": 1, "agent_name": "GPA", "task_description": "a"},
                {"task_id": 2, "agent_name": "UMS", "task_description": "b"},
            ]),
        );
        assert!(!two.correct);
        assert_eq!(
            cells(&["UMS".to_owned()], &two),
            pairs(&[("UMS", "UMS"), (EXTRA, "GPA")])
        );
        let swapped = plan_judged(
            &["UMS"],
            None,
            json!([{"task_id": 1, "agent_name": "GPA", "task_description": "a"}]),
        );
        assert_eq!(
            cells(&["UMS".to_owned()], &swapped),
            pairs(&[("UMS", "GPA")])
        );
    }

    #[test]
    fn the_order_needs_a_dependency_path_from_each_earlier_group() {
        let order = || Some(vec![vec!["UMS"], vec!["GPA"]]);
        let chained = plan_judged(
            &["UMS", "GPA"],
            order(),
            json!([
                {"task_id": 1, "agent_name": "UMS", "task_description": "a"},
                {"task_id": 2, "agent_name": "GPA", "task_description": "b", "depends_on": [1]},
            ]),
        );
        assert_eq!(chained.order_respected, Some(true));
        assert!(chained.correct);
        assert_eq!(chained.shape, "GPA after UMS, UMS");
        let independent = plan_judged(
            &["UMS", "GPA"],
            order(),
            json!([
                {"task_id": 1, "agent_name": "UMS", "task_description": "a"},
                {"task_id": 2, "agent_name": "GPA", "task_description": "b"},
            ]),
        );
        assert_eq!(independent.order_respected, Some(false));
        assert!(!independent.correct);
        let reversed = plan_judged(
            &["UMS", "GPA"],
            order(),
            json!([
                {"task_id": 1, "agent_name": "GPA", "task_description": "a"},
                {"task_id": 2, "agent_name": "UMS", "task_description": "b", "depends_on": [1]},
            ]),
        );
        assert_eq!(reversed.order_respected, Some(false));
        // Through another subtask, and with an unrelated GPA subtask beside it.
        let transitive = plan_judged(
            &["UMS", "GPA"],
            order(),
            json!([
                {"task_id": 1, "agent_name": "UMS", "task_description": "a"},
                {"task_id": 2, "agent_name": "UMS", "task_description": "b", "depends_on": [1]},
                {"task_id": 3, "agent_name": "GPA", "task_description": "c", "depends_on": [2]},
                {"task_id": 4, "agent_name": "GPA", "task_description": "d"},
            ]),
        );
        assert_eq!(transitive.order_respected, Some(true));
        assert!(transitive.correct);
    }

    #[test]
    fn unusable_answers_are_fallbacks_and_wrong_even_for_the_fallback_agent() {
        let c = case(&["GPA"], None);
        let j = judge(
            "this is not json",
            &c,
            CoordinationMode::Plan,
            &Config::default(),
        );
        assert_eq!(j.fallback.as_deref(), Some("the plan was not a valid plan"));
        assert_eq!(j.chosen, vec!["GPA"]);
        assert!(!j.correct);
        assert_eq!(j.shape, "fallback to GPA");
        assert_eq!(cells(&c.expected, &j), pairs(&[("GPA", FALLBACK)]));
        let r = judge(
            r#"{"agent_name":"XYZ"}"#,
            &c,
            CoordinationMode::Route,
            &Config::default(),
        );
        assert_eq!(
            r.fallback.as_deref(),
            Some("the routing answer named an unknown agent")
        );
        assert!(!r.correct);
    }

    #[test]
    fn routing_decisions_are_judged_by_their_one_agent() {
        let c = case(&["UMS"], None);
        let j = judge(
            r#"{"agent_name":"UMS","additional_instructions":null}"#,
            &c,
            CoordinationMode::Route,
            &Config::default(),
        );
        assert!(j.correct);
        assert_eq!(j.shape, "UMS");
        let two = case(&["UMS", "GPA"], Some(vec![vec!["UMS"], vec!["GPA"]]));
        let d = Decision::Route(RoutingDecision {
            agent_name: "UMS".into(),
            additional_instructions: None,
            ask_user: None,
        });
        assert!(!order_respected(&d, &two.expected_order));
    }

    #[test]
    fn repairs_are_kept_and_do_not_make_a_plan_wrong() {
        let j = plan_judged(
            &["GPA"],
            None,
            json!([{"task_id": 1, "agent_name": "GPA", "task_description": "a", "depends_on": [9]}]),
        );
        assert!(j.correct);
        assert_eq!(
            j.repairs,
            vec!["Task 1 depended on tasks that are not in the plan (or on itself); those dependencies were dropped."]
        );
    }
}

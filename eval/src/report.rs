//! The report of a run: figures computed from the attempts, written as JSON
//! (`report.json`) and Markdown (`report.md`, also printed without its table
//! of every answer).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mas_coordinator::config::{Config, CoordinationMode};
use serde::Serialize;

use crate::cases::Case;
use crate::judge::{cells, Decision, EXTRA, FALLBACK, MISSING};
use crate::run::{Attempt, Outcome};

/// What was run, against what.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// The cases file.
    pub cases_file: String,
    /// `plan` or `route`.
    pub mode: String,
    /// DIAL Core's URL.
    pub endpoint: String,
    /// The LLM deployment evaluated.
    pub deployment: String,
    /// The registered agents, in order.
    pub agents: Vec<String>,
    /// `--repeat`.
    pub repeat: u32,
}

/// One cell of the confusion matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// An agent, or `(extra)`.
    pub expected: String,
    /// An agent, `(missing)` or `(fallback)`.
    pub chosen: String,
    /// How many answers.
    pub count: usize,
}

/// A wrong answer the coordinator could use.
#[derive(Debug, Clone, Serialize)]
pub struct Misrouted {
    /// The case.
    pub id: String,
    /// Which repeat (1-based).
    pub repeat: u32,
    /// The user's request (shortened).
    pub request: String,
    /// The label.
    pub expected: Vec<String>,
    /// The label's order, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expected_order: Vec<Vec<String>>,
    /// The agents chosen.
    pub chosen: Vec<String>,
    /// Whether the order was respected (when the case has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_respected: Option<bool>,
    /// The plan or decision the coordinator would run.
    pub decision: Decision,
    /// The case's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An answer the coordinator could not use.
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    /// The case.
    pub id: String,
    /// Which repeat (1-based).
    pub repeat: u32,
    /// Why the coordinator could not use it.
    pub reason: String,
    /// The answer (shortened).
    pub answer: String,
}

/// A call that got no answer.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorAnswer {
    /// The case.
    pub id: String,
    /// Which repeat (1-based).
    pub repeat: u32,
    /// What went wrong.
    pub error: String,
}

/// One of the different answers of a flaky case.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// The answer's shape (see `judge::shape`).
    pub shape: String,
    /// How many repeats answered so.
    pub count: usize,
    /// Whether that answer is right.
    pub correct: bool,
}

/// A case whose answers differ across repeats.
#[derive(Debug, Clone, Serialize)]
pub struct Flaky {
    /// The case.
    pub id: String,
    /// Its answers, in order of first appearance.
    pub variants: Vec<Variant>,
}

/// Latency of the answered calls, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// Tokens, as the answers reported them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tokens {
    /// Prompt tokens, summed.
    pub prompt: u64,
    /// Completion tokens, summed.
    pub completion: u64,
    /// Total tokens, summed.
    pub total: u64,
    /// How many answers reported usage.
    pub answers_with_usage: usize,
    /// `total / answers_with_usage`.
    pub mean_total_per_answer: Option<f64>,
}

/// One row per call.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The case.
    pub id: String,
    /// Which repeat (1-based).
    pub repeat: u32,
    /// Right or not (an error is not).
    pub correct: bool,
    /// The label.
    pub expected: Vec<String>,
    /// The agents chosen (none for an error).
    pub chosen: Vec<String>,
    /// The answer's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<String>,
    /// Set when the answer was unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Set when the call got no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The plan asked to re-plan (only its first round is judged).
    pub replan: bool,
    /// Repairs the coordinator made to the plan.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<String>,
    /// Milliseconds (absent for an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Reported usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<mas_coordinator::wire::usage::Usage>,
    /// The answer's text (shortened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    #[serde(flatten)]
    pub meta: Meta,
    /// Cases in the file.
    pub cases_in_file: usize,
    /// Cases run.
    pub cases: usize,
    /// Cases not run (in `route` mode, those expecting several agents).
    pub skipped: Vec<String>,
    /// Calls made: cases run × repeat.
    pub answers: usize,
    /// Right answers.
    pub correct: usize,
    /// `correct / answers`.
    pub accuracy: f64,
    /// Unusable answers (counted as wrong).
    pub fallbacks: usize,
    /// Calls without an answer (counted as wrong).
    pub errors: usize,
    /// Plans that asked to re-plan.
    pub replans: usize,
    /// Every non-empty cell, rows and columns in the order of the matrix.
    pub confusion: Vec<Cell>,
    /// Wrong usable answers.
    pub misrouted: Vec<Misrouted>,
    /// Unusable answers.
    pub fallback_answers: Vec<Fallback>,
    /// Calls without an answer.
    pub error_answers: Vec<ErrorAnswer>,
    /// Cases whose answers differ across repeats.
    pub flaky: Vec<Flaky>,
    /// Latency of the answered calls (absent when none was answered).
    pub latency_ms: Option<Latency>,
    /// Tokens.
    pub tokens: Tokens,
    /// Every call.
    pub results: Vec<Row>,
}

/// Longest request or answer excerpt in the report.
const EXCERPT: usize = 300;

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The mode's name.
pub fn mode_name(mode: CoordinationMode) -> &'static str {
    match mode {
        CoordinationMode::Plan => "plan",
        CoordinationMode::Route => "route",
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report {
    /// The report of `attempts` of `cases` (`skipped`: indices not run).
    pub fn new(
        meta: Meta,
        config: &Config,
        cases: &[Case],
        skipped: &[usize],
        attempts: &[Attempt],
    ) -> Report {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut misrouted = Vec::new();
        let mut fallback_answers = Vec::new();
        let mut error_answers = Vec::new();
        let mut latencies = Vec::new();
        let mut tokens = Tokens::default();
        let mut results = Vec::new();
        let mut correct = 0;
        let mut replans = 0;
        for a in attempts {
            let case = &cases[a.case];
            let repeat = a.repeat + 1;
            match &a.outcome {
                Outcome::Error(error) => {
                    error_answers.push(ErrorAnswer {
                        id: case.id.clone(),
                        repeat,
                        error: error.clone(),
                    });
                    results.push(Row {
                        id: case.id.clone(),
                        repeat,
                        correct: false,
                        expected: case.expected.clone(),
                        chosen: Vec::new(),
                        shape: None,
                        fallback: None,
                        error: Some(error.clone()),
                        replan: false,
                        repairs: Vec::new(),
                        latency_ms: None,
                        tokens: None,
                        answer: None,
                    });
                }
                Outcome::Answered(answer) => {
                    let j = &answer.judged;
                    for cell in cells(&case.expected, j) {
                        *counts.entry(cell).or_default() += 1;
                    }
                    if j.correct {
                        correct += 1;
                    }
                    if j.replan {
                        replans += 1;
                    }
                    if let Some(reason) = &j.fallback {
                        fallback_answers.push(Fallback {
                            id: case.id.clone(),
                            repeat,
                            reason: reason.clone(),
                            answer: excerpt(&answer.text),
                        });
                    } else if !j.correct {
                        misrouted.push(Misrouted {
                            id: case.id.clone(),
                            repeat,
                            request: excerpt(&case.request),
                            expected: case.expected.clone(),
                            expected_order: case.expected_order.clone(),
                            chosen: j.chosen.clone(),
                            order_respected: j.order_respected,
                            decision: j.decision.clone(),
                            note: case.note.clone(),
                        });
                    }
                    latencies.push(answer.latency_ms);
                    if let Some(u) = answer.usage {
                        tokens.prompt += u.prompt_tokens;
                        tokens.completion += u.completion_tokens;
                        tokens.total += u.total_tokens;
                        tokens.answers_with_usage += 1;
                    }
                    results.push(Row {
                        id: case.id.clone(),
                        repeat,
                        correct: j.correct,
                        expected: case.expected.clone(),
                        chosen: j.chosen.clone(),
                        shape: Some(j.shape.clone()),
                        fallback: j.fallback.clone(),
                        error: None,
                        replan: j.replan,
                        repairs: j.repairs.clone(),
                        latency_ms: Some(round1(answer.latency_ms)),
                        tokens: answer.usage,
                        answer: Some(excerpt(&answer.text)),
                    });
                }
            }
        }
        if tokens.answers_with_usage > 0 {
            tokens.mean_total_per_answer = Some(round1(
                tokens.total as f64 / tokens.answers_with_usage as f64,
            ));
        }
        latencies.sort_by(f64::total_cmp);
        let latency_ms = (!latencies.is_empty()).then(|| Latency {
            p50: round1(percentile(&latencies, 50.0)),
            p99: round1(percentile(&latencies, 99.0)),
            max: round1(latencies.last().copied().unwrap_or_default()),
        });
        let (rows, columns) = axes(config);
        let mut confusion = Vec::new();
        for r in &rows {
            for c in &columns {
                if let Some(&count) = counts.get(&(r.clone(), c.clone())) {
                    confusion.push(Cell {
                        expected: r.clone(),
                        chosen: c.clone(),
                        count,
                    });
                }
            }
        }
        let flaky = flaky(cases, attempts);
        let answers = attempts.len();
        let run_cases = cases.len() - skipped.len();
        Report {
            meta,
            cases_in_file: cases.len(),
            cases: run_cases,
            skipped: skipped.iter().map(|&i| cases[i].id.clone()).collect(),
            answers,
            correct,
            accuracy: if answers == 0 {
                0.0
            } else {
                correct as f64 / answers as f64
            },
            fallbacks: fallback_answers.len(),
            errors: error_answers.len(),
            replans,
            confusion,
            misrouted,
            fallback_answers,
            error_answers,
            flaky,
            latency_ms,
            tokens,
            results,
        }
    }

    /// The count of a cell of the confusion matrix.
    pub fn cell(&self, expected: &str, chosen: &str) -> usize {
        self.confusion
            .iter()
            .find(|c| c.expected == expected && c.chosen == chosen)
            .map_or(0, |c| c.count)
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report as Markdown; `all` adds the table of every answer.
    pub fn markdown(&self, all: bool) -> String {
        let mut md = String::new();
        let m = &self.meta;
        let _ = writeln!(md, "# Coordination evaluation\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let mut cases = format!("{} ({} cases", m.cases_file, self.cases_in_file);
        if !self.skipped.is_empty() {
            let _ = write!(
                cases,
                "; {} run, {} skipped: they expect several agents and route mode picks one",
                self.cases,
                self.skipped.len()
            );
        }
        cases.push(')');
        let _ = writeln!(md, "| cases | {} |", cell_text(&cases));
        let _ = writeln!(md, "| mode | {} |", m.mode);
        let _ = writeln!(
            md,
            "| endpoint | {} (deployment `{}`) |",
            cell_text(&m.endpoint),
            m.deployment
        );
        let _ = writeln!(md, "| agents | {} |", m.agents.join(", "));
        let _ = writeln!(md, "| answers | {} (repeat {}) |", self.answers, m.repeat);
        let _ = writeln!(
            md,
            "| **accuracy** | **{}/{} = {:.1}%** |",
            self.correct,
            self.answers,
            self.accuracy * 100.0
        );
        let _ = writeln!(
            md,
            "| fallbacks | {} (unusable answers, counted as wrong) |",
            self.fallbacks
        );
        let _ = writeln!(
            md,
            "| errors | {} (calls without an answer, counted as wrong) |",
            self.errors
        );
        if m.mode == "plan" {
            let _ = writeln!(
                md,
                "| re-plans | {} (plans asking for another round; only the first round is judged) |",
                self.replans
            );
        }
        let flaky = if m.repeat > 1 {
            format!("{} of {}", self.flaky.len(), self.cases)
        } else {
            "not measured (use --repeat N)".to_owned()
        };
        let _ = writeln!(md, "| flaky cases | {flaky} |");
        let latency = match self.latency_ms {
            Some(l) => format!("p50 {} ms, p99 {} ms, max {} ms", l.p50, l.p99, l.max),
            None => "no answer".to_owned(),
        };
        let _ = writeln!(md, "| latency | {latency} |");
        let t = &self.tokens;
        let tokens = match t.mean_total_per_answer {
            Some(mean) => format!(
                "{} prompt + {} completion = {} total; {mean} per answer ({} of {} answers reported usage)",
                t.prompt,
                t.completion,
                t.total,
                t.answers_with_usage,
                self.answers - self.errors
            ),
            None => "not reported".to_owned(),
        };
        let _ = writeln!(md, "| tokens | {tokens} |");

        let _ = writeln!(md, "\n## Confusion matrix (expected → chosen)\n");
        let (rows, columns) = axes_of(&m.agents);
        let _ = writeln!(md, "| expected ↓ / chosen → | {} |", columns.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(columns.len()));
        for r in &rows {
            let counts: Vec<String> = columns
                .iter()
                .map(|c| {
                    if r == EXTRA && (c == MISSING || c == FALLBACK) {
                        String::new()
                    } else {
                        self.cell(r, c).to_string()
                    }
                })
                .collect();
            let _ = writeln!(md, "| {r} | {} |", counts.join(" | "));
        }
        let _ = writeln!(
            md,
            "\nEach expected agent of an answer counts once in its row: under the agent that stood \
for it, under {MISSING} when no chosen agent did, under {FALLBACK} when the answer was unusable. \
Chosen agents nobody expected count in the {EXTRA} row."
        );

        let _ = writeln!(md, "\n## Misrouted ({})\n", self.misrouted.len());
        if self.misrouted.is_empty() {
            let _ = writeln!(md, "None.");
        }
        for w in &self.misrouted {
            let _ = write!(
                md,
                "- `{}`{}: expected {}",
                w.id,
                repeat_tag(w.repeat, m.repeat),
                agents_text(&w.expected)
            );
            if !w.expected_order.is_empty() {
                let groups: Vec<String> = w.expected_order.iter().map(|g| g.join("+")).collect();
                let _ = write!(md, " (in the order {})", groups.join(" → "));
            }
            let _ = write!(md, ", chose {}", agents_text(&w.chosen));
            if w.order_respected == Some(false) {
                let _ = write!(md, ", order not respected");
            }
            let _ = writeln!(md, " — {}", quote(&w.request));
            match &w.decision {
                Decision::Plan(p) => {
                    for s in &p.subtasks {
                        let deps = if s.depends_on.is_empty() {
                            String::new()
                        } else {
                            let d: Vec<String> = s.depends_on.iter().map(u32::to_string).collect();
                            format!(" (after {})", d.join(", "))
                        };
                        let _ = writeln!(
                            md,
                            "  - {}. {}{deps}: {}",
                            s.task_id,
                            s.agent_name,
                            quote(&excerpt(&s.task_description))
                        );
                    }
                }
                Decision::Route(d) => {
                    let _ = writeln!(md, "  - routed to {}", d.agent_name);
                }
            }
            if let Some(note) = &w.note {
                let _ = writeln!(md, "  - label: {}", cell_text(note));
            }
        }

        let _ = writeln!(md, "\n## Fallbacks ({})\n", self.fallbacks);
        if self.fallback_answers.is_empty() {
            let _ = writeln!(md, "None.");
        }
        for f in &self.fallback_answers {
            let _ = writeln!(
                md,
                "- `{}`{}: {} — answer: {}",
                f.id,
                repeat_tag(f.repeat, m.repeat),
                f.reason,
                quote(&f.answer)
            );
        }

        let _ = writeln!(md, "\n## Errors ({})\n", self.errors);
        if self.error_answers.is_empty() {
            let _ = writeln!(md, "None.");
        }
        for e in &self.error_answers {
            let _ = writeln!(
                md,
                "- `{}`{}: {}",
                e.id,
                repeat_tag(e.repeat, m.repeat),
                cell_text(&e.error)
            );
        }

        if m.repeat > 1 {
            let _ = writeln!(md, "\n## Flaky cases ({})\n", self.flaky.len());
            if self.flaky.is_empty() {
                let _ = writeln!(md, "None: every case got the same answer in every repeat.");
            }
            for f in &self.flaky {
                let variants: Vec<String> = f
                    .variants
                    .iter()
                    .map(|v| {
                        format!(
                            "{} ×{} ({})",
                            v.shape,
                            v.count,
                            if v.correct { "right" } else { "wrong" }
                        )
                    })
                    .collect();
                let _ = writeln!(md, "- `{}`: {}", f.id, variants.join("; "));
            }
        }

        if all {
            let _ = writeln!(md, "\n## Every answer\n");
            let _ = writeln!(
                md,
                "| case | repeat | result | expected | chosen (plan shape) | latency ms | tokens |\n|---|---:|---|---|---|---:|---:|"
            );
            for r in &self.results {
                let result = if r.error.is_some() {
                    "error"
                } else if r.fallback.is_some() {
                    "fallback"
                } else if r.correct {
                    "right"
                } else {
                    "wrong"
                };
                let chosen = r.shape.clone().unwrap_or_default();
                let latency = r.latency_ms.map(|l| l.to_string()).unwrap_or_default();
                let tokens = r
                    .tokens
                    .map(|t| t.total_tokens.to_string())
                    .unwrap_or_default();
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {result} | {} | {} | {latency} | {tokens} |",
                    r.id,
                    r.repeat,
                    r.expected.join(", "),
                    cell_text(&chosen)
                );
            }
        }
        md
    }
}

/// The matrix's rows (agents, then `(extra)`) and columns (agents, then
/// `(missing)` and `(fallback)`).
fn axes(config: &Config) -> (Vec<String>, Vec<String>) {
    let agents: Vec<String> = config
        .registry
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    axes_of(&agents)
}

fn axes_of(agents: &[String]) -> (Vec<String>, Vec<String>) {
    let mut rows = agents.to_vec();
    rows.push(EXTRA.to_owned());
    let mut columns = agents.to_vec();
    columns.push(MISSING.to_owned());
    columns.push(FALLBACK.to_owned());
    (rows, columns)
}

fn flaky(cases: &[Case], attempts: &[Attempt]) -> Vec<Flaky> {
    let mut by_case: BTreeMap<usize, Vec<Variant>> = BTreeMap::new();
    for a in attempts {
        let Outcome::Answered(answer) = &a.outcome else {
            continue;
        };
        let variants = by_case.entry(a.case).or_default();
        match variants.iter_mut().find(|v| v.shape == answer.judged.shape) {
            Some(v) => v.count += 1,
            None => variants.push(Variant {
                shape: answer.judged.shape.clone(),
                count: 1,
                correct: answer.judged.correct,
            }),
        }
    }
    by_case
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(i, variants)| Flaky {
            id: cases[i].id.clone(),
            variants,
        })
        .collect()
}

fn repeat_tag(repeat: u32, repeats: u32) -> String {
    if repeats > 1 {
        format!(" (repeat {repeat})")
    } else {
        String::new()
    }
}

fn agents_text(agents: &[String]) -> String {
    if agents.is_empty() {
        "nothing".to_owned()
    } else {
        agents.join(" + ")
    }
}

/// Text safe inside a Markdown table cell or list item: one line, no pipes.
fn cell_text(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn quote(text: &str) -> String {
    format!("“{}”", cell_text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn cell_text_stays_on_one_line_without_pipes() {
        assert_eq!(cell_text("a |b\n c"), "a \\|b c");
        assert_eq!(excerpt(&"x".repeat(301)), format!("{}…", "x".repeat(300)));
    }
}

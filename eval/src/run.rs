//! Runs the coordination step of every case (times `--repeat`) against the
//! endpoint, at most `--concurrency` calls at once.
//!
//! Each call is the one the component makes as its first step: the body from
//! `routing::request_body` or `plan::request_body`, sent through
//! `RequestTemplate::dial_chat` to the primary LLM deployment (with `model`,
//! `Api-Key`, `Content-Type` and the tracing headers), its answer read as
//! the component reads a non-streaming completion and judged by the
//! component's own parsers. Backup deployments are not tried: the primary is
//! the model being evaluated.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use mas_coordinator::calls::RequestTemplate;
use mas_coordinator::config::{Config, CoordinationMode};
use mas_coordinator::error::redact;
use mas_coordinator::flow::{plan, routing};
use mas_coordinator::wire::upstream::Completion;
use mas_coordinator::wire::usage::Usage;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cases::{fresh, Case};
use crate::client::{CallError, Client};
use crate::judge::{judge, Judged};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How many times each case is asked.
    pub repeat: u32,
    /// Most calls at once.
    pub concurrency: usize,
    /// Whether to draw the progress bar on stderr (never drawn when stderr is
    /// not a terminal).
    pub progress: bool,
}

/// One call's outcome.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The endpoint answered with a chat completion.
    Answered(Box<Answer>),
    /// It did not (timeout, non-2xx status, not a chat completion): counted as
    /// a wrong answer, listed apart.
    Error(String),
}

/// An answer and what it says.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer judged.
    pub judged: Judged,
    /// The text of the answer's first choice, as the LLM wrote it.
    pub text: String,
    /// From sending the request to the end of the answer, connecting included.
    pub latency_ms: f64,
    /// The usage the answer reported.
    pub usage: Option<Usage>,
}

/// The outcome of one call of one case.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Index of the case in the cases run.
    pub case: usize,
    /// Which repeat (0-based).
    pub repeat: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// The cases `mode` can answer correctly, and the indices of the others:
/// in `route` mode, the cases that expect more than one agent are skipped.
pub fn runnable(cases: &[Case], mode: CoordinationMode) -> (Vec<usize>, Vec<usize>) {
    (0..cases.len()).partition(|&i| mode == CoordinationMode::Plan || cases[i].expected.len() == 1)
}

/// The body of the component's first coordination call for `case`.
pub fn coordination_body(case: &Case) -> Vec<u8> {
    match case.ctx.config.coordination_mode {
        CoordinationMode::Route => routing::request_body(&case.ctx),
        CoordinationMode::Plan => plan::request_body(&case.ctx, &[]),
    }
}

#[derive(Debug, Default)]
struct Progress {
    wrong: usize,
    errors: usize,
    fatal: Option<String>,
}

/// The progress bar on stderr, `[####------] 40/80 answers, 3 wrong, 1 errors`;
/// hidden when `draw` is false or stderr is not a terminal.
fn progress_bar(total: usize, draw: bool) -> ProgressBar {
    let target = if draw {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos}/{len} answers, {msg}") {
        bar.set_style(style.progress_chars("##-"));
    }
    bar.set_message("0 wrong, 0 errors");
    bar
}

/// Runs every case of `indices` (each `repeat` times: all cases once, then
/// again), returning the attempts in that order. Stops at the first call that
/// shows the endpoint cannot be used at all (unreachable; HTTP 401, 403 or
/// 404) with that error.
pub async fn run(
    cases: Arc<Vec<Case>>,
    indices: &[usize],
    config: &Config,
    client: &Client,
    options: &RunOptions,
) -> anyhow::Result<Vec<Attempt>> {
    let jobs: Vec<(usize, u32)> = (0..options.repeat.max(1))
        .flat_map(|r| indices.iter().map(move |&i| (i, r)))
        .collect();
    let total = jobs.len();
    let jobs = Arc::new(jobs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<Attempt>>>> = Arc::new(Mutex::new(vec![None; total]));
    let progress = Arc::new(Mutex::new(Progress::default()));
    let targets = config.llm_targets();
    let target = Arc::new(
        targets
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no LLM deployment is configured"))?,
    );
    let bar = progress_bar(total, options.progress);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.clamp(1, total.max(1)) {
        let (cases, jobs, next, results, progress, target, client, bar) = (
            cases.clone(),
            jobs.clone(),
            next.clone(),
            results.clone(),
            progress.clone(),
            target.clone(),
            client.clone(),
            bar.clone(),
        );
        workers.spawn(async move {
            loop {
                if lock(&progress).fatal.is_some() {
                    return;
                }
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(case_index, repeat)) = jobs.get(n) else {
                    return;
                };
                let case = &cases[case_index];
                let mut request =
                    RequestTemplate::dial_chat(&case.ctx, coordination_body(case)).build(&target);
                let span = mas_coordinator::trace::span_id(fresh(n as u64));
                for (name, value) in case.ctx.trace.call_headers(&span) {
                    request.headers.push((name.to_owned(), value));
                }
                let started = Instant::now();
                let sent = client.send(&request).await;
                let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                let key = case.ctx.api_key.as_str();
                let outcome = match read_answer(sent, &request.url, key) {
                    Ok((text, usage)) => Ok(Outcome::Answered(Box::new(Answer {
                        judged: judge(
                            &text,
                            case,
                            case.ctx.config.coordination_mode,
                            &case.ctx.config,
                        ),
                        text,
                        latency_ms,
                        usage,
                    }))),
                    Err(Failure::Fatal(m)) => Err(m),
                    Err(Failure::Case(m)) => Ok(Outcome::Error(m)),
                };
                let mut p = lock(&progress);
                match outcome {
                    Err(fatal) => {
                        p.fatal.get_or_insert(fatal);
                        return;
                    }
                    Ok(outcome) => {
                        match &outcome {
                            Outcome::Answered(a) if !a.judged.correct => p.wrong += 1,
                            Outcome::Error(_) => p.errors += 1,
                            Outcome::Answered(_) => {}
                        }
                        lock(&results)[n] = Some(Attempt {
                            case: case_index,
                            repeat,
                            outcome,
                        });
                    }
                }
                bar.set_message(format!("{} wrong, {} errors", p.wrong, p.errors));
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    bar.finish();
    if let Some(fatal) = lock(&progress).fatal.take() {
        return Err(anyhow::anyhow!("{fatal}"));
    }
    let results = std::mem::take(&mut *lock(&results));
    Ok(results.into_iter().flatten().collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Failure {
    /// Nothing will get through: stop the run.
    Fatal(String),
    /// This call failed.
    Case(String),
}

/// Reads a call's outcome as the component reads a coordination answer: a
/// 2xx chat completion's first message text (empty when it has none) and its
/// usage. Every message has the key removed.
fn read_answer(
    sent: Result<crate::client::Response, CallError>,
    url: &str,
    key: &str,
) -> Result<(String, Option<Usage>), Failure> {
    let clean = |m: String| {
        if key.is_empty() {
            m
        } else {
            m.replace(key, "***")
        }
    };
    let response = match sent {
        Ok(r) => r,
        Err(CallError::Unreachable(m)) => return Err(Failure::Fatal(clean(m))),
        Err(CallError::Failed(m)) => return Err(Failure::Case(clean(m))),
    };
    let excerpt = redact(&String::from_utf8_lossy(&response.body), key);
    if !(200..300).contains(&response.status) {
        let mut message = format!("{url} answered HTTP {}", response.status);
        if !excerpt.is_empty() {
            message.push_str(": ");
            message.push_str(&excerpt);
        }
        return Err(match response.status {
            401 | 403 => Failure::Fatal(clean(format!(
                "{message} (check DIAL_API_KEY: the key is not accepted for this deployment)"
            ))),
            404 => Failure::Fatal(clean(format!(
                "{message} (check DIAL_ENDPOINT and DEPLOYMENT_NAME)"
            ))),
            _ => Failure::Case(clean(message)),
        });
    }
    let completion: Completion = serde_json::from_slice(&response.body).map_err(|_| {
        Failure::Case(clean(format!(
            "the answer of {url} is not a chat completion: {excerpt}"
        )))
    })?;
    Ok(completion.into_text_and_usage())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Response;

    fn answer(status: u16, body: &str) -> Result<(String, Option<Usage>), Failure> {
        read_answer(
            Ok(Response {
                status,
                body: body.as_bytes().to_vec(),
            }),
            "http://core/x",
            "sekret",
        )
    }

    #[test]
    fn answers_are_read_as_the_component_reads_them() {
        let Ok((text, usage)) = answer(
            200,
            r#"{"choices":[{"message":{"content":"{}"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        ) else {
            panic!("not read");
        };
        assert_eq!(text, "{}");
        assert_eq!(usage, Some(Usage::new(3, 1)));
        let Ok((text, usage)) = answer(200, r#"{"choices":[{"message":{}}]}"#) else {
            panic!("not read");
        };
        assert_eq!((text.as_str(), usage), ("", None));
    }

    #[test]
    fn failures_name_the_url_and_never_the_key() {
        let Err(Failure::Fatal(m)) = answer(401, "bad key sekret") else {
            panic!("401 is fatal");
        };
        assert_eq!(
            m,
            "http://core/x answered HTTP 401: bad key *** (check DIAL_API_KEY: the key is not accepted for this deployment)"
        );
        let Err(Failure::Case(m)) = answer(429, "") else {
            panic!("429 is a case error");
        };
        assert_eq!(m, "http://core/x answered HTTP 429");
        let Err(Failure::Case(m)) = answer(200, "<html>sekret</html>") else {
            panic!("not a completion");
        };
        assert_eq!(
            m,
            "the answer of http://core/x is not a chat completion: <html>***</html>"
        );
        let Err(Failure::Fatal(m)) = read_answer(
            Err(CallError::Unreachable("cannot connect sekret".into())),
            "u",
            "sekret",
        ) else {
            panic!("unreachable is fatal");
        };
        assert_eq!(m, "cannot connect ***");
    }
}

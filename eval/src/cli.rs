//! The command line: flags, configuration, and one run from the cases file to
//! the report.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use mas_coordinator::config::{Config, CoordinationMode};

use crate::cases::parse_cases;
use crate::client::Client;
use crate::report::{mode_name, Meta, Report};
use crate::run::{run, runnable, RunOptions};

/// The shipped cases.
pub const DEFAULT_CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cases.jsonl");
/// Where the report goes by default: the workspace's `target/eval`.
pub fn default_out() -> PathBuf {
    let eval = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    eval.parent().unwrap_or(eval).join("target").join("eval")
}
/// The key sent to the local world when `DIAL_API_KEY` is not set.
pub const LOCAL_WORLD_KEY: &str = "local-world";

/// Exit status: accuracy below `--min-accuracy`.
pub const EXIT_BELOW_MIN: i32 = 1;
/// Exit status: anything that stopped the run (flags, configuration, cases,
/// an endpoint that cannot be used).
pub const EXIT_ERROR: i32 = 2;

/// The usage text.
pub const USAGE: &str = "\
mas-eval: runs the coordinator's coordination step on labelled cases against a DIAL
endpoint and reports whether it picks the right agents (docs/eval.md).

Usage: mas-eval [options]

Options:
  --cases FILE        the labelled cases, JSON Lines (default: the shipped eval/cases.jsonl)
  --out DIR           where report.json and report.md go (default: target/eval)
  --mode plan|route   the coordination mode (default: COORDINATION_MODE, else plan)
  --concurrency N     calls at once, 1 to 64 (default: 4)
  --repeat N          ask every case N times, 1 to 100, to expose non-determinism (default: 1)
  --min-accuracy X    exit with status 1 when the accuracy (0 to 1) is below X
  --local-world       start the local DIAL world in process and run against it
  --no-progress       no progress bar on stderr (it is drawn only on a terminal anyway)
  -h, --help          this text

Environment: DIAL_ENDPOINT (required unless --local-world), DEPLOYMENT_NAME, DIAL_API_KEY
(required unless --local-world), and every other variable the coordinator reads (AGENTS,
AGENT_<NAME>_*, COORDINATION_MODE, MAX_SUBTASKS, DIAL_API_VERSION, UPSTREAM_*_TIMEOUT_MS, ...).
SSL_CERT_FILE adds trusted certificates (PEM) to Mozilla's.

Exit status: 0 done; 1 accuracy below --min-accuracy; 2 error.";

/// The parsed flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// `--cases`.
    pub cases: PathBuf,
    /// `--out`.
    pub out: PathBuf,
    /// `--mode`.
    pub mode: Option<CoordinationMode>,
    /// `--concurrency`.
    pub concurrency: usize,
    /// `--repeat`.
    pub repeat: u32,
    /// `--min-accuracy`.
    pub min_accuracy: Option<f64>,
    /// `--local-world`.
    pub local_world: bool,
    /// Not `--no-progress`.
    pub progress: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            cases: PathBuf::from(DEFAULT_CASES),
            out: default_out(),
            mode: None,
            concurrency: 4,
            repeat: 1,
            min_accuracy: None,
            local_world: false,
            progress: true,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print the usage.
    Help,
    /// Run.
    Run(Args),
}

/// Parses the flags (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--cases" => out.cases = PathBuf::from(value("--cases")?),
            "--out" => out.out = PathBuf::from(value("--out")?),
            "--mode" => {
                out.mode = Some(match value("--mode")?.to_ascii_lowercase().as_str() {
                    "plan" => CoordinationMode::Plan,
                    "route" => CoordinationMode::Route,
                    other => return Err(format!("--mode must be plan or route, not {other:?}")),
                });
            }
            "--concurrency" => {
                out.concurrency = number(&value("--concurrency")?, "--concurrency", 64)?
            }
            "--repeat" => {
                out.repeat = u32::try_from(number(&value("--repeat")?, "--repeat", 100)?)
                    .map_err(|e| e.to_string())?;
            }
            "--min-accuracy" => {
                let v = value("--min-accuracy")?;
                match v.trim().parse::<f64>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => out.min_accuracy = Some(x),
                    _ => {
                        return Err(format!(
                            "--min-accuracy must be a number from 0 to 1, not {v:?}"
                        ))
                    }
                }
            }
            "--local-world" | "--no-progress" if inline.is_some() => {
                return Err(format!("{flag} takes no value"));
            }
            "--local-world" => out.local_world = true,
            "--no-progress" => out.progress = false,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Command::Run(out))
}

fn number(v: &str, name: &str, max: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be a whole number from 1 to {max}, not {v:?}"
        )),
    }
}

/// One run: configuration from `env`, the cases, the calls, the report
/// (printed and written). Returns the exit status.
pub async fn run_command(args: Args, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<i32> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut config = Config::from_lookup(env)
        .map_err(|e| anyhow::anyhow!("the configuration is not valid: {}", e.message()))?;
    if let Some(mode) = args.mode {
        config.coordination_mode = mode;
    }
    // The local world serves until `world` is dropped, at the end of the run.
    let world = if args.local_world {
        Some(
            mas_world::World::start(mas_world::WorldOptions {
                llm_deployment: config.deployment_name.clone(),
                ..mas_world::WorldOptions::default()
            })
            .await?,
        )
    } else {
        None
    };
    let (api_key, endpoint_shown) = if let Some(world) = &world {
        config.dial_endpoint = world.core_url();
        (
            env("DIAL_API_KEY").unwrap_or_else(|| LOCAL_WORLD_KEY.to_owned()),
            format!("the local world at {}", world.core_url()),
        )
    } else {
        if env("DIAL_ENDPOINT").is_none() {
            anyhow::bail!(
                "DIAL_ENDPOINT is not set: set it to your DIAL Core's URL (with DEPLOYMENT_NAME and DIAL_API_KEY), or run against the local world with --local-world"
            );
        }
        let key = env("DIAL_API_KEY").ok_or_else(|| {
            anyhow::anyhow!("DIAL_API_KEY is not set: the coordination calls need a DIAL API key")
        })?;
        (key.trim().to_owned(), config.dial_endpoint.clone())
    };

    let shown_cases = args.cases.display().to_string();
    let text = std::fs::read_to_string(&args.cases)
        .map_err(|e| anyhow::anyhow!("cannot read the cases file {shown_cases}: {e}"))?;
    let cases = parse_cases(&text, &shown_cases, &config, &api_key)?;
    let (indices, skipped) = runnable(&cases, config.coordination_mode);
    if indices.is_empty() {
        anyhow::bail!(
            "no case of {shown_cases} can be run in route mode: every one expects several agents"
        );
    }
    let client = Client::new(config.timeouts.first_byte_ms, config.timeouts.total_ms)?;
    let options = RunOptions {
        repeat: args.repeat,
        concurrency: args.concurrency,
        progress: args.progress && std::io::stderr().is_terminal(),
    };
    let cases = Arc::new(cases);
    let attempts = run(cases.clone(), &indices, &config, &client, &options).await?;
    let meta = Meta {
        cases_file: shown_cases,
        mode: mode_name(config.coordination_mode).to_owned(),
        endpoint: endpoint_shown,
        deployment: config.deployment_name.clone(),
        agents: config
            .registry
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        repeat: args.repeat,
    };
    let report = Report::new(meta, &config, &cases, &skipped, &attempts);

    std::fs::create_dir_all(&args.out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
    let json_path = args.out.join("report.json");
    let md_path = args.out.join("report.md");
    std::fs::write(&json_path, report.json() + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", json_path.display()))?;
    std::fs::write(&md_path, report.markdown(true))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", md_path.display()))?;
    print!("{}", report.markdown(false));
    println!(
        "\nReport written to {} and {}",
        json_path.display(),
        md_path.display()
    );
    if let Some(min) = args.min_accuracy {
        if report.accuracy < min {
            eprintln!(
                "mas-eval: accuracy {}/{} = {:.4} is below --min-accuracy {min}",
                report.correct, report.answers, report.accuracy
            );
            return Ok(EXIT_BELOW_MIN);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags_are_read_in_both_spellings() {
        let Ok(Command::Run(a)) = parse(&[
            "--cases",
            "x.jsonl",
            "--out=o",
            "--mode",
            "ROUTE",
            "--concurrency",
            "8",
            "--repeat=3",
            "--min-accuracy",
            "0.75",
            "--local-world",
            "--no-progress",
        ]) else {
            panic!("not parsed");
        };
        assert_eq!(
            a,
            Args {
                cases: "x.jsonl".into(),
                out: "o".into(),
                mode: Some(CoordinationMode::Route),
                concurrency: 8,
                repeat: 3,
                min_accuracy: Some(0.75),
                local_world: true,
                progress: false,
            }
        );
        assert_eq!(parse(&[]), Ok(Command::Run(Args::default())));
        assert_eq!(parse(&["--mode", "plan", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        for (args, message) in [
            (
                &["--mode", "auto"][..],
                "--mode must be plan or route, not \"auto\"",
            ),
            (
                &["--concurrency", "0"][..],
                "--concurrency must be a whole number from 1 to 64, not \"0\"",
            ),
            (
                &["--repeat", "x"][..],
                "--repeat must be a whole number from 1 to 100, not \"x\"",
            ),
            (
                &["--min-accuracy", "1.5"][..],
                "--min-accuracy must be a number from 0 to 1, not \"1.5\"",
            ),
            (&["--cases"][..], "--cases needs a value"),
            (&["--local-world=yes"][..], "--local-world takes no value"),
            (
                &["--verbose"][..],
                "unknown argument \"--verbose\" (see --help)",
            ),
        ] {
            assert_eq!(parse(args), Err(message.to_owned()), "{args:?}");
        }
    }
}

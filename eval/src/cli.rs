//! The command line: flags, configuration, and one run from the cases file to
//! the report.

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

/// What `--help` says after the flags.
const AFTER_HELP: &str = "\
Environment: DIAL_ENDPOINT (required unless --local-world), DEPLOYMENT_NAME, DIAL_API_KEY
(required unless --local-world), and every other variable the coordinator reads (AGENTS,
AGENT_<NAME>_*, COORDINATION_MODE, MAX_SUBTASKS, DIAL_API_VERSION, UPSTREAM_*_TIMEOUT_MS, ...).
SSL_CERT_FILE adds trusted certificates (PEM) to Mozilla's.

Exit status: 0 done; 1 accuracy below --min-accuracy; 2 error (flags included).";

/// The flags. A flag that cannot be read exits with clap's status for usage
/// errors, which is [`EXIT_ERROR`]; a repeated flag takes its last value.
#[derive(Debug, Clone, PartialEq, clap::Parser)]
#[command(
    name = "mas-eval",
    about = "mas-eval: runs the coordinator's coordination step on labelled cases against a DIAL \
endpoint and reports whether it picks the right agents (docs/eval.md).",
    long_about = None,
    after_help = AFTER_HELP,
    args_override_self = true
)]
pub struct Args {
    /// The labelled cases, JSON Lines (default: the shipped eval/cases.jsonl).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CASES, hide_default_value = true)]
    pub cases: PathBuf,
    /// Where report.json and report.md go (default: target/eval).
    #[arg(long, value_name = "DIR", default_value_os_t = default_out(), hide_default_value = true)]
    pub out: PathBuf,
    /// The coordination mode (default: COORDINATION_MODE, else plan).
    #[arg(long, value_enum, ignore_case = true)]
    pub mode: Option<Mode>,
    /// Calls at once, 1 to 64.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub concurrency: usize,
    /// Ask every case N times, 1 to 100, to expose non-determinism.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub repeat: u32,
    /// Exit with status 1 when the accuracy (0 to 1) is below X.
    #[arg(long, value_name = "X", value_parser = accuracy)]
    pub min_accuracy: Option<f64>,
    /// Start the local DIAL world in process and run against it.
    #[arg(long)]
    pub local_world: bool,
    /// No progress bar on stderr (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A plan of subtasks for one or more agents.
    Plan,
    /// One agent.
    Route,
}

impl From<Mode> for CoordinationMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Plan => CoordinationMode::Plan,
            Mode::Route => CoordinationMode::Route,
        }
    }
}

fn accuracy(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}

/// One run: configuration from `env`, the cases, the calls, the report
/// (printed and written). Returns the exit status.
pub async fn run_command(args: Args, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<i32> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut config = Config::from_lookup(env)
        .map_err(|e| anyhow::anyhow!("the configuration is not valid: {}", e.message()))?;
    if let Some(mode) = args.mode {
        config.coordination_mode = mode.into();
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
        progress: !args.no_progress,
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
    use clap::error::ErrorKind;
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mas-eval").chain(args.iter().copied()))
    }

    #[test]
    fn flags_are_read_in_both_spellings() {
        let Ok(a) = parse(&[
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
                mode: Some(Mode::Route),
                concurrency: 8,
                repeat: 3,
                min_accuracy: Some(0.75),
                local_world: true,
                no_progress: true,
            }
        );
        let Ok(defaults) = parse(&[]) else {
            panic!("no flags");
        };
        assert_eq!(
            defaults,
            Args {
                cases: DEFAULT_CASES.into(),
                out: default_out(),
                mode: None,
                concurrency: 4,
                repeat: 1,
                min_accuracy: None,
                local_world: false,
                no_progress: false,
            }
        );
        assert_eq!(
            parse(&["--repeat", "2", "--repeat", "5"])
                .map(|a| a.repeat)
                .ok(),
            Some(5),
            "the last of a repeated flag"
        );
        let help = parse(&["--mode", "plan", "-h"]).map(|_| ()).unwrap_err();
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        assert!(help
            .to_string()
            .starts_with("mas-eval: runs the coordinator's coordination step"));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        for (args, message) in [
            (
                &["--mode", "auto"][..],
                "invalid value 'auto' for '--mode <MODE>'",
            ),
            (
                &["--concurrency", "0"][..],
                "invalid value '0' for '--concurrency <N>': 0 is not in 1..=64",
            ),
            (
                &["--repeat", "x"][..],
                "invalid value 'x' for '--repeat <N>': invalid digit found in string",
            ),
            (
                &["--min-accuracy", "1.5"][..],
                "invalid value '1.5' for '--min-accuracy <X>': must be a number from 0 to 1",
            ),
            (
                &["--cases"][..],
                "a value is required for '--cases <FILE>' but none was supplied",
            ),
            (
                &["--local-world=yes"][..],
                "unexpected value 'yes' for '--local-world' found",
            ),
            (&["--verbose"][..], "unexpected argument '--verbose' found"),
        ] {
            let e = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_ERROR, "{args:?}");
            assert!(e.to_string().contains(message), "{args:?}: {e}");
        }
    }
}

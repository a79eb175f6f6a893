//! The command line: `mas-bench [report] [flags]`, and where each path points
//! by default (the release component, wasmtime on the PATH, the results file
//! and `BENCHMARKS.md` of the workspace).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::{target_dir, workspace_root};

/// End-to-end benchmark of the MAS coordinator component under `wasmtime serve`,
/// against the local DIAL world; writes bench/results.json and BENCHMARKS.md
/// (scripts/bench.sh runs it).
#[derive(Debug, Clone, Parser)]
#[command(name = "mas-bench", args_override_self = true)]
pub struct Opts {
    /// Measure nothing: render the summary and the Markdown again from the
    /// results file (--out).
    #[arg(value_enum, value_name = "report", hide_possible_values = true)]
    pub command: Option<Command>,
    /// Shorter measurement windows.
    #[arg(long)]
    pub quick: bool,
    /// Extra `wasmtime serve` flags, as one whitespace-separated string.
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        value_parser = words,
        default_value = "",
        hide_default_value = true
    )]
    pub wasmtime_args: ::std::vec::Vec<String>,
    /// The component to serve.
    #[arg(long, value_name = "PATH", default_value_os_t = target_dir().join("wasm32-wasip2/release/mas_coordinator.wasm"))]
    pub wasm: PathBuf,
    /// The wasmtime binary.
    #[arg(long, value_name = "PATH", default_value_os_t = default_wasmtime())]
    pub wasmtime: PathBuf,
    /// The results file (written; read by `report`).
    #[arg(long, value_name = "PATH", default_value_os_t = workspace_root().join("bench/results.json"))]
    pub out: PathBuf,
    /// Where the Markdown report goes.
    #[arg(long, value_name = "PATH", overrides_with = "no_markdown", default_value_os_t = workspace_root().join("BENCHMARKS.md"))]
    markdown: PathBuf,
    /// Write no Markdown report.
    #[arg(long, overrides_with = "markdown")]
    no_markdown: bool,
    /// Another run's results file, shown beside this one (repeatable).
    #[arg(long, value_name = "RESULTS.json")]
    pub compare: Vec<PathBuf>,
    /// Where criterion left its estimates.
    #[arg(long, value_name = "DIR", default_value_os_t = target_dir().join("criterion"))]
    pub criterion: PathBuf,
    /// The run's name in the variants table (default: its wasmtime flags).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// The `spin` binary for the Spin runs (else `$SPIN`, else the PATH).
    #[arg(long, value_name = "PATH")]
    pub spin: Option<PathBuf>,
    /// Skip the host comparison (wasmtime on both kinds of connections, Spin).
    #[arg(long)]
    pub no_hosts: bool,
    /// Where the host floor's components are (`bench/floor`, built by
    /// scripts/bench.sh).
    #[arg(long, value_name = "DIR", default_value_os_t = target_dir().join("floor/wasm32-wasip2/release"))]
    pub floor: PathBuf,
    /// Skip the host floor.
    #[arg(long)]
    pub no_floor: bool,
    /// The command line as given (for the report).
    #[arg(skip)]
    pub args: Vec<String>,
}

/// What to do instead of measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Command {
    /// Render the report again from the results file.
    Report,
}

impl Opts {
    /// `report`: no measuring.
    pub fn report_only(&self) -> bool {
        self.command == Some(Command::Report)
    }

    /// The Markdown report's path, unless `--no-markdown`.
    pub fn markdown(&self) -> Option<&PathBuf> {
        (!self.no_markdown).then_some(&self.markdown)
    }
}

fn words(text: &str) -> Result<Vec<String>, String> {
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

pub(crate) fn default_wasmtime() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wasmtime"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".cargo/bin/wasmtime")
    })
}

/// The flags of this process. `--help` prints the usage and exits with 0; a
/// flag that cannot be read prints why and exits with 1, as any other error.
pub(crate) fn parse_args() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Opts::try_parse_from(std::iter::once("mas-bench".to_owned()).chain(args.clone())) {
        Ok(opts) => Opts { args, ..opts },
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("mas-bench").chain(args.iter().copied()))
    }

    #[test]
    fn flags_keep_their_names_and_defaults() {
        let o = parse(&[]).expect("no flags");
        assert!(!o.report_only() && !o.quick && !o.no_hosts && !o.no_floor);
        assert_eq!(o.floor, target_dir().join("floor/wasm32-wasip2/release"));
        assert!(o.wasmtime_args.is_empty() && o.compare.is_empty());
        assert_eq!(o.out, workspace_root().join("bench/results.json"));
        assert_eq!(o.markdown(), Some(&workspace_root().join("BENCHMARKS.md")));
        assert_eq!(
            o.wasm,
            target_dir().join("wasm32-wasip2/release/mas_coordinator.wasm")
        );

        let o = parse(&[
            "--quick",
            "--wasmtime-args",
            "--max-instance-reuse-count 1000  -W x",
            "--compare",
            "a.json",
            "--out",
            "r.json",
            "--compare=b.json",
            "report",
            "--markdown",
            "m.md",
            "--no-markdown",
            "--label",
            "L",
        ])
        .expect("parsed");
        assert!(o.report_only() && o.quick);
        assert_eq!(
            o.wasmtime_args,
            ["--max-instance-reuse-count", "1000", "-W", "x"]
        );
        assert_eq!(o.compare, [PathBuf::from("a.json"), "b.json".into()]);
        assert_eq!(o.out, PathBuf::from("r.json"));
        assert_eq!(o.markdown(), None, "the last of the two wins");
        assert_eq!(o.label.as_deref(), Some("L"));
        let o = parse(&[
            "--no-markdown",
            "--markdown",
            "m.md",
            "--out",
            "1",
            "--out",
            "2",
        ])
        .expect("parsed");
        assert_eq!(o.markdown(), Some(&PathBuf::from("m.md")));
        assert_eq!(o.out, PathBuf::from("2"), "a repeated flag: the last wins");

        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["reprot"]).is_err());
        assert!(parse(&["--out"]).is_err());
    }
}

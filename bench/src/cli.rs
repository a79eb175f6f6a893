//! The command line: `mas-bench [report] [flags]`, and where each path points
//! by default (the release component, wasmtime on the PATH, the results file
//! and `BENCHMARKS.md` of the workspace).

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::{target_dir, workspace_root};

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub report_only: bool,
    pub quick: bool,
    pub wasmtime_args: Vec<String>,
    pub wasm: PathBuf,
    pub wasmtime: PathBuf,
    pub out: PathBuf,
    pub markdown: Option<PathBuf>,
    pub compare: Vec<PathBuf>,
    pub criterion: PathBuf,
    pub label: Option<String>,
    /// The `spin` binary for the Spin runs (else `$SPIN`, else the PATH).
    pub spin: Option<PathBuf>,
    /// Skip the host comparison (wasmtime on both kinds of connections, Spin).
    pub no_hosts: bool,
    /// The command line as given (for the report).
    pub args: Vec<String>,
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

pub(crate) const USAGE: &str =
    "usage: mas-bench [report] [--quick] [--wasmtime-args \"ARGS\"] [--wasm PATH] \
[--wasmtime PATH] [--out PATH] [--markdown PATH | --no-markdown] [--compare RESULTS.json]... \
[--criterion DIR] [--label TEXT]";

pub(crate) fn parse_args() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let mut opts = Opts {
        report_only: false,
        quick: false,
        wasmtime_args: Vec::new(),
        wasm: target_dir().join("wasm32-wasip2/release/mas_coordinator.wasm"),
        wasmtime: default_wasmtime(),
        out: root.join("bench/results.json"),
        markdown: Some(root.join("BENCHMARKS.md")),
        compare: Vec::new(),
        criterion: target_dir().join("criterion"),
        label: None,
        spin: None,
        no_hosts: false,
        args: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "report" => opts.report_only = true,
            "--quick" => opts.quick = true,
            "--wasmtime-args" => {
                opts.wasmtime_args = value("--wasmtime-args")?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            "--wasm" => opts.wasm = value("--wasm")?.into(),
            "--wasmtime" => opts.wasmtime = value("--wasmtime")?.into(),
            "--out" => opts.out = value("--out")?.into(),
            "--markdown" => opts.markdown = Some(value("--markdown")?.into()),
            "--no-markdown" => opts.markdown = None,
            "--compare" => opts.compare.push(value("--compare")?.into()),
            "--criterion" => opts.criterion = value("--criterion")?.into(),
            "--label" => opts.label = Some(value("--label")?),
            "--spin" => opts.spin = Some(value("--spin")?.into()),
            "--no-hosts" => opts.no_hosts = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(opts)
}

//! `mas-bench`: measures the MAS coordinator's own cost.
//!
//! It starts the local DIAL world in-process (zero delay) and the release component
//! under `wasmtime serve` on a free loopback port (its default `COORDINATION_MODE`,
//! `plan`), then measures, for the GPA and UMS flows: the floor (the same upstream
//! calls made directly, checked byte for byte against what the coordinator sends),
//! the coordinated latency and time to first byte at 1 client, the added latency,
//! throughput at 8/32/128 clients, wasmtime's CPU time per request and peak RSS, the
//! world's CPU share, a 1,000-message history, a two-agent plan whose agents run at
//! once (with the world slowing both agents: added latency over the slower agent's
//! floor, next to the sum of both), the .wasm size and the instantiation cost, and
//! the host floor (two bench-only components under the same host and flags: what
//! one inbound and one outbound HTTP exchange cost the host alone). Every
//! measured response is checked. Results go to `bench/results.json` and
//! `BENCHMARKS.md`.
//!
//! The modules, in the order of a run: `cli` (the flags), `run` (the phases),
//! `server` (`wasmtime serve` and instantiation), `idle` (waiting for other
//! work to stop), `scenario` (the requests, their floors and the byte-for-byte
//! check), `latency` (1 client), `load` (N clients), `floor` (the host floor),
//! `hosts` (wasmtime against `spin up`, started by `spin`); `http` is the measuring client, `procfs` reads
//! CPU time and memory, `stats` the distributions, and `report` writes the
//! results file, the printed summary and `BENCHMARKS.md`.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p mas-coordinator
//! cargo run --release -p mas-bench -- [--quick] [--wasmtime-args "--max-instance-reuse-count 1000"]
//!     [--wasm PATH] [--wasmtime PATH] [--out PATH] [--markdown PATH | --no-markdown]
//!     [--compare OTHER_RESULTS.json]... [--criterion DIR] [--label TEXT] [--spin PATH] [--no-hosts]
//!     [--floor DIR | --no-floor]
//! cargo run --release -p mas-bench -- report [--out PATH] [--markdown PATH] [--compare ...]
//! ```

mod cli;
mod floor;
mod hosts;
mod http;
mod idle;
mod latency;
mod load;
mod procfs;
mod report;
mod run;
mod scenario;
mod server;
mod spin;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::report::Results;

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub(crate) fn say(text: &str) {
    eprintln!("[mas-bench] {text}");
}

fn main() -> anyhow::Result<()> {
    let opts = cli::parse_args();
    let mut results = if opts.report_only() {
        report::load(&opts.out)?
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("mas-bench-client")
            .enable_all()
            .build()?;
        let results = runtime.block_on(run::run(&opts))?;
        runtime.shutdown_timeout(Duration::from_secs(1));
        results
    };
    // The latest criterion estimates (if `cargo bench --bench hot_paths` ran) go
    // into the results file too.
    let criterion = report::read_criterion(&opts.criterion);
    if !criterion.is_empty() {
        results.micro = criterion;
    }
    if let Some(a) = report::read_allocations(&target_dir().join("mas-bench/allocations.json")) {
        results.allocations = Some(a);
    }
    // A new run keeps the key figures of the one it replaces (`report` keeps
    // what the file already holds).
    if !opts.report_only() {
        results.previous = report::load(&opts.out)
            .ok()
            .map(|p| report::PreviousRun::of(&p));
    }
    let others: Vec<Results> = opts
        .compare
        .iter()
        .map(|p| report::load(p))
        .collect::<anyhow::Result<_>>()?;
    // The runs compared with this one (the variant with instance reuse): their
    // floor rows go into this file, and the targets are judged with them (a
    // `report` without `--compare` keeps the verdicts the file holds).
    if !others.is_empty() {
        report::with_compared(&mut results, &others);
    }
    report::save(&opts.out, &results)?;
    say(&format!("wrote {}", opts.out.display()));
    println!("{}", report::summary(&results));
    if let Some(path) = opts.markdown() {
        let md = report::markdown(&results, &others);
        std::fs::write(path, md).with_context(|| format!("cannot write {}", path.display()))?;
        say(&format!("wrote {}", path.display()));
    }
    let failures = results.failures_total;
    if failures > 0 {
        bail!("{failures} measured requests failed; see the errors in the report");
    }
    Ok(())
}

//! "Machine and command": what a run records about itself before measuring
//! (the machine, the toolchain, the command line as given, the commit
//! measured and whether the component's sources had local changes), and the
//! table that shows it at the top of `BENCHMARKS.md`.

use std::fmt::Write as _;

use super::results::{Machine, Meta, Results};
use crate::cli::Opts;

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `<commit>`, plus a note when `src/`, `Cargo.toml` or `wit/` differ from it.
fn source_version() -> String {
    let root = crate::workspace_root();
    let root = root.display().to_string();
    let commit = command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        return "unknown (not a git checkout)".to_owned();
    }
    let dirty = command_output(
        "git",
        &[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "wit",
        ],
    );
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} + uncommitted changes in src/, Cargo.toml or wit/")
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Meta {
    pub fn collect(opts: &Opts) -> anyhow::Result<Meta> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let args: Vec<String> = opts.args.iter().map(|a| shell_quote(a)).collect();
        let command = match std::env::var("MAS_BENCH_COMMAND") {
            Ok(c) if !c.trim().is_empty() => c,
            _ if std::env::var_os("CARGO").is_some() => {
                let mut c = "cargo run --release -p mas-bench".to_owned();
                if !args.is_empty() {
                    c.push_str(" -- ");
                    c.push_str(&args.join(" "));
                }
                c
            }
            _ => {
                let exe = std::env::args()
                    .next()
                    .unwrap_or_else(|| "mas-bench".to_owned());
                std::iter::once(exe)
                    .chain(args)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        Ok(Meta {
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            command,
            quick: opts.quick,
            wasmtime_args: opts.wasmtime_args.join(" "),
            label: opts.label.clone(),
            wasm_path: opts.wasm.display().to_string(),
            busy_cores_before: 0.0,
            source: source_version(),
            machine: Machine {
                nproc: std::thread::available_parallelism().map_or(0, usize::from),
                cpu_model,
                mem_total_gib: mem_kib / 1024.0 / 1024.0,
                kernel: command_output("uname", &["-sr"]),
                rustc: command_output("rustc", &["--version"]),
                wasmtime: command_output(&opts.wasmtime.display().to_string(), &["--version"]),
            },
        })
    }
}

pub(super) fn machine_table(r: &Results) -> String {
    let m = &r.meta.machine;
    let mut s = String::from("| | |\n|---|---|\n");
    let _ = writeln!(s, "| date | {} |", r.meta.date);
    let _ = writeln!(s, "| command | `{}` |", r.meta.command);
    let _ = writeln!(s, "| source measured | {} |", r.meta.source);
    let _ = writeln!(s, "| `nproc` | {} |", m.nproc);
    let _ = writeln!(s, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(s, "| memory | {:.1} GiB |", m.mem_total_gib);
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(s, "| rustc | {} |", m.rustc);
    let _ = writeln!(s, "| wasmtime | {} |", m.wasmtime);
    let args = if r.meta.wasmtime_args.is_empty() {
        "(none: defaults, a fresh instance per request)".to_owned()
    } else {
        format!("`{}`", r.meta.wasmtime_args)
    };
    let _ = writeln!(s, "| extra `wasmtime serve` flags | {args} |");
    let _ = writeln!(
        s,
        "| other processes' load before the run | {:.2} cores |",
        r.meta.busy_cores_before
    );
    let _ = writeln!(
        s,
        "| run | {}{:.0} s, {} failed requests |",
        if r.meta.quick { "`--quick`, " } else { "" },
        r.run_seconds,
        r.failures_total
    );
    s
}

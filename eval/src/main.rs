//! `mas-eval`: see `mas_eval` and docs/eval.md.

use clap::Parser as _;
use mas_eval::cli::{run_command, Args, EXIT_ERROR};

fn main() {
    // `--help` prints the usage and exits with 0; a flag that cannot be read
    // exits with EXIT_ERROR.
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mas-eval: cannot start the async runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    let status = runtime.block_on(run_command(args, |name| std::env::var(name).ok()));
    match status {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mas-eval: {e:#}");
            std::process::exit(EXIT_ERROR);
        }
    }
}

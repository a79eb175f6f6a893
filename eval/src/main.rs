//! `mas-eval`: see `mas_eval` and docs/eval.md.

use mas_eval::cli::{parse_args, run_command, Command, EXIT_ERROR, USAGE};

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return;
        }
        Ok(Command::Run(args)) => args,
        Err(message) => {
            eprintln!("mas-eval: {message}");
            std::process::exit(EXIT_ERROR);
        }
    };
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

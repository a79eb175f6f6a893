//! `mas-world`: runs the local DIAL world (DIAL Core + primary and backup UMS stand-ins)
//! until SIGINT/SIGTERM.
//! See the `mas_world` crate docs for the deterministic behaviour.

use anyhow::{bail, Context as _};
use mas_world::{App, World, WorldOptions};
use std::net::SocketAddr;

const USAGE: &str = "usage: mas-world [--core-addr 127.0.0.1:8080] [--ums-addr 127.0.0.1:8042] \
[--ums-backup-addr 127.0.0.1:8043] [--llm-deployment gpt-4o] [--gpa-deployment general-purpose-agent] \
[--apps apps.json]";

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<WorldOptions>> {
    let mut opts = WorldOptions {
        core_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        ums_addr: SocketAddr::from(([127, 0, 0, 1], 8042)),
        ums_backup_addr: SocketAddr::from(([127, 0, 0, 1], 8043)),
        ..WorldOptions::default()
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--core-addr" => opts.core_addr = parse_addr(&value()?)?,
            "--ums-addr" => opts.ums_addr = parse_addr(&value()?)?,
            "--ums-backup-addr" => opts.ums_backup_addr = parse_addr(&value()?)?,
            "--llm-deployment" => opts.llm_deployment = value()?,
            "--gpa-deployment" => opts.gpa_deployment = value()?,
            "--apps" => opts.apps = read_apps(&value()?)?,
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    Ok(Some(opts))
}

fn parse_addr(value: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = value
        .parse()
        .with_context(|| format!("{value:?} is not an address like 127.0.0.1:8080"))?;
    if !addr.ip().is_loopback() {
        bail!("refusing to listen on {addr}: the local DIAL world only binds loopback addresses");
    }
    Ok(addr)
}

/// The applications of `--apps`: a file holding a JSON array of `mas_world::App`.
fn read_apps(path: &str) -> anyhow::Result<Vec<App>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    parse_apps(&text).with_context(|| format!("{path} is not a JSON array of applications"))
}

fn parse_apps(text: &str) -> anyhow::Result<Vec<App>> {
    Ok(serde_json::from_str(text)?)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Some(opts) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let llm = opts.llm_deployment.clone();
    let gpa = opts.gpa_deployment.clone();
    let apps = opts.apps.clone();
    let world = World::start(opts).await?;
    println!("DIAL Core stand-in on {}", world.core_url());
    println!("UMS stand-in on {}", world.ums_url());
    println!("backup UMS stand-in on {}", world.ums_backup_url());
    eprintln!(
        "LLM deployment: {llm}; GPA deployment: {gpa} (any other name is a GPA too); \
control API: {}/_world/requests, {}/_world/faults/<target>",
        world.core_url(),
        world.core_url()
    );
    for app in apps {
        eprintln!(
            "application {}: {}/openai/deployments/{}/chat/completions -> {}",
            app.name,
            world.core_url(),
            app.name,
            app.completion_endpoint
        );
    }
    terminated().await;
    world.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_coordinator_defaults() {
        let opts = parse_args(args(&[])).ok().flatten().unwrap_or_default();
        assert_eq!(opts.core_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(opts.ums_addr.to_string(), "127.0.0.1:8042");
        assert_eq!(opts.ums_backup_addr.to_string(), "127.0.0.1:8043");
        assert_eq!(opts.llm_deployment, "gpt-4o");
    }

    #[test]
    fn flags() {
        let opts = parse_args(args(&[
            "--core-addr",
            "127.0.0.1:0",
            "--ums-addr=[::1]:9",
            "--ums-backup-addr",
            "127.0.0.1:10",
        ]))
        .ok()
        .flatten()
        .unwrap_or_default();
        assert_eq!(opts.core_addr.to_string(), "127.0.0.1:0");
        assert_eq!(opts.ums_addr.to_string(), "[::1]:9");
        assert_eq!(opts.ums_backup_addr.to_string(), "127.0.0.1:10");
        assert!(parse_args(args(&["--ums-backup-addr", "10.0.0.1:8043"])).is_err());
        assert!(parse_args(args(&["--core-addr", "0.0.0.0:8080"])).is_err());
        assert!(parse_args(args(&["--core-addr"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
        assert!(matches!(parse_args(args(&["--help"])), Ok(None)));
    }

    #[test]
    fn apps_file() {
        let apps = parse_apps(
            r#"[{"name":"hr","completion_endpoint":"http://127.0.0.1:8055/c",
                 "configuration_endpoint":"http://127.0.0.1:8055/cfg",
                 "properties":{"plan_approval":"never"}},
                {"name":"plain","completion_endpoint":"http://127.0.0.1:8055/p"}]"#,
        )
        .unwrap_or_default();
        assert_eq!(
            apps,
            [
                App::new("hr", "http://127.0.0.1:8055/c")
                    .with_configuration_endpoint("http://127.0.0.1:8055/cfg")
                    .with_properties(serde_json::json!({"plan_approval": "never"})),
                App::new("plain", "http://127.0.0.1:8055/p"),
            ]
        );
        // A misspelt field is an error, not an application without it.
        assert!(parse_apps(r#"[{"name":"a","completion_url":"http://x/"}]"#).is_err());
        assert!(parse_args(args(&["--apps", "/nonexistent/apps.json"])).is_err());
    }
}

//! The same scenarios under `spin up`, when a `spin` binary is there.
//!
//! Spin runs the repository's `spin.toml` (the `spin-kv` build of the
//! component) with every configuration variable given as `SPIN_VARIABLE_*`,
//! its state (the key-value store of the breakers, logs) in a directory of its
//! own under `target/mas-bench/`. `spin up` starts the HTTP trigger as a child
//! process; the whole process tree is measured, and the process that used the
//! most CPU is named in the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::server::Ready;

/// The `spin` to run: `--spin PATH`, else `$SPIN`, else `spin` on the PATH.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    if let Some(path) = std::env::var_os("SPIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("spin"))
            .find(|candidate| candidate.is_file())
    })
}

/// `spin --version`'s first line.
pub fn version(spin: &Path) -> anyhow::Result<String> {
    let out = Command::new(spin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", spin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", spin.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// A running `spin up`; its whole process group is stopped on drop.
#[derive(Debug)]
pub struct SpinServer {
    child: Child,
    pub addr: SocketAddr,
}

impl SpinServer {
    /// Starts `spin up` for `manifest` on a free loopback port with `variables`
    /// (`NAME`, value: given as `SPIN_VARIABLE_NAME`) and waits until it is
    /// `ready` (`GET /health`).
    pub async fn start(
        spin: &Path,
        manifest: &Path,
        variables: &[(String, String)],
        state_dir: &Path,
        log: &Path,
        ready: Ready,
    ) -> anyhow::Result<SpinServer> {
        use std::os::unix::process::CommandExt as _;
        let port = crate::server::free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        std::fs::create_dir_all(state_dir)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(spin);
        cmd.arg("up")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir);
        for (name, value) in variables {
            cmd.env(format!("SPIN_VARIABLE_{name}"), value);
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0);
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spin.display()))?;
        let mut server = SpinServer { child, addr };
        crate::server::until_ready(&mut server.child, addr, "spin up", log, spawned, ready).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpinServer {
    fn drop(&mut self) {
        // The trigger runs as a child: stop the whole group, then reap ours.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_spin_wins_and_a_missing_one_is_none() {
        assert_eq!(
            find(Some(Path::new("/opt/spin/bin/spin"))),
            Some(PathBuf::from("/opt/spin/bin/spin"))
        );
    }
}

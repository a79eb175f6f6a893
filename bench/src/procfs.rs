//! CPU time and memory of processes and threads, from `/proc` (Linux only).

use std::time::Duration;

/// Clock ticks per second for `/proc/*/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The fields of a `/proc/...` stat line after the comm (field 3, the state, first).
fn stat_fields(path: &str) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields = text[close + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((comm, fields))
}

/// `pid` and every live process descended from it (Spin runs its HTTP
/// trigger as a child process of `spin up`).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![pid];
    };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let (_, fields) = stat_fields(&format!("/proc/{p}/stat"))?;
            Some((p, fields.get(1)?.parse().ok()?))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// A process's command name (`comm`), or `?`.
pub fn comm(pid: u32) -> String {
    stat_fields(&format!("/proc/{pid}/stat")).map_or_else(|| "?".to_owned(), |(c, _)| c)
}

/// A short name of what a process runs: its program's file name and the
/// arguments up to the first option (`spin trigger http`, `wasmtime serve`);
/// its `comm` when the command line cannot be read.
pub fn command(pid: u32) -> String {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return comm(pid);
    };
    let mut args = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let Some(program) = args.next() else {
        return comm(pid);
    };
    let name = program.rsplit('/').next().unwrap_or(&program).to_owned();
    std::iter::once(name)
        .chain(args.take_while(|a| !a.starts_with('-')).take(2))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `/proc/...`'s stat line: `(comm, utime + stime in ticks)`.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // Fields after the comm start with field 3 (state); utime is field 14, stime 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Converts CPU ticks to a duration.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    tick: u64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            tick: ticks_per_second(),
        }
    }

    pub fn duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.tick as f64)
    }
}

/// User + system CPU ticks of a whole process (all its threads, live or exited).
pub fn process_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat")).map_or(0, |(_, t)| t)
}

/// User + system CPU ticks of this process's live threads whose name starts with
/// `prefix` (the world runs on threads named `mas-world*`).
pub fn own_threads_ticks(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| stat_ticks(&format!("{}/stat", e.path().display())))
        .filter(|(comm, _)| comm.starts_with(prefix))
        .map(|(_, t)| t)
        .sum()
}

/// A `/proc/<pid>/status` field in kB (e.g. `VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// System CPU ticks of a whole process.
pub fn process_system_ticks(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = text.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Machine-wide ticks from `/proc/stat`: `(busy, irq + softirq)`, all CPUs added up.
/// Busy is everything but idle and iowait; interrupt time is not charged to any
/// process, so it is reported on its own.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, get(5) + get(6))
}

/// One snapshot of the CPU counters the benchmark follows.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnap {
    pub wasmtime: u64,
    pub wasmtime_system: u64,
    pub world: u64,
    pub bench_total: u64,
    pub machine_busy: u64,
    pub machine_irq: u64,
    pub at: std::time::Instant,
}

impl CpuSnap {
    /// `server` holds the processes that serve (wasmtime, or Spin's process tree).
    pub fn take(server: &[u32]) -> CpuSnap {
        let (machine_busy, machine_irq) = machine_ticks();
        CpuSnap {
            wasmtime: server.iter().map(|&p| process_ticks(p)).sum(),
            wasmtime_system: server.iter().map(|&p| process_system_ticks(p)).sum(),
            world: own_threads_ticks("mas-world"),
            bench_total: process_ticks(std::process::id()),
            machine_busy,
            machine_irq,
            at: std::time::Instant::now(),
        }
    }
}

/// CPU use between two snapshots, in cores (1.0 = one core busy all the time).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub wall_s: f64,
    pub wasmtime_s: f64,
    pub wasmtime_system_s: f64,
    pub world_s: f64,
    /// The benchmark process minus the world's threads.
    pub client_s: f64,
    pub irq_s: f64,
    /// Busy time of everything else on the machine (other processes: a build...).
    pub other_s: f64,
}

impl CpuUse {
    pub fn between(a: &CpuSnap, b: &CpuSnap, clock: Clock) -> CpuUse {
        let s = |t: u64| clock.duration(t).as_secs_f64();
        let wasmtime_s = s(b.wasmtime.saturating_sub(a.wasmtime));
        let world_s = s(b.world.saturating_sub(a.world));
        let bench_s = s(b.bench_total.saturating_sub(a.bench_total));
        let irq_s = s(b.machine_irq.saturating_sub(a.machine_irq));
        let busy_s = s(b.machine_busy.saturating_sub(a.machine_busy));
        CpuUse {
            wall_s: (b.at - a.at).as_secs_f64(),
            wasmtime_s,
            wasmtime_system_s: s(b.wasmtime_system.saturating_sub(a.wasmtime_system)),
            world_s,
            client_s: (bench_s - world_s).max(0.0),
            irq_s,
            other_s: (busy_s - irq_s - wasmtime_s - bench_s).max(0.0),
        }
    }

    pub fn cores(&self, seconds: f64) -> f64 {
        if self.wall_s > 0.0 {
            seconds / self.wall_s
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_holds_the_children_and_their_names() {
        let mut parent = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 5 & wait")
            .spawn()
            .expect("sh");
        let pid = parent.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let tree = loop {
            let tree = process_tree(pid);
            // The child is `sh` until it has executed `sleep`.
            let execed = tree.get(1).is_some_and(|&child| comm(child) == "sleep");
            if execed || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let names: Vec<String> = tree.iter().map(|&p| comm(p)).collect();
        let commands: Vec<String> = tree.iter().map(|&p| command(p)).collect();
        let _ = std::process::Command::new("kill")
            .arg("--")
            .args(tree.iter().map(u32::to_string))
            .status();
        let _ = parent.wait();
        assert_eq!(tree[0], pid);
        assert_eq!(names, ["sh", "sleep"], "{tree:?}");
        assert_eq!(commands, ["sh", "sleep 5"], "{tree:?}");
    }
}

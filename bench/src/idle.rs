//! Other work on the machine: how many cores other processes use, the wait
//! before each phase until they leave the cores alone (within a budget for the
//! whole run), and whether a disturbed phase is measured again.

use std::time::{Duration, Instant};

use crate::procfs::{self, Clock};
use crate::say;

/// The longest the whole run waits for other processes to go quiet.
pub(crate) const IDLE_WAIT: Duration = Duration::from_secs(180);

/// How often a phase disturbed by other processes is measured, at most.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Cores used by other processes (not this one, not `wasmtime_pid`) over `window`.
pub(crate) async fn other_load(wasmtime_pid: Option<u32>, window: Duration, clock: Clock) -> f64 {
    let ours = || {
        procfs::process_ticks(std::process::id()) + wasmtime_pid.map_or(0, procfs::process_ticks)
    };
    let (busy_a, irq_a) = procfs::machine_ticks();
    let ours_a = ours();
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (busy_b, irq_b) = procfs::machine_ticks();
    let others = (busy_b - busy_a)
        .saturating_sub(irq_b - irq_a)
        .saturating_sub(ours().saturating_sub(ours_a));
    clock.duration(others).as_secs_f64() / start.elapsed().as_secs_f64()
}

/// Whether a phase should be measured again because other processes used the
/// cores meanwhile (at most `MAX_ATTEMPTS` times in all).
pub(crate) fn disturbed(other_cores: f64, attempt: &mut usize) -> bool {
    if other_cores <= 0.2 || *attempt >= MAX_ATTEMPTS {
        return false;
    }
    say(&format!(
        "other processes used {other_cores:.2} cores meanwhile: measuring again"
    ));
    *attempt += 1;
    true
}

/// Before a phase: waits, within what is left of `budget`, until other processes
/// leave the cores alone (a build next door skews every figure).
pub(crate) async fn wait_idle(wasmtime_pid: Option<u32>, budget: &mut Duration, clock: Clock) {
    let start = Instant::now();
    let mut warned = false;
    while other_load(wasmtime_pid, Duration::from_millis(300), clock).await > 0.2 {
        if start.elapsed() >= *budget {
            say("other processes keep the cores busy; measuring anyway (see the other-load columns)");
            break;
        }
        if !warned {
            say("waiting for other processes to leave the cores alone...");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    *budget = budget.saturating_sub(start.elapsed());
}

//! The coordinator's own time per request: the time spent working (parsing,
//! building upstream bodies, mirroring events, writing to the client), not
//! waiting for upstreams or the client, split into phases.
//!
//! All of a request's work happens inside polls of its one top-level future,
//! and the executor waits for I/O only between polls. So the host adapter
//! wraps that future and calls [`enter`] and [`exit`] around each poll with a
//! monotonic clock; the time between them is the coordinator's own. The code
//! says which phase it is in with [`set_phase`]; a switch in the middle of a
//! poll charges the time so far to the phase that is ending. [`snapshot`]
//! reads the totals (the request log line carries them), with how many polls
//! the request took and how many writes went to the client ([`count_write`]).
//!
//! The meter is per thread, and an instance serves one request at a time, so
//! [`start`] resets it for each request. Without [`start`] (native tests) it
//! only records the phase and reports nothing.

use std::cell::RefCell;

/// Where the coordinator is in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and validating the request.
    Read,
    /// Building the coordination call and reading its answer (every round).
    Coordination,
    /// The agents: building their calls, reading and mirroring their streams.
    Agents,
    /// Building the synthesis call and relaying its answer.
    Synthesis,
    /// Writing bytes to the client.
    Write,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Read,
        Phase::Coordination,
        Phase::Agents,
        Phase::Synthesis,
        Phase::Write,
    ];

    /// The phase's name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Coordination => "coordination",
            Phase::Agents => "agents",
            Phase::Synthesis => "synthesis",
            Phase::Write => "write",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// The own time of a request so far, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTime {
    /// The sum of the phases.
    pub total_us: u64,
    /// Each phase's share, in [`Phase`] order.
    pub phases_us: Vec<(&'static str, u64)>,
    /// How many times the request's future was polled (each poll is one
    /// wake-up of the instance by the host).
    pub polls: u64,
    /// How many writes went to the client (each crosses into the host).
    pub writes: u64,
}

#[derive(Debug)]
struct Meter {
    clock_ns: Option<fn() -> u64>,
    phase: Phase,
    /// Start of the running poll, or of the running phase within it.
    since_ns: Option<u64>,
    totals_ns: [u64; 5],
    polls: u64,
    writes: u64,
}

thread_local! {
    static METER: RefCell<Meter> = const {
        RefCell::new(Meter {
            clock_ns: None,
            phase: Phase::Read,
            since_ns: None,
            totals_ns: [0; 5],
            polls: 0,
            writes: 0,
        })
    };
}

/// Starts metering a new request on `clock_ns` (nanoseconds of a monotonic clock).
pub fn start(clock_ns: fn() -> u64) {
    METER.with(|m| {
        *m.borrow_mut() = Meter {
            clock_ns: Some(clock_ns),
            phase: Phase::Read,
            since_ns: None,
            totals_ns: [0; 5],
            polls: 0,
            writes: 0,
        };
    });
}

/// A poll of the request's future begins.
pub fn enter() {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        m.since_ns = m.clock_ns.map(|clock| clock());
        m.polls += 1;
    });
}

/// One write to the client is about to cross into the host.
pub fn count_write() {
    METER.with(|m| m.borrow_mut().writes += 1);
}

/// The poll ends: its time goes to the current phase.
pub fn exit() {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        charge(&mut m);
        m.since_ns = None;
    });
}

fn charge(m: &mut Meter) {
    if let (Some(clock), Some(since)) = (m.clock_ns, m.since_ns) {
        let now = clock();
        let slot = m.phase.slot();
        m.totals_ns[slot] = m.totals_ns[slot].saturating_add(now.saturating_sub(since));
        m.since_ns = Some(now);
    }
}

/// Enters `phase` and returns the phase that was current (to restore it).
pub fn set_phase(phase: Phase) -> Phase {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        charge(&mut m);
        std::mem::replace(&mut m.phase, phase)
    })
}

/// The own time so far (the running poll included), if metering was started.
pub fn snapshot() -> Option<OwnTime> {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        m.clock_ns?;
        charge(&mut m);
        let phases_us: Vec<(&'static str, u64)> = Phase::ALL
            .iter()
            .map(|p| (p.name(), m.totals_ns[p.slot()] / 1_000))
            .collect();
        Some(OwnTime {
            total_us: phases_us.iter().map(|(_, us)| us).sum(),
            phases_us,
            polls: m.polls,
            writes: m.writes,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static NOW: Cell<u64> = const { Cell::new(0) };
    }

    fn clock() -> u64 {
        NOW.with(Cell::get)
    }

    fn advance_us(us: u64) {
        NOW.with(|n| n.set(n.get() + us * 1_000));
    }

    #[test]
    fn only_time_inside_polls_counts_and_goes_to_the_current_phase() {
        start(clock);
        enter();
        advance_us(30); // read
        set_phase(Phase::Coordination);
        advance_us(20);
        exit();
        advance_us(5_000); // waiting for the LLM: not ours
        enter();
        advance_us(10); // still coordination
        let before = set_phase(Phase::Write);
        advance_us(7);
        count_write();
        assert_eq!(set_phase(before), Phase::Write);
        set_phase(Phase::Agents);
        advance_us(100);
        exit();
        advance_us(1_000);
        assert_eq!(
            snapshot(),
            Some(OwnTime {
                total_us: 167,
                phases_us: vec![
                    ("read", 30),
                    ("coordination", 30),
                    ("agents", 100),
                    ("synthesis", 0),
                    ("write", 7),
                ],
                polls: 2,
                writes: 1,
            })
        );
        // A snapshot inside a poll includes the poll so far.
        enter();
        advance_us(3);
        assert_eq!(snapshot().map(|t| t.total_us), Some(170));
        exit();
        // The next request starts from zero.
        start(clock);
        assert_eq!(snapshot().map(|t| t.total_us), Some(0));
    }

    #[test]
    fn without_start_nothing_is_reported() {
        METER.with(|m| m.borrow_mut().clock_ns = None);
        enter();
        assert_eq!(set_phase(Phase::Agents), Phase::Read);
        exit();
        assert_eq!(snapshot(), None);
    }
}

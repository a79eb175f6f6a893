//! The coordinator's own time per request: the time spent working (parsing,
//! building upstream bodies, mirroring events, writing to the client), not
//! waiting for upstreams or the client, split into phases.
//!
//! All of a request's work happens inside polls of its one top-level future,
//! and the executor waits for I/O only between polls. So the host adapter
//! wraps that future and calls [`enter`] and [`exit`] around each poll with a
//! monotonic clock; the time between them is the coordinator's own. The code
//! says which phase it is in with [`set_phase`]; a switch to another phase in
//! the middle of a poll charges the time so far to the phase that is ending. [`snapshot`]
//! reads the totals (the request log line carries them), with how many polls
//! the request took and how many writes went to the client ([`count_write`]).
//!
//! The meter reads the clock twice per poll (at [`enter`] and [`exit`]) and at
//! a change between the four main phases, never for a write: a client write's
//! time stays in the phase that made it. The time read at [`enter`] is also
//! the request's clock for the rest of the poll ([`poll_now_ns`]): timeouts
//! compare against it instead of reading the clock again.
//!
//! It also counts the host calls the component makes, by kind ([`Call`],
//! [`count`]): what the log line's `host_calls` shows (see docs/operating.md).
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
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Read,
        Phase::Coordination,
        Phase::Agents,
        Phase::Synthesis,
    ];

    /// The phase's name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Coordination => "coordination",
            Phase::Agents => "agents",
            Phase::Synthesis => "synthesis",
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
    /// Host calls by kind, in [`Call`] order, then `wait` (the executor's
    /// waits between polls: one per poll after the first) and `total`.
    pub host_calls: Vec<(&'static str, u64)>,
}

/// A kind of host call (wasi function) the component makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A clock read by the meter itself (two per poll, one per phase change).
    Meter,
    /// Any other clock read (timeouts, log times).
    Clock,
    /// A timer armed (`subscribe-instant`), or dropped before it fired.
    Timer,
    /// A read from an input stream (the request body, upstream bodies).
    Read,
    /// An output stream call: `check-write`, `write`, `flush`.
    Write,
    /// A pollable created to wait on a stream or a response (`subscribe`),
    /// or dropped before it fired.
    Subscribe,
    /// HTTP resources: reading the request's head, building and sending
    /// outgoing requests, opening their responses, building our response.
    Http,
    /// Everything else counted: randomness, log lines, variables.
    Other,
}

impl Call {
    const ALL: [Call; 8] = [
        Call::Meter,
        Call::Clock,
        Call::Timer,
        Call::Read,
        Call::Write,
        Call::Subscribe,
        Call::Http,
        Call::Other,
    ];

    /// The kind's name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Call::Meter => "meter",
            Call::Clock => "clock",
            Call::Timer => "timer",
            Call::Read => "read",
            Call::Write => "write",
            Call::Subscribe => "subscribe",
            Call::Http => "http",
            Call::Other => "other",
        }
    }
}

#[derive(Debug)]
struct Meter {
    clock_ns: Option<fn() -> u64>,
    phase: Phase,
    /// Start of the running poll, or of the running phase within it.
    since_ns: Option<u64>,
    totals_ns: [u64; 4],
    polls: u64,
    writes: u64,
    /// The clock read at the start of the running poll.
    poll_now_ns: Option<u64>,
    calls: [u64; 8],
}

thread_local! {
    static METER: RefCell<Meter> = const {
        RefCell::new(Meter {
            clock_ns: None,
            phase: Phase::Read,
            since_ns: None,
            totals_ns: [0; 4],
            polls: 0,
            writes: 0,
            poll_now_ns: None,
            calls: [0; 8],
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
            totals_ns: [0; 4],
            polls: 0,
            writes: 0,
            poll_now_ns: None,
            calls: [0; 8],
        };
    });
}

/// A poll of the request's future begins.
pub fn enter() {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        m.since_ns = m.clock_ns.map(|clock| clock());
        m.poll_now_ns = m.since_ns;
        m.polls += 1;
        if m.since_ns.is_some() {
            m.calls[Call::Meter as usize] += 1;
        }
    });
}

/// The clock as read when the running poll began; `None` outside a metered
/// poll. A poll is short (microseconds), so timeouts in milliseconds can
/// compare against it.
pub fn poll_now_ns() -> Option<u64> {
    METER.with(|m| m.borrow().poll_now_ns)
}

/// Counts `n` host calls of `kind`.
pub fn count(kind: Call, n: u64) {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        m.calls[kind as usize] = m.calls[kind as usize].saturating_add(n);
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
        m.poll_now_ns = None;
    });
}

fn charge(m: &mut Meter) {
    if let (Some(clock), Some(since)) = (m.clock_ns, m.since_ns) {
        let now = clock();
        m.calls[Call::Meter as usize] += 1;
        let slot = m.phase.slot();
        m.totals_ns[slot] = m.totals_ns[slot].saturating_add(now.saturating_sub(since));
        m.since_ns = Some(now);
    }
}

/// Enters `phase` and returns the phase that was current (to restore it).
/// Reads the clock only when the phase changes.
pub fn set_phase(phase: Phase) -> Phase {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        if m.phase != phase {
            charge(&mut m);
        }
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
        let mut host_calls: Vec<(&'static str, u64)> = Call::ALL
            .iter()
            .map(|c| (c.name(), m.calls[*c as usize]))
            .collect();
        host_calls.push(("wait", m.polls.saturating_sub(1)));
        let total = host_calls.iter().map(|(_, n)| n).sum();
        host_calls.push(("total", total));
        Some(OwnTime {
            total_us: phases_us.iter().map(|(_, us)| us).sum(),
            phases_us,
            polls: m.polls,
            writes: m.writes,
            host_calls,
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
                        // Entering the current phase again reads no clock.
        assert_eq!(set_phase(Phase::Coordination), Phase::Coordination);
        count_write();
        set_phase(Phase::Agents);
        advance_us(100);
        count(Call::Read, 2);
        count(Call::Timer, 1);
        exit();
        advance_us(1_000);
        assert_eq!(
            snapshot(),
            Some(OwnTime {
                total_us: 160,
                phases_us: vec![
                    ("read", 30),
                    ("coordination", 30),
                    ("agents", 100),
                    ("synthesis", 0),
                ],
                polls: 2,
                writes: 1,
                // Meter: 2 enters, 2 exits, 2 phase changes, and the
                // snapshot's own read (which finds no running poll: no read).
                host_calls: vec![
                    ("meter", 6),
                    ("clock", 0),
                    ("timer", 1),
                    ("read", 2),
                    ("write", 0),
                    ("subscribe", 0),
                    ("http", 0),
                    ("other", 0),
                    ("wait", 1),
                    ("total", 10),
                ],
            })
        );
        // A snapshot inside a poll includes the poll so far.
        enter();
        advance_us(3);
        // The poll's clock is the one read when it began.
        assert_eq!(poll_now_ns(), Some(6_160_000));
        assert_eq!(snapshot().map(|t| t.total_us), Some(163));
        exit();
        assert_eq!(poll_now_ns(), None);
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

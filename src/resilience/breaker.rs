//! The circuit breaker of one upstream target, as a pure state machine with
//! time passed in (milliseconds of any monotonic or wall clock).
//!
//! Closed → Open after `failure_threshold` consecutive failures whose first one
//! is at most `window_ms` old → HalfOpen once `open_ms` has passed, letting one
//! trial call through → Closed on success, Open again on failure. A half-open
//! trial that never reports back (its instance died) expires after `open_ms`,
//! and the next call becomes the trial: concurrent updates may lose a count,
//! but a breaker can never stay open for good.

use serde::{Deserialize, Serialize};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// The failures must happen within this many milliseconds.
    pub window_ms: u64,
    /// How long the breaker stays open before a trial call.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window_ms: 60_000,
            open_ms: 60_000,
        }
    }
}

/// The state of one breaker, as kept in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass; `failures` consecutive failures so far, the first at `since`.
    Closed {
        /// Consecutive failures.
        failures: u32,
        /// Time of the first of them.
        since: u64,
    },
    /// Calls are refused until `until`.
    Open {
        /// When the trial may start.
        until: u64,
    },
    /// One trial call started at `trial_at` is in flight; others are refused.
    HalfOpen {
        /// When the trial started.
        trial_at: u64,
    },
}

impl Default for BreakerState {
    fn default() -> Self {
        BreakerState::Closed {
            failures: 0,
            since: 0,
        }
    }
}

/// Whether a call may go to the target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call it.
    Allow,
    /// Call it: this is the half-open trial.
    Trial,
    /// Skip it; it may be tried again at `retry_at`.
    Reject {
        /// When a trial will be allowed.
        retry_at: u64,
    },
}

impl BreakerState {
    /// Decides on a call at `now`; returns the decision and the new state.
    pub fn admit(self, cfg: &BreakerConfig, now: u64) -> (Admission, BreakerState) {
        match self {
            BreakerState::Closed { .. } => (Admission::Allow, self),
            BreakerState::Open { until } if now < until => {
                (Admission::Reject { retry_at: until }, self)
            }
            BreakerState::Open { .. } => {
                (Admission::Trial, BreakerState::HalfOpen { trial_at: now })
            }
            BreakerState::HalfOpen { trial_at } => {
                let expires = trial_at.saturating_add(cfg.open_ms);
                if now >= expires {
                    (Admission::Trial, BreakerState::HalfOpen { trial_at: now })
                } else {
                    (Admission::Reject { retry_at: expires }, self)
                }
            }
        }
    }

    /// The state after a successful call.
    pub fn on_success(self) -> BreakerState {
        BreakerState::default()
    }

    /// The state after a failed call at `now`.
    pub fn on_failure(self, cfg: &BreakerConfig, now: u64) -> BreakerState {
        let open = BreakerState::Open {
            until: now.saturating_add(cfg.open_ms),
        };
        match self {
            BreakerState::Closed { failures, since } => {
                let (failures, since) =
                    if failures == 0 || now.saturating_sub(since) > cfg.window_ms {
                        (1, now)
                    } else {
                        (failures + 1, since)
                    };
                if failures >= cfg.failure_threshold {
                    open
                } else {
                    BreakerState::Closed { failures, since }
                }
            }
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => open,
        }
    }

    /// A short name for logs and health reports.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// Where breaker states live; a deployment choice (see README).
pub trait BreakerStore {
    /// The state of `key`'s breaker (default when unknown).
    fn load(&self, key: &str) -> BreakerState;
    /// Stores `key`'s breaker state.
    fn save(&self, key: &str, state: BreakerState);
    /// A name for `/health`.
    fn kind(&self) -> &'static str;
}

/// A store in this instance's memory: it lasts as long as the host reuses the instance.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: std::cell::RefCell<std::collections::HashMap<String, BreakerState>>,
}

impl BreakerStore for MemoryStore {
    fn load(&self, key: &str) -> BreakerState {
        self.states.borrow().get(key).copied().unwrap_or_default()
    }

    fn save(&self, key: &str, state: BreakerState) {
        self.states.borrow_mut().insert(key.to_owned(), state);
    }

    fn kind(&self) -> &'static str {
        "instance-memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 5,
        window_ms: 60_000,
        open_ms: 60_000,
    };

    fn fail_n(mut s: BreakerState, n: u32, start: u64, step: u64) -> BreakerState {
        for i in 0..n {
            s = s.on_failure(&CFG, start + u64::from(i) * step);
        }
        s
    }

    #[test]
    fn five_failures_within_the_window_open_it() {
        let s = fail_n(BreakerState::default(), 4, 1_000, 1_000);
        assert_eq!(
            s,
            BreakerState::Closed {
                failures: 4,
                since: 1_000
            }
        );
        assert_eq!(s.admit(&CFG, 5_000).0, Admission::Allow);
        let s = s.on_failure(&CFG, 5_000);
        assert_eq!(s, BreakerState::Open { until: 65_000 });
        assert_eq!(
            s.admit(&CFG, 64_999).0,
            Admission::Reject { retry_at: 65_000 }
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_open_it() {
        let s = fail_n(BreakerState::default(), 10, 0, 20_000);
        assert!(matches!(s, BreakerState::Closed { .. }), "{s:?}");
    }

    #[test]
    fn a_success_resets_the_count() {
        let s = fail_n(BreakerState::default(), 4, 0, 1).on_success();
        let s = fail_n(s, 4, 10, 1);
        assert_eq!(
            s,
            BreakerState::Closed {
                failures: 4,
                since: 10
            }
        );
    }

    #[test]
    fn half_open_lets_one_trial_through_then_closes_or_reopens() {
        let open = BreakerState::Open { until: 100 };
        let (a, half) = open.admit(&CFG, 100);
        assert_eq!(a, Admission::Trial);
        assert_eq!(half, BreakerState::HalfOpen { trial_at: 100 });
        assert_eq!(
            half.admit(&CFG, 101).0,
            Admission::Reject { retry_at: 60_100 }
        );
        assert_eq!(half.on_success(), BreakerState::default());
        assert_eq!(
            half.on_failure(&CFG, 200),
            BreakerState::Open { until: 60_200 }
        );
    }

    #[test]
    fn a_lost_trial_expires_so_the_breaker_is_never_stuck() {
        let half = BreakerState::HalfOpen { trial_at: 100 };
        let (a, next) = half.admit(&CFG, 60_100);
        assert_eq!(a, Admission::Trial);
        assert_eq!(next, BreakerState::HalfOpen { trial_at: 60_100 });
    }

    /// Every state, every event, at many times: an open breaker always admits a
    /// trial once its time is up, and no sequence of events leaves it refusing
    /// forever.
    #[test]
    fn exhaustive_small_state_space_never_sticks() {
        let times = [0u64, 1, 59_999, 60_000, 60_001, 120_000, u64::MAX / 2];
        let mut states = vec![BreakerState::default()];
        for f in 0..=5 {
            for &t in &times {
                states.push(BreakerState::Closed {
                    failures: f,
                    since: t,
                });
                states.push(BreakerState::Open { until: t });
                states.push(BreakerState::HalfOpen { trial_at: t });
            }
        }
        for s in states {
            for &now in &times {
                // Once its time is up, a call is admitted: open until `until`,
                // half-open until its trial expires.
                let later = match s {
                    BreakerState::Open { until } => now.max(until),
                    BreakerState::HalfOpen { trial_at } => {
                        now.max(trial_at.saturating_add(CFG.open_ms))
                    }
                    BreakerState::Closed { .. } => now,
                };
                let (a, _) = s.admit(&CFG, later);
                assert_ne!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&Admission::Reject { retry_at: 0 }),
                    "{s:?} still rejects at {later}"
                );
                // Events keep the invariants.
                match s.on_failure(&CFG, now) {
                    BreakerState::Closed { failures, .. } => {
                        assert!(failures < CFG.failure_threshold)
                    }
                    BreakerState::Open { until } => {
                        assert_eq!(until, now.saturating_add(CFG.open_ms))
                    }
                    BreakerState::HalfOpen { .. } => panic!("a failure never leaves it half-open"),
                }
                assert_eq!(s.on_success(), BreakerState::default());
            }
        }
    }

    #[test]
    fn memory_store_round_trips() {
        let store = MemoryStore::default();
        assert_eq!(store.load("gpa"), BreakerState::default());
        store.save("gpa", BreakerState::Open { until: 5 });
        assert_eq!(store.load("gpa"), BreakerState::Open { until: 5 });
        assert_eq!(store.kind(), "instance-memory");
    }

    #[test]
    fn state_serializes_for_shared_stores() {
        let s = BreakerState::Open { until: 7 };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"state":"open","until":7}"#);
        assert_eq!(serde_json::from_str::<BreakerState>(&text).unwrap(), s);
    }
}

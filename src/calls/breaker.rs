//! The circuit breaker of one upstream target, as a pure state machine with
//! time passed in (wall-clock milliseconds: breaker states may be shared by
//! instances whose monotonic clocks start anywhere).
//!
//! Closed → Open after `failure_threshold` consecutive failures of the target
//! (what counts is `calls::verdict`'s and `Opened::finish`'s business) whose
//! first one is at most `window_ms` old *and* that came from at least
//! `min_callers` distinct callers (so one user cannot open a breaker for
//! everybody) → HalfOpen once `open_ms` has passed, letting one trial call
//! through → Closed on success, Open again on failure. A half-open trial that
//! never reports back (its instance died) expires after `open_ms`, and the next
//! call becomes the trial. A time that lies in the future (a clock that jumped,
//! or another instance's skew) counts as expired. Concurrent updates may lose a
//! count, but a breaker can never stay open for good.

use serde::{Deserialize, Serialize};

use crate::client::SharedStore;
use crate::config::BreakerConfig;

/// Most distinct callers a closed breaker remembers.
const MAX_CALLERS: usize = 4;

/// The state of one breaker, as kept in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass; `failures` consecutive failures so far, the first at `since`,
    /// from the distinct callers listed (hashes, at most four).
    Closed {
        /// Consecutive failures.
        failures: u32,
        /// Time of the first of them.
        since: u64,
        /// Distinct callers the failures came from.
        #[serde(default)]
        callers: Vec<u64>,
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
            callers: Vec::new(),
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
            // Open, and its end is neither past nor implausibly far ahead.
            BreakerState::Open { until } if now < until && until - now <= cfg.open_ms => {
                (Admission::Reject { retry_at: until }, self)
            }
            BreakerState::Open { .. } => {
                (Admission::Trial, BreakerState::HalfOpen { trial_at: now })
            }
            BreakerState::HalfOpen { trial_at } => {
                let expires = trial_at.saturating_add(cfg.open_ms);
                if now >= expires || trial_at > now {
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

    /// The state after an infrastructure failure at `now` of a call made for `caller`.
    pub fn on_failure(self, cfg: &BreakerConfig, now: u64, caller: u64) -> BreakerState {
        let open = BreakerState::Open {
            until: now.saturating_add(cfg.open_ms),
        };
        match self {
            BreakerState::Closed {
                failures,
                since,
                mut callers,
            } => {
                let fresh = failures == 0 || since > now || now - since > cfg.window_ms;
                let (failures, since) = if fresh {
                    callers.clear();
                    (1, now)
                } else {
                    (failures.saturating_add(1), since)
                };
                if !callers.contains(&caller) && callers.len() < MAX_CALLERS {
                    callers.push(caller);
                }
                if failures >= cfg.failure_threshold
                    && callers.len() >= usize::from(cfg.min_callers)
                {
                    open
                } else {
                    BreakerState::Closed {
                        failures,
                        since,
                        callers,
                    }
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

/// The breaker state stored under `key` (default when absent or unreadable).
pub fn load(store: &dyn SharedStore, key: &str) -> BreakerState {
    store
        .get(key)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Stores a breaker state under `key`.
pub fn save(store: &dyn SharedStore, key: &str, state: &BreakerState) {
    if let Ok(bytes) = serde_json::to_vec(state) {
        store.set(key, &bytes);
    }
}

/// Asks the breaker at `key` whether a call may go out now (`now` in Unix
/// ms); the state it moves to (open to half-open) is saved.
pub fn admit_at(store: &dyn SharedStore, key: &str, cfg: &BreakerConfig, now: u64) -> Admission {
    let state = load(store, key);
    let (admission, next) = state.clone().admit(cfg, now);
    if next != state {
        save(store, key, &next);
    }
    admission
}

/// A call through the breaker at `key` showed its target alive: the breaker
/// resets (saved only when that changes it).
pub fn record_success(store: &dyn SharedStore, key: &str) {
    let state = load(store, key);
    if state != BreakerState::default() {
        save(store, key, &state.on_success());
    }
}

/// A call through the breaker at `key` failed in a way that counts against
/// its target, for `caller` at `now` (Unix ms).
pub fn record_failure(
    store: &dyn SharedStore,
    key: &str,
    cfg: &BreakerConfig,
    now: u64,
    caller: u64,
) {
    let next = load(store, key).on_failure(cfg, now, caller);
    save(store, key, &next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::MemoryStore;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 5,
        window_ms: 60_000,
        open_ms: 60_000,
        min_callers: 2,
    };

    /// `n` failures `step` ms apart from `start`, alternating two callers.
    fn fail_n(mut s: BreakerState, n: u32, start: u64, step: u64) -> BreakerState {
        for i in 0..n {
            s = s.on_failure(&CFG, start + u64::from(i) * step, u64::from(i % 2));
        }
        s
    }

    #[test]
    fn five_failures_within_the_window_from_two_callers_open_it() {
        let s = fail_n(BreakerState::default(), 4, 1_000, 1_000);
        assert_eq!(
            s,
            BreakerState::Closed {
                failures: 4,
                since: 1_000,
                callers: vec![0, 1]
            }
        );
        assert_eq!(s.clone().admit(&CFG, 5_000).0, Admission::Allow);
        let s = s.on_failure(&CFG, 5_000, 7);
        assert_eq!(s, BreakerState::Open { until: 65_000 });
        assert_eq!(
            s.admit(&CFG, 64_999).0,
            Admission::Reject { retry_at: 65_000 }
        );
    }

    #[test]
    fn one_caller_alone_never_opens_it_a_second_one_does() {
        let mut s = BreakerState::default();
        for i in 0..20 {
            s = s.on_failure(&CFG, 1_000 + i, 42);
        }
        assert!(
            matches!(s, BreakerState::Closed { failures: 20, .. }),
            "{s:?}"
        );
        let s = s.on_failure(&CFG, 2_000, 43);
        assert_eq!(s, BreakerState::Open { until: 62_000 });
        let one = BreakerConfig {
            min_callers: 1,
            ..CFG
        };
        let mut s = BreakerState::default();
        for i in 0..5 {
            s = s.on_failure(&one, i, 42);
        }
        assert!(
            matches!(s, BreakerState::Open { .. }),
            "min_callers 1: {s:?}"
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
                since: 10,
                callers: vec![0, 1]
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
            half.clone().admit(&CFG, 101).0,
            Admission::Reject { retry_at: 60_100 }
        );
        assert_eq!(half.clone().on_success(), BreakerState::default());
        assert_eq!(
            half.on_failure(&CFG, 200, 1),
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

    #[test]
    fn times_from_the_future_count_as_expired() {
        // Written by a clock far ahead of ours (or before ours jumped back).
        let now = 1_000_000;
        let (a, _) = BreakerState::Open {
            until: now + 10 * CFG.open_ms,
        }
        .admit(&CFG, now);
        assert_eq!(a, Admission::Trial, "an open period longer than open_ms");
        let (a, _) = BreakerState::HalfOpen { trial_at: now + 1 }.admit(&CFG, now);
        assert_eq!(a, Admission::Trial, "a trial started in the future");
        let s = BreakerState::Closed {
            failures: 4,
            since: now + 5,
            callers: vec![1, 2],
        }
        .on_failure(&CFG, now, 3);
        assert_eq!(
            s,
            BreakerState::Closed {
                failures: 1,
                since: now,
                callers: vec![3]
            },
            "a window that starts in the future starts again"
        );
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
                for callers in [vec![], vec![1], vec![1, 2]] {
                    states.push(BreakerState::Closed {
                        failures: f,
                        since: t,
                        callers,
                    });
                }
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
                let (a, _) = s.clone().admit(&CFG, later);
                assert!(
                    !matches!(a, Admission::Reject { .. }),
                    "{s:?} still rejects at {later}"
                );
                // Events keep the invariants.
                match s.clone().on_failure(&CFG, now, 3) {
                    BreakerState::Closed {
                        failures, callers, ..
                    } => assert!(
                        failures < CFG.failure_threshold
                            || callers.len() < usize::from(CFG.min_callers)
                    ),
                    BreakerState::Open { until } => {
                        assert_eq!(until, now.saturating_add(CFG.open_ms))
                    }
                    BreakerState::HalfOpen { .. } => panic!("a failure never leaves it half-open"),
                }
                assert_eq!(s.clone().on_success(), BreakerState::default());
            }
        }
    }

    #[test]
    fn states_round_trip_through_a_store() {
        let store = MemoryStore::default();
        assert_eq!(load(&store, "gpa"), BreakerState::default());
        save(&store, "gpa", &BreakerState::Open { until: 5 });
        assert_eq!(load(&store, "gpa"), BreakerState::Open { until: 5 });
        assert_eq!(store.kind(), "instance-memory");
        store.set("broken", b"not json");
        assert_eq!(load(&store, "broken"), BreakerState::default());
    }

    #[test]
    fn state_serializes_for_shared_stores() {
        let s = BreakerState::Open { until: 7 };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"state":"open","until":7}"#);
        assert_eq!(serde_json::from_str::<BreakerState>(&text).unwrap(), s);
        let old = r#"{"state":"closed","failures":2,"since":9}"#;
        assert_eq!(
            serde_json::from_str::<BreakerState>(old).unwrap(),
            BreakerState::Closed {
                failures: 2,
                since: 9,
                callers: vec![]
            },
            "states written before callers were counted still load"
        );
    }
}

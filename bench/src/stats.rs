//! Latency distributions: nearest-rank percentiles in milliseconds.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Summary of one latency distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Dist {
    pub n: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Dist {
    pub fn of(samples: &[Duration]) -> Dist {
        if samples.is_empty() {
            return Dist::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let rank = |p: f64| {
            // Nearest rank: the smallest value with at least p% of the samples at or below it.
            let idx = ((p / 100.0) * n as f64).ceil() as usize;
            ms[idx.clamp(1, n) - 1]
        };
        Dist {
            n,
            mean_ms: ms.iter().sum::<f64>() / n as f64,
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            max_ms: ms[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let d = Dist::of(&samples);
        assert_eq!(d.n, 100);
        assert!((d.p50_ms - 50.0).abs() < 1e-9);
        assert!((d.p99_ms - 99.0).abs() < 1e-9);
        assert!((d.max_ms - 100.0).abs() < 1e-9);
        assert_eq!(Dist::of(&[]).n, 0);
    }
}

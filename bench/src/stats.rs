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

/// The coordinator's own time per request, as its request log lines report
/// it (`own_us`, `phases_us`, `polls`, `writes`, `host_calls`): nearest-rank
/// percentiles in microseconds (counts for the last three).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OwnTime {
    pub n: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Each phase's p50, in the log line's order.
    pub phases_p50_us: Vec<(String, u64)>,
    /// Wake-ups of the request (`polls`), p50; 0 when the lines lack it.
    #[serde(default)]
    pub polls_p50: u64,
    /// Writes to the client (`writes`), p50; 0 when the lines lack it.
    #[serde(default)]
    pub writes_p50: u64,
    /// wasi host calls by kind (`host_calls`), p50 of each kind, in the order
    /// the kinds first appear, `total` last; empty when no line has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_calls_p50: Vec<(String, u64)>,
}

fn rank_us(sorted: &[u64], p: f64) -> u64 {
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

impl OwnTime {
    /// From the request lines among `log` (wasmtime's `stderr [N] :: ` prefix
    /// allowed), skipping the first `skip` of them (the warm-up).
    pub fn from_log(log: &str, skip: usize) -> OwnTime {
        let parsed: Vec<(serde_json::Value, Option<Ordered>)> = log
            .lines()
            .filter_map(|l| {
                let json = &l[l.find('{')?..];
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                let calls = serde_json::from_str::<HostCallsOf>(json)
                    .ok()
                    .and_then(|h| h.host_calls);
                Some((v, calls))
            })
            .filter(|(v, _)| v["event"] == "request" && v["own_us"].is_u64())
            .skip(skip)
            .collect();
        let host_calls = host_calls_p50(parsed.iter().filter_map(|(_, c)| c.as_ref()));
        let lines: Vec<serde_json::Value> = parsed.into_iter().map(|(v, _)| v).collect();
        if lines.is_empty() {
            return OwnTime::default();
        }
        let sorted = |f: &dyn Fn(&serde_json::Value) -> u64| {
            let mut v: Vec<u64> = lines.iter().map(f).collect();
            v.sort_unstable();
            v
        };
        let own = sorted(&|l| l["own_us"].as_u64().unwrap_or(0));
        let names: Vec<String> = lines[0]["phases_us"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let phases_p50_us = names
            .into_iter()
            .map(|name| {
                let v = sorted(&|l| l["phases_us"][&name].as_u64().unwrap_or(0));
                let p50 = rank_us(&v, 50.0);
                (name, p50)
            })
            .collect();
        let polls = sorted(&|l| l["polls"].as_u64().unwrap_or(0));
        let writes = sorted(&|l| l["writes"].as_u64().unwrap_or(0));
        OwnTime {
            n: own.len(),
            p50_us: rank_us(&own, 50.0),
            p99_us: rank_us(&own, 99.0),
            phases_p50_us,
            polls_p50: rank_us(&polls, 50.0),
            writes_p50: rank_us(&writes, 50.0),
            host_calls_p50: host_calls,
        }
    }
}

/// A JSON object's entries in the order the text has them (a
/// `serde_json::Map` sorts its keys), numbers as counts (anything else 0).
#[derive(Debug, Default)]
struct Ordered(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v.as_u64().unwrap_or(0)));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The `host_calls` of a request line, in its order.
#[derive(Deserialize)]
struct HostCallsOf {
    #[serde(default)]
    host_calls: Option<Ordered>,
}

/// The p50 of each kind of the lines' `host_calls` objects, over the lines
/// that have one (a kind a line lacks counts 0 there): the kinds in the order
/// they first appear, `total` last.
fn host_calls_p50<'a>(objects: impl Iterator<Item = &'a Ordered>) -> Vec<(String, u64)> {
    let objects: Vec<&Ordered> = objects.collect();
    let mut kinds: Vec<&str> = Vec::new();
    for o in &objects {
        for (k, _) in &o.0 {
            if !kinds.contains(&k.as_str()) {
                kinds.push(k);
            }
        }
    }
    if let Some(at) = kinds.iter().position(|k| *k == "total") {
        let total = kinds.remove(at);
        kinds.push(total);
    }
    kinds
        .into_iter()
        .map(|kind| {
            let mut v: Vec<u64> = objects
                .iter()
                .map(|o| o.0.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n))
                .collect();
            v.sort_unstable();
            (kind.to_owned(), rank_us(&v, 50.0))
        })
        .collect()
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

    #[test]
    fn own_time_from_request_lines() {
        let mut log = String::from("stderr [0] :: {\"event\":\"upstream_call\"}\nnot json\n");
        for own in [900, 100, 300, 200] {
            log.push_str(&format!(
                "stderr [1] :: {{\"event\":\"request\",\"own_us\":{own},\"phases_us\":{{\"read\":{},\"write\":1}},\"polls\":{},\"writes\":{}}}\n",
                own / 100,
                own / 10,
                own / 50
            ));
        }
        let t = OwnTime::from_log(&log, 1);
        assert_eq!((t.n, t.p50_us, t.p99_us), (3, 200, 300));
        assert_eq!(
            t.phases_p50_us,
            vec![("read".to_owned(), 2), ("write".to_owned(), 1)]
        );
        assert_eq!((t.polls_p50, t.writes_p50), (20, 4));
        assert!(t.host_calls_p50.is_empty(), "no line has host_calls");
        assert_eq!(OwnTime::from_log("", 0).n, 0);
    }

    #[test]
    fn host_calls_by_kind_from_request_lines() {
        // The first line is the warm-up; `send` first appears in the third
        // line, and `total` keeps its place at the end; the last line has none.
        let log = [
            r#"stderr [0] :: {"event":"request","own_us":1,"host_calls":{"clock":99,"total":99}}"#,
            r#"stderr [1] :: {"event":"request","own_us":1,"host_calls":{"clock":4,"read":10,"total":20,"write":6}}"#,
            r#"stderr [2] :: {"event":"request","own_us":1,"host_calls":{"clock":6,"send":3,"read":12,"write":8,"total":29}}"#,
            r#"stderr [3] :: {"event":"request","own_us":1,"host_calls":{"clock":5,"read":11,"write":7,"send":3,"total":26}}"#,
            r#"stderr [4] :: {"event":"request","own_us":1}"#,
        ]
        .join("\n");
        let t = OwnTime::from_log(&log, 1);
        assert_eq!(t.n, 4);
        let got: Vec<(&str, u64)> = t
            .host_calls_p50
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        // p50 of 3 lines is the 2nd smallest; `send` is 0 in the line that lacks it.
        assert_eq!(
            got,
            [
                ("clock", 5),
                ("read", 11),
                ("write", 7),
                ("send", 3),
                ("total", 26)
            ]
        );
    }
}

//! "Micro-benchmarks": the estimates criterion left under `target/criterion`
//! after `cargo bench --bench hot_paths` (the latest run's only), read into
//! the results and shown with their confidence interval and throughput.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::results::CriterionBench;

/// Every `<dir>/**/new/{benchmark,estimates}.json` criterion left, sorted by id;
/// benchmarks older than the latest `cargo bench` run (renamed or removed since)
/// are left out.
pub fn read_criterion(dir: &Path) -> Vec<CriterionBench> {
    let mut found: Vec<(CriterionBench, std::time::SystemTime)> = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let new = d.join("new");
        if let Some(b) = read_one(&new) {
            let modified = std::fs::metadata(new.join("estimates.json"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((b, modified));
            continue;
        }
        if depth >= 4 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() && p.file_name().is_some_and(|n| n != "report") {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    let latest = found.iter().map(|(_, t)| *t).max();
    let mut out: Vec<CriterionBench> = found
        .into_iter()
        .filter(|(_, t)| {
            latest.is_some_and(|l| {
                l.duration_since(*t).unwrap_or_default() < std::time::Duration::from_secs(900)
            })
        })
        .map(|(b, _)| b)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_one(new: &Path) -> Option<CriterionBench> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(new.join(name)).ok()?).ok()
    };
    let bench = read("benchmark.json")?;
    let est = read("estimates.json")?;
    let throughput = bench["throughput"].as_object().and_then(|o| {
        let (kind, n) = o.iter().next()?;
        Some((kind.clone(), n.as_u64()?))
    });
    Some(CriterionBench {
        id: bench["full_id"].as_str()?.to_owned(),
        median_ns: est["median"]["point_estimate"].as_f64()?,
        median_low_ns: est["median"]["confidence_interval"]["lower_bound"].as_f64()?,
        median_high_ns: est["median"]["confidence_interval"]["upper_bound"].as_f64()?,
        mean_ns: est["mean"]["point_estimate"].as_f64()?,
        throughput,
    })
}

pub(super) fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

pub(super) fn micro_table(micro: &[CriterionBench]) -> String {
    if micro.is_empty() {
        return "Not run yet: `cargo bench --bench hot_paths`, then `cargo run --release -p mas-bench -- report`.\n".to_owned();
    }
    let mut s = String::from(
        "| benchmark | median | 95% CI of the median | mean | throughput |\n|---|---:|---:|---:|---:|\n",
    );
    for b in micro {
        let throughput = match &b.throughput {
            Some((kind, n)) if kind == "Bytes" || kind == "BytesDecimal" => {
                format!(
                    "{:.0} MiB/s",
                    *n as f64 / (b.median_ns / 1e9) / 1024.0 / 1024.0
                )
            }
            Some((kind, n)) if kind == "Elements" => {
                format!("{} / element", ns(b.median_ns / *n as f64))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} – {} | {} | {} |",
            b.id,
            ns(b.median_ns),
            ns(b.median_low_ns),
            ns(b.median_high_ns),
            ns(b.mean_ns),
            throughput
        );
    }
    s
}

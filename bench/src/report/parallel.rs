//! "Two agents in parallel": the plan with two independent subtasks against
//! the floor of its slower agent path and of both paths one after the other,
//! each path alone, and the sentence that says which one it costs.

use std::fmt::Write as _;

use super::cells::f3;
use super::results::{LatencyResult, ParallelResult, Results};
use crate::stats::Dist;

/// The scenario with several independent agents, if measured.
pub(super) fn parallel_of(r: &Results) -> Option<(&LatencyResult, &ParallelResult)> {
    r.latency
        .iter()
        .find_map(|l| l.parallel.as_ref().map(|p| (l, p)))
}

pub(super) fn parallel_table(r: &Results) -> String {
    let Some((l, p)) = parallel_of(r) else {
        return "Not measured.\n".to_owned();
    };
    let mut s = String::new();
    let dist = |s: &mut String, name: &str, d: &Dist| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            f3(d.p50_ms),
            f3(d.p90_ms),
            f3(d.p99_ms),
            d.n
        );
    };
    s.push_str("| figure | p50 | p90 | p99 | samples |\n|---|---:|---:|---:|---:|\n");
    dist(&mut s, "coordinated (both agents at once)", &l.coordinated);
    dist(
        &mut s,
        "floor, slower agent path (coordination + slower agent path + synthesis)",
        &p.slower_floor,
    );
    dist(
        &mut s,
        "floor, both agent paths one after the other (coordination + both + synthesis)",
        &p.sum_floor,
    );
    for a in &p.agents {
        let calls = if a.calls == 1 {
            "1 call".to_owned()
        } else {
            format!("{} calls", a.calls)
        };
        dist(
            &mut s,
            &format!(
                "agent path {} alone ({calls}, world: {} ms between events)",
                a.task, a.world_chunk_delay_ms
            ),
            &a.path,
        );
    }
    let _ = writeln!(
        s,
        "| **added over the slower floor** | **{}** | **{}** | **{}** | |",
        f3(p.added_over_slower_p50_ms),
        f3(p.added_over_slower_p90_ms),
        f3(p.added_over_slower_p99_ms)
    );
    let _ = writeln!(
        s,
        "| coordinated − sum floor | {} | | | |",
        f3(p.coordinated_minus_sum_p50_ms)
    );
    let slowest = p
        .agents
        .iter()
        .max_by(|a, b| a.path.p50_ms.total_cmp(&b.path.p50_ms))
        .map_or("?", |a| a.task.as_str());
    let _ = writeln!(
        s,
        "\nTwo independent agents cost about the slower one, not the sum: the coordinated request (p50 {} ms) takes {} ms more than the direct floor of its slower agent path ({slowest}, {} ms with coordination and synthesis), and {} ms less than the same calls one after the other ({} ms).",
        f3(l.coordinated.p50_ms),
        f3(p.added_over_slower_p50_ms),
        f3(p.slower_floor.p50_ms),
        f3(-p.coordinated_minus_sum_p50_ms),
        f3(p.sum_floor.p50_ms)
    );
    s
}

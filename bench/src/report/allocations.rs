//! "Allocations per upstream chunk": what `cargo bench --bench allocations`
//! counted (it writes `target/mas-bench/allocations.json`), read into the
//! results and shown step by step.

use std::fmt::Write as _;
use std::path::Path;

use super::results::Allocations;

/// `target/mas-bench/allocations.json`, when the allocation count ran.
pub fn read_allocations(path: &Path) -> Option<Allocations> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub(super) fn allocations_table(a: &Allocations) -> String {
    let mut s = String::from(
        "| step | allocations per chunk | bytes allocated per chunk |\n|---|---:|---:|\n",
    );
    for step in &a.steps {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.0} |",
            step.step, step.allocations, step.bytes
        );
    }
    let _ = writeln!(
        s,
        "| **per chunk, one read per event** | **{:.2}** | |",
        a.per_chunk_allocations
    );
    s
}

//! How figures are written in the report's Markdown table cells: milliseconds
//! with three decimals, byte sizes in B, KiB or MiB, and a target's verdict.
//! Every table uses these, so one figure reads the same in every section.

pub(super) fn f3(v: f64) -> String {
    format!("{v:.3}")
}

pub(super) fn kib(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub(super) fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

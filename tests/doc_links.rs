//! Every relative link of the README and of `docs/*.md` resolves: the file or
//! folder it names exists, and its `#anchor`, if any, is a heading of the
//! Markdown file it points into (GitHub's heading ids). Links to other sites
//! are not checked; code blocks and code spans are not links.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// `text` without fenced code blocks and without code spans (which may run
/// over a line break), so that only real links remain.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match fence {
            Some(f) if trimmed.starts_with(f) => fence = None,
            Some(_) => {}
            None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                fence = Some(&trimmed[..3]);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut plain = String::new();
    let mut rest = out.as_str();
    while let Some(open) = rest.find('`') {
        plain.push_str(&rest[..open]);
        let ticks = rest[open..].len() - rest[open..].trim_start_matches('`').len();
        let after = &rest[open + ticks..];
        let closing = "`".repeat(ticks);
        match after.find(&closing) {
            Some(close) => rest = &after[close + ticks..],
            None => {
                plain.push_str(&rest[open..open + ticks]);
                rest = after;
            }
        }
    }
    plain.push_str(rest);
    plain
}

/// The targets of the inline links `[text](target)` and `![alt](target)`.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut found = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        found.push(target.to_owned());
        rest = &after[end..];
    }
    found
}

/// GitHub's id for a heading: lower case, only letters, digits, `-`, `_` and
/// spaces kept, spaces made `-`; a repeated id gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in prose_lines(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().replace('`', "");
        let base: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut id = base.clone();
        let mut n = 0;
        while ids.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        ids.insert(id);
    }
    ids
}

/// The lines of `text` outside fenced code blocks (where a `#` is a comment,
/// not a heading).
fn prose_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(root()).unwrap().display().to_string();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{name}: {target}: no file {}", file.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if file.extension().is_none_or(|ext| ext != "md") {
                broken.push(format!(
                    "{name}: {target}: an anchor into a file that is not Markdown"
                ));
                continue;
            }
            if !anchors(&std::fs::read_to_string(&file).unwrap()).contains(anchor) {
                let into = file
                    .strip_prefix(root())
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                broken.push(format!("{name}: {target}: no heading #{anchor} in {into}"));
            }
        }
    }
    assert!(checked > 0, "no relative link found: is the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_parser_sees_what_a_reader_sees() {
    let text =
        "See [a](docs/a.md#b-c) and `[not](a link)`.\n```sh\n[no](link)\n```\n![img](x.png)\n";
    assert_eq!(links(text), ["docs/a.md#b-c", "x.png"]);
    let ids = anchors("# Capacity of one `wasmtime serve`\n## Scale-out on Kubernetes (SpinKube)\n```sh\n# a comment\n```\n## Tests\n## Tests\n");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "capacity-of-one-wasmtime-serve",
            "scale-out-on-kubernetes-spinkube",
            "tests",
            "tests-1"
        ]
    );
}

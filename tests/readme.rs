//! The documented client snippets (docs/dial-core.md, section "Calling it",
//! which the README's quick start links to), run exactly as they are written
//! there — only the coordinator's address is swapped for the test's — against
//! the built component in `wasmtime serve` and the local world: the `curl`
//! line, the OpenAI SDK snippet (the `.venv` of the tests) and the
//! aidial-client snippet (`.venv-aidial`, made by scripts/setup.sh, because
//! aidial-client pins an older openai than the conformance tests use). Each
//! must print what the page says it prints.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::host::{sse_events, Stack};
use common::wire::deltas;

/// The page that holds the snippets, and its section.
const PAGE: &str = "docs/dial-core.md";
const SECTION: &str = "Calling it";

/// The address the snippets use.
const SNIPPET_URL: &str = "http://127.0.0.1:8055";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of the `## <title>` section, up to the next `## ` heading.
fn section<'r>(page: &'r str, title: &str) -> &'r str {
    let heading = format!("\n## {title}\n");
    let start = page
        .find(&heading)
        .unwrap_or_else(|| panic!("{PAGE} has no section {title:?}"));
    let body = &page[start + heading.len()..];
    body.find("\n## ").map_or(body, |end| &body[..end])
}

/// The fenced code blocks of `text`: (language, code).
fn fenced(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_owned(), code.join("\n") + "\n"));
        }
    }
    blocks
}

fn python_for(code: &str) -> PathBuf {
    let venv = if code.contains("from aidial_client import") {
        ".venv-aidial"
    } else {
        ".venv"
    };
    let python = root().join(venv).join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (make test does)",
        python.display()
    );
    python
}

async fn run(program: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the snippet finished within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_snippets_work_as_pasted_and_print_what_the_docs_say() {
    let page = std::fs::read_to_string(root().join(PAGE)).unwrap();
    let calling = section(&page, SECTION);
    // "Against the local world each prints `...`."
    let said = calling
        .split("Against the local world each prints `")
        .nth(1)
        .and_then(|rest| rest.split("`.").next())
        .expect("the section says what the snippets print")
        .replace('\n', " ");
    let blocks = fenced(calling);
    let languages: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(languages, ["sh", "python", "python"]);

    let stack = Stack::start(&[]).await;
    let url = stack.host.url();
    for (language, code) in &blocks {
        assert_eq!(
            code.matches(SNIPPET_URL).count(),
            1,
            "each snippet names the coordinator once: {code}"
        );
        let code = code.replace(SNIPPET_URL, &url);
        if language == "sh" {
            let out = run(Path::new("bash"), &["-c", &code]).await;
            let events = sse_events(out.as_bytes());
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let text: String = deltas(&events[..events.len() - 1])
                .iter()
                .filter_map(|d| d["content"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(text, said, "curl");
        } else {
            let out = run(&python_for(&code), &["-c", &code]).await;
            assert_eq!(out, format!("{said}\n"), "{code}");
        }
    }
}

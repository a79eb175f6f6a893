// A global allocator can only be written with `unsafe`; this benchmark is
// native-only and never part of the component.
#![allow(unsafe_code)]

//! Allocations per upstream chunk on the streaming hot path, natively: a
//! counting global allocator around the three steps every chunk of a GPA or
//! LLM stream goes through — SSE decoding, parsing the event into its chunk
//! type, and writing our own event to the client (encoding and the emitter's
//! buffer). Counts, not times: they are the same on every machine.
//!
//! `cargo bench --bench allocations` prints a table and writes
//! `target/mas-bench/allocations.json`, which `mas-bench` puts into
//! BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::executor::block_on;
use mas_coordinator::flow::emitter::{ClientGone, Emitter, Transport};
use mas_coordinator::wire::response::SseEncoder;
use mas_coordinator::wire::sse::SseDecoder;
use mas_coordinator::wire::upstream::StreamChunk;
use serde_json::json;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A client that takes the bytes as the host's body stream does: from the
/// emitter's buffer, without a copy of its own.
#[derive(Default)]
struct Client {
    bytes: usize,
    writes: usize,
}

impl Transport for Client {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        self.bytes += bytes.len();
        self.writes += 1;
        Ok(())
    }
}

fn counters() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Allocations and bytes per item of what `run` does for `items` items.
fn per_item(items: usize, run: impl FnOnce()) -> (f64, f64) {
    let (a0, b0) = counters();
    run();
    let (a1, b1) = counters();
    (
        (a1 - a0) as f64 / items as f64,
        (b1 - b0) as f64 / items as f64,
    )
}

/// A content event of an upstream stream, as the world and DIAL deployments send it.
fn content_event(i: usize) -> String {
    let chunk = json!({
        "choices": [{"index": 0, "finish_reason": null, "delta": {"content": format!("word{i} ")}}],
        "usage": null, "id": "chatcmpl-world-1", "created": 1_700_000_000, "object": "chat.completion.chunk",
    });
    format!("data: {chunk}\n\n")
}

fn main() {
    const EVENTS: usize = 300;
    let stream: Vec<String> = (0..EVENTS).map(content_event).collect();
    let joined = stream.concat();
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();

    // 1. SSE decoding, one network read per event (as a streaming upstream delivers them).
    let mut decoder = SseDecoder::new(1 << 20);
    let mut events = Vec::with_capacity(4);
    let mut datas = Vec::with_capacity(EVENTS);
    let (a, b) = per_item(EVENTS, || {
        for piece in &stream {
            decoder
                .push(piece.as_bytes(), &mut events)
                .expect("valid SSE");
            datas.append(&mut events);
        }
    });
    rows.push(("SSE decoding (one read per event)", a, b));
    assert_eq!(datas.len(), EVENTS);

    // The same bytes in one read (events that arrive together).
    let mut decoder = SseDecoder::new(1 << 20);
    let mut together = Vec::with_capacity(EVENTS);
    let (a, b) = per_item(EVENTS, || {
        decoder
            .push(joined.as_bytes(), &mut together)
            .expect("valid SSE");
    });
    rows.push(("SSE decoding (all events in one read)", a, b));

    // 2. Parsing each event's data into the chunk type.
    let mut parsed = Vec::with_capacity(EVENTS);
    let (a, b) = per_item(EVENTS, || {
        for data in &datas {
            parsed.push(serde_json::from_str::<StreamChunk>(data).expect("a chunk"));
        }
    });
    rows.push(("parsing the event (StreamChunk)", a, b));

    // 3. Our event to the client: encoding into the emitter's buffer and one
    // write per event (the flow flushes before it waits).
    let encoder = SseEncoder::new("chatcmpl-0123456789abcdef0123456789abcdef", 1_700_000_000);
    let mut out = Emitter::streaming(encoder, Client::default());
    out.role();
    block_on(out.flush()).expect("buffer");
    let words: Vec<String> = (0..EVENTS).map(|i| format!("word{i} ")).collect();
    let (a, b) = per_item(EVENTS, || {
        for word in &words {
            out.content(word);
            block_on(out.flush()).expect("buffer");
        }
    });
    rows.push(("our event: encode + flush to the client", a, b));
    let client = out.into_transport().expect("a streaming emitter");
    assert_eq!(client.writes, EVENTS + 1);
    assert!(client.bytes > 0);

    // One read per event: decoding, parsing, our event.
    let total_allocations: f64 = [0, 2, 3].iter().map(|&i| rows[i].1).sum();
    println!(
        "allocations per upstream content chunk (native, counting allocator, {EVENTS} events)"
    );
    println!("{:<45} {:>12} {:>12}", "step", "allocations", "bytes");
    for (name, a, b) in &rows {
        println!("{name:<45} {a:>12.2} {b:>12.1}");
    }
    println!(
        "{:<45} {total_allocations:>12.2}",
        "per chunk, one read per event"
    );

    let json = json!({
        "events": EVENTS,
        "steps": rows.iter().map(|(name, a, b)| json!({"step": name, "allocations": a, "bytes": b})).collect::<Vec<_>>(),
        "per_chunk_allocations": total_allocations,
    });
    // Where mas-bench looks: $CARGO_TARGET_DIR, else the workspace's target/.
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("mas-bench");
    std::fs::create_dir_all(&dir).expect("target/mas-bench");
    std::fs::write(dir.join("allocations.json"), json.to_string()).expect("write");
    println!("wrote {}", dir.join("allocations.json").display());
}

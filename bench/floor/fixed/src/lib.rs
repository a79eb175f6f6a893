//! `fixed`, the first component of the host floor (bench-only, not shipped):
//! answers every request with `200` and the same short SSE stream, about the
//! size of a short coordinated answer, and reads nothing. What serving it
//! costs is the host's price of one inbound exchange: accept, instantiate,
//! call the handler, send a streamed response (BENCHMARKS.md, "Host floor").

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::OutputStream;

wasi::http::proxy::export!(Fixed);

struct Fixed;

/// One role chunk, a stage opened and closed, the answer in a few content
/// chunks, a stop chunk and `[DONE]`: the shape of a coordinated answer. The
/// file is shared with mas-bench, which checks every answer against it.
const BODY: &str = include_str!("../body.sse");

impl wasi::exports::http::incoming_handler::Guest for Fixed {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.append(&"content-type".to_owned(), &b"text/event-stream".to_vec());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        let Ok(stream) = body.write() else {
            return;
        };
        // What the stream takes now goes before the head, so the host sends
        // both together, as the coordinator does (src/host.rs).
        let early = write_now(&stream, BODY.as_bytes());
        ResponseOutparam::set(out, Ok(response));
        if write_all(&stream, &BODY.as_bytes()[early..]) {
            drop(stream);
            let _ = OutgoingBody::finish(body, None);
        }
    }
}

/// Writes what the host takes without waiting; how many bytes it took.
fn write_now(stream: &OutputStream, bytes: &[u8]) -> usize {
    let room = stream.check_write().unwrap_or(0);
    let n = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
    if n > 0 && (stream.write(&bytes[..n]).is_err() || stream.flush().is_err()) {
        return 0;
    }
    n
}

/// Writes all of `bytes`, waiting when the host must; whether it could.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    // 4096 bytes: the most one `blocking-write-and-flush` may be given.
    bytes
        .chunks(4096)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

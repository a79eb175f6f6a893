//! `relay`, the second component of the host floor (bench-only, not shipped):
//! forwards each request (method POST, its path and query, its `content-type`,
//! `api-key` and `x-conversation-id` headers and its body) to the origin in
//! the `RELAY_ORIGIN` environment variable (`http://127.0.0.1:PORT`) and
//! streams the answer back chunk by chunk as it arrives. Serving it costs
//! the host one inbound and one outbound exchange, so beside `fixed` it gives
//! the host's price of an upstream call (BENCHMARKS.md, "Host floor").
//! Anything that goes wrong before the head is sent is a `502` naming it.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

wasi::http::proxy::export!(Relay);

struct Relay;

/// The request headers that go upstream (what the coordinator's calls carry).
const FORWARDED: [&str; 3] = ["content-type", "api-key", "x-conversation-id"];

/// The most one read asks for (incoming chunks are at most 16 KiB anyway).
const READ_MAX: u64 = 16 * 1024;

impl wasi::exports::http::incoming_handler::Guest for Relay {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match call(&request) {
            Ok(upstream) => stream_back(&upstream, out),
            Err(why) => answer(out, 502, &format!("relay: {why}\n")),
        }
    }
}

/// Makes the upstream call and waits for its head.
fn call(request: &IncomingRequest) -> Result<IncomingResponse, String> {
    let origin = wasi::cli::environment::get_environment()
        .into_iter()
        .find_map(|(name, value)| (name == "RELAY_ORIGIN").then_some(value))
        .ok_or("RELAY_ORIGIN is not set")?;
    let authority = origin
        .strip_prefix("http://")
        .ok_or("RELAY_ORIGIN is not http://HOST:PORT")?
        .trim_end_matches('/');
    let body = read_all(request)?;

    let headers = Fields::new();
    let incoming = request.headers();
    for name in FORWARDED {
        let name = name.to_owned();
        for value in incoming.get(&name) {
            headers
                .append(&name, &value)
                .map_err(|e| format!("header {name}: {e:?}"))?;
        }
    }
    let outgoing = OutgoingRequest::new(headers);
    let path = request.path_with_query();
    outgoing
        .set_method(&Method::Post)
        .and(outgoing.set_scheme(Some(&Scheme::Http)))
        .and(outgoing.set_authority(Some(authority)))
        .and(outgoing.set_path_with_query(path.as_deref()))
        .map_err(|()| "cannot build the upstream request".to_owned())?;
    let out_body = outgoing.body().map_err(|()| "no upstream body")?;
    let stream = out_body.write().map_err(|()| "no upstream body stream")?;
    // The body goes into its stream before the request is handed over, so the
    // host sends head and body together, as the coordinator does (src/host.rs).
    let early = write_now(&stream, &body);
    let pending = outgoing_handler::handle(outgoing, None).map_err(|e| format!("{e:?}"))?;
    if !write_all(&stream, &body[early..]) {
        return Err("the upstream body could not be written".to_owned());
    }
    drop(stream);
    OutgoingBody::finish(out_body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(e))) => Err(format!("upstream: {e:?}")),
        _ => Err("upstream: no response".to_owned()),
    }
}

/// The incoming request's whole body.
fn read_all(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request.consume().map_err(|()| "no request body")?;
    let stream = body.stream().map_err(|()| "no request body stream")?;
    let mut bytes = Vec::new();
    while let Some(chunk) = read(&stream)? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The next chunk of `stream`; `None` at its end.
fn read(stream: &InputStream) -> Result<Option<Vec<u8>>, String> {
    match stream.blocking_read(READ_MAX) {
        Ok(chunk) => Ok(Some(chunk)),
        Err(StreamError::Closed) => Ok(None),
        Err(StreamError::LastOperationFailed(e)) => Err(e.to_debug_string()),
    }
}

/// Hands the upstream's status and `content-type` on, then every chunk of
/// its body as it arrives (the first one before the head, as `fixed` does).
fn stream_back(upstream: &IncomingResponse, out: ResponseOutparam) {
    let headers = Fields::new();
    let content_type = "content-type".to_owned();
    for value in upstream.headers().get(&content_type) {
        let _ = headers.append(&content_type, &value);
    }
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(upstream.status());
    let (Ok(body), Ok(incoming)) = (response.body(), upstream.consume()) else {
        return answer(out, 502, "relay: no body\n");
    };
    let (Ok(stream), Ok(chunks)) = (body.write(), incoming.stream()) else {
        return answer(out, 502, "relay: no body stream\n");
    };
    let mut chunk = read(&chunks).ok().flatten().unwrap_or_default();
    let early = write_now(&stream, &chunk);
    ResponseOutparam::set(out, Ok(response));
    let mut offset = early;
    loop {
        if !write_all(&stream, &chunk[offset..]) {
            return;
        }
        match read(&chunks) {
            Ok(Some(next)) => chunk = next,
            Ok(None) => break,
            // The head is gone: an unfinished body tells the client.
            Err(_) => return,
        }
        offset = 0;
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// A short plain-text answer.
fn answer(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.append(&"content-type".to_owned(), &b"text/plain".to_vec());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        write_all(&stream, text.as_bytes());
    }
    let _ = OutgoingBody::finish(body, None);
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

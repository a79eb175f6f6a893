//! Server plumbing shared by both stand-ins: connection handling, response bodies and
//! the application of [`Fault`]s. It knows no stand-in: [`serve`] answers every request
//! with the handler it is given.

use crate::fault::{Fault, FaultKind};
use crate::json::{dial_error_body, obj, s};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Returned by a handler (or yielded by a body) to make hyper drop the connection
/// without (the rest of) a response.
#[derive(Debug)]
pub(crate) struct Abort(pub(crate) &'static str);

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection aborted by the local DIAL world: {}", self.0)
    }
}

impl std::error::Error for Abort {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Core,
    /// The primary UMS stand-in.
    Ums,
    /// The backup UMS stand-in (its own port and store).
    UmsBackup,
}

impl Service {
    /// The name a request to this service is recorded under (`Recorded::service`), which
    /// is also the service's fault target for UMS.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Core => "core",
            Service::Ums => "ums",
            Service::UmsBackup => "ums-backup",
        }
    }
}

/// One step of a streamed answer. Answers are sequences of steps produced lazily, so that
/// bulk answers (hundreds of MiB) are generated while they are sent, never held whole.
#[derive(Debug)]
pub(crate) enum Step {
    /// One SSE event payload (without `data: ` and the blank line).
    Event(String),
    /// One SSE event whose payload is `prefix`, then `fill` bytes of `x`, then `suffix`
    /// (sent as several frames so the fill never sits in memory).
    Filled {
        prefix: String,
        fill: usize,
        suffix: String,
    },
    /// A pause of this many milliseconds (not an event; `chunk_delay_ms` does not apply).
    Sleep(u64),
}

/// A lazy sequence of [`Step`]s.
pub(crate) struct Steps(Box<dyn Iterator<Item = Step> + Send>);

impl Steps {
    pub(crate) fn new(steps: impl Iterator<Item = Step> + Send + 'static) -> Steps {
        Steps(Box::new(steps))
    }

    /// Steps that are all plain events.
    pub(crate) fn events(events: Vec<String>) -> Steps {
        Steps::new(events.into_iter().map(Step::Event))
    }
}

impl Iterator for Steps {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        self.0.next()
    }
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Steps(..)")
    }
}

/// What a handler produced, before body faults are applied.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A 200 `text/event-stream`: the events (payloads without `data: `); `[DONE]` is
    /// appended.
    Stream(Steps),
    /// A 200 `application/json` document.
    Json(String),
    /// Any other response; body faults do not apply to it.
    Plain {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

impl Reply {
    pub(crate) fn json_status(status: u16, body: String) -> Reply {
        Reply::Plain {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub(crate) fn dial_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json_status(status, dial_error_body(status, kind, message))
    }
}

/// One item of a response body as the body stream sends it.
enum Ev {
    /// The start of a body unit (an SSE event, a byte of a dribble): `chunk_delay_ms`
    /// applies before it.
    Data(Bytes),
    /// More bytes of the current unit, sent right away.
    More(Bytes),
    /// A pause within the body.
    Sleep(u64),
    /// Cut the connection.
    Abort,
}

/// `x` bytes to send fills from without allocating them.
static XS: [u8; FILL_FRAME] = [b'x'; FILL_FRAME];
const FILL_FRAME: usize = 64 * 1024;

/// `len` bytes of `x` as frames of at most [`FILL_FRAME`] bytes.
fn fill_frames(len: usize) -> impl Iterator<Item = Bytes> + Send {
    (0..len.div_ceil(FILL_FRAME)).map(move |i| {
        let size = FILL_FRAME.min(len - i * FILL_FRAME);
        Bytes::from_static(&XS[..size])
    })
}

/// The body items of one step of an SSE answer.
fn step_evs(step: Step) -> impl Iterator<Item = Ev> + Send {
    let (head, fill, tail) = match step {
        Step::Event(payload) => (Ev::Data(format!("data: {payload}\n\n").into()), 0, None),
        Step::Filled {
            prefix,
            fill,
            suffix,
        } => (
            Ev::Data(format!("data: {prefix}").into()),
            fill,
            Some(Ev::More(format!("{suffix}\n\n").into())),
        ),
        Step::Sleep(ms) => (Ev::Sleep(ms), 0, None),
    };
    std::iter::once(head)
        .chain(fill_frames(fill).map(Ev::More))
        .chain(tail)
}

/// The first `n` events of `steps` (pauses dropped), for the mid-stream faults.
fn first_events(steps: Steps, n: usize) -> impl Iterator<Item = Ev> + Send {
    steps
        .filter(|step| !matches!(step, Step::Sleep(_)))
        .take(n)
        .flat_map(step_evs)
}

/// The body of [`FaultKind::DribbleError`].
const DRIBBLE_BODY: &str = "Service Unavailable: the upstream is overloaded, please retry later.";
/// [`FaultKind::NoEventBoundary`]: line length (with its `\n`), lines per frame, total.
const ENDLESS_LINE: usize = 1024;
const ENDLESS_LINES_PER_FRAME: usize = 64;
const ENDLESS_TOTAL: usize = 256 * 1024 * 1024;

pub(crate) const MID_STREAM_ERROR: &str =
    r#"{"error":{"message":"injected mid-stream error","type":"runtime_error","code":"500"}}"#;

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// A response whose body is sent frame by frame (chunked) as the items are pulled from
/// `events`, sleeping `delay_ms` before every [`Ev::Data`] but the first; an
/// [`Ev::Abort`] ends the body with an error, which makes hyper cut the connection
/// without terminating the chunked encoding.
fn streamed(
    status: u16,
    content_type: &'static str,
    events: impl Iterator<Item = Ev> + Send + 'static,
    delay_ms: u64,
) -> Response<Body> {
    let events: Box<dyn Iterator<Item = Ev> + Send> = Box::new(events);
    let body = stream::unfold((events, true), move |(mut events, mut first)| async move {
        loop {
            let ev = events.next()?;
            let delayed = matches!(ev, Ev::Data(_) | Ev::Abort);
            if delayed && !first && delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            first &= !delayed;
            let item = match ev {
                Ev::Data(bytes) | Ev::More(bytes) => Ok(Frame::data(bytes)),
                Ev::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    continue;
                }
                Ev::Abort => {
                    // Let hyper flush what was sent so far (it does so while the body is
                    // pending); an error with unflushed frames would discard them.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(Box::new(Abort("injected drop mid-stream")) as BoxError)
                }
            };
            return Some((item, (events, first)));
        }
    });
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn sse(payload: &str) -> Ev {
    Ev::Data(Bytes::from(format!("data: {payload}\n\n")))
}

const SSE: &str = "text/event-stream; charset=utf-8";

/// [`FaultKind::DribbleError`]: an error body, one byte per frame.
fn dribble(fault: &Fault) -> Response<Body> {
    let status = fault
        .status
        .filter(|s| StatusCode::from_u16(*s).is_ok())
        .unwrap_or(503);
    // A zero delay would defeat the point (a body that takes ages to arrive).
    let delay_ms = match fault.chunk_delay_ms {
        0 => 1000,
        ms => ms,
    };
    let body = Bytes::from_static(DRIBBLE_BODY.as_bytes());
    let bytes = (0..body.len()).map(move |i| Ev::Data(body.slice(i..=i)));
    streamed(status, "text/plain", bytes, delay_ms)
}

/// [`FaultKind::NoEventBoundary`]: `data: xxx…` lines that never form an SSE event,
/// until [`ENDLESS_TOTAL`] bytes are sent, the client goes away or the world shuts down.
fn endless_lines(shutdown: &watch::Sender<bool>, fault: &Fault) -> Response<Body> {
    let mut line = b"data: ".to_vec();
    line.resize(ENDLESS_LINE - 1, b'x');
    line.push(b'\n');
    // One shared frame, sent again and again (`Bytes` clones are reference counts).
    let frame = Bytes::from(line.repeat(ENDLESS_LINES_PER_FRAME));
    let frames = ENDLESS_TOTAL / frame.len();
    let shutdown = shutdown.subscribe();
    let evs = std::iter::repeat_n(frame, frames)
        .take_while(move |_| !*shutdown.borrow())
        .map(Ev::Data);
    streamed(200, SSE, evs, fault.chunk_delay_ms)
}

/// Applies the "before the response head" part of a fault: the first-byte delay, and
/// `Down`, `Hang`, `Status`, `DribbleError` and `NoEventBoundary`. `Ok(Some(_))` is the
/// response to send instead of the normal one; `Err` drops the connection. `shutdown`
/// is the world's: it ends a hang.
pub(crate) async fn pre_fault(
    shutdown: &watch::Sender<bool>,
    fault: &Fault,
    service: Service,
) -> Result<Option<Response<Body>>, Abort> {
    if fault.first_byte_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.first_byte_delay_ms)).await;
    }
    match fault.kind {
        FaultKind::Down => Err(Abort("injected fault: down")),
        FaultKind::Hang => {
            // Never answer; hyper drops this future when the client goes away, and the
            // world's shutdown ends it too.
            wait_shutdown(shutdown.subscribe()).await;
            Err(Abort("injected fault: hang"))
        }
        FaultKind::Status => {
            let status = fault
                .status
                .filter(|s| StatusCode::from_u16(*s).is_ok())
                .unwrap_or(500);
            Ok(Some(match service {
                Service::Core => {
                    let mut resp = full(
                        status,
                        "application/json",
                        dial_error_body(
                            status,
                            "runtime_error",
                            fault.message.as_deref().unwrap_or("injected fault"),
                        ),
                    );
                    if status == 429 {
                        // As DIAL Core says when a limit is reached.
                        resp.headers_mut()
                            .insert("retry-after", HeaderValue::from_static("7"));
                    }
                    resp
                }
                Service::Ums | Service::UmsBackup => full(
                    status,
                    "text/plain; charset=utf-8",
                    fault
                        .message
                        .clone()
                        .unwrap_or_else(|| "Internal Server Error".to_owned()),
                ),
            }))
        }
        FaultKind::DribbleError => Ok(Some(dribble(fault))),
        FaultKind::NoEventBoundary => Ok(Some(endless_lines(shutdown, fault))),
        FaultKind::None
        | FaultKind::ErrorMidStream
        | FaultKind::DropMidStream
        | FaultKind::Garbage => Ok(None),
    }
}

/// Turns a handler's [`Reply`] into the response, applying the body part of `fault`.
pub(crate) fn finish(reply: Reply, fault: &Fault) -> Response<Body> {
    match reply {
        Reply::Stream(steps) => {
            let out: Box<dyn Iterator<Item = Ev> + Send> = match fault.kind {
                FaultKind::ErrorMidStream => {
                    Box::new(first_events(steps, 2).chain([sse(MID_STREAM_ERROR), sse("[DONE]")]))
                }
                FaultKind::DropMidStream => {
                    Box::new(first_events(steps, 2).chain(std::iter::once(Ev::Abort)))
                }
                FaultKind::Garbage => Box::new(
                    [
                        sse("this is not json"),
                        sse("this is not json"),
                        sse("[DONE]"),
                    ]
                    .into_iter(),
                ),
                _ => Box::new(
                    steps
                        .flat_map(step_evs)
                        .chain(std::iter::once(sse("[DONE]"))),
                ),
            };
            streamed(200, SSE, out, fault.chunk_delay_ms)
        }
        Reply::Json(body) => match fault.kind {
            FaultKind::ErrorMidStream => full(200, "application/json", MID_STREAM_ERROR),
            FaultKind::DropMidStream => {
                let bytes = Bytes::from(body);
                let half = bytes.slice(..bytes.len() / 2);
                streamed(
                    200,
                    "application/json",
                    [Ev::Data(half), Ev::Abort].into_iter(),
                    fault.chunk_delay_ms,
                )
            }
            FaultKind::Garbage => full(200, "application/json", "<html>not json</html>"),
            _ => full(200, "application/json", body),
        },
        Reply::Plain {
            status,
            content_type,
            body,
        } => full(status, content_type, body),
    }
}

/// Resolves once the world is shutting down.
pub(crate) async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections until `shutdown` turns true; each connection is served by hyper's
/// HTTP/1 server, which answers every request with `handler`, and shut down gracefully
/// when the world shuts down.
pub(crate) async fn serve<H, F>(listener: TcpListener, shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Body>, Abort>> + Send + 'static,
{
    let mut stop = Box::pin(wait_shutdown(shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // e.g. too many open files: back off a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut stop = Box::pin(wait_shutdown(shutdown));
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = &mut stop, if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// `{"error":...}` for the control API.
pub(crate) fn control_error(status: u16, message: &str) -> Reply {
    Reply::json_status(
        status,
        obj(&[(
            "error",
            obj(&[("message", s(message)), ("code", s(&status.to_string()))]),
        )]),
    )
}

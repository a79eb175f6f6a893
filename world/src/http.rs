//! Server plumbing shared by both stand-ins: connection handling, response bodies and
//! the application of [`Fault`]s.

use crate::json::{dial_error_body, obj, s};
use crate::{Fault, FaultKind, Recorded, Shared};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
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
    Ums,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Core => "core",
            Service::Ums => "ums",
        }
    }
}

/// What a handler produced, before body faults are applied.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A 200 `text/event-stream`: the event payloads (without `data: `); `[DONE]` is appended.
    Stream(Vec<String>),
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

enum Ev {
    Data(Bytes),
    Abort,
}

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

/// A 200 response whose body is sent frame by frame (chunked), sleeping `delay_ms`
/// between frames; an [`Ev::Abort`] ends the body with an error, which makes hyper cut
/// the connection without terminating the chunked encoding.
fn streamed(content_type: &'static str, events: Vec<Ev>, delay_ms: u64) -> Response<Body> {
    let body = stream::unfold(
        (events.into_iter(), true),
        move |(mut events, first)| async move {
            let ev = events.next()?;
            if !first && delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            let item = match ev {
                Ev::Data(bytes) => Ok(Frame::data(bytes)),
                Ev::Abort => {
                    // Let hyper flush what was sent so far (it does so while the body is
                    // pending); an error with unflushed frames would discard them.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(Box::new(Abort("injected drop mid-stream")) as BoxError)
                }
            };
            Some((item, (events, false)))
        },
    );
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn sse(payload: &str) -> Ev {
    Ev::Data(Bytes::from(format!("data: {payload}\n\n")))
}

/// Applies the "before the response head" part of a fault: the first-byte delay, and
/// `Down`, `Hang` and `Status`. `Ok(Some(_))` is the response to send instead of the
/// normal one; `Err` drops the connection.
pub(crate) async fn pre_fault(
    shared: &Shared,
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
            wait_shutdown(shared.shutdown.subscribe()).await;
            Err(Abort("injected fault: hang"))
        }
        FaultKind::Status => {
            let status = fault
                .status
                .filter(|s| StatusCode::from_u16(*s).is_ok())
                .unwrap_or(500);
            Ok(Some(match service {
                Service::Core => full(
                    status,
                    "application/json",
                    dial_error_body(status, "runtime_error", "injected fault"),
                ),
                Service::Ums => full(status, "text/plain; charset=utf-8", "Internal Server Error"),
            }))
        }
        FaultKind::None
        | FaultKind::ErrorMidStream
        | FaultKind::DropMidStream
        | FaultKind::Garbage => Ok(None),
    }
}

/// Turns a handler's [`Reply`] into the response, applying the body part of `fault`.
pub(crate) fn finish(reply: Reply, fault: &Fault) -> Response<Body> {
    const SSE: &str = "text/event-stream; charset=utf-8";
    match reply {
        Reply::Stream(events) => {
            let mut out: Vec<Ev> = Vec::new();
            match fault.kind {
                FaultKind::ErrorMidStream => {
                    out.extend(events.iter().take(2).map(|e| sse(e)));
                    out.push(sse(MID_STREAM_ERROR));
                    out.push(sse("[DONE]"));
                }
                FaultKind::DropMidStream => {
                    out.extend(events.iter().take(2).map(|e| sse(e)));
                    out.push(Ev::Abort);
                }
                FaultKind::Garbage => {
                    out.push(sse("this is not json"));
                    out.push(sse("this is not json"));
                    out.push(sse("[DONE]"));
                }
                _ => {
                    out.extend(events.iter().map(|e| sse(e)));
                    out.push(sse("[DONE]"));
                }
            }
            streamed(SSE, out, fault.chunk_delay_ms)
        }
        Reply::Json(body) => match fault.kind {
            FaultKind::ErrorMidStream => full(200, "application/json", MID_STREAM_ERROR),
            FaultKind::DropMidStream => {
                let bytes = Bytes::from(body);
                let half = bytes.slice(..bytes.len() / 2);
                streamed(
                    "application/json",
                    vec![Ev::Data(half), Ev::Abort],
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

/// Accepts connections until shutdown; each connection is served by hyper's HTTP/1
/// server and shut down gracefully when the world shuts down.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, service: Service) {
    let mut stop = Box::pin(wait_shutdown(shared.shutdown.subscribe()));
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let shutdown = shared.shutdown.subscribe();
            let svc_shared = shared.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { handle(shared, service, req).await }
            });
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

async fn handle(
    shared: Arc<Shared>,
    service: Service,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Abort("could not read the request body")),
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    if service == Service::Core && (path == "/_world" || path.starts_with("/_world/")) {
        let reply = crate::control(&shared, &parts.method, &path, &body);
        return Ok(finish(reply, &Fault::default()));
    }
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.record(Recorded {
        service: service.name().to_owned(),
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match service {
        Service::Core => {
            crate::core::handle(&shared, &parts.method, &parts.headers, &path, &body).await
        }
        Service::Ums => crate::ums::handle(&shared, &parts.method, &path, &body).await,
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

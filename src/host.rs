//! The host adapter: wasi:http through spin-sdk 5.2. The only module that does
//! I/O. It reads the incoming request, hands it to `coordinator`, streams the
//! response through the body sink, and implements `client::HttpClient` with
//! outgoing wasi:http requests. Only standard `wasi:*` interfaces are used, so
//! the component runs on Spin and on plain WASI hosts alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream, StreamExt};
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, Method as SpinMethod, OutgoingResponse, Request,
    ResponseOutparam,
};

use crate::client::{HttpClient, Method, OutboundRequest, OutboundResponse, TransportError};
use crate::config::Config;
use crate::coordinator::{collect_response, prepare, route_endpoint, stream_response, Endpoint};
use crate::dial::response::SseEncoder;
use crate::emitter::{ClientGone, Emitter, Transport};
use crate::error::CoordError;

#[spin_sdk::http_component]
async fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
    serve(request, response_out).await;
}

async fn serve(request: IncomingRequest, out: ResponseOutparam) {
    let method = request.method().to_string();
    let path = request.path_with_query().unwrap_or_default();
    match route_endpoint(&method, &path) {
        Ok(Endpoint::Health) => {
            respond(out, 200, "application/json", br#"{"status":"ok"}"#.to_vec()).await
        }
        Ok(Endpoint::Rate) => respond(out, 200, "application/json", Vec::new()).await,
        Ok(Endpoint::ChatCompletions) => chat(request, out).await,
        Err(e) => respond_error(out, &e).await,
    }
}

async fn chat(request: IncomingRequest, out: ResponseOutparam) {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return respond_error(out, &e).await,
    };
    let headers = request.headers().entries();
    let body = match read_limited(request, config.max_request_bytes).await {
        Ok(b) => b,
        Err(e) => return respond_error(out, &e).await,
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let ctx = match prepare(config, header, &body) {
        Ok(ctx) => ctx,
        Err(e) => return respond_error(out, &e).await,
    };
    drop(body);
    let id = response_id();
    let created = unix_seconds();
    if ctx.streaming() {
        let sink = start_response(out, 200, "text/event-stream; charset=utf-8");
        let mut emitter = Emitter::streaming(SseEncoder::new(&id, created), HostTransport { sink });
        if let Some(e) = stream_response(&ctx, &WasiClient, &mut emitter).await {
            log_error(&e);
        }
    } else {
        match collect_response(&ctx, &WasiClient, &id, created).await {
            Ok(message) => {
                let bytes = serde_json::to_vec(&message).unwrap_or_default();
                respond(out, 200, "application/json", bytes).await;
            }
            Err(e) => {
                log_error(&e);
                respond_error(out, &e).await;
            }
        }
    }
}

/// Reads the request body, refusing more than `limit` bytes.
async fn read_limited(request: IncomingRequest, limit: usize) -> Result<Vec<u8>, CoordError> {
    let mut stream = request.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|_| CoordError::BadRequest("the request body could not be read".to_owned()))?;
        if body.len() + chunk.len() > limit {
            return Err(CoordError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn log_error(e: &CoordError) {
    // One JSON line on stderr; messages are already free of the per-request key.
    let line = serde_json::json!({"level": "error", "status": e.status(), "message": e.message()});
    eprintln!("{line}");
}

type BodySink = Pin<Box<dyn Sink<Vec<u8>, Error = wasi::io::streams::StreamError>>>;

fn start_response(out: ResponseOutparam, status: u16, content_type: &str) -> BodySink {
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), content_type.as_bytes().to_vec()),
        ("cache-control".to_owned(), b"no-cache".to_vec()),
    ])
    .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = Box::pin(response.take_body());
    out.set(response);
    body
}

async fn respond(out: ResponseOutparam, status: u16, content_type: &str, bytes: Vec<u8>) {
    let mut sink = start_response(out, status, content_type);
    if !bytes.is_empty() {
        let _ = sink.send(bytes).await;
    }
}

async fn respond_error(out: ResponseOutparam, e: &CoordError) {
    respond(out, e.status(), "application/json", e.body_json()).await;
}

struct HostTransport {
    sink: BodySink,
}

impl Transport for HostTransport {
    async fn write(&mut self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.sink.send(bytes).await.map_err(|_| ClientGone)
    }
}

/// Outbound HTTP through wasi:http.
struct WasiClient;

/// A response body; keeps the response alive while it is read, because
/// dropping an incoming response cancels the call.
struct WasiBody {
    // Declared first so it is dropped before the response that owns it.
    stream: Pin<Box<dyn Stream<Item = Result<Vec<u8>, wasi::io::streams::Error>>>>,
    _response: IncomingResponse,
}

impl Stream for WasiBody {
    type Item = Result<Vec<u8>, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx).map(|item| {
            item.map(|r| {
                r.map_err(|e| TransportError(format!("body read failed: {}", e.to_debug_string())))
            })
        })
    }
}

impl HttpClient for WasiClient {
    type Body = WasiBody;

    async fn send(
        &self,
        request: OutboundRequest,
    ) -> Result<OutboundResponse<WasiBody>, TransportError> {
        let mut builder = Request::builder();
        builder.method(match request.method {
            Method::Get => SpinMethod::Get,
            Method::Post => SpinMethod::Post,
        });
        builder.uri(request.url);
        for (name, value) in &request.headers {
            builder.header(name.as_str(), value.as_str());
        }
        if request.method == Method::Post {
            builder.header("content-length", request.body.len().to_string());
        }
        builder.body(request.body);
        let response: IncomingResponse = spin_sdk::http::send(builder.build())
            .await
            .map_err(|e| TransportError(describe_send_error(&e)))?;
        let status = response.status();
        let stream = Box::pin(response.take_body_stream());
        Ok(OutboundResponse {
            status,
            body: WasiBody {
                stream,
                _response: response,
            },
        })
    }
}

fn describe_send_error(e: &spin_sdk::http::SendError) -> String {
    match e {
        spin_sdk::http::SendError::Http(code) => format!("{code:?}"),
        other => other.to_string(),
    }
}

fn response_id() -> String {
    let a = wasi::random::random::get_random_u64();
    let b = wasi::random::random::get_random_u64();
    format!("chatcmpl-{a:016x}{b:016x}")
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

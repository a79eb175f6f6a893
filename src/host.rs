//! The host adapter: wasi:http through spin-sdk 5.2's bindings. The only module
//! that does I/O, and nothing but adapters: it hands the incoming request to
//! `app` (which decides everything about the answer), writes answers and
//! streams through [`BodyWriter`] (a body goes into its stream before its
//! head is handed over, so hosts send them together), and
//! implements `client::Host` with outgoing wasi:http requests (written the
//! same way up to [`EARLY_BODY_MAX`], through spin-sdk's send above it), monotonic-clock timers, wasi:random, stderr and a small
//! key-value store for the breakers: the instance's memory in the default
//! build (only standard `wasi:*` interfaces, so it runs on Spin and on plain
//! WASI hosts alike), Spin's key-value store in the `spin-kv` build (shared by
//! every instance of a Spin deployment; Spin only).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, Method as SpinMethod, OutgoingBody,
    OutgoingResponse, Request, ResponseOutparam,
};
use wasi::io::streams::OutputStream;

use crate::app::{app, Answer, HttpRequest, Responder};
use crate::client::SharedStore;
use crate::client::{
    retry_after_seconds, Host, Method, OutboundRequest, OutboundResponse, TransportError,
};
use crate::flow::emitter::{ClientGone, Transport};
use crate::meter::{self, Call};

#[spin_sdk::http_component]
async fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
    meter::start(wasi::clocks::monotonic_clock::now);
    Metered(Box::pin(serve(request, response_out))).await;
}

/// The request's future, with the time of each poll metered: that is the
/// coordinator's own time (`meter.rs`); waits happen between polls.
struct Metered<F>(Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        meter::enter();
        let polled = self.0.as_mut().poll(cx);
        meter::exit();
        polled
    }
}

async fn serve(request: IncomingRequest, out: ResponseOutparam) {
    let host = WasiHost::new();
    let method = request.method().to_string();
    let path = request.path_with_query().unwrap_or_default();
    let headers = request.headers().entries();
    // Hosts hand HTTP/1.1's `Host` over as the request's authority.
    let authority = request.authority();
    // method, path, headers (and their drop), entries, authority, consume, stream.
    meter::count(Call::Http, 8);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .or_else(|| {
                name.eq_ignore_ascii_case("host")
                    .then(|| authority.clone())
                    .flatten()
            })
    };
    let body = BodyReader::of_request(request).map(|chunk| chunk.map_err(|_| ()));
    let request = HttpRequest {
        method: &method,
        path: &path,
        header: &header,
        body,
    };
    app(&host, request, &read_variable, Reply { out }).await;
}

/// A body (of our response, or of an outbound request) written through its
/// wasi:io output stream. The head can
/// wait until the first bytes are in the stream ([`Reply::send`],
/// [`HostTransport`]): a host then sends head and body together, which
/// matters on hosts that do not set `TCP_NODELAY` (Spin): there a second small
/// write waits for the client's delayed ACK, about 40 ms on a kept-alive
/// connection. Dropping the writer ends the body.
struct BodyWriter {
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
}

impl BodyWriter {
    fn new(response: &OutgoingResponse) -> BodyWriter {
        BodyWriter::of(response.body().ok())
    }

    fn of_request(request: &spin_sdk::http::OutgoingRequest) -> BodyWriter {
        BodyWriter::of(request.body().ok())
    }

    fn of(body: Option<OutgoingBody>) -> BodyWriter {
        let stream = body.as_ref().and_then(|b| b.write().ok());
        // body, write, and at the end the stream's drop and finish.
        meter::count(Call::Http, 4);
        BodyWriter { stream, body }
    }

    /// Writes what the host takes now, without waiting; how many bytes it took.
    fn write_now(&mut self, bytes: &[u8]) -> Result<usize, ClientGone> {
        let stream = self.stream.as_ref().ok_or(ClientGone)?;
        meter::count(Call::Write, 1);
        let room = stream.check_write().map_err(|_| ClientGone)?;
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        if n > 0 {
            meter::count(Call::Write, 2);
            stream.write(&bytes[..n]).map_err(|_| ClientGone)?;
            stream.flush().map_err(|_| ClientGone)?;
        }
        Ok(n)
    }

    /// Writes all of `bytes` if the host takes them all at once, else nothing
    /// (the head must then go first: see [`BodyWriter::write_all`]); whether
    /// it wrote them.
    fn write_whole_now(&mut self, bytes: &[u8]) -> bool {
        let Some(stream) = self.stream.as_ref() else {
            return false;
        };
        meter::count(Call::Write, 1);
        let fits = stream
            .check_write()
            .is_ok_and(|room| usize::try_from(room).unwrap_or(usize::MAX) >= bytes.len());
        if fits && !bytes.is_empty() {
            meter::count(Call::Write, 2);
        }
        fits && (bytes.is_empty() || (stream.write(bytes).is_ok() && stream.flush().is_ok()))
    }

    /// Writes all of `bytes`, waiting for the host to take more when it must.
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        let mut offset = 0;
        while offset < bytes.len() {
            let n = self.write_now(&bytes[offset..])?;
            offset += n;
            if n == 0 {
                self.writable().await;
            }
        }
        Ok(())
    }

    /// Until the stream takes bytes again (or fails: the next write says so).
    async fn writable(&self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let mut registration = None;
        futures::future::poll_fn(|cx| {
            Registration::wait(&mut registration, cx, || {
                meter::count(Call::Subscribe, 1);
                stream.subscribe()
            })
        })
        .await;
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // The stream goes first: a body can only be finished without it.
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            let _ = OutgoingBody::finish(body, None);
        }
    }
}

/// The response side of one request.
struct Reply {
    out: ResponseOutparam,
}

/// A response head; `length` is the body's length when it is known (every
/// answer but a stream): with `Content-Length` the host sends the body without
/// chunked framing, so no separate end-of-body chunk follows.
fn response_head(
    status: u16,
    content_type: &str,
    trace_id: &str,
    allow: Option<&str>,
    cache_control: &str,
    length: Option<usize>,
) -> OutgoingResponse {
    let mut list = vec![
        ("content-type".to_owned(), content_type.as_bytes().to_vec()),
        (
            "cache-control".to_owned(),
            cache_control.as_bytes().to_vec(),
        ),
        ("x-trace-id".to_owned(), trace_id.as_bytes().to_vec()),
    ];
    if let Some(allow) = allow {
        list.push(("allow".to_owned(), allow.as_bytes().to_vec()));
    }
    if let Some(length) = length {
        list.push(("content-length".to_owned(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&list).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    // fields, response, status, and handing it over (`set`).
    meter::count(Call::Http, 4);
    response
}

impl Responder for Reply {
    type Stream = HostTransport;

    /// The body goes into the stream before the head is handed over when the
    /// host takes all of it at once, else after it. A HEAD answer has no
    /// length, since the body it describes is not sent.
    async fn answer(self, answer: Answer<'_>) {
        let length = (!answer.head_only).then_some(answer.body.len());
        let response = response_head(
            answer.status,
            answer.content_type,
            answer.trace_id,
            answer.allow,
            answer.cache_control,
            length,
        );
        let mut body = BodyWriter::new(&response);
        if answer.head_only {
            self.out.set(response);
            return;
        }
        let bytes = &answer.body;
        let early = if body.write_whole_now(bytes) {
            bytes.len()
        } else {
            0
        };
        self.out.set(response);
        let _ = body.write_all(&bytes[early..]).await;
    }

    fn stream(self, status: u16, trace_id: &str) -> HostTransport {
        let response = response_head(
            status,
            "text/event-stream; charset=utf-8",
            trace_id,
            None,
            "no-cache",
            None,
        );
        HostTransport {
            body: BodyWriter::new(&response),
            head: Some((self.out, response)),
        }
    }
}

/// The streamed response: its head leaves with the first write.
struct HostTransport {
    body: BodyWriter,
    head: Option<(ResponseOutparam, OutgoingResponse)>,
}

impl Transport for HostTransport {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientGone> {
        meter::count_write();
        let mut early = 0;
        if let Some((out, response)) = self.head.take() {
            if self.body.write_whole_now(bytes) {
                early = bytes.len();
            }
            out.set(response);
        }
        self.body.write_all(&bytes[early..]).await
    }
}

impl Drop for HostTransport {
    fn drop(&mut self) {
        // Nothing was written: the client still gets the head.
        if let Some((out, response)) = self.head.take() {
            out.set(response);
        }
    }
}

/// The WASI host: outbound HTTP through wasi:http, monotonic-clock timers,
/// wasi:random, stderr logs, and the breaker store of this build.
struct WasiHost {
    store: &'static dyn SharedStore,
}

thread_local! {
    // Lives as long as the instance: across requests when the host reuses it.
    static STORE: &'static dyn SharedStore = shared_store();
    static FIRSTS: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A configuration variable: the environment's, and in the `spin-kv` build, for
/// a variable the environment does not set, the Spin variable of the same
/// name in lower case (`DIAL_ENDPOINT` → `dial_endpoint`), which is how
/// `SPIN_VARIABLE_*`, a `.env` file and a SpinApp's `variables` reach
/// the component.
fn read_variable(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    #[cfg(feature = "spin-kv")]
    let value = value.or_else(|| spin_sdk::variables::get(&name.to_ascii_lowercase()).ok());
    value
}

#[cfg(not(feature = "spin-kv"))]
fn shared_store() -> &'static dyn SharedStore {
    Box::leak(Box::new(crate::client::MemoryStore::default()))
}

#[cfg(feature = "spin-kv")]
fn shared_store() -> &'static dyn SharedStore {
    Box::leak(Box::new(SpinKvStore))
}

/// Spin's default key-value store, shared by every instance of a Spin
/// deployment (the `spin-kv` build; Spin-only, see docs/deploying.md).
#[cfg(feature = "spin-kv")]
struct SpinKvStore;

#[cfg(feature = "spin-kv")]
impl SharedStore for SpinKvStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        spin_sdk::key_value::Store::open_default()
            .ok()
            .and_then(|s| s.get(key).ok().flatten())
    }

    fn set(&self, key: &str, value: &[u8]) {
        if let Ok(store) = spin_sdk::key_value::Store::open_default() {
            let _ = store.set(key, value);
        }
    }

    fn kind(&self) -> &'static str {
        "spin-key-value"
    }
}

impl WasiHost {
    fn new() -> WasiHost {
        WasiHost {
            store: STORE.with(|s| *s),
        }
    }
}

/// A pollable registered with the executor once, with a waker of its own
/// that notes when it fired. spin's executor polls the whole request after
/// every wake-up, so most polls of a wait find it still pending: with this
/// they cost no host call (rather than a read, a clock read or a new
/// `subscribe` each). The waker of the task that waits is woken too, so
/// combinators that poll only what woke them see it.
struct Registration {
    // Dropping the token drops the pollable, if it has not fired.
    _token: spin_executor::CancelOnDropToken,
    fired: std::sync::Arc<Fired>,
}

struct Fired {
    done: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<std::task::Waker>,
}

impl std::task::Wake for Fired {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(waker) = self.waker.lock() {
            waker.wake_by_ref();
        }
    }
}

impl Registration {
    fn new(pollable: wasi::io::poll::Pollable, cx: &Context<'_>) -> Registration {
        let fired = std::sync::Arc::new(Fired {
            done: std::sync::atomic::AtomicBool::new(false),
            waker: std::sync::Mutex::new(cx.waker().clone()),
        });
        let token = spin_executor::push_waker_and_get_token(
            pollable,
            std::task::Waker::from(fired.clone()),
        );
        Registration {
            _token: token.into(),
            fired,
        }
    }

    /// Whether it fired; keeps the waker of the task that waits current.
    fn fired(&self, cx: &Context<'_>) -> bool {
        if self.fired.done.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        if let Ok(mut waker) = self.fired.waker.lock() {
            if !waker.will_wake(cx.waker()) {
                *waker = cx.waker().clone();
            }
        }
        false
    }

    /// One wait on a pollable: registers it on the first poll (`subscribe`
    /// makes it), ready once it fired.
    fn wait(
        slot: &mut Option<Registration>,
        cx: &Context<'_>,
        subscribe: impl FnOnce() -> wasi::io::poll::Pollable,
    ) -> Poll<()> {
        match slot {
            Some(registration) if registration.fired(cx) => {
                *slot = None;
                Poll::Ready(())
            }
            Some(_) => Poll::Pending,
            None => {
                *slot = Some(Registration::new(subscribe(), cx));
                Poll::Pending
            }
        }
    }
}

/// The monotonic clock in nanoseconds: as read when the running poll began
/// (`meter.rs`; a poll takes microseconds), or read now outside one.
fn monotonic_now_ns() -> u64 {
    meter::poll_now_ns().unwrap_or_else(|| {
        meter::count(Call::Clock, 1);
        wasi::clocks::monotonic_clock::now()
    })
}

/// A timer on the monotonic clock that does not block the instance. It is
/// armed once, on its first poll (`subscribe-instant`), and costs no host
/// call on the polls before it fires; dropped early, it cancels its
/// registration, so timers that lose a race (the common case) leave nothing
/// behind.
struct Sleep {
    deadline_ns: u64,
    registration: Option<Registration>,
}

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registration.is_none() && monotonic_now_ns() >= self.deadline_ns {
            return Poll::Ready(());
        }
        let deadline = self.deadline_ns;
        Registration::wait(&mut self.registration, cx, || {
            // The pollable, and its drop when it fires or is cancelled.
            meter::count(Call::Timer, 2);
            wasi::clocks::monotonic_clock::subscribe_instant(deadline)
        })
    }
}

/// An incoming body (the request's, or a response's) read through its wasi:io
/// input stream: a read per chunk, and when none is there, one `subscribe`
/// for the wait, which costs nothing more until it fires ([`Registration`]).
/// Dropping the reader finishes the body.
struct BodyReader {
    stream: Option<wasi::io::streams::InputStream>,
    body: Option<spin_sdk::wit::wasi::http0_2_0::types::IncomingBody>,
    registration: Option<Registration>,
}

/// The most one read takes (a host hands over what it has, up to this).
const READ_MAX: u64 = 64 * 1024;

impl BodyReader {
    fn of(body: Option<spin_sdk::wit::wasi::http0_2_0::types::IncomingBody>) -> BodyReader {
        let stream = body.as_ref().and_then(|b| b.stream().ok());
        // consume, stream, and at the end the stream's drop and finish.
        meter::count(Call::Http, 4);
        BodyReader {
            stream,
            body,
            registration: None,
        }
    }

    fn of_request(request: IncomingRequest) -> BodyReader {
        BodyReader::of(request.consume().ok())
    }
}

impl Stream for BodyReader {
    type Item = Result<Vec<u8>, wasi::io::streams::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use wasi::io::streams::StreamError;
        let this = &mut *self;
        if let Some(registration) = &this.registration {
            if !registration.fired(cx) {
                return Poll::Pending;
            }
            this.registration = None;
        }
        let Some(stream) = this.stream.as_ref() else {
            return Poll::Ready(None);
        };
        meter::count(Call::Read, 1);
        match stream.read(READ_MAX) {
            Ok(bytes) if bytes.is_empty() => {
                meter::count(Call::Subscribe, 2);
                this.registration = Some(Registration::new(stream.subscribe(), cx));
                Poll::Pending
            }
            Ok(bytes) => Poll::Ready(Some(Ok(bytes))),
            Err(StreamError::Closed) => {
                this.stream = None;
                Poll::Ready(None)
            }
            Err(StreamError::LastOperationFailed(e)) => {
                this.stream = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        self.registration = None;
        // The stream goes first: a body can only be finished without it.
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            drop(spin_sdk::wit::wasi::http0_2_0::types::IncomingBody::finish(
                body,
            ));
        }
    }
}

/// A response body; keeps the response alive while it is read, because
/// dropping an incoming response cancels the call.
struct WasiBody {
    // Declared first so it is dropped before the response that owns it.
    stream: BodyReader,
    _response: IncomingResponse,
}

impl Stream for WasiBody {
    type Item = Result<Vec<u8>, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx).map(|item| {
            item.map(|r| {
                r.map_err(|e| {
                    TransportError::other(format!("body read failed: {}", describe_io_error(&e)))
                })
            })
        })
    }
}

impl Host for WasiHost {
    type Body = WasiBody;
    type Sleep = Sleep;

    fn sleep(&self, ms: u64) -> Sleep {
        Sleep {
            deadline_ns: monotonic_now_ns().saturating_add(ms.saturating_mul(1_000_000)),
            registration: None,
        }
    }

    fn now_ms(&self) -> u64 {
        monotonic_now_ns() / 1_000_000
    }

    fn unix_ms(&self) -> u64 {
        meter::count(Call::Clock, 1);
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn random_u64(&self) -> u64 {
        meter::count(Call::Other, 1);
        wasi::random::random::get_random_u64()
    }

    fn log(&self, line: &str) {
        // One line, one write to stderr (counted as one call).
        meter::count(Call::Other, 1);
        eprintln!("{line}");
    }

    fn store(&self) -> &dyn SharedStore {
        self.store
    }

    fn first_in_instance(&self, what: &'static str) -> bool {
        FIRSTS.with(|f| {
            let mut seen = f.borrow_mut();
            if seen.contains(&what) {
                false
            } else {
                seen.push(what);
                true
            }
        })
    }

    async fn send(
        &self,
        request: OutboundRequest,
    ) -> Result<OutboundResponse<WasiBody>, TransportError> {
        use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
        if request.body.len() > EARLY_BODY_MAX {
            return send_large(request).await;
        }
        let outgoing = outgoing_request(&request)?;
        // The body goes into the stream before the request is handed over
        // when the host takes all of it at once (up to 1 MiB in wasmtime 48):
        // the host then sends head and body together. Sent after the head, a small
        // body waits for the upstream's delayed ACK on a reused connection
        // when the host does not set TCP_NODELAY (Spin pools its outbound
        // connections): about 40 ms per call.
        let mut body = BodyWriter::of_request(&outgoing);
        let early = if request.method == Method::Post && body.write_whole_now(&request.body) {
            request.body.len()
        } else {
            0
        };
        // handle, and the pending response's drop.
        meter::count(Call::Http, 2);
        let pending =
            outgoing_handler::handle(outgoing, None).map_err(|code| describe_code(&code))?;
        let sent_whole =
            request.method != Method::Post || body.write_all(&request.body[early..]).await.is_ok();
        drop(body);
        let mut registration: Option<Registration> = None;
        let response = futures::future::poll_fn(|cx| {
            if let Some(waiting) = &registration {
                if !waiting.fired(cx) {
                    return Poll::Pending;
                }
                registration = None;
            }
            meter::count(Call::Http, 1);
            match pending.get() {
                Some(Ok(Ok(response))) => Poll::Ready(Ok(response)),
                Some(Ok(Err(code))) => Poll::Ready(Err(describe_code(&code))),
                Some(Err(())) => {
                    Poll::Ready(Err(TransportError::other("the response was already taken")))
                }
                None => {
                    meter::count(Call::Subscribe, 2);
                    registration = Some(Registration::new(pending.subscribe(), cx));
                    Poll::Pending
                }
            }
        })
        .await;
        drop(registration);
        if !sent_whole {
            // The host says why the connection failed (refused, reset...); a
            // request that was not sent whole was acted on by no server.
            let why = match response {
                Err(e) => e.message,
                Ok(_) => "the connection closed".to_owned(),
            };
            return Err(TransportError::not_sent(format!(
                "{why}: the request was not sent whole"
            )));
        }
        Ok(wasi_response(response?))
    }
}

/// The outgoing request of `request`, head only (its body is written by the
/// caller); a URL or header the host refuses means it was not sent.
fn outgoing_request(
    request: &OutboundRequest,
) -> Result<spin_sdk::http::OutgoingRequest, TransportError> {
    use spin_sdk::http::{OutgoingRequest, Scheme};
    let invalid = |what: &str| TransportError::not_sent(format!("invalid request {what}"));
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| invalid("URL"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut list: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    if request.method == Method::Post {
        list.push((
            "content-length".to_owned(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    // fields, request, method, scheme, authority, path.
    meter::count(Call::Http, 6);
    let headers = Fields::from_list(&list).map_err(|_| invalid("header"))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method {
        Method::Get => SpinMethod::Get,
        Method::Post => SpinMethod::Post,
    };
    outgoing
        .set_method(&method)
        .and(outgoing.set_scheme(Some(&scheme)))
        .and(outgoing.set_authority(Some(authority)))
        .and(outgoing.set_path_with_query(Some(&path)))
        .map_err(|()| invalid("URL"))?;
    Ok(outgoing)
}

/// A large body (a long history) goes through spin-sdk's send, which writes
/// it after the head. Written by hand in chunks after the head, such a body
/// failed now and then under `wasmtime serve` 48 (the stream closed before
/// the last chunk: about 1 request in 25 with the 1.2 MiB body of a
/// 1,000-message history); spin-sdk's writer never did. Its own host calls
/// are counted as those of a small request (they are more: a write per
/// 4 KiB or so).
async fn send_large(
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
    builder.header("content-length", request.body.len().to_string());
    builder.body(request.body);
    meter::count(Call::Http, 12);
    meter::count(Call::Write, 3);
    let response: IncomingResponse = spin_sdk::http::send(builder.build())
        .await
        .map_err(|e| describe_send_error(&e))?;
    Ok(wasi_response(response))
}

/// Outbound bodies up to this size go into their stream before the request
/// is handed over (one write, so the host sends head and body together);
/// larger ones go through spin-sdk's send.
const EARLY_BODY_MAX: usize = 64 * 1024;

fn wasi_response(response: IncomingResponse) -> OutboundResponse<WasiBody> {
    // status, and the response's drop.
    meter::count(Call::Http, 2);
    let status = response.status();
    // Only a 429's `Retry-After` is read: reading headers costs host calls,
    // and no other answer needs them.
    let retry_after_s = (status == 429)
        .then(|| {
            meter::count(Call::Http, 3);
            response.headers().get("retry-after")
        })
        .and_then(|values| values.into_iter().next())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| retry_after_seconds(&v));
    let stream = BodyReader::of(response.consume().ok());
    OutboundResponse {
        status,
        retry_after_s,
        body: WasiBody {
            stream,
            _response: response,
        },
    }
}

/// spin-sdk's send error as a transport error: the host's code when it gave
/// one; a body that could not be written means the request was not sent whole.
fn describe_send_error(e: &spin_sdk::http::SendError) -> TransportError {
    match e {
        spin_sdk::http::SendError::Http(code) => describe_code(code),
        spin_sdk::http::SendError::Io(_) => TransportError::not_sent(
            "the connection closed before the request was sent (refused or reset)",
        ),
        other => TransportError::other(first_line(&other.to_string())),
    }
}

/// A wasi:http error code as a transport error, saying whether the request
/// provably never reached the upstream.
fn describe_code(code: &spin_sdk::http::ErrorCode) -> TransportError {
    use spin_sdk::http::ErrorCode as E;
    let not_sent = matches!(
        code,
        E::DnsTimeout
            | E::DnsError(_)
            | E::DestinationNotFound
            | E::DestinationUnavailable
            | E::DestinationIpProhibited
            | E::DestinationIpUnroutable
            | E::ConnectionRefused
            | E::ConnectionTimeout
            | E::ConnectionLimitReached
            | E::TlsProtocolError
            | E::TlsCertificateError
            | E::TlsAlertReceived(_)
            | E::HttpRequestDenied
            | E::HttpRequestUriInvalid
            | E::HttpRequestUriTooLong
            | E::HttpRequestMethodInvalid
    );
    TransportError {
        not_sent,
        message: format!("{code:?}"),
    }
}

/// The HTTP error behind a body read failure, or the first line of the host's
/// description (which may carry a host-side backtrace after it).
fn describe_io_error(e: &wasi::io::error::Error) -> String {
    match wasi::http::types::http_error_code(e) {
        Some(code) => format!("{code:?}"),
        None => first_line(&e.to_debug_string()),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

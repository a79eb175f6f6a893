//! In-process fakes of DIAL Core (LLM, agents) and UMS for native flow tests:
//! a `Host` that answers from a script and records every request and log
//! line, on a virtual clock.
//!
//! Time is virtual: [`FakeClient::run`] polls the flow, and whenever nothing
//! can go on until time passes it moves the clock to the earliest pending
//! timer (a sleep, a delayed head, a timed body chunk) and wakes it. So a
//! 30-second timeout takes 30 virtual seconds and no real time, and breaker
//! windows and open periods are crossed by time actually passing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::Stream;
use mas_coordinator::client::{Host, Method, OutboundRequest, OutboundResponse, TransportError};
use mas_coordinator::client::{MemoryStore, SharedStore};
use serde_json::{json, Value};

pub const CORE: &str = "http://core.test";
pub const UMS: &str = "http://ums.test";
pub const KEY: &str = "sk-per-request-123";
/// The fake's unix clock at virtual time 0.
pub const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;

/// The virtual clock and its timers, shared by every fake host of a test.
#[derive(Default)]
pub struct Clock {
    now: Cell<u64>,
    timers: RefCell<Vec<(u64, Waker)>>,
}

impl Clock {
    /// Virtual milliseconds since the test started.
    pub fn now(&self) -> u64 {
        self.now.get()
    }

    /// Moves time forward by `ms` (between requests).
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    fn register(&self, deadline: u64, waker: &Waker) {
        self.timers.borrow_mut().push((deadline, waker.clone()));
    }

    /// Moves the clock to the earliest timer and wakes every timer due then;
    /// false when there is no timer at all.
    fn fire_next(&self) -> bool {
        let due: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            let Some(next) = timers.iter().map(|(d, _)| *d).min() else {
                return false;
            };
            if next > self.now.get() {
                self.now.set(next);
            }
            let now = self.now.get();
            let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(d, _)| *d <= now);
            *timers = later;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(Waker::wake);
        true
    }
}

/// A future that completes at a virtual time.
pub struct Timer {
    clock: Rc<Clock>,
    deadline: u64,
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.deadline {
            Poll::Ready(())
        } else {
            self.clock.register(self.deadline, cx.waker());
            Poll::Pending
        }
    }
}

impl Unpin for Timer {}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and body chunks; a chunk `Err` breaks the connection there.
    Http(u16, Vec<Result<Vec<u8>, TransportError>>),
    /// Status, then each chunk `ms` after the previous one (the first after the head).
    Timed(u16, Vec<(u64, Vec<u8>)>),
    /// The connection could not be made (nothing was sent).
    Refused,
    /// The connection broke after the request was sent, before any head.
    Reset,
    /// The response head never arrives.
    Hang,
    /// Status and chunks, then the body goes silent.
    HangAfter(u16, Vec<Result<Vec<u8>, TransportError>>),
    /// The reply, with its head `ms` late.
    Late(u64, Box<Reply>),
    /// The reply, with `Retry-After: <s>`.
    RetryAfter(u64, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, v: Value) -> Reply {
        Reply::Http(status, vec![Ok(v.to_string().into_bytes())])
    }

    /// An SSE body, one chunk per event, ending with [DONE].
    pub fn sse(events: &[Value]) -> Reply {
        let mut chunks: Vec<Result<Vec<u8>, TransportError>> = events
            .iter()
            .map(|e| Ok(format!("data: {e}\n\n").into_bytes()))
            .collect();
        chunks.push(Ok(b"data: [DONE]\n\n".to_vec()));
        Reply::Http(200, chunks)
    }

    /// An SSE body with `ms` between events, ending with [DONE].
    pub fn sse_timed(ms: u64, events: &[Value]) -> Reply {
        let mut chunks: Vec<(u64, Vec<u8>)> = events
            .iter()
            .map(|e| (ms, format!("data: {e}\n\n").into_bytes()))
            .collect();
        chunks.push((ms, b"data: [DONE]\n\n".to_vec()));
        Reply::Timed(200, chunks)
    }
}

/// A DIAL chunk with one delta.
pub fn chunk(delta: Value) -> Value {
    json!({"choices": [{"index": 0, "finish_reason": null, "delta": delta}], "usage": null, "id": "up", "created": 1, "object": "chat.completion.chunk"})
}

/// The last chunk of a DIAL stream, with usage.
pub fn stop_chunk() -> Value {
    stop_chunk_with(1, 1)
}

pub fn stop_chunk_with(prompt: u64, completion: u64) -> Value {
    json!({"choices": [{"index": 0, "finish_reason": "stop", "delta": {}}], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, "id": "up", "created": 1, "object": "chat.completion.chunk"})
}

/// A routing answer.
pub fn routing_reply(agent: &str, instructions: Option<&str>) -> Reply {
    let decision = json!({"agent_name": agent, "additional_instructions": instructions});
    completion(&decision.to_string())
}

/// A non-streaming chat completion with usage 10/5.
pub fn completion(content: &str) -> Reply {
    Reply::json(
        200,
        json!({"id": "r", "object": "chat.completion", "created": 1, "model": "gpt-4o",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
    )
}

/// A streamed LLM answer made of `pieces` (usage 1/1).
pub fn llm_stream(pieces: &[&str]) -> Reply {
    let mut events = vec![chunk(json!({"role": "assistant"}))];
    events.extend(pieces.iter().map(|p| chunk(json!({"content": p}))));
    events.push(stop_chunk());
    Reply::sse(&events)
}

/// UMS's stream for `id` with `pieces` (Python json spacing, like the real one).
pub fn ums_stream(id: &str, pieces: &[&str]) -> Reply {
    let mut body = format!("data: {{\"conversation_id\": \"{id}\"}}\n\n");
    for p in pieces {
        body.push_str(&format!(
            "data: {{\"choices\": [{{\"delta\": {{\"content\": {}}}, \"index\": 0, \"finish_reason\": null}}]}}\n\n",
            serde_json::to_string(p).unwrap()
        ));
    }
    body.push_str("data: {\"choices\": [{\"delta\": {}, \"index\": 0, \"finish_reason\": \"stop\"}]}\n\ndata: [DONE]\n\n");
    // Split into small pieces at awkward places to exercise the SSE decoder.
    let bytes = body.into_bytes();
    Reply::Http(200, bytes.chunks(7).map(|c| Ok(c.to_vec())).collect())
}

/// A fake `Host`: replies are taken in order per URL key (the longest key
/// that ends the request's path wins); the clock is virtual (see the module
/// docs); the breaker store may be shared by several hosts.
pub struct FakeClient {
    script: RefCell<Vec<(String, VecDeque<Reply>)>>,
    pub requests: RefCell<Vec<OutboundRequest>>,
    pub logs: RefCell<Vec<String>>,
    pub clock: Rc<Clock>,
    /// The virtual time this host's monotonic clock reads as 0.
    mono_origin: u64,
    ids: Cell<u64>,
    pub store: Rc<MemoryStore>,
    firsts: RefCell<Vec<&'static str>>,
    /// How many timers the coordinator armed (`Host::sleep`).
    pub sleeps: Cell<usize>,
}

impl Default for FakeClient {
    fn default() -> Self {
        FakeClient::sharing(Rc::new(Clock::default()), Rc::new(MemoryStore::default()))
    }
}

impl FakeClient {
    pub fn new() -> FakeClient {
        FakeClient::default()
    }

    /// A host on `clock` and `store` (shared with other hosts), whose
    /// monotonic clock starts at 0 now, as a fresh instance's does.
    pub fn sharing(clock: Rc<Clock>, store: Rc<MemoryStore>) -> FakeClient {
        FakeClient {
            script: RefCell::default(),
            requests: RefCell::default(),
            logs: RefCell::default(),
            mono_origin: clock.now(),
            clock,
            ids: Cell::new(0),
            store,
            firsts: RefCell::default(),
            sleeps: Cell::new(0),
        }
    }

    /// Queues `reply` for requests whose URL path ends with `url_suffix`.
    pub fn on(self, url_suffix: &str, reply: Reply) -> FakeClient {
        {
            let mut script = self.script.borrow_mut();
            match script.iter_mut().find(|(k, _)| k == url_suffix) {
                Some((_, q)) => q.push_back(reply),
                None => script.push((url_suffix.to_owned(), VecDeque::from([reply]))),
            }
        }
        self
    }

    /// Queues more replies on an existing host.
    pub fn push(&self, url_suffix: &str, reply: Reply) {
        let mut script = self.script.borrow_mut();
        match script.iter_mut().find(|(k, _)| k == url_suffix) {
            Some((_, q)) => q.push_back(reply),
            None => script.push((url_suffix.to_owned(), VecDeque::from([reply]))),
        }
    }

    pub fn requests(&self) -> Vec<OutboundRequest> {
        self.requests.borrow().clone()
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs
            .borrow()
            .iter()
            .map(|l| serde_json::from_str(l).expect("log lines are JSON"))
            .collect()
    }

    /// Runs `future` to completion on the virtual clock.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        run_on(&self.clock, future)
    }

    fn timer(&self, at: u64) -> Timer {
        Timer {
            clock: self.clock.clone(),
            deadline: at,
        }
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `future` until it is done, moving `clock` to the next timer whenever
/// nothing else can make progress. Panics if the future waits on nothing.
pub fn run_on<F: Future>(clock: &Clock, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        if flag.0.load(Ordering::SeqCst) {
            continue;
        }
        assert!(
            clock.fire_next(),
            "the flow waits on nothing: it would hang forever"
        );
    }
}

type Chunk = Result<Vec<u8>, TransportError>;

/// A scripted body.
pub struct FakeBody {
    clock: Rc<Clock>,
    /// (due time, chunk); `None` due means available at once.
    chunks: VecDeque<(Option<u64>, Chunk)>,
    hang_after: bool,
}

impl Stream for FakeBody {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        match self.chunks.front() {
            Some((Some(due), _)) if *due > self.clock.now() => {
                let due = *due;
                self.clock.register(due, cx.waker());
                Poll::Pending
            }
            Some(_) => Poll::Ready(self.chunks.pop_front().map(|(_, c)| c)),
            None if self.hang_after => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

impl Unpin for FakeBody {}

impl Host for FakeClient {
    type Body = FakeBody;
    type Sleep = Timer;

    fn sleep(&self, ms: u64) -> Timer {
        self.sleeps.set(self.sleeps.get() + 1);
        self.timer(self.clock.now() + ms)
    }

    fn now_ms(&self) -> u64 {
        self.clock.now() - self.mono_origin
    }

    fn unix_ms(&self) -> u64 {
        UNIX_EPOCH_MS + self.clock.now()
    }

    fn random_u64(&self) -> u64 {
        self.ids.set(self.ids.get() + 1);
        self.ids.get()
    }

    fn log(&self, line: &str) {
        self.logs.borrow_mut().push(line.to_owned());
    }

    fn store(&self) -> &dyn SharedStore {
        &*self.store
    }

    fn first_in_instance(&self, what: &'static str) -> bool {
        let mut seen = self.firsts.borrow_mut();
        if seen.contains(&what) {
            return false;
        }
        seen.push(what);
        true
    }

    async fn send(
        &self,
        request: OutboundRequest,
    ) -> Result<OutboundResponse<FakeBody>, TransportError> {
        self.requests.borrow_mut().push(request.clone());
        let reply = {
            let mut script = self.script.borrow_mut();
            let path = request.url.split('?').next().unwrap_or("").to_owned();
            script
                .iter_mut()
                .filter(|(k, _)| path.ends_with(k.as_str()))
                .max_by_key(|(k, _)| k.len())
                .and_then(|(_, q)| q.pop_front())
        };
        let Some(mut reply) = reply else {
            panic!("no scripted reply for {:?} {}", request.method, request.url)
        };
        let mut retry_after_s = None;
        loop {
            match reply {
                Reply::Late(ms, inner) => {
                    self.timer(self.clock.now() + ms).await;
                    reply = *inner;
                }
                Reply::RetryAfter(s, inner) => {
                    retry_after_s = Some(s);
                    reply = *inner;
                }
                Reply::Http(status, chunks) => {
                    return Ok(self.response(
                        status,
                        chunks.into_iter().map(|c| (None, c)).collect(),
                        false,
                        retry_after_s,
                    ))
                }
                Reply::HangAfter(status, chunks) => {
                    return Ok(self.response(
                        status,
                        chunks.into_iter().map(|c| (None, c)).collect(),
                        true,
                        retry_after_s,
                    ))
                }
                Reply::Timed(status, chunks) => {
                    let mut at = self.clock.now();
                    let chunks = chunks
                        .into_iter()
                        .map(|(ms, c)| {
                            at += ms;
                            (Some(at), Ok(c))
                        })
                        .collect();
                    return Ok(self.response(status, chunks, false, retry_after_s));
                }
                Reply::Refused => return Err(TransportError::not_sent("ConnectionRefused")),
                Reply::Reset => return Err(TransportError::other("ConnectionTerminated")),
                Reply::Hang => futures::future::pending::<()>().await,
            }
        }
    }
}

impl FakeClient {
    fn response(
        &self,
        status: u16,
        chunks: VecDeque<(Option<u64>, Chunk)>,
        hang_after: bool,
        retry_after_s: Option<u64>,
    ) -> OutboundResponse<FakeBody> {
        OutboundResponse {
            status,
            retry_after_s,
            body: FakeBody {
                clock: self.clock.clone(),
                chunks,
                hang_after,
            },
        }
    }
}

pub fn body_json(r: &OutboundRequest) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

pub fn is_post(r: &OutboundRequest) -> bool {
    r.method == Method::Post
}

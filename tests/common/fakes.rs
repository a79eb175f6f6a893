//! In-process fakes of DIAL Core (LLM, GPA) and UMS for native flow tests:
//! a `Host` that answers from a script and records every request and log line.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use mas_coordinator::client::{Host, Method, OutboundRequest, OutboundResponse, TransportError};
use mas_coordinator::resilience::breaker::{BreakerStore, MemoryStore};
use serde_json::{json, Value};

pub const CORE: &str = "http://core.test";
pub const UMS: &str = "http://ums.test";
pub const KEY: &str = "sk-per-request-123";

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and body chunks; a chunk `Err` breaks the connection there.
    Http(u16, Vec<Result<Vec<u8>, TransportError>>),
    /// The connection could not be made.
    Refused,
    /// The response head never arrives (the fake timer fires at once).
    Hang,
    /// Status and chunks, then the body goes silent.
    HangAfter(u16, Vec<Result<Vec<u8>, TransportError>>),
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
}

/// A DIAL chunk with one delta.
pub fn chunk(delta: Value) -> Value {
    json!({"choices": [{"index": 0, "finish_reason": null, "delta": delta}], "usage": null, "id": "up", "created": 1, "object": "chat.completion.chunk"})
}

pub fn stop_chunk() -> Value {
    json!({"choices": [{"index": 0, "finish_reason": "stop", "delta": {}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "id": "up", "created": 1, "object": "chat.completion.chunk"})
}

/// A routing answer.
pub fn routing_reply(agent: &str, instructions: Option<&str>) -> Reply {
    let decision = json!({"agent_name": agent, "additional_instructions": instructions});
    completion(&decision.to_string())
}

pub fn completion(content: &str) -> Reply {
    Reply::json(
        200,
        json!({"id": "r", "object": "chat.completion", "created": 1, "model": "gpt-4o",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}),
    )
}

/// A streamed LLM answer made of `pieces`.
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

/// A fake `Host`: replies are taken in order per URL key; timers fire at once
/// (so anything that would wait times out); the clock is set by the test.
#[derive(Default)]
pub struct FakeClient {
    script: RefCell<Vec<(String, VecDeque<Reply>)>>,
    pub requests: RefCell<Vec<OutboundRequest>>,
    pub logs: RefCell<Vec<String>>,
    pub clock: Cell<u64>,
    ids: Cell<u64>,
    pub store: MemoryStore,
}

impl FakeClient {
    pub fn new() -> FakeClient {
        FakeClient::default()
    }

    /// Queues `reply` for requests whose URL ends with `url_suffix`.
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
}

/// A scripted body: its chunks, then either its end or (`hang`) silence forever.
pub type FakeBody = futures::stream::Chain<
    futures::stream::Iter<std::vec::IntoIter<Result<Vec<u8>, TransportError>>>,
    futures::future::Either<
        futures::stream::Empty<Result<Vec<u8>, TransportError>>,
        futures::stream::Pending<Result<Vec<u8>, TransportError>>,
    >,
>;

impl Host for FakeClient {
    type Body = FakeBody;
    type Sleep = futures::future::Ready<()>;

    fn sleep(&self, _ms: u64) -> Self::Sleep {
        futures::future::ready(())
    }

    fn now_ms(&self) -> u64 {
        self.clock.get()
    }

    fn unix_ms(&self) -> u64 {
        1_700_000_000_000 + self.clock.get()
    }

    fn random_u64(&self) -> u64 {
        self.ids.set(self.ids.get() + 1);
        self.ids.get()
    }

    fn log(&self, line: &str) {
        self.logs.borrow_mut().push(line.to_owned());
    }

    fn breakers(&self) -> &dyn BreakerStore {
        &self.store
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
        match reply {
            Some(Reply::Http(status, chunks)) => Ok(OutboundResponse {
                status,
                body: futures::StreamExt::chain(
                    futures::stream::iter(chunks),
                    futures::future::Either::Left(futures::stream::empty()),
                ),
            }),
            Some(Reply::HangAfter(status, chunks)) => Ok(OutboundResponse {
                status,
                body: futures::StreamExt::chain(
                    futures::stream::iter(chunks),
                    futures::future::Either::Right(futures::stream::pending()),
                ),
            }),
            Some(Reply::Refused) => Err(TransportError("ConnectionRefused".to_owned())),
            Some(Reply::Hang) => futures::future::pending().await,
            None => panic!("no scripted reply for {:?} {}", request.method, request.url),
        }
    }
}

pub fn body_json(r: &OutboundRequest) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

pub fn is_post(r: &OutboundRequest) -> bool {
    r.method == Method::Post
}

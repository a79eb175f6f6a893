//! The outbound HTTP seam: what the coordinator needs from an HTTP client, and
//! helpers that turn a response body into bytes or SSE events.
//!
//! The component implements [`HttpClient`] with wasi:http (`host.rs`); native
//! tests implement it with scripted in-process fakes. Nothing here knows about
//! DIAL, agents or the per-request key.

use futures::{Stream, StreamExt};

use crate::sse::{SseDecoder, SseError};

/// HTTP method of an outbound call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// An outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for GET).
    pub body: Vec<u8>,
}

impl OutboundRequest {
    /// A POST with a JSON body.
    pub fn post_json(url: String, body: Vec<u8>) -> OutboundRequest {
        OutboundRequest {
            method: Method::Post,
            url,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body,
        }
    }

    /// A GET.
    pub fn get(url: String) -> OutboundRequest {
        OutboundRequest {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> OutboundRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The value of a header, if set.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A transport-level failure (no usable response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

/// A response whose body is read as a stream of byte chunks.
#[derive(Debug)]
pub struct OutboundResponse<B> {
    /// HTTP status.
    pub status: u16,
    /// Body chunks, split anywhere.
    pub body: B,
}

/// The HTTP client the coordinator calls upstreams with.
pub trait HttpClient {
    /// The body stream of a response.
    type Body: Stream<Item = Result<Vec<u8>, TransportError>> + Unpin;

    /// Sends a request and returns once the response head has arrived.
    fn send(
        &self,
        request: OutboundRequest,
    ) -> impl std::future::Future<Output = Result<OutboundResponse<Self::Body>, TransportError>>;
}

/// Reads a whole body, keeping at most `limit` bytes (the rest is drained and dropped).
pub async fn read_body<B>(body: &mut B, limit: usize) -> Result<Vec<u8>, TransportError>
where
    B: Stream<Item = Result<Vec<u8>, TransportError>> + Unpin,
{
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(out)
}

/// What reading an event stream produced next.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// The `data` of some events, in order.
    Events(Vec<String>),
    /// The body ended; `clean` is false when it stopped mid-event.
    End {
        /// No partial event was pending.
        clean: bool,
    },
}

/// Why an event stream could not be read further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStreamError {
    /// The connection failed mid-body.
    Transport(TransportError),
    /// The bytes are not a valid event stream.
    Decode(SseError),
}

/// Reads an SSE body chunk by chunk.
#[derive(Debug)]
pub struct EventReader<B> {
    body: B,
    decoder: SseDecoder,
}

impl<B> EventReader<B>
where
    B: Stream<Item = Result<Vec<u8>, TransportError>> + Unpin,
{
    /// Wraps a response body.
    pub fn new(body: B) -> EventReader<B> {
        EventReader {
            body,
            decoder: SseDecoder::default(),
        }
    }

    /// Waits for the next body chunk and returns the events it completed (possibly none).
    pub async fn next(&mut self) -> Result<StreamItem, EventStreamError> {
        match self.body.next().await {
            Some(Ok(bytes)) => {
                let mut events = Vec::new();
                self.decoder
                    .push(&bytes, &mut events)
                    .map_err(EventStreamError::Decode)?;
                Ok(StreamItem::Events(events))
            }
            Some(Err(e)) => Err(EventStreamError::Transport(e)),
            None => Ok(StreamItem::End {
                clean: self.decoder.is_idle(),
            }),
        }
    }
}

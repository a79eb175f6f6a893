//! Calling an upstream and reading its answer, with every failure mapped to the
//! one error type: a transport error, a non-success status (with a short,
//! redacted excerpt of the body), a broken or unterminated event stream.

use crate::client::{
    read_body, EventReader, EventStreamError, HttpClient, OutboundRequest, OutboundResponse,
    StreamItem,
};
use crate::coordinator::FlowError;
use crate::emitter::{Emitter, Transport};
use crate::error::{redact, CoordError, Upstream, UpstreamFault};

/// Largest error body read from an upstream for the error message.
const ERROR_BODY_LIMIT: usize = 4096;
/// Largest non-streaming answer accepted from an upstream.
pub const ANSWER_LIMIT: usize = 8 * 1024 * 1024;

/// Identifies an upstream call in errors; holds the secret to redact.
#[derive(Debug, Clone, Copy)]
pub struct CallSite<'a> {
    /// Which upstream.
    pub upstream: Upstream,
    /// Deployment name or endpoint.
    pub target: &'a str,
    /// The per-request key, removed from any upstream text put into an error.
    pub secret: &'a str,
}

impl CallSite<'_> {
    /// The error for `fault` at this call site.
    pub fn error(&self, fault: UpstreamFault) -> CoordError {
        CoordError::Upstream {
            upstream: self.upstream,
            target: self.target.to_owned(),
            fault,
        }
    }

    /// Redacts upstream text for an error message.
    pub fn redact(&self, text: &str) -> String {
        redact(text, self.secret)
    }
}

/// Sends `request`; a transport error or a non-2xx status becomes a [`CoordError`].
pub async fn send_checked<C: HttpClient>(
    client: &C,
    site: CallSite<'_>,
    request: OutboundRequest,
) -> Result<OutboundResponse<C::Body>, CoordError> {
    let mut response = client
        .send(request)
        .await
        .map_err(|e| site.error(UpstreamFault::Connect(site.redact(&e.0))))?;
    if !(200..300).contains(&response.status) {
        let body = read_body(&mut response.body, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let excerpt = error_excerpt(&text);
        return Err(site.error(UpstreamFault::Status(
            response.status,
            site.redact(&excerpt),
        )));
    }
    Ok(response)
}

/// The message inside a DIAL/JSON error body, or the body text itself.
fn error_excerpt(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v
            .get("error")
            .map(crate::dial::upstream::error_text)
            .or_else(|| v.get("detail").map(ToString::to_string))
            .unwrap_or_else(|| text.to_owned()),
        Err(_) => text.to_owned(),
    }
}

/// Reads a whole successful body (non-streaming answers).
pub async fn read_answer<C: HttpClient>(
    site: CallSite<'_>,
    response: &mut OutboundResponse<C::Body>,
) -> Result<Vec<u8>, CoordError> {
    read_body(&mut response.body, ANSWER_LIMIT)
        .await
        .map_err(|e| site.error(UpstreamFault::Truncated(site.redact(&e.0))))
}

/// What an event handler wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep reading.
    Continue,
    /// The stream is complete (its own end marker was seen).
    Done,
}

/// Reads an SSE body until `[DONE]`, handing each event's data to `on_event`
/// and flushing `out` after every body chunk, so the client sees each piece as
/// soon as the upstream sent it. EOF or a broken connection before `[DONE]` is a
/// truncation error.
pub async fn pump_events<B, T, F>(
    site: CallSite<'_>,
    body: B,
    out: &mut Emitter<T>,
    mut on_event: F,
) -> Result<(), FlowError>
where
    B: futures::Stream<Item = Result<Vec<u8>, crate::client::TransportError>> + Unpin,
    T: Transport,
    F: FnMut(&str, &mut Emitter<T>) -> Result<Next, CoordError>,
{
    let mut reader = EventReader::new(body);
    loop {
        match reader.next().await {
            Ok(StreamItem::Events(events)) => {
                let mut done = false;
                for data in &events {
                    if data == "[DONE]" || on_event(data, out)? == Next::Done {
                        done = true;
                        break;
                    }
                }
                out.flush().await?;
                if done {
                    return Ok(());
                }
            }
            Ok(StreamItem::End { .. }) => {
                return Err(site
                    .error(UpstreamFault::Truncated(
                        "the stream ended without [DONE]".to_owned(),
                    ))
                    .into())
            }
            Err(EventStreamError::Transport(e)) => {
                return Err(site
                    .error(UpstreamFault::Truncated(site.redact(&e.0)))
                    .into())
            }
            Err(EventStreamError::Decode(e)) => {
                return Err(site.error(UpstreamFault::Malformed(e.to_string())).into())
            }
        }
    }
}

/// Parses one event's JSON, or reports the upstream as malformed.
pub fn parse_event<V: serde::de::DeserializeOwned>(
    site: CallSite<'_>,
    data: &str,
) -> Result<V, CoordError> {
    serde_json::from_str(data).map_err(|e| {
        site.error(UpstreamFault::Malformed(format!(
            "an event is not the expected JSON ({e})"
        )))
    })
}

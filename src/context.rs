//! What every part of a request's flow shares: the validated request and its
//! configuration ([`RequestContext`]), and why a flow stopped early
//! ([`FlowError`]). It sits below the flow, the agents and the calls, so none of
//! them has to import another for these types.

use std::sync::OnceLock;

use crate::config::Config;
use crate::error::CoordError;
use crate::memory::pending::Resume;
use crate::memory::state::{fnv1a, Binding, StateTrust};
use crate::memory::Recall;
use crate::trace::Trace;
use crate::wire::request::ChatRequest;

/// Why the flow stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// The client disconnected: stop quietly.
    ClientGone,
    /// A failure to report to the client.
    Failed(CoordError),
}

impl From<CoordError> for FlowError {
    fn from(e: CoordError) -> Self {
        FlowError::Failed(e)
    }
}

/// The client went away; nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

impl From<ClientGone> for FlowError {
    fn from(_: ClientGone) -> Self {
        FlowError::ClientGone
    }
}

/// A validated request, ready to be coordinated. Its `Debug` never shows the
/// key.
#[derive(Clone)]
pub struct RequestContext {
    /// Configuration for this request.
    pub config: Config,
    /// The per-request DIAL key: sent only to DIAL Core.
    pub api_key: String,
    /// `X-CONVERSATION-ID`, forwarded to DIAL agents when present.
    pub conversation_id: Option<String>,
    /// The `sub` claim of the user's token, when DIAL Core forwarded it.
    pub subject: Option<String>,
    /// `X-DIAL-APPLICATION-ID`: the DIAL application instance served, when
    /// DIAL Core names one (signed states are bound to it).
    pub application: Option<String>,
    /// The coordinator's deployment name, from the request path (namespaces
    /// the breakers of a shared store).
    pub coordinator: String,
    /// The parsed body.
    pub request: ChatRequest,
    /// The trace this request belongs to.
    pub trace: Trace,
    /// When the request arrived (host's monotonic milliseconds).
    pub start_ms: u64,
    /// When the request arrived, in unix seconds (issue time of signed state).
    pub unix_s: u64,
    /// The history's trusted states, read the first time an agent needs them.
    pub recall: OnceLock<Recall>,
    /// How this turn goes on from what the last one left pending
    /// (`memory/pending.rs`).
    pub resume: Resume,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("config", &self.config)
            .field("api_key", &"***")
            .field("conversation_id", &self.conversation_id)
            .field("subject", &self.subject)
            .field("application", &self.application)
            .field("coordinator", &self.coordinator)
            .field("messages", &self.request.messages.len())
            .field("trace", &self.trace)
            .field("start_ms", &self.start_ms)
            .field("unix_s", &self.unix_s)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl RequestContext {
    /// The text of the user's request (the last message).
    pub fn request_text(&self) -> String {
        self.request
            .messages
            .last()
            .map(|m| m.text())
            .unwrap_or_default()
    }

    /// How to trust the states in this request's history and sign ours.
    pub fn state_trust(&self) -> StateTrust<'_> {
        StateTrust {
            secret: self.config.state_secret.as_deref(),
            previous_secret: self.config.state_secret_previous.as_deref(),
            allow_unsigned: self.config.allow_unsigned_state,
            binding: Binding {
                conversation: self.conversation_id.as_deref().unwrap_or(""),
                subject: self.subject.as_deref().unwrap_or(""),
                application: self.application.as_deref().unwrap_or(""),
            },
            now_s: self.unix_s,
            max_age_s: self.config.state_max_age_s,
        }
    }

    /// Which states of the history this request trusts: read once (each
    /// signature verified once), on first use.
    pub fn recall(&self) -> &Recall {
        self.recall
            .get_or_init(|| Recall::read(&self.request.messages, &self.state_trust()))
    }

    /// Whether the client asked for SSE.
    pub fn streaming(&self) -> bool {
        self.request.stream.unwrap_or(false)
    }

    /// Who this request is for, as the circuit breaker counts callers: the
    /// user of the token DIAL Core forwarded (its `sub`). Never a header the
    /// client chooses (`X-CONVERSATION-ID` is one: two chats would be two
    /// callers). Without a token the breaker cannot tell users apart, so each
    /// request counts as a caller of its own (see docs/operating.md).
    pub fn caller_id(&self) -> u64 {
        let who = match &self.subject {
            Some(s) => format!("user:{s}"),
            None => format!("request:{}", self.trace.span_id),
        };
        fnv1a(who.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(conversation: Option<&str>, subject: Option<&str>, span: &str) -> RequestContext {
        RequestContext {
            config: Config::default(),
            api_key: "sk".to_owned(),
            conversation_id: conversation.map(str::to_owned),
            subject: subject.map(str::to_owned),
            application: None,
            coordinator: "mas-coordinator".to_owned(),
            request: ChatRequest {
                messages: Vec::new(),
                stream: None,
                n: None,
                custom_fields: None,
            },
            trace: Trace::from_headers(None, None, "a".repeat(32), span.to_owned()),
            start_ms: 0,
            unix_s: 0,
            recall: OnceLock::new(),
            resume: Resume::New,
        }
    }

    #[test]
    fn debug_output_never_shows_the_key_or_a_secret() {
        let mut ctx = request(Some("conv-1"), Some("alice"), "1111111111111111");
        ctx.api_key = "sk-very-secret-key".to_owned();
        ctx.config.state_secret = Some("state-secret-0123456789".to_owned());
        ctx.config.health_token = Some("health-token-0123456789".to_owned());
        let shown = format!("{ctx:?}");
        for secret in [
            "sk-very-secret-key",
            "state-secret-0123456789",
            "health-token-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("api_key: \"***\""), "{shown}");
        assert!(shown.contains("state_secret: Some(\"***\")"), "{shown}");
    }

    #[test]
    fn the_breaker_s_caller_is_the_token_s_user_never_a_client_chosen_header() {
        let alice_1 = request(Some("conv-1"), Some("alice"), "1111111111111111");
        let alice_2 = request(Some("conv-2"), Some("alice"), "2222222222222222");
        let bob = request(Some("conv-1"), Some("bob"), "3333333333333333");
        assert_eq!(alice_1.caller_id(), alice_2.caller_id());
        assert_ne!(alice_1.caller_id(), bob.caller_id());
        // Without a token every request is a caller of its own, whatever its
        // conversation id says.
        let anonymous_1 = request(Some("conv-1"), None, "4444444444444444");
        let anonymous_2 = request(Some("conv-1"), None, "5555555555555555");
        assert_ne!(anonymous_1.caller_id(), anonymous_2.caller_id());
    }
}

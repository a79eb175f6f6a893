//! Step 3: the final answer. A streaming LLM call that turns the agents'
//! answers into the reply the user sees; its text is the answer itself.

use crate::agents::{dial_delta, Read, Say, Session, Step};
use crate::calls::{CallFailed, CallSpec, Replay, RequestTemplate};
use crate::client::Target;
use crate::context::RequestContext;
use crate::error::{CoordError, Service};
use crate::flow::with_instructions;
use crate::wire::request::{ChatBody, LlmMessages};

/// The system prompt of the synthesis call.
pub const SYNTHESIS_PROMPT: &str = "\
You are the final step of a multi-agent system. The last user message contains two \
sections: CONTEXT, the answer that a specialised agent produced for the request, and \
USER_REQUEST, what the user asked. Write the reply to the user from that context.

- Keep every fact, number, name, link and file reference from the context that matters \
for the request; do not invent anything that is not there.
- If the context shows that the agent failed or could not find something, say so plainly \
and suggest what the user can do.
- If the agent produced images or files, mention them (they are attached to this message).
- Answer in the language of the user's request. Do not mention agents, CONTEXT or \
USER_REQUEST.";

/// The last message's text: the agent's answer and the user's request.
pub fn final_user_text(agent_answer: &str, user_request: &str) -> String {
    format!("## CONTEXT:\n{agent_answer}\n---\n## USER_REQUEST:\n{user_request}")
}

/// The body of the synthesis call: system prompt (with the application's
/// instructions, if any), history without
/// `custom_content`, and the last message rewritten as `last_text`.
pub fn request_body(ctx: &RequestContext, prompt: &str, last_text: &str) -> Vec<u8> {
    ChatBody {
        messages: LlmMessages {
            system: &with_instructions(prompt, ctx.config.synthesis_prompt.as_deref()),
            history: &ctx.request.messages,
            last_text: Some(last_text),
        },
        stream: true,
        response_format: None,
    }
    .to_vec()
}

/// The synthesis call as a session whose text is the answer.
#[derive(Debug)]
pub struct SynthesisSession {
    spec: Option<CallSpec>,
    deployment: String,
    failed: Option<CoordError>,
}

impl SynthesisSession {
    /// The synthesis of `context` (the CONTEXT section) for the request.
    pub fn new(ctx: &RequestContext, prompt: &str, context: &str) -> SynthesisSession {
        let request = ctx.request_text();
        let body = request_body(ctx, prompt, &final_user_text(context, &request));
        SynthesisSession {
            spec: Some(CallSpec {
                service: Service::llm(),
                targets: ctx.config.llm_targets(),
                request: RequestTemplate::dial_chat(ctx, body),
                replay: Replay::Safe,
                defer_blame: false,
            }),
            deployment: String::new(),
            failed: None,
        }
    }
}

impl Session for SynthesisSession {
    fn step(&mut self, _say: &mut dyn Say) -> Step {
        match (self.spec.take(), self.failed.take()) {
            (Some(spec), _) => Step::Call(spec, Read::Events),
            (None, Some(e)) => Step::Finish(Err(e)),
            (None, None) => Step::Finish(Ok(String::new())),
        }
    }

    fn on_open(&mut self, target: &Target, _say: &mut dyn Say) {
        self.deployment = target.id.clone();
    }

    fn on_failed(&mut self, failed: CallFailed, _say: &mut dyn Say) {
        self.failed = Some(failed.error);
    }

    fn on_event(&mut self, data: &str, say: &mut dyn Say) -> Result<(), CoordError> {
        if let Some(text) = dial_delta(data, &self.deployment, say)?.and_then(|d| d.content) {
            say.text(&text);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_and_request_sections() {
        assert_eq!(
            final_user_text("No.", "Do we have Ada?"),
            "## CONTEXT:\nNo.\n---\n## USER_REQUEST:\nDo we have Ada?"
        );
    }
}

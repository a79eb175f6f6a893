//! Step 3: the final answer. A streaming LLM call that turns the agent's answer
//! into the reply the user sees. Builds the request; the coordinator streams it.

use crate::dial::request::{ChatBody, LlmMessages, Message};

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

/// The body of the synthesis call: system prompt, history without
/// `custom_content`, and the last message rewritten with the agent's answer.
pub fn request_body(deployment: &str, history: &[Message], agent_answer: &str) -> Vec<u8> {
    let last_text = history
        .last()
        .map(|last| final_user_text(agent_answer, &last.text()));
    ChatBody {
        messages: LlmMessages {
            system: SYNTHESIS_PROMPT,
            history,
            last_text: last_text.as_deref(),
        },
        model: deployment,
        stream: true,
        response_format: None,
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn last_message_carries_context_and_request() {
        let history = vec![
            Message::text_message("user", "first"),
            Message::text_message("assistant", "answer"),
            Message::text_message("user", "Do we have Ada?"),
        ];
        let body: Value = serde_json::from_slice(&request_body("gpt-4o", &history, "No.")).unwrap();
        assert_eq!(body["stream"], true);
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0]["content"], SYNTHESIS_PROMPT);
        assert_eq!(
            msgs[2],
            serde_json::json!({"role": "assistant", "content": "answer"})
        );
        assert_eq!(
            msgs[3]["content"],
            "## CONTEXT:\nNo.\n---\n## USER_REQUEST:\nDo we have Ada?"
        );
    }
}

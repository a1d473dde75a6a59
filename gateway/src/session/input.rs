//! The `input_required` bridge: a 2026-07-28 upstream's questions (sampling, elicitation,
//! roots) asked of a session-era client as server→client requests, and its answers
//! gathered for the retry. `Session::forward` (`handle.rs`) sends the retry.

use serde_json::Value;

use super::Session;
use crate::mcp::{Message, codes};
use crate::upstream::Related;

/// Most `input_required` rounds one request may take before the gateway gives up.
const MAX_INPUT_ROUNDS: usize = 8;

impl Session {
    /// Round `round` of an `input_required` answer (`asks`) to a session-era client's
    /// request: asks the client, and gives `again` (the request as first sent) with its
    /// answers and the upstream's `requestState`, to send again; or the error to answer the
    /// client with (too many rounds, the client refused or did not answer).
    pub(super) async fn answer_input(
        &self,
        id: &Value,
        round: usize,
        asks: &Value,
        mut again: Message,
        out: &Related,
        timeout: std::time::Duration,
    ) -> Result<Message, Message> {
        if round > MAX_INPUT_ROUNDS {
            return Err(Message::error(
                id.clone(),
                codes::INTERNAL_ERROR,
                &format!("upstream asked for input {MAX_INPUT_ROUNDS} times without finishing"),
                None,
            ));
        }
        let answers = self
            .ask_client(asks, out, timeout)
            .await
            .map_err(|why| Message::error(id.clone(), codes::INTERNAL_ERROR, &why, None))?;
        let params = again.params_mut();
        params.insert("inputResponses".into(), Value::Object(answers));
        match asks.get("requestState") {
            Some(state) => params.insert("requestState".into(), state.clone()),
            None => params.remove("requestState"),
        };
        Ok(again)
    }

    /// Asks a session-era client an `input_required` result's questions as server→client
    /// requests on the request's stream; gives the answers keyed as the questions were.
    async fn ask_client(
        &self,
        asks: &Value,
        out: &Related,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Map<String, Value>, String> {
        let mut waiting = Vec::new();
        for (key, request) in asks["inputRequests"].as_object().into_iter().flatten() {
            let gateway_id = self.server_request_id();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.local_requests.insert(gateway_id.clone(), tx);
            let method = request["method"].as_str().unwrap_or_default();
            let question = Message::request(
                Value::String(gateway_id.clone()),
                method,
                request.get("params").cloned(),
            );
            if out.send(question).is_err() {
                self.local_requests.remove(&gateway_id);
                return Err("the client went away before answering the upstream".into());
            }
            waiting.push((key.clone(), gateway_id, rx));
        }
        let mut answers = serde_json::Map::new();
        for (key, gateway_id, rx) in waiting {
            let answer = tokio::time::timeout(timeout, rx).await;
            self.local_requests.remove(&gateway_id);
            match answer {
                Ok(Ok(m)) => match m.result_value() {
                    Some(result) => {
                        answers.insert(key, result.clone());
                    }
                    None => {
                        return Err(format!(
                            "the client refused the upstream's question: {}",
                            m.error_value().cloned().unwrap_or_default()
                        ));
                    }
                },
                _ => return Err("the client did not answer the upstream's question".into()),
            }
        }
        Ok(answers)
    }
}

//! API dialects: which LLM API a request speaks, and how to talk back to its client.
//!
//! The dialect decides how a body is counted and in which shape an error goes back
//! (an OpenAI SDK cannot parse an Anthropic error, and vice versa).

pub mod doc;
pub mod inject;
pub mod sse;

/// The LLM APIs tollgate understands, recognised from the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions` (also what OpenAI-compatible servers speak).
    ChatCompletions,
    /// OpenAI legacy `POST /v1/completions`.
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
}

/// Whose error shape and SSE conventions a client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// OpenAI and OpenAI-compatible APIs.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Api {
    /// Recognise the API from `:path` (query string ignored). Matches by suffix so
    /// prefixes such as `/openai/v1/...` or Azure's `/openai/deployments/x/chat/completions` work.
    pub fn from_path(path: &str) -> Option<Api> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Api::ChatCompletions)
        } else if path.ends_with("/completions") {
            Some(Api::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Api::Embeddings)
        } else if path.ends_with("/responses") {
            Some(Api::Responses)
        } else if path.ends_with("/messages") {
            Some(Api::AnthropicMessages)
        } else {
            None
        }
    }

    /// The error/stream conventions of this API's clients.
    pub fn family(self) -> Family {
        match self {
            Api::AnthropicMessages => Family::Anthropic,
            _ => Family::OpenAi,
        }
    }

    /// Short stable name, used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::AnthropicMessages => "anthropic_messages",
        }
    }
}

/// What went wrong, in terms a client can act on; rendered per dialect by [`error_body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: body is not valid JSON / not the API's shape, and config says reject.
    InvalidRequest,
    /// 413: body larger than the route's `max_request_bytes`.
    RequestTooLarge,
    /// 429: a token limit refused the request.
    RateLimited,
    /// 502: the provider's answer cannot be checked as the route requires (e.g. a
    /// compressed answer on a PII route).
    UpstreamUnreadable,
}

impl ErrorKind {
    /// HTTP status for this error.
    pub fn status(self) -> u32 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::UpstreamUnreadable => 502,
        }
    }
}

/// A JSON error body in the client's own dialect, so its SDK raises a typed error
/// carrying `message` instead of failing to parse.
pub fn error_body(family: Family, kind: ErrorKind, message: &str) -> Vec<u8> {
    let v = match family {
        Family::OpenAi => {
            let (ty, code) = match kind {
                ErrorKind::InvalidRequest => ("invalid_request_error", "invalid_request"),
                ErrorKind::RequestTooLarge => ("invalid_request_error", "request_too_large"),
                ErrorKind::RateLimited => ("requests", "rate_limit_exceeded"),
                ErrorKind::UpstreamUnreadable => ("api_error", "upstream_unreadable"),
            };
            serde_json::json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Family::Anthropic => {
            let ty = match kind {
                ErrorKind::InvalidRequest => "invalid_request_error",
                ErrorKind::RequestTooLarge => "request_too_large",
                ErrorKind::RateLimited => "rate_limit_error",
                ErrorKind::UpstreamUnreadable => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_apis() {
        assert_eq!(
            Api::from_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            Api::from_path("/openai/deployments/gpt/chat/completions?api-version=1"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(Api::from_path("/v1/completions"), Some(Api::Completions));
        assert_eq!(Api::from_path("/v1/embeddings/"), Some(Api::Embeddings));
        assert_eq!(Api::from_path("/v1/responses"), Some(Api::Responses));
        assert_eq!(Api::from_path("/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(Api::from_path("/v1/models"), None);
    }

    #[test]
    fn error_bodies_follow_each_sdk_shape() {
        let o: serde_json::Value = serde_json::from_slice(&error_body(
            Family::OpenAi,
            ErrorKind::RequestTooLarge,
            "too big",
        ))
        .unwrap();
        assert_eq!(o["error"]["code"], "request_too_large");
        assert_eq!(o["error"]["message"], "too big");
        let a: serde_json::Value = serde_json::from_slice(&error_body(
            Family::Anthropic,
            ErrorKind::RateLimited,
            "slow",
        ))
        .unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
    }
}

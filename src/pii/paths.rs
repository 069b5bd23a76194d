//! Which JSON strings are model text, per API, by their key path (array
//! positions ignored). Everything else — keys, ids, roles, model names, URLs and
//! base64 image or audio data — is never scanned.

use crate::dialect::Api;

/// A string at `keys` in a request body of `api` is prompt text.
pub fn request_text(api: Api, keys: &[&[u8]]) -> bool {
    match api {
        Api::ChatCompletions => matches!(
            keys,
            [b"messages", b"content"]
                | [b"messages", b"content", b"text"]
                | [b"messages", b"tool_calls", b"function", b"arguments"]
                | [b"messages", b"function_call", b"arguments"]
        ),
        Api::Completions => matches!(keys, [b"prompt"] | [b"suffix"]),
        Api::Embeddings => matches!(keys, [b"input"]),
        Api::Responses => matches!(
            keys,
            [b"input"]
                | [b"instructions"]
                | [b"input", b"content"]
                | [b"input", b"content", b"text"]
                | [b"input", b"arguments"]
                | [b"input", b"output"]
        ),
        Api::AnthropicMessages => matches!(
            keys,
            [b"system"]
                | [b"system", b"text"]
                | [b"messages", b"content"]
                | [b"messages", b"content", b"text"]
                | [b"messages", b"content", b"content"]
                | [b"messages", b"content", b"content", b"text"]
                | [b"messages", b"content", b"input", ..]
        ),
    }
}

/// A string at `keys` in a non-streaming answer of `api` is completion text.
pub fn response_text(api: Api, keys: &[&[u8]]) -> bool {
    match api {
        Api::ChatCompletions => matches!(
            keys,
            [b"choices", b"message", b"content"]
                | [b"choices", b"message", b"refusal"]
                | [b"choices", b"message", b"reasoning_content"]
                | [
                    b"choices",
                    b"message",
                    b"tool_calls",
                    b"function",
                    b"arguments"
                ]
                | [b"choices", b"message", b"function_call", b"arguments"]
        ),
        Api::Completions => matches!(keys, [b"choices", b"text"]),
        Api::Embeddings => false,
        Api::Responses => {
            matches!(
                keys,
                [b"output", b"content", b"text"] | [b"output", b"arguments"]
            ) || matches!(keys, [b"response", rest @ ..] if response_text(Api::Responses, rest))
                || matches!(
                    keys,
                    [b"text"]
                        | [b"arguments"]
                        | [b"part", b"text"]
                        | [b"item", b"content", b"text"]
                        | [b"item", b"arguments"]
                )
        }
        Api::AnthropicMessages => {
            matches!(keys, [b"content", b"text"] | [b"content", b"input", ..])
        }
    }
}

/// A string at `keys` in one SSE event of an `api` stream is completion text:
/// the deltas, and (Responses) the whole texts repeated by closing events.
pub fn stream_event_text(api: Api, keys: &[&[u8]]) -> bool {
    match api {
        Api::ChatCompletions | Api::Completions => matches!(
            keys,
            [b"choices", b"delta", b"content"]
                | [b"choices", b"text"]
                | [
                    b"choices",
                    b"delta",
                    b"tool_calls",
                    b"function",
                    b"arguments"
                ]
        ),
        Api::AnthropicMessages => {
            matches!(keys, [b"delta", b"text"] | [b"delta", b"partial_json"])
        }
        Api::Responses => keys == [b"delta"] || response_text(api, keys),
        Api::Embeddings => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_paths_only() {
        assert!(request_text(
            Api::ChatCompletions,
            &[b"messages", b"content"]
        ));
        assert!(!request_text(Api::ChatCompletions, &[b"messages", b"role"]));
        assert!(!request_text(
            Api::ChatCompletions,
            &[b"messages", b"content", b"image_url", b"url"]
        ));
        assert!(request_text(
            Api::AnthropicMessages,
            &[b"messages", b"content", b"input", b"deep", b"er"]
        ));
        assert!(!request_text(
            Api::AnthropicMessages,
            &[b"messages", b"content", b"source", b"data"]
        ));
        assert!(response_text(
            Api::Responses,
            &[b"response", b"output", b"content", b"text"]
        ));
    }
}

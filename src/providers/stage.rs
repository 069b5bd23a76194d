//! The provider stage of one exchange: what [`crate::metering::Exchange`] calls to
//! rewrite the request for the route's provider and translate the answer back.
//! Sans-IO like the exchange; the adapter applies the header changes.

use std::rc::Rc;

use super::{
    translator, Answer, ProviderConfig, RequestBody, RequestContext, ResponseContext,
    StreamTranslator, TranslateError, Translator, UpstreamRequest,
};
use crate::dialect::doc::Node;
use crate::dialect::Api;

/// Request header naming the Envoy cluster the provider's endpoint lives in; an
/// Envoy route with `cluster_header: x-tollgate-cluster` sends the request there.
pub const CLUSTER_HEADER: &str = "x-tollgate-cluster";

/// Per-exchange provider state.
pub struct Stage {
    config: Rc<ProviderConfig>,
    translator: &'static dyn Translator,
    client_path: String,
    model: String,
    now_unix_ms: u64,
    /// Header changes, taken once by the adapter.
    headers: Option<UpstreamRequest>,
    stream: Option<Box<dyn StreamTranslator>>,
    active: bool,
}

impl Stage {
    /// A stage for the route's provider.
    pub fn new(config: Rc<ProviderConfig>) -> Stage {
        Stage {
            translator: translator(config.kind),
            config,
            client_path: String::new(),
            model: String::new(),
            now_unix_ms: 0,
            headers: None,
            stream: None,
            active: false,
        }
    }

    /// The provider settings.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Host wall clock (Unix ms), for signing and `created`.
    pub fn set_clock(&mut self, now_unix_ms: u64) {
        self.now_unix_ms = now_unix_ms;
    }

    /// Request headers: remember the path. `Err` when the API cannot go to this
    /// provider (e.g. embeddings to Anthropic); `Ok(false)` when the request goes
    /// through untouched (an Anthropic-native client on an Anthropic route).
    pub fn on_request_headers(&mut self, api: Api, path: &str) -> Result<bool, TranslateError> {
        self.client_path = path.to_string();
        if !self.translator.translates_response() {
            return Ok(!matches!(api, Api::AnthropicMessages));
        }
        match api {
            Api::ChatCompletions => Ok(true),
            Api::AnthropicMessages if self.config.kind == super::ProviderKind::Anthropic => {
                Ok(false)
            }
            other => Err(TranslateError::bad_request(format!(
                "tollgate: this route's provider ({}) is reached through /v1/chat/completions; {} is not translated",
                self.config.kind.as_str(),
                other.name()
            ))),
        }
    }

    /// True when answers need translating (not for OpenAI-compatible upstreams).
    pub fn translates_response(&self) -> bool {
        self.active && self.translator.translates_response()
    }

    /// The complete request body as it will be sent (after earlier stages), and
    /// its parse. Returns the new body, if any.
    pub fn on_request_body(
        &mut self,
        body: &[u8],
        root: Node<'_>,
        streaming: bool,
    ) -> Result<Option<Vec<u8>>, TranslateError> {
        let client_model = root.get("model").and_then(Node::as_str).unwrap_or("");
        self.model = self.config.map_model(client_model).to_string();
        let ctx = RequestContext {
            provider: &self.config,
            model: &self.model,
            streaming,
            now_unix_ms: self.now_unix_ms,
            client_path: &self.client_path,
        };
        let mut req = self
            .translator
            .translate_request(&ctx, &RequestBody { bytes: body, root })?;
        if let Some(c) = &self.config.endpoint.cluster {
            req.set_headers.push((CLUSTER_HEADER.into(), c.clone()));
        }
        let new_body = req.body.take();
        self.headers = Some(req);
        self.active = true;
        Ok(new_body)
    }

    /// The header rewrite for the adapter (once).
    pub fn take_headers(&mut self) -> Option<UpstreamRequest> {
        self.headers.take()
    }

    /// The client's `:path` (query included), as seen at request headers.
    pub fn client_path(&self) -> &str {
        &self.client_path
    }

    /// The upstream model id (after the model map).
    pub fn model(&self) -> &str {
        &self.model
    }

    fn response_ctx<'a>(&'a self, id: &'a str) -> ResponseContext<'a> {
        ResponseContext {
            provider: &self.config,
            model: &self.model,
            created: self.now_unix_ms / 1000,
            id,
        }
    }

    /// A complete non-streaming answer (any status) → the status and OpenAI body
    /// to send the client.
    pub fn translate_body(&self, status: u32, body: &[u8]) -> (u32, Answer) {
        if !(200..300).contains(&status) {
            let error = self.translator.translate_error(status, body);
            return (status, Answer::without_usage(error));
        }
        let id = format!("chatcmpl-tg{}", self.now_unix_ms);
        match self.translator.answer(&self.response_ctx(&id), body) {
            Ok(a) => (status, a),
            // A 2xx the translator cannot read is the provider's failure: the client
            // gets an OpenAI error with that status (502), not a 200 carrying one.
            Err(e) => (e.status, Answer::without_usage(e.body())),
        }
    }

    /// Start translating a 2xx stream.
    pub fn start_stream(&mut self) {
        let id = format!("chatcmpl-tg{}", self.now_unix_ms);
        self.stream = Some(self.translator.stream_translator(&self.response_ctx(&id)));
    }

    /// One chunk of the provider's stream → OpenAI SSE bytes.
    pub fn stream_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 2 + 64);
        match self.stream.as_mut() {
            Some(s) => s.on_chunk(chunk, end_of_stream, &mut out),
            None => out.extend_from_slice(chunk),
        }
        out
    }
}

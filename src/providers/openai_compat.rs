//! OpenAI and OpenAI-compatible upstreams (Mistral, Groq, DeepSeek, vLLM, Ollama,
//! OpenRouter): same wire format, so only the path, authority, auth and (for
//! aliases) the model change. Responses pass through untouched: zero cost.

use super::{RequestBody, RequestContext, TranslateError, Translator, UpstreamRequest};
use crate::dialect::inject::find_member;

/// The OpenAI-compatible translator.
pub struct OpenAiCompat;

/// API path suffixes kept from the client's path, longest first.
const SUFFIXES: [&str; 4] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
];

/// The client's API suffix (`/chat/completions`) and query (`?x=y`, with `?`).
pub(crate) fn api_suffix(client_path: &str) -> (&str, &str) {
    let (path, query) = match client_path.find('?') {
        Some(i) => client_path.split_at(i),
        None => (client_path, ""),
    };
    let path = path.trim_end_matches('/');
    let suffix = SUFFIXES
        .iter()
        .find(|s| path.ends_with(*s))
        .copied()
        .unwrap_or("/chat/completions");
    (suffix, query)
}

/// `body` with its top-level `model` member's value replaced by `model` (a byte
/// splice: everything else reaches the provider as the client sent it). `None` when
/// the body has no `model` or it already is `model`.
pub(crate) fn splice_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let m = find_member(body, b"model")?;
    let mut lit = String::with_capacity(model.len() + 2);
    super::push_json_str(&mut lit, model);
    let old = body.get(m.value.clone())?;
    if old == lit.as_bytes() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + lit.len());
    out.extend_from_slice(body.get(..m.value.start)?);
    out.extend_from_slice(lit.as_bytes());
    out.extend_from_slice(body.get(m.value.end..)?);
    Some(out)
}

impl Translator for OpenAiCompat {
    fn name(&self) -> &'static str {
        "openai_compatible"
    }

    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let p = ctx.provider;
        let (suffix, query) = api_suffix(ctx.client_path);
        let base = p.endpoint.base_path.as_deref().unwrap_or("/v1");
        let mut req = UpstreamRequest {
            path: format!("{base}{suffix}{query}"),
            authority: p.endpoint.authority.clone(),
            ..UpstreamRequest::default()
        };
        if let Some(key) = &p.api_key {
            req.set_headers
                .push(("authorization".into(), format!("Bearer {}", key.value())));
        }
        if !ctx.model.is_empty() {
            req.body = splice_model(body.bytes, ctx.model);
        }
        Ok(req)
    }

    pass_through_responses!();

    fn translates_response(&self) -> bool {
        false
    }
}

//! Anthropic Messages (work in progress).

use super::{
    generic_error, PassStream, RequestBody, RequestContext, ResponseContext, StreamTranslator,
    TranslateError, Translator, UpstreamRequest,
};

/// The Anthropic Messages translator.
pub struct Anthropic;

impl Translator for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }
    fn translate_request(
        &self,
        _ctx: &RequestContext<'_>,
        _body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        Err(TranslateError::bad_request("not yet"))
    }
    fn translate_response(
        &self,
        _ctx: &ResponseContext<'_>,
        body: &[u8],
    ) -> Result<Vec<u8>, TranslateError> {
        Ok(body.to_vec())
    }
    fn stream_translator(&self, _ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator> {
        Box::new(PassStream)
    }
    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
        generic_error(status, body)
    }
}

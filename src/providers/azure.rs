//! Azure OpenAI: OpenAI's wire format with the deployment in the path
//! (`/openai/deployments/{deployment}/chat/completions?api-version=...`) and the key
//! in an `api-key` header. The deployment is the (mapped) model name, so a model
//! map turns client model names into deployment names.

use super::openai_compat::api_suffix;
use super::{RequestBody, RequestContext, TranslateError, Translator, UpstreamRequest};

/// The Azure OpenAI translator.
pub struct AzureOpenAi;

impl Translator for AzureOpenAi {
    fn name(&self) -> &'static str {
        "azure_openai"
    }

    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        _body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let p = ctx.provider;
        if ctx.model.is_empty() {
            return Err(TranslateError::bad_request(
                "`model` is required: it names the Azure OpenAI deployment",
            ));
        }
        if !ctx
            .model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(TranslateError::bad_request(format!(
                "model {:?} is not a valid Azure OpenAI deployment name",
                ctx.model
            )));
        }
        let (suffix, _query) = api_suffix(ctx.client_path);
        let base = p.endpoint.base_path.as_deref().unwrap_or("/openai");
        let mut req = UpstreamRequest {
            path: format!(
                "{base}/deployments/{}{suffix}?api-version={}",
                ctx.model, p.azure.api_version
            ),
            authority: p.endpoint.authority.clone(),
            ..UpstreamRequest::default()
        };
        if let Some(key) = &p.api_key {
            req.set_headers.push(("api-key".into(), key.value().into()));
            req.remove_headers.push("authorization".into());
        }
        // The body keeps its `model`: Azure ignores it and routes by deployment.
        Ok(req)
    }

    pass_through_responses!();

    fn translates_response(&self) -> bool {
        false
    }
}

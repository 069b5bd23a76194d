//! Prompt tokens of a whole request body, as the provider will bill them.
//!
//! Each API body is first normalised into a short list of messages, tool definitions
//! and an optional response format (borrowed from the JSON, nothing re-serialised),
//! then priced by the model family's framing rule. The rules and the recordings that
//! prove them are in `docs/counting.md`; anything not proven is returned with
//! `estimated: true` so limits can treat it accordingly.

use std::collections::HashMap;

use crate::dialect::doc::{Array, Node, View};

use super::image::{self, Detail, ImagePricing};
use super::models::{ModelFamily, ModelProfile};
use super::{estimate_tokens, TextCounter, ESTIMATE_BYTES_PER_TOKEN};
use crate::dialect::Api;

/// Bytes of the tokenize budget one message of a conversation stands for when
/// deciding how many messages to read (see [`TextCounter::remaining_budget`]).
pub const BUDGET_BYTES_PER_MESSAGE: usize = 64;

/// Knobs for the parts of a prompt that cannot be counted exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptOptions {
    /// Tokens charged for an image whose size is unknown (remote URL, file id, or a
    /// format whose header we do not read). Default 765: a 1024×1024 high-detail
    /// image on gpt-4o, a middle-of-the-road guess.
    pub image_estimate_tokens: u64,
    /// Bytes per token for estimated text (Anthropic, unknown models, opaque blobs).
    pub bytes_per_token: f64,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            image_estimate_tokens: 765,
            bytes_per_token: ESTIMATE_BYTES_PER_TOKEN as f64,
        }
    }
}

/// A prompt token count and whether any part of it is an estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptCount {
    /// Billed prompt tokens (exact) or our best guess (estimated).
    pub tokens: u64,
    /// True if any rule, image, model or budget overflow made this a guess.
    pub estimated: bool,
}

impl PromptCount {
    /// Stands for the count on a route where nothing reads it (no metering, no
    /// limits): tokenizing a prompt nobody bills would be wasted work.
    pub const UNCOUNTED: PromptCount = PromptCount {
        tokens: 0,
        estimated: true,
    };
}

/// Harmony (gpt-5): tokens added whenever function tools are present, on top of the
/// rendered `# Tools` section. Fitted, not derived: `chat-tools`/`chat-parallel-tools`
/// (no system prompt) and `chat-text-to-image-tool` (system prompt, forced
/// tool_choice) both need exactly 81. Presumably the hidden system message that
/// routes tool calls to the commentary channel.
const HARMONY_TOOLS_OVERHEAD: u64 = 81;
/// Harmony: `<|start|>{role}<|message|>` … `<|end|>`.
const HARMONY_PER_MESSAGE: u64 = 4;
/// Harmony: `<|channel|>final` on earlier assistant replies (chat-multiturn).
const HARMONY_ASSISTANT_CHANNEL: u64 = 2;
/// Harmony: `<|start|>assistant` priming the reply.
const HARMONY_PRIMING: u64 = 2;
/// Cookbook ChatML: `<|start|>{role}\n{content}<|end|>\n` minus the role.
const CHATML_PER_MESSAGE: u64 = 3;
/// Cookbook ChatML: `<|start|>assistant<|message|>`.
const CHATML_PRIMING: u64 = 3;
/// Audio bytes per token when the duration cannot be read (≈ 128 kbit/s at
/// 10 tokens per second of audio).
const AUDIO_BYTES_PER_TOKEN: u64 = 1600;
/// Audio tokens per second of input (OpenAI: 1 token per 100 ms of user audio).
const AUDIO_TOKENS_PER_SECOND: f64 = 10.0;
/// Text tokens billed around each audio part (chat-audio-to-text: text_tokens 27
/// vs 23 for the text; one recording, so audio prompts stay labelled estimates).
const AUDIO_PART_OVERHEAD: u64 = 4;

/// Count the prompt tokens of `body` for `api` as billed for the model `profile`
/// describes. Never fails: shapes it does not understand count as what is countable.
pub fn count_prompt(
    api: Api,
    body: Node<'_>,
    profile: &ModelProfile,
    counter: &mut dyn TextCounter,
    opts: &PromptOptions,
) -> PromptCount {
    // Every message walked costs fixed work whatever its text, so the byte budget
    // also bounds how many are read: 20k one-word messages must not cost a
    // worker milliseconds. The rest is estimated by size (and labelled).
    let max_messages = counter.remaining_budget() / BUDGET_BYTES_PER_MESSAGE;
    let mut c = Tally {
        counter,
        profile,
        opts,
        tokens: 0,
        estimated: false,
    };
    match api {
        Api::Completions => {
            c.tokenized_input(body.get("prompt"));
            if let Some(s) = body.get("suffix").and_then(Node::as_str) {
                c.text(s);
            }
        }
        Api::Embeddings => c.tokenized_input(body.get("input")),
        Api::ChatCompletions => {
            let req = Request::from_chat(body, max_messages);
            c.chat(&req);
            if !profile.exact {
                c.estimated = true;
            }
        }
        Api::Responses => {
            let req = Request::from_responses(body, max_messages);
            c.chat(&req);
            // The Responses framing has no recordings: always labelled.
            c.estimated = true;
        }
        Api::AnthropicMessages => {
            anthropic(&mut c, body);
            c.estimated = true;
        }
    }
    let estimated = c.estimated || c.counter.estimated() || profile.encoding.is_none();
    PromptCount {
        tokens: c.tokens,
        estimated,
    }
}

/// Running total plus the things every rule needs.
struct Tally<'a, 'c> {
    counter: &'c mut dyn TextCounter,
    profile: &'a ModelProfile,
    opts: &'a PromptOptions,
    tokens: u64,
    estimated: bool,
}

impl Tally<'_, '_> {
    fn add(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_add(n);
    }
    fn text(&mut self, s: &str) {
        if !s.is_empty() {
            let n = self.counter.count(s);
            self.add(n);
        }
    }
    fn guess(&mut self, n: u64) {
        self.add(n);
        self.estimated = true;
    }
    fn guess_bytes(&mut self, bytes: usize) {
        self.guess(estimate_tokens(bytes, self.opts.bytes_per_token));
    }

    /// Completions `prompt` / embeddings `input`: a string, token array, or a batch
    /// of either. Token arrays bill their length; a batch bills the sum.
    fn tokenized_input(&mut self, v: Option<Node<'_>>) {
        match v.map(Node::view) {
            Some(View::String(s)) => self.text(s),
            Some(View::Array(items)) => {
                for item in items {
                    match item.view() {
                        View::String(s) => self.text(s),
                        View::Number(_) => self.add(1),
                        View::Array(toks) => self.add(toks.len() as u64),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// Message `content`: a string or an array of typed parts.
    fn content(&mut self, v: Option<Node<'_>>) {
        match v.map(Node::view) {
            Some(View::String(s)) => self.text(s),
            Some(View::Array(parts)) => {
                for p in parts {
                    self.part(p);
                }
            }
            _ => {}
        }
    }

    fn part(&mut self, p: Node<'_>) {
        let ty = p.get("type").and_then(Node::as_str).unwrap_or("");
        match ty {
            "text" | "input_text" | "output_text" => {
                if let Some(s) = p.get("text").and_then(Node::as_str) {
                    self.text(s);
                }
            }
            "refusal" => {
                if let Some(s) = p.get("refusal").and_then(Node::as_str) {
                    self.text(s);
                }
            }
            "image_url" => {
                let iu = p.get("image_url");
                let url = iu
                    .and_then(|i| i.get("url").and_then(Node::as_str).or(i.as_str()))
                    .unwrap_or("");
                let detail = iu.and_then(|i| i.get("detail")).and_then(Node::as_str);
                self.image(url, Detail::parse(detail));
            }
            "input_image" => {
                let url = p.get("image_url").and_then(Node::as_str).unwrap_or("");
                let detail = p.get("detail").and_then(Node::as_str);
                self.image(url, Detail::parse(detail));
            }
            "input_audio" => {
                let data = p
                    .get("input_audio")
                    .and_then(|a| a.get("data"))
                    .and_then(Node::as_str)
                    .unwrap_or("");
                self.audio(data);
            }
            _ => {
                // file, input_file and anything new: priced by size, labelled.
                let n = json_len(p);
                self.guess_bytes(n);
            }
        }
    }

    fn image(&mut self, url: &str, detail: Detail) {
        let pricing = self.profile.image;
        let priced = image::data_url_dimensions(url)
            .and_then(|(w, h)| image::image_tokens(pricing, w, h, detail));
        match priced {
            Some(n) => {
                self.add(n);
                // Patch multipliers are disputed (docs vs. measured billing): label.
                if matches!(pricing, ImagePricing::Patches { .. }) {
                    self.estimated = true;
                }
            }
            None => self.guess(self.opts.image_estimate_tokens),
        }
    }

    /// Input audio: duration from a WAV header at 10 tokens/s, else by size.
    fn audio(&mut self, b64: &str) {
        let decoded_len = b64.len() / 4 * 3;
        let secs = wav_seconds(b64);
        let n = match secs {
            Some(s) => ((s * AUDIO_TOKENS_PER_SECOND).round() as u64).max(1),
            None => (decoded_len as u64).div_ceil(AUDIO_BYTES_PER_TOKEN).max(1),
        };
        self.guess(n + AUDIO_PART_OVERHEAD);
    }

    fn chat(&mut self, req: &Request<'_>) {
        if req.rest_bytes > 0 {
            self.guess_bytes(req.rest_bytes);
        }
        match self.profile.family {
            ModelFamily::Harmony => self.harmony(req),
            ModelFamily::SearchPreview => {
                // chat-web-search: billed 26 = the user text alone.
                for m in &req.messages {
                    if let Msg::Text { content, .. } = m {
                        self.content(*content);
                    } else {
                        self.estimated = true;
                    }
                }
            }
            ModelFamily::ChatMl | ModelFamily::Plain | ModelFamily::Unknown => self.chatml(req),
        }
    }

    /// gpt-5: harmony rendering (see docs/counting.md for the recordings).
    fn harmony(&mut self, req: &Request<'_>) {
        let ns = render_namespace(&req.tools);
        let format = req.format.as_ref().map(render_format);
        let mut skip_first = false;
        if ns.is_some() || format.is_some() {
            // System/developer prompt, tools and response format share one developer
            // message, `# Instructions` first (chat-text-to-image-tool, agents-python).
            let mut dev = String::new();
            if let Some(Msg::Text { role, content, .. }) = req.messages.first() {
                if matches!(*role, "system" | "developer") {
                    dev.push_str("# Instructions\n\n");
                    push_text(&mut dev, *content);
                    skip_first = true;
                }
            }
            if let Some(ns) = &ns {
                if !dev.is_empty() {
                    dev.push_str("\n\n");
                }
                dev.push_str("# Tools\n\n## functions\n\n");
                dev.push_str(ns);
            }
            if let Some(f) = &format {
                if !dev.is_empty() {
                    dev.push_str("\n\n");
                }
                dev.push_str("# Response Formats\n\n");
                dev.push_str(f);
                // One recording, several candidate renderings fit: label.
                self.estimated = true;
            }
            self.add(HARMONY_PER_MESSAGE);
            self.text(&dev);
            if ns.is_some() {
                self.add(HARMONY_TOOLS_OVERHEAD);
            }
        }
        if req.other_tools {
            self.estimated = true;
        }
        let start = usize::from(skip_first);
        for m in req.messages.get(start..).unwrap_or(&[]) {
            match m {
                Msg::Text {
                    role,
                    name,
                    content,
                } => {
                    self.add(HARMONY_PER_MESSAGE);
                    if *role == "assistant" {
                        self.add(HARMONY_ASSISTANT_CHANNEL);
                    }
                    if let Some(n) = name {
                        // `{role}:{name}` in the header; unrecorded.
                        self.text(":");
                        self.text(n);
                        self.estimated = true;
                    }
                    self.content(*content);
                }
                Msg::Call { name, arguments } => {
                    // <|start|>assistant to=functions.{name}<|channel|>commentary
                    //  <|constrain|>json<|message|>{args}<|call|>
                    self.add(6);
                    self.text(" to=functions.");
                    self.text(name);
                    self.text("commentary json");
                    self.text(arguments);
                    self.estimated = true;
                }
                Msg::Output { name, content } => {
                    // <|start|>functions.{name} to=assistant<|channel|>commentary<|message|>…<|end|>
                    self.add(HARMONY_PER_MESSAGE + 1);
                    self.text("functions.");
                    self.text(name);
                    self.text(" to=assistant");
                    self.text("commentary");
                    self.content(*content);
                    self.estimated = true;
                }
            }
        }
        self.add(HARMONY_PRIMING);
    }

    /// gpt-4o and older: the cookbook rule; tools per the widely used
    /// `openai-chat-tokens` model (unrecorded here, so labelled).
    fn chatml(&mut self, req: &Request<'_>) {
        let mut has_system = false;
        for m in &req.messages {
            match m {
                Msg::Text {
                    role,
                    name,
                    content,
                } => {
                    has_system |= *role == "system";
                    self.add(CHATML_PER_MESSAGE);
                    self.text(role);
                    if let Some(n) = name {
                        self.text(n);
                        self.add(1);
                    }
                    self.content(*content);
                }
                Msg::Call { name, arguments } => {
                    self.add(CHATML_PER_MESSAGE);
                    self.text(name);
                    self.text(arguments);
                    self.estimated = true;
                }
                Msg::Output { content, .. } => {
                    self.add(CHATML_PER_MESSAGE);
                    self.text("tool");
                    self.content(*content);
                    self.estimated = true;
                }
            }
        }
        self.add(CHATML_PRIMING);
        if let Some(ns) = render_namespace(&req.tools) {
            self.text(&ns);
            self.add(9);
            if has_system {
                self.tokens = self.tokens.saturating_sub(4);
            }
            if let Some(forced) = req.forced_tool {
                self.text(forced);
                self.add(4);
            }
            self.estimated = true;
        }
        if let Some(f) = req.format.as_ref().map(render_format) {
            self.text(&f);
            self.estimated = true;
        }
        if req.other_tools {
            self.estimated = true;
        }
    }
}

/// One entry of a normalised conversation.
enum Msg<'a> {
    /// A role message with text/media content.
    Text {
        role: &'a str,
        name: Option<&'a str>,
        content: Option<Node<'a>>,
    },
    /// An assistant function call.
    Call { name: &'a str, arguments: &'a str },
    /// A tool/function result.
    Output {
        name: &'a str,
        content: Option<Node<'a>>,
    },
}

/// A function tool definition.
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Option<Node<'a>>,
}

/// A `json_schema` response format.
struct Format<'a> {
    name: &'a str,
    description: Option<&'a str>,
    schema: Option<Node<'a>>,
    strict: bool,
}

/// The billing-relevant parts of a chat or responses request.
struct Request<'a> {
    messages: Vec<Msg<'a>>,
    tools: Vec<Tool<'a>>,
    /// Non-function tools (web_search, custom …) were present: no known rendering.
    other_tools: bool,
    forced_tool: Option<&'a str>,
    format: Option<Format<'a>>,
    /// JSON bytes of the messages past the walk budget, estimated by size.
    rest_bytes: usize,
}

fn s<'a>(v: Node<'a>, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Node::as_str)
}

fn array<'a>(v: Node<'a>, key: &str) -> Array<'a> {
    v.get(key).and_then(Node::as_array).unwrap_or(Array::EMPTY)
}

impl<'a> Request<'a> {
    fn from_chat(body: Node<'a>, max_messages: usize) -> Request<'a> {
        let raw = array(body, "messages");
        let mut messages = Vec::with_capacity(raw.len().min(max_messages));
        // Built once, at the first tool result: a lookup per result would make
        // thousands of tool messages quadratic.
        let mut names: Option<HashMap<&str, &str>> = None;
        let mut rest_bytes = 0;
        for (i, m) in raw.iter().enumerate() {
            if i == max_messages {
                // Past the walk budget: the rest is priced by its size, unread.
                rest_bytes = rest_of(raw, m);
                break;
            }
            // One pass over the members (the last of a repeated key wins, as in
            // serde_json), not a lookup per field.
            let (mut role, mut content, mut calls, mut legacy, mut name, mut call_id) =
                (None, None, Array::EMPTY, None, None, None);
            for (k, v) in m.members().into_iter().flatten() {
                match k {
                    "role" => role = v.as_str(),
                    "content" => content = Some(v),
                    "tool_calls" => calls = v.as_array().unwrap_or(Array::EMPTY),
                    "function_call" => legacy = Some(v),
                    "name" => name = v.as_str(),
                    "tool_call_id" => call_id = v.as_str(),
                    _ => {}
                }
            }
            match role.unwrap_or("user") {
                "tool" => {
                    let id = call_id.unwrap_or("");
                    let names = names.get_or_insert_with(|| call_names(raw));
                    let name = names.get(id).copied().unwrap_or("");
                    messages.push(Msg::Output { name, content });
                }
                "function" => messages.push(Msg::Output {
                    name: name.unwrap_or(""),
                    content,
                }),
                role => {
                    let has_content = match content.map(Node::view) {
                        Some(View::String(t)) => !t.is_empty(),
                        Some(View::Array(a)) => !a.is_empty(),
                        _ => false,
                    };
                    if has_content || (calls.is_empty() && legacy.is_none()) {
                        messages.push(Msg::Text {
                            role,
                            name,
                            content,
                        });
                    }
                    for c in calls.iter().chain(legacy) {
                        let f = c.get("function").unwrap_or(c);
                        messages.push(Msg::Call {
                            name: s(f, "name").unwrap_or(""),
                            arguments: s(f, "arguments").unwrap_or(""),
                        });
                    }
                }
            }
        }
        let mut tools = Vec::new();
        let mut other_tools = false;
        for t in array(body, "tools") {
            match (s(t, "type"), t.get("function")) {
                (Some("function") | None, Some(f)) => tools.push(tool(f)),
                _ => other_tools = true,
            }
        }
        for f in array(body, "functions") {
            tools.push(tool(f));
        }
        let forced_tool = body
            .get("tool_choice")
            .and_then(|c| c.get("function"))
            .and_then(|f| s(f, "name"))
            .or_else(|| body.get("function_call").and_then(|f| s(f, "name")));
        let format = body
            .get("response_format")
            .filter(|f| s(*f, "type") == Some("json_schema"))
            .and_then(|f| f.get("json_schema"))
            .map(format_from);
        Request {
            messages,
            tools,
            other_tools,
            forced_tool,
            format,
            rest_bytes,
        }
    }

    fn from_responses(body: Node<'a>, max_messages: usize) -> Request<'a> {
        let mut messages = Vec::new();
        if let Some(instr) = body.get("instructions").filter(|v| !v.is_null()) {
            messages.push(Msg::Text {
                role: "developer",
                name: None,
                content: Some(instr),
            });
        }
        let input = body.get("input");
        let items = match input.map(Node::view) {
            Some(View::String(_)) => {
                messages.push(Msg::Text {
                    role: "user",
                    name: None,
                    content: input,
                });
                Array::EMPTY
            }
            Some(View::Array(a)) => a,
            _ => Array::EMPTY,
        };
        let mut names: Option<HashMap<&str, &str>> = None;
        let mut rest_bytes = 0;
        for (i, it) in items.iter().enumerate() {
            if i == max_messages {
                rest_bytes = rest_of(items, it);
                break;
            }
            match s(it, "type") {
                Some("function_call") => messages.push(Msg::Call {
                    name: s(it, "name").unwrap_or(""),
                    arguments: s(it, "arguments").unwrap_or(""),
                }),
                Some("function_call_output") => {
                    let id = s(it, "call_id").unwrap_or("");
                    let names = names.get_or_insert_with(|| {
                        let mut names = HashMap::new();
                        for o in items
                            .iter()
                            .filter(|o| s(*o, "type") == Some("function_call"))
                        {
                            names
                                .entry(s(o, "call_id").unwrap_or(""))
                                .or_insert(s(o, "name").unwrap_or(""));
                        }
                        names
                    });
                    let name = names.get(id).copied().unwrap_or("");
                    messages.push(Msg::Output {
                        name,
                        content: it.get("output"),
                    });
                }
                Some("message") | None => messages.push(Msg::Text {
                    role: s(it, "role").unwrap_or("user"),
                    name: None,
                    content: it.get("content"),
                }),
                Some(_) => {
                    // reasoning, web_search_call … : carried as text of unknown framing.
                    messages.push(Msg::Output {
                        name: "",
                        content: None,
                    });
                }
            }
        }
        let mut tools = Vec::new();
        let mut other_tools = false;
        for t in array(body, "tools") {
            if s(t, "type") == Some("function") {
                tools.push(tool(t));
            } else {
                other_tools = true;
            }
        }
        let forced_tool = body.get("tool_choice").and_then(|c| s(c, "name"));
        let format = body
            .get("text")
            .and_then(|t| t.get("format"))
            .filter(|f| s(*f, "type") == Some("json_schema"))
            .map(format_from);
        Request {
            messages,
            tools,
            other_tools,
            forced_tool,
            format,
            rest_bytes,
        }
    }
}

/// A `json_schema` response format, as Chat Completions (`response_format.json_schema`)
/// and Responses (`text.format`) both spell it.
fn format_from(j: Node<'_>) -> Format<'_> {
    Format {
        name: s(j, "name").unwrap_or(""),
        description: s(j, "description"),
        schema: j.get("schema"),
        strict: j.get("strict").and_then(Node::as_bool).unwrap_or(false),
    }
}

fn tool(f: Node<'_>) -> Tool<'_> {
    Tool {
        name: s(f, "name").unwrap_or(""),
        description: s(f, "description").unwrap_or(""),
        parameters: f.get("parameters").filter(|p| p.is_object()),
    }
}

/// Bytes from `from` (an element of `list`) to the end of `list`: the part of a
/// conversation past the walk budget.
fn rest_of(list: Array<'_>, from: Node<'_>) -> usize {
    // Up to the closing `]`, which the element count leaves out of the estimate.
    list.end_byte()
        .saturating_sub(1)
        .saturating_sub(from.start_byte())
}

/// Function name by call id, from the assistant `tool_calls` entries (the first
/// entry wins when an id repeats).
fn call_names(messages: Array<'_>) -> HashMap<&str, &str> {
    let mut names = HashMap::new();
    for c in messages.iter().flat_map(|m| array(m, "tool_calls")) {
        let name = c.get("function").and_then(|f| s(f, "name")).unwrap_or("");
        names.entry(s(c, "id").unwrap_or("")).or_insert(name);
    }
    names
}

/// Append a message's text (string, or the text parts of an array).
fn push_text(out: &mut String, content: Option<Node<'_>>) {
    match content.map(Node::view) {
        Some(View::String(t)) => out.push_str(t),
        Some(View::Array(parts)) => {
            for p in parts {
                if let Some(t) = s(p, "text") {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// The TypeScript `namespace functions { … }` block the models are shown, as in
/// OpenAI's harmony renderer. `None` when there are no function tools.
fn render_namespace(tools: &[Tool<'_>]) -> Option<String> {
    if tools.is_empty() {
        return None;
    }
    let mut out = String::from("namespace functions {\n\n");
    for t in tools {
        for line in t.description.lines() {
            out.push_str("// ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("type ");
        out.push_str(t.name);
        match t.parameters {
            Some(p) => {
                out.push_str(" = (_: ");
                typescript(p, "", &mut out, 0);
                out.push_str(") => any;\n\n");
            }
            None => out.push_str(" = () => any;\n\n"),
        }
    }
    out.push_str("} // namespace functions");
    Some(out)
}

/// Deepest schema nesting rendered; deeper parts become `any` (hostile input guard).
const MAX_SCHEMA_DEPTH: usize = 32;

/// JSON Schema → TypeScript type, following harmony's `json_schema_to_typescript`.
fn typescript(schema: Node<'_>, indent: &str, out: &mut String, depth: usize) {
    if depth > MAX_SCHEMA_DEPTH {
        out.push_str("any");
        return;
    }
    if let Some(variants) = schema.get("oneOf").and_then(Node::as_array) {
        let inner = format!("{indent}   ");
        for v in variants {
            out.push('\n');
            out.push_str(indent);
            out.push_str(" | ");
            typescript(v, &inner, out, depth + 1);
            if let Some(d) = s(v, "description") {
                out.push_str(" // ");
                out.push_str(d);
            }
        }
        return;
    }
    if let Some(types) = schema.get("type").and_then(Node::as_array) {
        let mut first = true;
        for t in types.iter().filter_map(Node::as_str) {
            if !first {
                out.push_str(" | ");
            }
            first = false;
            out.push_str(if t == "integer" { "number" } else { t });
        }
        if !first {
            return;
        }
    }
    match s(schema, "type") {
        Some("object") => {
            if let Some(d) = s(schema, "description") {
                out.push_str(indent);
                out.push_str("// ");
                out.push_str(d);
                out.push('\n');
            }
            out.push_str("{\n");
            let required = array(schema, "required");
            if let Some(props) = schema.get("properties").and_then(Node::members) {
                let inner = format!("{indent}    ");
                for (key, val) in props {
                    if let Some(t) = s(val, "title") {
                        out.push_str(indent);
                        out.push_str("// ");
                        out.push_str(t);
                        out.push('\n');
                        out.push_str(indent);
                        out.push_str("//\n");
                    }
                    if let Some(d) = s(val, "description") {
                        out.push_str(indent);
                        out.push_str("// ");
                        out.push_str(d);
                        out.push('\n');
                    }
                    if let Some(ex) = val.get("examples").and_then(Node::as_array) {
                        if !ex.is_empty() {
                            out.push_str(indent);
                            out.push_str("// Examples:\n");
                            for e in ex.iter().filter_map(Node::as_str) {
                                out.push_str(indent);
                                out.push_str("// - \"");
                                out.push_str(e);
                                out.push_str("\"\n");
                            }
                        }
                    }
                    out.push_str(indent);
                    out.push_str(key);
                    if !required.iter().any(|r| r.as_str() == Some(key)) {
                        out.push('?');
                    }
                    out.push_str(": ");
                    typescript(val, &inner, out, depth + 1);
                    if val.get("nullable").and_then(Node::as_bool) == Some(true) {
                        out.push_str(" | null");
                    }
                    out.push(',');
                    if let Some(d) = val.get("default") {
                        out.push_str(" // default: ");
                        match d.view() {
                            View::String(t) if val.get("enum").is_none() => {
                                out.push('"');
                                out.push_str(t);
                                out.push('"');
                            }
                            View::String(t) => out.push_str(t),
                            _ => write_json(d, false, out, depth + 1),
                        }
                    }
                    out.push('\n');
                }
            }
            out.push_str(indent);
            out.push('}');
        }
        Some("string") => {
            let enums = array(schema, "enum");
            let mut first = true;
            for e in enums.iter().filter_map(Node::as_str) {
                if !first {
                    out.push_str(" | ");
                }
                first = false;
                out.push('"');
                out.push_str(e);
                out.push('"');
            }
            if first {
                out.push_str("string");
            }
        }
        Some("number") | Some("integer") => out.push_str("number"),
        Some("boolean") => out.push_str("boolean"),
        Some("array") => match schema.get("items") {
            Some(items) => {
                typescript(items, indent, out, depth + 1);
                out.push_str("[]");
            }
            None => out.push_str("Array<any>"),
        },
        _ => out.push_str("any"),
    }
}

/// `## {name}\n\n// {description}\n{schema}`, the harmony response-format section.
/// Strict schemas are billed without `additionalProperties`/`required` (implied by
/// strict mode); that is the rendering that reproduces chat-openai-agents-python.
fn render_format(f: &Format<'_>) -> String {
    let mut out = String::from("## ");
    out.push_str(f.name);
    out.push_str("\n\n");
    if let Some(d) = f.description {
        for line in d.lines() {
            out.push_str("// ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(schema) = f.schema {
        write_json(schema, f.strict, &mut out, 0);
    }
    out
}

/// Compact JSON (serde_json's escaping), optionally without strict-mode keys.
fn write_json(v: Node<'_>, strict: bool, out: &mut String, depth: usize) {
    if depth > MAX_SCHEMA_DEPTH {
        out.push_str("null");
        return;
    }
    match v.view() {
        View::Null => out.push_str("null"),
        View::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        View::Number(n) => out.push_str(n),
        View::String(t) => write_str(t, out),
        View::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, strict, out, depth + 1);
            }
            out.push(']');
        }
        View::Object(o) => {
            out.push('{');
            let mut first = true;
            for (k, x) in o {
                if strict && (k == "additionalProperties" || k == "required") {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_str(k, out);
                out.push(':');
                write_json(x, strict, out, depth + 1);
            }
            out.push('}');
        }
    }
}

fn write_str(t: &str, out: &mut String) {
    out.push('"');
    for ch in t.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from(crate::decimal::hex_digit((c as u8) >> 4)));
                out.push(char::from(crate::decimal::hex_digit(c as u8)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Length of `v` as compact JSON, without building it (escapes not counted).
fn json_len(v: Node<'_>) -> usize {
    json_len_at(v, 0)
}

fn json_len_at(v: Node<'_>, depth: usize) -> usize {
    if depth > MAX_SCHEMA_DEPTH * 4 {
        return 0;
    }
    match v.view() {
        View::Null => 4,
        View::Bool(_) => 5,
        View::Number(_) => 8,
        View::String(t) => t.len() + 2,
        View::Array(a) => {
            2 + a
                .iter()
                .map(|x| json_len_at(x, depth + 1) + 1)
                .sum::<usize>()
        }
        View::Object(o) => {
            2 + o
                .map(|(k, x)| k.len() + 4 + json_len_at(x, depth + 1))
                .sum::<usize>()
        }
    }
}

/// Seconds of audio in a base64 WAV (RIFF/WAVE, `fmt ` then `data`), if readable.
fn wav_seconds(b64: &str) -> Option<f64> {
    // 64 base64 chars = 48 bytes: RIFF header, fmt chunk, data header.
    let head = b64.get(..64)?;
    let mut buf = [0u8; 48];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut n = 0usize;
    for c in head.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *buf.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    let le32 = |i: usize| -> Option<u32> {
        let b = buf.get(i..i + 4)?;
        Some(u32::from_le_bytes([
            *b.first()?,
            *b.get(1)?,
            *b.get(2)?,
            *b.get(3)?,
        ]))
    };
    if buf.get(0..4)? != b"RIFF" || buf.get(8..12)? != b"WAVE" || buf.get(12..16)? != b"fmt " {
        return None;
    }
    let byte_rate = le32(28)?;
    if byte_rate == 0 || buf.get(36..40)? != b"data" {
        return None;
    }
    Some(f64::from(le32(40)?) / f64::from(byte_rate))
}

/// Anthropic Messages: no public tokenizer, so bytes / `bytes_per_token` over the
/// system prompt, message text, tool calls/results and tool definitions, plus
/// Anthropic's published image rule (w×h/750 after fitting 1568 px).
fn anthropic(c: &mut Tally<'_, '_>, body: Node<'_>) {
    let mut bytes = 0usize;
    let mut images = 0u64;
    fn blocks(
        v: Option<Node<'_>>,
        bytes: &mut usize,
        images: &mut u64,
        opts: &PromptOptions,
        depth: usize,
    ) {
        match v.map(Node::view) {
            Some(View::String(t)) => *bytes += t.len(),
            Some(View::Array(items)) if depth < 4 => {
                for b in items {
                    match s(b, "type") {
                        Some("text") => *bytes += s(b, "text").map_or(0, str::len),
                        Some("thinking") => *bytes += s(b, "thinking").map_or(0, str::len),
                        Some("image") => *images += anthropic_image(b, opts),
                        Some("tool_use") => {
                            *bytes += s(b, "name").map_or(0, str::len);
                            *bytes += b.get("input").map_or(0, json_len);
                        }
                        Some("tool_result") => {
                            blocks(b.get("content"), bytes, images, opts, depth + 1)
                        }
                        _ => *bytes += json_len(b),
                    }
                }
            }
            _ => {}
        }
    }
    blocks(body.get("system"), &mut bytes, &mut images, c.opts, 0);
    let messages = array(body, "messages");
    let max_messages = c.counter.remaining_budget() / BUDGET_BYTES_PER_MESSAGE;
    for (i, m) in messages.iter().enumerate() {
        if i == max_messages {
            // Past the walk budget: the rest by its JSON size.
            bytes += rest_of(messages, m);
            break;
        }
        blocks(m.get("content"), &mut bytes, &mut images, c.opts, 0);
    }
    for t in array(body, "tools") {
        bytes += s(t, "name").map_or(0, str::len);
        bytes += s(t, "description").map_or(0, str::len);
        bytes += t.get("input_schema").map_or(0, json_len);
    }
    let text = estimate_tokens(bytes, c.opts.bytes_per_token);
    // Role framing: a few tokens per message, as on every chat format.
    c.guess(text + images + CHATML_PER_MESSAGE * messages.len() as u64);
}

/// Anthropic image: ⌈w·h/750⌉ after fitting the long edge to 1568 px.
fn anthropic_image(block: Node<'_>, opts: &PromptOptions) -> u64 {
    let src = block.get("source");
    let dims = match src.and_then(|x| s(x, "type")) {
        Some("base64") => {
            let data = src.and_then(|x| s(x, "data")).unwrap_or("");
            let media = src.and_then(|x| s(x, "media_type")).unwrap_or("image/png");
            // Reuse the data-URL reader on the bare payload.
            let mut url = String::with_capacity(16 + media.len() + data.len().min(4096));
            url.push_str("data:");
            url.push_str(media);
            url.push_str(";base64,");
            url.push_str(data.get(..4096).unwrap_or(data));
            image::data_url_dimensions(&url)
        }
        _ => None,
    };
    match dims {
        Some((w, h)) => {
            let (mut w, mut h) = (f64::from(w), f64::from(h));
            let long = w.max(h);
            if long > 1568.0 {
                w *= 1568.0 / long;
                h *= 1568.0 / long;
            }
            ((w * h) / 750.0).ceil() as u64
        }
        None => opts.image_estimate_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::models::profile;
    use serde_json::{json, Value};

    /// 4 bytes per token, for shape tests that do not need a real vocabulary.
    struct Quarter;
    impl TextCounter for Quarter {
        fn count(&mut self, text: &str) -> u64 {
            estimate_tokens(text.len(), 4.0)
        }
        fn estimated(&self) -> bool {
            false
        }
    }

    fn count(api: Api, model: &str, body: Value) -> PromptCount {
        let text = body.to_string();
        let doc = crate::dialect::doc::Doc::parse(text.as_bytes()).unwrap();
        count_prompt(
            api,
            doc.root(),
            &profile(model),
            &mut Quarter,
            &PromptOptions::default(),
        )
    }

    #[test]
    fn harmony_framing() {
        let b = json!({"messages": [{"role": "user", "content": "abcd"}]});
        assert_eq!(
            count(Api::ChatCompletions, "gpt-5-nano", b.clone()).tokens,
            1 + 4 + 2
        );
        assert_eq!(
            count(Api::ChatCompletions, "gpt-4o", b).tokens,
            1 + 3 + 1 + 3
        );
    }

    #[test]
    fn completions_and_embeddings_shapes() {
        let c = |v: Value| count(Api::Completions, "babbage-002", json!({ "prompt": v })).tokens;
        assert_eq!(c(json!("abcdefgh")), 2);
        assert_eq!(c(json!(["abcd", "abcd"])), 2);
        assert_eq!(c(json!([1, 2, 3])), 3);
        assert_eq!(c(json!([[1, 2], [3]])), 3);
        assert_eq!(c(json!({"x": 1})), 0);
        let e = count(
            Api::Embeddings,
            "text-embedding-3-small",
            json!({"input": ["abcd", [1, 2]]}),
        );
        assert_eq!(
            e,
            PromptCount {
                tokens: 3,
                estimated: false
            }
        );
        assert!(count(Api::Embeddings, "mystery", json!({"input": "abcd"})).estimated);
    }

    #[test]
    fn images_priced_or_estimated() {
        let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAAXElEQVR42mNgoAkofv8fBVOkmQyD/sPwn1UlYAzlE6cZpgGmGZlPkgHYDCHKCcia0AwgHlCm+c+f/9gwabajG0CsK+DOxmIA8YZQ6gXkhISG6W8ALj7RtuMTgwMA0WTdqiU1ensAAAAASUVORK5CYII=";
        let b = |url: &str| {
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})
        };
        let r = count(Api::ChatCompletions, "gpt-4o", b(png));
        assert_eq!(
            r,
            PromptCount {
                tokens: 3 + 1 + 3 + 85 + 170,
                estimated: false
            }
        );
        let r = count(Api::ChatCompletions, "gpt-4o", b("https://x/y.png"));
        assert_eq!(
            r,
            PromptCount {
                tokens: 3 + 1 + 3 + 765,
                estimated: true
            }
        );
    }

    #[test]
    fn tools_render_like_harmony() {
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["location"]
        })
        .to_string();
        let doc = crate::dialect::doc::Doc::parse(schema.as_bytes()).unwrap();
        let t = [Tool {
            name: "get_current_weather",
            description: "Get the current weather in a given location",
            parameters: Some(doc.root()),
        }];
        let expected = "namespace functions {\n\n// Get the current weather in a given location\ntype get_current_weather = (_: {\n// The city and state, e.g. San Francisco, CA\nlocation: string,\nunit?: \"celsius\" | \"fahrenheit\",\n}) => any;\n\n} // namespace functions";
        assert_eq!(render_namespace(&t).as_deref(), Some(expected));
    }

    #[test]
    fn hostile_shapes_do_not_panic() {
        let mut deep = json!({"type": "string"});
        // Deeper than the schema renderer goes, within the JSON nesting limit.
        for i in 0..58 {
            deep = if i % 2 == 0 {
                json!({"type": "object", "properties": {"x": deep}})
            } else {
                json!({"oneOf": [deep], "type": "array"})
            };
        }
        let bodies = [
            json!(null),
            json!([]),
            json!({"messages": "x"}),
            json!({"messages": [null, 1, "x", {"role": 5, "content": {"a": 1}}]}),
            json!({"messages": [{"role": "tool", "content": [1]}], "tools": [1, {"type": "function"}, {"function": {"parameters": deep}}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": 1}], "function_call": "x"}]}),
            json!({"messages": [], "response_format": {"type": "json_schema", "json_schema": {"schema": deep}}}),
            json!({"input": [{"type": "function_call_output"}, {"type": "reasoning"}, 3], "instructions": 5, "tools": [{}]}),
            json!({"system": [{"type": "image", "source": {"type": "base64", "data": "%%"}}], "messages": [{"content": [{"type": "tool_result", "content": [{"type": "text"}]}]}]}),
            json!({"messages": [{"content": [{"type": "input_audio", "input_audio": {"data": "UklGRlwEAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YTgEAAD"}}]}]}),
        ];
        for api in [
            Api::ChatCompletions,
            Api::Completions,
            Api::Embeddings,
            Api::Responses,
            Api::AnthropicMessages,
        ] {
            for model in ["gpt-5", "gpt-4o", "gpt-4o-search-preview", "claude-3"] {
                for b in &bodies {
                    let _ = count(api, model, b.clone());
                }
            }
        }
    }

    /// A budgeted counter: `budget` bytes tokenized (4 bytes a token), the rest
    /// estimated.
    struct Budget(usize, bool);
    impl TextCounter for Budget {
        fn count(&mut self, text: &str) -> u64 {
            if text.len() > self.0 {
                self.0 = 0;
                self.1 = true;
            } else {
                self.0 -= text.len();
            }
            estimate_tokens(text.len(), 4.0)
        }
        fn estimated(&self) -> bool {
            self.1
        }
        fn remaining_budget(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn message_walk_is_bounded_by_the_budget() {
        let msgs: Vec<Value> = (0..1000)
            .map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": "abcd"}))
            .collect();
        let body = json!({"model": "gpt-4o", "messages": msgs}).to_string();
        let doc = crate::dialect::doc::Doc::parse(body.as_bytes()).unwrap();
        let run = |api, budget| {
            count_prompt(
                api,
                doc.root(),
                &profile("gpt-4o"),
                &mut Budget(budget, false),
                &PromptOptions::default(),
            )
        };
        // Unbounded: every message read, exact.
        let all = run(Api::ChatCompletions, usize::MAX);
        // Quarter-byte counts: "user" 1, "assistant" 3, "abcd" 1, plus 3 per message.
        assert_eq!(
            all,
            PromptCount {
                tokens: 500 * (3 + 1 + 1) + 500 * (3 + 3 + 1) + 3,
                estimated: false
            }
        );
        // 100 messages' worth of budget: 100 read, the other 900 priced by their
        // JSON size (`{"role":"assistant","content":"abcd"}` is 37 bytes, the user
        // one 32, plus commas), and labelled.
        let some = run(Api::ChatCompletions, 100 * BUDGET_BYTES_PER_MESSAGE);
        assert!(some.estimated);
        let rest_bytes = 450 * 32 + 450 * 37 + 899;
        assert_eq!(
            some.tokens,
            50 * 5 + 50 * 7 + 3 + estimate_tokens(rest_bytes, 4.0)
        );
        // Nothing left: the whole conversation by size.
        let none = run(Api::ChatCompletions, 0);
        assert!(none.estimated && none.tokens >= 6000, "{none:?}");
        let anthropic_all = run(Api::AnthropicMessages, usize::MAX).tokens;
        let anthropic_some = run(Api::AnthropicMessages, 10 * BUDGET_BYTES_PER_MESSAGE).tokens;
        assert!(
            anthropic_some > anthropic_all,
            "{anthropic_some} vs {anthropic_all}"
        );
    }

    #[test]
    fn wav_duration() {
        // 8 kHz 8-bit mono, 1080 data bytes: 0.135 s (chat-audio-to-text recording).
        let d = wav_seconds("UklGRlwEAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YTgEAADY2NjY");
        assert!(d.is_some_and(|s| (s - 0.135).abs() < 1e-9));
    }

    #[test]
    fn anthropic_is_estimated() {
        let b = json!({"system": "abcd", "messages": [{"role": "user", "content": "abcdabcd"}],
                       "tools": [{"name": "ab", "description": "cd", "input_schema": {}}]});
        let r = count(Api::AnthropicMessages, "claude-sonnet-4-5", b);
        assert!(r.estimated);
        // 18 bytes / 4 = 5, plus 3 for the one message.
        assert_eq!(r.tokens, 5 + 3);
    }
}

//! Chat templates: turning a conversation into the prompt text a chat model was trained on, the way
//! llama.cpp's server does it, plus the bookkeeping for multi-turn chat over one KV cache.
//!
//! Templates are Hugging Face Jinja templates (the GGUF key `tokenizer.chat_template`), rendered with
//! minijinja in the dialect llama.cpp and transformers use: `trim_blocks` and `lstrip_blocks` on, Python
//! string methods (`strip`, `startswith`, `split`, `title`, ...) through minijinja-contrib's pycompat
//! callback, `raise_exception(msg)`, `strftime_now(fmt)` and a Python-style `tojson`. The variables are
//! `messages` (a list of `{role, content}`), `add_generation_prompt`, `bos_token`, `eos_token` and
//! `enable_thinking` (true, as llama-server sets it by default).
//!
//! # BOS and EOS, as llama.cpp does it
//!
//! `bos_token` / `eos_token` hold the text of the vocabulary's BOS / EOS tokens, and many templates start
//! with `{{ bos_token }}`. llama-server renders the template, then, when the tokenizer adds BOS by itself
//! (`tokenizer.ggml.add_bos_token`), removes one leading copy of the BOS text from the rendered string (and
//! likewise one trailing EOS text when it adds EOS), and finally tokenizes the result with special tokens
//! parsed and the tokenizer's own BOS added. So the prompt holds exactly one BOS whether or not the template
//! writes it. [`ChatTemplate::render`] returns that stripped text and [`ChatTemplate::encode`] tokenizes
//! it the same way.
//!
//! # Which template
//!
//! [`ChatTemplate::from_gguf`] uses the file's template when it has one. Otherwise it falls back, for a
//! `gemma*` architecture, to a built-in template equivalent to Google's Gemma instruction template (llama.cpp
//! itself would fall back to ChatML, which Gemma was never trained on), and to ChatML for anything else.
//! Gemma has no system role: a leading system message becomes a prefix of the first user turn
//! (`system + "\n\n" + user`), as in Google's template, llama.cpp's built-in "gemma" format and ollama.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use gemma_io::GgufFile;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

/// One message of a conversation. `role` is `system`, `user` or `assistant` (templates may know others).
/// A message sent as a list of text parts (OpenAI's content parts, Anthropic's text blocks) keeps them in
/// `parts`, and `content` holds them joined with newlines: llama.cpp hands the list to a template that reads
/// typed content, and the joined text to one that reads strings only. Read from JSON, `content` may be a
/// string or such a list (`[{"type": "text", "text": ...}]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMessage")]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// A message as a template sees it (fields in the order llama.cpp gives them, which `tojson` shows).
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: TemplateContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum TemplateContent<'a> {
    Text(&'a str),
    Parts(Vec<TextPart<'a>>),
}

#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

impl<'a> TextPart<'a> {
    fn new(text: &'a str) -> TextPart<'a> {
        TextPart { kind: "text", text }
    }
}

/// What JSON may hold for a [`ChatMessage`].
#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: RawContent,
    #[serde(default)]
    parts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
}

#[derive(Deserialize)]
struct RawPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl TryFrom<RawMessage> for ChatMessage {
    type Error = String;

    fn try_from(raw: RawMessage) -> Result<ChatMessage, String> {
        match raw.content {
            RawContent::Text(content) => Ok(ChatMessage { role: raw.role, content, parts: raw.parts }),
            RawContent::Parts(parts) => {
                let texts = parts
                    .into_iter()
                    .map(|p| match (p.kind.as_str(), p.text) {
                        ("text", Some(text)) => Ok(text),
                        (kind, _) => {
                            Err(format!("a content part must be {{\"type\": \"text\", \"text\": ...}}, not '{kind}'"))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ChatMessage::with_parts(raw.role, texts))
            }
        }
    }
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), parts: Vec::new() }
    }
    /// A message given as text parts; its `content` is them joined with newlines (llama.cpp's join for
    /// templates that read strings only).
    pub fn with_parts(role: impl Into<String>, parts: Vec<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: parts.join("\n"), parts }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// Where a [`ChatTemplate`]'s source came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model file's `tokenizer.chat_template`.
    Gguf,
    /// The built-in Gemma template (the file has none and its architecture is Gemma).
    BuiltinGemma,
    /// The built-in ChatML template (the file has none and is not Gemma).
    BuiltinChatml,
    /// Given by the caller ([`ChatTemplate::from_source`]).
    Custom,
}

impl TemplateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateSource::Gguf => "gguf",
            TemplateSource::BuiltinGemma => "builtin-gemma",
            TemplateSource::BuiltinChatml => "builtin-chatml",
            TemplateSource::Custom => "custom",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the chat template does not compile: {0:#}")]
    Compile(#[source] minijinja::Error),
    #[error("the chat template raised an exception: {0}")]
    Raised(String),
    #[error("the chat template failed while rendering: {0:#}")]
    Render(#[source] minijinja::Error),
    #[error("metadata key {key}: {reason}")]
    Metadata { key: &'static str, reason: String },
}

/// Instructions one render may take. The Gemma template takes about 60 per message, so this is hundreds of
/// times what the largest request body can hold, and a second or two of work at most.
const RENDER_FUEL: u64 = 50_000_000;

/// Google's Gemma instruction format, written for this project: BOS, then `<start_of_turn>ROLE\n`,
/// the trimmed content and `<end_of_turn>\n` per message (`assistant` is called `model`), the system
/// message (untrimmed) plus a blank line prefixed to the first user turn, turns alternating from the user.
const GEMMA_TEMPLATE: &str = r#"{{- bos_token -}}
{%- set loop_messages = messages -%}
{%- set first_user_prefix = "" -%}
{%- if messages and messages[0].role == "system" -%}
    {#- A system message given as text parts gives its first part, as Google's template. -#}
    {%- set system = messages[0].content if messages[0].content is string else messages[0].content[0].text -%}
    {%- set first_user_prefix = system ~ "\n\n" -%}
    {%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message.role == "user") != (loop.index0 is even) -%}
        {{- raise_exception("Gemma conversations alternate user and assistant turns, starting with the user (after an optional system message)") -}}
    {%- endif -%}
    {{- "<start_of_turn>" ~ ("model" if message.role == "assistant" else message.role) ~ "\n" -}}
    {{- first_user_prefix if loop.first else "" -}}
    {%- if message.content is string -%}
        {{- message.content | trim -}}
    {%- else -%}
        {%- for part in message.content if part.type == "text" -%}
            {{- part.text | trim -}}
        {%- endfor -%}
    {%- endif -%}
    {{- "<end_of_turn>\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<start_of_turn>model\n" -}}
{%- endif -%}"#;

/// ChatML (`<|im_start|>ROLE\n...<|im_end|>\n`), the fallback llama.cpp also uses.
const CHATML_TEMPLATE: &str = r#"{%- for message in messages -%}
    {{- "<|im_start|>" ~ message.role ~ "\n" ~ message.content ~ "<|im_end|>\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
{%- endif -%}"#;

const TEMPLATE_NAME: &str = "chat";
/// Marks errors that come from `raise_exception` so they are reported as the template's own message.
const RAISED_MARKER: &str = "raise_exception: ";

/// A compiled chat template with the vocabulary's BOS/EOS text.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: TemplateSource,
    /// The Jinja text (the environment keeps its own copy, compiled).
    text: String,
    bos_token: String,
    eos_token: String,
    strip_bos: bool,
    strip_eos: bool,
    content: ContentForms,
}

/// Which forms of a message's `content` a template renders, found by trying it as llama.cpp does: a string,
/// and a list of typed parts (`[{"type": "text", "text": ...}]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentForms {
    pub string: bool,
    pub typed: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("strip_bos", &self.strip_bos)
            .field("strip_eos", &self.strip_eos)
            .field("content", &self.content)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `src` with the given BOS/EOS text. Nothing is stripped after rendering; see
    /// [`ChatTemplate::strip_special`] for llama.cpp's BOS/EOS rule.
    pub fn from_source(
        src: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        Self::compile(src.into(), TemplateSource::Custom, bos_token.into(), eos_token.into())
    }

    /// The built-in Gemma template with Gemma's `<bos>` / `<eos>`; the leading BOS it writes is stripped
    /// because Gemma tokenizers add BOS themselves.
    pub fn builtin_gemma() -> ChatTemplate {
        Self::builtin(TemplateSource::BuiltinGemma, "<bos>".into(), "<eos>".into()).strip_special(true, false)
    }

    /// The built-in ChatML template with the given BOS/EOS text.
    pub fn builtin_chatml(bos_token: impl Into<String>, eos_token: impl Into<String>) -> ChatTemplate {
        Self::builtin(TemplateSource::BuiltinChatml, bos_token.into(), eos_token.into())
    }

    /// The model's template (or the fallback, see the module docs), with BOS/EOS text and the strip rule
    /// taken from the tokenizer.
    pub fn from_gguf(file: &GgufFile, tokenizer: &Tokenizer) -> Result<ChatTemplate, ChatTemplateError> {
        let text_of = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_piece_bytes(id, true))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let bos = text_of(tokenizer.bos_id());
        let eos = text_of(tokenizer.eos_id());
        let add_eos = metadata_bool(file, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        Ok(Self::for_file(file, bos, eos)?.strip_special(tokenizer.add_bos(), add_eos))
    }

    /// Like [`ChatTemplate::from_gguf`] but from the metadata alone, without building a tokenizer: the
    /// BOS/EOS text is the stored text of the `tokenizer.ggml.bos_token_id` / `eos_token_id` entries of
    /// `tokenizer.ggml.tokens` (SentencePiece's `▁` read as a space), and `add_bos_token` defaults as in
    /// llama.cpp (true for SentencePiece vocabularies, false for the others).
    pub fn from_gguf_metadata(file: &GgufFile) -> Result<ChatTemplate, ChatTemplateError> {
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = metadata_str(file, "tokenizer.ggml.model")?.unwrap_or("llama");
        let tokens = match file.get(TOKENS) {
            None => None,
            Some(v) => {
                let strings = v.as_array().and_then(gemma_io::MetaArray::strings);
                Some(
                    strings
                        .ok_or(ChatTemplateError::Metadata { key: TOKENS, reason: "not an array of strings".into() })?,
                )
            }
        };
        let text_of = |key: &'static str| -> Result<String, ChatTemplateError> {
            let Some(value) = file.get(key) else { return Ok(String::new()) };
            // A negative id means "none" for some converters.
            let Some(id) = value.as_u64() else { return Ok(String::new()) };
            let piece = tokens
                .and_then(|t| usize::try_from(id).ok().and_then(|i| t.get(i)))
                .ok_or(ChatTemplateError::Metadata { key, reason: format!("token {id} has no text in {TOKENS}") })?;
            Ok(if model == "llama" { piece.replace('\u{2581}', " ") } else { piece.to_owned() })
        };
        let bos = text_of("tokenizer.ggml.bos_token_id")?;
        let eos = text_of("tokenizer.ggml.eos_token_id")?;
        let add_bos = metadata_bool(file, "tokenizer.ggml.add_bos_token")?.unwrap_or(model == "llama");
        let add_eos = metadata_bool(file, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        Ok(Self::for_file(file, bos, eos)?.strip_special(add_bos, add_eos))
    }

    fn for_file(file: &GgufFile, bos: String, eos: String) -> Result<ChatTemplate, ChatTemplateError> {
        if let Some(src) = metadata_str(file, "tokenizer.chat_template")? {
            // llama.cpp reads the template name "chatml" (and an empty template) as ChatML.
            if !src.is_empty() && src != "chatml" {
                return Self::compile(src.to_owned(), TemplateSource::Gguf, bos, eos);
            }
        }
        let arch = metadata_str(file, "general.architecture")?.unwrap_or("");
        Ok(if arch.starts_with("gemma") {
            Self::builtin(TemplateSource::BuiltinGemma, bos, eos)
        } else {
            Self::builtin(TemplateSource::BuiltinChatml, bos, eos)
        })
    }

    fn builtin(source: TemplateSource, bos: String, eos: String) -> ChatTemplate {
        let src = match source {
            TemplateSource::BuiltinGemma => GEMMA_TEMPLATE,
            _ => CHATML_TEMPLATE,
        };
        match Self::compile(src.to_owned(), source, bos, eos) {
            Ok(t) => t,
            // The built-in sources are constants covered by the tests.
            Err(e) => unreachable!("built-in chat template does not compile: {e}"),
        }
    }

    fn compile(
        src: String,
        source: TemplateSource,
        bos: String,
        eos: String,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let mut env = Environment::new();
        // transformers and llama.cpp render chat templates with both on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates come from model files: a render that loops without end is an error, not a hung server.
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, src.clone()).map_err(ChatTemplateError::Compile)?;
        let mut t = ChatTemplate {
            env,
            source,
            text: src,
            bos_token: bos,
            eos_token: eos,
            strip_bos: false,
            strip_eos: false,
            content: ContentForms { string: true, typed: false },
        };
        t.content = t.probe_content_forms();
        Ok(t)
    }

    /// Renders one user message with its content as a string, then as one typed text part, and sees which
    /// renders show the text. A list printed as a list (its `type` key in the output) does not count as
    /// read. A template that shows neither is taken to read strings.
    fn probe_content_forms(&self) -> ContentForms {
        const MARKER: &str = "CONTENT_MARKER_4e1f";
        let render = |content: TemplateContent<'_>| {
            let messages = [TemplateMessage { role: "user", content }];
            self.render_values(Value::from_serialize(messages), false).ok()
        };
        let string = render(TemplateContent::Text(MARKER)).is_some_and(|text| text.contains(MARKER));
        let typed = render(TemplateContent::Parts(vec![TextPart::new(MARKER)]))
            .is_some_and(|text| text.contains(MARKER) && !text.contains("'type'") && !text.contains("\"type\""));
        ContentForms { string: string || !typed, typed }
    }

    /// The content forms this template renders.
    pub fn content_forms(&self) -> ContentForms {
        self.content
    }

    /// Sets llama.cpp's rule: when the tokenizer adds BOS (`add_bos`), one leading BOS text is removed from
    /// the rendered prompt; when it adds EOS, one trailing EOS text.
    pub fn strip_special(mut self, add_bos: bool, add_eos: bool) -> ChatTemplate {
        self.strip_bos = add_bos;
        self.strip_eos = add_eos;
        self
    }

    pub fn source(&self) -> TemplateSource {
        self.source
    }
    /// The Jinja text of the template (the file's own, or the built-in one used in its place).
    pub fn template_text(&self) -> &str {
        &self.text
    }
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends with the opening of an
    /// assistant turn. The BOS/EOS rule of the module docs is applied.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatTemplateError> {
        // As llama.cpp: text parts go to a template as a list when it reads typed content; a template that
        // reads only typed content gets every message as a list.
        let as_list = |m: &ChatMessage| self.content.typed && (!m.parts.is_empty() || !self.content.string);
        let messages: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| {
                let content = if as_list(m) {
                    let parts = if m.parts.is_empty() { std::slice::from_ref(&m.content) } else { &m.parts[..] };
                    TemplateContent::Parts(parts.iter().map(|p| TextPart::new(p)).collect())
                } else {
                    TemplateContent::Text(&m.content)
                };
                TemplateMessage { role: &m.role, content }
            })
            .collect();
        self.render_values(Value::from_serialize(&messages), add_generation_prompt)
    }

    fn render_values(&self, messages: Value, add_generation_prompt: bool) -> Result<String, ChatTemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatTemplateError::Compile)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            enable_thinking => true,
        };
        let mut text = template.render(ctx).map_err(classify_error)?;
        if self.strip_bos && !self.bos_token.is_empty() && text.starts_with(&self.bos_token) {
            text.drain(..self.bos_token.len());
        }
        if self.strip_eos && !self.eos_token.is_empty() && text.ends_with(&self.eos_token) {
            text.truncate(text.len() - self.eos_token.len());
        }
        Ok(text)
    }

    /// Renders and tokenizes as llama-server does: special tokens parsed, the tokenizer's BOS added when it
    /// wants one.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatTemplateError> {
        let text = self.render(messages, add_generation_prompt)?;
        Ok(tokenizer.encode(&text, tokenizer.add_bos(), true))
    }
}

fn metadata_str<'f>(file: &'f GgufFile, key: &'static str) -> Result<Option<&'f str>, ChatTemplateError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or(ChatTemplateError::Metadata { key, reason: "not a string".into() }),
    }
}

fn metadata_bool(file: &GgufFile, key: &'static str) -> Result<Option<bool>, ChatTemplateError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(ChatTemplateError::Metadata { key, reason: "not a bool".into() }),
    }
}

fn classify_error(e: minijinja::Error) -> ChatTemplateError {
    // The raise may be wrapped in the error of an enclosing call; look down the chain.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<minijinja::Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED_MARKER)) {
                return ChatTemplateError::Raised(msg.to_owned());
            }
        }
        cur = err.source();
    }
    ChatTemplateError::Render(e)
}

fn raise_exception(msg: Cow<'_, str>) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED_MARKER}{msg}")))
}

/// The current time formatted with C `strftime` codes. Uses UTC (the process has no time-zone database);
/// llama.cpp uses local time, which is UTC on most servers.
fn strftime_now(format: Cow<'_, str>) -> Result<String, minijinja::Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(&format, secs)
        .map_err(|c| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported code %{c}")))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// `strftime` over a UTC timestamp for the codes chat templates use; an unknown code is returned as `Err`.
pub fn format_utc(format: &str, unix_secs: u64) -> Result<String, char> {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days % 7 + 7 + 4) % 7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        match code {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:>2}")),
            'j' => out.push_str(&format!("{day_of_year:03}")),
            'H' => out.push_str(&format!("{hour:02}")),
            'I' => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(weekday_name),
            'a' => out.push_str(&weekday_name[..3]),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            '%' => out.push('%'),
            other => return Err(other),
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Python's `json.dumps` as transformers and llama.cpp expose it: `", "` / `": "` separators (`","` between
/// items when indenting), `indent`, `ensure_ascii` (default off) and `separators`; no HTML escaping.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    // Accepted for compatibility: map keys already come out sorted unless minijinja preserves insertion order.
    let _sort_keys = kwargs.get::<Option<bool>>("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators takes two strings"))
        }
        None => ((if indent.is_some() { "," } else { ", " }).to_owned(), ": ".to_owned()),
    };
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, format!("tojson: {e}")))?;
    let mut out = String::new();
    let fmt = JsonFormat { indent, item_sep: &item_sep, key_sep: &key_sep, ensure_ascii };
    fmt.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct JsonFormat<'a> {
    indent: Option<usize>,
    item_sep: &'a str,
    key_sep: &'a str,
    ensure_ascii: bool,
}

impl JsonFormat<'_> {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    }

    fn write(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null | J::Bool(_) | J::Number(_) => out.push_str(&v.to_string()),
            J::String(s) => self.write_str(s, out),
            J::Array(items) if items.is_empty() => out.push_str("[]"),
            J::Object(map) if map.is_empty() => out.push_str("{}"),
            J::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            J::Object(map) => {
                out.push('{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.write_str(k, out);
                    out.push_str(self.key_sep);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Length of the common prefix of the ids already in a KV cache and the ids of the newly rendered
/// conversation: the positions a new turn can keep.
pub fn common_prefix_len(cached: &[u32], new: &[u32]) -> usize {
    cached.iter().zip(new).take_while(|(a, b)| a == b).count()
}

/// The cache positions a new turn keeps: the common prefix, but at least one token of `new` is left to
/// prefill, since the next token's logits come from running the last prompt token.
pub fn reusable_prefix_len(cached: &[u32], new: &[u32]) -> usize {
    common_prefix_len(cached, new).min(new.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parts_reach_a_template_in_the_form_it_reads() {
        let parts = || ChatMessage::with_parts("user", vec![" a ".into(), "b".into()]);
        assert_eq!(parts().content, " a \nb");
        let gemma = ChatTemplate::builtin_gemma();
        assert_eq!(gemma.content_forms(), ContentForms { string: true, typed: true });
        assert_eq!(gemma.render(&[parts()], false).unwrap(), "<start_of_turn>user\nab<end_of_turn>\n");
        // ChatML prints whatever `content` is: a list would show as a list, so it gets the joined text.
        let chatml = ChatTemplate::builtin_chatml("", "");
        assert_eq!(chatml.content_forms(), ContentForms { string: true, typed: false });
        assert_eq!(chatml.render(&[parts()], false).unwrap(), "<|im_start|>user\n a \nb<|im_end|>\n");
        // A template that reads only lists gets every message as one.
        let lists = ChatTemplate::from_source(
            "{% for m in messages %}[{% for p in m.content %}{{ p.text }};{% endfor %}]{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(lists.content_forms(), ContentForms { string: false, typed: true });
        assert_eq!(lists.render(&[ChatMessage::user("x"), parts()], false).unwrap(), "[x;][ a ;b;]");
        // From JSON: a string or a list of text parts; another part is an error.
        let m: ChatMessage = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "p"}, {"type": "text", "text": "q"}]}"#,
        )
        .unwrap();
        assert_eq!(m, ChatMessage::with_parts("user", vec!["p".into(), "q".into()]));
        assert!(serde_json::from_str::<ChatMessage>(r#"{"role": "user", "content": [{"type": "image"}]}"#).is_err());
        assert_eq!(
            serde_json::from_str::<ChatMessage>(r#"{"role": "user", "content": "s"}"#).unwrap(),
            ChatMessage::user("s")
        );
    }

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday (leap day).
        assert_eq!(
            format_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %%", 1_709_211_909).unwrap(),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM %"
        );
        assert_eq!(format_utc("%d %b %Y", 0).unwrap(), "01 Jan 1970");
        assert_eq!(format_utc("%F %T", 951_782_400).unwrap(), "2000-02-29 00:00:00");
        assert_eq!(format_utc("%Q", 0), Err('Q'));
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::from_source(
            r#"{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ "é<" | tojson(ensure_ascii=true) }}"#,
            "",
            "",
        )
        .unwrap();
        let env_out = t
            .env
            .get_template(TEMPLATE_NAME)
            .unwrap()
            .render(minijinja::context! { x => serde_json::json!({"a": [1, "b\n"], "c": {}}) })
            .unwrap();
        assert_eq!(
            env_out,
            "{\"a\": [1, \"b\\n\"], \"c\": {}}|{\n  \"a\": [\n    1,\n    \"b\\n\"\n  ],\n  \"c\": {}\n}|\"\\u00e9<\""
        );
    }

    /// A template from a model file that loops (nearly) forever fails its render instead of hanging, and a
    /// long ordinary conversation still renders.
    #[test]
    fn endless_templates_run_out_of_fuel() {
        let endless = ChatTemplate::from_source(
            "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}{% endfor %}\
             {% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = endless.render(&[ChatMessage::new("user", "hi")], true).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Render(_)) && err.to_string().contains("fuel"), "{err}");
        assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
        let long: Vec<ChatMessage> = (0..20_000)
            .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, format!("turn {i}")))
            .collect();
        let text = ChatTemplate::builtin_gemma().render(&long, true).unwrap();
        assert!(text.contains("turn 19999"));
    }

    #[test]
    fn prefix_keeps_one_token_to_prefill() {
        assert_eq!(common_prefix_len(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(reusable_prefix_len(&[1, 2, 3], &[1, 2, 3]), 2);
        assert_eq!(reusable_prefix_len(&[1, 2, 3, 4], &[1, 2]), 1);
        assert_eq!(reusable_prefix_len(&[], &[7]), 0);
    }
}

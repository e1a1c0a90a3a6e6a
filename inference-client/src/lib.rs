//! Skibidification for Twitchy Chat: every chat message is rewritten in its room's style before delivery, by a
//! small LLM served by vLLM when it can answer in time, by a local rule-based rewriter otherwise.
//!
//! # Internals
//!
//! - [`style`](crate::style_names) tables: per style a name, a one-line description, an LLM prompt template and
//!   the local rewriter's rules (openers, interjections, closers, emoji). [`local_rewrite_protected`] is a pure
//!   function of `(style, text, seed, protected words)`: it sanitises the message and dresses it without changing
//!   a word, in one allocation.
//! - [`protect`](ProtectedWords): the protected words ([`StylerConfig::protected_words`], the engine's emote
//!   codes) that styling delivers unchanged, as whole words. The local rewriter keeps each occurrence in place and
//!   in order; the vLLM path sends the model numbered placeholders (`[E1]`, `[E2]`, …) instead, puts the words back
//!   in the completion and delivers the local rewrite when a placeholder is missing, altered or repeated or the
//!   model wrote a protected word of its own (fallback reason `emotes`, whether or not the quality gate is on). A
//!   message of protected words alone is never sent to the model: it is delivered as it is, sanitised
//!   (`emote_only`).
//! - [`sanitize`]: one pass over user text or model output that drops control, bidi-override and replacement
//!   characters, collapses whitespace and cuts at [`STYLED_CHARS_MAX`] characters on a cluster boundary; model
//!   output is also checked for garbage (empty, too few letters, long repeats).
//! - [`prompt`](ChatTemplate): the served model's chat template applied client-side (so a batch stays one request
//!   with a list of prompts), the style's few-shot examples, an opener that starts the answer, stop sequences and a
//!   token limit per style.
//! - [`gate`](assess_completion): the quality gate every completion passes before a viewer sees it; echoes, prompt
//!   leaks, off-topic or rambling text and text out of style get the local rewrite, counted by reason.
//! - [`openai`]: the `/v1/completions` wire format, sans IO, tolerant of broken UTF-8 and lone surrogates.
//! - [`http`] and [`rt`]: a shard-local hyper 1.x HTTP/1.1 client over glommio TCP with keep-alive connections.
//! - The vLLM path ([`LlmStyler`], one per shard): a completion cache per style (keyed by the message with its
//!   placeholders and holding completions with placeholders, so `gg twiGG` and `gg twiHype` share one), admission
//!   control (an AIMD limit on outstanding prompts that keeps their age under a share of the deadline), a
//!   micro-batcher (`batch_prompts_max` prompts or `batch_wait_us_max`, whichever first), least-outstanding-prompts
//!   balancing over the endpoints, a circuit breaker per endpoint with `/health` probes, and the deadline wrapper: each
//!   message races its completion against a timer and gets the local rewrite when the timer wins. Under overload
//!   the newest prompts go first, one style per batch, and prompts that cannot be answered in time are shed at
//!   once. Batches go out as one request with a list of prompts ([`BatchMode::List`]) or as one request per
//!   prompt ([`BatchMode::Concurrent`]).
//! - Metrics: per-shard blocks of atomics written only by their shard, rendered as Prometheus text by
//!   [`StylerFactory::metrics_text`].
//!
//! Architecture invariant: `style` never waits longer than the deadline and never fails; a message is never held
//! back for the LLM beyond its deadline, and under overload the excess goes to the local rewriter at once.
//! Architecture invariant: the styler of a shard is shard-local (`Rc`, `RefCell`, glommio tasks, no tokio); only
//! the factory and the metrics blocks are shared between shards.
//! Architecture invariant: the batcher, admission control, breaker, cache, sanitiser, prompt builder, quality gate
//! and wire format do no IO and read no clock: they take `now` and are tested with a driven clock.

mod admission;
mod batcher;
mod breaker;
mod cache;
pub mod dns;
mod error;
mod factory;
mod gate;
pub mod http;
mod llm;
mod local;
mod metrics;
pub mod openai;
mod prompt;
mod protect;
pub mod rt;
pub mod sanitize;
mod style;

pub use error::{Error, ErrorKind};
pub use factory::ClusterStylerFactory;
pub use gate::{Assessment, Rejection, assess_completion};
pub use llm::LlmStyler;
pub use local::LocalStyler;
pub use metrics::{FallbackReason, MetricsTotals};
pub use prompt::ChatTemplate;
pub use protect::{
    PROTECTED_WORD_CHARS_MAX, PROTECTED_WORDS_MAX, ProtectedWords, check_protected_word,
};
pub use sanitize::{Garbage, sanitize_completion, sanitize_text};

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// Who produced a styled text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StyledBy {
    /// The LLM's completion, sanitised.
    Llm,
    /// The local rule-based rewriter.
    Local,
}

impl StyledBy {
    pub fn as_str(self) -> &'static str {
        match self {
            StyledBy::Llm => "llm",
            StyledBy::Local => "local",
        }
    }
}

/// A styled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Styled {
    pub text: String,
    pub by: StyledBy,
}

/// A shard-local styler. Lives on one glommio shard; its futures are `!Send`.
///
/// API boundary: `style` always resolves, within the configured deadline, with a non-empty text of at most
/// [`STYLED_CHARS_MAX`] characters and no control characters.
///
/// API boundary: every occurrence of a protected word ([`StylerConfig::protected_words`]) in the sanitised message,
/// a whole space-separated word matched case-sensitively, is in the styled text as a whole word, unchanged, as
/// often as in the message, and no other occurrence is added; the local rewriter also keeps their order (a model
/// may move them). Text glued to a word makes another word: `twiGG!` is not `twiGG` and is styled freely. A
/// message longer than [`STYLED_CHARS_MAX`] characters loses what is cut off, occurrences included, and a cut inside
/// a word never leaves a fragment that spells a protected word.
pub trait Styler {
    /// Rewrites `text` in the named style. `seed` makes the local rewriter deterministic per message.
    fn style(&self, style: &str, text: &str, seed: u64) -> Pin<Box<dyn Future<Output = Styled>>>;
}

/// Builds one [`Styler`] per shard and reports metrics across shards. Shared by all shards (`Send + Sync`).
pub trait StylerFactory: Send + Sync {
    /// Called once on each shard's thread.
    fn local_styler(&self, shard: usize) -> Rc<dyn Styler>;
    /// Prometheus text exposition of the styler metrics of all shards.
    fn metrics_text(&self) -> String;
}

/// Longest styled text, in characters (Twitch's message limit).
pub const STYLED_CHARS_MAX: usize = 500;

/// Configuration of the stylers. Every field has a default; no endpoints means the local rewriter only.
#[derive(Debug, Clone, PartialEq)]
pub struct StylerConfig {
    /// Base URLs of the vLLM servers, like `http://127.0.0.1:18000`; empty means the local rewriter only.
    pub vllm_endpoints: Vec<String>,
    /// The served model name sent in every request.
    pub model: String,
    /// Longest time a message waits for its completion before it is delivered with the local rewrite.
    pub deadline_ms: u64,
    /// Most prompts in one batch (one request with a list of prompts, or one burst of concurrent requests).
    pub batch_prompts_max: usize,
    /// Longest time the first prompt of a batch waits for more prompts to join it.
    pub batch_wait_us_max: u64,
    /// Most tokens a completion may generate. Each style has its own, smaller limit that grows with the message;
    /// this caps them all.
    pub max_tokens: u32,
    /// Sampling temperature sent with every request.
    pub temperature: f32,
    /// Frequency penalty sent with every request: a small model otherwise loops ("it's a banger, it's a banger").
    pub frequency_penalty: f32,
    /// How a batch goes to an endpoint: one request with a list of prompts, or one request per prompt.
    pub batch_mode: BatchMode,
    /// The served model's chat template, applied here so a batch stays one request with a list of prompts.
    pub chat_template: ChatTemplate,
    /// Start each answer with one of the style's openers and let the model continue it (a small model that has
    /// begun in the style stays in it). The delivered text is the opener and the model's words.
    pub assistant_prefill: bool,
    /// Judge every completion (echo, prompt leak, off topic, off style) and deliver the local rewrite instead of a
    /// rejected one. Off only to measure the model unfiltered. The check of protected words is no part of it and
    /// stays on: the engine's `emotes` tag depends on it.
    pub quality_gate: bool,
    /// Most requests one shard keeps in flight to one endpoint (each holds one keep-alive connection). With
    /// [`BatchMode::Concurrent`] this bounds the prompts in flight, so it should be near the admission limit.
    pub requests_in_flight_per_endpoint_max: usize,
    /// A request that has not been answered after this long fails (and counts against the endpoint's breaker);
    /// never less than twice the deadline.
    pub request_timeout_ms: u64,
    /// Longest wait for a TCP connection to an endpoint.
    pub connect_timeout_ms: u64,
    /// Largest response body accepted from an endpoint.
    pub response_bytes_max: usize,
    /// How often each shard probes each endpoint's `/health`.
    pub health_interval_ms: u64,
    /// A health probe that has not been answered after this long fails.
    pub health_timeout_ms: u64,
    /// Consecutive failed requests that open an endpoint's circuit breaker.
    pub breaker_failures_max: u32,
    /// Shortest time a breaker stays open before a health probe may half-open it.
    pub breaker_open_ms: u64,
    /// Admission control keeps the age of completed prompts under this share of the deadline, in percent.
    pub admission_target_percent: u64,
    /// The admission limit (outstanding prompts per shard) at start.
    pub admission_prompts_initial: usize,
    /// The admission limit never grows beyond this many outstanding prompts per shard.
    pub admission_prompts_max: usize,
    /// The admission limit never shrinks below this many outstanding prompts per shard. On a CPU server a request
    /// takes about as long for one prompt as for a batch, so a floor of a batch per request in flight keeps it busy.
    pub admission_prompts_min: usize,
    /// Distinct messages whose completions each shard caches (each with a slot per style); 0 disables the cache.
    pub cache_entries_max: usize,
    /// Longest prompt, in bytes, sent to the model (the style's examples included, about 1 KiB). With a byte-level
    /// tokenizer a prompt of `n` bytes is at most `n` tokens, so `prompt_bytes_max + max_tokens` below the served
    /// context length means no request is rejected for length; longer messages get the local rewrite.
    pub prompt_bytes_max: usize,
    /// Words that styling delivers unchanged, as whole words, as often as the message has them (the engine passes
    /// its emote codes, from which it computes the `emotes` tag of the styled text). Matched case-sensitively
    /// against whole space-separated words of the sanitised message. Each must pass [`check_protected_word`]; at
    /// most [`PROTECTED_WORDS_MAX`]. Empty by default.
    pub protected_words: Vec<String>,
}

/// How a batch of prompts goes to an endpoint.
///
/// `List` is the default: against the vLLM CPU server with a 150 ms deadline and ten times its capacity offered,
/// interleaved runs of `perf/src/bin/vllm_bench.rs` delivered a median of 0.93 of the best in-deadline direct rate
/// with lists against 0.60 with concurrent requests, and lists need one connection per batch instead of one per
/// prompt. The measurements are noisy on a shared machine; `Concurrent` stays available to measure elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// One `/v1/completions` request whose `prompt` is the list of the batch's prompts.
    List,
    /// One request per prompt, all in flight at once on separate keep-alive connections.
    Concurrent,
}

impl std::str::FromStr for BatchMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "list" => Ok(BatchMode::List),
            "concurrent" => Ok(BatchMode::Concurrent),
            other => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("batch mode {other:?} (list|concurrent)"),
            )),
        }
    }
}

impl Default for StylerConfig {
    fn default() -> Self {
        StylerConfig {
            vllm_endpoints: Vec::new(),
            model: "tiny".to_owned(),
            deadline_ms: 150,
            batch_prompts_max: 32,
            batch_wait_us_max: 2_000,
            max_tokens: 48,
            temperature: 0.3,
            frequency_penalty: 0.8,
            batch_mode: BatchMode::List,
            chat_template: ChatTemplate::ChatMl,
            assistant_prefill: true,
            quality_gate: true,
            requests_in_flight_per_endpoint_max: 16,
            request_timeout_ms: 1_000,
            connect_timeout_ms: 200,
            response_bytes_max: 1 << 20,
            health_interval_ms: 500,
            health_timeout_ms: 300,
            breaker_failures_max: 3,
            breaker_open_ms: 1_000,
            admission_target_percent: 85,
            admission_prompts_initial: 16,
            admission_prompts_max: 1_024,
            admission_prompts_min: 1,
            cache_entries_max: 4_096,
            prompt_bytes_max: 2_000,
            protected_words: Vec::new(),
        }
    }
}

/// The style names rooms may pick, in a stable order.
pub fn style_names() -> &'static [&'static str] {
    &style::STYLE_NAMES
}

/// A one-line description of a style for the UI and the API, or `None` for an unknown name.
pub fn style_description(name: &str) -> Option<&'static str> {
    style::style_index(name).map(|index| style::STYLES[index].description)
}

/// The pure local rewriter: deterministic for a given `(style, text, seed)`, keeps every word of the sanitised
/// message in order, returns a non-empty text of at most [`STYLED_CHARS_MAX`] characters without control
/// characters. An unknown style returns the sanitised text (or `"…"` when nothing of it is left). No word is
/// protected: see [`local_rewrite_protected`].
pub fn local_rewrite(style: &str, text: &str, seed: u64) -> String {
    local_rewrite_protected(style, text, seed, &ProtectedWords::default())
}

/// [`local_rewrite`] that also delivers every `protected` word of the sanitised message unchanged, as a whole word,
/// in order and as often as the message has it, and adds none: no comma or closing punctuation is glued to one, no
/// decoration that contains one is used, and a message of protected words alone comes back as it is, sanitised
/// (nothing to style, and an emote-only room stays emote-only). Deterministic for a given
/// `(style, text, seed, protected)`; with no protected words it is [`local_rewrite`].
pub fn local_rewrite_protected(
    style: &str,
    text: &str,
    seed: u64,
    protected: &ProtectedWords,
) -> String {
    match style::style_index(style) {
        Some(index) => style::local_rewrite_indexed(index, text, seed, protected),
        None => local::unstyled(text, protected),
    }
}

/// The completion prompt the vLLM client sends for `text` in `style` (the text sanitised first) with the default
/// configuration and seed 0, or `None` for an unknown style. Load tools use it to send exactly the client's
/// prompts.
pub fn llm_prompt(style: &str, text: &str) -> Option<String> {
    llm_prompt_with(ChatTemplate::ChatMl, style, text, llm_opener(style, 0)?)
}

/// The opener the client starts the answer to a message with `seed` with, when `assistant_prefill` is on; `None`
/// for an unknown style.
pub fn llm_opener(style: &str, seed: u64) -> Option<&'static str> {
    Some(prompt::opener(style::style_index(style)?, seed, true))
}

/// The completion prompt for `text` in `style` with a given chat template, the answer started with `opener` (empty
/// for none); `None` for an unknown style.
pub fn llm_prompt_with(
    template: ChatTemplate,
    style: &str,
    text: &str,
    opener: &str,
) -> Option<String> {
    let index = style::style_index(style)?;
    Some(prompt::build(
        template,
        index,
        &sanitize::sanitize_text(text, STYLED_CHARS_MAX),
        opener,
    ))
}

/// Most tokens the vLLM client lets the completion of `text` in `style` take, under the cap `tokens_max`; `None`
/// for an unknown style.
pub fn llm_max_tokens(style: &str, text: &str, tokens_max: u32) -> Option<u32> {
    let index = style::style_index(style)?;
    Some(prompt::max_tokens(
        index,
        &sanitize::sanitize_text(text, STYLED_CHARS_MAX),
        tokens_max,
    ))
}

/// Builds the styler factory the engine hands to its shards. Invalid endpoint URLs are logged and left out (call
/// [`StylerConfig::validate`] at config load to reject them instead); with no valid endpoint the factory styles
/// locally.
pub fn styler_factory(config: StylerConfig) -> std::sync::Arc<dyn StylerFactory> {
    std::sync::Arc::new(factory::ClusterStylerFactory::new(config))
}

impl StylerConfig {
    /// Checks every value: endpoint URLs parse, limits are non-zero where zero makes no sense.
    pub fn validate(&self) -> Result<(), Error> {
        for url in &self.vllm_endpoints {
            http::EndpointUrl::parse(url)?;
        }
        let invalid = |what: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{what} must be positive"),
            ))
        };
        if self.deadline_ms == 0 {
            return invalid("deadline_ms");
        }
        if self.batch_prompts_max == 0 {
            return invalid("batch_prompts_max");
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens");
        }
        if self.requests_in_flight_per_endpoint_max == 0 {
            return invalid("requests_in_flight_per_endpoint_max");
        }
        if self.admission_prompts_max == 0 {
            return invalid("admission_prompts_max");
        }
        if self.model.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "model must be named"));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "frequency_penalty must be within -2..=2",
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "temperature must be within 0..=2",
            ));
        }
        if self.protected_words.len() > PROTECTED_WORDS_MAX {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("more than PROTECTED_WORDS_MAX ({PROTECTED_WORDS_MAX}) protected words"),
            ));
        }
        for word in &self.protected_words {
            check_protected_word(word)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(StylerConfig::default().validate().is_ok());
        let with_endpoints = StylerConfig {
            vllm_endpoints: vec!["http://127.0.0.1:18000".into(), "http://[::1]:9/v".into()],
            ..StylerConfig::default()
        };
        assert!(with_endpoints.validate().is_ok());
        let with_emotes = StylerConfig {
            protected_words: vec!["twiGG".into(), "twiHype".into(), "<3".into()],
            ..StylerConfig::default()
        };
        assert!(with_emotes.validate().is_ok());
        let bad_url = StylerConfig {
            vllm_endpoints: vec!["ftp://x".into()],
            ..StylerConfig::default()
        };
        assert_eq!(
            bad_url.validate().map_err(|error| error.kind),
            Err(ErrorKind::InvalidEndpoint)
        );
        for bad in [
            StylerConfig {
                deadline_ms: 0,
                ..StylerConfig::default()
            },
            StylerConfig {
                batch_prompts_max: 0,
                ..StylerConfig::default()
            },
            StylerConfig {
                max_tokens: 0,
                ..StylerConfig::default()
            },
            StylerConfig {
                model: String::new(),
                ..StylerConfig::default()
            },
            StylerConfig {
                temperature: f32::NAN,
                ..StylerConfig::default()
            },
            StylerConfig {
                protected_words: vec!["twiGG".into(), "two words".into()],
                ..StylerConfig::default()
            },
            StylerConfig {
                protected_words: vec![String::new()],
                ..StylerConfig::default()
            },
            StylerConfig {
                protected_words: vec!["[E1]".into()],
                ..StylerConfig::default()
            },
            StylerConfig {
                protected_words: (0..=PROTECTED_WORDS_MAX).map(|n| format!("w{n}")).collect(),
                ..StylerConfig::default()
            },
        ] {
            assert_eq!(
                bad.validate().map_err(|error| error.kind),
                Err(ErrorKind::InvalidConfig),
                "{bad:?}"
            );
        }
        assert_eq!("list".parse::<BatchMode>().ok(), Some(BatchMode::List));
        assert_eq!(
            "concurrent".parse::<BatchMode>().ok(),
            Some(BatchMode::Concurrent)
        );
        assert!("both".parse::<BatchMode>().is_err());
    }

    #[test]
    fn public_style_table() {
        assert_eq!(
            style_names(),
            ["brainrot", "pirate", "shakespeare", "corporate"]
        );
        for name in style_names() {
            assert!(
                style_description(name)
                    .is_some_and(|line| !line.is_empty() && !line.contains('\n'))
            );
            let prompt = llm_prompt(name, "hi\nthere").expect("known style");
            let opener = llm_opener(name, 0).expect("known style");
            assert!(
                prompt.ends_with(&format!(
                    ": hi there<|im_end|>\n<|im_start|>assistant\n{opener}"
                )),
                "{prompt}"
            );
            let plain =
                llm_prompt_with(ChatTemplate::Plain, name, "hi\nthere", "").expect("known style");
            assert!(plain.ends_with("Message: hi there\nRewritten:"), "{plain}");
        }
        assert_eq!(style_description("klingon"), None);
        assert_eq!(llm_prompt("klingon", "hi"), None);
        assert_eq!(local_rewrite("klingon", "\u{0}", 1), "…");
    }
}

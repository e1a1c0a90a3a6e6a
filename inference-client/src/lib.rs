//! Skibidification for Twitchy Chat: every chat message is rewritten in its room's style before delivery.
//!
//! (Full internals doc below is completed with the vLLM client.)

pub mod rt;
pub mod sanitize;
mod style;

mod local;
mod metrics;

pub use local::LocalStyler;
pub use metrics::{FallbackReason, MetricsTotals};
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
    /// Most tokens a completion may generate.
    pub max_tokens: u32,
}

impl Default for StylerConfig {
    fn default() -> Self {
        StylerConfig {
            vllm_endpoints: Vec::new(),
            model: "tiny".to_owned(),
            deadline_ms: 150,
            batch_prompts_max: 32,
            batch_wait_us_max: 2_000,
            max_tokens: 40,
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
/// characters. An unknown style returns the sanitised text (or `"…"` when nothing of it is left).
pub fn local_rewrite(style: &str, text: &str, seed: u64) -> String {
    match style::style_index(style) {
        Some(index) => style::local_rewrite_indexed(index, text, seed),
        None => local::unstyled(text),
    }
}

/// Builds the styler factory the engine hands to its shards.
pub fn styler_factory(config: StylerConfig) -> std::sync::Arc<dyn StylerFactory> {
    std::sync::Arc::new(local::LocalStylerFactory::new(&config))
}

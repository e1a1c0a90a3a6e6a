//! The local rule-based styler: the default [`Styler`], and the fallback of the vLLM client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::metrics::{FallbackReason, ShardMetrics};
use crate::protect::ProtectedWords;
use crate::{Styled, StyledBy, Styler, style};

/// What an unknown style returns: the sanitised text (cut as [`ProtectedWords::sanitize`] cuts it), or an ellipsis
/// when nothing of it is left, so the result is never empty.
pub(crate) fn unstyled(text: &str, protected: &ProtectedWords) -> String {
    let out = protected.sanitize(text);
    if out.is_empty() {
        "…".to_owned()
    } else {
        out
    }
}

/// Styles every message with the local rewriter; resolves immediately.
#[derive(Debug)]
pub struct LocalStyler {
    metrics: Arc<ShardMetrics>,
    /// This shard's copy of the protected words.
    protected: ProtectedWords,
}

impl LocalStyler {
    pub(crate) fn new(metrics: Arc<ShardMetrics>, protected: ProtectedWords) -> Self {
        LocalStyler { metrics, protected }
    }

    pub(crate) fn protected(&self) -> &ProtectedWords {
        &self.protected
    }

    /// The local rewrite of a message, counted as a fallback for `reason`.
    pub(crate) fn rewrite(
        &self,
        style_index: Option<usize>,
        text: &str,
        seed: u64,
        reason: FallbackReason,
    ) -> Styled {
        self.metrics.fallback(reason);
        let text = match style_index {
            Some(index) => style::local_rewrite_indexed(index, text, seed, &self.protected),
            None => unstyled(text, &self.protected),
        };
        Styled {
            text,
            by: StyledBy::Local,
        }
    }
}

impl Styler for LocalStyler {
    fn style(&self, style: &str, text: &str, seed: u64) -> Pin<Box<dyn Future<Output = Styled>>> {
        let styled = match style::style_index(style) {
            Some(index) => self.rewrite(Some(index), text, seed, FallbackReason::Disabled),
            None => self.rewrite(None, text, seed, FallbackReason::UnknownStyle),
        };
        Box::pin(std::future::ready(styled))
    }
}

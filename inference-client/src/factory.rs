//! The factory shared by all shards: the parsed configuration and the metrics of every shard.

use std::rc::Rc;

use crate::http::EndpointUrl;
use crate::llm::LlmStyler;
use crate::local::LocalStyler;
use crate::metrics::{MetricsTotals, SharedMetrics};
use crate::protect::{ProtectedWords, check_protected_word};
use crate::{Styler, StylerConfig, StylerFactory};

/// Builds a [`LlmStyler`] per shard when endpoints are configured, a [`LocalStyler`] otherwise.
#[derive(Debug)]
pub struct ClusterStylerFactory {
    config: StylerConfig,
    urls: Vec<EndpointUrl>,
    /// Prepared once; every shard's styler gets its own copy.
    protected: ProtectedWords,
    metrics: SharedMetrics,
}

impl ClusterStylerFactory {
    pub fn new(config: StylerConfig) -> Self {
        let urls: Vec<EndpointUrl> = config
            .vllm_endpoints
            .iter()
            .filter_map(|url| match EndpointUrl::parse(url) {
                Ok(url) => Some(url),
                Err(error) => {
                    log::error!("styler endpoint left out: {error}");
                    None
                }
            })
            .collect();
        for word in &config.protected_words {
            if let Err(error) = check_protected_word(word) {
                log::error!("{error}: left out");
            }
        }
        let protected = ProtectedWords::new(&config.protected_words);
        if protected.len() < config.protected_words.len() {
            log::warn!(
                "{} of {} protected words kept (invalid ones, repeats and any beyond {} are left out)",
                protected.len(),
                config.protected_words.len(),
                crate::PROTECTED_WORDS_MAX
            );
        }
        let metrics = SharedMetrics::new(urls.iter().map(|url| url.base.clone()).collect());
        ClusterStylerFactory {
            config,
            urls,
            protected,
            metrics,
        }
    }

    /// Sums of the main counters across shards, for tests and load tools.
    pub fn totals(&self) -> MetricsTotals {
        self.metrics.totals()
    }
}

impl StylerFactory for ClusterStylerFactory {
    fn local_styler(&self, shard: usize) -> Rc<dyn Styler> {
        let metrics = self.metrics.register(shard);
        if self.urls.is_empty() {
            Rc::new(LocalStyler::new(metrics, self.protected.clone()))
        } else {
            Rc::new(LlmStyler::start(
                self.config.clone(),
                self.urls.clone(),
                self.protected.clone(),
                metrics,
            ))
        }
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}

//! The vLLM styler of one shard: cache, admission, micro-batching, least-outstanding balancing over the cluster, a
//! circuit breaker and health probes per endpoint, and the deadline-and-fallback wrapper around it all.
//!
//! A message's path: [`LlmStyler::style`] sanitises it and replaces its protected words with placeholders (a message
//! of protected words alone is delivered as it is), answers from the cache if it can, and otherwise asks admission
//! control for a slot; without one (or without a healthy endpoint) it resolves at once with the local rewrite. An
//! admitted prompt joins the shard's [`Batcher`]; the dispatcher task sends due batches to the endpoint with the
//! fewest outstanding prompts; the send task sanitises each completion, passes it through the quality gate, puts the
//! protected words back and checks them, and hands it to the waiting message through a oneshot channel. The
//! message's future races that channel against its deadline timer and falls back to the local rewrite when the timer
//! wins; a completion that arrives later only fills the cache.
//!
//! Architecture invariant: everything here is shard-local (`Rc`, `RefCell`, glommio tasks); the only shared state is
//! the metrics block this shard alone writes.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::admission::Admission;
use crate::batcher::Batcher;
use crate::breaker::Breaker;
use crate::cache::CompletionCache;
use crate::http::{EndpointUrl, HttpLimits, LocalHttpClient};
use crate::local::LocalStyler;
use crate::metrics::{FallbackReason, ShardMetrics};
use crate::openai::{CompletionParams, decode_completion_response, encode_completion_request};
use crate::protect::{ProtectedWords, Shield};
use crate::{
    BatchMode, ErrorKind, STYLED_CHARS_MAX, Styled, StyledBy, Styler, StylerConfig, gate, prompt,
    sanitize, style,
};

/// What a waiting message receives: the text to deliver (a sanitised completion with the protected words back), or
/// why there is none.
type Outcome = Result<String, FallbackReason>;

/// An admitted prompt waiting in the batcher or in flight.
struct Pending {
    style_index: usize,
    /// The sanitised message with its protected words replaced by placeholders: what the model sees, the cache key,
    /// and what the quality gate judges the completion against.
    text: Rc<str>,
    /// The protected words the placeholders stand for, in order (`[E1]` is the first); empty for most messages.
    codes: Vec<Box<str>>,
    prompt: String,
    /// The text the prompt starts the answer with; the delivered text is this and the model's continuation.
    opener: &'static str,
    max_tokens: u32,
    reply: oneshot::Sender<Outcome>,
}

/// A wake-up flag for one task, shard-local.
#[derive(Default)]
struct LocalNotify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One endpoint as this shard sees it.
struct LocalEndpoint {
    client: LocalHttpClient,
    breaker: RefCell<Breaker>,
    requests_in_flight: Cell<usize>,
    prompts_outstanding: Cell<usize>,
    probe_in_flight: Cell<bool>,
}

struct State {
    batcher: Batcher<Pending>,
    admission: Admission,
    cache: CompletionCache,
    /// A running estimate of how long a request takes, from send to answer; prompts with less time left than this
    /// are shed to the local rewrite instead of spending model time on a completion nobody will see.
    request_latency_estimate: Option<Duration>,
    /// Where the least-outstanding search starts, rotated so ties spread over the endpoints.
    rotation: usize,
    stopped: bool,
}

struct Inner {
    config: StylerConfig,
    params: CompletionParams,
    deadline: Duration,
    request_timeout: Duration,
    local: LocalStyler,
    metrics: Arc<ShardMetrics>,
    endpoints: Vec<LocalEndpoint>,
    state: RefCell<State>,
    /// Wakes the dispatcher: a batch may be due or a request slot freed. Outside `Inner` so the dispatcher can wait
    /// on it without keeping `Inner` alive.
    dispatch: Rc<LocalNotify>,
}

/// The shard-local vLLM styler. Dropping it stops its dispatcher and health tasks; queued messages then get the
/// local rewrite at once.
pub struct LlmStyler {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for LlmStyler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("LlmStyler")
            .field("endpoints", &self.inner.endpoints.len())
            .field("queued", &state.batcher.len())
            .field("outstanding", &state.admission.outstanding())
            .field("admission_limit", &state.admission.limit())
            .finish()
    }
}

impl LlmStyler {
    /// Builds the styler and starts its tasks on the current glommio executor.
    pub(crate) fn start(
        config: StylerConfig,
        urls: Vec<EndpointUrl>,
        protected: ProtectedWords,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        let limits = HttpLimits {
            connect_timeout_ms: config.connect_timeout_ms,
            connections_idle_max: config.requests_in_flight_per_endpoint_max.max(1),
            response_bytes_max: config.response_bytes_max,
        };
        let endpoints = urls
            .into_iter()
            .map(|url| LocalEndpoint {
                client: LocalHttpClient::new(url, limits),
                breaker: RefCell::new(Breaker::new(
                    config.breaker_failures_max,
                    Duration::from_millis(config.breaker_open_ms),
                )),
                requests_in_flight: Cell::new(0),
                prompts_outstanding: Cell::new(0),
                probe_in_flight: Cell::new(false),
            })
            .collect();
        let deadline = Duration::from_millis(config.deadline_ms.max(1));
        let target = deadline * config.admission_target_percent.clamp(1, 100) as u32 / 100;
        let state = State {
            batcher: Batcher::new(
                config.batch_prompts_max.max(1),
                Duration::from_micros(config.batch_wait_us_max),
            ),
            admission: Admission::new(
                config.admission_prompts_initial,
                config.admission_prompts_min,
                config.admission_prompts_max,
                target,
            ),
            cache: CompletionCache::new(config.cache_entries_max),
            request_latency_estimate: None,
            rotation: 0,
            stopped: false,
        };
        metrics.admission_limit.store(
            state.admission.limit() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let inner = Rc::new(Inner {
            params: CompletionParams {
                model: config.model.clone(),
                max_tokens: config.max_tokens,
                temperature: config.temperature,
                frequency_penalty: config.frequency_penalty,
                stop: config.chat_template.stop_sequences(),
            },
            deadline,
            // A completion that misses its deadline still fills the cache, so a request may take longer than the
            // deadline; a timeout shorter than the deadline would only turn a slow model into a dead one.
            request_timeout: Duration::from_millis(
                config.request_timeout_ms.max(2 * config.deadline_ms).max(1),
            ),
            local: LocalStyler::new(Arc::clone(&metrics), protected),
            metrics,
            endpoints,
            state: RefCell::new(state),
            dispatch: Rc::new(LocalNotify::default()),
            config,
        });
        glommio::spawn_local(dispatcher(
            Rc::downgrade(&inner),
            Rc::clone(&inner.dispatch),
        ))
        .detach();
        glommio::spawn_local(health_checker(Rc::downgrade(&inner))).detach();
        LlmStyler { inner }
    }

    /// The current admission limit, in outstanding prompts.
    pub fn admission_limit(&self) -> usize {
        self.inner.state.borrow().admission.limit()
    }
}

impl Drop for LlmStyler {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        state.stopped = true;
        let queued = state.batcher.drain_all();
        state.admission.release(queued.len());
        drop(state);
        // Dropping the reply senders resolves the waiting messages with the local rewrite.
        drop(queued);
        self.inner.dispatch.notify();
    }
}

impl Styler for LlmStyler {
    fn style(&self, style: &str, text: &str, seed: u64) -> Pin<Box<dyn Future<Output = Styled>>> {
        let inner = &self.inner;
        let Some(style_index) = style::style_index(style) else {
            return ready(
                inner
                    .local
                    .rewrite(None, text, seed, FallbackReason::UnknownStyle),
            );
        };
        let protected = inner.local.protected();
        let sanitized = protected.sanitize(text);
        if sanitized.is_empty() {
            return ready(inner.local.rewrite(
                Some(style_index),
                "",
                seed,
                FallbackReason::EmptyText,
            ));
        }
        // `key` is what the model sees and the cache holds; `text` is what the local rewrite styles if the model's
        // answer is not used. They differ only for a message with protected words.
        let (key, text, codes): (Rc<str>, Rc<str>, Vec<Box<str>>) =
            match protected.shield(&sanitized) {
                Shield::Plain => {
                    let text: Rc<str> = sanitized.into();
                    (Rc::clone(&text), text, Vec::new())
                }
                // Nothing to style; the local rewriter returns such a message as it is.
                Shield::Only => {
                    return ready(inner.local.rewrite(
                        Some(style_index),
                        &sanitized,
                        seed,
                        FallbackReason::EmoteOnly,
                    ));
                }
                Shield::Conflict => {
                    return ready(inner.local.rewrite(
                        Some(style_index),
                        &sanitized,
                        seed,
                        FallbackReason::Emotes,
                    ));
                }
                Shield::Placeholders { text, codes } => (text.into(), sanitized.into(), codes),
            };
        let now = Instant::now();
        let mut state = inner.state.borrow_mut();
        if let Some(hit) = state.cache.get(style_index, &key) {
            drop(state);
            // The cache holds completions with placeholders: another message with the same text around other
            // protected words shares them, and the words are put back (and checked) for each message.
            return ready(match protected.restore(&hit, &codes) {
                Some(restored) => {
                    inner
                        .metrics
                        .cache_hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    inner.metrics.llm();
                    Styled {
                        text: restored,
                        by: StyledBy::Llm,
                    }
                }
                None => inner
                    .local
                    .rewrite(Some(style_index), &text, seed, FallbackReason::Emotes),
            });
        }
        let opener = prompt::opener(style_index, seed, inner.config.assistant_prefill);
        let prompt = prompt::build(inner.config.chat_template, style_index, &key, opener);
        let reason = if prompt.len() > inner.config.prompt_bytes_max {
            Some(FallbackReason::TooLong)
        } else if state.stopped
            || !inner
                .endpoints
                .iter()
                .any(|endpoint| endpoint.breaker.borrow().is_healthy())
        {
            Some(FallbackReason::Unavailable)
        } else if !state.admission.try_admit() {
            Some(FallbackReason::Overload)
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(state);
            return ready(inner.local.rewrite(Some(style_index), &text, seed, reason));
        }
        let (reply, receiver) = oneshot::channel();
        state.batcher.push(
            now,
            Pending {
                style_index,
                max_tokens: prompt::max_tokens(style_index, &key, inner.config.max_tokens),
                text: key,
                codes,
                prompt,
                opener,
                reply,
            },
        );
        // The dispatcher needs waking only when a batch becomes possible or full; in between its timer covers it.
        let queued = state.batcher.len();
        if queued == 1 || queued >= state.batcher.batch_items_max() {
            inner.dispatch.notify();
        }
        drop(state);

        let deadline_at = now + inner.deadline;
        let inner = Rc::clone(inner);
        Box::pin(async move {
            let completion = async { receiver.await.unwrap_or(Err(FallbackReason::Error)) };
            let timer = async {
                glommio::timer::Timer::new(deadline_at.saturating_duration_since(Instant::now()))
                    .await;
                Err(FallbackReason::Deadline)
            };
            match futures_lite::future::or(completion, timer).await {
                Ok(completion) => {
                    inner.metrics.llm();
                    Styled {
                        text: completion,
                        by: StyledBy::Llm,
                    }
                }
                Err(reason) => inner.local.rewrite(Some(style_index), &text, seed, reason),
            }
        })
    }
}

fn ready(styled: Styled) -> Pin<Box<dyn Future<Output = Styled>>> {
    Box::pin(std::future::ready(styled))
}

/// Prompts on their way to one endpoint in one request, with their admission times.
struct Flight {
    endpoint: usize,
    prompts: Vec<(Instant, Pending)>,
    /// Outstanding prompts on this shard when the flight left: says whether the admission limit was the constraint.
    outstanding_at_send: usize,
}

/// What the dispatcher does next.
enum Dispatch {
    /// Send these requests (one flight each).
    Send(Vec<Flight>),
    /// Nothing to send before this instant (or before a notification, when `None`).
    Wait(Option<Instant>),
}

impl Inner {
    fn next_dispatch(&self, now: Instant) -> Dispatch {
        let mut state = self.state.borrow_mut();
        // Prompts whose message already gave up (deadline passed) are not worth GPU time, and neither are those
        // that cannot be answered before their deadline: the oldest are shed first, at once, to the local rewrite.
        let dropped = state.batcher.retain(|pending| !pending.reply.is_canceled());
        if dropped > 0 {
            state.admission.release(dropped);
        }
        // An estimate beyond the deadline would shed every prompt and never be measured again: then the next batch
        // goes anyway and measures the endpoint afresh.
        if let Some(latency) = state
            .request_latency_estimate
            .filter(|latency| *latency < self.deadline)
        {
            let expired = state
                .batcher
                .take_while_oldest(|admitted| *admitted + self.deadline < now + latency);
            if !expired.is_empty() {
                state.admission.release(expired.len());
                for (_, pending) in expired {
                    let _ = pending.reply.send(Err(FallbackReason::Deadline));
                }
            }
        }
        let Some(due_at) = state.batcher.due_at() else {
            return Dispatch::Wait(None);
        };
        if due_at > now {
            return Dispatch::Wait(Some(due_at));
        }
        let slots_max = self.config.requests_in_flight_per_endpoint_max.max(1);
        let count = self.endpoints.len();
        let mut best: Option<usize> = None;
        let mut any_healthy = false;
        for step in 0..count {
            let index = (state.rotation + step) % count;
            let endpoint = &self.endpoints[index];
            let breaker = endpoint.breaker.borrow();
            any_healthy |= breaker.is_healthy();
            if !breaker.admits() || endpoint.requests_in_flight.get() >= slots_max {
                continue;
            }
            if best.is_none_or(|best| {
                endpoint.prompts_outstanding.get() < self.endpoints[best].prompts_outstanding.get()
            }) {
                best = Some(index);
            }
        }
        let Some(index) = best else {
            if !any_healthy {
                // No endpoint will take these soon: deliver them locally now rather than at their deadline.
                let queued = state.batcher.drain_all();
                state.admission.release(queued.len());
                drop(state);
                for pending in queued {
                    let _ = pending.reply.send(Err(FallbackReason::Unavailable));
                }
            }
            // Every admitting endpoint is at its request limit; a finishing request wakes the dispatcher.
            return Dispatch::Wait(None);
        };
        state.rotation = state.rotation.wrapping_add(1);
        let endpoint = &self.endpoints[index];
        let prompts_max = match self.config.batch_mode {
            BatchMode::List => usize::MAX,
            BatchMode::Concurrent => slots_max - endpoint.requests_in_flight.get(),
        };
        // The newest prompts go first: they have the most time left, so under overload the model answers as many
        // messages in time as it can, and the oldest wait out their (short) remaining time or are shed. A batch holds
        // one style, so its prompts share their long prefix (system line and examples), which the server's prefix
        // cache keeps per sequence.
        let batch = state
            .batcher
            .take_newest_alike(prompts_max, |a, b| a.style_index == b.style_index);
        endpoint.breaker.borrow_mut().on_dispatch();
        self.metrics.batch_prompts.observe(batch.len() as u64);
        let outstanding_at_send = state.admission.outstanding();
        // The in-flight counts move here, not in the send tasks, so the next decision already sees them.
        endpoint
            .prompts_outstanding
            .set(endpoint.prompts_outstanding.get() + batch.len());
        let flights: Vec<Flight> = match self.config.batch_mode {
            BatchMode::List => vec![Flight {
                endpoint: index,
                prompts: batch,
                outstanding_at_send,
            }],
            BatchMode::Concurrent => batch
                .into_iter()
                .map(|prompt| Flight {
                    endpoint: index,
                    prompts: vec![prompt],
                    outstanding_at_send,
                })
                .collect(),
        };
        endpoint
            .requests_in_flight
            .set(endpoint.requests_in_flight.get() + flights.len());
        Dispatch::Send(flights)
    }

    /// What a viewer may see of a raw completion: sanitised, passed by the quality gate, after the opener; or why
    /// not.
    fn judge(&self, pending: &Pending, raw: Option<String>) -> Result<String, FallbackReason> {
        let raw = raw.ok_or(FallbackReason::Error)?;
        let generated = sanitize::sanitize_completion(&raw, STYLED_CHARS_MAX)
            .map_err(|_| FallbackReason::Garbage)?;
        if self.config.quality_gate {
            let verdict = gate::assess(
                pending.style_index,
                &pending.text,
                pending.opener,
                &generated,
            )
            .verdict();
            if let Err(rejection) = verdict {
                log::debug!(
                    "completion rejected ({}): {:?} -> {:?}",
                    rejection.as_str(),
                    pending.text,
                    generated
                );
                return Err(FallbackReason::from_rejection(rejection));
            }
        }
        if pending.opener.is_empty() {
            return Ok(generated);
        }
        sanitize::sanitize_completion(&format!("{}{raw}", pending.opener), STYLED_CHARS_MAX)
            .map_err(|_| FallbackReason::Garbage)
    }

    fn publish_health(&self, index: usize) {
        let healthy = self.endpoints[index].breaker.borrow().is_healthy();
        self.metrics.endpoints[index]
            .healthy
            .store(u64::from(healthy), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends one flight's request and delivers the outcomes.
    async fn send(self: Rc<Self>, flight: Flight) {
        let Flight {
            endpoint: index,
            prompts: batch,
            outstanding_at_send,
        } = flight;
        let endpoint = &self.endpoints[index];
        let prompt_count = batch.len();
        let oldest_admitted = batch
            .first()
            .map_or_else(Instant::now, |(admitted, _)| *admitted);

        let prompt_refs: Vec<&str> = batch
            .iter()
            .map(|(_, pending)| pending.prompt.as_str())
            .collect();
        // One request carries one limit: the largest any of its prompts may take (stop sequences end the others).
        let params = CompletionParams {
            max_tokens: batch
                .iter()
                .map(|(_, pending)| pending.max_tokens)
                .max()
                .unwrap_or(self.params.max_tokens),
            ..self.params.clone()
        };
        let body = Bytes::from(encode_completion_request(&params, &prompt_refs));
        let sent_at = Instant::now();
        let result = endpoint
            .client
            .request(
                http::Method::POST,
                "/v1/completions",
                Some(body),
                self.request_timeout,
            )
            .await;
        let now = Instant::now();
        endpoint
            .requests_in_flight
            .set(endpoint.requests_in_flight.get() - 1);
        endpoint
            .prompts_outstanding
            .set(endpoint.prompts_outstanding.get() - prompt_count);
        let endpoint_metrics = &self.metrics.endpoints[index];
        let latency = now.saturating_duration_since(sent_at);
        endpoint_metrics
            .latency_us
            .observe(latency.as_micros() as u64);

        let decoded = result.and_then(|response| {
            if response.status == 200 {
                decode_completion_response(&response.body, prompt_count)
            } else {
                Err(crate::Error::new(
                    ErrorKind::Status(response.status),
                    "completion request",
                ))
            }
        });
        let mut state = self.state.borrow_mut();
        state.admission.release(prompt_count);
        match decoded {
            Ok(texts) => {
                endpoint.breaker.borrow_mut().on_success();
                state.request_latency_estimate = Some(match state.request_latency_estimate {
                    // An exponentially weighted average, a quarter weight on the newest request.
                    Some(estimate) => (estimate * 3 + latency) / 4,
                    None => latency,
                });
                state.admission.on_batch_done(
                    now,
                    oldest_admitted,
                    prompt_count,
                    outstanding_at_send,
                );
                for ((_, pending), raw) in batch.into_iter().zip(texts) {
                    let outcome = self.judge(&pending, raw).and_then(|clean| {
                        let Some(restored) = self.local.protected().restore(&clean, &pending.codes)
                        else {
                            log::debug!(
                                "completion lost or invented protected words: {:?} -> {:?}",
                                pending.text,
                                clean
                            );
                            return Err(FallbackReason::Emotes);
                        };
                        // Only completions whose protected words check out are cached, with their placeholders.
                        state.cache.insert(
                            pending.style_index,
                            Rc::clone(&pending.text),
                            clean.into(),
                        );
                        Ok(restored)
                    });
                    if pending.reply.send(outcome).is_err() {
                        self.metrics
                            .late_completions
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if now.saturating_duration_since(oldest_admitted) > self.deadline {
                    state
                        .admission
                        .on_deadline_missed(now, now.saturating_duration_since(oldest_admitted));
                }
            }
            Err(error) => {
                log::debug!("{}: {error}", endpoint.client.url().base);
                match error.kind {
                    ErrorKind::Timeout => endpoint_metrics
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    _ => endpoint_metrics
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
                // A 4xx other than 408 and 429 is about the request, not the endpoint: it stays in service.
                let endpoint_at_fault = !matches!(error.kind, ErrorKind::Status(status)
                    if (400..500).contains(&status) && status != 408 && status != 429);
                if endpoint_at_fault {
                    endpoint.breaker.borrow_mut().on_failure(now);
                    endpoint.client.close_idle();
                } else {
                    endpoint.breaker.borrow_mut().on_success();
                }
                if error.kind == ErrorKind::Timeout {
                    state
                        .admission
                        .on_deadline_missed(now, now.saturating_duration_since(oldest_admitted));
                }
                for (_, pending) in batch {
                    let _ = pending.reply.send(Err(FallbackReason::Error));
                }
            }
        }
        self.metrics.admission_limit.store(
            state.admission.limit() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        drop(state);
        self.publish_health(index);
        self.dispatch.notify();
    }

    /// Probes one endpoint's `/health` and moves its breaker.
    async fn probe(self: Rc<Self>, index: usize) {
        let endpoint = &self.endpoints[index];
        let timeout = Duration::from_millis(self.config.health_timeout_ms.max(1));
        let result = endpoint
            .client
            .request(http::Method::GET, "/health", None, timeout)
            .await;
        endpoint.probe_in_flight.set(false);
        let now = Instant::now();
        match result {
            Ok(response) if response.status == 200 => endpoint.breaker.borrow_mut().on_probe_ok(),
            Ok(response) => {
                log::debug!(
                    "{} /health answered {}",
                    endpoint.client.url().base,
                    response.status
                );
                endpoint.breaker.borrow_mut().on_probe_failed(now, false);
            }
            Err(error) => {
                log::debug!("{} /health: {error}", endpoint.client.url().base);
                let refused = error.kind == ErrorKind::Connect;
                endpoint.breaker.borrow_mut().on_probe_failed(now, refused);
                endpoint.client.close_idle();
            }
        }
        self.publish_health(index);
        self.dispatch.notify();
    }
}

/// Sends due batches until the styler is dropped.
async fn dispatcher(inner: Weak<Inner>, notify: Rc<LocalNotify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.state.borrow().stopped {
            return;
        }
        match strong.next_dispatch(Instant::now()) {
            Dispatch::Send(flights) => {
                for flight in flights {
                    glommio::spawn_local(Rc::clone(&strong).send(flight)).detach();
                }
            }
            Dispatch::Wait(until) => {
                drop(strong);
                match until {
                    Some(until) => {
                        let timer = glommio::timer::Timer::new(
                            until.saturating_duration_since(Instant::now()),
                        );
                        futures_lite::future::or(notify.wait(), async {
                            timer.await;
                        })
                        .await;
                    }
                    None => notify.wait().await,
                }
            }
        }
    }
}

/// Probes every endpoint's `/health` each interval until the styler is dropped.
async fn health_checker(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(strong) => Duration::from_millis(strong.config.health_interval_ms.max(1)),
        None => return,
    };
    loop {
        {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.state.borrow().stopped {
                return;
            }
            let now = Instant::now();
            for (index, endpoint) in strong.endpoints.iter().enumerate() {
                if endpoint.probe_in_flight.get() || !endpoint.breaker.borrow().wants_probe(now) {
                    continue;
                }
                endpoint.probe_in_flight.set(true);
                glommio::spawn_local(Rc::clone(&strong).probe(index)).detach();
            }
        }
        glommio::timer::sleep(interval).await;
    }
}

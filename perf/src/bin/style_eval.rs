//! The style evaluation: how well a live model rewrites chat in each room style, and how many messages it can style
//! under a deadline.
//!
//! `quality` (the default): every line of the corpus (`perf/corpus/chat-lines.txt`) goes to the endpoint in each
//! style, with exactly the client's prompts (chat template, few-shot examples, stop sequences, per-style token
//! limit), in lists of `--batch` prompts per request. Each completion is sanitised and judged by the client's
//! quality gate; the report gives per style the share the gate accepts, the in-style rate, the content words kept,
//! echoes, prompt leaks, off-topic completions, latency p50/p99 per request, completions per second, and sample
//! pairs.
//!
//! `load`: the whole styler (cache, admission, batching, deadline, gate) on one glommio shard, offered `--rate`
//! messages per second spread over `--rooms` rooms (room `i` has style `i mod 4`) for `--seconds`; reports the
//! share of messages the model styled, by way of the cache or not, the added latency every message saw, and the
//! fallbacks by reason.
//!
//! Prints a Markdown report on stdout and, with `--json`, writes the figures to a file. Start a model server first
//! (`inference-client/model-server/serve.sh start`), then e.g.
//! `cargo run --release -p twitchy-perf --bin style_eval -- --url http://127.0.0.1:18431`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use twitchy_inference::http::{EndpointUrl, HttpLimits, LocalHttpClient};
use twitchy_inference::openai::{
    CompletionParams, decode_completion_response, encode_completion_request,
};
use twitchy_inference::{
    ChatTemplate, ClusterStylerFactory, FallbackReason, STYLED_CHARS_MAX, StyledBy, StylerConfig,
    StylerFactory, assess_completion, sanitize_completion, sanitize_text,
};

#[derive(Debug, Parser)]
#[command(
    about = "Style quality and LLM share of the styler against a live OpenAI-compatible endpoint"
)]
struct Args {
    /// `quality` or `load`.
    #[arg(long, default_value = "quality")]
    mode: String,
    /// Base URL of the model server.
    #[arg(long, default_value = "http://127.0.0.1:18431")]
    url: String,
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// The corpus, one chat line per line (`#` starts a comment).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/chat-lines.txt"))]
    corpus: String,
    /// Styles to evaluate, comma-separated; all by default.
    #[arg(long, value_delimiter = ',')]
    styles: Vec<String>,
    /// Use only the first this many corpus lines (0: all).
    #[arg(long, default_value_t = 0)]
    lines: usize,
    /// Prompts per request in `quality` mode.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// `chatml`, `llama3` or `plain`; or `legacy`, the zero-shot completion prompts the client sent before chat
    /// templates and examples (with `--temperature 0.8 --max-tokens 16` it reproduces that client), as a baseline.
    #[arg(long, default_value = "chatml")]
    template: String,
    #[arg(long, default_value_t = StylerConfig::default().temperature)]
    temperature: f32,
    #[arg(long, default_value_t = StylerConfig::default().frequency_penalty)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = StylerConfig::default().max_tokens)]
    max_tokens: u32,
    /// Do not start the answers with the style's openers.
    #[arg(long)]
    no_prefill: bool,
    /// Sample pairs printed per style.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// `load`: offered messages per second.
    #[arg(long, default_value_t = 417.0)]
    rate: f64,
    /// `load`: seconds the load runs.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// `load`: rooms the messages spread over.
    #[arg(long, default_value_t = 8)]
    rooms: usize,
    /// `load`: the styler's deadline.
    #[arg(long, default_value_t = 2_000)]
    deadline_ms: u64,
    /// `load`: most prompts per batch.
    #[arg(long, default_value_t = 8)]
    batch_prompts_max: usize,
    /// `load`: most requests in flight to the endpoint.
    #[arg(long, default_value_t = 1)]
    requests_in_flight: usize,
    /// `load`: share of messages made unique (a corpus line with a number added), so that the cache cannot
    /// answer them; the rest repeat corpus lines as they are, like chat's "gg" and "lol".
    #[arg(long, default_value_t = 0.8)]
    unique_share: f64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<String>,
}

fn on_shard<G, F, T>(body: G) -> anyhow::Result<T>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    twitchy_inference::rt::run_on_new_shard(2 << 20, body).map_err(anyhow::Error::msg)
}

fn percentile_ms(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * quantile).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1_000.0
}

fn read_corpus(args: &Args) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading the corpus {}", args.corpus))?;
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if args.lines > 0 {
        lines.truncate(args.lines);
    }
    if lines.is_empty() {
        bail!("the corpus {} has no lines", args.corpus);
    }
    Ok(lines)
}

fn styles(args: &Args) -> anyhow::Result<Vec<String>> {
    if args.styles.is_empty() {
        return Ok(twitchy_inference::style_names()
            .iter()
            .map(|name| (*name).to_owned())
            .collect());
    }
    for style in &args.styles {
        if !twitchy_inference::style_names().contains(&style.as_str()) {
            bail!("unknown style {style:?}");
        }
    }
    Ok(args.styles.clone())
}

/// The client's prompts before chat templates and few-shot examples, kept as the evaluation's baseline.
fn legacy_prompt(style: &str, message: &str) -> String {
    let ask = match style {
        "brainrot" => "in Gen-Z brainrot slang (bestie, fr fr, no cap, slay, bussin, emoji)",
        "pirate" => "as a pirate would say it (arr, matey, ye, aye)",
        "shakespeare" => "in the English of Shakespeare (thou, thee, hark, prithee, forsooth)",
        _ => "in corporate jargon (circle back, synergy, leverage, align, action items)",
    };
    let message = sanitize_text(message, STYLED_CHARS_MAX);
    format!(
        "Rewrite the chat message {ask}. Keep its meaning and its words. One line.\nMessage: {message}\nRewritten:"
    )
}

/// The opener the client would start the answer to line `index` with.
fn opener_of(args: &Args, style: &str, index: usize) -> &'static str {
    if args.no_prefill || args.template == "legacy" {
        ""
    } else {
        twitchy_inference::llm_opener(style, index as u64).unwrap_or_default()
    }
}

/// One completion as the client would see it.
struct Judged {
    message: String,
    completion: Option<String>,
    verdict: &'static str,
}

/// Sends every line in `style`, `batch` prompts per request, one request at a time; returns the raw completions
/// and the latency of each request.
fn complete_all(
    args: &Args,
    style: &str,
    lines: &[String],
) -> anyhow::Result<(Vec<Option<String>>, Vec<u64>, Duration)> {
    let url = EndpointUrl::parse(&args.url)?;
    let legacy = args.template == "legacy";
    let template: ChatTemplate = if legacy {
        ChatTemplate::Plain
    } else {
        args.template.parse()?
    };
    let params = CompletionParams {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        frequency_penalty: args.frequency_penalty,
        stop: template.stop_sequences(),
    };
    let batch = args.batch.max(1);
    let style = style.to_owned();
    let openers: Vec<&'static str> = (0..lines.len())
        .map(|index| opener_of(args, &style, index))
        .collect();
    let lines = lines.to_vec();
    let cap = args.max_tokens;
    on_shard(move || async move {
        let client = LocalHttpClient::new(
            url,
            HttpLimits {
                connect_timeout_ms: 1_000,
                connections_idle_max: 1,
                response_bytes_max: 4 << 20,
            },
        );
        let mut completions = Vec::with_capacity(lines.len());
        let mut latencies_us = Vec::new();
        let started = Instant::now();
        for (chunk_index, chunk) in lines.chunks(batch).enumerate() {
            let prompts: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(offset, line)| {
                    if legacy {
                        legacy_prompt(&style, line)
                    } else {
                        let opener = openers[chunk_index * batch + offset];
                        twitchy_inference::llm_prompt_with(template, &style, line, opener)
                            .unwrap_or_default()
                    }
                })
                .collect();
            let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let max_tokens = if legacy {
                cap
            } else {
                chunk
                    .iter()
                    .filter_map(|line| twitchy_inference::llm_max_tokens(&style, line, cap))
                    .max()
                    .unwrap_or(cap)
            };
            let body = bytes::Bytes::from(encode_completion_request(
                &CompletionParams {
                    max_tokens,
                    ..params.clone()
                },
                &prompt_refs,
            ));
            let sent = Instant::now();
            let response = client
                .request(
                    http::Method::POST,
                    "/v1/completions",
                    Some(body),
                    Duration::from_secs(120),
                )
                .await;
            latencies_us.push(sent.elapsed().as_micros() as u64);
            match response {
                Ok(response) if response.status == 200 => {
                    match decode_completion_response(&response.body, chunk.len()) {
                        Ok(texts) => completions.extend(texts),
                        Err(_) => completions.extend(chunk.iter().map(|_| None)),
                    }
                }
                _ => completions.extend(chunk.iter().map(|_| None)),
            }
        }
        (completions, latencies_us, started.elapsed())
    })
}

fn quality(args: &Args) -> anyhow::Result<serde_json::Value> {
    let lines = read_corpus(args)?;
    let styles = styles(args)?;
    let mut rows = Vec::new();
    let mut report = String::new();
    report.push_str(&format!(
        "Style evaluation: {} lines per style, {} prompts per request, template {}{}, temperature {}, \
         max tokens {}\n\n",
        lines.len(),
        args.batch,
        args.template,
        if args.no_prefill || args.template == "legacy" {
            ""
        } else {
            " with openers"
        },
        args.temperature,
        args.max_tokens
    ));
    report.push_str(
        "| style | completions | accepted | in style | model's words in style | content kept | on topic | echoes | \
         prompt leaks | garbage | errors | latency p50 ms | latency p99 ms | completions/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut samples_text = String::new();
    for style in &styles {
        eprintln!("style {style}: {} completions", lines.len());
        let (raw, mut latencies_us, elapsed) = complete_all(args, style, &lines)?;
        latencies_us.sort_unstable();
        let (mut accepted, mut in_style, mut on_topic, mut echoes, mut leaks) = (0, 0, 0, 0, 0);
        let mut model_in_style = 0;
        let (mut garbage, mut errors) = (0, 0);
        let (mut kept_sum, mut kept_count) = (0.0f64, 0usize);
        let mut judged = Vec::with_capacity(lines.len());
        for (index, (line, raw)) in lines.iter().zip(raw).enumerate() {
            let message = sanitize_text(line, STYLED_CHARS_MAX);
            let opener = opener_of(args, style, index);
            let Some(raw) = raw else {
                errors += 1;
                judged.push(Judged {
                    message,
                    completion: None,
                    verdict: "error",
                });
                continue;
            };
            let generated = match sanitize_completion(&raw, STYLED_CHARS_MAX) {
                Ok(clean) => clean,
                Err(_) => {
                    garbage += 1;
                    judged.push(Judged {
                        message,
                        completion: Some(raw),
                        verdict: "garbage",
                    });
                    continue;
                }
            };
            let assessment =
                assess_completion(style, &message, opener, &generated).context("style is known")?;
            let clean = sanitize_completion(&format!("{opener}{raw}"), STYLED_CHARS_MAX)
                .unwrap_or(generated);
            in_style += usize::from(assessment.in_style);
            model_in_style += usize::from(assessment.model_in_style);
            on_topic += usize::from(!assessment.is_off_topic());
            echoes += usize::from(assessment.echo);
            leaks += usize::from(assessment.prompt_leak);
            if assessment.content_words > 0 {
                kept_sum += assessment.content_words_kept as f64 / assessment.content_words as f64;
                kept_count += 1;
            }
            let verdict = match assessment.verdict() {
                Ok(()) => {
                    accepted += 1;
                    "accepted"
                }
                Err(rejection) => rejection.as_str(),
            };
            judged.push(Judged {
                message,
                completion: Some(clean),
                verdict,
            });
        }
        let total = lines.len() as f64;
        let percent = |count: usize| 100.0 * count as f64 / total;
        let content_kept = if kept_count > 0 {
            100.0 * kept_sum / kept_count as f64
        } else {
            0.0
        };
        let row = json!({
            "style": style,
            "completions": lines.len(),
            "accepted_percent": percent(accepted),
            "in_style_percent": percent(in_style),
            "model_in_style_percent": percent(model_in_style),
            "content_kept_percent": content_kept,
            "on_topic_percent": percent(on_topic),
            "echo_percent": percent(echoes),
            "prompt_leak_percent": percent(leaks),
            "garbage": garbage,
            "errors": errors,
            "request_latency_ms_p50": percentile_ms(&latencies_us, 0.50),
            "request_latency_ms_p99": percentile_ms(&latencies_us, 0.99),
            "completions_per_s": total / elapsed.as_secs_f64(),
            "samples": judged.iter().take(args.samples).map(|judged| json!({
                "message": judged.message,
                "completion": judged.completion,
                "verdict": judged.verdict,
            })).collect::<Vec<_>>(),
        });
        report.push_str(&format!(
            "| {style} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {:.1}% | {:.1}% | {garbage} | {errors} | {:.0} | {:.0} | {:.2} |\n",
            lines.len(),
            percent(accepted),
            percent(in_style),
            percent(model_in_style),
            content_kept,
            percent(on_topic),
            percent(echoes),
            percent(leaks),
            percentile_ms(&latencies_us, 0.50),
            percentile_ms(&latencies_us, 0.99),
            total / elapsed.as_secs_f64(),
        ));
        samples_text.push_str(&format!("\n{style}:\n"));
        for judged in judged.iter().take(args.samples) {
            samples_text.push_str(&format!(
                "- {:?} → {:?} ({})\n",
                judged.message,
                judged.completion.as_deref().unwrap_or(""),
                judged.verdict
            ));
        }
        rows.push(row);
    }
    report.push_str(&samples_text);
    println!("{report}");
    Ok(json!({ "mode": "quality", "styles": rows }))
}

/// A small seeded generator (splitmix64), so a load run is repeatable.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn load(args: &Args) -> anyhow::Result<serde_json::Value> {
    let lines = read_corpus(args)?;
    let template: ChatTemplate = args.template.parse()?;
    let config = StylerConfig {
        vllm_endpoints: vec![args.url.clone()],
        model: args.model.clone(),
        deadline_ms: args.deadline_ms,
        temperature: args.temperature,
        frequency_penalty: args.frequency_penalty,
        max_tokens: args.max_tokens,
        chat_template: template,
        // A request on a CPU model takes seconds: give it the whole deadline, then some.
        request_timeout_ms: args.deadline_ms * 2,
        batch_prompts_max: args.batch_prompts_max,
        requests_in_flight_per_endpoint_max: args.requests_in_flight,
        admission_prompts_min: args.batch_prompts_max * args.requests_in_flight,
        ..StylerConfig::default()
    };
    config.validate()?;
    let rate = args.rate;
    let seconds = args.seconds;
    let rooms = args.rooms.max(1);
    let unique_share = args.unique_share;
    let styles = twitchy_inference::style_names();
    let (latencies_us, llm, local, totals, metrics) = on_shard(move || async move {
        let factory = Rc::new(ClusterStylerFactory::new(config));
        let styler = factory.local_styler(0);
        let results: Rc<RefCell<(Vec<u64>, u64, u64)>> = Rc::default();
        let started = Instant::now();
        let total = (rate * seconds as f64) as u64;
        let mut rng = SplitMix64(0x5EED);
        let mut tasks = Vec::with_capacity(total as usize);
        for index in 0..total {
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            }
            let room = (rng.next_u64() % rooms as u64) as usize;
            let style = styles[room % styles.len()];
            let line = &lines[(rng.next_u64() % lines.len() as u64) as usize];
            let text = if rng.unit() < unique_share {
                format!("{line} {index}")
            } else {
                line.clone()
            };
            let sent = Instant::now();
            let future = styler.style(style, &text, index);
            let results = Rc::clone(&results);
            tasks.push(glommio::spawn_local(async move {
                let styled = future.await;
                let mut results = results.borrow_mut();
                results.0.push(sent.elapsed().as_micros() as u64);
                match styled.by {
                    StyledBy::Llm => results.1 += 1,
                    StyledBy::Local => results.2 += 1,
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        drop(styler);
        let (latencies_us, llm, local) = results.take();
        (
            latencies_us,
            llm,
            local,
            factory.totals(),
            factory.metrics_text(),
        )
    })?;
    let mut latencies_us = latencies_us;
    latencies_us.sort_unstable();
    let messages = llm + local;
    let fallbacks: serde_json::Map<String, serde_json::Value> = FallbackReason::ALL
        .iter()
        .map(|reason| (reason.as_str().to_owned(), json!(totals.fallback(*reason))))
        .filter(|(_, count)| count.as_u64() != Some(0))
        .collect();
    let llm_share = llm as f64 / messages.max(1) as f64;
    let figures = json!({
        "mode": "load",
        "offered_per_s": args.rate,
        "seconds": args.seconds,
        "rooms": rooms,
        "deadline_ms": args.deadline_ms,
        "batch_prompts_max": args.batch_prompts_max,
        "requests_in_flight": args.requests_in_flight,
        "unique_share": args.unique_share,
        "messages": messages,
        "llm": llm,
        "llm_share": llm_share,
        "cache_hits": totals.cache_hits,
        "llm_without_cache": llm.saturating_sub(totals.cache_hits),
        "llm_completions_per_s": (llm.saturating_sub(totals.cache_hits)) as f64 / args.seconds as f64,
        "added_latency_ms_p50": percentile_ms(&latencies_us, 0.50),
        "added_latency_ms_p99": percentile_ms(&latencies_us, 0.99),
        "added_latency_ms_max": percentile_ms(&latencies_us, 1.0),
        "late_completions": totals.late_completions,
        "fallbacks": fallbacks,
    });
    println!(
        "LLM share at {} msg/s for {} s, deadline {} ms: {:.2}% ({} of {} messages; {} from the cache), \
         added latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\nfallbacks: {}\n",
        args.rate,
        args.seconds,
        args.deadline_ms,
        100.0 * llm_share,
        llm,
        messages,
        totals.cache_hits,
        percentile_ms(&latencies_us, 0.50),
        percentile_ms(&latencies_us, 0.99),
        percentile_ms(&latencies_us, 1.0),
        serde_json::Value::Object(
            figures["fallbacks"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        ),
    );
    log_metrics(&metrics);
    Ok(figures)
}

/// The styler's gate counters from the Prometheus text, on stderr, as the engine would expose them.
fn log_metrics(metrics: &str) {
    for line in metrics.lines() {
        if !line.starts_with('#') && !line.ends_with(" 0") {
            eprintln!("{line}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let figures = match args.mode.as_str() {
        "quality" => quality(&args)?,
        "load" => load(&args)?,
        other => bail!("unknown mode {other:?} (quality|load)"),
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

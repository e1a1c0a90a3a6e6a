//! Measures the batched vLLM styler against the best direct rate of the same server, in one run.
//!
//! 1. Sweep: a plain client sends the styler's prompts, one per request, from `c` concurrent keep-alive
//!    connections for each `c` in `--concurrency`. The best rate is the server's capacity; the best rate whose
//!    p99 latency fits the deadline is its capacity for messages that must be styled in time.
//! 2. Rounds (`--rounds`): the best direct level(s) and then the styler, back to back, so each ratio compares runs
//!    that saw the same background load. The styler run offers `--load-factor` times the capacity as chat messages
//!    on one glommio shard (deadline, admission, micro-batching) and counts the completions it delivers per second
//!    and the latency every message saw, LLM or local. The report gives per-round figures and the medians.
//!
//! Prints one JSON object on stdout (progress on stderr). Start a server first, e.g.
//! `/work/shared/vllm-cpu/serve.sh 18000 &`, then
//! `cargo run --release -p twitchy-perf --bin vllm_bench -- --url http://127.0.0.1:18000 --max-tokens 8`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::json;
use twitchy_inference::http::{EndpointUrl, HttpLimits, LocalHttpClient};
use twitchy_inference::openai::{
    CompletionParams, decode_completion_response, encode_completion_request,
};
use twitchy_inference::{
    BatchMode, ClusterStylerFactory, FallbackReason, StyledBy, StylerConfig, StylerFactory,
};

#[derive(Debug, Parser)]
#[command(about = "Batched vLLM styler vs the best direct rate of the same server")]
struct Args {
    /// Base URL of the vLLM server.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    url: String,
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrency levels of the direct client, comma-separated.
    #[arg(long, default_value = "1,2,4,8,16,32,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Offered load of the styler run, as a multiple of the best direct rate.
    #[arg(long, default_value_t = 10.0)]
    load_factor: f64,
    #[arg(long, default_value_t = StylerConfig::default().max_tokens)]
    max_tokens: u32,
    #[arg(long, default_value_t = StylerConfig::default().deadline_ms)]
    deadline_ms: u64,
    #[arg(long, default_value_t = StylerConfig::default().batch_prompts_max)]
    batch_prompts_max: usize,
    #[arg(long, default_value_t = StylerConfig::default().batch_wait_us_max)]
    batch_wait_us_max: u64,
    /// `list` (one request per batch) or `concurrent` (one request per prompt).
    #[arg(long, default_value = "list")]
    batch_mode: String,
    #[arg(long, default_value_t = StylerConfig::default().requests_in_flight_per_endpoint_max)]
    requests_in_flight_per_endpoint_max: usize,
    #[arg(long, default_value_t = StylerConfig::default().admission_target_percent)]
    admission_target_percent: u64,
    /// Seconds of offered load before the styler's measurement starts (the admission limit finds its level).
    #[arg(long, default_value_t = 2)]
    styler_warm_up_s: u64,
    /// Rounds of (best direct level, styler) measured back to back after the sweep.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the direct runs and use this rate (completions/s) as the capacity.
    #[arg(long)]
    capacity_per_s: Option<f64>,
}

/// A chat-like message, distinct per index so the styler's cache never answers.
fn message(index: u64) -> String {
    const WORDS: [&str; 12] = [
        "gg", "that", "clutch", "was", "insane", "pog", "chat", "stream", "lets", "go", "no", "way",
    ];
    let mut words = Vec::with_capacity(8);
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..7 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        words.push(WORDS[(state % WORDS.len() as u64) as usize]);
    }
    format!("{} #{index}", words.join(" "))
}

fn style_of(index: u64) -> &'static str {
    twitchy_inference::style_names()[(index % 4) as usize]
}

fn percentile_ms(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 - 1.0) * quantile).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

fn on_shard<G, F, T>(body: G) -> anyhow::Result<T>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    twitchy_inference::rt::run_on_new_shard(2 << 20, body).map_err(anyhow::Error::msg)
}

/// One direct run: `concurrency` workers, each sending one prompt per request back to back.
fn direct_run(args: &Args, concurrency: usize) -> anyhow::Result<serde_json::Value> {
    let url = EndpointUrl::parse(&args.url)?;
    let params = CompletionParams {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: 0.8,
        frequency_penalty: StylerConfig::default().frequency_penalty,
        stop: twitchy_inference::ChatTemplate::ChatMl.stop_sequences(),
    };
    let seconds = args.seconds;
    let (completions, errors, mut latencies_us) = on_shard(move || async move {
        let client = Rc::new(LocalHttpClient::new(
            url,
            HttpLimits {
                connect_timeout_ms: 1_000,
                connections_idle_max: concurrency,
                response_bytes_max: 1 << 20,
            },
        ));
        let stop_at = Instant::now() + Duration::from_secs(seconds);
        let workers: Vec<_> = (0..concurrency)
            .map(|worker| {
                let client = Rc::clone(&client);
                let params = params.clone();
                glommio::spawn_local(async move {
                    let (mut completions, mut errors, mut latencies_us) = (0u64, 0u64, Vec::new());
                    let mut index = worker as u64;
                    while Instant::now() < stop_at {
                        let prompt =
                            twitchy_inference::llm_prompt(style_of(index), &message(index))
                                .unwrap_or_default();
                        index += concurrency as u64;
                        let body = bytes::Bytes::from(encode_completion_request(
                            &params,
                            &[prompt.as_str()],
                        ));
                        let started = Instant::now();
                        let response = client
                            .request(
                                http::Method::POST,
                                "/v1/completions",
                                Some(body),
                                Duration::from_secs(30),
                            )
                            .await;
                        match response {
                            Ok(response)
                                if response.status == 200
                                    && decode_completion_response(&response.body, 1)
                                        .is_ok_and(|texts| texts[0].is_some()) =>
                            {
                                completions += 1;
                                latencies_us.push(started.elapsed().as_micros() as u64);
                            }
                            _ => errors += 1,
                        }
                    }
                    (completions, errors, latencies_us)
                })
            })
            .collect();
        let (mut completions, mut errors, mut latencies_us) = (0u64, 0u64, Vec::new());
        for worker in workers {
            let (c, e, l) = worker.await;
            completions += c;
            errors += e;
            latencies_us.extend(l);
        }
        (completions, errors, latencies_us)
    })?;
    latencies_us.sort_unstable();
    Ok(json!({
        "concurrency": concurrency,
        "completions": completions,
        "errors": errors,
        "completions_per_s": completions as f64 / args.seconds as f64,
        "latency_ms_p50": percentile_ms(&latencies_us, 0.50),
        "latency_ms_p99": percentile_ms(&latencies_us, 0.99),
    }))
}

/// The styler run: `offered_per_s` messages per second through one shard's styler.
fn styler_run(args: &Args, offered_per_s: f64) -> anyhow::Result<serde_json::Value> {
    let batch_mode: BatchMode = args.batch_mode.parse()?;
    let config = StylerConfig {
        vllm_endpoints: vec![args.url.clone()],
        model: args.model.clone(),
        deadline_ms: args.deadline_ms,
        batch_prompts_max: args.batch_prompts_max,
        batch_wait_us_max: args.batch_wait_us_max,
        max_tokens: args.max_tokens,
        batch_mode,
        requests_in_flight_per_endpoint_max: args.requests_in_flight_per_endpoint_max,
        admission_target_percent: args.admission_target_percent,
        ..StylerConfig::default()
    };
    config.validate()?;
    let seconds = args.seconds;
    let warm_up = Duration::from_secs(args.styler_warm_up_s);
    let (latencies_us, llm_latencies_us, totals, metrics) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config);
        let styler = factory.local_styler(0);
        // Let the first health probe pass before offering load.
        glommio::timer::sleep(Duration::from_millis(500)).await;
        let tick = Duration::from_millis(5);
        let per_tick = offered_per_s * tick.as_secs_f64();
        let started = Instant::now();
        // Messages of the warm-up (while the admission limit finds its level) are styled but not counted.
        let measure_from = started + warm_up;
        let stop_at = measure_from + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        let mut sent = 0u64;
        while Instant::now() < stop_at {
            // Catch up to the offered rate after any late tick.
            let due = (started.elapsed().as_secs_f64() / tick.as_secs_f64() * per_tick) as u64 + 1;
            while sent < due {
                let text = message(1_000_000 + sent);
                let future = styler.style(style_of(sent), &text, sent);
                let begun = Instant::now();
                let measured = begun >= measure_from;
                tasks.push(glommio::spawn_local(async move {
                    let styled = future.await;
                    (measured, styled.by, begun.elapsed().as_micros() as u64)
                }));
                sent += 1;
            }
            glommio::timer::sleep(tick).await;
        }
        let mut latencies_us = Vec::with_capacity(tasks.len());
        let mut llm_latencies_us = Vec::new();
        for task in tasks {
            let (measured, by, latency_us) = task.await;
            if !measured {
                continue;
            }
            latencies_us.push(latency_us);
            if by == StyledBy::Llm {
                llm_latencies_us.push(latency_us);
            }
        }
        (
            latencies_us,
            llm_latencies_us,
            factory.totals(),
            factory.metrics_text(),
        )
    })?;
    let mut latencies_us = latencies_us;
    latencies_us.sort_unstable();
    let mut llm_latencies_us = llm_latencies_us;
    llm_latencies_us.sort_unstable();
    let admission_limit = metrics
        .lines()
        .find(|line| line.starts_with("twitchy_styler_admission_limit_prompts{"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<u64>().ok());
    let fallbacks: serde_json::Map<String, serde_json::Value> = FallbackReason::ALL
        .iter()
        .map(|reason| (reason.as_str().to_owned(), json!(totals.fallback(*reason))))
        .collect();
    Ok(json!({
        "offered_per_s": offered_per_s,
        "messages": latencies_us.len(),
        "llm": llm_latencies_us.len(),
        "local": latencies_us.len() - llm_latencies_us.len(),
        "llm_per_s": llm_latencies_us.len() as f64 / args.seconds as f64,
        // The styler's own counters cover the whole run, warm-up included.
        "run_totals": {
            "late_completions": totals.late_completions,
            "fallbacks": fallbacks,
            "batches": totals.batches,
            "batch_prompts_mean": if totals.batches == 0 { 0.0 } else { totals.batched_prompts as f64 / totals.batches as f64 },
        },
        "latency_ms_p50": percentile_ms(&latencies_us, 0.50),
        "latency_ms_p99": percentile_ms(&latencies_us, 0.99),
        "latency_ms_max": percentile_ms(&latencies_us, 1.0),
        "llm_latency_ms_p50": percentile_ms(&llm_latencies_us, 0.50),
        "llm_latency_ms_p99": percentile_ms(&llm_latencies_us, 0.99),
        "admission_limit_prompts_end": admission_limit,
    }))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn rate(run: &serde_json::Value, key: &str) -> f64 {
    run[key].as_f64().unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.seconds == 0 || args.load_factor <= 0.0 || args.rounds == 0 {
        bail!("--seconds, --rounds and --load-factor must be positive");
    }
    // 1. The sweep: the direct rate at each concurrency level. The best level is the server's capacity; the best
    //    level whose p99 latency fits the deadline is its capacity for messages that must arrive in time.
    let mut sweep = Vec::new();
    let (mut best, mut best_in_deadline) = ((0usize, 0.0f64), None::<(usize, f64)>);
    match args.capacity_per_s {
        Some(rate) => best = (0, rate),
        None => {
            // A short warm-up so the first measured level does not pay for the server's first requests.
            let warm_up = Args {
                seconds: 2,
                ..Args::parse()
            };
            direct_run(&warm_up, 8)?;
            for &concurrency in &args.concurrency {
                let run = direct_run(&args, concurrency)?;
                eprintln!("sweep: {run}");
                let completions_per_s = rate(&run, "completions_per_s");
                if completions_per_s > best.1 {
                    best = (concurrency, completions_per_s);
                }
                let in_deadline = rate(&run, "latency_ms_p99") <= args.deadline_ms as f64;
                if in_deadline && best_in_deadline.is_none_or(|(_, rate)| completions_per_s > rate)
                {
                    best_in_deadline = Some((concurrency, completions_per_s));
                }
                sweep.push(run);
            }
        }
    }
    if best.1 <= 0.0 {
        bail!(
            "the direct client completed nothing: is the server up at {}?",
            args.url
        );
    }
    // 2. Rounds: the best direct level(s) and the styler back to back, so each ratio compares runs that saw the
    //    same background load; the medians are the result.
    let offered_per_s = best.1 * args.load_factor;
    let mut rounds = Vec::new();
    let (mut ratios, mut ratios_in_deadline, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let direct_best = if best.0 > 0 {
            Some(direct_run(&args, best.0)?)
        } else {
            None
        };
        let direct_in_deadline = match best_in_deadline {
            Some((concurrency, _)) if concurrency != best.0 => {
                Some(direct_run(&args, concurrency)?)
            }
            Some(_) => direct_best.clone(),
            None => None,
        };
        let styler = styler_run(&args, offered_per_s)?;
        let llm_per_s = rate(&styler, "llm_per_s");
        let best_rate = direct_best
            .as_ref()
            .map_or(best.1, |run| rate(run, "completions_per_s"));
        ratios.push(llm_per_s / best_rate);
        if let Some(run) = &direct_in_deadline {
            ratios_in_deadline
                .push(llm_per_s / rate(run, "completions_per_s").max(f64::MIN_POSITIVE));
        }
        p99s.push(rate(&styler, "latency_ms_p99"));
        eprintln!("round {round}: styler {llm_per_s:.1}/s, best direct {best_rate:.1}/s");
        rounds.push(json!({
            "direct_best": direct_best,
            "direct_best_within_deadline": direct_in_deadline,
            "styler": styler,
        }));
    }
    let p99_median = median(&mut p99s);
    let report = json!({
        "url": args.url,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "deadline_ms": args.deadline_ms,
        "batch_mode": args.batch_mode,
        "batch_prompts_max": args.batch_prompts_max,
        "batch_wait_us_max": args.batch_wait_us_max,
        "admission_target_percent": args.admission_target_percent,
        "sweep": sweep,
        "best_direct": {"concurrency": best.0, "completions_per_s": best.1},
        "best_direct_within_deadline": best_in_deadline
            .map(|(concurrency, rate)| json!({"concurrency": concurrency, "completions_per_s": rate})),
        "load_factor": args.load_factor,
        "offered_per_s": offered_per_s,
        "rounds": rounds,
        "llm_rate_vs_best_direct_median": median(&mut ratios),
        "llm_rate_vs_best_direct_within_deadline_median":
            if ratios_in_deadline.is_empty() { None } else { Some(median(&mut ratios_in_deadline)) },
        "latency_ms_p99_median": p99_median,
        "p99_latency_within_deadline": p99_median <= args.deadline_ms as f64,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

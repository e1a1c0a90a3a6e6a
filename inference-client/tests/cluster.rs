//! The vLLM styler against in-process OpenAI-compatible servers: batching, deadlines, errors, garbage, slow, hung,
//! dead and killed endpoints, overload.

mod fake_server;

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fake_server::{FakeServer, Mode, STYLE_TAIL, dead_url};
use twitchy_inference::{
    BatchMode, ClusterStylerFactory, FallbackReason, Styled, StyledBy, Styler, StylerConfig,
    StylerFactory,
};

/// Time a message may take beyond its deadline: timer wake-up and scheduling on a loaded two-core machine.
const DEADLINE_SLACK_MS: u64 = 100;

/// Runs `body` on a fresh glommio executor (one shard) and returns its result.
fn on_shard<G, F, T>(body: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    twitchy_inference::rt::run_on_new_shard(512 << 10, body).expect("executor runs")
}

fn config(endpoints: Vec<String>) -> StylerConfig {
    StylerConfig {
        vllm_endpoints: endpoints,
        deadline_ms: 500,
        batch_wait_us_max: 2_000,
        health_interval_ms: 50,
        // The fake server's answers are whole: no opener before them keeps the expected texts exact.
        assistant_prefill: false,
        ..StylerConfig::default()
    }
}

/// Styles every message concurrently on the current shard; returns each result with the time it took.
async fn style_all(
    styler: &Rc<dyn Styler>,
    style: &str,
    messages: &[String],
) -> Vec<(Styled, Duration)> {
    let tasks: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(seed, message)| {
            let started = Instant::now();
            let future = styler.style(style, message, seed as u64);
            glommio::spawn_local(async move { (future.await, started.elapsed()) })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

fn messages(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix} message number {index}"))
        .collect()
}

fn assert_clean(styled: &Styled) {
    assert!(!styled.text.is_empty());
    assert!(styled.text.chars().count() <= twitchy_inference::STYLED_CHARS_MAX);
    assert!(
        !styled.text.chars().any(char::is_control),
        "control character in {:?}",
        styled.text
    );
}

#[test]
fn batches_prompts_into_one_request() {
    let server = FakeServer::start();
    let url = server.url();
    let (results, second) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            batch_prompts_max: 8,
            batch_wait_us_max: 100_000,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let results = style_all(&styler, "pirate", &messages("full", 8)).await;
        let second = style_all(&styler, "pirate", &messages("partial", 3)).await;
        (results, second)
    });
    for ((styled, _), message) in results.iter().zip(messages("full", 8)) {
        assert_eq!(styled.by, StyledBy::Llm);
        assert_eq!(styled.text, format!("styled: {message} {STYLE_TAIL}"));
    }
    assert!(second.iter().all(|(styled, _)| styled.by == StyledBy::Llm));
    assert_eq!(
        server.batch_sizes(),
        vec![8, 3],
        "one full batch, then one after the wait"
    );
}

#[test]
fn connections_closed_by_the_server_as_they_are_reused_cost_nothing() {
    let server = FakeServer::start();
    server.set_close_reused(true);
    let url = server.url();
    let (results, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            // Health probes would open fresh connections; only completion requests should use the pool here.
            health_interval_ms: 60_000,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let mut results = Vec::new();
        for round in 0..10 {
            results.extend(
                style_all(&styler, "pirate", &messages(&format!("closed{round}"), 2)).await,
            );
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        (results, factory.totals())
    });
    assert!(
        results.iter().all(|(styled, _)| styled.by == StyledBy::Llm),
        "{totals:?}"
    );
    assert_eq!(server.requests(), 10);
}

#[test]
fn concurrent_mode_sends_one_request_per_prompt() {
    let server = FakeServer::start();
    let url = server.url();
    let (results, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            batch_mode: BatchMode::Concurrent,
            batch_prompts_max: 4,
            batch_wait_us_max: 100_000,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let results = style_all(&styler, "corporate", &messages("each", 4)).await;
        (results, factory.totals())
    });
    assert!(results.iter().all(|(styled, _)| styled.by == StyledBy::Llm));
    assert_eq!(server.batch_sizes(), vec![1, 1, 1, 1]);
    assert_eq!(totals.batches, 1, "one burst of four requests");
    assert_eq!(totals.llm, 4);
}

#[test]
fn slow_endpoint_falls_back_at_the_deadline_and_late_completions_fill_the_cache() {
    let server = FakeServer::start();
    server.set_delay_ms(300);
    let url = server.url();
    let (results, cached, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            deadline_ms: 100,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let results = style_all(&styler, "shakespeare", &messages("slow", 5)).await;
        // The completions arrive 200 ms after the deadline; they are discarded but remembered.
        glommio::timer::sleep(Duration::from_millis(400)).await;
        let cached = style_all(&styler, "shakespeare", &messages("slow", 1)).await;
        (results, cached, factory.totals())
    });
    for (styled, elapsed) in &results {
        assert_eq!(styled.by, StyledBy::Local);
        assert_clean(styled);
        assert!(styled.text.contains("slow message number"));
        assert!(
            *elapsed >= Duration::from_millis(95),
            "fell back before the deadline: {elapsed:?}"
        );
        assert!(
            *elapsed <= Duration::from_millis(100 + DEADLINE_SLACK_MS),
            "late fallback: {elapsed:?}"
        );
    }
    assert_eq!(totals.fallback(FallbackReason::Deadline), 5);
    assert_eq!(totals.late_completions, 5);
    assert_eq!(
        cached[0].0,
        Styled {
            text: format!("styled: slow message number 0 {STYLE_TAIL}"),
            by: StyledBy::Llm
        }
    );
    assert_eq!(totals.cache_hits, 1);
    assert_eq!(server.prompts(), 5, "the cache hit cost no request");
}

#[test]
fn failing_endpoint_opens_the_breaker_and_recovers() {
    let server = FakeServer::start();
    server.set_mode(Mode::Fail);
    let url = server.url();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let shard = std::thread::spawn(move || {
        on_shard(move || async move {
            let factory = ClusterStylerFactory::new(StylerConfig {
                breaker_failures_max: 2,
                breaker_open_ms: 300,
                health_interval_ms: 20,
                ..config(vec![url])
            });
            let styler = factory.local_styler(0);
            let mut reasons = Vec::new();
            for index in 0..2 {
                let (styled, elapsed) =
                    style_all(&styler, "brainrot", &messages(&format!("fail{index}"), 1))
                        .await
                        .remove(0);
                assert_eq!(styled.by, StyledBy::Local);
                assert!(
                    elapsed < Duration::from_millis(400),
                    "an error falls back at once, not at the deadline"
                );
            }
            reasons.push(factory.totals().fallback(FallbackReason::Error));
            let (styled, _) = style_all(&styler, "brainrot", &messages("open", 1))
                .await
                .remove(0);
            assert_eq!(styled.by, StyledBy::Local);
            reasons.push(factory.totals().fallback(FallbackReason::Unavailable));
            let text = factory.metrics_text();
            assert!(
                text.contains(",shard=\"0\"} 0\n"),
                "breaker open shows as unhealthy:\n{text}"
            );
            // The endpoint comes back: probe, trial, closed.
            tx.send(()).expect("main thread listens");
            back_rx.recv().expect("main thread answers");
            let started = Instant::now();
            let mut recovered = false;
            while started.elapsed() < Duration::from_secs(5) {
                let (styled, _) = style_all(&styler, "brainrot", &messages("back", 1))
                    .await
                    .remove(0);
                if styled.by == StyledBy::Llm {
                    recovered = true;
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            let text = factory.metrics_text();
            (reasons, recovered, text)
        })
    });
    rx.recv().expect("shard reports the open breaker");
    server.set_mode(Mode::Echo);
    back_tx.send(()).expect("shard waits");
    let (reasons, recovered, text) = shard.join().expect("shard thread");
    assert_eq!(reasons, vec![2, 1]);
    assert!(recovered, "the endpoint was not taken back into service");
    assert!(text.contains(",shard=\"0\"} 1\n"), "healthy again:\n{text}");
    assert!(server.health_requests() > 0);
}

#[test]
fn garbage_completions_fall_back_and_dirty_ones_are_cleaned() {
    let server = std::sync::Arc::new(FakeServer::start());
    let url = server.url();
    let control = std::sync::Arc::clone(&server);
    let (garbage, dirty, malformed, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(vec![url]));
        let styler = factory.local_styler(0);
        control.set_mode(Mode::Garbage);
        let garbage = style_all(&styler, "pirate", &messages("garbage", 2)).await;
        control.set_mode(Mode::Dirty);
        let dirty = style_all(&styler, "pirate", &messages("dirty", 1)).await;
        control.set_mode(Mode::Malformed);
        let malformed = style_all(&styler, "pirate", &messages("malformed", 1)).await;
        (garbage, dirty, malformed, factory.totals())
    });
    for (styled, _) in &garbage {
        assert_eq!(styled.by, StyledBy::Local);
        assert_clean(styled);
    }
    assert_eq!(totals.fallback(FallbackReason::Garbage), 2);
    assert_eq!(
        dirty[0].0,
        Styled {
            text: format!("[31m styled: dirty message number 0 {STYLE_TAIL}"),
            by: StyledBy::Llm
        }
    );
    assert_eq!(malformed[0].0.by, StyledBy::Local);
    assert_eq!(totals.fallback(FallbackReason::Error), 1);
}

#[test]
fn the_quality_gate_turns_echoes_and_leaks_into_local_rewrites_counted_by_reason() {
    let server = std::sync::Arc::new(FakeServer::start());
    let url = server.url();
    let control = std::sync::Arc::clone(&server);
    let (parrot, leak, prefilled, totals, metrics) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(vec![url.clone()]));
        let styler = factory.local_styler(0);
        control.set_mode(Mode::Parrot);
        let parrot = style_all(&styler, "pirate", &messages("parrot", 3)).await;
        control.set_mode(Mode::Leak);
        let leak = style_all(&styler, "corporate", &messages("leak", 2)).await;
        control.set_mode(Mode::Echo);
        // With prefill the delivered text starts with the style's opener, then the model's words.
        let prefilling = ClusterStylerFactory::new(StylerConfig {
            assistant_prefill: true,
            ..config(vec![url])
        });
        let prefilled = prefilling
            .local_styler(1)
            .style("shakespeare", "this song is a banger", 2)
            .await;
        (
            parrot,
            leak,
            prefilled,
            factory.totals(),
            factory.metrics_text(),
        )
    });
    for (styled, _) in parrot.iter().chain(&leak) {
        assert_eq!(styled.by, StyledBy::Local, "{styled:?}");
        assert_clean(styled);
        assert!(!styled.text.contains("<|"), "{styled:?}");
    }
    assert_eq!(totals.fallback(FallbackReason::Echo), 3);
    assert_eq!(totals.fallback(FallbackReason::PromptLeak), 2);
    assert!(
        metrics.contains("twitchy_styler_fallbacks_total{reason=\"echo\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twitchy_styler_fallbacks_total{reason=\"prompt_leak\"} 2\n"),
        "{metrics}"
    );
    let opener = twitchy_inference::llm_opener("shakespeare", 2).expect("known style");
    assert_eq!(prefilled.by, StyledBy::Llm);
    assert_eq!(
        prefilled.text,
        format!("{opener} styled: this song is a banger {STYLE_TAIL}")
    );
}

#[test]
fn hung_endpoint_times_out_and_opens_the_breaker() {
    let server = FakeServer::start();
    server.set_mode(Mode::Hang);
    let url = server.url();
    let (first, after, text) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            deadline_ms: 100,
            request_timeout_ms: 200,
            breaker_failures_max: 1,
            breaker_open_ms: 10_000,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let first = style_all(&styler, "corporate", &messages("hung", 3)).await;
        glommio::timer::sleep(Duration::from_millis(250)).await;
        let after = style_all(&styler, "corporate", &messages("after", 1)).await;
        (first, after, factory.metrics_text())
    });
    for (styled, elapsed) in &first {
        assert_eq!(styled.by, StyledBy::Local);
        assert!(
            *elapsed <= Duration::from_millis(100 + DEADLINE_SLACK_MS),
            "{elapsed:?}"
        );
    }
    let (styled, elapsed) = &after[0];
    assert_eq!(styled.by, StyledBy::Local);
    assert!(
        *elapsed < Duration::from_millis(50),
        "an open breaker answers at once: {elapsed:?}"
    );
    assert!(
        text.contains("twitchy_styler_fallbacks_total{reason=\"unavailable\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("kind=\"timeout\"} 1\n"), "{text}");
}

#[test]
fn cluster_prefers_the_fast_endpoint_and_skips_the_dead_one() {
    let fast = FakeServer::start();
    let slow = FakeServer::start();
    slow.set_delay_ms(80);
    let dead = dead_url();
    let endpoints = vec![fast.url(), slow.url(), dead.clone()];
    let (results, totals, text) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            batch_prompts_max: 4,
            batch_wait_us_max: 1_000,
            ..config(endpoints)
        });
        let styler = factory.local_styler(0);
        // Let the first health round find the dead endpoint.
        glommio::timer::sleep(Duration::from_millis(100)).await;
        // A steady stream: whichever endpoint has fewer prompts outstanding takes the next batch.
        let mut tasks = Vec::new();
        for round in 0..40 {
            for index in 0..4 {
                let started = Instant::now();
                let future =
                    styler.style("brainrot", &format!("round {round} message {index}"), index);
                tasks.push(glommio::spawn_local(async move {
                    (future.await, started.elapsed())
                }));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        (results, factory.totals(), factory.metrics_text())
    });
    assert_eq!(results.len(), 160);
    assert!(
        results.iter().all(|(styled, _)| styled.by == StyledBy::Llm),
        "{totals:?}"
    );
    assert!(
        fast.prompts() > 2 * slow.prompts(),
        "fast {} slow {}",
        fast.prompts(),
        slow.prompts()
    );
    assert!(slow.prompts() > 0, "the slow endpoint still serves");
    assert_eq!(fast.prompts() + slow.prompts(), 160);
    assert!(
        text.contains(&format!(
            "twitchy_styler_endpoint_healthy{{endpoint=\"{dead}\",shard=\"0\"}} 0\n"
        )),
        "{text}"
    );
}

#[test]
fn overload_sheds_to_local_and_keeps_latency_inside_the_deadline() {
    let server = FakeServer::start();
    // About 500 prompts per second in large batches, 10 ms per request on top.
    server.set_delay_ms(10);
    server.set_capacity(2_000);
    let url = server.url();
    let (results, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            deadline_ms: 150,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        // Offer about 5,000 messages per second for one second: ten times what the server finishes.
        let mut tasks = Vec::new();
        for burst in 0..100 {
            for index in 0..50 {
                let started = Instant::now();
                let future =
                    styler.style("pirate", &format!("burst {burst} message {index}"), index);
                tasks.push(glommio::spawn_local(async move {
                    (future.await, started.elapsed())
                }));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        (results, factory.totals())
    });
    assert_eq!(results.len(), 5_000);
    let worst = results
        .iter()
        .map(|(_, elapsed)| *elapsed)
        .max()
        .unwrap_or_default();
    assert!(
        worst <= Duration::from_millis(150 + DEADLINE_SLACK_MS),
        "worst latency {worst:?}"
    );
    assert!(
        totals.fallback(FallbackReason::Overload) > 1_000,
        "{totals:?}"
    );
    assert!(
        totals.llm > 100,
        "the LLM kept working under overload: {totals:?}"
    );
    assert!(
        totals.fallback(FallbackReason::Deadline) < totals.llm,
        "admission keeps most admitted prompts inside the deadline: {totals:?}"
    );
    assert!(results.iter().all(|(styled, _)| !styled.text.is_empty()));
}

#[test]
fn killed_endpoint_mid_run_still_delivers_inside_the_deadline() {
    let mut server = FakeServer::start();
    server.set_delay_ms(30);
    let url = server.url();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let shard = std::thread::spawn(move || {
        on_shard(move || async move {
            let factory = ClusterStylerFactory::new(StylerConfig {
                deadline_ms: 150,
                ..config(vec![url])
            });
            let styler = factory.local_styler(0);
            let mut tasks = Vec::new();
            for round in 0..50 {
                if round == 20 {
                    kill_tx.send(()).expect("main thread kills the server");
                }
                for index in 0..10 {
                    let started = Instant::now();
                    let future = styler.style(
                        "shakespeare",
                        &format!("round {round} message {index}"),
                        index,
                    );
                    tasks.push(glommio::spawn_local(async move {
                        (future.await, started.elapsed())
                    }));
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await);
            }
            (results, factory.totals())
        })
    });
    kill_rx.recv().expect("shard asks for the kill");
    server.kill();
    let (results, totals) = shard.join().expect("shard thread");
    assert_eq!(results.len(), 500);
    for (styled, elapsed) in &results {
        assert_clean(styled);
        assert!(
            *elapsed <= Duration::from_millis(150 + DEADLINE_SLACK_MS),
            "{elapsed:?}"
        );
    }
    assert!(totals.llm > 0 && totals.local > 0, "{totals:?}");
    assert_eq!(totals.llm + totals.local, 500);
}

#[test]
fn unknown_style_empty_and_oversized_messages_stay_local() {
    let server = FakeServer::start();
    let url = server.url();
    // Room for a short message's prompt, not for a long one's.
    let prompt_bytes_max =
        twitchy_inference::llm_prompt("pirate", "hi").map_or(0, |p| p.len()) + 100;
    let (unknown, empty, long, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            prompt_bytes_max,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let unknown = styler.style("klingon", "hi\u{7} there\u{202E}", 1).await;
        let empty = styler.style("pirate", " \n\u{0} ", 1).await;
        let long = styler.style("pirate", &"long words ".repeat(40), 1).await;
        (unknown, empty, long, factory.totals())
    });
    assert_eq!(
        unknown,
        Styled {
            text: "hi there".into(),
            by: StyledBy::Local
        }
    );
    assert_eq!(empty.by, StyledBy::Local);
    assert_clean(&empty);
    assert_eq!(long.by, StyledBy::Local);
    assert!(long.text.contains("long words long words"));
    assert_eq!(totals.fallback(FallbackReason::UnknownStyle), 1);
    assert_eq!(totals.fallback(FallbackReason::EmptyText), 1);
    assert_eq!(totals.fallback(FallbackReason::TooLong), 1);
    assert_eq!(server.requests(), 0);
}

#[test]
fn dropping_the_styler_resolves_queued_messages_locally() {
    let server = FakeServer::start();
    let url = server.url();
    let results = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(StylerConfig {
            batch_wait_us_max: 400_000,
            ..config(vec![url])
        });
        let styler = factory.local_styler(0);
        let futures: Vec<_> = messages("queued", 3)
            .iter()
            .map(|message| styler.style("pirate", message, 1))
            .collect();
        drop(styler);
        let mut results = Vec::new();
        for future in futures {
            let started = Instant::now();
            results.push((future.await, started.elapsed()));
        }
        results
    });
    for (styled, elapsed) in results {
        assert_eq!(styled.by, StyledBy::Local);
        assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
    }
    assert_eq!(server.requests(), 0);
}

#[test]
fn local_only_factory_styles_locally_and_reports_metrics() {
    let factory = twitchy_inference::styler_factory(StylerConfig::default());
    let text = on_shard({
        let factory = std::sync::Arc::clone(&factory);
        move || async move {
            let styler = factory.local_styler(3);
            for seed in 0..5 {
                let styled = styler.style("brainrot", "hi there", seed).await;
                assert_eq!(styled.by, StyledBy::Local);
                assert!(styled.text.contains("hi there"));
                assert_eq!(
                    styled.text,
                    twitchy_inference::local_rewrite("brainrot", "hi there", seed)
                );
            }
            factory.metrics_text()
        }
    });
    assert!(
        text.contains("twitchy_styler_requests_total{by=\"local\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains("twitchy_styler_fallbacks_total{reason=\"disabled\"} 5\n"),
        "{text}"
    );
    assert!(text.contains("twitchy_styler_llm_share 0\n"), "{text}");
}

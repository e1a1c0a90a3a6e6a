//! The vLLM styler against a real vLLM server. Runs only when `VLLM_URL` is set, e.g.
//!
//! ```text
//! /work/shared/vllm-cpu/serve.sh 18000 &   # ready when `curl -sf 127.0.0.1:18000/health` answers
//! VLLM_URL=http://127.0.0.1:18000 cargo test --release -p twitchy-inference --test vllm -- --nocapture
//! ```
//!
//! The kill test routes the client through a TCP relay and kills the relay mid-run (the client sees exactly what a
//! killed server looks like: connections reset, port refused). With `VLLM_KILL_PID` set to the server's process id
//! it kills the server itself instead (SIGKILL); its engine processes are left for whoever started the server to
//! stop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use twitchy_inference::{
    ClusterStylerFactory, FallbackReason, Styled, StyledBy, StylerConfig, StylerFactory,
};

/// Time a message may take beyond its deadline: timer wake-up and scheduling on a loaded machine.
const DEADLINE_SLACK_MS: u64 = 100;

fn vllm_url() -> Option<String> {
    match std::env::var("VLLM_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "skipped: set VLLM_URL (e.g. http://127.0.0.1:18000) to run against a real vLLM server"
            );
            None
        }
    }
}

/// Streams `rounds` rounds of `per_round` messages, one round every `round_ms`, calling `at_round` before each
/// round; returns every result with its latency, and the totals.
fn stream_messages(
    config: StylerConfig,
    rounds: usize,
    per_round: usize,
    round_ms: u64,
    at_round: impl Fn(usize) + Send + 'static,
) -> (
    Vec<(Styled, Duration)>,
    twitchy_inference::MetricsTotals,
    String,
) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let factory = ClusterStylerFactory::new(config);
            let styler = factory.local_styler(0);
            // Let the first health probe finish so the endpoint starts in a known state.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let mut tasks = Vec::new();
            for round in 0..rounds {
                at_round(round);
                for index in 0..per_round {
                    let started = Instant::now();
                    let style = twitchy_inference::style_names()[index % 4];
                    let future = styler.style(
                        style,
                        &format!("round {round} chat message {index} pog"),
                        index as u64,
                    );
                    tasks.push(glommio::spawn_local(async move {
                        (future.await, started.elapsed())
                    }));
                }
                glommio::timer::sleep(Duration::from_millis(round_ms)).await;
            }
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await);
            }
            (results, factory.totals(), factory.metrics_text())
        })
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

fn assert_delivered(results: &[(Styled, Duration)], deadline_ms: u64) {
    for (styled, elapsed) in results {
        assert!(!styled.text.is_empty());
        assert!(styled.text.chars().count() <= twitchy_inference::STYLED_CHARS_MAX);
        assert!(
            !styled.text.chars().any(char::is_control),
            "control character in {:?}",
            styled.text
        );
        assert!(
            !styled.text.contains('\u{FFFD}'),
            "replacement character in {:?}",
            styled.text
        );
        assert!(
            *elapsed <= Duration::from_millis(deadline_ms + DEADLINE_SLACK_MS),
            "message took {elapsed:?}"
        );
    }
}

#[test]
fn real_vllm_styles_inside_the_deadline() {
    let Some(url) = vllm_url() else { return };
    let config = StylerConfig {
        vllm_endpoints: vec![url],
        max_tokens: 8,
        ..StylerConfig::default()
    };
    let deadline_ms = config.deadline_ms;
    // About 25 messages per second: inside the CPU server's capacity even on a busy machine.
    let (results, totals, metrics) = stream_messages(config, 50, 1, 40, |_| {});
    println!("{totals:?}");
    if let Some((styled, _)) = results
        .iter()
        .find(|(styled, _)| styled.by == StyledBy::Llm)
    {
        println!("a completion, sanitised: {:?}", styled.text);
    }
    assert_delivered(&results, deadline_ms);
    assert!(
        totals.llm > 0,
        "no completion was used: {totals:?}\n{metrics}"
    );
    assert!(totals.batches > 0);
    assert!(
        metrics.contains("twitchy_styler_endpoint_latency_seconds_count"),
        "{metrics}"
    );
}

/// Relays TCP connections to a target until killed, then drops them all at once.
struct Relay {
    port: u16,
    stopped: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stopped = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (accept_stopped, accept_streams) = (Arc::clone(&stopped), Arc::clone(&streams));
        let acceptor = std::thread::spawn(move || {
            while !accept_stopped.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let mut registry = accept_streams.lock().expect("registry");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        registry.push(clone);
                    }
                }
                drop(registry);
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        while let Ok(read) = from.read(&mut buffer) {
                            if read == 0 || to.write_all(&buffer[..read]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            stopped,
            streams,
            acceptor: Some(acceptor),
        }
    }

    fn kill(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self.streams.lock().expect("registry").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn real_vllm_killed_mid_run_every_message_still_delivered_inside_the_deadline() {
    let Some(url) = vllm_url() else { return };
    let kill_pid = std::env::var("VLLM_KILL_PID")
        .ok()
        .filter(|pid| pid.parse::<u32>().is_ok());
    let target = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let relay = Arc::new(Mutex::new(Relay::start(target)));
    let endpoint = match kill_pid {
        Some(_) => url,
        None => format!("http://127.0.0.1:{}", relay.lock().expect("relay").port),
    };
    let config = StylerConfig {
        vllm_endpoints: vec![endpoint],
        max_tokens: 8,
        ..StylerConfig::default()
    };
    let deadline_ms = config.deadline_ms;
    let killer = Arc::clone(&relay);
    // About 40 messages per second for 1.5 s, inside the CPU server's capacity; the kill comes halfway.
    const ROUNDS: usize = 60;
    const KILL_ROUND: usize = 30;
    let (results, totals, metrics) = stream_messages(config, ROUNDS, 1, 25, move |round| {
        if round != KILL_ROUND {
            return;
        }
        match &kill_pid {
            Some(pid) => {
                println!("killing vLLM server pid {pid}");
                let status = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status();
                assert!(
                    status.is_ok_and(|status| status.success()),
                    "kill -9 {pid} failed"
                );
            }
            None => {
                println!("killing the relay to the vLLM server");
                killer.lock().expect("relay").kill();
            }
        }
    });
    println!("{totals:?}");
    assert_eq!(results.len(), ROUNDS);
    assert_delivered(&results, deadline_ms);
    assert!(totals.llm > 0, "the LLM served before the kill: {totals:?}");
    let after_kill = &results[KILL_ROUND..];
    let llm_after = after_kill
        .iter()
        .filter(|(styled, _)| styled.by == StyledBy::Llm)
        .count();
    assert_eq!(llm_after, 0, "messages sent after the kill got completions");
    assert!(
        totals.fallback(FallbackReason::Error) + totals.fallback(FallbackReason::Unavailable) > 0,
        "the dead endpoint was noticed: {totals:?}"
    );
    assert!(
        metrics.contains("twitchy_styler_endpoint_healthy{"),
        "{metrics}"
    );
}

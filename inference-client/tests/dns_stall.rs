//! A vLLM endpoint given by host name must not stall the shard while its name resolves: with a lookup that hangs
//! (a silent DNS server), timers on the same shard keep firing on time and the connect fails at its own timeout.
//! The bound below is generous (the hang is 3 s, the allowed gap 1 s); it tells a blocked shard from a working one,
//! not a fast one from a slow one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twitchy_inference::dns::{Lookup, Resolver};
use twitchy_inference::http::{EndpointUrl, HttpLimits, LocalHttpClient};
use twitchy_inference::rt::run_on_new_shard;

/// A DNS server that never answers in time.
struct Hanging;

impl Lookup for Hanging {
    fn lookup(&self, _host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(3));
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
    }
}

#[test]
fn a_hanging_lookup_does_not_stall_the_shard() {
    assert!(
        Resolver::install(Arc::new(Hanging)),
        "first resolver in this test binary"
    );
    let (gap_max, outcome, waited) = run_on_new_shard(1 << 20, || async {
        let client = LocalHttpClient::new(
            EndpointUrl::parse("http://vllm.example.internal:8000").unwrap(),
            HttpLimits {
                connect_timeout_ms: 500,
                connections_idle_max: 1,
                response_bytes_max: 1 << 20,
            },
        );
        let ticker = glommio::spawn_local(async {
            let mut last = Instant::now();
            let mut gap_max = Duration::ZERO;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1500) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                gap_max = gap_max.max(last.elapsed());
                last = Instant::now();
            }
            gap_max
        });
        let started = Instant::now();
        let outcome = client
            .request(http::Method::GET, "/health", None, Duration::from_secs(5))
            .await;
        let waited = started.elapsed();
        (ticker.await, outcome.map(|r| r.status), waited)
    })
    .expect("shard");
    assert!(outcome.is_err(), "nothing answered, yet {outcome:?}");
    assert!(
        waited < Duration::from_millis(2500),
        "the connect gave up at its timeout, not after the lookup: {waited:?}"
    );
    assert!(
        gap_max < Duration::from_secs(1),
        "the shard stalled for {gap_max:?} while the name resolved"
    );
}

//! Durable, acknowledged messages per second into the embedded store, and acknowledgement latency percentiles.
//!
//! First, a latency report (printed, not a criterion group, because criterion reports means, not tails): for
//! each offered rate (`TWITCHY_BENCH_STORAGE_RATES`, default the seed's peak and five times it, 41,667 and
//! 208,335 msg/s; `TWITCHY_BENCH_STORAGE_SECONDS` each, default 5, 1 when quick), p50/p99/p99.9 of the time from
//! a message's due time to its acknowledgement through the coalescer, for the commit log (the default) and fjall's
//! own journal (the previous design); then, on the same disk in the same run, the two baselines: the store
//! written one message per fsync, and a raw log (a plain file, `write` + `fdatasync` per batch-sized record).
//!
//! Then the criterion groups, compared in the same run, on the same store:
//! - `coalesced`: messages go through the storage service's coalescing writer, which groups them into batches
//!   and fsyncs once per batch; the time is from the first append to the last acknowledgement.
//! - `one_fsync_per_message`: the same writes made durable one at a time (`Store::append_messages` with a
//!   single message, one fsync each), the baseline a naive writer would get.
//!
//! Message generation happens before the timer starts. `TWITCHY_BENCH_QUICK=1` shrinks sample counts and times
//! for CI; `TWITCHY_BENCH_STORAGE_MESSAGES` (default 20,000) and `TWITCHY_BENCH_STORAGE_BASELINE_MESSAGES`
//! (default 200) set the messages per iteration. The store lives in a fresh directory under the system temp dir
//! (`TMPDIR`), removed at the end; point `TMPDIR` at the disk to measure.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use twitchy_storage::{
    AppendAck, AppendRejected, CoalescerConfig, CommitPath, EmbeddedOptions, EmbeddedStore,
    MessageIdGen, MessageRecord, StorageError, StorageHandle, StorageService, Store,
};

fn quick() -> bool {
    std::env::var("TWITCHY_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Wakes a parked thread: enough of an executor to wait for an acknowledgement.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Messages of about 150 bytes of content over 64 rooms, with fresh ids.
fn messages(ids: &mut MessageIdGen, count: usize) -> Vec<MessageRecord> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (0..count as u64)
        .map(|n| MessageRecord {
            id: ids.next_id(now_ms),
            room: format!("room{}", n % 64),
            user_id: n,
            login: format!("viewer{}", n % 10_000),
            display_name: format!("Viewer{}", n % 10_000),
            color: "#1E90FF".into(),
            badges: "subscriber/12".into(),
            text: "skibidi W stream fr fr no cap, that play was bussin".into(),
            original: "W stream, that play was great".into(),
            styled_by: "llm".into(),
            client_nonce: String::new(),
        })
        .collect()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999)
    )
}

/// The shortest sleep a producer takes when it is ahead of its schedule; what is due by the time it wakes is
/// offered at once, each message still timed from its own due time (sleeping until every message's due time, 10 us
/// apart at 5x, costs the producers more CPU than the store they measure).
const PACING_QUANTUM: Duration = Duration::from_micros(250);

/// Offers `rate` msg/s from two producer threads for `seconds`; returns the ack latency from each message's due
/// time (open loop, so a stall shows up), measured by a waiter thread per producer.
fn offered_load(handle: &StorageHandle, rate: f64, seconds: f64) -> Histogram<u64> {
    let producers = 2u16;
    let per_producer = rate / f64::from(producers);
    let runs: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let joins: Vec<_> = (0..producers)
            .map(|p| {
                let h = handle.clone();
                s.spawn(move || {
                    let (tx, rx) = flume::bounded::<(Instant, AppendAck)>(1 << 16);
                    let waiter = std::thread::spawn(move || {
                        let mut latency = new_histogram();
                        for (due, ack) in rx.iter() {
                            block_on(ack).expect("durable write");
                            latency.saturating_record(due.elapsed().as_micros() as u64);
                        }
                        latency
                    });
                    let mut ids = MessageIdGen::new(0, 100 + p);
                    let interval = Duration::from_secs_f64(1.0 / per_producer);
                    let start = Instant::now();
                    let end = start + Duration::from_secs_f64(seconds);
                    let mut n = 0u32;
                    loop {
                        let due = start + interval * n;
                        if due >= end {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait.max(PACING_QUANTUM));
                        }
                        let mut record = messages(&mut ids, 1).pop().expect("one message");
                        loop {
                            match h.try_append(record) {
                                Ok(ack) => {
                                    tx.send((due, ack)).expect("waiter alive");
                                    break;
                                }
                                Err(AppendRejected {
                                    error: StorageError::Busy,
                                    record: back,
                                }) => {
                                    record = back;
                                    std::thread::sleep(Duration::from_micros(100));
                                }
                                Err(rejected) => panic!("append: {}", rejected.error),
                            }
                        }
                        n += 1;
                    }
                    drop(tx);
                    waiter.join().expect("waiter")
                })
            })
            .collect();
        joins
            .into_iter()
            .map(|j| j.join().expect("producer"))
            .collect()
    });
    let mut all = new_histogram();
    for r in &runs {
        all.add(r).expect("same bounds");
    }
    all
}

/// The latency report: see the module docs.
fn latency_report(base: &std::path::Path) {
    // As the engine does: a huge-page fault would stall the writer for milliseconds.
    twitchy_storage::disable_transparent_huge_pages();
    let rates: Vec<f64> = std::env::var("TWITCHY_BENCH_STORAGE_RATES")
        .unwrap_or_else(|_| "41667,208335".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds: f64 = std::env::var("TWITCHY_BENCH_STORAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick() { 1.0 } else { 5.0 });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "storage ack latency (load average {}):",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for &rate in &rates {
        for path in [CommitPath::CommitLog, CommitPath::FjallJournal] {
            let dir = base.join(format!("latency-{path:?}-{rate}"));
            let _ = std::fs::remove_dir_all(&dir);
            let options = EmbeddedOptions {
                commit_path: path,
                ..EmbeddedOptions::default()
            };
            let store = Arc::new(EmbeddedStore::open_with(&dir, options).expect("store"));
            let service = StorageService::start(store.clone(), CoalescerConfig::default());
            let latency = offered_load(&service.handle(), rate, seconds);
            service.shutdown().expect("storage shutdown");
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
            println!(
                "  {:>7.1}x seed peak ({rate:.0} msg/s), {:<13} {}",
                rate / 41_667.0,
                format!("{path:?}:"),
                percentiles(&latency)
            );
        }
    }
    // Baselines on the same disk, in the same run.
    let dir = base.join("latency-baseline");
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).expect("store");
    let mut ids = MessageIdGen::new(0, 200);
    let mut one = new_histogram();
    for m in messages(&mut ids, 500) {
        let t = Instant::now();
        store
            .append_messages(std::slice::from_ref(&m))
            .expect("durable write");
        one.saturating_record(t.elapsed().as_micros() as u64);
    }
    println!(
        "  baseline, one fsync per message:                  {}",
        percentiles(&one)
    );
    drop(store);
    let mut raw = new_histogram();
    let path = base.join("latency-raw.log");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).expect("raw log");
        for _ in 0..300 {
            let mut buf = Vec::new();
            for m in messages(&mut ids, 512) {
                let bytes = twitchy_storage::codec::encode_message(&m).expect("encode");
                buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                buf.extend_from_slice(&bytes);
            }
            let t = Instant::now();
            file.write_all(&buf).expect("write");
            file.sync_data().expect("fdatasync");
            raw.saturating_record(t.elapsed().as_micros() as u64);
        }
    }
    println!(
        "  baseline, raw log write+fdatasync (512 msg/record): {}",
        percentiles(&raw)
    );
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(dir);
}

fn bench_storage(c: &mut Criterion) {
    let count = env_count("TWITCHY_BENCH_STORAGE_MESSAGES", 20_000);
    let baseline_count = env_count("TWITCHY_BENCH_STORAGE_BASELINE_MESSAGES", 200);
    let dir = std::env::temp_dir().join(format!("twitchy-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    latency_report(&dir.with_extension("latency"));
    let _ = std::fs::remove_dir_all(dir.with_extension("latency"));
    let store = Arc::new(EmbeddedStore::open(&dir).expect("opening the bench store"));
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let handle = service.handle();
    let mut ids = MessageIdGen::new(0, 0);

    let mut group = c.benchmark_group("storage_durable_append");
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1));
    } else {
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(10));
    }

    group.throughput(Throughput::Elements(count as u64));
    group.bench_function("coalesced", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = messages(&mut ids, count);
                let started = Instant::now();
                let mut pending: VecDeque<AppendAck> = VecDeque::with_capacity(count);
                for m in batch {
                    let mut record = m;
                    loop {
                        match handle.try_append(record) {
                            Ok(ack) => {
                                pending.push_back(ack);
                                break;
                            }
                            // The queue is full: wait for the oldest acknowledgement, then offer it again.
                            Err(AppendRejected {
                                error: StorageError::Busy,
                                record: back,
                            }) => {
                                let oldest = pending
                                    .pop_front()
                                    .expect("a full queue has pending appends");
                                block_on(oldest).expect("durable write");
                                record = back;
                            }
                            Err(rejected) => panic!("append: {}", rejected.error),
                        }
                    }
                }
                for ack in pending {
                    block_on(ack).expect("durable write");
                }
                total += started.elapsed();
            }
            total
        })
    });

    group.throughput(Throughput::Elements(baseline_count as u64));
    group.bench_function("one_fsync_per_message", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = messages(&mut ids, baseline_count);
                let started = Instant::now();
                for m in &batch {
                    store
                        .append_messages(std::slice::from_ref(m))
                        .expect("durable write");
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();

    service.shutdown().expect("storage shutdown");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_storage);
criterion_main!(benches);

//! Durable, acknowledged messages per second into the embedded store.
//!
//! Compared in the same run, on the same store:
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
use twitchy_storage::{
    AppendAck, AppendRejected, CoalescerConfig, EmbeddedStore, MessageIdGen, MessageRecord,
    StorageError, StorageService, Store,
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
        })
        .collect()
}

fn bench_storage(c: &mut Criterion) {
    let count = env_count("TWITCHY_BENCH_STORAGE_MESSAGES", 20_000);
    let baseline_count = env_count("TWITCHY_BENCH_STORAGE_BASELINE_MESSAGES", 200);
    let dir = std::env::temp_dir().join(format!("twitchy-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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

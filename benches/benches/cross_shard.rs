//! Cross-shard hop: messages/s from one glommio executor to another over a
//! bounded channel, the way the engine moves chat messages between cores.
//!
//! Compared in the same run:
//! - `flume` bounded channel with its async API, between two glommio
//!   executors (what the engine uses);
//! - glommio's `channels::shared_channel`, between two glommio executors;
//! - `std::sync::mpsc::sync_channel` between two plain threads with blocking
//!   send/recv, the naive baseline.
//!
//! Each measurement spawns the two sides, lets them meet at a barrier so that
//! thread and io_uring setup stay outside the timing, then times from the
//! first send to the last receive.
//!
//! `TWITCHY_BENCH_QUICK=1` shrinks sample counts and times for CI.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

/// Capacity of every channel compared, in messages.
const CHANNEL_CAPACITY_MESSAGES: usize = 1024;

/// glommio's io_uring memory per executor; the machine locks at most 8 MiB.
const IO_MEMORY_BYTES: usize = 512 * 1024;

/// A message the size of a small routed chat event (64 bytes).
type Message = [u64; 8];

fn quick() -> bool {
    std::env::var("TWITCHY_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Pins the two sides to different CPUs when there are two, as the engine
/// pins its shards.
fn placement(side: usize) -> Placement {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        Placement::Fixed(side)
    } else {
        Placement::Unbound
    }
}

fn executor(side: usize) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement(side))
        .name(if side == 0 { "bench-tx" } else { "bench-rx" })
        .io_memory(IO_MEMORY_BYTES)
}

fn message(i: u64) -> Message {
    [i; 8]
}

/// Sends `count` messages over a flume channel between two executors and
/// returns the time from first send to last receive.
fn flume_hop(count: u64) -> Duration {
    let (tx, rx) = flume::bounded::<Message>(CHANNEL_CAPACITY_MESSAGES);
    let barrier = Arc::new(Barrier::new(2));
    let tx_barrier = barrier.clone();
    let producer = executor(0)
        .spawn(move || async move {
            tx_barrier.wait();
            let start = Instant::now();
            for i in 0..count {
                tx.send_async(message(i)).await.expect("receiver alive");
            }
            start
        })
        .expect("spawn producer executor");
    let consumer = executor(1)
        .spawn(move || async move {
            barrier.wait();
            let mut sum = 0u64;
            for _ in 0..count {
                sum = sum.wrapping_add(rx.recv_async().await.expect("sender alive")[0]);
            }
            (Instant::now(), sum)
        })
        .expect("spawn consumer executor");
    let start = producer.join().expect("producer");
    let (end, sum) = consumer.join().expect("consumer");
    assert_eq!(sum, (0..count).fold(0u64, |a, i| a.wrapping_add(i)));
    end - start
}

/// The same hop over glommio's shared channel.
fn glommio_hop(count: u64) -> Duration {
    let (tx, rx) = shared_channel::new_bounded::<Message>(CHANNEL_CAPACITY_MESSAGES);
    let barrier = Arc::new(Barrier::new(2));
    let tx_barrier = barrier.clone();
    let producer = executor(0)
        .spawn(move || async move {
            let tx = tx.connect().await;
            tx_barrier.wait();
            let start = Instant::now();
            for i in 0..count {
                if tx.send(message(i)).await.is_err() {
                    panic!("receiver gone");
                }
            }
            start
        })
        .expect("spawn producer executor");
    let consumer = executor(1)
        .spawn(move || async move {
            let rx = rx.connect().await;
            barrier.wait();
            let mut sum = 0u64;
            for _ in 0..count {
                sum = sum.wrapping_add(rx.recv().await.expect("sender alive")[0]);
            }
            (Instant::now(), sum)
        })
        .expect("spawn consumer executor");
    let start = producer.join().expect("producer");
    let (end, sum) = consumer.join().expect("consumer");
    assert_eq!(sum, (0..count).fold(0u64, |a, i| a.wrapping_add(i)));
    end - start
}

/// The naive baseline: two plain threads and a blocking std channel.
fn std_hop(count: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(CHANNEL_CAPACITY_MESSAGES);
    let barrier = Arc::new(Barrier::new(2));
    let tx_barrier = barrier.clone();
    let producer = std::thread::spawn(move || {
        tx_barrier.wait();
        let start = Instant::now();
        for i in 0..count {
            tx.send(message(i)).expect("receiver alive");
        }
        start
    });
    let consumer = std::thread::spawn(move || {
        barrier.wait();
        let mut sum = 0u64;
        for _ in 0..count {
            sum = sum.wrapping_add(rx.recv().expect("sender alive")[0]);
        }
        (Instant::now(), sum)
    });
    let start = producer.join().expect("producer");
    let (end, sum) = consumer.join().expect("consumer");
    assert_eq!(sum, (0..count).fold(0u64, |a, i| a.wrapping_add(i)));
    end - start
}

fn cross_shard(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard");
    group.throughput(Throughput::Elements(1));
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300));
    } else {
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
    }
    // Each measurement times a whole batch; iter_custom hands over how many
    // messages to send and gets back the time they took.
    group.bench_function("flume_bounded_glommio", |b| b.iter_custom(flume_hop));
    group.bench_function("glommio_shared_channel", |b| b.iter_custom(glommio_hop));
    group.bench_function("std_mpsc_threads", |b| b.iter_custom(std_hop));
    group.finish();
}

criterion_group!(benches, cross_shard);
criterion_main!(benches);

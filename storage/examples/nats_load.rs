//! Publish/ack latency and throughput of the cluster store against a running NATS cluster, and how long a
//! committed message takes to reach another node's feed.
//!
//! ```text
//! cargo run --release -p twitchy-storage --example nats_load -- --servers nats://127.0.0.1:4222,...
//!     [--seconds 10] [--rate 5000] [--single 1000] [--replicas 3] [--retention-bytes 268435456]
//! ```
//!
//! Three phases, each in its own namespace (`load<pid>`) so runs do not mix:
//!
//! 1. `--single` messages one at a time straight to [`Store::append_messages`]: the round trip of one publish to
//!    its PubAck (quorum commit), with nothing batched.
//! 2. `--seconds` of open-loop load at `--rate` msg/s over 64 rooms through the coalescing writer (the engine's
//!    path): acknowledgement latency from each message's due time, durable msg/s.
//! 3. During phase 2, a second store (another "node") runs a feed of all rooms: per message, the time from its due
//!    time to its arrival on that feed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use twitchy_storage::{
    AppendAck, CoalescerConfig, FeedRooms, MessageId, MessageIdGen, MessageRecord, NatsConfig,
    NatsStore, StorageService, Store,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    servers: Vec<String>,
    seconds: u64,
    rate: u64,
    single: u64,
    replicas: usize,
    retention_bytes: u64,
}

fn args() -> Args {
    let mut args = Args {
        servers: Vec::new(),
        seconds: 10,
        rate: 5_000,
        single: 1_000,
        replicas: 3,
        retention_bytes: 256 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--servers" => args.servers = value.split(',').map(str::to_owned).collect(),
            "--seconds" => args.seconds = value.parse().unwrap(),
            "--rate" => args.rate = value.parse().unwrap(),
            "--single" => args.single = value.parse().unwrap(),
            "--replicas" => args.replicas = value.parse().unwrap(),
            "--retention-bytes" => args.retention_bytes = value.parse().unwrap(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    assert!(!args.servers.is_empty(), "--servers is required");
    args
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(ids: &mut MessageIdGen, n: u64) -> MessageRecord {
    MessageRecord {
        id: ids.next_id(now_ms()),
        room: format!("room{}", n % 64),
        user_id: n % 1000,
        login: format!("user{}", n % 1000),
        display_name: format!("User{}", n % 1000),
        color: "#1E90FF".into(),
        badges: String::new(),
        text: format!(
            "skibidi message number {n}, no cap fr fr, this one is about 150 bytes long ok"
        ),
        original: format!("message number {n}, this one is about 150 bytes long"),
        styled_by: "local".into(),
        client_nonce: format!("nonce-{n}"),
    }
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms p99.9={:.2} ms max={:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
}

fn main() {
    let args = args();
    let config = NatsConfig {
        replicas: args.replicas,
        namespace: format!("load{}", std::process::id()),
        retention_bytes: args.retention_bytes,
        ..NatsConfig::new(args.servers.clone(), 1)
    };
    let store = Arc::new(NatsStore::connect(&config).expect("connect"));
    let other = NatsStore::connect(&NatsConfig {
        node_id: 2,
        ..config.clone()
    })
    .expect("connect the second node");
    println!(
        "stream with {} replicas; node 1 on {}, node 2 on {}",
        store.replicas(),
        store.connected_server(),
        other.connected_server()
    );
    let mut ids = MessageIdGen::new(1, 0);

    // 1. One message at a time.
    let mut single = Histogram::<u64>::new(3).unwrap();
    for n in 0..args.single {
        let m = record(&mut ids, n);
        let started = Instant::now();
        store.append_messages(std::slice::from_ref(&m)).unwrap();
        single.record(started.elapsed().as_micros() as u64).unwrap();
    }
    report("single publish -> PubAck (unbatched)", &single);

    // 2 and 3. Open loop through the coalescer, with another node's feed.
    let feed = other.feed(FeedRooms::All, None, 1 << 16).unwrap();
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let handle = service.handle();
    let total = args.rate * args.seconds;
    let (due_tx, due_rx) = flume::unbounded::<(MessageId, Instant, AppendAck)>();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        let mut acks = Histogram::<u64>::new(3).unwrap();
        let mut due_of = std::collections::HashMap::new();
        let mut failed = 0u64;
        for (id, due, ack) in due_rx {
            match futures_lite::future::block_on(ack) {
                Ok(()) => acks.record(due.elapsed().as_micros() as u64).unwrap(),
                Err(_) => failed += 1,
            }
            due_of.insert(id, due);
        }
        (acks, due_of, failed)
    });
    let feed_reader = std::thread::spawn(move || {
        let mut arrivals = Vec::with_capacity(total as usize);
        while (arrivals.len() as u64) < total {
            match feed.receiver().recv_timeout(Duration::from_secs(30)) {
                Ok(item) => arrivals.push((item.record.id, Instant::now())),
                Err(_) => break,
            }
        }
        arrivals
    });
    let mut refused = 0u64;
    for n in 0..total {
        let due = started + Duration::from_nanos(n * 1_000_000_000 / args.rate.max(1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let m = record(&mut ids, 1_000_000 + n);
        let id = m.id;
        match handle.append(m) {
            Ok(ack) => due_tx.send((id, due, ack)).unwrap(),
            Err(_) => refused += 1,
        }
    }
    drop(due_tx);
    let (acks, due_of, failed) = waiter.join().unwrap();
    let elapsed = started.elapsed();
    let arrivals = feed_reader.join().unwrap();
    let mut feed_latency = Histogram::<u64>::new(3).unwrap();
    for (id, at) in &arrivals {
        if let Some(due) = due_of.get(id) {
            feed_latency
                .record(at.saturating_duration_since(*due).as_micros() as u64)
                .unwrap();
        }
    }
    println!(
        "offered {} msg/s for {} s: {} acknowledged ({:.0} durable msg/s), {refused} refused, {failed} failed",
        args.rate,
        args.seconds,
        acks.len(),
        acks.len() as f64 / elapsed.as_secs_f64()
    );
    report("ack latency through the coalescer (from due time)", &acks);
    report("due time -> arrival on node 2's feed", &feed_latency);
    print!(
        "{}",
        handle
            .metrics_text()
            .lines()
            .filter(|l| l.contains("batch_messages_sum") || l.contains("batches_total"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    service.shutdown().unwrap();
}

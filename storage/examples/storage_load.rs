//! Durable write load on the embedded store, through the coalescer, with ack latency percentiles, for each commit
//! path in the same run: fjall's own journal (the previous design) and the commit log (the default). Then, as
//! baselines on the same disk: the store written one message per fsync, and a raw log (the same bytes appended to
//! a plain file, one `fdatasync` per batch-sized record) with its per-append latency.
//!
//! ```text
//! cargo run --release -p twitchy-storage --example storage_load -- [--rate 208335] [--seconds 10] [--producers 2]
//!     [--baseline-messages 2000] [--dir /path/on/the/disk/to/test] [--paths fjall,log] [--breakdown 1]
//!     [--producer-nice -10] [--writer-realtime 0] [--huge-pages 1]
//! ```
//!
//! `--producer-nice` runs the producer and ack-waiter threads (the stand-ins for the engine's shards) at that
//! niceness; the log writer asks for its own priority (the real-time class, see `--writer-realtime`). On a shared
//! machine this separates the store's tail from the load generator's own scheduling delays.
//!
//! `--writer-realtime 0` keeps the log writer out of the real-time CPU class (it then asks for nice -10), as a
//! baseline for the class it asks for by default; the run prints the class the writer got. `--huge-pages 1` leaves
//! transparent huge pages on for the process, which the engine (and by default this load) turns off.
//!
//! `--breakdown 1` prints where the writer's time went per batch (encode, write, fsync, time runnable but not
//! running, and on the fjall-journal path fjall's sealed memtables and L0 tables at the start of the batch) as
//! percentiles and the slowest batches, and the queue wait of each batch's oldest message.
//!
//! `--rate` is the offered load in messages per second across all producers (default: five times the seed's peak
//! of 41,667 msg/s); `--rate 0` offers as fast as the store acknowledges. Latency is measured from the moment a
//! message was due to be sent (open loop), so a stalled writer shows up in the percentiles.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use twitchy_storage::embedded::BatchTiming;
use twitchy_storage::{
    AppendAck, CoalescerConfig, CommitPath, EmbeddedOptions, EmbeddedStore, MessageIdGen,
    MessageRecord, StorageError, StorageService, Store,
};

// The server runs on mimalloc; so does this load, so that allocation costs match.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The seed's peak message rate.
const SEED_PEAK_MESSAGES_PER_S: f64 = 41_667.0;
/// Acknowledgements one producer may wait on at once when offering load as fast as possible.
const IN_FLIGHT_MAX: usize = 8192;
/// The shortest sleep a producer takes when it is ahead of its schedule; every message due by the time it wakes is
/// then offered at once, each still timed from its own due time. A shard handles what arrived since it last
/// polled; a producer that slept until each message's due time (every 10 us per producer at 5x) spent most of
/// its CPU in `nanosleep` and took that CPU from the store it measures.
const PACING_QUANTUM: Duration = Duration::from_micros(250);

struct Args {
    rate: f64,
    seconds: f64,
    producers: u16,
    baseline_messages: usize,
    dir: Option<std::path::PathBuf>,
    paths: Vec<CommitPath>,
    breakdown: bool,
    /// Niceness of the producer and ack-waiter threads (negative needs root); `None` leaves it.
    producer_nice: Option<i32>,
    writer_realtime: bool,
    /// Leave transparent huge pages on (the engine turns them off).
    huge_pages: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        rate: SEED_PEAK_MESSAGES_PER_S * 5.0,
        seconds: 10.0,
        producers: 2,
        baseline_messages: 2000,
        dir: None,
        paths: vec![CommitPath::FjallJournal, CommitPath::CommitLog],
        breakdown: false,
        producer_nice: None,
        writer_realtime: true,
        huge_pages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rate" => args.rate = value.parse().expect("--rate: messages per second"),
            "--seconds" => args.seconds = value.parse().expect("--seconds: a number"),
            "--producers" => args.producers = value.parse().expect("--producers: a count"),
            "--baseline-messages" => {
                args.baseline_messages = value.parse().expect("--baseline-messages: a count")
            }
            "--dir" => args.dir = Some(value.into()),
            "--paths" => {
                args.paths = value
                    .split(',')
                    .map(|p| match p {
                        "log" => CommitPath::CommitLog,
                        "fjall" => CommitPath::FjallJournal,
                        other => panic!("--paths: log or fjall, not {other}"),
                    })
                    .collect()
            }
            "--breakdown" => args.breakdown = value == "1",
            "--producer-nice" => {
                args.producer_nice = Some(value.parse().expect("--producer-nice: a niceness"))
            }
            "--writer-realtime" => args.writer_realtime = value == "1",
            "--huge-pages" => args.huge_pages = value == "1",
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// A chat message of about 150 bytes of content, like the seed's.
fn message(ids: &mut MessageIdGen, n: u64) -> MessageRecord {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    MessageRecord {
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
    }
}

struct Run {
    acked: u64,
    busy: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// How late each append was made relative to its due time (the producer's own scheduling delay).
    lag_us: Histogram<u64>,
}

/// One producer: offers `rate` msg/s (or as fast as possible when 0) for `seconds`; a second thread waits on
/// the acknowledgements in order and records each one's latency from its due time.
/// Sets the calling thread's niceness (Linux: per thread).
fn set_nice(nice: Option<i32>) {
    if let Some(nice) = nice {
        // SAFETY: plain syscalls on the calling thread's own priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
}

fn producer(
    h: twitchy_storage::StorageHandle,
    shard: u16,
    rate: f64,
    seconds: f64,
    nice: Option<i32>,
) -> Run {
    set_nice(nice);
    let (tx, rx) = flume::bounded::<(Instant, AppendAck)>(IN_FLIGHT_MAX);
    let waiter = std::thread::spawn(move || {
        set_nice(nice);
        let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut acked = 0u64;
        for (due, ack) in rx.iter() {
            futures_lite::future::block_on(ack).expect("a durable write failed");
            latency_us.saturating_record(due.elapsed().as_micros() as u64);
            acked += 1;
        }
        (acked, latency_us)
    });
    let mut ids = MessageIdGen::new(0, shard);
    let mut lag_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let interval = if rate > 0.0 {
        Some(Duration::from_secs_f64(1.0 / rate))
    } else {
        None
    };
    let mut n = 0u64;
    let mut busy = 0u64;
    let mut backlog: VecDeque<MessageRecord> = VecDeque::new();
    loop {
        let due = match interval {
            Some(i) => start + i.mul_f64(n as f64),
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(PACING_QUANTUM));
        }
        let m = backlog.pop_front().unwrap_or_else(|| message(&mut ids, n));
        match h.append(m) {
            Ok(ack) => {
                lag_us.saturating_record(due.elapsed().as_micros() as u64);
                tx.send((due, ack)).unwrap();
                n += 1;
            }
            Err(StorageError::Busy) => {
                // Backpressure: the writer is behind. Count it and retry shortly, as a shard would tell its client.
                busy += 1;
                backlog.push_back(message(&mut ids, n));
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => panic!("append: {e}"),
        }
    }
    drop(tx);
    let (acked, latency_us) = waiter.join().unwrap();
    Run {
        acked,
        busy,
        elapsed: start.elapsed(),
        latency_us,
        lag_us,
    }
}

fn coalesced(store: Arc<EmbeddedStore>, args: &Args) -> (f64, Histogram<u64>, u64, String) {
    let service = StorageService::start(store, CoalescerConfig::default());
    let per_producer = args.rate / f64::from(args.producers);
    let started = Instant::now();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let joins: Vec<_> = (0..args.producers)
            .map(|p| {
                let h = service.handle();
                let nice = args.producer_nice;
                s.spawn(move || producer(h, p, per_producer, args.seconds, nice))
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let elapsed = started
        .elapsed()
        .max(runs.iter().map(|r| r.elapsed).max().unwrap());
    let metrics = service.handle().metrics_text();
    println!("  log writer's CPU class: {}", writer_class());
    service.shutdown().unwrap();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut lag_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for r in &runs {
        latency_us.add(&r.latency_us).unwrap();
        lag_us.add(&r.lag_us).unwrap();
    }
    println!(
        "  producer lag (append made after its due time): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        percentile_ms(&lag_us, 0.5),
        percentile_ms(&lag_us, 0.99),
        percentile_ms(&lag_us, 0.999)
    );
    let acked: u64 = runs.iter().map(|r| r.acked).sum();
    let busy = runs.iter().map(|r| r.busy).sum();
    (
        acked as f64 / elapsed.as_secs_f64(),
        latency_us,
        busy,
        metrics,
    )
}

/// The scheduling class and priority of this process's `storage-writer` thread, from `/proc`.
fn writer_class() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "unknown".into();
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "storage-writer" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis, from field 3: priority is 18, nice 19, policy 41.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or("?");
        return match field(41) {
            "1" => format!(
                "SCHED_FIFO, priority {}",
                -1 - field(18).parse::<i64>().unwrap_or(0)
            ),
            "0" => format!("normal, nice {}", field(19)),
            other => format!("policy {other}"),
        };
    }
    "no writer thread".into()
}

fn one_fsync_per_message(store: &EmbeddedStore, messages: usize) -> (f64, Histogram<u64>) {
    let mut ids = MessageIdGen::new(0, 900);
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let started = Instant::now();
    for n in 0..messages as u64 {
        let m = message(&mut ids, n);
        let t = Instant::now();
        store.append_messages(std::slice::from_ref(&m)).unwrap();
        latency_us.saturating_record(t.elapsed().as_micros() as u64);
    }
    (
        messages as f64 / started.elapsed().as_secs_f64(),
        latency_us,
    )
}

/// The same encoded bytes appended to a plain file, one `write` + `fdatasync` per record of `batch` messages: what
/// a log written for this crate could do at best on this disk, with no index at all. Returns msg/s and the
/// per-append latency.
fn raw_log(dir: &std::path::Path, batch: usize, batches: usize) -> (f64, Histogram<u64>) {
    let mut ids = MessageIdGen::new(0, 901);
    let path = dir.join("raw.log");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut buf = Vec::new();
    let mut total = Duration::ZERO;
    for b in 0..batches {
        buf.clear();
        for n in 0..batch {
            let bytes =
                twitchy_storage::codec::encode_message(&message(&mut ids, (b * batch + n) as u64))
                    .unwrap();
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(&bytes);
        }
        let t = Instant::now();
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        let took = t.elapsed();
        total += took;
        latency_us.saturating_record(took.as_micros() as u64);
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    ((batch * batches) as f64 / total.as_secs_f64(), latency_us)
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or("0")
        .parse()
        .unwrap()
}

fn print_breakdown(timings: &[BatchTiming], metrics: &str) {
    let phase = |name: &str, f: &dyn Fn(&BatchTiming) -> u64| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for t in timings {
            h.saturating_record(f(t).max(1));
        }
        println!(
            "    {name:<11} p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
            percentile_ms(&h, 0.5),
            percentile_ms(&h, 0.99),
            percentile_ms(&h, 0.999),
            h.max() as f64 / 1000.0
        );
    };
    println!("  per batch ({} batches):", timings.len());
    phase("encode", &|t| t.encode_us);
    phase("write", &|t| t.write_us);
    phase("fdatasync", &|t| t.sync_us);
    phase("run delay", &|t| t.run_delay_us);
    phase("total", &|t| t.encode_us + t.write_us + t.sync_us);
    let mut slowest: Vec<&BatchTiming> = timings.iter().collect();
    slowest.sort_by_key(|t| std::cmp::Reverse(t.encode_us + t.write_us + t.sync_us));
    println!("  slowest batches:");
    for t in slowest.iter().take(5) {
        println!(
            "    {:>5} msg: encode {:>6} us, write {:>7} us, fdatasync {:>6} us, run delay {:>6} us, \
             sealed memtables {}, L0 tables {}",
            t.messages,
            t.encode_us,
            t.write_us,
            t.sync_us,
            t.run_delay_us,
            t.sealed_memtables,
            t.l0_tables
        );
    }
    // Queue wait of each batch's oldest message, from the writer's histogram (bucket bounds in seconds).
    let count = metric(metrics, "twitchy_storage_batch_queue_wait_seconds_count");
    let mut line = String::from("  queue wait of the oldest message per batch:");
    for bound in ["0.001", "0.004", "0.008", "0.016", "0.064", "0.128"] {
        let n = metric(
            metrics,
            &format!("twitchy_storage_batch_queue_wait_seconds_bucket{{le=\"{bound}\"}}"),
        );
        line.push_str(&format!(" <={bound}s {:.1}%", 100.0 * n / count.max(1.0)));
    }
    println!("{line}");
    let count = metric(metrics, "twitchy_storage_ack_seconds_count");
    let mut line = String::from("  append to ack, per message (writer side):");
    for bound in [
        "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064",
    ] {
        let n = metric(
            metrics,
            &format!("twitchy_storage_ack_seconds_bucket{{le=\"{bound}\"}}"),
        );
        line.push_str(&format!(" <={bound}s {:.2}%", 100.0 * n / count.max(1.0)));
    }
    println!("{line}");
}

fn main() {
    let args = parse_args();
    if !args.huge_pages {
        // As the engine does: a huge-page fault would stall the writer for milliseconds.
        twitchy_storage::disable_transparent_huge_pages();
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let target = if args.rate > 0.0 {
        format!("{:.0} msg/s offered", args.rate)
    } else {
        "max rate".into()
    };
    let mut last_store: Option<(Arc<EmbeddedStore>, std::path::PathBuf)> = None;
    for &path in &args.paths {
        // The previous path's store goes first, with its files: its flushes and compactions (and its dirty pages)
        // would otherwise run on into this path's measurement.
        if let Some((old, old_data)) = last_store.take() {
            drop(old);
            let _ = std::fs::remove_dir_all(old_data);
        }
        let data = dir.join(format!("storage-load-{path:?}"));
        let _ = std::fs::remove_dir_all(&data);
        let options = EmbeddedOptions {
            commit_path: path,
            log_writer_realtime: args.writer_realtime,
            ..EmbeddedOptions::default()
        };
        let store = Arc::new(EmbeddedStore::open_with(&data, options).unwrap());
        store.record_timings(args.breakdown);
        println!(
            "{path:?}: coalesced, {target}, {} producers, {:.0} s",
            args.producers, args.seconds
        );
        let (rate, latency_us, busy, metrics) = coalesced(Arc::clone(&store), &args);
        let batches = metric(&metrics, "twitchy_storage_batches_total");
        println!(
            "  {rate:.0} msg/s durable ({:.1}x the seed peak), ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, \
             max {:.2} ms, {busy} busy answers, {batches:.0} batches (avg {:.0} msg)",
            rate / SEED_PEAK_MESSAGES_PER_S,
            percentile_ms(&latency_us, 0.50),
            percentile_ms(&latency_us, 0.99),
            percentile_ms(&latency_us, 0.999),
            latency_us.max() as f64 / 1000.0,
            latency_us.len() as f64 / batches.max(1.0),
        );
        if args.breakdown {
            print_breakdown(&store.take_timings(), &metrics);
            store.record_timings(false);
        }
        if std::env::var_os("STORAGE_LOAD_METRICS").is_some() {
            println!("{metrics}");
        }
        last_store = Some((store, data));
    }
    let (store, data) = last_store.expect("at least one commit path");

    let (base_rate, base_latency) = one_fsync_per_message(&store, args.baseline_messages);
    println!(
        "baseline, one fsync per message: {base_rate:.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        percentile_ms(&base_latency, 0.50),
        percentile_ms(&base_latency, 0.99),
        percentile_ms(&base_latency, 0.999),
    );
    let batch = 1024;
    let batches = 200;
    let (raw_rate, raw_latency) = raw_log(&dir, batch, batches);
    println!(
        "baseline, raw log (plain file, write + fdatasync of {batch}-message records): {raw_rate:.0} msg/s, \
         append latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        percentile_ms(&raw_latency, 0.50),
        percentile_ms(&raw_latency, 0.99),
        percentile_ms(&raw_latency, 0.999),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
    drop(store);

    // Reopen: recovery cost with the data just written (the log tail not yet in the index is replayed).
    let reopen = Instant::now();
    let store = EmbeddedStore::open(&data).unwrap();
    let reopen_ms = reopen.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let recent = store.recent_messages("room7", 50).unwrap();
    println!(
        "reopened in {reopen_ms:.0} ms; 50 recent messages of a room read in {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(recent.len(), 50);
}
